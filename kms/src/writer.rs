//! Group commit: one thread owns the store and commits batches of operations.
//!
//! Operations queue up; the writer takes as many as are waiting (up to a limit), runs them in one
//! write transaction, commits it durably, and only then lets each operation answer. So a
//! request's keys never span two transactions, and nothing is answered before it is durable.
//!
//! Architecture invariant: a commit error answers nobody in the batch. The writer stops, every
//! queued and later operation fails with [`StoreError`], and the fatal signal tells the node to
//! exit and recover from disk. In-memory state is never trusted after a failed commit.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::{mpsc, oneshot, watch};

use crate::instruments::StoreInstruments;
use crate::store::{Store, StoreError, Txn};

/// Most operations in one transaction.
const MAX_BATCH: usize = 512;

/// What runs after the commit: `Ok` if it committed.
type Completion = Box<dyn FnOnce(Result<(), &StoreError>) + Send>;
/// An operation: runs inside the transaction and returns its completion.
type Job = Box<dyn FnOnce(&mut Txn<'_>) -> Completion + Send>;

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
    Thread(mpsc::UnboundedSender<Job>),
    /// Committed on the caller's stack, one transaction per operation (the deterministic
    /// network simulation, which must not depend on another thread's timing).
    Inline(Arc<InlineStore>),
}

#[derive(Debug)]
struct InlineStore {
    store: std::sync::Mutex<Store>,
    fatal: watch::Sender<bool>,
}

impl Writer {
    /// A writer without a thread: each operation runs and commits in its own transaction inside
    /// [`Writer::run`], so its future is ready at once. Same rules otherwise (a failed commit
    /// answers nobody and stops the writer). For the deterministic network simulation, where
    /// every step must happen on the scheduler's one thread.
    pub fn inline(store: Store) -> Self {
        let (fatal_tx, fatal) = watch::channel(false);
        let space = store.gauge();
        Self {
            tx: Committer::Inline(Arc::new(InlineStore {
                store: std::sync::Mutex::new(store),
                fatal: fatal_tx,
            })),
            failed: Arc::new(AtomicBool::new(false)),
            fatal,
            space,
        }
    }

    /// Starts the writer thread, which owns `store` until the last handle is dropped.
    pub fn spawn(store: Store) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let (fatal_tx, fatal) = watch::channel(false);
        let failed = Arc::new(AtomicBool::new(false));
        let failed2 = failed.clone();
        let space = store.gauge();
        std::thread::Builder::new()
            .name("kms-writer".into())
            .spawn(move || run(store, rx, failed2, fatal_tx, StoreInstruments::register()))
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
    /// `op` must check everything before it writes anything: an `Err` from it leaves the
    /// transaction as it found it (other operations of the batch still commit). Because queueing
    /// happens in this call, a caller holding a lock while calling it fixes the order of its
    /// operation relative to every other caller of that lock.
    pub fn run<T, E, F>(
        &self,
        op: F,
    ) -> impl std::future::Future<Output = Result<Result<T, E>, StoreError>> + Send + use<T, E, F>
    where
        T: Send + 'static,
        E: Send + 'static,
        F: FnOnce(&mut Txn<'_>) -> Result<T, E> + Send + 'static,
    {
        let (reply_tx, reply_rx) = oneshot::channel();
        let queued = if self.failed.load(Ordering::SeqCst) {
            Err(StoreError::Db(
                "store writer stopped after a failed commit".into(),
            ))
        } else {
            let job: Job = Box::new(move |txn: &mut Txn<'_>| {
                let result = op(txn);
                Box::new(move |committed: Result<(), &StoreError>| {
                    let _ = reply_tx.send(
                        committed
                            .map(|()| result)
                            .map_err(|e| StoreError::Db(e.to_string())),
                    );
                })
            });
            match &self.tx {
                Committer::Thread(tx) => tx
                    .send(job)
                    .map_err(|_| StoreError::Db("store writer stopped".into())),
                Committer::Inline(inline) => {
                    let mut store = inline.store.lock().unwrap_or_else(|p| p.into_inner());
                    if !commit_inline(&mut store, job) {
                        self.failed.store(true, Ordering::SeqCst);
                        let _ = inline.fatal.send(true);
                    }
                    Ok(())
                }
            }
        };
        async move {
            queued?;
            reply_rx
                .await
                .map_err(|_| StoreError::Db("store writer stopped".into()))?
        }
    }

    /// Reads the store of an inline writer ([`Writer::inline`]) in a transaction that is never
    /// committed; `None` for a writer thread. For the simulation's invariant checks.
    pub fn inspect<T>(&self, read: impl FnOnce(&mut Txn<'_>) -> T) -> Option<T> {
        match &self.tx {
            Committer::Thread(_) => None,
            Committer::Inline(inline) => {
                let mut store = inline.store.lock().unwrap_or_else(|p| p.into_inner());
                let mut txn = store.begin().ok()?;
                Some(read(&mut txn))
                // Dropping the transaction uncommitted aborts it.
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
    mut store: Store,
    mut rx: mpsc::UnboundedReceiver<Job>,
    failed: Arc<AtomicBool>,
    fatal: watch::Sender<bool>,
    instruments: StoreInstruments,
) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let started = std::time::Instant::now();
        let mut txn = match store.begin() {
            Ok(txn) => txn,
            Err(e) => {
                instruments.failed();
                fail(
                    &e,
                    batch.drain(..).map(|job| fail_job(job)).collect(),
                    &failed,
                    &fatal,
                );
                break;
            }
        };
        let completions: Vec<Completion> = batch.drain(..).map(|job| job(&mut txn)).collect();
        let written = txn.bytes_written();
        match txn.commit() {
            Ok(()) => {
                instruments.committed(started.elapsed(), written);
                completions.into_iter().for_each(|c| c(Ok(())));
            }
            Err(e) => {
                instruments.failed();
                fail(&e, completions, &failed, &fatal);
                break;
            }
        }
    }
    // Whatever is still queued after a failure is refused.
    rx.close();
    while let Ok(job) = rx.try_recv() {
        fail_job(job)(Err(&StoreError::Db("store writer stopped".into())));
    }
}

/// Runs one job in its own transaction on the caller's stack (see [`Writer::inline`]); false if
/// it did not commit.
fn commit_inline(store: &mut Store, job: Job) -> bool {
    let mut txn = match store.begin() {
        Ok(txn) => txn,
        Err(e) => {
            fail_job(job)(Err(&e));
            return false;
        }
    };
    let completion = job(&mut txn);
    match txn.commit() {
        Ok(()) => {
            completion(Ok(()));
            true
        }
        Err(e) => {
            tracing::error!(error = %e, "key store commit failed; no answer leaves it, the node must restart");
            completion(Err(&e));
            false
        }
    }
}

/// A job that never ran: its completion reports the failure.
fn fail_job(job: Job) -> Completion {
    // The job is dropped unrun; dropping it drops its reply sender, which the waiting caller
    // sees as "writer stopped".
    drop(job);
    Box::new(|_| {})
}

fn fail(
    e: &StoreError,
    completions: Vec<Completion>,
    failed: &AtomicBool,
    fatal: &watch::Sender<bool>,
) {
    tracing::error!(error = %e, "key store commit failed; no answer leaves this batch, the node must restart");
    failed.store(true, Ordering::SeqCst);
    for c in completions {
        c(Err(e));
    }
    let _ = fatal.send(true);
}
