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
//!   ([`record_arrival`]), so an index it never got can be told from one still to come.
//! * **GET_KEY** at either end looks the derived ID up, decides with [`serve`], and consumes the
//!   key and records the delivery in one commit. Expiry is the ordinary expiry of waiting keys:
//!   both ends store the same `expires_at`, chosen by the master's node.
//!
//! Every decision is in [`crate::core::stream`]; this module only reads and writes the store,
//! runs the relay and waits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qkd_proto::peer as pb;
use qkd_types::{KeyId, KeyStreamId, SaeId, UnixMillis};
use tokio::sync::Notify;

use super::relay::{BatchSpec, StreamSlice, lock};
use super::{KeyManager, Malformed, PeerError, Refusal};
use crate::api::{DeliveredKey, OpenStreamRequest, OpenedStream, ServiceError, StreamFailure};
use crate::core::stream::{
    self, Held, MAX_BATCH, Open, Qos, Role, StreamError, StreamRecord, check_caller,
    next_reservation, serve, settle_qos, stream_key_id,
};
use crate::events::{Event, Side};
use crate::store::{MadeUnder, StoreError, StoredKey, Txn};

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

/// What one pass of a pump found to do.
enum Step {
    /// The stream is gone (closed): stop.
    Stop,
    /// Nothing to reserve now.
    Idle,
    /// Reserve this run (already recorded as under way).
    Reserve(StreamRecord, u64, u64),
}

/// A key delivered from a stream, with what the delivery event names.
type Served = (DeliveredKey, Option<MadeUnder>, SaeId, SaeId, Role);

impl KeyManager {
    pub(super) async fn open_stream_at(
        &self,
        req: OpenStreamRequest,
    ) -> Result<OpenedStream, StreamFailure> {
        if self.is_local(&req.peer) {
            return Err(StreamError::SameNode.into());
        }
        let default_ttl_s = u32::try_from(self.inner.cfg.key_ttl_ms / 1000).unwrap_or(u32::MAX);
        let qos = settle_qos(&req.qos, &self.inner.cfg.limits, default_ttl_s)?;
        let (id, join) = match req.join {
            Some(id) => (id, true),
            None => (KeyStreamId::random(), false),
        };
        let caller = req.caller.clone();
        let peer = req.peer.clone();
        let granted = qos.clone();
        let r = self
            .inner
            .writer
            .run(
                move |tx| -> Result<Result<StreamRecord, StreamError>, StoreError> {
                    let held = tx.stream(id)?;
                    let record = match stream::open(&caller, &peer, id, join, qos, held.as_ref()) {
                        Ok(Open::Create(r) | Open::Join(r)) => r,
                        Err(e) => return Ok(Err(e)),
                    };
                    tx.put_stream(&record)?;
                    Ok(Ok(record))
                },
            )
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
        let caller = caller.clone();
        let r = self
            .inner
            .writer
            .run(move |tx| -> Result<Result<Qos, StreamError>, StoreError> {
                let record = tx.stream(id)?;
                Ok(check_caller(record.as_ref(), &caller)
                    .and_then(|()| record.map(|r| r.qos).ok_or(StreamError::UnknownStream)))
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
                Ok((key, made, master, slave, role)) => {
                    let side = match role {
                        Role::Master => Side::Master,
                        Role::Slave => Side::Slave,
                    };
                    self.emit(&Event::Delivered {
                        side,
                        master: &master,
                        slaves: std::slice::from_ref(&slave),
                        keys: &[(key.id, made)],
                    });
                    return Ok(key);
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
    ) -> Result<(Result<Served, StreamError>, u32), StreamFailure> {
        let now = self.inner.clock.now();
        let me = self.clone();
        let caller = caller.clone();
        let r = self
            .inner
            .writer
            .run(
                move |tx| -> Result<(Result<Served, StreamError>, u32), StoreError> {
                    let record = tx.stream(id)?;
                    if let Err(e) = check_caller(record.as_ref(), &caller) {
                        return Ok((Err(e), 0));
                    }
                    let Some(mut record) = record else {
                        return Ok((Err(StreamError::UnknownStream), 0));
                    };
                    let timeout = record.qos.timeout_ms;
                    let kid = record.key_id(index);
                    let meta = tx.key_meta(kid)?;
                    let held = match &meta {
                        Some(m)
                            if m.master == record.master
                                && m.slaves.iter().any(|(s, done)| *s == record.slave && !done)
                                && m.expires_at > now
                                && me.stored_key_fits(m) =>
                        {
                            Held::Key {
                                size_bits: m.size_bits,
                            }
                        }
                        Some(_) => Held::Gone,
                        None if tx.tombstone(kid)?.is_some() => Held::Gone,
                        None => Held::Absent,
                    };
                    match (serve(&record, index, held), meta) {
                        (Ok(()), Some(mut meta)) => {
                            let key = tx
                                .key_bytes(kid)?
                                .ok_or(StoreError::Corrupt("stream key bytes vanished"))?;
                            if record.role == Role::Slave {
                                for s in meta.slaves.iter_mut() {
                                    if s.0 == record.slave {
                                        s.1 = true;
                                    }
                                }
                            }
                            // The master's copy has one taker, the master; the slave's is done
                            // once every slave fetched it.
                            if record.role == Role::Master || meta.slaves.iter().all(|(_, d)| *d) {
                                tx.retire_key(kid, &meta, now)?;
                            } else {
                                tx.update_key_meta(kid, &meta)?;
                            }
                            record.mark_delivered(index);
                            tx.put_stream(&record)?;
                            let served = (
                                DeliveredKey { id: kid, key },
                                meta.made_under.clone(),
                                record.master.clone(),
                                record.slave.clone(),
                                record.role,
                            );
                            Ok((Ok(served), timeout))
                        }
                        (Ok(()), None) => Ok((Err(StreamError::Gone), timeout)),
                        (Err(e), _) => {
                            // The master's SAE asking ahead moves the reservation window, but
                            // never further than one window past what is reserved.
                            let asked = index
                                .saturating_add(1)
                                .min(record.reserving.saturating_add(record.qos.window()));
                            if record.role == Role::Master && asked > record.asked {
                                record.asked = asked;
                                tx.put_stream(&record)?;
                            }
                            Ok((Err(e), timeout))
                        }
                    }
                },
            )
            .await;
        storage(r)
    }

    pub(super) async fn close_stream_at(
        &self,
        caller: &SaeId,
        id: KeyStreamId,
    ) -> Result<(), StreamFailure> {
        let now = self.inner.clock.now();
        let caller = caller.clone();
        let r = self
            .inner
            .writer
            .run(move |tx| -> Result<Result<u64, StreamError>, StoreError> {
                let record = tx.stream(id)?;
                if let Err(e) = check_caller(record.as_ref(), &caller) {
                    return Ok(Err(e));
                }
                let Some(record) = record else {
                    return Ok(Err(StreamError::UnknownStream));
                };
                // The keys reserved ahead of the SAE (bounded); any others expire with their TTL.
                let top = record.horizon.max(record.reserving);
                let from = record
                    .asked
                    .max(top.saturating_sub(MAX_ERASE_ON_CLOSE))
                    .min(top);
                let mut erased = 0;
                for index in from..top {
                    let kid = record.key_id(index);
                    if let Some(meta) = tx.key_meta(kid)? {
                        tx.retire_key(kid, &meta, now)?;
                        erased += 1;
                    }
                }
                tx.delete_stream(id)?;
                Ok(Ok(erased))
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
        let r = self
            .inner
            .writer
            .run(move |tx| -> Result<Vec<KeyStreamId>, StoreError> {
                let mut masters = Vec::new();
                for record in tx.streams()? {
                    if record.role == Role::Master && record.opened {
                        let recovered = stream::recover(record.clone());
                        if recovered != record {
                            tx.put_stream(&recovered)?;
                        }
                        masters.push(recovered.id);
                    }
                }
                Ok(masters)
            })
            .await;
        match r {
            Ok(Ok(masters)) => {
                if !masters.is_empty() {
                    tracing::info!(count = masters.len(), "resuming key streams");
                }
                for id in masters {
                    self.start_pump(id);
                }
            }
            Ok(Err(e)) | Err(e) => tracing::error!(error = %e, "cannot resume key streams"),
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
            let step = self
                .inner
                .writer
                .run(move |tx| -> Result<Step, StoreError> {
                    let Some(mut record) = tx.stream(id)? else {
                        return Ok(Step::Stop);
                    };
                    let Some((first, n)) = next_reservation(&record) else {
                        return Ok(Step::Idle);
                    };
                    // Recorded before the batch starts: after a crash the run is void, and its
                    // key IDs are never offered twice.
                    record.reserving = first + n;
                    tx.put_stream(&record)?;
                    Ok(Step::Reserve(record, first, n))
                })
                .await;
            let (record, first, n) = match step {
                Ok(Ok(Step::Stop)) => return,
                Ok(Ok(Step::Idle)) => {
                    // Woken by a GET_KEY that asked ahead, or look again after a while.
                    let _ = tokio::time::timeout(Duration::from_secs(1), wake.notified()).await;
                    continue;
                }
                Ok(Ok(Step::Reserve(r, first, n))) => (r, first, n),
                Ok(Err(e)) | Err(e) => {
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
            stream: Some(StreamSlice {
                id: record.id,
                key_ids,
                first_index: first,
                expires_at,
            }),
        };
        let outcome = self.run_batch_reporting(&spec).await;
        let id = record.id;
        let made_under = self.made_under(&record.master, &record.slave);
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
        let r = self
            .inner
            .writer
            .run(move |tx| -> Result<(), StoreError> {
                let Some(mut current) = tx.stream(id)? else {
                    // Closed meanwhile: the keys are void here (and expire at the slave's node).
                    return Ok(());
                };
                match keys {
                    Some((keys, relay_id)) => {
                        let meta = StoredKey {
                            request: relay_id,
                            ..meta
                        };
                        for k in &keys {
                            tx.put_key(k.id, &meta, &k.key)?;
                        }
                        current.horizon = first + n;
                        current.last_expiry = current.last_expiry.max(expires_at);
                    }
                    // The destination may hold these IDs: never offer them again.
                    None if void => current.horizon = first + n,
                    // Nothing can have been stored anywhere: try the same run again.
                    None => {}
                }
                current.reserving = current.horizon;
                tx.put_stream(&current)
            })
            .await;
        if let Ok(Err(e)) | Err(e) = r {
            tracing::error!(stream = %id, error = %e, "store failed in a key stream");
            return false;
        }
        ok
    }
}

/// Erases, at expiry, the slave ends whose SAE never joined (keys arrived, nobody opened them).
pub(super) fn prune_streams(tx: &mut Txn<'_>, now: UnixMillis) -> Result<(), StoreError> {
    for record in tx.streams()? {
        if !record.opened && record.last_expiry <= now {
            tx.delete_stream(record.id)?;
        }
    }
    Ok(())
}

/// Checks the stream slice of a relayed batch at its destination: one slave, ordinary keys,
/// and exactly the stream's key IDs for the indices it names. Returns (stream, first, expiry).
pub(super) fn check_slice(
    slice: &pb::StreamSlice,
    master: &SaeId,
    slaves: &[SaeId],
    key_ids: &[KeyId],
    special: bool,
) -> Result<(KeyStreamId, u64, UnixMillis), PeerError> {
    let id = <[u8; 16]>::try_from(slice.key_stream_id.as_slice())
        .map(KeyStreamId::from_bytes)
        .map_err(|_| Malformed::IdLength("key stream ID"))?;
    let [slave] = slaves else {
        return Err(Refusal::StreamSlice.into());
    };
    let expected = (0..key_ids.len() as u64).map(|i| {
        slice
            .first_index
            .checked_add(i)
            .map(|index| stream_key_id(id, master, slave, index))
    });
    if special
        || key_ids.len() as u64 > MAX_BATCH
        || !expected.zip(key_ids).all(|(e, k)| e == Some(*k))
    {
        return Err(Refusal::StreamSlice.into());
    }
    Ok((id, slice.first_index, slice.expires_at_ms))
}

/// At the destination, in the commit that stores a batch of stream keys: how far the stream's
/// keys arrived. Creates the slave end (not yet opened) when its SAE has not joined.
pub(super) fn record_arrival(
    tx: &mut Txn<'_>,
    id: KeyStreamId,
    meta: &StoredKey,
    arrived: u64,
) -> Result<Result<(), PeerError>, StoreError> {
    let Some((slave, _)) = meta.slaves.first() else {
        return Ok(Err(Refusal::StreamSlice.into()));
    };
    let mut record = match tx.stream(id)? {
        Some(r) if r.role == Role::Slave && r.master == meta.master && &r.slave == slave => r,
        Some(_) => return Ok(Err(Refusal::StreamSlice.into())),
        None => StreamRecord {
            id,
            role: Role::Slave,
            master: meta.master.clone(),
            slave: slave.clone(),
            qos: Qos {
                chunk_bytes: meta.size_bits / 8,
                ..Qos::default()
            },
            opened: false,
            horizon: 0,
            reserving: 0,
            asked: 0,
            delivered: Vec::new(),
            forgotten_below: 0,
            last_expiry: 0,
        },
    };
    record.horizon = record.horizon.max(arrived);
    record.reserving = record.horizon;
    record.last_expiry = record.last_expiry.max(meta.expires_at);
    tx.put_stream(&record)?;
    Ok(Ok(()))
}

/// Maps a store outcome to the SAE-facing error (a store failure stops the node).
fn storage<T>(r: Result<Result<T, StoreError>, StoreError>) -> Result<T, StreamFailure> {
    r.and_then(|x| x).map_err(|e| {
        tracing::error!(error = %e, "store failed in a key stream");
        StreamFailure::Service(ServiceError::Storage)
    })
}
