//! `qkd-node demo` as an operator runs it: the commands it prints work as printed (the SKIP
//! exchange, run through reqwest with the printed certificates and URLs; the `qkd-link` tunnel,
//! run for real), and `demo.json` lists every endpoint of every node, each of which answers.

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::BIN;

/// A child process stopped on drop: the demo with SIGTERM by its PID (so that it stops its
/// nodes), anything else killed.
struct Proc {
    child: Child,
    term: bool,
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.term {
            let _ = Command::new("kill")
                .arg(self.child.id().to_string())
                .status();
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(30) {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTPS client presenting `cert` and `key`, trusting only `ca`.
fn client(ca: &str, cert: &str, key: &str) -> reqwest::Client {
    let mut pem = std::fs::read(cert).unwrap();
    pem.extend(std::fs::read(key).unwrap());
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap()])
        .identity(reqwest::Identity::from_pem(&pem).unwrap())
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// A printed `curl` line as a request: client certificate, key, CA and URL (`$KEY_ID` replaced).
fn curl(line: &str, key_id: &str) -> (reqwest::Client, String) {
    let tokens: Vec<&str> = line.split_whitespace().collect();
    let flag = |f: &str| {
        let i = tokens
            .iter()
            .position(|t| *t == f)
            .unwrap_or_else(|| panic!("no {f} in {line}"));
        tokens[i + 1]
    };
    let url = tokens
        .iter()
        .map(|t| t.trim_matches(|c| c == '\'' || c == '"' || c == ';'))
        .find(|t| t.starts_with("https://"))
        .unwrap_or_else(|| panic!("no URL in {line}"))
        .replace("$KEY_ID", key_id);
    (client(flag("--cacert"), flag("--cert"), flag("--key")), url)
}

/// Polls `f` until it gives `Some`, for up to two minutes (key comes from simulated links on a
/// busy machine).
async fn poll<T, F: std::future::Future<Output = Result<T, String>>>(
    what: &str,
    mut f: impl FnMut() -> F,
) -> T {
    let t0 = Instant::now();
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if t0.elapsed() > Duration::from_secs(120) => panic!("{what}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

fn str_at<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no {ptr} in {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_prints_working_skip_and_qkd_link_commands_and_lists_every_endpoint() {
    // The demo prints the qkd-link beside it: have one there.
    let link_bin = qkd_testnet::bin_beside(BIN.as_ref(), "qkd-link", "qkd-link");
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args(["demo", "--topology", "pair", "--link-rate-bps", "50000000"])
        .args(["--pool-keys", "256", "--data-dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let _demo = Proc { child, term: true };
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    let printed = poll("the demo's instructions", || {
        let lines = lines.lock().unwrap().clone();
        async move {
            if lines.iter().any(|l| l.starts_with("Press Ctrl-C")) {
                Ok(lines)
            } else {
                Err(format!("{lines:?}"))
            }
        }
    })
    .await;
    let desc: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("demo.json")).unwrap()).unwrap();
    assert_eq!(desc["schema_version"], 2);

    // demo.json: every address of every node's listen.json, and each endpoint answers.
    let ca = str_at(&desc, "/nodes/0/ca_file").to_owned();
    let op = client(
        &ca,
        str_at(&desc, "/operator/cert_file"),
        str_at(&desc, "/operator/key_file"),
    );
    let plain = reqwest::Client::builder().no_proxy().build().unwrap();
    let nodes = desc["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 2);
    for n in nodes {
        let id = str_at(n, "/id");
        let listen: Value = serde_json::from_slice(
            &std::fs::read(dir.path().join(id).join("data").join("listen.json")).unwrap(),
        )
        .unwrap();
        let e = &n["endpoints"];
        let text = e.to_string();
        for field in ["etsi", "peer", "admin", "grpc", "skip", "control"] {
            let addr = str_at(&listen, &format!("/{field}"));
            assert!(text.contains(addr), "node {id}: {field} {addr} not in {e}");
        }
        for f in ["cert_file", "key_file"] {
            assert!(Path::new(str_at(n, &format!("/node_cert/{f}"))).is_file());
        }
        for addr in [
            str_at(e, "/grpc").to_owned(),
            str_at(e, "/peer").to_owned(),
            str_at(e, "/etsi014")
                .trim_start_matches("https://")
                .split('/')
                .next()
                .unwrap()
                .to_owned(),
            str_at(e, "/skip").trim_start_matches("https://").to_owned(),
        ] {
            tokio::net::TcpStream::connect(&addr)
                .await
                .unwrap_or_else(|err| panic!("node {id}: {addr}: {err}"));
        }
        for view in [
            "status",
            "alarms",
            "metrics",
            "healthz",
            "dashboard",
            "etsi015",
        ] {
            let url = str_at(e, &format!("/admin/{view}"));
            let code = plain.get(url).send().await.unwrap().status();
            assert_eq!(code, 200, "node {id}: {view} {url}");
        }
        let whoami = format!("{}/v1/whoami", str_at(e, "/control"));
        let code = op.get(&whoami).send().await.unwrap().status();
        assert_eq!(code, 200, "node {id}: {whoami}");
    }
    for s in desc["saes"].as_array().unwrap() {
        assert!(Path::new(str_at(s, "/cert_file")).is_file());
    }

    // The printed SKIP exchange: capabilities, a new key at A, the same key by ID at B.
    let skip_a = str_at(&desc, "/nodes/0/endpoints/skip");
    let skip_b = str_at(&desc, "/nodes/1/endpoints/skip");
    let skip: Vec<&String> = printed
        .iter()
        .filter(|l| l.contains("curl ") && (l.contains(skip_a) || l.contains(skip_b)))
        .collect();
    assert_eq!(skip.len(), 3, "{printed:#?}");
    let (c, url) = curl(skip[0], "");
    let caps: Value = c.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(caps["localSystemID"], "KP_A", "{url}: {caps}");
    let (c, url) = curl(skip[1], "");
    let new: Value = poll("a new SKIP key at A", || {
        let req = c.get(&url);
        async move {
            let r = req.send().await.map_err(|e| e.to_string())?;
            match r.status().as_u16() {
                200 => r.json().await.map_err(|e| e.to_string()),
                503 => Err("503".into()),
                code => panic!("{code}: {}", r.text().await.unwrap_or_default()),
            }
        }
    })
    .await;
    let (c, url) = curl(skip[2], str_at(&new, "/keyId"));
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200, "{url}");
    let same: Value = r.json().await.unwrap();
    assert_eq!(same["key"], new["key"], "B got other bytes than A");

    // The printed qkd-link tunnel, run as printed, and the printed curl through it.
    let find = |pat: &str| {
        printed
            .iter()
            .find(|l| l.contains(pat))
            .unwrap_or_else(|| panic!("no {pat:?} in {printed:#?}"))
            .clone()
    };
    let mut links = Vec::new();
    for role in ["qkd-link serve ", "qkd-link listen "] {
        let line = find(role);
        let mut tokens: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(tokens.pop(), Some("&"), "{line}");
        assert_eq!(Path::new(tokens[0]), link_bin, "{line}");
        let log = std::fs::File::create(dir.path().join(format!("{}.log", tokens[1]))).unwrap();
        let child = Command::new(tokens[0])
            .args(&tokens[1..])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        links.push(Proc { child, term: false });
    }
    let through = find("curl -s http://");
    let url = through.split_whitespace().last().unwrap().to_owned();
    let body = poll("the printed curl through the tunnel", || {
        let req = plain.get(&url);
        async move {
            let r = req.send().await.map_err(|e| e.to_string())?;
            if r.status() != 200 {
                return Err(r.status().to_string());
            }
            r.text().await.map_err(|e| e.to_string())
        }
    })
    .await;
    assert_eq!(body, "ok\n", "{url}");
    drop(links);
}
