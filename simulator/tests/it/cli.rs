//! The `qkd-sim` binary end to end, into a temporary directory.

use std::process::Command;

use crate::scenarios::scenario_path;

fn qkd_sim() -> Command {
    Command::new(env!("CARGO_BIN_EXE_qkd-sim"))
}

fn is_png(path: &std::path::Path) -> bool {
    std::fs::read(path).is_ok_and(|b| b.starts_with(b"\x89PNG\r\n\x1a\n") && b.len() > 5_000)
}

fn is_svg_with_text(path: &std::path::Path) -> bool {
    std::fs::read_to_string(path).is_ok_and(|s| s.contains("<svg") && s.contains("<text"))
}

#[test]
fn run_metro_scenario_writes_parsable_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("metro");
    let o = qkd_sim()
        .args(["run", "--quiet", "--out"])
        .arg(&out)
        .arg(scenario_path("metro-2node.toml"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("defense-saclay") && stdout.contains("paris-defense <-> saclay"),
        "{stdout}"
    );
    let mut rdr = csv::Reader::from_path(out.join("links.csv")).unwrap();
    let rows: Vec<csv::StringRecord> = rdr.records().map(|r| r.unwrap()).collect();
    assert_eq!(rows.len(), 1440);
    let last: u64 = rows[1439][3].parse().unwrap();
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["links"][0]["total_bits"].as_u64(), Some(last));
    assert_eq!(
        summary["pairs"][0]["path"].as_array().map(Vec::len),
        Some(2)
    );
    assert!(
        std::fs::read_to_string(out.join("pairs.csv"))
            .unwrap()
            .lines()
            .count()
            == 1441
    );
    for stem in ["links", "pairs"] {
        assert!(is_png(&out.join(format!("{stem}.png"))), "{stem}.png");
        assert!(
            is_svg_with_text(&out.join(format!("{stem}.svg"))),
            "{stem}.svg"
        );
    }
}

#[test]
fn rate_writes_curve_and_plots() {
    let dir = tempfile::tempdir().unwrap();
    let o = qkd_sim()
        .args([
            "rate",
            "--protocol",
            "decoy-vacuum-weak",
            "--hardware",
            "gys",
            "--to",
            "150",
            "--points",
            "301",
            "--out",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("rate.json")).unwrap()).unwrap();
    let pts = json.as_array().unwrap();
    assert_eq!(pts.len(), 301);
    let last_key = pts
        .iter()
        .rev()
        .find(|p| p["key_per_pulse"].as_f64().unwrap() > 0.0)
        .unwrap();
    assert!((last_key["x"].as_f64().unwrap() - 140.5).abs() < 0.6);
    let rows = csv::Reader::from_path(dir.path().join("rate.csv"))
        .unwrap()
        .records()
        .count();
    assert_eq!(rows, 301);
    assert!(is_png(&dir.path().join("rate.png")) && is_svg_with_text(&dir.path().join("rate.svg")));
    assert!(is_png(&dir.path().join("qber.png")));
}

#[test]
fn errors_are_clear_and_help_has_examples() {
    let o = qkd_sim()
        .args(["rate", "--eta-bob", "1.5", "--out", "/nonexistent/x"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("eta_bob") && err.contains("(0, 1]"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[scenario]\nname = \"x\"\n").unwrap();
    let o = qkd_sim().arg("run").arg(&bad).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("bad.toml") && err.contains("start_utc"),
        "{err}"
    );
    for sub in ["rate", "run"] {
        let o = qkd_sim().args([sub, "--help"]).output().unwrap();
        let help = String::from_utf8_lossy(&o.stdout);
        assert!(
            help.contains("Examples:") && help.contains(&format!("qkd-sim {sub} ")),
            "{help}"
        );
    }
}

/// Every example line of `--help` runs successfully (from the workspace root, where the example
/// paths point), with its output directory moved into a temporary directory.
#[test]
fn help_examples_work() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let dir = tempfile::tempdir().unwrap();
    let mut ran = 0;
    for sub in ["rate", "run", "dynamics", "pass"] {
        let o = qkd_sim().args([sub, "--help"]).output().unwrap();
        let help = String::from_utf8_lossy(&o.stdout).to_string();
        for line in help
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("qkd-sim "))
        {
            let mut args: Vec<String> = line.split_whitespace().skip(1).map(String::from).collect();
            let out = args
                .iter()
                .position(|a| a == "--out")
                .expect("examples name --out");
            args[out + 1] = dir.path().join(format!("ex{ran}")).display().to_string();
            // Only `rate` and `run` draw plots.
            if matches!(sub, "rate" | "run") && !args.iter().any(|a| a == "--no-plot") {
                args.push("--no-plot".into());
            }
            if sub == "run" {
                args.push("--quiet".into());
            }
            let o = qkd_sim().args(&args).current_dir(&root).output().unwrap();
            assert!(
                o.status.success(),
                "`{line}` failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            ran += 1;
        }
    }
    assert!(ran >= 10, "{ran} examples");
}

fn rate(args: &[&str], out: &std::path::Path) -> (bool, String, String) {
    let o = qkd_sim()
        .arg("rate")
        .args(args)
        .arg("--out")
        .arg(out)
        .output()
        .expect("qkd-sim runs");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into(),
        String::from_utf8_lossy(&o.stderr).into(),
    )
}

#[test]
fn negative_numbers_reach_the_checks() {
    let dir = tempfile::tempdir().unwrap();
    // `--from -10` used to be cut by the argument parser ("unexpected argument '-1'").
    let (ok, _, err) = rate(&["--from", "-10", "--no-plot"], dir.path());
    assert!(
        !ok && err.contains("from = -10") && err.contains("≥ 0"),
        "{err}"
    );
    let (ok, _, err) = rate(&["--extra-loss", "-3", "--no-plot"], dir.path());
    assert!(!ok && err.contains("extra_loss_db = -3"), "{err}");
}

#[test]
fn flags_a_protocol_ignores_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (args, named) in [
        (
            &[
                "--protocol",
                "twin-field",
                "--eta-bob",
                "0.5",
                "--rep-rate",
                "1e9",
            ][..],
            &["--eta-bob", "--rep-rate"][..],
        ),
        (
            &["--protocol", "cv-gg02", "--dark-count", "1e-6"][..],
            &["--dark-count"][..],
        ),
        (
            &["--protocol", "decoy-infinite", "--block", "1e6"][..],
            &["--block"][..],
        ),
        (
            &["--protocol", "finite-key", "--nu", "0.1"][..],
            &["--nu"][..],
        ),
        (
            &["--protocol", "twin-field", "--extra-loss", "2"][..],
            &["--extra-loss"][..],
        ),
    ] {
        let (ok, _, err) = rate(args, dir.path());
        assert!(!ok, "{args:?}");
        assert!(
            named.iter().all(|f| err.contains(f)) && err.contains("does not use"),
            "{args:?}: {err}"
        );
    }
    // The flags a protocol does use are accepted.
    let (ok, _, err) = rate(
        &[
            "--protocol",
            "cv-gg02",
            "--alpha",
            "0.18",
            "--extra-loss",
            "1",
            "--to",
            "20",
            "--points",
            "3",
            "--no-plot",
        ],
        dir.path(),
    );
    assert!(ok, "{err}");
}

#[test]
fn cv_rate_draws_no_empty_qber_plot() {
    let dir = tempfile::tempdir().unwrap();
    // A QBER plot from an earlier run in the same directory must not survive either.
    std::fs::write(dir.path().join("qber.png"), b"stale").unwrap();
    let (ok, out, err) = rate(
        &[
            "--protocol",
            "cv-gg02",
            "--axis",
            "loss",
            "--to",
            "30",
            "--points",
            "31",
        ],
        dir.path(),
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("no qber plot") && out.contains("CV-QKD"),
        "{out}"
    );
    assert!(!dir.path().join("qber.png").exists());
    assert!(is_png(&dir.path().join("rate.png")));
}

#[test]
fn qber_plot_has_units_and_stops_at_the_key_cutoff() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, err) = rate(
        &[
            "--protocol",
            "decoy-vacuum-weak",
            "--to",
            "200",
            "--points",
            "201",
        ],
        dir.path(),
    );
    assert!(ok, "{err}");
    let texts = svg_texts(&dir.path().join("qber.svg"));
    assert!(
        texts.iter().any(|t| t == "QBER (%)"),
        "no unit on the QBER axis"
    );
    // The x axis ends at the last point with key (~140 km), not at 200 km.
    assert!(texts.iter().any(|t| t == "140"), "{texts:?}");
    assert!(!texts.iter().any(|t| t == "160" || t == "200"), "{texts:?}");
    // Log-axis ticks of the rate plot share one format: 1e-3 ... 1e8.
    let texts = svg_texts(&dir.path().join("rate.svg"));
    let ticks: Vec<&String> = texts.iter().filter(|t| t.starts_with("1e")).collect();
    assert!(ticks.len() >= 5, "{texts:?}");
    assert!(
        !texts
            .iter()
            .any(|t| t.contains(".0e") || t == "0.01" || t == "0.1" || t == "1000"),
        "mixed tick formats: {texts:?}"
    );
}

/// The text elements of an SVG written by plotters (one per `<text>`, trimmed).
fn svg_texts(path: &std::path::Path) -> Vec<String> {
    let svg = std::fs::read_to_string(path).expect("SVG written");
    svg.split("<text")
        .skip(1)
        .filter_map(|t| {
            t.split_once('>')
                .and_then(|(_, rest)| rest.split_once("</text>"))
        })
        .map(|(inner, _)| inner.trim().to_string())
        .collect()
}

#[test]
fn run_explains_what_its_links_plot_shows() {
    let dir = tempfile::tempdir().unwrap();
    let o = qkd_sim()
        .args(["run", "--quiet", "--out"])
        .arg(dir.path())
        .arg(scenario_path("metro-2node.toml"))
        .output()
        .unwrap();
    assert!(o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("note: links plot shows the links on the path"),
        "{out}"
    );
    let svg = std::fs::read_to_string(dir.path().join("links.svg")).unwrap();
    assert!(
        svg.contains("Showing the links on the path"),
        "note missing from the plot"
    );
}

#[test]
fn csv_size_is_estimated_before_writing() {
    let (_, _, r) = crate::benches::small_metro_run();
    let dir = tempfile::tempdir().unwrap();
    r.write(dir.path()).unwrap();
    let actual = ["links.csv", "pairs.csv"]
        .iter()
        .map(|f| std::fs::metadata(dir.path().join(f)).unwrap().len())
        .sum::<u64>() as f64;
    let est = r.estimated_csv_bytes() as f64;
    assert!(
        (est / actual - 1.0).abs() < 0.1,
        "estimated {est}, wrote {actual}"
    );
}

#[cfg(not(feature = "parquet"))]
#[test]
fn parquet_without_the_feature_is_refused_before_running() {
    let dir = tempfile::tempdir().unwrap();
    let o = qkd_sim()
        .args(["run", "--quiet", "--format", "parquet", "--out"])
        .arg(dir.path())
        .arg(scenario_path("metro-2node.toml"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("--features parquet"),
        "{err}"
    );
    assert!(!dir.path().join("summary.json").exists());
}
