//! Operators' control (issue 12, item 4): the control listener admits only management
//! certificates and audits every change; `qkdctl` shows nodes and networks, checks
//! configurations offline, and drains a link of a live 3-node network, which the relay then
//! routes around while keys keep flowing.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{BIN, Net};

const QKDCTL: &str = env!("CARGO_BIN_EXE_qkdctl");

/// An HTTPS client presenting `pki/<name>.crt` (or no certificate), trusting the demo CA.
fn client(net: &Net, name: Option<&str>) -> reqwest::Client {
    let pki = net.path().join("pki");
    let mut b = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&net.ca().unwrap()).unwrap()])
        .no_proxy()
        .http1_only()
        .timeout(Duration::from_secs(30));
    if let Some(name) = name {
        let mut pem = std::fs::read(pki.join(format!("{name}.crt"))).unwrap();
        pem.extend(std::fs::read(pki.join(format!("{name}.key"))).unwrap());
        b = b.identity(reqwest::Identity::from_pem(&pem).unwrap());
    }
    b.build().unwrap()
}

fn audit_records(net: &Net, node: &str) -> Vec<Value> {
    std::fs::read_to_string(net.path().join(node).join("data").join("audit.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Polls until `pred` holds for the node's `/status`; panics after 90 s.
async fn wait_status(net: &Net, node: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let st = net.status(node).await;
        if pred(&st) {
            return st;
        }
        assert!(Instant::now() < deadline, "{node}: never {what}: {st:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn usable(st: &Value) -> Vec<String> {
    st["routing"]["usable_links"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

fn link_admin(st: &Value, link: &str) -> String {
    st["links"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["link"] == link)
        .map(|l| l["admin"].as_str().unwrap().to_owned())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_listener_admits_only_operators_and_audits_every_change() {
    let net = Net::setup(1_000_000);
    net.start("A");
    net.start("B");
    net.wait_for_keys("ENC-A1", "ENC-B1", 1).await;
    let control = net.listen("A").control.expect("the demo enables [control]");
    let url = |path: &str| format!("https://{control}{path}");

    let op = client(&net, Some("operator-demo"));
    let r = op.get(url("/v1/whoami")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let who: Value = r.json().await.unwrap();
    assert_eq!(
        (who["operator"].as_str(), who["node"].as_str()),
        (Some("demo"), Some("A"))
    );

    // An SAE's and a node's certificates, from the same CA, are refused; so is no certificate.
    for name in ["sae-ENC-A1", "node-B"] {
        let r = client(&net, Some(name))
            .post(url("/v1/links/A-B/drain"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 403, "{name}");
        let body: Value = r.json().await.unwrap();
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("not a management certificate"),
            "{body}"
        );
    }
    assert!(
        client(&net, None)
            .get(url("/v1/whoami"))
            .send()
            .await
            .is_err(),
        "a client without a certificate completes no handshake"
    );
    assert_eq!(link_admin(&net.status("A").await, "A-B"), "enabled");

    // An unknown link is refused; a drain applies once, then is unchanged; enable undoes it.
    let post = |path: &'static str| {
        let op = op.clone();
        let u = url(path);
        async move {
            let r = op.post(u).send().await.unwrap();
            let code = r.status().as_u16();
            (code, r.json::<Value>().await.unwrap())
        }
    };
    let (code, body) = post("/v1/links/X-Y/drain").await;
    assert_eq!(
        (code, body["outcome"].as_str()),
        (404, Some("refused")),
        "{body}"
    );
    let (code, body) = post("/v1/links/A-B/drain").await;
    assert_eq!(
        (code, body["outcome"].as_str()),
        (200, Some("applied")),
        "{body}"
    );
    let (code, body) = post("/v1/links/A-B/drain").await;
    assert_eq!(
        (code, body["outcome"].as_str()),
        (200, Some("unchanged")),
        "{body}"
    );
    let st = wait_status(&net, "A", "without usable links", |st| {
        usable(st).is_empty()
    })
    .await;
    assert_eq!(link_admin(&st, "A-B"), "drained");
    wait_status(&net, "B", "without usable links", |st| {
        usable(st).is_empty()
    })
    .await;
    let (code, body) = post("/v1/links/A-B/enable").await;
    assert_eq!(
        (code, body["outcome"].as_str()),
        (200, Some("applied")),
        "{body}"
    );
    wait_status(&net, "A", "with A-B usable", |st| usable(st) == ["A-B"]).await;

    // Every refusal and every change is in the audit log, which still verifies.
    let deadline = Instant::now() + Duration::from_secs(30);
    let records = loop {
        let records = audit_records(&net, "A");
        if records
            .iter()
            .any(|r| r["event"] == "control_action" && r["action"] == "link_enable")
        {
            break records;
        }
        assert!(Instant::now() < deadline, "no link_enable record");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let refused: Vec<&str> = records
        .iter()
        .filter(|r| r["event"] == "authentication_failure" && r["api"] == "control")
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(refused, ["sae_certificate", "node_certificate"]);
    let actions: Vec<(&str, &str, &str, &str)> = records
        .iter()
        .filter(|r| r["event"] == "control_action")
        .map(|r| {
            (
                r["operator"].as_str().unwrap(),
                r["action"].as_str().unwrap(),
                r["subject"].as_str().unwrap(),
                r["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            ("demo", "link_drain", "", "refused"),
            ("demo", "link_drain", "A-B", "applied"),
            ("demo", "link_drain", "A-B", "unchanged"),
            ("demo", "link_enable", "A-B", "applied"),
        ]
    );
    let out = Command::new(BIN)
        .args(["audit", "verify"])
        .arg(net.path().join("A").join("data").join("audit.log"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// Runs `qkdctl` with `args`; returns (success, stdout, stderr).
fn qkdctl(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(QKDCTL).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `qkdctl` with `args` and the certificate `pki/<cert>.crt` and its key.
fn qkdctl_as(net: &Net, cert: &str, args: &[&str]) -> (bool, String, String) {
    let pki = |f: String| {
        net.path()
            .join("pki")
            .join(f)
            .to_string_lossy()
            .into_owned()
    };
    let (crt, key) = (pki(format!("{cert}.crt")), pki(format!("{cert}.key")));
    let mut all = args.to_vec();
    all.extend(["--cert", &crt, "--key", &key]);
    qkdctl(&all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qkdctl_shows_the_network_and_drains_a_link_that_routes_avoid() {
    let net = Net::setup_topology("triangle", 1_000_000);
    let path = |p: &str| net.path().join(p).to_string_lossy().into_owned();
    let config_a = path("A/node.toml");

    // `check` runs the node's offline checks: a good file passes, a bad one names the problem.
    let (ok, out, err) = qkdctl(&["check", &config_a]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("OK (node A, 2 links"), "{out}");
    assert!(out.contains("control listener on 127.0.0.1:0"), "{out}");
    let bad = net.path().join("bad.toml");
    let text = std::fs::read_to_string(&config_a).unwrap();
    std::fs::write(
        &bad,
        text.replace("[control]\n", "[control]\nca = \"nope.pem\"\n"),
    )
    .unwrap();
    let (ok, _, err) = qkdctl(&["check", &bad.to_string_lossy()]);
    assert!(!ok);
    assert!(
        err.contains("control.ca") && err.contains("nope.pem"),
        "{err}"
    );

    for n in ["A", "B", "C"] {
        net.start(n);
    }
    net.wait_for_keys("ENC-A1", "ENC-B1", 2).await;
    let all = ["A-B", "A-C", "B-C"];
    for n in ["A", "B", "C"] {
        wait_status(&net, n, "seeing every link", |st| usable(st) == all).await;
    }

    // status, saes: from the admin listener named by the configuration.
    let (ok, out, err) = qkdctl(&["status", "--config", &config_a]);
    assert!(ok, "{err}");
    assert!(out.starts_with("node A (KME KME-A)"), "{out}");
    assert!(
        out.contains("A-B") && out.contains("A-C") && out.contains("enabled"),
        "{out}"
    );
    let (ok, out, _) = qkdctl(&["status", "--config", &config_a, "--json"]);
    assert!(ok);
    let st: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(st["node"], "A");
    let (ok, out, err) = qkdctl(&["saes", "--config", &config_a]);
    assert!(ok, "{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("urn:qkd:sae:ENC-A1") && l.contains("urn:qkd:sae:ENC-B1")),
        "{out}"
    );

    // network: from a network file and from the command line.
    let admins: Vec<(String, String)> = ["A", "B", "C"]
        .iter()
        .map(|n| (n.to_string(), net.listen(n).admin.unwrap().to_string()))
        .collect();
    let file = net.path().join("network.toml");
    let mut text = String::new();
    for (n, a) in &admins {
        text += &format!("[[node]]\nname = \"{n}\"\nadmin = \"{a}\"\n");
    }
    std::fs::write(&file, text).unwrap();
    let (ok, out, err) = qkdctl(&["network", "--network", &file.to_string_lossy()]);
    assert!(ok, "{err}");
    assert_eq!(
        out.lines().filter(|l| l.contains(" up ")).count(),
        3,
        "{out}"
    );
    let node_args: Vec<String> = admins.iter().map(|(n, a)| format!("{n}={a}")).collect();
    let mut args = vec!["network", "--json"];
    for a in &node_args {
        args.extend(["--node", a]);
    }
    let (ok, out, err) = qkdctl(&args);
    assert!(ok, "{err}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc.as_array().unwrap().len(), 3);
    assert_eq!(doc[2]["status"]["node"], "C");

    // Drain A-B with the operator's certificate; an SAE's is refused.
    let drain =
        |cert: &str| qkdctl_as(&net, cert, &["link", "drain", "A-B", "--config", &config_a]);
    let (ok, _, err) = drain("sae-ENC-A1");
    assert!(!ok);
    assert!(err.contains("not a management certificate"), "{err}");
    let (ok, out, err) = drain("operator-demo");
    assert!(ok, "{err}");
    assert!(out.starts_with("applied: link A-B drained"), "{out}");
    for n in ["A", "B", "C"] {
        wait_status(&net, n, "routing without A-B", |st| {
            usable(st) == ["A-C", "B-C"]
        })
        .await;
    }
    let (_, out, _) = qkdctl(&["network", "--network", &file.to_string_lossy()]);
    assert!(
        out.lines()
            .any(|l| l.starts_with("A ") && l.contains("A-B")),
        "the drained link shows: {out}"
    );

    // Keys keep flowing (every request answered 200), relayed around A-B through C: once the
    // batches that were under way have finished, A-B carries no more relay traffic.
    let a_b = |c: &[(String, qkd_testnet::LinkCounters)]| {
        c.iter().find(|(l, _)| l == "A-B").unwrap().1.relay_messages
    };
    let a_c = |c: &[(String, qkd_testnet::LinkCounters)]| {
        c.iter().find(|(l, _)| l == "A-C").unwrap().1.relay_keys
    };
    let start = net.counters("A").await.unwrap();
    let mut marks = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut fetched = 0;
    while marks.len() < 2 {
        let (code, body) = net
            .call_retrying("ENC-A1", "ENC-B1/enc_keys?number=64", None)
            .await;
        assert_eq!(code, 200, "{body}");
        fetched += 64;
        let now = net.counters("A").await.unwrap();
        let need = a_c(&start) + 64 * (marks.len() as u64 + 1);
        if a_c(&now) >= need {
            marks.push(a_b(&now));
        }
        assert!(
            Instant::now() < deadline,
            "no relay around A-B after {fetched} keys: {now:?}"
        );
    }
    assert_eq!(
        marks[0], marks[1],
        "A-B still carried relay messages after its drain"
    );
    let view: Value = reqwest::get(format!(
        "http://{}/restconf/data/etsi-qkd-sdn-node:qkd_node",
        net.listen("A").admin.unwrap()
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let node = &view["etsi-qkd-sdn-node:qkd_node"];
    let ab = node["qkd_links"]["qkd_link"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["qkd-stack:link_id"] == "A-B")
        .unwrap();
    assert_eq!(ab["qkdl_enable"], false);
    let app = node["qkd_applications"]["qkd_app"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["server_app_id"] == "urn:qkd:sae:ENC-A1")
        .unwrap();
    assert_eq!(
        app["backing_qkdl_id"].as_array().unwrap().len(),
        2,
        "{app:#}"
    );

    // Enable it again: routes may use it once more.
    let (ok, out, err) = qkdctl_as(
        &net,
        "operator-demo",
        &["link", "enable", "A-B", "--config", &config_a],
    );
    assert!(ok, "{err}");
    assert!(out.starts_with("applied"), "{out}");
    wait_status(&net, "A", "routing over A-B again", |st| usable(st) == all).await;
}

/// GET with an SAE's client: status and JSON body.
async fn get_as(client: &reqwest::Client, url: String) -> (u16, Value) {
    let r = client.get(url).send().await.unwrap();
    let code = r.status().as_u16();
    (code, r.json().await.unwrap_or(Value::Null))
}

/// Waits for the audit record of a reload asked for by `by`; returns it.
async fn reload_record(net: &Net, node: &str, by: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(r) = audit_records(net, node)
            .into_iter()
            .find(|r| r["event"] == "config_reload" && r["by"] == by)
        {
            return r;
        }
        assert!(Instant::now() < deadline, "no config_reload record by {by}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Item 5: SIGHUP and `qkdctl reload` apply `[alarms]`, SAEs and pairs live, under the rules
/// of a restart: a pair's policy change while its pool holds keys is refused unless the
/// operator asks to void the pools; one that would strand a key its master already has is
/// refused until the slave fetched it; a new SAE gets keys without a restart; what needs a
/// restart is refused; every attempt is audited and the node keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_applies_alarms_saes_and_pairs_live_and_refuses_what_needs_a_restart() {
    let net = Net::setup(1_000_000);
    net.start("A");
    net.start("B");
    net.wait_for_keys("ENC-A1", "ENC-B1", 1).await;

    net.edit_config("A", |t| {
        let alarms: toml::Table = toml::from_str("qber_max = 0.05\n").unwrap();
        t.insert("alarms".into(), toml::Value::Table(alarms));
    });
    let status = Command::new("kill")
        .args(["-HUP", &net.pid("A").to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let r = reload_record(&net, "A", "signal").await;
    assert_eq!(r["outcome"], "applied", "{r}");
    assert_eq!(r["detail"], "applied: alarms.qber_max", "{r}");

    let config = |node: &str| {
        net.path()
            .join(format!("{node}/node.toml"))
            .to_string_lossy()
            .into_owned()
    };
    let reload = |node: &str, cert: &str, void: bool| {
        let c = config(node);
        let mut args = vec!["reload", "--config", c.as_str()];
        if void {
            args.push("--void-pools");
        }
        qkdctl_as(&net, cert, &args)
    };

    // A change that needs a restart is refused, naming it; nothing changes.
    net.edit_config("A", |t| {
        t["relay"]["pool_keys"] = toml::Value::Integer(17);
    });
    let (ok, _, err) = reload("A", "operator-demo", false);
    assert!(!ok && err.contains("409"), "{err}");
    assert!(
        err.contains("relay.pool_keys cannot change without a restart"),
        "{err}"
    );
    net.edit_config("A", |t| {
        t["relay"].as_table_mut().unwrap().insert(
            "pool_keys".into(),
            toml::Value::Integer(i64::from(crate::harness::POOL as u32)),
        );
    });

    // A key on demand (not the default size: made for this request, not pooled) that ENC-A1
    // has and ENC-B1 has not fetched yet.
    let (code, body) = net.call("ENC-A1", "ENC-B1/enc_keys?size=512", None).await;
    assert_eq!(code, 200, "{body}");
    let waiting = crate::harness::keys(&body);

    // An ETSI 004 key stream of the pair, joined at B.
    let mut a1 = net.grpc("ENC-A1", "A");
    let mut b1 = net.grpc("ENC-B1", "B");
    let qos = || qkd_proto::keys::Qos {
        key_chunk_size: 32,
        max_bps: 32 * 8 * 10,
        ttl: 5,
        timeout: 10_000,
        ..Default::default()
    };
    let open = |peer: &str, join: Option<String>| qkd_proto::keys::OpenStreamRequest {
        peer_sae_id: peer.into(),
        qos: Some(qos()),
        key_stream_id: join,
    };
    let ksid = a1
        .open_stream(open("ENC-B1", None))
        .await
        .unwrap()
        .into_inner()
        .key_stream_id;
    b1.open_stream(open("ENC-A1", Some(ksid.clone())))
        .await
        .unwrap();

    // The pair goes qkd-only at both nodes.
    for node in ["A", "B"] {
        net.edit_config(node, |t| {
            let pair: toml::Table =
                toml::from_str("saes = [\"ENC-A1\", \"ENC-B1\"]\npolicy = \"qkd-only\"\n").unwrap();
            t.insert(
                "pair".into(),
                toml::Value::Array(vec![toml::Value::Table(pair)]),
            );
        });
    }
    let (ok, _, err) = reload("A", "sae-ENC-A1", false);
    assert!(!ok && err.contains("403"), "{err}");
    // Pooled keys are voided only on request.
    let (ok, _, err) = reload("A", "operator-demo", false);
    assert!(!ok && err.contains("409"), "{err}");
    assert!(
        err.contains("pair ENC-A1->ENC-B1 holds") && err.contains("--void-pools"),
        "{err}"
    );
    let r = reload_record(&net, "A", "operator:demo").await;
    assert_eq!(r["outcome"], "refused", "{r}");
    // At B, ENC-A1's key waits for ENC-B1: even with --void-pools the reload would strand it.
    let (ok, _, err) = reload("B", "operator-demo", true);
    assert!(!ok && err.contains("409"), "{err}");
    assert!(
        err.contains("wait here for ENC-B1") && err.contains("strand"),
        "{err}"
    );
    let (code, body) = net
        .call(
            "ENC-B1",
            &format!("ENC-A1/dec_keys?key_ID={}", waiting[0].0),
            None,
        )
        .await;
    assert_eq!(code, 200, "the refused reload lost the waiting key: {body}");
    assert_eq!(crate::harness::keys(&body), waiting);

    // The open stream refuses it too, until it is closed at both ends.
    let (ok, _, err) = reload("A", "operator-demo", true);
    assert!(!ok && err.contains("409"), "{err}");
    assert!(
        err.contains(&format!("key stream {ksid}")) && err.contains("close it first"),
        "{err}"
    );
    for c in [&mut a1, &mut b1] {
        c.close_stream(qkd_proto::keys::CloseStreamRequest {
            key_stream_id: ksid.clone(),
        })
        .await
        .unwrap();
    }
    let (ok, out, err) = reload("A", "operator-demo", true);
    assert!(ok, "{err}");
    assert!(
        out.contains("applied: pair") && out.contains("voided"),
        "{out}"
    );
    // A reservation on its way when the stream closed leaves an end at B whose SAE never
    // joined it: B refuses until its keys expire (the stream's TTL, 5 s), as an operator sees.
    let deadline = Instant::now() + Duration::from_secs(60);
    let out = loop {
        let (ok, out, err) = reload("B", "operator-demo", true);
        if ok {
            break out;
        }
        assert!(
            err.contains("key stream") && Instant::now() < deadline,
            "{err}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(out.contains("applied: pair"), "{out}");
    // The pools refill under the new policy; keys flow end to end again.
    net.wait_for_keys("ENC-A1", "ENC-B1", 1).await;
    let (code, body) = net.call("ENC-A1", "ENC-B1/enc_keys", None).await;
    assert_eq!(code, 200, "{body}");
    let fresh = crate::harness::keys(&body);
    let (code, body) = net
        .call(
            "ENC-B1",
            &format!("ENC-A1/dec_keys?key_ID={}", fresh[0].0),
            None,
        )
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(crate::harness::keys(&body), fresh);
    let st = wait_status(&net, "A", "the qkd-only alarm", |st| {
        st["alarms"]
            .as_array()
            .is_some_and(|a| a.iter().any(|a| a["alarm"] == "qkd_only_pair"))
    })
    .await;
    let voided = st["voided_by_reload"].as_array().expect("voided_by_reload");
    assert!(
        voided
            .iter()
            .any(|v| v["master"] == "ENC-A1" && v["keys"].as_u64() > Some(0)),
        "{st}"
    );

    // A new SAE at A, paired with ENC-B1 at both nodes: unknown before the reload, served after.
    let pki = qkd_kms::pki::DemoPki::load(&net.path().join("pki")).unwrap();
    pki.issue_sae(&qkd_types::SaeId::parse("ENC-A7").unwrap(), "urn:qkd:sae:")
        .unwrap();
    let a7 = net.sae_client("ENC-A7").unwrap();
    let base_a = net.base("A");
    let (code, _) = get_as(&a7, format!("{base_a}ENC-B1/status")).await;
    assert_eq!(code, 401, "an SAE not configured yet");
    for node in ["A", "B"] {
        net.edit_config(node, |t| {
            let saes = t["sae"].as_array_mut().unwrap();
            for s in saes.iter_mut() {
                if s["id"].as_str() == Some("ENC-B1") {
                    s["peers"]
                        .as_array_mut()
                        .unwrap()
                        .push(toml::Value::String("ENC-A7".into()));
                }
            }
            let new: toml::Table =
                toml::from_str("id = \"ENC-A7\"\nnode = \"A\"\npeers = [\"ENC-B1\"]\n").unwrap();
            saes.push(toml::Value::Table(new));
        });
    }
    for node in ["A", "B"] {
        let (ok, out, err) = reload(node, "operator-demo", false);
        assert!(ok && out.contains("applied: sae"), "{out} {err}");
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (code, st) = get_as(&a7, format!("{base_a}ENC-B1/status")).await;
        if code == 200 && st["stored_key_count"].as_u64() > Some(0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no keys for the new SAE: {code} {st}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (code, body) = get_as(&a7, format!("{base_a}ENC-B1/enc_keys")).await;
    assert_eq!(code, 200, "{body}");
    let new_keys = crate::harness::keys(&body);
    let (code, body) = net
        .call(
            "ENC-B1",
            &format!("ENC-A7/dec_keys?key_ID={}", new_keys[0].0),
            None,
        )
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(crate::harness::keys(&body), new_keys);
    // The old pair still works beside it.
    let (code, body) = net.call("ENC-A1", "ENC-B1/enc_keys", None).await;
    assert_eq!(code, 200, "{body}");
}
