//! `qkd-bench device`: can the ETSI 014 device adapter keep up with a fast QKD device?
//!
//! Runs the emulated device pair of `qkd-simulator` (feature `emulator`) producing key at
//! `--rate-bps` on its own tokio runtime (threads named `emulator`), and the two ends of the
//! adapter (`qkd_hardware::etsi014`) on another (threads named `adapter`): the master pulls
//! blocks with `enc_keys`, hands each batch to the slave over a channel (standing in for the
//! node-to-node channel), and the slave fetches the same IDs with `dec_keys` and checks the
//! bytes. Everything talks HTTPS with mutual TLS over loopback. The figures are the key rate
//! delivered at both ends and the CPU time of the adapter threads, from
//! `/proc/self/task/*/stat`, as a share of one core; the emulator's CPU is printed beside it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use qkd_hardware::etsi014::{DeviceConfig, DeviceLimits, Etsi014Source, PemSource};
use qkd_hardware::{KeyBlock, KeySource, LinkRole};
use qkd_simulator::emulator::{DevicePair, PairConfig, run as serve, server_tls};
use qkd_simulator::model::ConstantRate;
use qkd_types::{Clock, KmeId, SaeId, SystemClock};

use crate::measure::{CpuSnapshot, CpuUse};

/// Arguments of `qkd-bench device`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Key rate the emulated devices produce, bit/s.
    #[arg(long, default_value_t = 100_000_000)]
    pub rate_bps: u64,
    /// Key size in bits the devices serve (their `key_size`).
    #[arg(long, default_value_t = 256)]
    pub key_bits: u32,
    /// Keys per request the devices allow (`max_key_per_request`).
    #[arg(long, default_value_t = 1024)]
    pub per_request: u32,
    /// Blocks the master asks for per call of `next_blocks`.
    #[arg(long, default_value_t = 4096)]
    pub batch: usize,
    /// Measured window (after the warm-up).
    #[arg(long, default_value = "10s", value_parser = crate::parse_duration)]
    pub duration: Duration,
    /// Warm-up: key flows but is not counted.
    #[arg(long, default_value = "2s", value_parser = crate::parse_duration)]
    pub warmup: Duration,
}

/// What `qkd-bench device` measured.
#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub rate_bps: u64,
    pub key_bits: u32,
    pub per_request: u32,
    pub window_s: f64,
    /// Key pulled by the master end and fetched by the slave end with identical bytes.
    pub delivered_mbit_per_s: f64,
    pub delivered_fraction_of_rate: f64,
    pub blocks: u64,
    pub mismatches: u64,
    pub errors: u64,
    /// CPU of the adapter threads (both ends), % of one core.
    pub adapter_cpu_percent: f64,
    /// CPU of the emulator threads, % of one core.
    pub emulator_cpu_percent: f64,
    pub cpu: CpuUse,
}

impl Report {
    pub fn print(&self) {
        println!(
            "device adapter against an emulated pair at {:.1} Mbit/s ({}-bit keys, {} per request):",
            self.rate_bps as f64 / 1e6,
            self.key_bits,
            self.per_request
        );
        println!(
            "  delivered at both ends: {:.1} Mbit/s ({:.1} % of the device rate), {} blocks in {:.1} s, {} mismatches, {} errors",
            self.delivered_mbit_per_s,
            self.delivered_fraction_of_rate * 100.0,
            self.blocks,
            self.window_s,
            self.mismatches,
            self.errors
        );
        println!(
            "  adapter threads (master + slave): {:.1} % of one core; emulator threads: {:.1} %",
            self.adapter_cpu_percent, self.emulator_cpu_percent
        );
        self.cpu.print();
    }
}

pub fn run(a: &Args) -> Result<Report> {
    if a.key_bits == 0 || !a.key_bits.is_multiple_of(8) {
        bail!("--key-bits must be a positive multiple of 8");
    }
    let pki = Pki::new()?;
    let emu_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("emulator")
        .enable_all()
        .build()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("adapter")
        .enable_all()
        .build()?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let mut config = PairConfig::new(SaeId::parse("node-a")?, SaeId::parse("node-b")?);
    config.key_size = a.key_bits;
    config.min_key_size = a.key_bits;
    config.max_key_size = a.key_bits;
    config.max_key_per_request = a.per_request;
    // Two seconds of key: the buffer a device holds for a slow SAE.
    config.max_key_count = (a.rate_bps * 2 / u64::from(a.key_bits)).max(1);
    let pair = DevicePair::new(
        config,
        Box::new(ConstantRate::new(a.rate_bps)),
        clock.clone(),
        clock.now(),
    );
    let urls: Vec<String> = emu_rt.block_on(async {
        let mut urls = Vec::new();
        for i in 0..2 {
            let (chain, key) = pki.issue("localhost", true)?;
            let tls = server_tls(chain.as_bytes(), key.as_bytes(), pki.ca.as_bytes())?;
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            urls.push(format!("https://{}", listener.local_addr()?));
            tokio::spawn(serve(
                listener,
                tls,
                pair.clone(),
                i,
                std::future::pending(),
            ));
        }
        anyhow::Ok(urls)
    })?;
    let end = |i: usize, role| -> Result<Etsi014Source> {
        let me = ["node-a", "node-b"][i];
        let (chain, key) = pki.issue(me, false)?;
        Ok(Etsi014Source::new(
            DeviceConfig {
                url: urls[i].clone(),
                ca: PemSource::Pem(pki.ca.clone()),
                client_cert: PemSource::Pem(chain),
                client_key: PemSource::Pem(key),
                expected_kme_id: KmeId::parse(&format!("KME-{i}"))?,
                sae_id: SaeId::parse(me)?,
                peer_sae_id: SaeId::parse(["node-b", "node-a"][i])?,
                server_name: None,
                key_bits: None,
                allow_tls12: false,
                status_metrics: Default::default(),
                limits: DeviceLimits {
                    max_keys_per_request: a.per_request,
                    ..DeviceLimits::default()
                },
            },
            role,
        )?)
    };
    let master = Arc::new(end(0, LinkRole::Master)?);
    let slave = Arc::new(end(1, LinkRole::Slave)?);
    let report = rt.block_on(measure(a, master, slave))?;
    rt.shutdown_timeout(Duration::from_secs(2));
    emu_rt.shutdown_timeout(Duration::from_secs(2));
    Ok(report)
}

async fn measure(
    a: &Args,
    master: Arc<Etsi014Source>,
    slave: Arc<Etsi014Source>,
) -> Result<Report> {
    master.check_online().await.context("master device")?;
    slave.check_online().await.context("slave device")?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<KeyBlock>>(16);
    let batch = a.batch;
    let puller = tokio::spawn(async move {
        let mut errors = 0u64;
        loop {
            match master.next_blocks(batch).await {
                Ok(b) if b.is_empty() => tokio::time::sleep(Duration::from_millis(2)).await,
                Ok(b) => {
                    if tx.send(b).await.is_err() {
                        return errors;
                    }
                }
                Err(_) => errors += 1,
            }
        }
    });
    // The slave end, counting what it fetched with identical bytes.
    let counter = Arc::new(std::sync::Mutex::new((0u64, 0u64, 0u64, 0u64))); // blocks, bytes, mismatches, errors
    let c2 = counter.clone();
    let fetcher = tokio::spawn(async move {
        while let Some(blocks) = rx.recv().await {
            let ids: Vec<_> = blocks.iter().map(|b| b.id).collect();
            let r = slave.blocks_by_id(&ids).await;
            let mut c = c2.lock().unwrap_or_else(|p| p.into_inner());
            match r {
                Ok(got) => {
                    for (x, y) in blocks.iter().zip(&got) {
                        if x.id == y.id && x.key == y.key {
                            c.0 += 1;
                            c.1 += x.key.len() as u64;
                        } else {
                            c.2 += 1;
                        }
                    }
                }
                Err(_) => c.3 += 1,
            }
        }
    });
    tokio::time::sleep(a.warmup).await;
    let me = vec![("bench".to_string(), std::process::id())];
    let start = *counter.lock().unwrap_or_else(|p| p.into_inner());
    let cpu0 = CpuSnapshot::take(&me);
    let t0 = Instant::now();
    tokio::time::sleep(a.duration).await;
    let end = *counter.lock().unwrap_or_else(|p| p.into_inner());
    let cpu = cpu0.until(&CpuSnapshot::take(&me));
    let window = t0.elapsed().as_secs_f64();
    puller.abort();
    fetcher.abort();
    let errors_master = puller.await.unwrap_or(0);
    let _ = fetcher.await;
    let threads = |prefix: &str| -> f64 {
        cpu.processes
            .iter()
            .flat_map(|p| &p.threads)
            .filter(|(n, _)| n.starts_with(prefix))
            .map(|(_, v)| v)
            .sum()
    };
    let mbit = (end.1 - start.1) as f64 * 8.0 / 1e6 / window;
    Ok(Report {
        rate_bps: a.rate_bps,
        key_bits: a.key_bits,
        per_request: a.per_request,
        window_s: window,
        delivered_mbit_per_s: mbit,
        delivered_fraction_of_rate: mbit * 1e6 / a.rate_bps as f64,
        blocks: end.0 - start.0,
        mismatches: end.2,
        errors: end.3 + errors_master,
        adapter_cpu_percent: threads("adapter"),
        emulator_cpu_percent: threads("emulator"),
        cpu,
    })
}

/// A throw-away CA for the emulated devices and the two nodes.
struct Pki {
    ca: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Pki {
    fn new() -> Result<Self> {
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "qkd-bench device CA");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        let key = rcgen::KeyPair::generate()?;
        let ca = params.self_signed(&key)?.pem();
        Ok(Self {
            ca,
            issuer: rcgen::Issuer::new(params, key),
        })
    }

    /// (chain, key) PEM: a device certificate for 127.0.0.1, or an SAE certificate with CN `name`.
    fn issue(&self, name: &str, device: bool) -> Result<(String, String)> {
        let mut params = if device {
            let mut p = rcgen::CertificateParams::new(vec![name.to_string()])?;
            p.subject_alt_names
                .push(rcgen::SanType::IpAddress("127.0.0.1".parse()?));
            p
        } else {
            let mut p = rcgen::CertificateParams::default();
            p.distinguished_name.push(rcgen::DnType::CommonName, name);
            p
        };
        params.use_authority_key_identifier_extension = false;
        let key = rcgen::KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}
