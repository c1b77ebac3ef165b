//! Group commit: one thread owns the store and commits batches of operations.
//!
//! Store operations ([`crate::store::ops`], data) queue up; the writer takes as many as are
//! waiting (up to a limit), runs them in one transaction of its [`KeyStore`], commits it durably,
//! and only then lets each operation answer. So a
//! request's keys never span two transactions, and nothing is answered before it is durable.
//! The store's upkeep ([`KeyStore::upkeep`]: tombstone runs and merge steps, durable
//! transactions of their own) follows each batch once its answers have left, so no answer waits
//! for it.
//!
//! A KEK rotation ([`Writer::rotate_kek`]) is queued like an operation: it runs between
//! batches, in order, as one small transaction; the rotation pass it starts then runs one
//! bounded step after each batch (and while the queue is idle), so key delivery never waits for
//! more than one step.
//!
//! Architecture invariant: a commit error answers nobody in the batch. The writer stops, every
//! queued and later operation fails with [`StoreError`], and the fatal signal tells the node to
//! exit and recover from disk. In-memory state is never trusted after a failed commit.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::{mpsc, oneshot, watch};

use crate::instruments::StoreInstruments;
use crate::store::{KekRotation, KeyStore, Op, Operation, Outcome, Rotation, StoreError, Tables};
use qkd_types::UnixMillis;

/// Most operations in one transaction.
const MAX_BATCH: usize = 512;

/// An operation waiting for its batch, and where its outcome goes once the batch is durable.
struct Job {
    op: Op,
    reply: oneshot::Sender<Result<Outcome, StoreError>>,
}

/// What the writer thread is asked to do.
enum Msg {
    /// An operation, batched with others.
    Job(Job),
    /// A KEK rotation, between batches.
    RotateKek {
        now: UnixMillis,
        reply: oneshot::Sender<Result<KekRotation, StoreError>>,
    },
}

/// Handle to the writer thread. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Writer {
    tx: Committer,
    failed: Arc<AtomicBool>,
    fatal: watch::Receiver<bool>,
    /// The store's free-space gauge, readable off the writer thread: ingest asks it before it
    /// spends device or link key on material the store would refuse.
    space: crate::store::SpaceGauge,
}

/// Where operations go.
#[derive(Debug, Clone)]
enum Committer {
    /// To the writer thread (a node).
    Thread(mpsc::UnboundedSender<Msg>),
    /// Committed on the caller's stack, one transaction per operation (the deterministic
    /// network simulation, which must not depend on another thread's timing).
    Inline(Arc<InlineStore>),
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.op.name())
    }
}

#[derive(Debug)]
struct InlineStore {
    store: std::sync::Mutex<Box<dyn KeyStore>>,
    /// A rotation pass started by a live rotation is running: one step after each operation.
    rotating: AtomicBool,
    fatal: watch::Sender<bool>,
    instruments: StoreInstruments,
}

impl Writer {
    /// A writer without a thread: each operation runs and commits in its own transaction inside
    /// [`Writer::apply`], so its future is ready at once. Same rules otherwise (a failed commit
    /// answers nobody and stops the writer; a live KEK rotation's pass runs one step after each
    /// operation, the store's upkeep after each). For the deterministic network simulation,
    /// where every step must happen on the scheduler's one thread.
    pub fn inline(store: impl KeyStore + 'static) -> Self {
        let (fatal_tx, fatal) = watch::channel(false);
        let space = store.gauge();
        Self {
            tx: Committer::Inline(Arc::new(InlineStore {
                store: std::sync::Mutex::new(Box::new(store)),
                rotating: AtomicBool::new(false),
                fatal: fatal_tx,
                instruments: StoreInstruments::register(),
            })),
            failed: Arc::new(AtomicBool::new(false)),
            fatal,
            space,
        }
    }

    /// Starts the writer thread, which owns `store` until the last handle is dropped.
    pub fn spawn(store: impl KeyStore + 'static) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let (fatal_tx, fatal) = watch::channel(false);
        let failed = Arc::new(AtomicBool::new(false));
        let failed2 = failed.clone();
        let space = store.gauge();
        std::thread::Builder::new()
            .name("kms-writer".into())
            .spawn(move || {
                run(
                    Box::new(store),
                    rx,
                    failed2,
                    fatal_tx,
                    StoreInstruments::register(),
                )
            })
            // Invariant: spawning a thread at start-up only fails when the OS is out of
            // resources, and the node cannot run without its writer.
            .unwrap_or_else(|e| panic!("cannot start the store writer thread: {e}"));
        Self {
            tx: Committer::Thread(tx),
            failed,
            fatal,
            space,
        }
    }

    /// The store's free-space gauge.
    pub fn space(&self) -> &crate::store::SpaceGauge {
        &self.space
    }

    /// Queues `op` for the next batch **now** (operations run in the order they were queued) and
    /// returns a future of its result once the batch is durable.
    ///
    /// An operation that fails leaves the transaction as it found it (other operations of the
    /// batch still commit). Because queueing happens in this call, a caller holding a lock while
    /// calling it fixes the order of its operation relative to every other caller of that lock.
    pub fn apply<O: Operation>(
        &self,
        op: O,
    ) -> impl std::future::Future<Output = Result<O::Output, StoreError>> + Send + use<O> {
        let (reply, reply_rx) = oneshot::channel();
        let job = Job {
            op: op.into(),
            reply,
        };
        let queued = self.queue(Msg::Job(job));
        async move {
            queued?;
            let outcome = reply_rx
                .await
                .map_err(|_| StoreError::Db("store writer stopped".into()))??;
            O::output(outcome).ok_or(StoreError::Corrupt("outcome of another operation"))
        }
    }

    /// Starts a fresh data-key epoch under a new KEK period ([`KeyStore::rotate_kek`]) after
    /// the operations queued before it; the older epochs are then re-encrypted one bounded step
    /// after each batch. Resolves once the new epoch is durable.
    pub fn rotate_kek(
        &self,
        now: UnixMillis,
    ) -> impl std::future::Future<Output = Result<KekRotation, StoreError>> + Send + use<> {
        let (reply, reply_rx) = oneshot::channel();
        let queued = self.queue(Msg::RotateKek { now, reply });
        async move {
            queued?;
            reply_rx
                .await
                .map_err(|_| StoreError::Db("store writer stopped".into()))?
        }
    }

    /// Hands `msg` to the writer thread, or runs it on the caller's stack (inline). A writer
    /// that stopped refuses it (dropping its reply, which its caller sees as "stopped").
    fn queue(&self, msg: Msg) -> Result<(), StoreError> {
        if self.failed.load(Ordering::SeqCst) {
            return Err(StoreError::Db(
                "store writer stopped after a failed commit".into(),
            ));
        }
        match &self.tx {
            Committer::Thread(tx) => tx
                .send(msg)
                .map_err(|_| StoreError::Db("store writer stopped".into())),
            Committer::Inline(inline) => {
                let mut store = inline.store.lock().unwrap_or_else(|p| p.into_inner());
                match msg {
                    Msg::Job(job) => {
                        if !commit(store.as_mut(), vec![job], &inline.instruments) {
                            self.failed.store(true, Ordering::SeqCst);
                            let _ = inline.fatal.send(true);
                        } else if inline.rotating.load(Ordering::SeqCst) {
                            // As the writer thread does: one step of the pass after each batch.
                            inline
                                .rotating
                                .store(rotation_step(store.as_mut()), Ordering::SeqCst);
                        }
                    }
                    Msg::RotateKek { now, reply } => {
                        let r = store.rotate_kek(now);
                        if r.is_ok() {
                            inline.rotating.store(true, Ordering::SeqCst);
                        }
                        let _ = reply.send(r);
                    }
                }
                Ok(())
            }
        }
    }

    /// Reads the store of an inline writer ([`Writer::inline`]) in a transaction that is never
    /// committed; `None` for a writer thread. For the simulation's invariant checks.
    pub fn inspect<T>(&self, read: impl FnOnce(&mut dyn Tables) -> T) -> Option<T> {
        match &self.tx {
            Committer::Thread(_) => None,
            Committer::Inline(inline) => {
                let mut store = inline.store.lock().unwrap_or_else(|p| p.into_inner());
                let mut read = Some(read);
                let mut out = None;
                store
                    .inspect(&mut |t| out = read.take().map(|r| r(t)))
                    .ok()?;
                out
            }
        }
    }

    /// Resolves when a commit has failed: the node must exit and recover from disk.
    pub async fn fatal(&self) {
        let mut f = self.fatal.clone();
        let _ = f.wait_for(|v| *v).await;
    }
}

fn run(
    mut store: Box<dyn KeyStore>,
    mut rx: mpsc::UnboundedReceiver<Msg>,
    failed: Arc<AtomicBool>,
    fatal: watch::Sender<bool>,
    instruments: StoreInstruments,
) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    // A message that ended a batch (a rotation queued behind its operations).
    let mut held: Option<Msg> = None;
    // A rotation pass started by a live rotation is running.
    let mut rotating = false;
    loop {
        let next = match held.take() {
            Some(m) => Some(m),
            None if rotating => match rx.try_recv() {
                Ok(m) => Some(m),
                Err(mpsc::error::TryRecvError::Empty) => None,
                Err(mpsc::error::TryRecvError::Disconnected) => break,
            },
            None => match rx.blocking_recv() {
                Some(m) => Some(m),
                None => break,
            },
        };
        match next {
            // Idle while a pass runs: one step.
            None => rotating = rotation_step(store.as_mut()),
            Some(Msg::RotateKek { now, reply }) => {
                let r = store.rotate_kek(now);
                match &r {
                    Ok(k) => {
                        tracing::info!(
                            epoch = k.epoch,
                            kek_period = k.period,
                            older_epochs = k.older_epochs,
                            "key-encryption key rotated: fresh data-key epoch; older epochs are re-encrypted in steps"
                        );
                        rotating = true;
                    }
                    Err(e) => tracing::warn!(error = %e, "key-encryption key rotation failed"),
                }
                let _ = reply.send(r);
            }
            Some(Msg::Job(first)) => {
                batch.push(first);
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(Msg::Job(job)) => batch.push(job),
                        Ok(other) => {
                            held = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                if !commit(store.as_mut(), std::mem::take(&mut batch), &instruments) {
                    failed.store(true, Ordering::SeqCst);
                    let _ = fatal.send(true);
                    break;
                }
                // Under load the pass still advances: one step after each batch.
                if rotating {
                    rotating = rotation_step(store.as_mut());
                }
            }
        }
    }
    // Whatever is still queued after a failure is refused: dropping a job drops its reply
    // sender, which the waiting caller sees as "writer stopped".
    rx.close();
    while rx.try_recv().is_ok() {}
}

/// One step of the rotation pass; whether more steps remain. A pass that cannot go on (low
/// space, an error) stops here and resumes at the next start of the node, from its persisted
/// cursor.
fn rotation_step(store: &mut dyn KeyStore) -> bool {
    match store.rotation_step() {
        Ok(Rotation::Pending) => true,
        Ok(Rotation::Done) => {
            tracing::info!("rotation pass done: older data-key epochs and unused KEKs destroyed");
            false
        }
        Ok(Rotation::LowSpace) => {
            tracing::warn!(
                "key store below its free-space watermark: the rotation pass waits for the next start"
            );
            false
        }
        Err(e) => {
            tracing::error!(error = %e, "rotation step failed; the pass resumes at the next start");
            false
        }
    }
}

/// Runs `jobs` in one transaction, answers each once it is durable, then runs the store's upkeep;
/// false if the transaction failed, in which case every job is answered with the error and the
/// writer must stop.
fn commit(store: &mut dyn KeyStore, jobs: Vec<Job>, instruments: &StoreInstruments) -> bool {
    let (ops, replies): (Vec<Op>, Vec<_>) = jobs.into_iter().map(|j| (j.op, j.reply)).unzip();
    let started = std::time::Instant::now();
    let written = store.bytes_written();
    let commits = store.commits();
    match store.apply(ops) {
        Ok(outcomes) => {
            let took = started.elapsed();
            // A batch that changed nothing was dropped, not committed: it is not counted.
            let committed = match (commits, store.commits()) {
                (Some(before), Some(after)) => after > before,
                _ => true,
            };
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                let _ = reply.send(outcome);
            }
            store.upkeep();
            // The bytes the upkeep wrote count with the batch's (the commit's time does not).
            instruments.committed(
                committed.then_some(took),
                store.bytes_written().saturating_sub(written),
            );
            true
        }
        Err(e) => {
            instruments.failed();
            tracing::error!(error = %e, "key store commit failed; no answer leaves this batch, the node must restart");
            for reply in replies {
                let _ = reply.send(Err(StoreError::Db(e.to_string())));
            }
            false
        }
    }
}
