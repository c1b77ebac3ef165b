//! The store's record of ETSI 004 key streams: one record per stream end held by this node, in
//! its own table with its own codec, so that it stays apart from the other record kinds; and the
//! store operations on them ([`super::ops`]: open, GET_KEY, close, reserve, settle, resume).
//!
//! A record holds no key material (the stream's keys are ordinary waiting keys in the `keys`
//! table, sealed and rotated like every other), only who the stream is for, its QoS and how far
//! reservation and delivery got ([`StreamRecord`]). It is written in the same transaction as the
//! key it accounts for, so a crash never separates the two. Every decision is
//! [`crate::core::stream`]'s; the operations here read the records, ask it, and write.

use qkd_types::{KeyStreamId, SaeId, UnixMillis};
use redb::{ReadableTable, TableDefinition};

use super::codec::{R, W};
use super::ops::{
    CloseStream, OpenStream, Reservation, ReserveNext, ResumeStreams, SettleReservation, StreamKey,
    StreamQos, TakeStreamKey,
};
use super::tables::Tables;
use super::{StoreError, StoredKey, Txn, sae};
use crate::core::stream::{
    self, Held, Open, Qos, Role, StreamError, StreamRecord, check_caller, next_reservation, serve,
};

/// Stream ID -> encoded [`StreamRecord`].
pub(super) const STREAMS: TableDefinition<[u8; 16], &[u8]> = TableDefinition::new("key_streams");

/// Record format version.
const VERSION: u8 = 1;

impl Txn<'_> {
    /// The record of a stream held here.
    pub(super) fn stream_record(
        &self,
        id: KeyStreamId,
    ) -> Result<Option<StreamRecord>, StoreError> {
        let t = self.tx.open_table(STREAMS)?;
        let Some(v) = t.get(*id.as_bytes())? else {
            return Ok(None);
        };
        decode_stream(id, v.value()).map(Some)
    }

    /// Stores (or replaces) the record of a stream.
    pub(super) fn put_stream_record(&mut self, record: &StreamRecord) -> Result<(), StoreError> {
        let v = encode_stream(record);
        self.tx
            .open_table(STREAMS)?
            .insert(*record.id.as_bytes(), v.as_slice())?;
        self.written += (16 + v.len()) as u64;
        Ok(())
    }

    /// Erases the record of a stream (closed, or never joined and expired).
    pub(super) fn delete_stream_record(&mut self, id: KeyStreamId) -> Result<(), StoreError> {
        self.tx.open_table(STREAMS)?.remove(*id.as_bytes())?;
        Ok(())
    }

    /// Every stream record held here.
    pub(super) fn stream_records(&self) -> Result<Vec<StreamRecord>, StoreError> {
        let t = self.tx.open_table(STREAMS)?;
        let mut out = Vec::new();
        for entry in t.iter()? {
            let (k, v) = entry?;
            out.push(decode_stream(
                KeyStreamId::from_bytes(k.value()),
                v.value(),
            )?);
        }
        Ok(out)
    }
}

/// Erases, at expiry, the slave ends whose SAE never joined (keys arrived, nobody opened them).
pub(super) fn prune_streams(t: &mut dyn Tables, now: UnixMillis) -> Result<(), StoreError> {
    for record in t.streams()? {
        if !record.opened && record.last_expiry <= now {
            t.delete_stream(record.id)?;
        }
    }
    Ok(())
}

/// At the destination, in the commit that stores a batch of stream keys: how far the stream's
/// keys arrived. Creates the slave end (not yet opened) when its SAE has not joined. `Err(())`
/// (nothing written) if the keys do not fit the stream's end held here.
pub(super) fn record_arrival(
    t: &mut dyn Tables,
    id: KeyStreamId,
    meta: &StoredKey,
    arrived: u64,
) -> Result<Result<(), ()>, StoreError> {
    let Some((slave, _)) = meta.slaves.first() else {
        return Ok(Err(()));
    };
    let mut record = match t.stream(id)? {
        Some(r) if r.role == Role::Slave && r.master == meta.master && &r.slave == slave => r,
        Some(_) => return Ok(Err(())),
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
    t.put_stream(&record)?;
    Ok(Ok(()))
}

impl OpenStream {
    pub(super) fn exec(
        self,
        t: &mut dyn Tables,
    ) -> Result<Result<StreamRecord, StreamError>, StoreError> {
        let held = t.stream(self.id)?;
        let record = match stream::open(
            &self.caller,
            &self.peer,
            self.id,
            self.join,
            self.qos,
            held.as_ref(),
        ) {
            Ok(Open::Create(r) | Open::Join(r)) => r,
            Err(e) => return Ok(Err(e)),
        };
        t.put_stream(&record)?;
        Ok(Ok(record))
    }
}

impl StreamQos {
    pub(super) fn exec(self, t: &mut dyn Tables) -> Result<Result<Qos, StreamError>, StoreError> {
        let record = t.stream(self.id)?;
        Ok(check_caller(record.as_ref(), &self.caller)
            .and_then(|()| record.map(|r| r.qos).ok_or(StreamError::UnknownStream)))
    }
}

impl TakeStreamKey {
    pub(super) fn exec(
        self,
        t: &mut dyn Tables,
    ) -> Result<(Result<StreamKey, StreamError>, u32), StoreError> {
        let (now, index) = (self.now, self.index);
        let record = t.stream(self.id)?;
        if let Err(e) = check_caller(record.as_ref(), &self.caller) {
            return Ok((Err(e), 0));
        }
        let Some(mut record) = record else {
            return Ok((Err(StreamError::UnknownStream), 0));
        };
        let timeout = record.qos.timeout_ms;
        let kid = record.key_id(index);
        let meta = t.key_meta(kid)?;
        let held = match &meta {
            Some(m)
                if m.master == record.master
                    && m.slaves.iter().any(|(s, done)| *s == record.slave && !done)
                    && m.expires_at > now
                    && self.fit.stored_key_fits(m) =>
            {
                Held::Key {
                    size_bits: m.size_bits,
                }
            }
            Some(_) => Held::Gone,
            None if t.tombstone(kid)?.is_some() => Held::Gone,
            None => Held::Absent,
        };
        match (serve(&record, index, held), meta) {
            (Ok(()), Some(mut meta)) => {
                let key = t
                    .key_bytes(kid)?
                    .ok_or(StoreError::Corrupt("stream key bytes vanished"))?;
                // Test-only switch of the network simulation; never set otherwise.
                if crate::events::defects::active().stream_redelivery {
                    let served = StreamKey {
                        id: kid,
                        key,
                        made_under: meta.made_under.clone(),
                        master: record.master.clone(),
                        slave: record.slave.clone(),
                        role: record.role,
                    };
                    return Ok((Ok(served), timeout));
                }
                if record.role == Role::Slave {
                    for s in meta.slaves.iter_mut() {
                        if s.0 == record.slave {
                            s.1 = true;
                        }
                    }
                }
                // The master's copy has one taker, the master; the slave's is done once every
                // slave fetched it.
                if record.role == Role::Master || meta.slaves.iter().all(|(_, d)| *d) {
                    t.retire_key(kid, &meta, now)?;
                } else {
                    t.update_key_meta(kid, &meta)?;
                }
                record.mark_delivered(index);
                t.put_stream(&record)?;
                let served = StreamKey {
                    id: kid,
                    key,
                    made_under: meta.made_under.clone(),
                    master: record.master.clone(),
                    slave: record.slave.clone(),
                    role: record.role,
                };
                Ok((Ok(served), timeout))
            }
            (Ok(()), None) => Ok((Err(StreamError::Gone), timeout)),
            (Err(e), _) => {
                // The master's SAE asking ahead moves the reservation window, but never further
                // than one window past what is reserved.
                let asked = index
                    .saturating_add(1)
                    .min(record.reserving.saturating_add(record.qos.window()));
                if record.role == Role::Master && asked > record.asked {
                    record.asked = asked;
                    t.put_stream(&record)?;
                }
                Ok((Err(e), timeout))
            }
        }
    }
}

impl CloseStream {
    pub(super) fn exec(self, t: &mut dyn Tables) -> Result<Result<u64, StreamError>, StoreError> {
        let record = t.stream(self.id)?;
        if let Err(e) = check_caller(record.as_ref(), &self.caller) {
            return Ok(Err(e));
        }
        let Some(record) = record else {
            return Ok(Err(StreamError::UnknownStream));
        };
        // The keys reserved ahead of the SAE (bounded); any others expire with their TTL.
        let top = record.horizon.max(record.reserving);
        let from = record
            .asked
            .max(top.saturating_sub(self.max_erase))
            .min(top);
        let mut erased = 0;
        for index in from..top {
            let kid = record.key_id(index);
            if let Some(meta) = t.key_meta(kid)? {
                t.retire_key(kid, &meta, self.now)?;
                erased += 1;
            }
        }
        t.delete_stream(self.id)?;
        Ok(Ok(erased))
    }
}

impl ResumeStreams {
    pub(super) fn exec(self, t: &mut dyn Tables) -> Result<Vec<KeyStreamId>, StoreError> {
        let mut masters = Vec::new();
        for record in t.streams()? {
            if record.role == Role::Master && record.opened {
                let recovered = stream::recover(record.clone());
                if recovered != record {
                    t.put_stream(&recovered)?;
                }
                masters.push(recovered.id);
            }
        }
        Ok(masters)
    }
}

impl ReserveNext {
    pub(super) fn exec(self, t: &mut dyn Tables) -> Result<Reservation, StoreError> {
        let Some(mut record) = t.stream(self.id)? else {
            return Ok(Reservation::Stop);
        };
        let Some((first, n)) = next_reservation(&record) else {
            return Ok(Reservation::Idle);
        };
        // Recorded before the batch starts: after a crash the run is void, and its key IDs are
        // never offered twice.
        record.reserving = first + n;
        t.put_stream(&record)?;
        Ok(Reservation::Reserve { record, first, n })
    }
}

impl SettleReservation {
    pub(super) fn exec(self, t: &mut dyn Tables) -> Result<(), StoreError> {
        let Some(mut current) = t.stream(self.id)? else {
            // Closed meanwhile: the keys are void here (and expire at the slave's node).
            return Ok(());
        };
        // A key ID used here before (which a stream's derived IDs never are, unless a record
        // was damaged) voids the run rather than bring a delivered key back.
        let mut fresh = true;
        if let Some((keys, _)) = &self.reserved {
            for (id, _) in keys {
                fresh &= !t.key_id_used(*id)?;
            }
        }
        match &self.reserved {
            Some((keys, meta)) if fresh => {
                for (id, key) in keys {
                    t.put_key(*id, meta, key)?;
                }
                current.horizon = self.first + self.n;
                current.last_expiry = current.last_expiry.max(self.expires_at);
            }
            Some(_) => current.horizon = self.first + self.n,
            // The destination may hold these IDs: never offer them again.
            None if self.void => current.horizon = self.first + self.n,
            // Nothing can have been stored anywhere: try the same run again.
            None => {}
        }
        current.reserving = current.horizon;
        t.put_stream(&current)
    }
}

fn encode_stream(r: &StreamRecord) -> Vec<u8> {
    let mut w = W::default();
    w.u8(VERSION)
        .u8(match r.role {
            Role::Master => 0,
            Role::Slave => 1,
        })
        .str(r.master.as_str())
        .str(r.slave.as_str())
        .u32(r.qos.chunk_bytes)
        .u32(r.qos.max_bps)
        .u32(r.qos.min_bps)
        .u32(r.qos.jitter_ms)
        .u32(r.qos.priority)
        .u32(r.qos.timeout_ms)
        .u32(r.qos.ttl_s)
        .str(&r.qos.metadata_mimetype)
        .u8(u8::from(r.opened))
        .u64(r.horizon)
        .u64(r.reserving)
        .u64(r.asked)
        .u64(r.forgotten_below)
        .u64(r.last_expiry)
        .u32(r.delivered.len() as u32);
    for (s, e) in &r.delivered {
        w.u64(*s).u64(*e);
    }
    w.0
}

fn decode_stream(id: KeyStreamId, v: &[u8]) -> Result<StreamRecord, StoreError> {
    let mut r = R(v);
    if r.u8()? != VERSION {
        return Err(StoreError::Corrupt("key stream record version"));
    }
    let role = match r.u8()? {
        0 => Role::Master,
        1 => Role::Slave,
        _ => return Err(StoreError::Corrupt("key stream role")),
    };
    let master: SaeId = sae(r.str()?)?;
    let slave: SaeId = sae(r.str()?)?;
    let qos = Qos {
        chunk_bytes: r.u32()?,
        max_bps: r.u32()?,
        min_bps: r.u32()?,
        jitter_ms: r.u32()?,
        priority: r.u32()?,
        timeout_ms: r.u32()?,
        ttl_s: r.u32()?,
        metadata_mimetype: r.str()?.to_owned(),
    };
    let opened = match r.u8()? {
        0 => false,
        1 => true,
        _ => return Err(StoreError::Corrupt("key stream flag")),
    };
    let (horizon, reserving, asked, forgotten_below, last_expiry) =
        (r.u64()?, r.u64()?, r.u64()?, r.u64()?, r.u64()?);
    let runs = r.u32()? as usize;
    // Each run takes 16 bytes: a count the record cannot hold is corruption, not an allocation.
    if runs > r.0.len() / 16 {
        return Err(StoreError::Corrupt("key stream runs"));
    }
    let mut delivered = Vec::with_capacity(runs);
    for _ in 0..runs {
        delivered.push((r.u64()?, r.u64()?));
    }
    if !r.0.is_empty() {
        return Err(StoreError::Corrupt("key stream record trailing bytes"));
    }
    Ok(StreamRecord {
        id,
        role,
        master,
        slave,
        qos,
        opened,
        horizon,
        reserving,
        asked,
        delivered,
        forgotten_below,
        last_expiry,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_damage_is_caught() {
        let r = StreamRecord {
            id: KeyStreamId::random(),
            role: Role::Slave,
            master: SaeId::parse("ENC-A1").unwrap(),
            slave: SaeId::parse("ENC-B1").unwrap(),
            qos: Qos {
                chunk_bytes: 32,
                max_bps: 25_600,
                min_bps: 1,
                jitter_ms: 2,
                priority: 3,
                timeout_ms: 500,
                ttl_s: 60,
                metadata_mimetype: "application/json".into(),
            },
            opened: true,
            horizon: 64,
            reserving: 64,
            asked: 10,
            delivered: vec![(0, 5), (7, 10)],
            forgotten_below: 0,
            last_expiry: 1_700_000_000_000,
        };
        let bytes = encode_stream(&r);
        assert_eq!(decode_stream(r.id, &bytes).unwrap(), r);
        for cut in 0..bytes.len() {
            assert!(decode_stream(r.id, &bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode_stream(r.id, &longer).is_err());
    }
}
