//! ETSI GS QKD 004 key streams at a node: the shell around [`crate::core::stream`].
//!
//! * **Master end** (the node of the SAE that opened the stream): a pump per open stream reserves
//!   runs of indices ahead of its SAE, within the stream's window, one relayed batch per run
//!   whose key IDs are the stream's derived IDs ([`stream_key_id`]). The run is recorded as under
//!   way before the batch starts, so a crash voids it rather than reusing its IDs; a batch that
//!   failed before its confirmation left is retried with the same IDs (the destination cannot
//!   hold them), one that failed after is void. The master's copies are stored as waiting keys
//!   with the batch's expiry, in the same commit that settles the run.
//! * **Slave end** (the node of the SAE that joins): the destination of those batches stores the
//!   keys like any relayed key and, in the same commit, how far the stream's keys arrived
//!   ([`ops::StoreKeys`] with its stream), so an index it never got can be told from one still
//!   to come.
//! * **GET_KEY** at either end looks the derived ID up, decides with
//!   [`crate::core::stream::serve`], and consumes the key and records the delivery in one commit
//!   ([`ops::TakeStreamKey`]). Expiry is the ordinary expiry of waiting keys: both ends store the
//!   same `expires_at`, chosen by the master's node.
//!
//! Every decision is in [`crate::core::stream`] and every store change is a store operation
//! ([`crate::store::ops`]); this module only queues them, runs the relay and waits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qkd_types::{KeyId, KeyStreamId, SaeId};
use tokio::sync::Notify;

use super::relay::{BatchSpec, StreamRun, lock};
use super::{KeyManager, PeerError, Refusal};
use crate::api::{DeliveredKey, OpenStreamRequest, OpenedStream, ServiceError, StreamFailure};
use crate::core::stream::{
    MAX_BATCH, Qos, Role, StreamError, StreamRecord, settle_qos, stream_key_id,
};
use crate::events::{Event, Side};
use crate::store::ops::{self, Reservation, StreamKey};
use crate::store::{StoreError, StoredKey};

/// How often a waiting GET_KEY looks again for a key not reserved yet.
const POLL: Duration = Duration::from_millis(20);
/// Most keys a close erases at once; any others expire with their TTL.
const MAX_ERASE_ON_CLOSE: u64 = 4096;
/// Wait after a failed reservation, doubled up to [`MAX_BACKOFF`] while failures go on.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// In-memory part of the streams of a node: how to wake each master end's pump.
#[derive(Debug, Default)]
pub(super) struct StreamsRt {
    pumps: Mutex<HashMap<KeyStreamId, Arc<Notify>>>,
}

impl KeyManager {
    pub(super) async fn open_stream_at(
        &self,
        req: OpenStreamRequest,
    ) -> Result<OpenedStream, StreamFailure> {
        if self.is_local(&req.peer) {
            return Err(StreamError::SameNode.into());
        }
        let default_ttl_s = u32::try_from(self.cfg().key_ttl_ms / 1000).unwrap_or(u32::MAX);
        let qos = settle_qos(&req.qos, &self.cfg().limits, default_ttl_s)?;
        let (id, join) = match req.join {
            Some(id) => (id, true),
            None => (KeyStreamId::random(), false),
        };
        let granted = qos.clone();
        let r = self
            .inner
            .writer
            .apply(ops::OpenStream {
                caller: req.caller,
                peer: req.peer,
                id,
                join,
                qos,
            })
            .await;
        let record = storage(r)??;
        if record.role == Role::Master {
            self.start_pump(id);
        }
        tracing::info!(stream = %id, master = %record.master, slave = %record.slave, role = ?record.role, "key stream opened");
        Ok(OpenedStream {
            id,
            qos: granted,
            master: record.role == Role::Master,
        })
    }

    pub(super) async fn stream_qos_at(
        &self,
        caller: &SaeId,
        id: KeyStreamId,
    ) -> Result<Qos, StreamFailure> {
        let r = self
            .inner
            .writer
            .apply(ops::StreamQos {
                caller: caller.clone(),
                id,
            })
            .await;
        Ok(storage(r)??)
    }

    pub(super) async fn stream_key_at(
        &self,
        caller: &SaeId,
        id: KeyStreamId,
        index: u64,
    ) -> Result<DeliveredKey, StreamFailure> {
        let started = tokio::time::Instant::now();
        loop {
            let (result, timeout_ms) = self.try_stream_key(caller, id, index).await?;
            match result {
                Ok(StreamKey {
                    id,
                    key,
                    made_under,
                    master,
                    slave,
                    role,
                }) => {
                    let side = match role {
                        Role::Master => Side::Master,
                        Role::Slave => Side::Slave,
                    };
                    self.emit(&Event::Delivered {
                        side,
                        master: &master,
                        slaves: std::slice::from_ref(&slave),
                        keys: &[(id, made_under)],
                    });
                    return Ok(DeliveredKey { id, key });
                }
                Err(StreamError::NotYet)
                    if started.elapsed() < Duration::from_millis(u64::from(timeout_ms)) =>
                {
                    self.wake_pump(id);
                    tokio::time::sleep(POLL).await;
                }
                Err(e) => {
                    self.wake_pump(id);
                    return Err(e.into());
                }
            }
        }
    }

    /// One look at the key of `index`: delivered (and consumed) if it is there, otherwise why not,
    /// with the stream's QoS timeout.
    async fn try_stream_key(
        &self,
        caller: &SaeId,
        id: KeyStreamId,
        index: u64,
    ) -> Result<(Result<StreamKey, StreamError>, u32), StreamFailure> {
        let r = self
            .inner
            .writer
            .apply(ops::TakeStreamKey {
                caller: caller.clone(),
                id,
                index,
                now: self.inner.clock.now(),
                fit: self.fit(),
            })
            .await;
        storage(r)
    }

    pub(super) async fn close_stream_at(
        &self,
        caller: &SaeId,
        id: KeyStreamId,
    ) -> Result<(), StreamFailure> {
        let r = self
            .inner
            .writer
            .apply(ops::CloseStream {
                caller: caller.clone(),
                id,
                now: self.inner.clock.now(),
                max_erase: MAX_ERASE_ON_CLOSE,
            })
            .await;
        let erased = storage(r)??;
        if let Some(n) = lock(&self.inner.streams.pumps).remove(&id) {
            n.notify_one();
        }
        tracing::info!(stream = %id, erased, "key stream closed");
        Ok(())
    }

    /// At start: voids the reservations a crash interrupted and restarts the pump of every master
    /// end held here.
    pub(super) async fn resume_streams(&self) {
        let r = self.inner.writer.apply(ops::ResumeStreams {}).await;
        match r {
            Ok(masters) => {
                if !masters.is_empty() {
                    tracing::info!(count = masters.len(), "resuming key streams");
                }
                for id in masters {
                    self.start_pump(id);
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot resume key streams"),
        }
    }

    fn start_pump(&self, id: KeyStreamId) {
        let notify = Arc::new(Notify::new());
        lock(&self.inner.streams.pumps).insert(id, notify.clone());
        let me = self.clone();
        self.spawn(async move { me.pump(id, notify).await });
    }

    fn wake_pump(&self, id: KeyStreamId) {
        if let Some(n) = lock(&self.inner.streams.pumps).get(&id) {
            n.notify_one();
        }
    }

    /// Reserves the runs of one master end until the stream is closed.
    async fn pump(&self, id: KeyStreamId, wake: Arc<Notify>) {
        let mut backoff = MIN_BACKOFF;
        loop {
            let step = self.inner.writer.apply(ops::ReserveNext { id }).await;
            let (record, first, n) = match step {
                Ok(Reservation::Stop) => return,
                Ok(Reservation::Idle) => {
                    // Woken by a GET_KEY that asked ahead, or look again after a while.
                    let _ = tokio::time::timeout(Duration::from_secs(1), wake.notified()).await;
                    continue;
                }
                Ok(Reservation::Reserve { record, first, n }) => (record, first, n),
                Err(e) => {
                    tracing::error!(stream = %id, error = %e, "store failed in a key stream");
                    return;
                }
            };
            if self.reserve(record, first, n).await {
                backoff = MIN_BACKOFF;
            } else {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }

    /// Reserves indices `first..first + n` through one relayed batch; settles the run in the
    /// store either way. Returns whether the keys were reserved.
    async fn reserve(&self, record: StreamRecord, first: u64, n: u64) -> bool {
        let now = self.inner.clock.now();
        let expires_at = now + u64::from(record.qos.ttl_s) * 1000;
        let key_ids: Vec<KeyId> = (first..first + n).map(|i| record.key_id(i)).collect();
        let spec = BatchSpec {
            master: record.master.clone(),
            slaves: vec![record.slave.clone()],
            size_bits: record.qos.chunk_bytes * 8,
            number: n as usize,
            wrap: false,
            pool: false,
            stream: Some(StreamRun {
                id: record.id,
                key_ids,
                first_index: first,
                expires_at,
            }),
        };
        let cfg = self.cfg();
        let outcome = self.run_batch_reporting(&cfg, &spec).await;
        let id = record.id;
        let made_under =
            crate::relay::destination::made_under(&*cfg, &record.master, &record.slave);
        let (ok, keys, void) = match outcome {
            Ok(batch) => (true, Some((batch.keys, batch.relay_id)), false),
            Err(f) => {
                tracing::debug!(stream = %id, first, n, error = %f.error, void = f.maybe_committed, "key stream reservation failed");
                (false, None, f.maybe_committed)
            }
        };
        let meta = StoredKey {
            request: [0; 16],
            master: record.master.clone(),
            slaves: vec![(record.slave.clone(), false)],
            size_bits: spec.size_bits,
            expires_at,
            made_under: Some(made_under),
            pool: false,
        };
        let reserved = keys.map(|(keys, relay_id)| {
            let meta = StoredKey {
                request: relay_id,
                ..meta
            };
            (keys.into_iter().map(|k| (k.id, k.key)).collect(), meta)
        });
        let r = self
            .inner
            .writer
            .apply(ops::SettleReservation {
                id,
                first,
                n,
                expires_at,
                reserved,
                void,
            })
            .await;
        if let Err(e) = r {
            tracing::error!(stream = %id, error = %e, "store failed in a key stream");
            return false;
        }
        ok
    }
}

/// Checks the stream slice of a relayed batch at its destination: one slave, ordinary keys,
/// and exactly the stream's key IDs for the indices it names.
pub(crate) fn check_slice(
    slice: &crate::relay::destination::StreamSlice,
    master: &SaeId,
    slaves: &[SaeId],
    key_ids: &[KeyId],
    special: bool,
) -> Result<(), PeerError> {
    let [slave] = slaves else {
        return Err(Refusal::StreamSlice.into());
    };
    let expected = (0..key_ids.len() as u64).map(|i| {
        slice
            .first_index
            .checked_add(i)
            .map(|index| stream_key_id(slice.id, master, slave, index))
    });
    if special
        || key_ids.len() as u64 > MAX_BATCH
        || !expected.zip(key_ids).all(|(e, k)| e == Some(*k))
    {
        return Err(Refusal::StreamSlice.into());
    }
    Ok(())
}

/// Maps a store outcome to the SAE-facing error (a store failure stops the node).
fn storage<T>(r: Result<T, StoreError>) -> Result<T, StreamFailure> {
    r.map_err(|e| {
        tracing::error!(error = %e, "store failed in a key stream");
        StreamFailure::Service(ServiceError::Storage)
    })
}
