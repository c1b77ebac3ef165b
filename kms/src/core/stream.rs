//! ETSI GS QKD 004 key streams, the decisions (docs/grpc.md, "Key streams").
//!
//! A stream binds index `i` to the key whose ID is [`stream_key_id`]`(stream, master, slave, i)`.
//! The master's node reserves runs of indices ahead of its SAE through the ordinary relay (one
//! end-to-end batch whose key IDs are those derived IDs), so both nodes hold the key of index `i`
//! under the same ID, with the same expiry, consumed once at each end like any key. This module
//! decides, over a [`StreamRecord`] and what the store holds for an index, what happens:
//! which QoS is granted ([`settle_qos`]), who may open, join or use a stream ([`open`],
//! [`check_caller`]), what a GET_KEY answers ([`serve`]), which indices to reserve next
//! ([`next_reservation`]) and when StreamKeys sends its next key ([`Cadence`]).
//!
//! Sans-IO: it never touches the store, a socket or a clock; callers pass `now` and persist the
//! records it returns. It never sees key bytes.

use std::time::Duration;

use qkd_types::{KeyId, KeyStreamId, SaeId, UnixMillis};

use crate::api::KeyLimits;

/// Longest GET_KEY wait for a key not yet reserved (QoS `timeout`), in milliseconds.
pub const MAX_TIMEOUT_MS: u32 = 10_000;
/// Longest TTL of a stream's keys (QoS `ttl`), in seconds.
pub const MAX_TTL_S: u32 = 86_400;
/// Fastest cadence a stream may ask for, in keys per second.
pub const MAX_KEYS_PER_S: u64 = 1_000;
/// Fewest indices reserved ahead of the master SAE.
pub const MIN_WINDOW: u64 = 16;
/// Most indices reserved ahead of the master SAE.
pub const MAX_WINDOW: u64 = 512;
/// Most indices one relayed batch reserves.
pub const MAX_BATCH: u64 = 64;
/// Most disjoint runs of delivered indices a record remembers; older runs are forgotten (their
/// indices then answer "delivered or expired", their keys being gone either way).
pub const MAX_DELIVERED_RUNS: usize = 256;

/// Quality of service of a stream (ETSI GS QKD 004 V2). Units as in 004.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Qos {
    /// Key size in bytes (`Key_chunk_size`).
    pub chunk_bytes: u32,
    /// Most key bits per second (`Max_bps`); 0: no cadence.
    pub max_bps: u32,
    /// Least key bits per second wanted (`Min_bps`).
    pub min_bps: u32,
    /// Acceptable deviation from the cadence, ms (`Jitter`).
    pub jitter_ms: u32,
    /// Priority (`Priority`).
    pub priority: u32,
    /// Wait for a key not yet reserved, ms (`Timeout`).
    pub timeout_ms: u32,
    /// Lifetime of a reserved key, s (`TTL`).
    pub ttl_s: u32,
    /// Media type of metadata (`Metadata_mimetype`).
    pub metadata_mimetype: String,
}

impl Qos {
    /// Keys per second the cadence allows; `None` when there is no cadence.
    pub fn keys_per_s(&self) -> Option<f64> {
        (self.max_bps > 0 && self.chunk_bytes > 0)
            .then(|| f64::from(self.max_bps) / (8.0 * f64::from(self.chunk_bytes)))
    }

    /// How many indices the master's node keeps reserved ahead of its SAE: two seconds of the
    /// cadence, within [`MIN_WINDOW`]..=[`MAX_WINDOW`].
    pub fn window(&self) -> u64 {
        let ahead = self
            .keys_per_s()
            .map_or(MIN_WINDOW, |r| (r * 2.0).ceil() as u64);
        ahead.clamp(MIN_WINDOW, MAX_WINDOW)
    }
}

/// Which end of a stream a node holds: the end of the SAE that opened it (its keys are reserved
/// by this node) or of the SAE that joined it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The opener's end; this node reserves the stream's keys.
    Master,
    /// The joiner's end; keys arrive from the master's node.
    Slave,
}

/// A half-open run of indices `[start, end)`.
pub type Run = (u64, u64);

/// One end of a stream as a node stores it (no key material).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRecord {
    /// The stream.
    pub id: KeyStreamId,
    /// Which end this node holds.
    pub role: Role,
    /// The SAE that opened the stream.
    pub master: SaeId,
    /// The SAE that joins it.
    pub slave: SaeId,
    /// The QoS the local SAE was granted (at a slave end before its SAE joined: the default).
    pub qos: Qos,
    /// Whether the local SAE has opened (or joined) it. A slave end may exist before: keys
    /// arrived for a stream its SAE has not joined yet.
    pub opened: bool,
    /// Every index below it is settled here: its key was stored, or it never will be (a void
    /// reservation). At the master end, the end of the last finished reservation; at the slave
    /// end, one past the last index that arrived.
    pub horizon: u64,
    /// Master end: the end of the reservation under way (equal to `horizon` when none is).
    /// Indices in `horizon..reserving` are not settled yet; after a crash they are void.
    pub reserving: u64,
    /// One past the highest index the local SAE asked for (drives the reservation window).
    pub asked: u64,
    /// Indices delivered to the local SAE, as sorted disjoint runs.
    pub delivered: Vec<Run>,
    /// Indices below it were delivered or expired; the runs that told them apart are forgotten.
    pub forgotten_below: u64,
    /// Latest expiry of a key of this stream stored here (ms since the epoch); a slave end its
    /// SAE never joined is erased after it.
    pub last_expiry: UnixMillis,
}

/// Why a stream request cannot be served. Each maps to a gRPC status and an ETSI 004 status in
/// `api::grpc::status_of`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// SAE: no stream with this ID is open for it at this node (never opened, or closed).
    #[error("no key stream with this ID is open for the caller at this KME")]
    UnknownStream,
    /// SAE: the stream belongs to other SAEs.
    #[error("the key stream belongs to other SAEs")]
    NotYours,
    /// SAE: it opened (or joined) this stream already and has not closed it.
    #[error("the key stream ID is already in use")]
    InUse,
    /// SAE: the QoS cannot be met; the counter-proposal can.
    #[error("the requested QoS cannot be met")]
    QosNotMet {
        /// What this node can grant instead.
        counter: Qos,
    },
    /// SAE or operator: both SAEs are attached to this node, so no QKD link joins them.
    #[error("no QKD connection joins the two SAEs: both are attached to this KME")]
    SameNode,
    /// The index is not reserved at this end (yet): key is scarce or the SAE runs ahead.
    #[error("the key of this index is not available yet")]
    NotYet,
    /// The index was reserved but its TTL ran out before this end fetched it, or its
    /// reservation failed (void at both ends).
    #[error("the key of this index expired before it was fetched")]
    Expired,
    /// SAE: this end already delivered the index.
    #[error("the key of this index was already delivered to this SAE")]
    AlreadyDelivered,
    /// The index is gone, delivered or expired (the record no longer tells which).
    #[error("the key of this index was delivered or expired")]
    Gone,
    /// SAE: the joiner asked for another key size than the opener's.
    #[error("the stream's keys are {bytes} bytes long; join with that key_chunk_size")]
    ChunkMismatch {
        /// The size of the stream's keys, in bytes.
        bytes: u32,
    },
}

/// The ID of the key at `index` of a stream: the same at both ends. A UUID of version 8 (custom),
/// the first 16 bytes of SHA-256 over a label, the stream ID, both SAE IDs and the index, so it
/// never collides with the random (version 4) IDs of ordinary keys, nor with another pair's or
/// another stream's.
pub fn stream_key_id(stream: KeyStreamId, master: &SaeId, slave: &SaeId, index: u64) -> KeyId {
    let mut h = ring::digest::Context::new(&ring::digest::SHA256);
    h.update(b"qkd-stream-key-id-v1");
    h.update(stream.as_bytes());
    for sae in [master, slave] {
        h.update(&(sae.as_str().len() as u32).to_be_bytes());
        h.update(sae.as_str().as_bytes());
    }
    h.update(&index.to_be_bytes());
    let digest = h.finish();
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest.as_ref()[..16]);
    KeyId::from_uuid(uuid::Builder::from_custom_bytes(b).into_uuid())
}

/// Whether a key ID is a stream key's ([`stream_key_id`]): such keys are served only through
/// their stream, never by ID over ETSI 014 or GetKeysByIds.
pub fn is_stream_key(id: KeyId) -> bool {
    id.uuid().get_version_num() == 8
}

/// The QoS granted for a request: zeros take the defaults (the pair's key size, the node's key
/// TTL); values the node cannot meet give [`StreamError::QosNotMet`] with a counter-proposal.
pub fn settle_qos(req: &Qos, limits: &KeyLimits, default_ttl_s: u32) -> Result<Qos, StreamError> {
    let mut q = req.clone();
    if q.chunk_bytes == 0 {
        q.chunk_bytes = limits.key_size / 8;
    }
    if q.ttl_s == 0 {
        q.ttl_s = default_ttl_s.clamp(1, MAX_TTL_S);
    }
    let mut counter = q.clone();
    let (min, max) = (limits.min_key_size.div_ceil(8), limits.max_key_size / 8);
    counter.chunk_bytes = q.chunk_bytes.clamp(min.max(1), max.max(1));
    counter.ttl_s = q.ttl_s.min(MAX_TTL_S);
    counter.timeout_ms = q.timeout_ms.min(MAX_TIMEOUT_MS);
    let max_bps = MAX_KEYS_PER_S * 8 * u64::from(counter.chunk_bytes);
    if u64::from(q.max_bps) > max_bps {
        counter.max_bps = u32::try_from(max_bps).unwrap_or(u32::MAX);
    }
    if counter.max_bps > 0 && counter.min_bps > counter.max_bps {
        counter.min_bps = counter.max_bps;
    }
    if counter == q {
        Ok(q)
    } else {
        Err(StreamError::QosNotMet { counter })
    }
}

/// What OPEN_CONNECT does, given what this node holds under the stream ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Open {
    /// Store this new record (a new stream at its master end, or a joiner's end).
    Create(StreamRecord),
    /// Store this updated record: the joiner opens an end where keys already arrived.
    Join(StreamRecord),
}

/// OPEN_CONNECT by `caller` with `peer` (pair permission already checked). `stream` is the ID the
/// caller gave, or (`join == false`) a fresh random one the shell drew; `held` is what this node
/// holds under it.
pub fn open(
    caller: &SaeId,
    peer: &SaeId,
    stream: KeyStreamId,
    join: bool,
    qos: Qos,
    held: Option<&StreamRecord>,
) -> Result<Open, StreamError> {
    let fresh = |role: Role, master: &SaeId, slave: &SaeId| StreamRecord {
        id: stream,
        role,
        master: master.clone(),
        slave: slave.clone(),
        qos: qos.clone(),
        opened: true,
        horizon: 0,
        reserving: 0,
        asked: 0,
        delivered: Vec::new(),
        forgotten_below: 0,
        last_expiry: 0,
    };
    match held {
        None if !join => Ok(Open::Create(fresh(Role::Master, caller, peer))),
        None => Ok(Open::Create(fresh(Role::Slave, peer, caller))),
        // A drawn ID that is taken: astronomically unlikely, but never share a stream.
        Some(_) if !join => Err(StreamError::InUse),
        Some(r) if r.local() == caller && r.opened => Err(StreamError::InUse),
        Some(r)
            if r.role == Role::Slave && !r.opened && &r.master == peer && &r.slave == caller =>
        {
            let mut r = r.clone();
            r.opened = true;
            r.qos = qos;
            Ok(Open::Join(r))
        }
        Some(_) => Err(StreamError::NotYours),
    }
}

impl StreamRecord {
    /// The SAE this end serves.
    pub fn local(&self) -> &SaeId {
        match self.role {
            Role::Master => &self.master,
            Role::Slave => &self.slave,
        }
    }

    /// The ID of the key at `index`.
    pub fn key_id(&self, index: u64) -> KeyId {
        stream_key_id(self.id, &self.master, &self.slave, index)
    }

    /// Whether the local SAE got `index`: `Some(true)` delivered, `Some(false)` not,
    /// `None` forgotten.
    pub fn was_delivered(&self, index: u64) -> Option<bool> {
        if index < self.forgotten_below {
            return None;
        }
        Some(
            self.delivered
                .iter()
                .any(|(s, e)| (*s..*e).contains(&index)),
        )
    }

    /// Records that the local SAE got `index` (and asked up to it). Keeps at most
    /// [`MAX_DELIVERED_RUNS`] runs, forgetting the lowest.
    pub fn mark_delivered(&mut self, index: u64) {
        let end = index.saturating_add(1);
        self.asked = self.asked.max(end);
        let pos = self.delivered.partition_point(|(s, _)| *s < index);
        self.delivered.insert(pos, (index, end));
        // Merge runs that overlap or touch (only around `pos` can they).
        let mut merged: Vec<Run> = Vec::with_capacity(self.delivered.len());
        for (s, e) in self.delivered.drain(..) {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        self.delivered = merged;
        while self.delivered.len() > MAX_DELIVERED_RUNS {
            let (_, e) = self.delivered.remove(0);
            self.forgotten_below = self.forgotten_below.max(e);
        }
    }
}

/// Who may use a stream held here: its local SAE, once it opened (or joined) it.
pub fn check_caller(record: Option<&StreamRecord>, caller: &SaeId) -> Result<(), StreamError> {
    match record {
        None => Err(StreamError::UnknownStream),
        Some(r) if r.local() != caller => {
            if r.master == *caller || r.slave == *caller {
                // The other end's SAE at this node: impossible (both ends at one node are refused),
                // but a stream of the caller's is not held here either way.
                Err(StreamError::UnknownStream)
            } else {
                Err(StreamError::NotYours)
            }
        }
        Some(r) if !r.opened => Err(StreamError::UnknownStream),
        Some(_) => Ok(()),
    }
}

/// What the store holds for a stream key at this end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// The key is stored and the local SAE has not fetched it; `size_bits` its size.
    Key {
        /// Its size in bits.
        size_bits: u32,
    },
    /// The key was erased here (delivered or expired: its tombstone remains).
    Gone,
    /// Never stored here.
    Absent,
}

/// GET_KEY of `index` at this end (caller already checked with [`check_caller`]): `Ok` means
/// deliver the stored key now (and [`StreamRecord::mark_delivered`]).
pub fn serve(record: &StreamRecord, index: u64, held: Held) -> Result<(), StreamError> {
    if record.was_delivered(index) == Some(true) {
        return Err(StreamError::AlreadyDelivered);
    }
    match held {
        Held::Key { size_bits } if size_bits != record.qos.chunk_bytes.saturating_mul(8) => {
            Err(StreamError::ChunkMismatch {
                bytes: size_bits / 8,
            })
        }
        Held::Key { .. } => Ok(()),
        Held::Gone => match record.was_delivered(index) {
            None => Err(StreamError::Gone),
            Some(_) => Err(StreamError::Expired),
        },
        Held::Absent if index < record.horizon => match record.was_delivered(index) {
            None => Err(StreamError::Gone),
            Some(_) => Err(StreamError::Expired),
        },
        Held::Absent => Err(StreamError::NotYet),
    }
}

/// The next run of indices the master's node should reserve, as (first index, count): up to
/// [`Qos::window`] past what its SAE asked for, at most [`MAX_BATCH`] at once, one run at a time.
pub fn next_reservation(record: &StreamRecord) -> Option<(u64, u64)> {
    if record.role != Role::Master || !record.opened || record.reserving != record.horizon {
        return None;
    }
    let target = record.asked.saturating_add(record.qos.window());
    (record.horizon < target).then(|| {
        let n = (target - record.horizon).min(MAX_BATCH);
        (record.horizon, n)
    })
}

/// A record as recovered after a restart: a reservation that was under way is void (its keys may
/// exist at the slave's node only; its indices expire there).
pub fn recover(mut record: StreamRecord) -> StreamRecord {
    record.horizon = record.horizon.max(record.reserving);
    record.reserving = record.horizon;
    record
}

/// The cadence of StreamKeys: one key every `1 / keys_per_s` seconds, never two in a burst after
/// a slow read (a late key resets the schedule instead of catching up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cadence {
    /// Time between two keys; zero when the QoS sets no cadence.
    pub period: Duration,
}

impl Cadence {
    /// The cadence of `qos`.
    pub fn of(qos: &Qos) -> Self {
        let period = qos
            .keys_per_s()
            .map_or(Duration::ZERO, |r| Duration::from_secs_f64(1.0 / r));
        Self { period }
    }

    /// When the key after the one due at `last_due` may go, asked at `now`: one period after
    /// `last_due`, on a fixed grid, so the time spent fetching and committing each key does not
    /// stretch the cadence (counted from each actual send instead, 100 keys/s delivered 71-76:
    /// BENCHMARKS.md, issue 11); but never before `now`, so a key already late (the reader or
    /// the store was slow) restarts the grid at `now` and late keys never go in a burst.
    pub fn next_due<T: std::ops::Add<Duration, Output = T> + Ord>(&self, last_due: T, now: T) -> T {
        (last_due + self.period).max(now)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sae(s: &str) -> SaeId {
        SaeId::parse(s).unwrap()
    }

    fn qos(chunk: u32) -> Qos {
        Qos {
            chunk_bytes: chunk,
            ttl_s: 60,
            ..Qos::default()
        }
    }

    fn master_record() -> StreamRecord {
        match open(
            &sae("A"),
            &sae("B"),
            KeyStreamId::random(),
            false,
            qos(32),
            None,
        )
        .unwrap()
        {
            Open::Create(r) => r,
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn key_ids_are_the_same_at_both_ends_and_differ_per_index_pair_and_stream() {
        let s = KeyStreamId::random();
        let (a, b, c) = (sae("A"), sae("B"), sae("C"));
        let id = stream_key_id(s, &a, &b, 7);
        assert_eq!(id, stream_key_id(s, &a, &b, 7));
        assert!(is_stream_key(id));
        assert!(!is_stream_key(KeyId::random()));
        assert_ne!(id, stream_key_id(s, &a, &b, 8));
        assert_ne!(id, stream_key_id(s, &a, &c, 7));
        assert_ne!(id, stream_key_id(s, &b, &a, 7));
        assert_ne!(id, stream_key_id(KeyStreamId::random(), &a, &b, 7));
        // Length-prefixed SAE IDs: ("AB", "C") and ("A", "BC") differ.
        assert_ne!(
            stream_key_id(s, &sae("AB"), &c, 0),
            stream_key_id(s, &a, &sae("BC"), 0)
        );
    }

    #[test]
    fn qos_defaults_and_counter_proposals() {
        let limits = KeyLimits::default();
        let q = settle_qos(&Qos::default(), &limits, 300).unwrap();
        assert_eq!((q.chunk_bytes, q.ttl_s), (32, 300));
        let cases = [
            (
                Qos {
                    chunk_bytes: 4,
                    ..qos(0)
                },
                "chunk_bytes",
            ),
            (
                Qos {
                    chunk_bytes: 1000,
                    ..qos(0)
                },
                "chunk_bytes",
            ),
            (
                Qos {
                    ttl_s: MAX_TTL_S + 1,
                    ..qos(32)
                },
                "ttl",
            ),
            (
                Qos {
                    timeout_ms: MAX_TIMEOUT_MS + 1,
                    ..qos(32)
                },
                "timeout",
            ),
            (
                Qos {
                    max_bps: u32::MAX,
                    ..qos(32)
                },
                "max_bps",
            ),
            (
                Qos {
                    max_bps: 100,
                    min_bps: 200,
                    ..qos(32)
                },
                "min_bps",
            ),
        ];
        for (req, what) in cases {
            let Err(StreamError::QosNotMet { counter }) = settle_qos(&req, &limits, 300) else {
                panic!("{what}: accepted");
            };
            // The counter-proposal is itself granted as it stands.
            assert_eq!(settle_qos(&counter, &limits, 300), Ok(counter), "{what}");
        }
    }

    #[test]
    fn open_join_and_who_may_use_a_stream() {
        let (a, b, y) = (sae("A"), sae("B"), sae("Y"));
        let m = master_record();
        assert_eq!(m.role, Role::Master);
        assert_eq!(check_caller(Some(&m), &a), Ok(()));
        assert_eq!(check_caller(Some(&m), &y), Err(StreamError::NotYours));
        assert_eq!(check_caller(None, &a), Err(StreamError::UnknownStream));
        // The master cannot open its stream twice; Y cannot take it over.
        assert_eq!(
            open(&a, &b, m.id, true, qos(32), Some(&m)),
            Err(StreamError::InUse)
        );
        assert_eq!(
            open(&y, &a, m.id, true, qos(32), Some(&m)),
            Err(StreamError::NotYours)
        );
        // At B's node keys arrived before B joined: the record is B's to open, not Y's.
        let mut arrived = m.clone();
        arrived.role = Role::Slave;
        arrived.opened = false;
        arrived.horizon = 16;
        assert_eq!(
            check_caller(Some(&arrived), &b),
            Err(StreamError::UnknownStream)
        );
        assert_eq!(
            open(&y, &a, m.id, true, qos(32), Some(&arrived)),
            Err(StreamError::NotYours)
        );
        let Ok(Open::Join(joined)) = open(&b, &a, m.id, true, qos(32), Some(&arrived)) else {
            panic!()
        };
        assert!(joined.opened);
        assert_eq!(joined.horizon, 16);
        assert_eq!(check_caller(Some(&joined), &b), Ok(()));
        assert_eq!(
            open(&b, &a, m.id, true, qos(32), Some(&joined)),
            Err(StreamError::InUse)
        );
    }

    #[test]
    fn get_key_answers_by_what_the_store_holds() {
        let mut r = master_record();
        r.horizon = 10;
        r.reserving = 20;
        let key = Held::Key { size_bits: 256 };
        assert_eq!(serve(&r, 3, key), Ok(()));
        assert_eq!(
            serve(&r, 3, Held::Key { size_bits: 128 }),
            Err(StreamError::ChunkMismatch { bytes: 16 })
        );
        r.mark_delivered(3);
        assert_eq!(serve(&r, 3, Held::Gone), Err(StreamError::AlreadyDelivered));
        assert_eq!(serve(&r, 4, Held::Gone), Err(StreamError::Expired));
        assert_eq!(serve(&r, 5, Held::Absent), Err(StreamError::Expired));
        // Being reserved, or beyond: not yet.
        assert_eq!(serve(&r, 12, Held::Absent), Err(StreamError::NotYet));
        assert_eq!(serve(&r, 99, Held::Absent), Err(StreamError::NotYet));
    }

    #[test]
    fn delivered_runs_merge_and_stay_bounded() {
        let mut r = master_record();
        for i in [5, 3, 4, 7, 6, 0] {
            r.mark_delivered(i);
        }
        assert_eq!(r.delivered, vec![(0, 1), (3, 8)]);
        r.mark_delivered(1);
        r.mark_delivered(2);
        assert_eq!(r.delivered, vec![(0, 8)]);
        assert_eq!(r.asked, 8);
        for i in 0..(MAX_DELIVERED_RUNS as u64 + 10) {
            r.mark_delivered(100 + 2 * i);
        }
        assert_eq!(r.delivered.len(), MAX_DELIVERED_RUNS);
        assert!(r.forgotten_below > 8);
        assert_eq!(r.was_delivered(0), None);
        assert_eq!(serve(&r, 0, Held::Gone), Err(StreamError::Gone));
        assert_eq!(r.was_delivered(100 + 2 * 200), Some(true));
        assert_eq!(r.was_delivered(101 + 2 * 200), Some(false));
    }

    #[test]
    fn reservations_stay_within_the_window_one_run_at_a_time() {
        let mut r = master_record();
        let w = r.qos.window();
        assert_eq!(w, MIN_WINDOW);
        assert_eq!(next_reservation(&r), Some((0, w)));
        r.reserving = w;
        assert_eq!(next_reservation(&r), None, "one run at a time");
        r.horizon = w;
        assert_eq!(next_reservation(&r), None, "window full");
        r.mark_delivered(0);
        assert_eq!(next_reservation(&r), Some((w, 1)));
        // A crash during a run voids it.
        r.reserving = w + 1;
        let r = recover(r);
        assert_eq!((r.horizon, r.reserving), (w + 1, w + 1));
        // The window follows the cadence: 100 keys/s of 32 bytes keeps 200 ahead.
        let q = Qos {
            max_bps: 100 * 32 * 8,
            ..qos(32)
        };
        assert_eq!(q.window(), 200);
        let mut slave = master_record();
        slave.role = Role::Slave;
        assert_eq!(next_reservation(&slave), None);
    }

    #[test]
    fn cadence_never_bursts_after_a_slow_read() {
        let c = Cadence::of(&Qos {
            max_bps: 100 * 32 * 8,
            ..qos(32)
        });
        assert_eq!(c.period, Duration::from_millis(10));
        let (t, ms) = (Duration::from_secs(1), Duration::from_millis);
        // On the grid, however long the last key took to fetch.
        assert_eq!(c.next_due(t, t + ms(3)), t + ms(10));
        // A late key restarts the grid now: no burst to catch up.
        assert_eq!(c.next_due(t, t + ms(25)), t + ms(25));
        assert_eq!(Cadence::of(&qos(32)).next_due(t, t + ms(1)), t + ms(1));
    }
}
