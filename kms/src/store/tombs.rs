//! Tombstones on disk without a random page per tombstone.
//!
//! A tombstone (key ID, SAE pair, time; no key material) is written for every key delivered, at
//! both ends, and looked up by key ID (is an ID used; a master asking for its own key). Keyed by
//! the random key ID, each one dirtied a page of its own: most of what a key pair cost the disk.
//! So the records and the ID index are kept apart:
//!
//! * `tombstones_by_time`: (time, key ID) -> master, slave. The record itself, written in time
//!   order and pruned from the head, so a commit appends to one leaf.
//! * `tombstone_log`: sequence -> key ID ‖ time, for tombstones not yet in a run; held in memory
//!   as a map (at most [`LOG_RUN`] entries, plus what waits for room on a full disk) and read
//!   back at open.
//! * runs (`tombstone_run_<n>`): key ID -> time, each written once, whole and in key order, from
//!   the log (every [`LOG_RUN`] tombstones) or by merging [`MERGE_FAN`] runs of one size tier
//!   into the next (a log-structured merge, as in LSM trees); `tombstone_runs` lists them.
//!
//! A run entry is only a hint: the tombstone exists if `tombstones_by_time` holds (time, key
//! ID). Pruning therefore touches only the record (and the log); a run whose newest entry is
//! older than every record left is dropped whole, and merges leave out entries whose record is
//! gone. Every tombstone is written about `1 + log4(tombstones / LOG_RUN)` times, sequentially.
//! Runs and log move in their own transactions after a commit ([`Store::maintain_tombstones`]),
//! only while free space is above the watermark (see [`super::space`]).

use std::collections::HashMap;

use qkd_types::{KeyId, SaeId, UnixMillis};
use redb::{ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};

use super::codec::{R, W};
use super::{Store, StoreError, Txn, sae};

/// Tombstones by (time, key ID): `u8(1) ‖ str master ‖ str slave` ("" for none).
pub(super) const TOMBS: TableDefinition<(u64, [u8; 16]), &[u8]> =
    TableDefinition::new("tombstones_by_time");
/// Tombstones not yet in a run, by sequence: key ID ‖ u64 time.
pub(super) const TOMB_LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("tombstone_log");
/// The runs: run number -> u64 entries ‖ u64 newest time.
pub(super) const TOMB_RUNS: TableDefinition<u64, &[u8]> = TableDefinition::new("tombstone_runs");

/// Tombstones in the log before they are written as a run (the store's default; tests use
/// fewer to exercise runs and merges).
pub(super) const LOG_RUN: usize = 4096;
/// Runs of one size tier merged into one of the next.
const MERGE_FAN: usize = 4;
/// Upper bound on the bytes one run entry costs the disk when written (key, value, page slack).
const RUN_ENTRY_BYTES: u64 = 64;

/// The tombstone ID index in memory: the log and the list of runs.
#[derive(Debug, Default)]
pub(super) struct TombIndex {
    /// Key ID -> (time, log sequence) of the tombstones of the log.
    pub log: HashMap<KeyId, (UnixMillis, u64)>,
    /// The next log sequence.
    pub next_log: u64,
    /// The runs, oldest first.
    runs: Vec<Run>,
    /// The next run number.
    next_run: u64,
}

/// One run of the tombstone index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Run {
    n: u64,
    entries: u64,
    newest: UnixMillis,
}

impl Run {
    /// The newest time of its entries.
    #[cfg(test)]
    pub(super) fn newest(&self) -> UnixMillis {
        self.newest
    }

    /// Size tier: runs of about `log_run * 4^tier` entries.
    pub(super) fn tier(&self, log_run: usize) -> u32 {
        let mut t = 0;
        let mut c = self.entries / log_run.max(1) as u64;
        while c >= MERGE_FAN as u64 {
            c /= MERGE_FAN as u64;
            t += 1;
        }
        t
    }

    fn encode(&self) -> [u8; 16] {
        let mut v = [0u8; 16];
        v[..8].copy_from_slice(&self.entries.to_be_bytes());
        v[8..].copy_from_slice(&self.newest.to_be_bytes());
        v
    }
}

fn run_name(n: u64) -> String {
    format!("tombstone_run_{n}")
}

fn run_table(name: &str) -> TableDefinition<'_, [u8; 16], u64> {
    TableDefinition::new(name)
}

impl TombIndex {
    /// The runs, oldest first (for tests).
    #[cfg(test)]
    pub(super) fn runs(&self) -> &[Run] {
        &self.runs
    }

    /// Reads the log and the list of runs (at open).
    pub(super) fn recover(tx: &redb::ReadTransaction) -> Result<Self, StoreError> {
        let mut out = Self::default();
        for entry in tx.open_table(TOMB_RUNS)?.iter()? {
            let (k, v) = entry?;
            let mut r = R(v.value());
            out.runs.push(Run {
                n: k.value(),
                entries: r.u64()?,
                newest: r.u64()?,
            });
            out.next_run = k.value() + 1;
        }
        for entry in tx.open_table(TOMB_LOG)?.iter()? {
            let (k, v) = entry?;
            let (id, mut rest) = (super::split_id(v.value())?.0, R(&v.value()[16..]));
            out.log.insert(id, (rest.u64()?, k.value()));
            out.next_log = k.value() + 1;
        }
        Ok(out)
    }
}

impl Txn<'_> {
    /// The time of `id`'s tombstone, if it has one: the log, else the first run whose entry
    /// the records confirm.
    pub(super) fn tomb_time(&self, id: KeyId) -> Result<Option<UnixMillis>, StoreError> {
        if let Some((at, _)) = self.index.index.tombs.log.get(&id) {
            return Ok(Some(*at));
        }
        let runs = &self.index.index.tombs.runs;
        if runs.is_empty() {
            return Ok(None);
        }
        let records = self.tx.open_table(TOMBS)?;
        for run in runs.iter().rev() {
            let name = run_name(run.n);
            let t = self.tx.open_table(run_table(&name))?;
            if let Some(at) = t.get(*id.as_bytes())? {
                let at = at.value();
                if records.get((at, *id.as_bytes()))?.is_some() {
                    return Ok(Some(at));
                }
            }
        }
        Ok(None)
    }

    /// A tombstone's record.
    pub(super) fn tomb_record(
        &self,
        id: KeyId,
    ) -> Result<Option<(UnixMillis, SaeId, Option<SaeId>)>, StoreError> {
        let Some(at) = self.tomb_time(id)? else {
            return Ok(None);
        };
        let t = self.tx.open_table(TOMBS)?;
        let v = t
            .get((at, *id.as_bytes()))?
            .ok_or(StoreError::Corrupt("tombstone index names no record"))?;
        let mut r = R(v.value());
        r.u8()?;
        let master = sae(r.str()?)?;
        let slave = match r.str()? {
            "" => None,
            s => Some(sae(s)?),
        };
        Ok(Some((at, master, slave)))
    }

    /// Writes (or rewrites) a tombstone: the record in time order and the log entry.
    pub(super) fn write_tomb(
        &mut self,
        id: KeyId,
        master: &SaeId,
        slave: Option<&SaeId>,
        now: UnixMillis,
    ) -> Result<(), StoreError> {
        if let Some(old) = self.tomb_time(id)? {
            self.tx.open_table(TOMBS)?.remove((old, *id.as_bytes()))?;
            self.unlog(id)?;
        }
        let mut w = W::default();
        w.u8(1)
            .str(master.as_str())
            .str(slave.map_or("", |s| s.as_str()));
        self.tx
            .open_table(TOMBS)?
            .insert((now, *id.as_bytes()), w.0.as_slice())?;
        let seq = self.index.index.tombs.next_log;
        self.index.index.tombs.next_log += 1;
        let mut entry = Vec::with_capacity(24);
        entry.extend_from_slice(id.as_bytes());
        entry.extend_from_slice(&now.to_be_bytes());
        self.tx
            .open_table(TOMB_LOG)?
            .insert(seq, entry.as_slice())?;
        self.index.set_log(id, Some((now, seq)));
        self.written += (24 + w.0.len() + 8 + entry.len()) as u64;
        Ok(())
    }

    /// Erases tombstones written before `before` (at most `limit`, oldest first).
    pub(super) fn prune_tombs(
        &mut self,
        before: UnixMillis,
        limit: usize,
    ) -> Result<usize, StoreError> {
        let old: Vec<(u64, [u8; 16])> = {
            let t = self.tx.open_table(TOMBS)?;
            let mut v = Vec::new();
            for entry in t.range(..(before, [0u8; 16]))?.take(limit) {
                v.push(entry?.0.value());
            }
            v
        };
        for (at, id) in &old {
            self.tx.open_table(TOMBS)?.remove((*at, *id))?;
            let id = KeyId::from_bytes(*id);
            if self.index.index.tombs.log.get(&id).map(|e| e.0) == Some(*at) {
                self.unlog(id)?;
            }
        }
        Ok(old.len())
    }

    /// Removes `id`'s log entry, if it has one.
    fn unlog(&mut self, id: KeyId) -> Result<(), StoreError> {
        if let Some((_, seq)) = self.index.index.tombs.log.get(&id).copied() {
            self.tx.open_table(TOMB_LOG)?.remove(seq)?;
            self.index.set_log(id, None);
        }
        Ok(())
    }
}

impl Store {
    /// After a commit: writes the log as a run once it holds [`LOG_RUN`] tombstones, merges
    /// [`MERGE_FAN`] runs of one tier, and drops runs older than every record left. Each in its
    /// own durable transaction; the in-memory index changes only once it committed. Skipped
    /// while free space is below the watermark or does not hold the run to be written.
    pub(super) fn maintain_tombstones(&mut self) -> Result<(), StoreError> {
        if self.index.tombs.log.len() >= self.log_run {
            let bytes = self.index.tombs.log.len() as u64 * RUN_ENTRY_BYTES;
            if !self.room_for(bytes) {
                return Ok(());
            }
            self.flush_log()?;
        }
        while let Some(group) = self.mergeable() {
            let bytes = group.iter().map(|r| r.entries).sum::<u64>() * RUN_ENTRY_BYTES;
            if !self.room_for(bytes) {
                break;
            }
            self.merge(&group)?;
        }
        self.drop_stale_runs()
    }

    /// Whether `bytes` more fit above the watermark (unmeasurable space holds nothing back).
    fn room_for(&self, bytes: u64) -> bool {
        self.gauge
            .available()
            .is_none_or(|a| a >= self.options.watermark_bytes.saturating_add(bytes))
    }

    /// The log, written as one run in key order.
    fn flush_log(&mut self) -> Result<(), StoreError> {
        let mut entries: Vec<([u8; 16], UnixMillis)> = self
            .index
            .tombs
            .log
            .iter()
            .map(|(id, (at, _))| (*id.as_bytes(), *at))
            .collect();
        entries.sort_unstable();
        let run = Run {
            n: self.index.tombs.next_run,
            entries: entries.len() as u64,
            newest: entries.iter().map(|e| e.1).max().unwrap_or(0),
        };
        let tx = self.begin_maintenance()?;
        {
            let name = run_name(run.n);
            let mut t = tx.open_table(run_table(&name))?;
            for (id, at) in &entries {
                t.insert(*id, *at)?;
            }
        }
        tx.delete_table(TOMB_LOG)?;
        tx.open_table(TOMB_LOG)?;
        tx.open_table(TOMB_RUNS)?
            .insert(run.n, run.encode().as_slice())?;
        tx.commit()?;
        self.written += run.entries * 24;
        let tombs = &mut self.index.tombs;
        tombs.log.clear();
        tombs.runs.push(run);
        tombs.next_run += 1;
        Ok(())
    }

    /// The oldest [`MERGE_FAN`] runs of the first tier that has that many.
    fn mergeable(&self) -> Option<Vec<Run>> {
        let runs = &self.index.tombs.runs;
        let base = self.log_run;
        let mut tiers: Vec<u32> = runs.iter().map(|r| r.tier(base)).collect();
        tiers.sort_unstable();
        tiers.dedup();
        tiers.into_iter().find_map(|tier| {
            let group: Vec<Run> = runs
                .iter()
                .filter(|r| r.tier(base) == tier)
                .take(MERGE_FAN)
                .copied()
                .collect();
            (group.len() == MERGE_FAN).then_some(group)
        })
    }

    /// Merges `group` into one new run, streaming the runs in key order (memory does not grow
    /// with their size). An ID in several runs keeps the entry its record confirms (if any).
    fn merge(&mut self, group: &[Run]) -> Result<(), StoreError> {
        let tx = self.begin_maintenance()?;
        let n = self.index.tombs.next_run;
        let mut entries = 0u64;
        let mut newest = 0;
        {
            let names: Vec<String> = group.iter().map(|r| run_name(r.n)).collect();
            let tables = names
                .iter()
                .map(|name| tx.open_table(run_table(name)))
                .collect::<Result<Vec<_>, _>>()?;
            let mut iters = tables
                .iter()
                .map(|t| t.iter())
                .collect::<Result<Vec<_>, _>>()?;
            let mut heads = Vec::with_capacity(iters.len());
            for it in &mut iters {
                heads.push(next_entry(it)?);
            }
            let out_name = run_name(n);
            let mut out = tx.open_table(run_table(&out_name))?;
            let records = tx.open_table(TOMBS)?;
            while let Some(id) = heads.iter().flatten().map(|e| e.0).min() {
                let mut times = Vec::new();
                for (head, it) in heads.iter_mut().zip(iters.iter_mut()) {
                    match *head {
                        Some((hid, at)) if hid == id => {
                            times.push(at);
                            *head = next_entry(it)?;
                        }
                        _ => {}
                    }
                }
                let keep = if times.len() == 1 {
                    Some(times[0])
                } else {
                    let mut found = None;
                    for at in times {
                        if records.get((at, id))?.is_some() {
                            found = Some(at);
                        }
                    }
                    found
                };
                if let Some(at) = keep {
                    out.insert(id, at)?;
                    entries += 1;
                    newest = newest.max(at);
                }
            }
        }
        for r in group {
            tx.delete_table(run_table(&run_name(r.n)))?;
            tx.open_table(TOMB_RUNS)?.remove(r.n)?;
        }
        let run = Run { n, entries, newest };
        tx.open_table(TOMB_RUNS)?
            .insert(n, run.encode().as_slice())?;
        tx.commit()?;
        self.written += entries * 24;
        let tombs = &mut self.index.tombs;
        tombs.runs.retain(|r| !group.contains(r));
        tombs.runs.push(run);
        tombs.next_run += 1;
        Ok(())
    }

    /// Drops the runs whose newest entry is older than every record left: all their
    /// tombstones were pruned.
    fn drop_stale_runs(&mut self) -> Result<(), StoreError> {
        use redb::ReadableDatabase;
        if self.index.tombs.runs.is_empty() {
            return Ok(());
        }
        let oldest = {
            let tx = self.db.begin_read()?;
            let t = tx.open_table(TOMBS)?;
            t.first()?.map(|(k, _)| k.value().0)
        };
        let stale: Vec<Run> = self
            .index
            .tombs
            .runs
            .iter()
            .filter(|r| oldest.is_none_or(|o| r.newest < o))
            .copied()
            .collect();
        if stale.is_empty() {
            return Ok(());
        }
        let tx = self.begin_maintenance()?;
        for r in &stale {
            tx.delete_table(run_table(&run_name(r.n)))?;
            tx.open_table(TOMB_RUNS)?.remove(r.n)?;
        }
        tx.commit()?;
        self.index.tombs.runs.retain(|r| !stale.contains(r));
        Ok(())
    }

    fn begin_maintenance(&self) -> Result<WriteTransaction, StoreError> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(redb::Durability::Immediate)?;
        Ok(tx)
    }

    /// Tombstone records held, for [`Store::counts`].
    pub(super) fn tomb_count(tx: &redb::ReadTransaction) -> Result<u64, StoreError> {
        Ok(tx.open_table(TOMBS)?.len()?)
    }
}

/// The next (key ID, time) of a run being merged.
fn next_entry(
    it: &mut redb::Range<'_, [u8; 16], u64>,
) -> Result<Option<([u8; 16], UnixMillis)>, StoreError> {
    Ok(match it.next() {
        Some(e) => {
            let (k, v) = e?;
            Some((k.value(), v.value()))
        }
        None => None,
    })
}
