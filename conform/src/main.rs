//! `qkd-conform`: ETSI GS QKD 014 conformance of a KME or QKD device.
//!
//! ```text
//! qkd-conform conform.toml [--json] [--read-only] [--max-keys N]
//! ```
//!
//! Exit status: 0 every case passed or was skipped, 1 a rule of the spec failed, 2 only our own
//! decisions failed, 3 the run could not start.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Checks an ETSI GS QKD 014 KME or QKD device against the spec"
)]
struct Args {
    /// The TOML file naming the KMEs and the SAE certificates.
    config: PathBuf,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Only requests that cannot deliver a key (production devices).
    #[arg(long)]
    read_only: bool,
    /// Consume at most this many keys (overrides the file).
    #[arg(long)]
    max_keys: Option<u32>,
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("qkd-conform: {e:#}");
            ExitCode::from(3)
        }
    }
}

async fn run() -> anyhow::Result<u8> {
    let args = Args::parse();
    let mut config = qkd_conform::Config::load(&args.config)?;
    config.read_only |= args.read_only;
    if let Some(n) = args.max_keys {
        config.max_keys = n;
    }
    let report = qkd_conform::run(&config, |plan| {
        eprintln!(
            "qkd-conform: this run consumes at most {} keys (budget {}){}",
            plan.max_keys,
            plan.budget,
            if plan.skipped.is_empty() {
                String::new()
            } else {
                format!(
                    "; skipped for budget or read-only mode: {}",
                    plan.skipped.join(", ")
                )
            }
        );
    })
    .await
    .context("cannot run the suite")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(u8::try_from(report.exit_code()).unwrap_or(3))
}
