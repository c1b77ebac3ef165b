//! Links backed by QKD devices over ETSI GS QKD 014: two real `qkd-node` processes, each the
//! client of one device of an emulated pair (`qkd_simulator::emulator`, served in this test
//! process over real mutual TLS on 127.0.0.1). Keys agree end to end; a device that goes down
//! marks the link down without stopping its node, and the link recovers when the device is back;
//! `qkd-node check` names what is wrong in a device section and `check --online` asks the device.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use qkd_simulator::emulator::{self, DevicePair, Outage, PairConfig, Quirk};
use qkd_simulator::model::ConstantRate;
use qkd_testnet_pki::TestCa;
use qkd_types::{Clock, KeyId, KmeId, SaeId, SystemClock};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::harness::{BIN, Net, ends_agree, keys};

/// Key rate of the emulated link, bit/s (reported by the devices in their status).
const RATE: u64 = 2_000_000;

/// Link key each end holds at most, bytes: enough to fill the SAE pools, small enough that the
/// ingest pauses once it is full.
const CAPACITY: u64 = 96 * 1024;

/// The SAE ID of each node at its device (the CN of its client certificate).
const DEVICE_SAES: [&str; 2] = ["node-A", "node-B"];

/// Numeric SAE IDs at the devices, for devices that speak of SAEs as integers
/// ([`Quirk::IntegerSaeIds`]).
const NUMERIC_DEVICE_SAES: [&str; 2] = ["1001", "1002"];

/// One emulated device served on a fixed address, stoppable and restartable.
pub(crate) struct Device {
    addr: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl Device {
    async fn start_on(
        addr: SocketAddr,
        tls: Arc<rustls::ServerConfig>,
        pair: &DevicePair,
        i: usize,
    ) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(emulator::run(
            listener,
            tls.clone(),
            pair.clone(),
            i,
            async {
                let _ = rx.await;
            },
        ));
        Self {
            addr,
            tls,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Stops serving and closes every connection: connections are refused from now on.
    pub(crate) async fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }

    pub(crate) async fn restart(&mut self, pair: &DevicePair, i: usize) {
        self.stop().await;
        *self = Self::start_on(self.addr, self.tls.clone(), pair, i).await;
    }
}

/// An emulated device pair (device 0 at node A, the link's master end; device 1 at node B), its
/// PKI in `<net>/devices/`, and the device sections of both nodes' configurations.
pub(crate) struct Emu {
    pub(crate) pair: DevicePair,
    pub(crate) devices: [Device; 2],
    dir: PathBuf,
    /// The SAE ID of each node at its device.
    saes: [&'static str; 2],
    /// The devices' CA, for more client certificates.
    ca: TestCa,
    /// Keys the master's device issued that a test expects never to be fetched (the slave's
    /// device keeps them pending for good): not "in flight".
    stranded: std::sync::Mutex<HashSet<KeyId>>,
}

impl Emu {
    pub(crate) async fn start(net: &Net) -> Self {
        Self::start_with(net, DEVICE_SAES, &[]).await
    }

    /// A pair that knows the nodes as `saes` at their devices and deviates from the spec as
    /// `quirks` say.
    pub(crate) async fn start_with(net: &Net, saes: [&'static str; 2], quirks: &[Quirk]) -> Self {
        let dir = net.path().join("devices");
        std::fs::create_dir_all(&dir).unwrap();
        let ca = TestCa::new("device test CA");
        std::fs::write(dir.join("ca.pem"), &ca.pem).unwrap();
        for sae in saes {
            let (cert, key) = ca.client(sae);
            std::fs::write(dir.join(format!("{sae}.crt")), cert).unwrap();
            std::fs::write(dir.join(format!("{sae}.key")), key).unwrap();
        }
        let mut config = PairConfig::new(
            SaeId::parse(saes[0]).unwrap(),
            SaeId::parse(saes[1]).unwrap(),
        );
        config.quirks = quirks.iter().copied().collect();
        if !quirks.is_empty() {
            // Not the usual 256-bit default, so that `fixed-256` changes what the devices
            // serve (the nodes take the device's key size: no `key_bits` configured).
            config.key_size = 512;
        }
        config.kme_ids = [
            KmeId::parse("DEV-A").unwrap(),
            KmeId::parse("DEV-B").unwrap(),
        ];
        let clock = SystemClock;
        // Some key is ready when the nodes first ask.
        let start = clock.now().saturating_sub(5_000);
        let pair = DevicePair::new(
            config,
            Box::new(ConstantRate::new(RATE)),
            Arc::new(clock),
            start,
        );
        let mut devices = Vec::new();
        for i in 0..2 {
            let (chain, key) = ca.device();
            let tls =
                emulator::server_tls(chain.as_bytes(), key.as_bytes(), ca.pem.as_bytes()).unwrap();
            devices.push(Device::start_on("127.0.0.1:0".parse().unwrap(), tls, &pair, i).await);
        }
        Self {
            pair,
            devices: devices.try_into().ok().unwrap(),
            dir,
            saes,
            ca,
            stranded: Default::default(),
        }
    }

    /// A client certificate for `sae` issued by the devices' CA, written to the devices'
    /// folder; returns the paths of the certificate and its key.
    pub(crate) fn issue_client(&self, sae: &str) -> (PathBuf, PathBuf) {
        let (cert, key) = self.ca.client(sae);
        let paths = (
            self.dir.join(format!("{sae}.crt")),
            self.dir.join(format!("{sae}.key")),
        );
        std::fs::write(&paths.0, cert).unwrap();
        std::fs::write(&paths.1, key).unwrap();
        paths
    }

    /// Marks keys waiting at the slave's device as never to be fetched.
    pub(crate) fn strand(&self, ids: impl IntoIterator<Item = KeyId>) {
        self.stranded.lock().unwrap().extend(ids);
    }

    /// Keys issued by the master's device and not yet fetched from the slave's, except those
    /// stranded for good.
    pub(crate) fn in_flight(&self) -> usize {
        let stranded = self.stranded.lock().unwrap();
        self.pair
            .pending_ids()
            .iter()
            .filter(|id| !stranded.contains(id))
            .count()
    }

    /// The `[link.source]` table of the node at device `i`.
    pub(crate) fn source(&self, i: usize) -> toml::Table {
        let me = self.saes[i];
        let d = self.dir.display();
        format!(
            r#"
kind = "etsi014"
url = "https://{addr}"
ca = {{ file = "{d}/ca.pem" }}
client_cert = {{ file = "{d}/{me}.crt" }}
client_key = {{ file = "{d}/{me}.key" }}
expected_kme_id = "DEV-{node}"
sae_id = "{me}"
peer_sae_id = "{peer}"
[status_metrics]
qber = "{qber}"
key_rate_bps = "{rate}"
[limits]
connect_timeout_ms = 2000
request_timeout_ms = 5000
min_backoff_ms = 20
max_backoff_ms = 200
"#,
            addr = self.devices[i].addr,
            node = ["A", "B"][i],
            peer = self.saes[1 - i],
            qber = emulator::QBER_MEMBER,
            rate = emulator::KEY_RATE_MEMBER,
        )
        .parse()
        .unwrap()
    }

    /// Backs the link A-B of a `pair` network with this device pair at both ends, each end
    /// holding at most [`CAPACITY`] bytes of link key.
    pub(crate) fn attach(&self, net: &Net) {
        for (i, node) in ["A", "B"].into_iter().enumerate() {
            let source = self.source(i);
            net.edit_config(node, |t| {
                set_link_source(t, source);
                let link = t["link"].as_array_mut().unwrap()[0].as_table_mut().unwrap();
                link.insert(
                    "capacity_bytes".into(),
                    toml::Value::Integer(CAPACITY as i64),
                );
            });
        }
    }
}

/// Replaces the source of the node's only link.
fn set_link_source(t: &mut toml::Table, source: toml::Table) {
    let links = t.get_mut("link").unwrap().as_array_mut().unwrap();
    let link = links[0].as_table_mut().unwrap();
    link.insert("source".into(), toml::Value::Table(source));
}

/// Runs `qkd-node check --config <config> [extra]` to completion (bounded); returns (success,
/// stderr + stdout).
pub(crate) fn check(config: &Path, extra: &[&str]) -> (bool, String) {
    let mut child = Command::new(BIN)
        .arg("check")
        .arg("--config")
        .arg(config)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        ),
    )
}

/// The status of the node's only link.
pub(crate) async fn link_status(net: &Net, node: &str) -> Value {
    net.status(node).await["links"][0].clone()
}

/// Polls the node's link status until `pred` holds (bounded).
pub(crate) async fn wait_link(
    net: &Net,
    node: &str,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let st = link_status(net, node).await;
        if pred(&st) {
            return st;
        }
        assert!(
            Instant::now() < deadline,
            "node {node}: link never {what}: {st}\n{}",
            net.log(node)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Takes keys from the SAEs until the link needs new key and the devices have issued more than
/// `n` keys, each fetched from the slave's device too (nothing in flight between the two devices
/// but the keys stranded for good: the link's pool holds `CAPACITY` bytes, so the ingest pauses
/// once it is full). Key flows from A's device through both nodes to B's device again.
pub(crate) async fn until_device_key_flows(
    net: &Net,
    emu: &Emu,
    n: u64,
    seen: &mut HashSet<String>,
) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        same_keys_at_both_ends(net, seen).await;
        if emu.pair.issued_keys() > n && emu.in_flight() == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "device key flow did not resume: issued {} (before {n}), in flight {}\nA: {}\nB: {}",
            emu.pair.issued_keys(),
            emu.in_flight(),
            tail(&net.log("A")),
            tail(&net.log("B"))
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What either source of a link's key (`kind`: the simulator, `simulated`, or a device pair,
/// `etsi014`) must give two running nodes: keys for their SAEs, the same at both ends and each
/// delivered once (not in `seen` before); both ends of the link up with `kind` as its source, a
/// QBER and a key rate as the source reports them, and `simulated` set exactly when the link
/// is simulated.
async fn delivers_identical_keys_end_to_end(net: &Net, kind: &str, seen: &mut HashSet<String>) {
    net.wait_for_keys("ENC-A1", "ENC-B1", 4).await;
    for _ in 0..3 {
        same_keys_at_both_ends(net, seen).await;
    }
    let simulated = kind == "simulated";
    for node in ["A", "B"] {
        let st = wait_link(net, node, "up", |s| s["state"] == "up").await;
        assert_eq!(st["source_kind"], kind, "{node}: {st}");
        assert_eq!(st["simulated"], simulated, "{node}: {st}");
        let qber = st["qber"]
            .as_f64()
            .unwrap_or_else(|| panic!("{node}: {st}"));
        assert!((0.0..0.5).contains(&qber), "{node}: {st}");
        let rate = st["secret_key_rate_bps"].as_f64();
        assert!(rate.is_some_and(|r| r > 0.0), "{node}: {st}");
        assert_eq!(net.status(node).await["simulated"], simulated, "{node}");
    }
}

/// The end-to-end suite of the device-backed link, run with the direct simulator link the
/// harness lays out: both sources are interchangeable under a node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulator_link_passes_the_device_link_suite() {
    let net = Net::setup(1_000_000);
    net.start("A");
    net.start("B");
    let mut seen = HashSet::new();
    delivers_identical_keys_end_to_end(&net, "simulated", &mut seen).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_backed_link_delivers_keys_and_rides_out_device_outages() {
    let net = Net::setup(1_000_000);
    let mut emu = Emu::start(&net).await;
    emu.attach(&net);
    let a = net.path().join("A").join("node.toml");
    let (ok, out) = check(&a, &[]);
    assert!(ok, "{out}");

    net.start("A");
    net.start("B");
    // Both nodes up: the online check reaches the neighbour and the device.
    let (ok, out) = check(&a, &["--online"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("link A-B: device https://") && out.contains("answers as KME DEV-A"),
        "{out}"
    );

    let mut seen = HashSet::new();
    delivers_identical_keys_end_to_end(&net, "etsi014", &mut seen).await;
    // The link key came from the devices: every key the master's device issued was fetched
    // from the slave's device.
    assert!(emu.pair.issued_keys() > 0);
    for node in ["A", "B"] {
        let st = link_status(&net, node).await;
        // As the device reports them in its status (named by [status_metrics]).
        assert_eq!(
            st["secret_key_rate_bps"].as_f64(),
            Some(RATE as f64),
            "{st}"
        );
    }

    // The master's device goes down: the link is down, the node keeps serving.
    emu.devices[0].stop().await;
    let st = wait_link(&net, "A", "down", |s| s["state"] == "down").await;
    assert!(
        st["reason"].as_str().unwrap().contains("unreachable"),
        "{st}"
    );
    // A node started while its device is unreachable starts all the same, link down.
    net.kill9("A");
    net.start("A");
    wait_link(&net, "A", "down", |s| s["state"] == "down").await;
    let issued = emu.pair.issued_keys();
    emu.devices[0].restart(&emu.pair, 0).await;
    wait_link(&net, "A", "up", |s| s["state"] == "up").await;
    until_device_key_flows(&net, &emu, issued, &mut seen).await;

    // The slave end's link follows its own device (key flow after such an outage: see
    // `slave_device_outage_and_recovery`).
    emu.devices[1].stop().await;
    let st = wait_link(&net, "B", "down", |s| s["state"] == "down").await;
    assert_eq!(st["secret_key_rate_bps"].as_f64(), Some(0.0), "{st}");
    emu.devices[1].restart(&emu.pair, 1).await;
    wait_link(&net, "B", "up", |s| s["state"] == "up").await;
    for d in &mut emu.devices {
        d.stop().await;
    }
}

/// Every vendor quirk the emulator has, met by two real nodes (a fresh pair for each, as a
/// node meets its devices' quirks from its start; numeric SAE IDs at the devices so that
/// `integer-sae-ids` applies): the nodes still deliver identical keys to their SAEs end to end,
/// every key the master's device issues is fetched from the slave's device, and a device
/// error in the quirk's format (503 from the master's device) marks the link down, which comes
/// back up and carries key again once the device answers well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_vendor_quirk_is_tolerated_end_to_end() {
    for quirk in Quirk::ALL {
        // Shown with a failure's output, which the harness's own waits do not name.
        eprintln!("quirk {}", quirk.name());
        let net = Net::setup(1_000_000);
        let mut emu = Emu::start_with(&net, NUMERIC_DEVICE_SAES, &[quirk]).await;
        emu.attach(&net);
        net.start("A");
        net.start("B");
        let mut seen = HashSet::new();
        delivers_identical_keys_end_to_end(&net, "etsi014", &mut seen).await;
        until_device_key_flows(&net, &emu, 0, &mut seen).await;

        emu.pair.set_outage(0, Outage::ServiceUnavailable);
        let st = wait_link(&net, "A", "down", |s| s["state"] == "down").await;
        let reason = st["reason"].as_str().unwrap_or_default();
        assert!(reason.contains("503"), "{}: {st}", quirk.name());
        emu.pair.set_outage(0, Outage::None);
        wait_link(&net, "A", "up", |s| s["state"] == "up").await;
        let issued = emu.pair.issued_keys();
        until_device_key_flows(&net, &emu, issued, &mut seen).await;
        for d in &mut emu.devices {
            d.stop().await;
        }
    }
}

/// The slave end's device goes down while the master end keeps taking key: the link must carry
/// key again once it is back. (It used to wedge: the master discarded the refused blocks while
/// the slave still expected their sequence numbers, so every later offer was refused.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slave_device_outage_and_recovery() {
    let net = Net::setup(1_000_000);
    let mut emu = Emu::start(&net).await;
    emu.attach(&net);
    net.start("A");
    net.start("B");
    net.wait_for_keys("ENC-A1", "ENC-B1", 4).await;
    let mut seen = HashSet::new();
    same_keys_at_both_ends(&net, &mut seen).await;
    emu.devices[1].stop().await;
    wait_link(&net, "B", "down", |s| s["state"] == "down").await;
    // Keys already made are still served, at both ends, until the pools run dry. Whatever A
    // takes from its device meanwhile, B's device cannot deliver: B answers "unavailable", and A
    // keeps those blocks and offers them again rather than discard them.
    for _ in 0..500 {
        let (code, body) = net.call("ENC-A1", "ENC-B1/enc_keys?number=4", None).await;
        if code == 503 {
            break;
        }
        assert_eq!(code, 200, "{body}");
        let got = keys(&body);
        let ids: Vec<_> = got.iter().map(|(id, _)| json!({ "key_ID": id })).collect();
        let (code, back) = net
            .call("ENC-B1", "ENC-A1/dec_keys", Some(json!({ "key_IDs": ids })))
            .await;
        assert_eq!(code, 200, "{back}");
        assert_eq!(keys(&back), got);
        for (id, key) in got {
            assert!(seen.insert(id), "key ID delivered twice");
            assert!(seen.insert(hex::encode(&key)), "key bytes delivered twice");
        }
    }
    let issued = emu.pair.issued_keys();
    emu.devices[1].restart(&emu.pair, 1).await;
    wait_link(&net, "B", "up", |s| s["state"] == "up").await;
    until_device_key_flows(&net, &emu, issued, &mut seen).await;
    for d in &mut emu.devices {
        d.stop().await;
    }
}

/// The slave's device does not hold keys the master's device handed out (here they reach it
/// late: a minute after enc_keys), and answers dec_keys for them as the spec says (400) or as
/// several KMEs do (404, quirk `not-found-404`). The slave node names the answer in its log, the
/// master drops the blocks, both links stay up (the devices answer; only those keys are
/// missing), the answer consumed nothing (the keys still wait at the slave's device), neither
/// end ever uses those keys, and key flows again once keys reach the slave's device on time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_the_slave_device_does_not_hold_are_dropped_at_both_ends() {
    for (quirks, code) in [(&[][..], 400), (&[Quirk::NotFound404][..], 404)] {
        eprintln!("dec_keys not found: HTTP {code}");
        let net = Net::setup(1_000_000);
        let emu = Emu::start_with(&net, DEVICE_SAES, quirks).await;
        emu.attach(&net);
        net.start("A");
        net.start("B");
        net.wait_for_keys("ENC-A1", "ENC-B1", 1).await;
        let mut seen = HashSet::new();
        until_device_key_flows(&net, &emu, 0, &mut seen).await;

        let refusals = emu.pair.dec_keys_refusals();
        emu.pair.set_peer_delay(60_000);
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut owed = Vec::new();
        while !net
            .log("A")
            .contains("peer refused blocks; discarding them")
        {
            owed.extend(use_key_if_served(&net, &mut seen).await);
            assert!(
                Instant::now() < deadline,
                "A never dropped a block\nA: {}\nB: {}",
                tail(&net.log("A")),
                tail(&net.log("B"))
            );
        }
        // Keys reach B's device on time again; those issued meanwhile still wait a minute
        // there: all of them are refused and dropped, none is ever fetched.
        emu.pair.set_peer_delay(0);
        let late = emu.pair.late_ids();
        assert!(!late.is_empty());
        emu.strand(late.iter().copied());
        assert!(emu.pair.dec_keys_refusals() > refusals);
        let log_b = net.log("B");
        assert!(
            log_b.contains(&format!("dec_keys: the device answered HTTP {code}")),
            "{}",
            tail(&log_b)
        );
        assert!(
            net.log("A").contains("is not known to this link end"),
            "{}",
            tail(&net.log("A"))
        );
        for node in ["A", "B"] {
            let st = link_status(&net, node).await;
            assert_eq!(st["state"], "up", "{node}: {st}");
        }

        fetch_owed(&net, &owed).await;
        let issued = emu.pair.issued_keys();
        until_device_key_flows(&net, &emu, issued, &mut seen).await;
        net.stop("A");
        net.stop("B");
        let dropped = ends_agree(&net.link_book("A"), &net.link_book("B"));
        let still_pending = emu.pair.pending_ids();
        for key in &late {
            // Still at B's device: the refusal consumed nothing; dropped by A.
            assert!(still_pending.contains(key));
            assert!(dropped.contains(&qkd_types::BlockId::from_bytes(*key.as_bytes())));
        }
        for block in &dropped {
            assert!(still_pending.contains(&KeyId::from_bytes(*block.as_bytes())));
        }
    }
}

/// A node whose client certificate its device does not know as an SAE (one for `node-X`,
/// issued by the device's CA, so TLS succeeds), at a device that answers 401 with an empty body
/// (quirk `empty-401`): the node runs on with its link down, the 401 named as the reason in
/// `/status` and in its log, `check --online` names it too, and the device hands out no key.
/// With the registered certificate the link comes up and keys flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_refusing_the_node_with_an_empty_401_leaves_the_link_down() {
    let net = Net::setup(1_000_000);
    let emu = Emu::start_with(&net, DEVICE_SAES, &[Quirk::Empty401]).await;
    emu.attach(&net);
    let (cert, key) = emu.issue_client("node-X");
    let mut source = emu.source(0);
    for (member, path) in [("client_cert", cert), ("client_key", key)] {
        let mut file = toml::Table::new();
        file.insert("file".into(), path.display().to_string().into());
        source.insert(member.into(), toml::Value::Table(file));
    }
    net.edit_config("A", |t| set_link_source(t, source));
    net.start("A");
    net.start("B");
    let st = wait_link(&net, "A", "down", |s| s["state"] == "down").await;
    let reason = st["reason"].as_str().unwrap_or_default();
    // No message: the body was empty.
    assert!(
        reason.ends_with("device answered HTTP 401 (Unauthorized)"),
        "{st}"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !net.log("A").contains("HTTP 401 (Unauthorized)") {
        assert!(Instant::now() < deadline, "{}", tail(&net.log("A")));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let config = net.path().join("A").join("node.toml");
    let (ok, out) = check(&config, &["--online"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("link A-B: DEVICE FAILED") && out.contains("HTTP 401"),
        "{out}"
    );
    assert_eq!(emu.pair.issued_keys(), 0, "the device handed out key");
    assert!(net.exited("A").is_none(), "A stopped");

    net.stop("A");
    net.edit_config("A", |t| set_link_source(t, emu.source(0)));
    net.start("A");
    let mut seen = HashSet::new();
    delivers_identical_keys_end_to_end(&net, "etsi014", &mut seen).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_what_is_wrong_in_a_device_section() {
    let net = Net::setup(1_000_000);
    let mut emu = Emu::start(&net).await;
    let config = net.path().join("A").join("node.toml");
    let dir = emu.dir.clone();
    // (what, member of the device section, its new value, what the error must name)
    let file = |p: &Path| {
        let mut t = toml::Table::new();
        t.insert("file".into(), p.display().to_string().into());
        toml::Value::Table(t)
    };
    let cases = [
        (
            "missing CA file",
            "ca",
            file(Path::new("/nonexistent/ca.pem")),
            &["link[0].source.ca", "/nonexistent/ca.pem"][..],
        ),
        (
            "key of another certificate",
            "client_key",
            file(&dir.join(format!("{}.key", DEVICE_SAES[1]))),
            &["link[0].source.client_key", "does not match client_cert"],
        ),
        (
            "CA file that holds no certificate",
            "ca",
            file(&dir.join(format!("{}.key", DEVICE_SAES[0]))),
            &["link[0].source.ca", "no CERTIFICATE"],
        ),
        (
            "misspelled member",
            "allow_tls_12",
            true.into(),
            &["line", "allow_tls_12"],
        ),
    ];
    for (what, member, value, needles) in cases {
        let mut source = emu.source(0);
        source.insert(member.into(), value);
        net.edit_config("A", |t| set_link_source(t, source));
        let (ok, out) = check(&config, &[]);
        assert!(!ok, "{what}: check passed\n{out}");
        assert!(out.contains(&config.display().to_string()), "{what}: {out}");
        for n in needles {
            assert!(out.contains(n), "{what}: no {n:?} in {out}");
        }
    }

    // Online: a device that names another KME is refused; one that does not answer fails the
    // check. (Neighbour B is not running, so only the device lines are looked at.)
    let mut source = emu.source(0);
    source.insert("expected_kme_id".into(), "DEV-X".into());
    net.edit_config("A", |t| set_link_source(t, source));
    let (ok, out) = check(&config, &[]);
    assert!(ok, "offline check needs no device: {out}");
    let (ok, out) = check(&config, &["--online"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("link A-B: DEVICE FAILED") && out.contains("expected DEV-X"),
        "{out}"
    );
    net.edit_config("A", |t| set_link_source(t, emu.source(0)));
    let (_, out) = check(&config, &["--online"]);
    assert!(out.contains("answers as KME DEV-A"), "{out}");
    emu.devices[0].stop().await;
    let (ok, out) = check(&config, &["--online"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("link A-B: DEVICE FAILED") && out.contains("unreachable"),
        "{out}"
    );
    emu.devices[1].stop().await;
}

/// SIGKILL of the master end's node while it takes key from its device, at whatever point of
/// enc_keys, the durable record of the new blocks, the offer to B and B's dec_keys the kill
/// lands: no key is ever delivered twice or with different bytes at the two ends, no device
/// key ID is used twice on the link, and key flows again after each restart. (A key the
/// master's device handed out but the dead node never recorded stays unused at B's device.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_node_killed_mid_ingest_uses_no_key_twice() {
    let net = Net::setup(1_000_000);
    let mut emu = Emu::start(&net).await;
    emu.attach(&net);
    net.start("A");
    net.start("B");
    net.wait_for_keys("ENC-A1", "ENC-B1", 1).await;
    let mut seen = HashSet::new();
    for round in 0..4 {
        // Make the master's node take key from its device, and kill it while it does.
        let issued = emu.pair.issued_keys();
        let deadline = Instant::now() + Duration::from_secs(90);
        while emu.pair.issued_keys() == issued {
            same_keys_at_both_ends(&net, &mut seen).await;
            assert!(Instant::now() < deadline, "round {round}: no ingest");
        }
        net.kill9("A");
        net.start("A");
        wait_link(&net, "A", "up", |s| s["state"] == "up").await;
        let issued = emu.pair.issued_keys();
        let deadline = Instant::now() + Duration::from_secs(120);
        while emu.pair.issued_keys() <= issued {
            same_keys_at_both_ends(&net, &mut seen).await;
            assert!(
                Instant::now() < deadline,
                "round {round}: ingest did not resume"
            );
        }
    }
    for node in ["A", "B"] {
        let st = link_status(&net, node).await;
        assert_eq!(st["device_reissued_ids"], 0, "{node}: {st}");
    }
    for d in &mut emu.devices {
        d.stop().await;
    }
}

/// Keys made for ENC-A1 (enc_keys at A) and fetched by ENC-B1 (dec_keys at B): the same bytes
/// at both ends, and none of them (ID or bytes) in `seen` before.
pub(crate) async fn same_keys_at_both_ends(net: &Net, seen: &mut HashSet<String>) {
    let (code, body) = net
        .call_retrying("ENC-A1", "ENC-B1/enc_keys?number=4", None)
        .await;
    assert_eq!(
        code,
        200,
        "{body}\nA: {}\nB: {}\nA status: {}\nB status: {}",
        tail(&net.log("A")),
        tail(&net.log("B")),
        net.status("A").await,
        net.status("B").await
    );
    let got = keys(&body);
    assert_eq!(got.len(), 4, "{body}");
    let ids: Vec<_> = got.iter().map(|(id, _)| json!({ "key_ID": id })).collect();
    let (code, back) = net
        .call("ENC-B1", "ENC-A1/dec_keys", Some(json!({ "key_IDs": ids })))
        .await;
    assert_eq!(code, 200, "{back}");
    assert_eq!(keys(&back), got);
    for (id, key) in got {
        assert!(seen.insert(id.clone()), "key ID {id} delivered twice");
        assert!(seen.insert(hex::encode(&key)), "key bytes delivered twice");
    }
}

/// A key ENC-A1 got at A that ENC-B1 did not get at B (yet).
pub(crate) struct Owed {
    id: String,
    key: Vec<u8>,
    /// B's answer was lost (B died while answering): B may have delivered it already.
    maybe_delivered: bool,
}

/// One key for ENC-A1 at A and, if A served it, the same key for ENC-B1 at B, tolerating
/// either node being down or out of key (the crash tests): whatever is delivered is new (not in
/// `seen`), and what both deliver is the same. Returns what A delivered and B did not (yet):
/// fetch it with [`fetch_owed`] once B is back.
pub(crate) async fn use_key_if_served(net: &Net, seen: &mut HashSet<String>) -> Vec<Owed> {
    let (code, body) = net.call("ENC-A1", "ENC-B1/enc_keys?number=1", None).await;
    if code != 200 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        return Vec::new();
    }
    let got = keys(&body);
    for (id, key) in &got {
        assert!(seen.insert(id.clone()), "key ID {id} delivered twice");
        assert!(seen.insert(hex::encode(key)), "key bytes delivered twice");
    }
    let ids: Vec<_> = got.iter().map(|(id, _)| json!({ "key_ID": id })).collect();
    let (code, back) = net
        .call("ENC-B1", "ENC-A1/dec_keys", Some(json!({ "key_IDs": ids })))
        .await;
    if code == 200 {
        assert_eq!(keys(&back), got);
        return Vec::new();
    }
    got.into_iter()
        .map(|(id, key)| Owed {
            id,
            key,
            maybe_delivered: code == 0,
        })
        .collect()
}

/// ENC-B1 fetches at B the keys ENC-A1 got at A while B was down: the same bytes (or, for a
/// key whose answer was lost, "not found": B delivered it before it died).
pub(crate) async fn fetch_owed(net: &Net, owed: &[Owed]) {
    for Owed {
        id,
        key,
        maybe_delivered,
    } in owed
    {
        let (code, back) = net
            .call(
                "ENC-B1",
                "ENC-A1/dec_keys",
                Some(json!({ "key_IDs": [{ "key_ID": id }] })),
            )
            .await;
        if code == 400 && *maybe_delivered {
            continue;
        }
        assert_eq!(code, 200, "{id}: {back}");
        assert_eq!(keys(&back), vec![(id.clone(), key.clone())]);
    }
}

/// The end of a node's log, for failure messages.
pub(crate) fn tail(log: &str) -> &str {
    &log[log.len().saturating_sub(4000)..]
}
