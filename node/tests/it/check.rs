//! `qkd-node check` and `run` against bad configurations: every file the configuration names is
//! loaded and cross-checked, each problem is reported naming the file, the TOML key and what is
//! wrong, and `run` refuses before it touches the data directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use crate::harness::{BIN, Net};

/// Every file under `dir`: its bytes and modification time.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (Vec<u8>, SystemTime)> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            let meta = std::fs::metadata(&p).unwrap();
            if meta.is_dir() {
                todo.push(p);
            } else {
                out.insert(
                    p.clone(),
                    (std::fs::read(&p).unwrap(), meta.modified().unwrap()),
                );
            }
        }
    }
    out
}

/// Runs `qkd-node <cmd> --config <config>`; returns (success, stderr + stdout). A `run` still
/// running after a generous deadline is killed and counts as a success (it started serving).
fn qkd_node(cmd: &str, config: &Path) -> (bool, String) {
    let mut child = Command::new(BIN)
        .arg(cmd)
        .arg("--config")
        .arg(config)
        .env("QKD_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    (out.status.success(), text)
}

/// Defect 7: `check` reads every file the configuration names and the semantic rules; `run`
/// passes the same checks before it touches the store.
#[test]
fn bad_files_and_rules_are_named_and_run_leaves_the_data_directory_untouched() {
    let net = Net::setup(1_000_000);
    let dir = net.path().join("A");
    let pki = net.path().join("pki");
    let good = std::fs::read_to_string(dir.join("node.toml")).unwrap();

    // A real store first: run the node once, then kill it.
    net.start("A");
    let store = dir.join("data").join("store.redb");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !store.exists() {
        assert!(Instant::now() < deadline, "no store\n{}", net.log("A"));
        std::thread::sleep(Duration::from_millis(20));
    }
    net.kill9("A");

    let (ok, out) = qkd_node("check", &dir.join("node.toml"));
    assert!(ok, "{out}");

    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "not PEM at all\n").unwrap();
    let cert = pki.join("node-A.crt").display().to_string();
    let key = pki.join("node-A.key").display().to_string();
    let ca = pki.join("ca.crt").display().to_string();
    let pinned = net
        .path()
        .join("B/data/keys/signing.pub")
        .display()
        .to_string();
    let missing = dir.join("missing.pem").display().to_string();
    let g = garbage.display().to_string();
    let other_key = pki.join("node-B.key").display().to_string();
    let pair = "\n[[pair]]\nsaes = [\"ENC-A1\", \"ENC-B1\"]\npolicy = \"qkd+pq\"\n";
    assert!(good.contains("[grpc]\n"), "the demo configures a gRPC port");
    let grpc = |lines: &str| good.replacen("[grpc]\n", &format!("[grpc]\n{lines}\n"), 1);
    // (configuration, TOML key and file the message must name)
    let cases: Vec<(String, &str, String)> = vec![
        (good.replace(&cert, &missing), "tls.cert", missing.clone()),
        (good.replace(&cert, &g), "tls.cert", g.clone()),
        (good.replace(&key, &other_key), "tls.key", other_key.clone()),
        (good.replace(&ca, &g), "tls.ca", g.clone()),
        (
            good.replace(&pinned, &missing),
            "node_info[0].signing_public_key",
            missing.clone(),
        ),
        (format!("{good}{pair}{pair}"), "pair[1]", String::new()),
        // The gRPC port's own files, when `[grpc]` names them.
        (
            grpc(&format!("cert = {missing:?}\nkey = {key:?}")),
            "grpc.cert",
            missing.clone(),
        ),
        (
            grpc(&format!(
                "cert = {:?}\nkey = {key:?}",
                pki.join("node-B.crt").display().to_string()
            )),
            "grpc.key",
            key.clone(),
        ),
        (grpc(&format!("ca = {g:?}")), "grpc.ca", g.clone()),
    ];
    for (text, key, file) in cases {
        let bad = dir.join("bad.toml");
        std::fs::write(&bad, &text).unwrap();
        let (ok, out) = qkd_node("check", &bad);
        assert!(!ok, "check accepted a bad configuration ({key})\n{out}");
        assert!(out.contains(key), "{key} not named: {out}");
        assert!(out.contains(&file), "{file} not named: {out}");
        assert!(out.contains("bad.toml"), "configuration not named: {out}");

        let before = snapshot(&dir.join("data"));
        let (ok, out) = qkd_node("run", &bad);
        assert!(!ok, "run accepted a bad configuration ({key})\n{out}");
        assert!(out.contains(key), "{key} not named by run: {out}");
        assert!(
            snapshot(&dir.join("data")) == before,
            "run changed the data directory ({key})\n{out}"
        );
    }
}
