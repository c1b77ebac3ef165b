//! What operators see and keep (issue 12, items 1 and 3): Prometheus metrics at `/metrics`,
//! alarms at `/alarms` and in `/status`, the hash-chained audit log and its SIEM forwarding, on
//! real `qkd-node` processes. Metrics follow the real state (a fibre cut takes the link down and
//! raises the alarm; a pool drained while its peer is away raises `pool_low`, which clears when
//! the pool fills again); refusals are audited; the log verifies, and a tampered copy does not;
//! and no key byte appears in metrics, status, audit log, SIEM messages or logs.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt};

use crate::harness::{BIN, Net, POOL, keys};

/// The pool level that raises `pool_low` in these tests.
const POOL_MIN: u64 = 64;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Sets both ends' link model (they must agree) and fast, undebounced alarms on every node.
fn configure(net: &Net, model: toml::Table, start_unix_ms: u64) {
    for node in ["A", "B"] {
        let model = model.clone();
        net.edit_config(node, |t| {
            let link = &mut t["link"].as_array_mut().unwrap()[0];
            let source = link["source"].as_table_mut().unwrap();
            source.insert("model".into(), toml::Value::Table(model));
            source.insert(
                "start_unix_ms".into(),
                toml::Value::Integer(start_unix_ms as i64),
            );
            let alarms: toml::Table = toml::from_str(&format!(
                "interval_ms = 100\nraise_after_ms = 0\nclear_after_ms = 0\npool_min_keys = {POOL_MIN}\n"
            ))
            .unwrap();
            t.insert("alarms".into(), toml::Value::Table(alarms));
        });
    }
}

fn admin(net: &Net, node: &str) -> String {
    format!("http://{}", net.listen(node).admin.unwrap())
}

async fn get_text(url: &str) -> String {
    reqwest::get(url).await.unwrap().text().await.unwrap()
}

/// Every sample of the exposition: (name, labels) → value.
fn samples(text: &str) -> Vec<(String, BTreeMap<String, String>, f64)> {
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let value: f64 = value.parse().unwrap_or(f64::NAN);
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => {
                let body = rest.strip_suffix('}').unwrap();
                let mut m = BTreeMap::new();
                // Label values here never hold `",` (IDs, labels and alarm subjects).
                for pair in body.split("\",").filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once("=\"").unwrap();
                    m.insert(k.to_owned(), v.trim_end_matches('"').to_owned());
                }
                (n.to_owned(), m)
            }
            None => (series.to_owned(), BTreeMap::new()),
        };
        out.push((name, labels, value));
    }
    out
}

/// The value of the one sample of `name` whose labels include `labels`.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples(text)
        .into_iter()
        .find(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| v)
}

/// Polls `node`'s active alarms until `pred` holds; returns them.
async fn wait_alarms(
    net: &Net,
    node: &str,
    what: &str,
    pred: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let active = alarms(net, node).await;
        if pred(&active) {
            return active;
        }
        assert!(
            Instant::now() < deadline,
            "node {node}: never {what}\n{active:?}\n{}",
            net.log(node)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `node`'s metrics until `pred` holds; returns that exposition.
async fn wait_metrics(net: &Net, node: &str, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let text = get_text(&format!("{}/metrics", admin(net, node))).await;
        if pred(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "node {node}: never {what}\n{text}\n{}",
            net.log(node)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn alarms(net: &Net, node: &str) -> Vec<Value> {
    reqwest::get(format!("{}/alarms", admin(net, node)))
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn has_alarm(alarms: &[Value], kind: &str, subject: &str) -> bool {
    alarms
        .iter()
        .any(|a| a["alarm"] == kind && a["subject"] == subject)
}

fn audit_path(net: &Net, node: &str) -> std::path::PathBuf {
    net.path().join(node).join("data").join("audit.log")
}

fn audit_records(net: &Net, node: &str) -> Vec<Value> {
    std::fs::read_to_string(audit_path(net, node))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn count(records: &[Value], event: &str, alarm: &str, subject: &str) -> usize {
    records
        .iter()
        .filter(|r| r["event"] == event && r["alarm"] == alarm && r["subject"] == subject)
        .count()
}

fn verify(file: &std::path::Path) -> (bool, String) {
    let out = Command::new(BIN)
        .args(["audit", "verify"])
        .arg(file)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A fibre cut in the link model takes the link down at both ends: the metrics say so, the
/// `link_down` alarm raises with the device's reason and clears when the fibre is repaired, and
/// the audit log records both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_link_shows_down_raises_its_alarm_and_clears() {
    let net = Net::setup(1_000_000);
    // The cut starts 20 s after the models' start and lasts 15 s: long enough to be seen by a
    // poll every 50 ms on a busy machine, late enough that both nodes are up by then.
    let start = now_ms();
    let (cut_at, cut_for) = (20_000, 15_000);
    let model: toml::Table = toml::from_str(&format!(
        "kind = \"constant-rate\"\nbits_per_second = 1000000\nevents = [{{ kind = \"fibre-cut\", at_s = {}, repair_s = {} }}]\n",
        cut_at / 1000,
        cut_for / 1000
    ))
    .unwrap();
    configure(&net, model, start);
    net.start("A");
    net.start("B");
    let up = |t: &str| metric(t, "qkd_link_up", &[("link", "A-B")]) == Some(1.0);
    let down = |t: &str| metric(t, "qkd_link_up", &[("link", "A-B")]) == Some(0.0);
    let text = wait_metrics(&net, "A", "up", up).await;
    assert!(
        now_ms() < start + cut_at,
        "the nodes took longer to start than the test allows before the cut"
    );
    assert_eq!(
        metric(&text, "qkd_link_state", &[("link", "A-B"), ("state", "up")]),
        Some(1.0)
    );
    for node in ["A", "B"] {
        let text = wait_metrics(&net, node, "down", down).await;
        assert_eq!(
            metric(
                &text,
                "qkd_link_state",
                &[("link", "A-B"), ("state", "down")]
            ),
            Some(1.0),
            "{node}"
        );
        assert_eq!(
            metric(&text, "qkd_link_secret_key_rate_bps", &[("link", "A-B")]),
            Some(0.0),
            "{node}"
        );
        let active = alarms(&net, node).await;
        let a = active
            .iter()
            .find(|a| a["alarm"] == "link_down" && a["subject"] == "A-B")
            .unwrap_or_else(|| panic!("{node}: {active:?}"));
        assert_eq!(a["severity"], "critical");
        assert!(a["cause"].as_str().unwrap().contains("fibre"), "{a}");
        let text = get_text(&format!("{}/metrics", admin(&net, node))).await;
        assert_eq!(
            metric(
                &text,
                "qkd_alarm_active",
                &[("alarm", "link_down"), ("subject", "A-B")]
            ),
            Some(1.0),
            "{node}"
        );
        let status: Value = net.status(node).await;
        assert!(
            has_alarm(status["alarms"].as_array().unwrap(), "link_down", "A-B"),
            "{status}"
        );
    }
    for node in ["A", "B"] {
        let text = wait_metrics(&net, node, "up again", up).await;
        assert!(now_ms() >= start + cut_at + cut_for - 1_000, "{node}");
        assert_eq!(
            metric(
                &text,
                "qkd_alarm_active",
                &[("alarm", "link_down"), ("subject", "A-B")]
            ),
            Some(0.0),
            "{node}"
        );
        assert!(!has_alarm(&alarms(&net, node).await, "link_down", "A-B"));
    }
    net.stop("A");
    net.stop("B");
    for node in ["A", "B"] {
        let records = audit_records(&net, node);
        assert_eq!(
            count(&records, "alarm_raised", "link_down", "A-B"),
            1,
            "{node}: {records:?}"
        );
        let cleared: Vec<&Value> = records
            .iter()
            .filter(|r| r["event"] == "alarm_cleared" && r["alarm"] == "link_down")
            .collect();
        assert_eq!(cleared.len(), 1, "{node}");
        assert!(
            cleared[0]["cleared_because"]
                .as_str()
                .unwrap()
                .contains("up again")
        );
        let (ok, out) = verify(&audit_path(&net, node));
        assert!(ok, "{out}");
    }
}

/// A test SIEM collector: a real TLS listener that parses RFC 5425 octet-counted frames.
struct Collector {
    addr: std::net::SocketAddr,
    messages: Arc<Mutex<Vec<String>>>,
    ca: std::path::PathBuf,
}

async fn collector(dir: &std::path::Path) -> Collector {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = vec![rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap())];
    let cert = params.signed_by(&key, &ca).unwrap();
    let ca_path = dir.join("siem-ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    let server = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let messages = Arc::new(Mutex::new(Vec::new()));
    let m = messages.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, m) = (acceptor.clone(), m.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                read_frames(tls, &m).await;
            });
        }
    });
    Collector {
        addr,
        messages,
        ca: ca_path,
    }
}

/// Reads RFC 5425 octet-counted frames (`MSG-LEN SP SYSLOG-MSG`) into `messages` until the
/// connection ends.
pub(crate) async fn read_frames(
    stream: impl tokio::io::AsyncRead + Unpin,
    messages: &Mutex<Vec<String>>,
) {
    let mut r = tokio::io::BufReader::new(stream);
    loop {
        let mut len = Vec::new();
        if r.read_until(b' ', &mut len).await.unwrap_or(0) == 0 {
            return;
        }
        let n: usize = std::str::from_utf8(&len[..len.len() - 1])
            .unwrap()
            .parse()
            .expect("octet count");
        let mut msg = vec![0; n];
        if r.read_exact(&mut msg).await.is_err() {
            return;
        }
        messages
            .lock()
            .unwrap()
            .push(String::from_utf8(msg).unwrap());
    }
}

/// The pool alarm fires at start (empty pools) and clears once they fill; fires again when the
/// pool is drained while the slave's node is away, and clears when it is back. A QBER above the
/// threshold raises `qber_high`. Refused requests are audited (authentication failure: a
/// certificate of an SAE attached elsewhere; authorisation refusal: a pair that may not share
/// keys); the log verifies and detects tampering; every record reaches the SIEM collector as
/// RFC 5424 over TLS; no key byte appears anywhere an operator looks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_and_qber_alarms_metrics_audit_and_siem_follow_real_state() {
    let net = Net::setup(1_000_000);
    let model: toml::Table =
        toml::from_str("kind = \"constant-rate\"\nbits_per_second = 1000000\nqber = 0.09\n")
            .unwrap();
    configure(&net, model, now_ms().saturating_sub(5_000));
    let siem = collector(&net.path()).await;
    net.edit_config("A", |t| {
        let audit: toml::Table = toml::from_str(&format!(
            "[siem]\naddress = \"{}\"\nca = \"{}\"\n",
            siem.addr,
            siem.ca.display()
        ))
        .unwrap();
        t.insert("audit".into(), toml::Value::Table(audit));
    });
    net.start("A");
    net.start("B");
    let pool = |t: &str| {
        metric(
            t,
            "qkd_pair_pool_keys",
            &[("master", "ENC-A1"), ("slave", "ENC-B1")],
        )
        .unwrap_or(0.0)
    };
    let text = wait_metrics(&net, "A", "a full pool", |t| pool(t) >= POOL as f64).await;
    // The metrics follow the state.
    assert_eq!(
        metric(
            &text,
            "qkd_node_info",
            &[("node", "A"), ("kme_id", "KME-A")]
        ),
        Some(1.0)
    );
    assert_eq!(metric(&text, "qkd_link_up", &[("link", "A-B")]), Some(1.0));
    assert_eq!(
        metric(&text, "qkd_link_qber", &[("link", "A-B")]),
        Some(0.09)
    );
    assert_eq!(
        metric(&text, "qkd_link_secret_key_rate_bps", &[("link", "A-B")]),
        Some(1_000_000.0)
    );
    for m in [
        "qkd_link_key_generated_bits_total",
        "qkd_link_key_consumed_bits_total",
        "qkd_link_key_stored_bits",
    ] {
        assert!(
            metric(&text, m, &[("link", "A-B")]).is_some_and(|v| v > 0.0),
            "{m}\n{text}"
        );
    }
    assert!(metric(&text, "qkd_store_commits_total", &[]).is_some_and(|v| v > 0.0));
    assert!(metric(&text, "qkd_store_bytes_written_total", &[]).is_some_and(|v| v > 0.0));
    assert!(metric(&text, "qkd_store_commit_duration_seconds_count", &[]).is_some_and(|v| v > 0.0));
    assert!(
        metric(
            &text,
            "qkd_relay_batch_duration_seconds_count",
            &[("result", "ok")]
        )
        .is_some_and(|v| v > 0.0),
        "{text}"
    );
    assert!(
        metric(
            &text,
            "qkd_certificate_expiry_timestamp_seconds",
            &[("certificate", "tls.cert")]
        )
        .is_some_and(|v| v > (now_ms() / 1000) as f64)
    );
    // Standing conditions: the QBER of the link is above the threshold (8 %). The pools were
    // empty at the first evaluation (at start): wait for the evaluation that sees them full.
    let active = wait_alarms(&net, "A", "pool_low of ENC-A1->ENC-B1 cleared", |a| {
        !has_alarm(a, "pool_low", "ENC-A1->ENC-B1")
    })
    .await;
    let q = active
        .iter()
        .find(|a| a["alarm"] == "qber_high")
        .unwrap_or_else(|| panic!("{active:?}"));
    assert!(q["cause"].as_str().unwrap().contains("9.00 %"), "{q}");
    assert!(
        !has_alarm(&active, "pool_low", "ENC-A1->ENC-B1"),
        "{active:?}"
    );

    // Refused requests: ENC-B1's certificate at node A names no SAE attached there; ENC-A1 may
    // not pair with ENC-B2.
    let url = format!("{}ENC-A1/status", net.base("A"));
    let r = net.clients["ENC-B1"].get(url).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let (code, _) = net.call("ENC-A1", "ENC-B2/enc_keys", None).await;
    assert_eq!(code, 401);
    // A client whose certificate no CA here vouches for (claiming to be ENC-A1) fails the TLS
    // handshake: counted per port, audited in aggregate.
    let stranger = stranger_client(&net);
    let r = stranger
        .get(format!("{}ENC-B1/status", net.base("A")))
        .send()
        .await;
    assert!(r.is_err() || r.unwrap().status().as_u16() != 200);
    wait_metrics(&net, "A", "a failed handshake counted", |t| {
        metric(
            t,
            "qkd_tls_handshake_failures_total",
            &[("port", "etsi014")],
        )
        .is_some_and(|v| v >= 1.0)
    })
    .await;

    // Keys delivered, and their bytes, to look for later.
    let mut delivered = Vec::new();
    let (code, body) = net.call("ENC-A1", "ENC-B1/enc_keys?number=128", None).await;
    assert_eq!(code, 200, "{body}");
    delivered.extend(keys(&body));

    // The slave's node goes away: the pool cannot refill, and draining it raises the alarm.
    net.stop("B");
    loop {
        let (code, body) = net.call("ENC-A1", "ENC-B1/enc_keys?number=64", None).await;
        if code != 200 {
            break;
        }
        delivered.extend(keys(&body));
    }
    let text = wait_metrics(&net, "A", "a low pool", |t| pool(t) < POOL_MIN as f64).await;
    assert!(pool(&text) < POOL_MIN as f64);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !has_alarm(&alarms(&net, "A").await, "pool_low", "ENC-A1->ENC-B1") {
        assert!(Instant::now() < deadline, "{}", net.log("A"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = get_text(&format!("{}/metrics", admin(&net, "A"))).await;
    assert_eq!(
        metric(
            &text,
            "qkd_alarm_active",
            &[("alarm", "pool_low"), ("subject", "ENC-A1->ENC-B1")]
        ),
        Some(1.0)
    );
    assert!(
        metric(
            &text,
            "qkd_pair_keys_delivered_total",
            &[("master", "ENC-A1"), ("slave", "ENC-B1")]
        )
        .is_some_and(|v| v >= delivered.len() as f64),
        "{text}"
    );
    assert!(
        metric(
            &text,
            "qkd_api_requests_total",
            &[
                ("api", "etsi014"),
                ("operation", "enc_keys"),
                ("outcome", "ok")
            ]
        )
        .is_some_and(|v| v >= 2.0)
    );
    assert_eq!(
        metric(
            &text,
            "qkd_api_requests_total",
            &[
                ("api", "etsi014"),
                ("operation", "enc_keys"),
                ("outcome", "not_permitted")
            ]
        ),
        Some(1.0)
    );
    assert!(metric(&text, "qkd_connections_open", &[("port", "etsi014")]).is_some());

    // The slave's node is back: the pool refills and the alarm clears.
    net.start("B");
    wait_metrics(&net, "A", "a refilled pool", |t| pool(t) >= POOL_MIN as f64).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while has_alarm(&alarms(&net, "A").await, "pool_low", "ENC-A1->ENC-B1") {
        assert!(Instant::now() < deadline, "{}", net.log("A"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status: String = get_text(&format!("{}/status", admin(&net, "A"))).await;
    let metrics_text = get_text(&format!("{}/metrics", admin(&net, "A"))).await;
    net.stop("A");
    net.stop("B");

    // The audit log: start with the configuration, both refusals, the pool alarm raised and
    // cleared twice (at start, and around the drain), the QBER alarm, the stop.
    let records = audit_records(&net, "A");
    let start = &records[0];
    assert_eq!(start["event"], "start", "{start}");
    assert_eq!(start["config"]["node"], "A");
    assert_eq!(start["config"]["links"][0]["id"], "A-B");
    assert_eq!(start["previous_chain"], "ok");
    assert_eq!(records.last().unwrap()["event"], "stop");
    let auth: Vec<&Value> = records
        .iter()
        .filter(|r| r["event"] == "authentication_failure")
        .collect();
    assert_eq!(auth.len(), 1, "{records:?}");
    assert_eq!(auth[0]["api"], "etsi014");
    assert_eq!(auth[0]["outcome"], "not_admitted");
    let refused: Vec<&Value> = records
        .iter()
        .filter(|r| r["event"] == "authorisation_refusal")
        .collect();
    assert_eq!(refused.len(), 1, "{records:?}");
    assert_eq!(refused[0]["operation"], "enc_keys");
    let handshakes: Vec<&Value> = records
        .iter()
        .filter(|r| r["event"] == "tls_handshakes_failed")
        .collect();
    assert!(
        handshakes
            .iter()
            .any(|r| r["port"] == "etsi014" && r["count"].as_u64() >= Some(1)),
        "{records:?}"
    );
    assert_eq!(
        count(&records, "alarm_raised", "pool_low", "ENC-A1->ENC-B1"),
        2
    );
    assert_eq!(
        count(&records, "alarm_cleared", "pool_low", "ENC-A1->ENC-B1"),
        2
    );
    assert_eq!(count(&records, "alarm_raised", "qber_high", "A-B"), 1);
    let (ok, out) = verify(&audit_path(&net, "A"));
    assert!(ok, "{out}");
    assert!(out.contains(&format!("{} records", records.len())), "{out}");

    // Every record reached the SIEM as RFC 5424 with the JSON line as MSG, in order.
    let deadline = Instant::now() + Duration::from_secs(30);
    while siem.messages.lock().unwrap().len() < records.len() {
        assert!(
            Instant::now() < deadline,
            "{} of {} records at the collector\n{}",
            siem.messages.lock().unwrap().len(),
            records.len(),
            net.log("A")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let messages = siem.messages.lock().unwrap().clone();
    let lines: Vec<String> = std::fs::read_to_string(audit_path(&net, "A"))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    for (m, line) in messages.iter().zip(&lines) {
        let (header, json) = m.split_once(" - ").unwrap();
        assert_eq!(json, line);
        let fields: Vec<&str> = header.split(' ').collect();
        assert!(
            fields[0].starts_with('<') && fields[0].ends_with(">1"),
            "{header}"
        );
        assert_eq!(fields[2], "A", "{header}");
        assert_eq!(fields[3], "qkd-node", "{header}");
        let v: Value = serde_json::from_str(json).unwrap();
        assert_eq!(fields[5], v["event"].as_str().unwrap(), "{header}");
    }

    // Tampering is found: an edited record, a removed record, records swapped.
    let tampered = net.path().join("tampered.log");
    let edit = |f: &dyn Fn(&mut Vec<String>)| {
        let mut l = lines.clone();
        f(&mut l);
        std::fs::write(&tampered, l.join("\n") + "\n").unwrap();
        verify(&tampered)
    };
    let i = lines
        .iter()
        .position(|l| l.contains("authorisation_refusal"))
        .unwrap();
    let (ok, out) = edit(&|l| l[i] = l[i].replace("enc_keys", "status"));
    assert!(
        !ok && out.contains(&format!("line {}", i + 2)) && out.contains("chain broken"),
        "{out}"
    );
    let (ok, out) = edit(&|l| {
        l.remove(i);
    });
    assert!(!ok && out.contains(&format!("line {}", i + 1)), "{out}");
    let (ok, out) = edit(&|l| l.swap(i, i + 1));
    assert!(!ok && out.contains(&format!("line {}", i + 1)), "{out}");

    // No key byte anywhere an operator looks: metrics, status, audit log, SIEM, logs.
    assert!(delivered.len() >= POOL as usize);
    let audit_text = lines.join("\n");
    let siem_text = messages.join("\n");
    let logs = format!("{}{}", net.log("A"), net.log("B"));
    for (id, bytes) in &delivered {
        let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
        let hex = hex_lower(bytes);
        for (what, text) in [
            ("metrics", &metrics_text),
            ("status", &status),
            ("audit log", &audit_text),
            ("SIEM", &siem_text),
            ("logs", &logs),
        ] {
            assert!(
                !text.contains(&b64) && !text.contains(&hex),
                "key bytes in {what}"
            );
        }
        // Not even the key IDs go to the audit trail.
        assert!(!audit_text.contains(id.as_str()), "key ID in the audit log");
    }
}

/// An HTTPS client that trusts the network's CA but presents a self-signed certificate naming
/// ENC-A1: what an impostor without a certificate from the network's CA would do.
fn stranger_client(net: &Net) -> reqwest::Client {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = vec![rcgen::SanType::URI(
        rcgen::string::Ia5String::try_from("urn:qkd:sae:ENC-A1").unwrap(),
    )];
    let cert = params.self_signed(&key).unwrap();
    let ca = std::fs::read(net.path().join("pki").join("ca.crt")).unwrap();
    let pem = format!("{}{}", cert.pem(), key.serialize_pem());
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&ca).unwrap()])
        .identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap())
        .build()
        .unwrap()
}

fn hex_lower(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
