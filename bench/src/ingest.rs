//! `qkd-bench ingest`: how fast the durable store makes link key material durable.
//!
//! Opens a real store (redb, encryption at rest under a file-held master key) in a temporary
//! directory and feeds it link blocks with the `PutBlocks` store operation through the
//! group-commit [`Writer`], exactly as a node's ingest loop does: each operation stores a run of
//! blocks, the writer commits as many queued operations as it finds in one
//! `Durability::Immediate` transaction. The rate counts key bytes only, from the first operation
//! queued to the last commit.
//!
//! The store is wrapped in [`Timed`], a [`KeyStore`] that runs each batch the way the redb store
//! does and records its size and the time spent inside its operations.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use qkd_kms::core::pool::{BlockMeta, BlockState};
use qkd_kms::store::ops::PutBlocks;
use qkd_kms::store::vault::FileKek;
use qkd_kms::store::{KeyStore, Op, Outcome, SpaceGauge, Store, StoreError, Tables};
use qkd_kms::writer::Writer;
use qkd_types::{BlockId, LinkId, Secret};
use rand::RngCore;

/// Arguments of `qkd-bench ingest`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Key material to store, in MiB.
    #[arg(long, default_value_t = 1024)]
    pub mib: u64,
    /// Size of one link block, in KiB.
    #[arg(long, default_value_t = 64)]
    pub block_kib: u64,
    /// Blocks per writer operation (a node's ingest loop stores up to 64 per operation).
    #[arg(long, default_value_t = 16)]
    pub blocks_per_op: u64,
    /// Operations queued at once (producers); the writer commits whatever is queued together.
    #[arg(long, default_value_t = 8)]
    pub inflight: usize,
    /// Directory in which the temporary store is created (default: the system temp directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// Result of `qkd-bench ingest`.
#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub mib: u64,
    pub block_kib: u64,
    pub blocks_per_op: u64,
    pub inflight: usize,
    pub seconds: f64,
    /// Key material made durable, in Mbit/s (10^6 bits).
    pub mbit_per_s: f64,
    pub blocks_per_s: f64,
    /// Commits reconstructed from the writer thread's timeline.
    pub commits: u64,
    pub commits_per_s: f64,
    pub mean_ops_per_commit: f64,
    pub max_ops_per_commit: u64,
    pub mean_mib_per_commit: f64,
    /// Share of the wall time the writer thread spent inside operations (sealing and inserting);
    /// the rest is commits (write-out and fsync) and waiting for work.
    pub writer_busy_in_ops_percent: f64,
    /// Size of the store file at the end, in MiB.
    pub store_file_mib: f64,
    /// Bytes this process sent to the disk per byte of key material (`/proc/self/io`).
    pub write_amplification: f64,
}

impl Report {
    /// Prints the table.
    pub fn print(&self) {
        println!(
            "ingest: {} MiB in {} KiB blocks, {} blocks per operation, {} operations in flight",
            self.mib, self.block_kib, self.blocks_per_op, self.inflight
        );
        println!(
            "durable ingest: {:.0} Mbit/s ({:.1} Gbit/s), {:.0} blocks/s, {:.2} s",
            self.mbit_per_s,
            self.mbit_per_s / 1000.0,
            self.blocks_per_s,
            self.seconds
        );
        println!(
            "commits: {} ({:.0}/s), mean {:.1} operations = {:.2} MiB per commit, max {} operations",
            self.commits,
            self.commits_per_s,
            self.mean_ops_per_commit,
            self.mean_mib_per_commit,
            self.max_ops_per_commit
        );
        println!(
            "writer thread inside operations (seal + insert): {:.0}% of wall time",
            self.writer_busy_in_ops_percent
        );
        println!(
            "store file {:.0} MiB; {:.2} bytes written to disk per byte of key",
            self.store_file_mib, self.write_amplification
        );
    }
}

/// One committed batch: how many operations, and the time spent inside them (seal + insert,
/// not the commit).
#[derive(Debug, Clone, Copy)]
struct BatchSpan {
    ops: u64,
    busy: Duration,
}

/// The redb store, recording every batch it commits.
#[derive(Debug)]
struct Timed {
    store: Store,
    batches: Arc<Mutex<Vec<BatchSpan>>>,
}

impl KeyStore for Timed {
    fn apply(&mut self, ops: Vec<Op>) -> Result<Vec<Result<Outcome, StoreError>>, StoreError> {
        let n = ops.len() as u64;
        let mut txn = self.store.begin()?;
        let start = Instant::now();
        let outcomes = ops.into_iter().map(|op| op.execute(&mut txn)).collect();
        let busy = start.elapsed();
        txn.commit()?;
        if let Ok(mut b) = self.batches.lock() {
            b.push(BatchSpan { ops: n, busy });
        }
        Ok(outcomes)
    }

    fn inspect(&mut self, read: &mut dyn FnMut(&mut dyn Tables)) -> Result<(), StoreError> {
        self.store.inspect(read)
    }

    fn gauge(&self) -> SpaceGauge {
        self.store.gauge()
    }

    fn upkeep(&mut self) {
        self.store.upkeep();
    }
}

/// Runs the benchmark.
pub async fn run(args: &Args) -> Result<Report> {
    if args.mib == 0 || args.block_kib == 0 || args.blocks_per_op == 0 || args.inflight == 0 {
        bail!("--mib, --block-kib, --blocks-per-op and --inflight must be positive");
    }
    let dir = qkd_testnet::scratch_dir(args.dir.as_deref(), "qkd-bench-ingest-")?;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    let kek_dir = dir.path().join("kek");
    std::fs::create_dir(&kek_dir)?;
    let kek = FileKek::open(&kek_dir, now_ms, 30 * 24 * 3600 * 1000)?;
    let db_path = dir.path().join("store.redb");
    let (store, _) = Store::open(&db_path, &kek)?;
    let spans: Arc<Mutex<Vec<BatchSpan>>> = Arc::new(Mutex::new(Vec::new()));
    let writer = Writer::spawn(Timed {
        store,
        batches: spans.clone(),
    });

    let block_len = (args.block_kib * 1024) as usize;
    let total_blocks = (args.mib * 1024).div_ceil(args.block_kib);
    // One random pattern; each block differs in its first bytes. AES-GCM and redb do not care
    // what the bytes are, and generating fresh randomness would measure the generator.
    let mut pattern = vec![0u8; block_len];
    rand::rng().fill_bytes(&mut pattern);
    let pattern: Arc<[u8]> = pattern.into();
    let link = LinkId::parse("bench-link")?;
    let next = Arc::new(AtomicU64::new(0));

    let written0 = crate::measure::write_bytes(std::process::id());
    let start = Instant::now();
    let mut producers = tokio::task::JoinSet::new();
    for _ in 0..args.inflight {
        let (writer, pattern, link, next) =
            (writer.clone(), pattern.clone(), link.clone(), next.clone());
        let per_op = args.blocks_per_op;
        producers.spawn(async move {
            loop {
                let first = next.fetch_add(per_op, Ordering::Relaxed);
                if first >= total_blocks {
                    return Ok::<(), anyhow::Error>(());
                }
                let last = (first + per_op).min(total_blocks);
                let blocks: Vec<(u64, BlockMeta, Secret)> = (first..last)
                    .map(|seq| {
                        let mut key = Secret::copy_from(&pattern);
                        key.expose_mut()[..8].copy_from_slice(&seq.to_le_bytes());
                        let meta = BlockMeta {
                            id: BlockId::random(),
                            len: block_len as u32,
                            state: BlockState::Pending,
                            taken: Vec::new(),
                        };
                        (seq, meta, key)
                    })
                    .collect();
                writer
                    .apply(PutBlocks {
                        link: link.clone(),
                        blocks,
                    })
                    .await?;
            }
        });
    }
    while let Some(r) = producers.join_next().await {
        r??;
    }
    let seconds = start.elapsed().as_secs_f64();
    drop(writer);
    let written = crate::measure::write_bytes(std::process::id()).saturating_sub(written0);

    let spans = spans.lock().map(|s| s.clone()).unwrap_or_default();
    let commits = spans.len() as u64;
    let ops: u64 = spans.iter().map(|b| b.ops).sum();
    let busy: Duration = spans.iter().map(|b| b.busy).sum();
    let bytes = total_blocks * block_len as u64;
    let store_file_mib = std::fs::metadata(&db_path).map_or(0.0, |m| m.len() as f64 / 1048576.0);
    Ok(Report {
        mib: args.mib,
        block_kib: args.block_kib,
        blocks_per_op: args.blocks_per_op,
        inflight: args.inflight,
        seconds,
        mbit_per_s: bytes as f64 * 8.0 / seconds / 1e6,
        blocks_per_s: total_blocks as f64 / seconds,
        commits,
        commits_per_s: commits as f64 / seconds,
        mean_ops_per_commit: ops as f64 / commits.max(1) as f64,
        max_ops_per_commit: spans.iter().map(|b| b.ops).max().unwrap_or(0),
        mean_mib_per_commit: bytes as f64 / commits.max(1) as f64 / 1048576.0,
        writer_busy_in_ops_percent: busy.as_secs_f64() / seconds * 100.0,
        store_file_mib,
        write_amplification: written as f64 / bytes as f64,
    })
}
