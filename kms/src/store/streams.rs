//! The store's record of ETSI 004 key streams: one record per stream end held by this node, in
//! its own table with its own codec, so that it stays apart from the other record kinds.
//!
//! A record holds no key material (the stream's keys are ordinary waiting keys in the `keys`
//! table, sealed and rotated like every other), only who the stream is for, its QoS and how far
//! reservation and delivery got ([`StreamRecord`]). It is written in the same transaction as the
//! key it accounts for, so a crash never separates the two.

use qkd_types::{KeyStreamId, SaeId};
use redb::{ReadableTable, TableDefinition};

use super::codec::{R, W};
use super::{StoreError, Txn, sae};
use crate::core::stream::{Qos, Role, StreamRecord};

/// Stream ID -> encoded [`StreamRecord`].
const STREAMS: TableDefinition<[u8; 16], &[u8]> = TableDefinition::new("key_streams");

/// Record format version.
const VERSION: u8 = 1;

impl Txn<'_> {
    /// The record of a stream held here.
    pub fn stream(&self, id: KeyStreamId) -> Result<Option<StreamRecord>, StoreError> {
        let t = self.tx.open_table(STREAMS)?;
        let Some(v) = t.get(*id.as_bytes())? else {
            return Ok(None);
        };
        decode_stream(id, v.value()).map(Some)
    }

    /// Stores (or replaces) the record of a stream.
    pub fn put_stream(&mut self, record: &StreamRecord) -> Result<(), StoreError> {
        self.tx
            .open_table(STREAMS)?
            .insert(*record.id.as_bytes(), encode_stream(record).as_slice())?;
        Ok(())
    }

    /// Erases the record of a stream (closed, or never joined and expired).
    pub fn delete_stream(&mut self, id: KeyStreamId) -> Result<(), StoreError> {
        self.tx.open_table(STREAMS)?.remove(*id.as_bytes())?;
        Ok(())
    }

    /// Every stream record held here.
    pub fn streams(&self) -> Result<Vec<StreamRecord>, StoreError> {
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
