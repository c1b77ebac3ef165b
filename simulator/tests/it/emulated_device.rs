//! The ETSI 014 device adapter of `qkd-hardware` against the emulated device pair, over real
//! TLS on 127.0.0.1: identical blocks at both ends, every vendor quirk, every refused fault,
//! outages and restarts mid-transfer, and keys fetched by one end but not the other; each
//! failure as its typed fault and the link state it maps to; the body cap; TLS 1.2 only by
//! opt-in; QBER and key rate as the device reports them, or measured.

#![allow(clippy::unwrap_used)] // test helpers, not only #[test] functions

use std::net::SocketAddr;
use std::sync::Arc;

use qkd_hardware::etsi014::{DeviceConfig, DeviceLimits, Etsi014Source, PemSource, StatusMetrics};
use qkd_hardware::{
    DeviceError, DeviceFault, KeyCheck, KeySource, LinkRole, LinkState, StatusClass, TlsFailure,
};
use qkd_simulator::emulator::{
    DevicePair, Fault, KEY_RATE_MEMBER, OVERSIZED_ANSWER_BYTES, Outage, PairConfig, QBER_MEMBER,
    Quirk, TlsVersions, run, server_tls, server_tls_versions,
};
use qkd_simulator::model::ConstantRate;
use qkd_testnet_pki::TestCa;
use qkd_types::{BlockId, KmeId, ManualClock, SaeId};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// One running emulated device.
pub struct Device {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
    tls: Arc<rustls::ServerConfig>,
}

impl Device {
    pub async fn start_on(
        addr: SocketAddr,
        tls: Arc<rustls::ServerConfig>,
        pair: &DevicePair,
        index: usize,
    ) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(run(listener, tls.clone(), pair.clone(), index, async {
            let _ = rx.await;
        }));
        Self {
            addr,
            stop: Some(tx),
            task: Some(task),
            tls,
        }
    }

    /// Stops serving and closes every connection.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }

    /// Stops and starts again on the same address, as a device that reboots.
    pub async fn restart(&mut self, pair: &DevicePair, index: usize) {
        self.stop().await;
        *self = Self::start_on(self.addr, self.tls.clone(), pair, index).await;
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }
}

/// An emulated pair with both devices served, and the PKI to talk to them.
pub struct Bench {
    pub pki: TestCa,
    pub pair: DevicePair,
    pub clock: ManualClock,
    pub devices: [Device; 2],
    pub saes: [String; 2],
}

impl Bench {
    /// A pair of devices producing `rate` bit/s, with 10 s of key already produced.
    pub async fn start(saes: [&str; 2], rate: u64, quirks: &[Quirk]) -> Self {
        let pki = TestCa::new("emulator test CA");
        let clock = ManualClock::new(1_000_000);
        let mut config = PairConfig::new(
            SaeId::parse(saes[0]).unwrap(),
            SaeId::parse(saes[1]).unwrap(),
        );
        config.quirks = quirks.iter().copied().collect();
        let pair = DevicePair::new(
            config,
            Box::new(ConstantRate::new(rate)),
            Arc::new(clock.clone()),
            990_000,
        );
        let mut devices = Vec::new();
        for i in 0..2 {
            let (chain, key) = pki.device();
            let tls = server_tls(chain.as_bytes(), key.as_bytes(), pki.pem.as_bytes()).unwrap();
            devices.push(Device::start_on("127.0.0.1:0".parse().unwrap(), tls, &pair, i).await);
        }
        let devices: [Device; 2] = devices.try_into().ok().unwrap();
        Self {
            pki,
            pair,
            clock,
            devices,
            saes: saes.map(str::to_owned),
        }
    }

    /// The adapter configuration of the node attached to device `i`.
    pub fn config(&self, i: usize) -> DeviceConfig {
        let (chain, key) = self.pki.client(&self.saes[i]);
        DeviceConfig {
            url: self.devices[i].url(),
            ca: PemSource::Pem(self.pki.pem.clone()),
            client_cert: PemSource::Pem(chain),
            client_key: PemSource::Pem(key),
            expected_kme_id: KmeId::parse(&format!("KME-{i}")).unwrap(),
            sae_id: SaeId::parse(&self.saes[i]).unwrap(),
            peer_sae_id: SaeId::parse(&self.saes[1 - i]).unwrap(),
            server_name: None,
            key_bits: None,
            allow_tls12: false,
            status_metrics: StatusMetrics::default(),
            limits: DeviceLimits {
                // Short back-off keeps outage tests quick; no assertion depends on it.
                min_backoff_ms: 10,
                max_backoff_ms: 50,
                ..DeviceLimits::default()
            },
        }
    }

    /// Master adapter at device 0, slave adapter at device 1.
    pub fn ends(&self) -> (Etsi014Source, Etsi014Source) {
        (
            Etsi014Source::new(self.config(0), LinkRole::Master).unwrap(),
            Etsi014Source::new(self.config(1), LinkRole::Slave).unwrap(),
        )
    }

    pub async fn stop(mut self) {
        for d in &mut self.devices {
            d.stop().await;
        }
    }
}

/// The error is a device fault that marks the link down (not aborted).
fn is_down(r: Result<impl Sized, DeviceError>) -> bool {
    match r {
        Err(DeviceError::Device(f)) => matches!(f.link_state(), LinkState::Down { .. }),
        _ => false,
    }
}

/// Pulls up to `n` blocks at the master and fetches them at the slave; checks they match.
async fn exchange(master: &Etsi014Source, slave: &Etsi014Source, n: usize) -> usize {
    let blocks = master.next_blocks(n).await.unwrap();
    assert!(!blocks.is_empty(), "no block from the master");
    let ids: Vec<BlockId> = blocks.iter().map(|b| b.id).collect();
    let mirrored = slave.blocks_by_id(&ids).await.unwrap();
    assert_eq!(mirrored.len(), blocks.len());
    for (a, b) in blocks.iter().zip(&mirrored) {
        assert_eq!(a.id, b.id);
        assert_eq!(a.key, b.key, "block {} differs between the ends", a.id);
    }
    blocks.len()
}

#[tokio::test]
async fn both_ends_of_an_emulated_pair_get_identical_blocks() {
    let bench = Bench::start(["node-a", "node-b"], 1_000_000, &[]).await;
    let (master, slave) = bench.ends();
    assert_eq!(master.info().kind, "etsi014");
    assert!(!master.info().simulated);
    assert_eq!(master.status().await.state, LinkState::Up);
    assert_eq!(slave.status().await.state, LinkState::Up);
    let report = master.check_online().await.unwrap();
    assert_eq!(report.kme_id, "KME-0");
    assert_eq!(report.key_bits, 256);
    // 1200 blocks: more than one request of 512 per call.
    assert_eq!(exchange(&master, &slave, 1200).await, 1200);
    assert_eq!(bench.pair.issued_keys(), 1200);
    assert_eq!(bench.pair.pending_keys(), 0);
    // Roles are enforced.
    assert!(matches!(
        slave.next_blocks(1).await,
        Err(DeviceError::WrongRole { .. })
    ));
    assert!(matches!(
        master.blocks_by_id(&[]).await,
        Err(DeviceError::WrongRole { .. })
    ));
    bench.stop().await;
}

#[tokio::test]
async fn master_follows_the_stored_key_count_and_the_configured_size() {
    // 10 s at 25 600 bit/s: 1000 keys of 256 bits, 250 of 1024.
    let bench = Bench::start(["node-a", "node-b"], 25_600, &[]).await;
    let mut cfg = bench.config(0);
    cfg.key_bits = Some(1024);
    let master = Etsi014Source::new(cfg, LinkRole::Master).unwrap();
    let mut cfg = bench.config(1);
    cfg.key_bits = Some(1024);
    let slave = Etsi014Source::new(cfg, LinkRole::Slave).unwrap();
    let blocks = master.next_blocks(10_000).await.unwrap();
    assert_eq!(blocks.len(), 250);
    assert!(blocks.iter().all(|b| b.key.len() == 128));
    assert!(
        master.next_blocks(10).await.unwrap().is_empty(),
        "no key left"
    );
    bench.clock.advance(1_000);
    assert_eq!(master.next_blocks(1000).await.unwrap().len(), 25);
    let ids: Vec<_> = blocks.iter().map(|b| b.id).collect();
    assert_eq!(slave.blocks_by_id(&ids).await.unwrap().len(), 250);
    // A size the device does not serve is refused before any key request.
    let mut cfg = bench.config(0);
    cfg.key_bits = Some(16_384);
    let too_big = Etsi014Source::new(cfg, LinkRole::Master).unwrap();
    bench.clock.advance(10_000);
    let before = bench.pair.issued_keys();
    assert!(matches!(
        too_big.next_blocks(1).await,
        Err(DeviceError::Device(DeviceFault::KeySize {
            configured: 16_384,
            max: 8192,
            ..
        }))
    ));
    assert_eq!(bench.pair.issued_keys(), before);
    bench.stop().await;
}

#[tokio::test]
async fn every_vendor_quirk_is_tolerated() {
    for quirk in Quirk::ALL {
        // Numeric SAE IDs so that `integer-sae-ids` applies.
        let bench = Bench::start(["1001", "1002"], 1_000_000, &[quirk]).await;
        let (master, slave) = bench.ends();
        assert_eq!(master.status().await.state, LinkState::Up, "{quirk:?}");
        let n = exchange(&master, &slave, 40).await;
        assert_eq!(n, 40, "{quirk:?}");
        if quirk == Quirk::Fixed256 {
            let mut cfg = bench.config(0);
            cfg.key_bits = Some(512);
            let m = Etsi014Source::new(cfg, LinkRole::Master).unwrap();
            assert!(m.next_blocks(1).await.is_err(), "{quirk:?}");
        }
        // Unknown keys: 400 or 404, JSON or HTML, any `details` shape.
        assert!(
            matches!(
                slave.blocks_by_id(&[BlockId::random()]).await,
                Err(DeviceError::UnknownBlock(_))
            ),
            "{quirk:?}"
        );
        // A client the device does not know: 401 (possibly with an empty body).
        let mut cfg = bench.config(0);
        let (chain, key) = bench.pki.client("9999");
        cfg.client_cert = PemSource::Pem(chain);
        cfg.client_key = PemSource::Pem(key);
        let stranger = Etsi014Source::new(cfg, LinkRole::Master).unwrap();
        let err = stranger.next_blocks(1).await.unwrap_err();
        assert!(
            matches!(
                &err,
                DeviceError::Device(DeviceFault::Status {
                    code: 401,
                    class: StatusClass::Unauthorized,
                    ..
                })
            ),
            "{quirk:?}: {err}"
        );
        // Outage errors through the quirk's error format.
        bench.pair.set_outage(0, Outage::ServiceUnavailable);
        let err = master.next_blocks(1).await;
        assert!(
            matches!(
                err,
                Err(DeviceError::Device(DeviceFault::Status {
                    code: 503,
                    class: StatusClass::Unavailable,
                    ..
                }))
            ),
            "{quirk:?}: {err:?}"
        );
        bench.stop().await;
    }
}

#[tokio::test]
async fn malformed_and_reissued_keys_are_refused() {
    let bench = Bench::start(["node-a", "node-b"], 1_000_000, &[]).await;
    let (master, slave) = bench.ends();
    for (fault, check) in [
        (
            Fault::WrongLength,
            KeyCheck::WrongSize {
                bits: 248,
                expected: 256,
            },
        ),
        (Fault::BadBase64, KeyCheck::NotBase64),
        (Fault::DuplicateId, KeyCheck::RepeatedInAnswer),
    ] {
        bench.pair.set_fault(Some(fault));
        let err = master.next_blocks(5).await.unwrap_err();
        let DeviceError::Device(DeviceFault::BadKey { check: got, .. }) = &err else {
            panic!("{fault:?}: {err}");
        };
        // Which check failed, and an aborted link until the device answers well again.
        assert_eq!(got, &check, "{fault:?}");
        assert!(err.to_string().contains("refused"), "{fault:?}: {err}");
        assert!(
            matches!(master.status().await.state, LinkState::Aborted { .. }),
            "{fault:?}"
        );
    }
    // Re-issued ID: the first answer is fine, the second repeats its first ID.
    bench.pair.set_fault(Some(Fault::ReissueId));
    let first = master.next_blocks(3).await.unwrap();
    assert_eq!(master.status().await.state, LinkState::Up);
    let err = master.next_blocks(3).await.unwrap_err();
    assert!(
        matches!(err, DeviceError::Device(DeviceFault::ReissuedId { key, .. }) if key == first[0].id),
        "{err}"
    );
    assert!(matches!(
        master.status().await.state,
        LinkState::Aborted { .. }
    ));
    // The slave refuses a malformed answer too; the keys it would have got are gone for good.
    bench.pair.set_fault(Some(Fault::WrongLength));
    let ids: Vec<_> = first.iter().map(|b| b.id).collect();
    assert!(matches!(
        slave.blocks_by_id(&ids).await,
        Err(DeviceError::Device(DeviceFault::BadKey {
            check: KeyCheck::WrongSize { .. },
            ..
        }))
    ));
    bench.pair.set_fault(None);
    assert!(matches!(
        slave.blocks_by_id(&ids).await,
        Err(DeviceError::UnknownBlock(_))
    ));
    // And good key flows again, and the link is up again.
    assert_eq!(exchange(&master, &slave, 10).await, 10);
    assert_eq!(master.status().await.state, LinkState::Up);
    assert_eq!(slave.status().await.state, LinkState::Up);
    bench.stop().await;
}

#[tokio::test]
async fn a_device_naming_another_kme_gets_no_key_request() {
    let bench = Bench::start(["node-a", "node-b"], 1_000_000, &[]).await;
    let mut cfg = bench.config(0);
    cfg.expected_kme_id = KmeId::parse("KME-elsewhere").unwrap();
    let master = Etsi014Source::new(cfg, LinkRole::Master).unwrap();
    let err = master.next_blocks(5).await.unwrap_err();
    assert!(
        matches!(&err, DeviceError::Device(DeviceFault::KmeMismatch { reported, .. }) if reported == "KME-0"),
        "{err}"
    );
    assert!(err.to_string().contains("KME-elsewhere"), "{err}");
    // Possibly another device: aborted for an operator, not merely down.
    assert!(matches!(
        master.status().await.state,
        LinkState::Aborted { .. }
    ));
    assert!(master.check_online().await.is_err());
    assert_eq!(bench.pair.issued_keys(), 0);
    bench.stop().await;
}

#[tokio::test]
async fn outages_and_restarts_mid_transfer_mark_the_link_down_and_recover() {
    let mut bench = Bench::start(["node-a", "node-b"], 1_000_000, &[]).await;
    let (master, slave) = bench.ends();
    let mut cfg = bench.config(0);
    cfg.limits.request_timeout_ms = 300;
    cfg.limits.attempts = 2;
    let impatient = Etsi014Source::new(cfg, LinkRole::Master).unwrap();
    assert_eq!(exchange(&master, &slave, 100).await, 100);

    for outage in [Outage::ServiceUnavailable, Outage::Refuse, Outage::Hang] {
        // Pulled at the master, then the slave's device fails before the slave fetches.
        let blocks = master.next_blocks(10).await.unwrap();
        let ids: Vec<_> = blocks.iter().map(|b| b.id).collect();
        bench.pair.set_outage(1, outage);
        bench.pair.set_outage(0, outage);
        if outage == Outage::Refuse {
            // Existing keep-alive connections would bypass a refusal at accept: restart both.
            bench.devices[0].restart(&bench.pair, 0).await;
            bench.devices[1].restart(&bench.pair, 1).await;
        }
        let source = if outage == Outage::Hang {
            &impatient
        } else {
            &master
        };
        assert!(
            matches!(source.status().await.state, LinkState::Down { .. }),
            "{outage:?}"
        );
        let err = source.next_blocks(1).await;
        match outage {
            Outage::ServiceUnavailable => assert!(
                matches!(
                    err,
                    Err(DeviceError::Device(DeviceFault::Status { code: 503, .. }))
                ),
                "{err:?}"
            ),
            Outage::Hang => assert!(
                matches!(err, Err(DeviceError::Device(DeviceFault::Timeout { .. }))),
                "{err:?}"
            ),
            _ => assert!(is_down(err), "{outage:?}"),
        }
        if outage != Outage::Hang {
            assert!(is_down(slave.blocks_by_id(&ids).await), "{outage:?}");
        }
        bench.pair.set_outage(0, Outage::None);
        bench.pair.set_outage(1, Outage::None);
        if outage == Outage::Hang {
            // Requests stuck in a hung device are dropped with the device's restart.
            bench.devices[0].restart(&bench.pair, 0).await;
            bench.devices[1].restart(&bench.pair, 1).await;
        }
        // Recovery on its own: the same adapters, no intervention.
        assert_eq!(master.status().await.state, LinkState::Up, "{outage:?}");
        if outage != Outage::Hang {
            let mirrored = slave.blocks_by_id(&ids).await.unwrap();
            assert_eq!(mirrored.len(), ids.len());
        }
        assert_eq!(exchange(&master, &slave, 20).await, 20);
    }

    // A device down (not listening at all) and back.
    bench.devices[0].stop().await;
    assert!(matches!(
        master.status().await.state,
        LinkState::Down { .. }
    ));
    assert!(matches!(
        master.next_blocks(5).await,
        Err(DeviceError::Device(DeviceFault::Unreachable { .. }))
    ));
    let tls = bench.devices[0].tls.clone();
    bench.devices[0] = Device::start_on(bench.devices[0].addr, tls, &bench.pair, 0).await;
    assert_eq!(master.status().await.state, LinkState::Up);
    assert_eq!(exchange(&master, &slave, 20).await, 20);
    bench.stop().await;
}

#[tokio::test]
async fn a_key_fetched_by_one_end_only_is_detected_and_never_used() {
    let mut bench = Bench::start(["node-a", "node-b"], 1_000_000, &[]).await;
    let (master, slave) = bench.ends();
    // The master's device handed out keys; the slave's device restarts and loses them.
    let blocks = master.next_blocks(8).await.unwrap();
    let ids: Vec<_> = blocks.iter().map(|b| b.id).collect();
    bench.devices[1].restart(&bench.pair, 1).await;
    assert_eq!(bench.pair.lose_pending(1), 8);
    assert!(matches!(
        slave.blocks_by_id(&ids).await,
        Err(DeviceError::UnknownBlock(_))
    ));

    // The slave fetched half a batch (e.g. the node crashed after dec_keys): asking again for
    // the whole batch is refused without a request, and nothing of it is returned.
    let blocks = master.next_blocks(8).await.unwrap();
    let ids: Vec<_> = blocks.iter().map(|b| b.id).collect();
    assert_eq!(slave.blocks_by_id(&ids[..4]).await.unwrap().len(), 4);
    assert!(matches!(
        slave.blocks_by_id(&ids).await,
        Err(DeviceError::UnknownBlock(_))
    ));
    // The other half is still there, once.
    assert_eq!(slave.blocks_by_id(&ids[4..]).await.unwrap().len(), 4);
    assert!(slave.blocks_by_id(&ids[4..]).await.is_err());
    // A fresh adapter (a restarted node) has no memory, but the device consumed the keys.
    let fresh = Etsi014Source::new(bench.config(1), LinkRole::Slave).unwrap();
    assert!(matches!(
        fresh.blocks_by_id(&ids[..1]).await,
        Err(DeviceError::UnknownBlock(_))
    ));
    // Duplicate IDs in one request are refused before any request.
    let more = master.next_blocks(1).await.unwrap();
    assert!(slave.blocks_by_id(&[more[0].id, more[0].id]).await.is_err());
    assert_eq!(slave.blocks_by_id(&[more[0].id]).await.unwrap().len(), 1);
    bench.stop().await;
}

#[tokio::test]
async fn tls_1_2_only_devices_are_served_only_after_the_per_device_opt_in() {
    let bench = Bench::start(["node-a", "node-b"], 1_000_000, &[]).await;
    let (chain, key) = bench.pki.device();
    let tls12 = server_tls_versions(
        chain.as_bytes(),
        key.as_bytes(),
        bench.pki.pem.as_bytes(),
        TlsVersions::Tls12Only,
    )
    .unwrap();
    let mut dev = Device::start_on("127.0.0.1:0".parse().unwrap(), tls12, &bench.pair, 0).await;
    let mut cfg = bench.config(0);
    cfg.url = dev.url();
    // By default the adapter speaks TLS 1.3 only: no handshake, no key request, and the link
    // is down with a fault that tells the operator what to change.
    let strict = Etsi014Source::new(cfg.clone(), LinkRole::Master).unwrap();
    let err = strict.next_blocks(5).await.unwrap_err();
    assert!(
        matches!(
            err,
            DeviceError::Device(DeviceFault::Tls {
                failure: TlsFailure::ProtocolVersion,
                ..
            })
        ),
        "{err}"
    );
    assert!(matches!(
        strict.status().await.state,
        LinkState::Down { .. }
    ));
    assert_eq!(bench.pair.issued_keys(), 0);
    // With the device's opt-in, TLS 1.2 is spoken and key flows.
    cfg.allow_tls12 = true;
    let master = Etsi014Source::new(cfg, LinkRole::Master).unwrap();
    let (_, slave) = bench.ends();
    assert_eq!(exchange(&master, &slave, 5).await, 5);
    // The opt-in still prefers TLS 1.3 where the device has it (device 1 speaks both).
    let mut cfg = bench.config(1);
    cfg.allow_tls12 = true;
    let both = Etsi014Source::new(cfg, LinkRole::Slave).unwrap();
    assert_eq!(both.status().await.state, LinkState::Up);
    dev.stop().await;
    bench.stop().await;
}

#[tokio::test]
async fn an_answer_larger_than_the_cap_is_refused_unread() {
    let bench = Bench::start(["node-a", "node-b"], 1_000_000, &[]).await;
    let (master, slave) = bench.ends();
    assert!(OVERSIZED_ANSWER_BYTES > DeviceLimits::default().max_body_bytes);
    bench.pair.set_fault(Some(Fault::Oversized));
    let err = master.next_blocks(3).await.unwrap_err();
    assert!(
        matches!(
            err,
            DeviceError::Device(DeviceFault::BodyTooLarge { limit, .. })
                if limit == DeviceLimits::default().max_body_bytes
        ),
        "{err}"
    );
    assert!(matches!(
        master.status().await.state,
        LinkState::Down { .. }
    ));
    // A cap above the padded answer reads it: the answer itself was well-formed, only large.
    let mut cfg = bench.config(0);
    cfg.limits.max_body_bytes = OVERSIZED_ANSWER_BYTES + 1;
    let generous = Etsi014Source::new(cfg, LinkRole::Master).unwrap();
    let blocks = generous.next_blocks(3).await.unwrap();
    bench.pair.set_fault(None);
    let ids: Vec<_> = blocks.iter().map(|b| b.id).collect();
    assert_eq!(slave.blocks_by_id(&ids).await.unwrap().len(), 3);
    // The refusing adapter's link stays down until its device answers well again.
    assert!(matches!(
        master.status().await.state,
        LinkState::Down { .. }
    ));
    assert_eq!(exchange(&master, &slave, 4).await, 4);
    assert_eq!(master.status().await.state, LinkState::Up);
    bench.stop().await;
}

#[tokio::test]
async fn qber_and_key_rate_come_from_the_device_or_are_measured() {
    // 25 600 bit/s at a QBER of 1.5 %, as the constant-rate model reports them.
    let bench = Bench::start(["node-a", "node-b"], 25_600, &[]).await;
    // Named members: the device's figures.
    let mut cfg = bench.config(0);
    cfg.status_metrics = StatusMetrics {
        qber: Some(QBER_MEMBER.into()),
        key_rate_bps: Some(KEY_RATE_MEMBER.into()),
    };
    let reported =
        Etsi014Source::with_clock(cfg, LinkRole::Master, Arc::new(bench.clock.clone())).unwrap();
    let status = reported.status().await;
    assert_eq!(status.state, LinkState::Up);
    assert_eq!(status.qber, Some(0.015));
    assert_eq!(status.secret_key_rate_bps, Some(25_600.0));
    let online = reported.check_online().await.unwrap();
    assert_eq!(online.qber, Some(0.015));
    assert_eq!(online.reported_key_rate_bps, Some(25_600.0));

    // No members named: the rate is measured from the key fetched, on the injected clock.
    let measured = Etsi014Source::with_clock(
        bench.config(0),
        LinkRole::Master,
        Arc::new(bench.clock.clone()),
    )
    .unwrap();
    let status = measured.status().await;
    assert_eq!((status.qber, status.secret_key_rate_bps), (None, None));
    bench.clock.advance(10_000);
    // 20 s of key are stored by now (10 s before the sources were made, 10 s since).
    let blocks = measured.next_blocks(100_000).await.unwrap();
    assert_eq!(blocks.len(), 2000);
    let status = measured.status().await;
    // 512 000 bits over the 10 s since the source was made.
    assert_eq!(status.secret_key_rate_bps, Some(51_200.0));
    // A down device reports no QBER and no rate.
    bench.pair.set_outage(0, Outage::ServiceUnavailable);
    let status = measured.status().await;
    assert!(matches!(status.state, LinkState::Down { .. }));
    assert_eq!(status.secret_key_rate_bps, Some(0.0));
    bench.stop().await;
}

#[tokio::test]
async fn the_qkd_device_emu_binary_serves_a_pair_from_its_toml_file() {
    use tokio::io::AsyncBufReadExt;

    let pki = TestCa::new("emulator test CA");
    let dir = tempfile::tempdir().unwrap();
    let put = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    put("ca.crt", &pki.pem);
    let mut devices = String::new();
    for i in 0..2 {
        let (chain, key) = pki.device();
        put(&format!("d{i}.crt"), &chain);
        put(&format!("d{i}.key"), &key);
        devices.push_str(&format!(
            "[[device]]\nlisten = \"127.0.0.1:0\"\ncert = \"d{i}.crt\"\nkey = \"d{i}.key\"\nclient_ca = \"ca.crt\"\n"
        ));
        // Device 1 is an older device: TLS 1.2 only.
        if i == 1 {
            devices.push_str("tls = \"tls12-only\"\n");
        }
    }
    put(
        "emu.toml",
        &format!(
            r#"
[pair]
kme_ids = ["KME-0", "KME-1"]
saes = [["node-a"], ["node-b"]]
key_size = 256
min_key_size = 256
max_key_size = 256
max_key_per_request = 1
max_key_count = 1000
seed = 7
quirks = ["capital-keys", "get-only"]

[model]
kind = "constant-rate"
bits_per_second = 100000

{devices}"#
        ),
    );
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_qkd-device-emu"))
        .arg(dir.path().join("emu.toml"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut urls = Vec::new();
    while urls.len() < 2 {
        let line = lines.next_line().await.unwrap().expect("emulator exited");
        let addr = line.rsplit(' ').next().unwrap();
        urls.push(format!("https://{addr}"));
    }
    let config = |i: usize| {
        let (chain, key) = pki.client(["node-a", "node-b"][i]);
        DeviceConfig {
            url: urls[i].clone(),
            ca: PemSource::Pem(pki.pem.clone()),
            client_cert: PemSource::Pem(chain),
            client_key: PemSource::Pem(key),
            expected_kme_id: KmeId::parse(&format!("KME-{i}")).unwrap(),
            sae_id: SaeId::parse(["node-a", "node-b"][i]).unwrap(),
            peer_sae_id: SaeId::parse(["node-b", "node-a"][i]).unwrap(),
            server_name: None,
            key_bits: None,
            allow_tls12: i == 1,
            status_metrics: StatusMetrics::default(),
            limits: DeviceLimits::default(),
        }
    };
    let master = Etsi014Source::new(config(0), LinkRole::Master).unwrap();
    let slave = Etsi014Source::new(config(1), LinkRole::Slave).unwrap();
    // Device 1 speaks TLS 1.2 only: without the opt-in, no handshake.
    let mut strict = config(1);
    strict.allow_tls12 = false;
    let strict = Etsi014Source::new(strict, LinkRole::Slave).unwrap();
    assert!(matches!(
        strict.check_online().await,
        Err(DeviceError::Device(DeviceFault::Tls {
            failure: TlsFailure::ProtocolVersion,
            ..
        }))
    ));
    // Key accrues on the wall clock at 100 kbit/s: wait (bounded) until some is stored.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let blocks = loop {
        let b = master.next_blocks(3).await.unwrap();
        if b.len() == 3 {
            break b;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no key from the emulator"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let ids: Vec<_> = blocks.iter().map(|b| b.id).collect();
    let mirrored = slave.blocks_by_id(&ids).await.unwrap();
    for (a, b) in blocks.iter().zip(&mirrored) {
        assert_eq!((a.id, &a.key), (b.id, &b.key));
        assert_eq!(a.key.len(), 32);
    }
    child.kill().await.unwrap();
}

#[tokio::test]
async fn a_slave_asking_before_its_device_has_the_key_asks_again() {
    let bench = Bench::start(["node-a", "node-b"], 1_000_000, &[]).await;
    // Keys reach device 1 one clock second after device 0 handed them out.
    bench.pair.set_peer_delay(1_000);
    let master = Etsi014Source::new(bench.config(0), LinkRole::Master).unwrap();
    let mut cfg = bench.config(1);
    // Patient enough to outlast a busy test machine; bounded all the same.
    cfg.limits.attempts = 400;
    let slave = Arc::new(Etsi014Source::new(cfg, LinkRole::Slave).unwrap());
    let blocks = master.next_blocks(4).await.unwrap();
    let ids: Vec<_> = blocks.iter().map(|b| b.id).collect();
    let fetch = {
        let slave = slave.clone();
        let ids = ids.clone();
        tokio::spawn(async move { slave.blocks_by_id(&ids).await })
    };
    // Once the slave's device has said "not found", the key arrives there.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while bench.pair.dec_keys_refusals() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the slave never asked"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    bench.clock.advance(1_000);
    let mirrored = fetch.await.unwrap().unwrap();
    for (a, b) in blocks.iter().zip(&mirrored) {
        assert_eq!((a.id, &a.key), (b.id, &b.key));
    }
    // A key that never arrives is still reported unknown, after the bounded retries.
    bench.pair.set_peer_delay(u64::MAX / 2);
    let late = master.next_blocks(1).await.unwrap();
    let (_, quick) = bench.ends();
    assert!(matches!(
        quick.blocks_by_id(&[late[0].id]).await,
        Err(DeviceError::UnknownBlock(_))
    ));
    bench.stop().await;
}
