//! `qkd-bench scrape`: the time of one Prometheus scrape of a node with many SAE pairs (issue 12,
//! "Performance": one scrape of a node with 1,000 SAE pairs under 50 ms).
//!
//! Lays out the demo pair (`qkd-node demo --setup-only --topology pair`), adds SAE pairs to both
//! nodes' configuration until there are `--pairs` of them (`ENC-MA<i>` at A with `ENC-MB<i>` at
//! B; each pair has a pool in each direction, so a node exports a pool gauge and a delivery
//! counter per direction and pair, and holds the pools of the pairs whose master it serves),
//! starts both nodes, waits until every pool is full and no
//! relay message crossed the link for a second (so that the scrapes measure an idle node, as a
//! Prometheus server sees it between bursts), then GETs `http://<admin>/metrics` of node A
//! `--scrapes` times, one after the other with `--interval` between them, on one keep-alive
//! connection. Reports the time of each scrape (request sent to the whole body read) as
//! p50/p99/max, and the response's size and number of samples.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use qkd_testnet::{Layout, Net};

use crate::measure::{Latency, Samples};

/// Arguments of `qkd-bench scrape`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// SAE pairs configured in all (the demo's two included), each with a pool per direction.
    #[arg(long, default_value_t = 1000)]
    pub pairs: u32,
    /// Scrapes measured (after one unmeasured scrape).
    #[arg(long, default_value_t = 200)]
    pub scrapes: u32,
    /// Pause between two scrapes.
    #[arg(long, default_value = "50ms", value_parser = crate::parse_duration)]
    pub interval: Duration,
    /// Finished keys each node keeps ready per SAE pair and direction (`[relay] pool_keys`).
    #[arg(long, default_value_t = 64)]
    pub pool_keys: u32,
    /// Secret key rate of the simulated link, bit/s (fast, so the pools fill quickly).
    #[arg(long, default_value_t = 200_000_000)]
    pub link_rate_bps: u64,
    /// How long the pools may take to fill before the run fails.
    #[arg(long, default_value = "30m", value_parser = crate::parse_duration)]
    pub fill_timeout: Duration,
    /// The `qkd-node` binary (default: next to this binary).
    #[arg(long)]
    pub nodes_bin: Option<PathBuf>,
    /// Directory for the temporary network (default: the system temp directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// The figures of one run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// SAE pairs configured.
    pub pairs: u32,
    /// Pool gauges in node A's exposition (one per pair whose master is attached to A).
    pub pool_series: u64,
    /// Seconds from the start of both nodes until both had recorded their listeners.
    pub start_s: f64,
    /// Seconds from then until every pool was full and the link quiet.
    pub fill_s: f64,
    /// Time of one scrape: request sent until the whole body was read.
    pub scrape: Latency,
    /// Size of the exposition, bytes (of the last scrape).
    pub response_bytes: u64,
    /// Sample lines (not comments) in the exposition.
    pub samples: u64,
}

impl Report {
    /// Prints the human-readable table.
    pub fn print(&self) {
        println!(
            "scrape of node A's /metrics with {} SAE pairs ({} pool gauges), pools full, link idle",
            self.pairs, self.pool_series
        );
        println!(
            "nodes started in {:.1} s, pools filled in {:.1} s",
            self.start_s, self.fill_s
        );
        println!(
            "response: {} bytes, {} samples",
            self.response_bytes, self.samples
        );
        let l = &self.scrape;
        println!(
            "scrape ms: count {}, mean {:.2}, p50 {:.2}, p99 {:.2}, max {:.2}",
            l.count, l.mean_ms, l.p50_ms, l.p99_ms, l.max_ms
        );
    }
}

/// Runs the benchmark.
pub async fn run(args: &Args) -> Result<Report> {
    if args.pairs < 2 || args.scrapes == 0 || args.pool_keys == 0 {
        bail!("--pairs must be at least 2 (the demo's), --scrapes and --pool-keys positive");
    }
    let bin = qkd_testnet::node_bin(args.nodes_bin.as_ref())?;
    let net = Net::launch(
        &bin,
        args.dir.as_deref(),
        &Layout {
            topology: "pair".into(),
            link_rate_bps: args.link_rate_bps,
            pool_keys: Some(args.pool_keys),
            batch_keys: None,
            log_level: "warn".into(),
        },
    )?;
    let extra = args.pairs - 2;
    for node in ["A", "B"] {
        net.edit_config(node, |t| add_pairs(t, extra));
    }
    let t0 = Instant::now();
    net.start_all()?;
    let start = t0.elapsed();
    let mut urls = Vec::new();
    for node in ["A", "B"] {
        let admin = net
            .try_listen(node)?
            .admin
            .with_context(|| format!("node {node} has no admin listener"))?;
        urls.push(format!("http://{admin}/metrics"));
    }
    let url = urls[0].clone();
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()?;
    let t1 = Instant::now();
    let mut last_messages = u64::MAX;
    loop {
        net.check_alive()?;
        // Each node holds the pools of the pairs whose master is attached to it.
        let mut levels = Vec::new();
        for u in &urls {
            levels.extend(pool_levels(&scrape(&http, u).await?));
        }
        let full = levels.len() as u64 == u64::from(args.pairs) * 2
            && levels.iter().all(|n| *n >= f64::from(args.pool_keys));
        let mut messages = 0;
        for node in ["A", "B"] {
            messages += net
                .counters(node)
                .await?
                .iter()
                .map(|(_, c)| c.relay_messages)
                .sum::<u64>();
        }
        if full && messages == last_messages {
            break;
        }
        last_messages = messages;
        if t1.elapsed() > args.fill_timeout {
            let filled = levels
                .iter()
                .filter(|n| **n >= f64::from(args.pool_keys))
                .count();
            bail!(
                "pools not full after {:?}: {filled} of {} gauges full",
                args.fill_timeout,
                levels.len()
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let fill = t1.elapsed();

    let mut times = Samples::default();
    let mut body = scrape(&http, &url).await?;
    for _ in 0..args.scrapes {
        tokio::time::sleep(args.interval).await;
        let t = Instant::now();
        body = scrape(&http, &url).await?;
        times.push(t.elapsed());
    }
    net.check_alive()?;
    Ok(Report {
        pairs: args.pairs,
        pool_series: pool_levels(&body).len() as u64,
        start_s: start.as_secs_f64(),
        fill_s: fill.as_secs_f64(),
        scrape: times.summary(),
        response_bytes: body.len() as u64,
        samples: body
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .count() as u64,
    })
}

/// Adds `extra` SAE pairs (`ENC-MA<i>` at A, `ENC-MB<i>` at B) to a node's configuration.
fn add_pairs(t: &mut toml::Table, extra: u32) {
    let saes = t
        .entry("sae")
        .or_insert_with(|| toml::Value::Array(Vec::new()));
    let Some(saes) = saes.as_array_mut() else {
        return;
    };
    let sae = |id: String, node: &str, peer: String| {
        let mut s = toml::Table::new();
        s.insert("id".into(), toml::Value::String(id));
        s.insert("node".into(), toml::Value::String(node.into()));
        s.insert(
            "peers".into(),
            toml::Value::Array(vec![toml::Value::String(peer)]),
        );
        toml::Value::Table(s)
    };
    for i in 0..extra {
        let (a, b) = (format!("ENC-MA{i}"), format!("ENC-MB{i}"));
        saes.push(sae(a.clone(), "A", b.clone()));
        saes.push(sae(b, "B", a));
    }
}

/// GETs the exposition.
async fn scrape(http: &reqwest::Client, url: &str) -> Result<String> {
    let r = http.get(url).send().await.with_context(|| url.to_owned())?;
    if !r.status().is_success() {
        bail!("{url}: {}", r.status());
    }
    Ok(r.text().await?)
}

/// GETs the exposition at `url` once, on a fresh plain-HTTP client.
pub(crate) async fn scrape_once(url: &str) -> Result<String> {
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()?;
    scrape(&http, url).await
}

/// The sum of the samples of counter `name` (any labels); `None` if it has none.
pub(crate) fn counter(text: &str, name: &str) -> Option<f64> {
    let values: Vec<f64> = text
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// The values of every `qkd_pair_pool_keys` sample.
fn pool_levels(text: &str) -> Vec<f64> {
    text.lines()
        .filter(|l| l.starts_with("qkd_pair_pool_keys{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_added_to_both_ends_and_pool_gauges_parsed() {
        let mut t: toml::Table = "[[sae]]\nid = \"ENC-A1\"\nnode = \"A\"\npeers = [\"ENC-B1\"]\n"
            .parse()
            .unwrap();
        add_pairs(&mut t, 2);
        let saes = t["sae"].as_array().unwrap();
        assert_eq!(saes.len(), 5);
        assert_eq!(saes[3]["id"].as_str(), Some("ENC-MA1"));
        assert_eq!(saes[4]["node"].as_str(), Some("B"));
        assert_eq!(saes[4]["peers"][0].as_str(), Some("ENC-MA1"));
        let text = "# TYPE qkd_pair_pool_keys gauge\n\
                    qkd_pair_pool_keys{master=\"ENC-A1\",slave=\"ENC-B1\"} 64\n\
                    qkd_pair_pool_keys{master=\"ENC-B1\",slave=\"ENC-A1\"} 3\n\
                    qkd_link_up{link=\"A-B\"} 1\n";
        assert_eq!(pool_levels(text), vec![64.0, 3.0]);
        let text = "qkd_store_commits_total 12\nqkd_store_commits_total_x 5\n\
                    qkd_store_bytes_written_total{a=\"1\"} 3\nqkd_store_bytes_written_total{a=\"2\"} 4\n";
        assert_eq!(counter(text, "qkd_store_commits_total"), Some(12.0));
        assert_eq!(counter(text, "qkd_store_bytes_written_total"), Some(7.0));
        assert_eq!(counter(text, "qkd_relay_keys_total"), None);
    }
}
