//! Tombstones on disk without a random page per tombstone.
//!
//! A tombstone (key ID, SAE pair, time; no key material) is written for every key delivered, at
//! both ends, and looked up by key ID (is an ID used; a master asking for its own key). Keyed by
//! the random key ID, each one dirtied a page of its own: most of what a key pair cost the disk.
//! So the records and the ID index are kept apart:
//!
//! * `tombstones_by_time`: (time, key ID) -> master, slave. The record itself, written in time
//!   order and pruned from the head, so a commit appends to one leaf.
//! * the log: the tombstones not yet in a run, held in memory as a map (at most [`LOG_RUN`]
//!   entries, plus what waits for room on a full disk). It has no table of its own (a second
//!   table touched by every commit costs its pages every commit): the store's `meta` table keeps
//!   a time at or before which no logged tombstone was written ([`LOG_FROM`], written only when a
//!   tombstone is older than it, so about once per run), and an open reads the log back from the
//!   records at or after that time. Records already in a run may be read back too: a duplicate
//!   entry is harmless (merges keep the one the record confirms). Stores of the first version of
//!   schema 2 kept the log in `tombstone_log`; it is still read at open and dropped by the next
//!   run written.
//! * runs (`tombstone_run_<n>`): key ID -> time, each written once, whole and in key order, from
//!   the log (every [`LOG_RUN`] tombstones) or by merging [`MERGE_FAN`] runs of one size tier
//!   into the next (a log-structured merge, as in LSM trees); `tombstone_runs` lists them.
//!
//! Each run has a Bloom filter of its key IDs in memory (built when the run is written, and
//! read back from the run at open), so a lookup reads only the runs whose filter may hold the ID:
//! for a new key ID (every key made or received is checked, and every key delivered writes a
//! tombstone), one run in a hundred instead of every run. The filters cost about 1.2 bytes of
//! memory per run entry (about one per tombstone held; twice that for the runs of a merge in
//! progress, whose new run's filter fills as it goes).
//!
//! A run entry is only a hint: the tombstone exists if `tombstones_by_time` holds (time, key
//! ID). Pruning therefore touches only the record (and the log); a run whose newest entry is
//! older than every record left is dropped whole, and merges leave out entries whose record is
//! gone. Every tombstone is written about `1 + log4(tombstones / LOG_RUN)` times, sequentially.
//! Runs and log move in their own transactions after a batch, once its answers have left
//! ([`Store::maintain_tombstones`], the store's [`super::KeyStore::upkeep`]), only while free
//! space is above the watermark (see [`super::space`]).
//!
//! A merge runs in bounded steps, one after each batch the writer commits (as the rotation pass
//! does), so that merging the largest tier never holds the writer for one long transaction:
//! each step merges at most [`LOG_RUN`] key IDs (about what writing the log as a run costs)
//! into the new run, in key order from where the
//! previous step stopped. The runs being merged stay in use until the step that finishes the
//! merge swaps them for the new run in one transaction. The new run's number is kept in `meta`
//! ([`MERGE_OUT`]) while the merge runs: after a crash the half-written run is dropped and the
//! merge starts again.

use std::collections::HashMap;

use fastbloom::BloomFilter;
use qkd_types::{KeyId, SaeId, UnixMillis};
use redb::{ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};

use super::codec::{R, W};
use super::{Store, StoreError, Txn, sae};

/// Tombstones by (time, key ID): `u8(1) ‖ str master ‖ str slave` ("" for none).
pub(super) const TOMBS: TableDefinition<(u64, [u8; 16]), &[u8]> =
    TableDefinition::new("tombstones_by_time");
/// Tombstones not yet in a run, by sequence: key ID ‖ u64 time (stores written before the log
/// moved to [`LOG_FROM`]; read at open, dropped with the next run written).
const TOMB_LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("tombstone_log");
/// Key of the `meta` table: every tombstone of the log was written at or after this time.
/// Absent while the log is empty.
pub(super) const LOG_FROM: &str = "tomb_log_from";
/// Key of the `meta` table: the number of the run a merge in progress is writing.
const MERGE_OUT: &str = "tomb_merge_out";
/// The runs: run number -> u64 entries ‖ u64 newest time.
pub(super) const TOMB_RUNS: TableDefinition<u64, &[u8]> = TableDefinition::new("tombstone_runs");

/// Tombstones in the log before they are written as a run (the store's default; tests use
/// fewer to exercise runs and merges).
pub(super) const LOG_RUN: usize = 4096;
/// Runs of one size tier merged into one of the next.
const MERGE_FAN: usize = 4;
/// Upper bound on the bytes one run entry costs the disk when written (key, value, page slack).
const RUN_ENTRY_BYTES: u64 = 64;
/// False positives of a run's Bloom filter: a lookup of an ID the run does not hold reads the
/// run once in a hundred (about 9.6 bits of filter per entry).
const FILTER_FALSE_POS: f64 = 0.01;

/// An empty Bloom filter for a run of up to `entries` key IDs. Its hash is keyed at random (per
/// filter), so a peer that chooses key IDs cannot aim them at one run's false positives.
fn run_filter(entries: u64) -> BloomFilter {
    BloomFilter::with_false_pos(FILTER_FALSE_POS)
        .expected_items(usize::try_from(entries).unwrap_or(usize::MAX).max(1))
}

/// The tombstone ID index in memory: the log and the list of runs.
#[derive(Debug, Default)]
pub(super) struct TombIndex {
    /// Key ID -> time of the tombstones of the log.
    pub log: HashMap<KeyId, UnixMillis>,
    /// Every tombstone of the log was written at or after this time (as [`LOG_FROM`] says on
    /// disk); `None` while the log is empty on disk.
    pub log_from: Option<UnixMillis>,
    /// The runs, oldest first.
    runs: Vec<Run>,
    /// The next run number.
    next_run: u64,
    /// The Bloom filter of each run's key IDs, by run number.
    filters: HashMap<u64, BloomFilter>,
    /// The merge in progress, if any.
    merging: Option<Merge>,
    /// The Bloom filter of the run the merge in progress writes, filled as its steps commit.
    merge_filter: Option<BloomFilter>,
    /// A run a merge interrupted by a crash left half written: dropped before anything else.
    leftover: Option<u64>,
}

/// A merge in progress: `group` into run `out`, done up to key ID `after`.
#[derive(Debug, Clone)]
struct Merge {
    group: Vec<Run>,
    out: u64,
    after: Option<[u8; 16]>,
    entries: u64,
    newest: UnixMillis,
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
        match tx.open_table(TOMB_LOG) {
            Ok(t) => {
                for entry in t.iter()? {
                    let (_, v) = entry?;
                    let (id, mut rest) = (super::split_id(v.value())?.0, R(&v.value()[16..]));
                    out.log.insert(id, rest.u64()?);
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let meta = tx.open_table(super::META)?;
        out.log_from = meta.get(LOG_FROM)?.map(|v| v.value());
        out.leftover = meta.get(MERGE_OUT)?.map(|v| v.value());
        if let Some(n) = out.leftover {
            out.next_run = out.next_run.max(n + 1);
        }
        for run in &out.runs {
            let mut filter = run_filter(run.entries);
            for entry in tx.open_table(run_table(&run_name(run.n)))?.iter()? {
                filter.insert(&entry?.0.value());
            }
            out.filters.insert(run.n, filter);
        }
        if let Some(from) = out.log_from {
            for entry in tx.open_table(TOMBS)?.range((from, [0u8; 16])..)? {
                let (at, id) = entry?.0.value();
                out.log.insert(KeyId::from_bytes(id), at);
            }
        }
        Ok(out)
    }
}

impl Txn<'_> {
    /// The time of `id`'s tombstone, if it has one: the log, else the first run whose entry
    /// the records confirm.
    pub(super) fn tomb_time(&self, id: KeyId) -> Result<Option<UnixMillis>, StoreError> {
        if let Some(at) = self.index.index.tombs.log.get(&id) {
            return Ok(Some(*at));
        }
        let tombs = &self.index.index.tombs;
        let id_bytes = id.as_bytes();
        let mut runs = tombs
            .runs
            .iter()
            .rev()
            .filter(|run| {
                tombs
                    .filters
                    .get(&run.n)
                    .is_none_or(|f| f.contains(id_bytes))
            })
            .peekable();
        if runs.peek().is_none() {
            return Ok(None);
        }
        let records = self.tx.open_table(TOMBS)?;
        for run in runs {
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

    /// Writes (or rewrites) a tombstone: the record in time order, and the log entry (in
    /// memory; [`LOG_FROM`] moves back if the tombstone is older than it says).
    pub(super) fn write_tomb(
        &mut self,
        id: KeyId,
        master: &SaeId,
        slave: Option<&SaeId>,
        now: UnixMillis,
    ) -> Result<(), StoreError> {
        if let Some(old) = self.tomb_time(id)? {
            self.tx.open_table(TOMBS)?.remove((old, *id.as_bytes()))?;
            self.unlog(id);
        }
        let mut w = W::default();
        w.u8(1)
            .str(master.as_str())
            .str(slave.map_or("", |s| s.as_str()));
        self.tx
            .open_table(TOMBS)?
            .insert((now, *id.as_bytes()), w.0.as_slice())?;
        if self
            .index
            .index
            .tombs
            .log_from
            .is_none_or(|from| now < from)
        {
            self.tx.open_table(super::META)?.insert(LOG_FROM, now)?;
            self.index.set_log_from(Some(now));
            self.written += (LOG_FROM.len() + 8) as u64;
        }
        self.index.set_log(id, Some(now));
        self.written += (24 + w.0.len()) as u64;
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
            if self.index.index.tombs.log.get(&id) == Some(at) {
                self.unlog(id);
            }
        }
        Ok(old.len())
    }

    /// Removes `id`'s log entry, if it has one (in memory: its record is what is on disk).
    fn unlog(&mut self, id: KeyId) {
        if self.index.index.tombs.log.contains_key(&id) {
            self.index.set_log(id, None);
        }
    }
}

impl Store {
    /// After a commit: writes the log as a run once it holds [`LOG_RUN`] tombstones, merges
    /// [`MERGE_FAN`] runs of one tier, and drops runs older than every record left. Each in its
    /// own durable transaction; the in-memory index changes only once it committed. Skipped
    /// while free space is below the watermark or does not hold the run to be written.
    ///
    /// A merge advances by one bounded step per call ([`Store::advance_merge`]).
    pub(super) fn maintain_tombstones(&mut self) -> Result<(), StoreError> {
        if let Some(n) = self.index.tombs.leftover {
            self.drop_leftover(n)?;
        }
        if self.index.tombs.log.len() >= self.log_run {
            let bytes = self.index.tombs.log.len() as u64 * RUN_ENTRY_BYTES;
            if !self.room_for(bytes) {
                return Ok(());
            }
            self.flush_log()?;
        }
        if self.index.tombs.merging.is_none()
            && let Some(group) = self.mergeable()
        {
            // Room for the whole new run, so that a merge started can finish.
            let bytes = group.iter().map(|r| r.entries).sum::<u64>() * RUN_ENTRY_BYTES;
            if self.room_for(bytes) {
                self.start_merge(group)?;
            }
        }
        if self.index.tombs.merging.is_some()
            && self.room_for(self.merge_step as u64 * RUN_ENTRY_BYTES)
        {
            self.advance_merge()?;
        }
        self.drop_stale_runs()
    }

    /// Drops the half-written run of a merge a crash interrupted.
    fn drop_leftover(&mut self, n: u64) -> Result<(), StoreError> {
        let tx = self.begin_maintenance()?;
        tx.delete_table(run_table(&run_name(n)))?;
        tx.open_table(super::META)?.remove(MERGE_OUT)?;
        tx.commit()?;
        self.wal.checkpointed(None);
        self.index.tombs.leftover = None;
        Ok(())
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
            .map(|(id, at)| (*id.as_bytes(), *at))
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
        // The log is empty from here on (and a first-version store's log table goes).
        tx.open_table(super::META)?.remove(LOG_FROM)?;
        tx.delete_table(TOMB_LOG)?;
        tx.open_table(TOMB_RUNS)?
            .insert(run.n, run.encode().as_slice())?;
        tx.commit()?;
        self.wal.checkpointed(None);
        self.written += run.entries * 24;
        let tombs = &mut self.index.tombs;
        tombs.log.clear();
        tombs.log_from = None;
        let mut filter = run_filter(run.entries);
        for (id, _) in &entries {
            filter.insert(id);
        }
        tombs.filters.insert(run.n, filter);
        tombs.runs.push(run);
        tombs.next_run += 1;
        Ok(())
    }

    /// The oldest [`MERGE_FAN`] runs of the first tier that has that many (none while a merge
    /// runs).
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

    /// Starts merging `group` into a new run: records the run's number, so that a crash before
    /// the merge ends leaves nothing behind but a run to drop.
    fn start_merge(&mut self, group: Vec<Run>) -> Result<(), StoreError> {
        let out = self.index.tombs.next_run;
        let tx = self.begin_maintenance()?;
        tx.open_table(super::META)?.insert(MERGE_OUT, out)?;
        tx.commit()?;
        self.wal.checkpointed(None);
        let tombs = &mut self.index.tombs;
        tombs.next_run += 1;
        tombs.merge_filter = Some(run_filter(group.iter().map(|r| r.entries).sum()));
        tombs.merging = Some(Merge {
            group,
            out,
            after: None,
            entries: 0,
            newest: 0,
        });
        Ok(())
    }

    /// One step of the merge in progress: up to `merge_step` key IDs of its runs, in key order
    /// after where the last step stopped, into the new run (streamed: memory does not grow with
    /// the runs). An ID in several runs keeps the entry its record confirms (if any). The step
    /// that reaches the end swaps the runs for the new one in the same transaction.
    fn advance_merge(&mut self) -> Result<(), StoreError> {
        let Some(mut merge) = self.index.tombs.merging.clone() else {
            return Ok(());
        };
        let tx = self.begin_maintenance()?;
        let mut written = 0u64;
        let mut merged = Vec::new();
        let done = {
            let names: Vec<String> = merge.group.iter().map(|r| run_name(r.n)).collect();
            let tables = names
                .iter()
                .map(|name| tx.open_table(run_table(name)))
                .collect::<Result<Vec<_>, _>>()?;
            let from = match merge.after {
                Some(a) => std::ops::Bound::Excluded(a),
                None => std::ops::Bound::Unbounded,
            };
            let mut iters = tables
                .iter()
                .map(|t| t.range::<[u8; 16]>((from, std::ops::Bound::Unbounded)))
                .collect::<Result<Vec<_>, _>>()?;
            let mut heads = Vec::with_capacity(iters.len());
            for it in &mut iters {
                heads.push(next_entry(it)?);
            }
            let out_name = run_name(merge.out);
            let mut out = tx.open_table(run_table(&out_name))?;
            let records = tx.open_table(TOMBS)?;
            let mut ids = 0;
            loop {
                let Some(id) = heads.iter().flatten().map(|e| e.0).min() else {
                    break true;
                };
                if ids == self.merge_step {
                    break false;
                }
                ids += 1;
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
                    merged.push(id);
                    written += 1;
                    merge.newest = merge.newest.max(at);
                }
                merge.after = Some(id);
            }
        };
        merge.entries += written;
        let run = Run {
            n: merge.out,
            entries: merge.entries,
            newest: merge.newest,
        };
        if done {
            for r in &merge.group {
                tx.delete_table(run_table(&run_name(r.n)))?;
                tx.open_table(TOMB_RUNS)?.remove(r.n)?;
            }
            tx.open_table(TOMB_RUNS)?
                .insert(run.n, run.encode().as_slice())?;
            tx.open_table(super::META)?.remove(MERGE_OUT)?;
        }
        tx.commit()?;
        self.wal.checkpointed(None);
        self.written += written * 24;
        #[cfg(test)]
        {
            self.largest_merge_step = self.largest_merge_step.max(written);
        }
        let tombs = &mut self.index.tombs;
        // (Started with the merge; a run left without a filter is simply always read.)
        if let Some(filter) = tombs.merge_filter.as_mut() {
            for id in &merged {
                filter.insert(id);
            }
        }
        if done {
            for r in &merge.group {
                tombs.filters.remove(&r.n);
            }
            if let Some(filter) = tombs.merge_filter.take() {
                tombs.filters.insert(run.n, filter);
            }
            tombs.runs.retain(|r| !merge.group.contains(r));
            tombs.runs.push(run);
            tombs.merging = None;
        } else {
            tombs.merging = Some(merge);
        }
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
        // The runs a merge reads stay until it ends (it drops them then).
        let merging: &[Run] = self
            .index
            .tombs
            .merging
            .as_ref()
            .map_or(&[], |m| m.group.as_slice());
        let stale: Vec<Run> = self
            .index
            .tombs
            .runs
            .iter()
            .filter(|r| oldest.is_none_or(|o| r.newest < o) && !merging.contains(r))
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
        self.wal.checkpointed(None);
        let tombs = &mut self.index.tombs;
        for r in &stale {
            tombs.filters.remove(&r.n);
        }
        tombs.runs.retain(|r| !stale.contains(r));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ops::RecordIssued;
    use crate::store::vault::FileKek;
    use crate::store::{KeyStore, Tables};

    /// The store at `dir`, writing the log as a run every `run` tombstones (and merging `2 *
    /// run` key IDs per step): runs and merges of several tiers in a test.
    fn open(dir: &std::path::Path, run: usize) -> Store {
        let kek = FileKek::open(&dir.join("keys"), 1_000, 86_400_000).unwrap();
        let (mut store, _) = Store::open(&dir.join("store.redb"), &kek).unwrap();
        store.set_tombstone_run(run);
        store
    }

    fn sae(s: &str) -> SaeId {
        SaeId::parse(s).unwrap()
    }

    fn issue(store: &mut Store, ids: &[KeyId], now: UnixMillis) {
        let keys = ids.iter().map(|id| (*id, sae("M"), sae("S"))).collect();
        store
            .apply(vec![
                RecordIssued {
                    keys,
                    now,
                    notify: vec![],
                }
                .into(),
            ])
            .unwrap();
        // As the writer does once the batch's answers have left.
        store.upkeep();
    }

    /// The log has no table: after a reopen it is found again from the records written at or
    /// after `tomb_log_from`, including tombstones written before a clock step back. A store
    /// of schema 2 (log in `tombstone_log`) is upgraded: its log is read, and its log table
    /// goes with the next run written.
    #[test]
    fn the_log_is_found_again_at_open_and_a_schema_2_log_is_read() {
        use redb::ReadableDatabase;
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("keys")).unwrap();
        let mut store = open(dir.path(), 7);
        let a: Vec<KeyId> = (0..3).map(|_| KeyId::random()).collect();
        issue(&mut store, &a, 5_000);
        // The clock stepped back: these are older than the log's start so far.
        let b: Vec<KeyId> = (0..2).map(|_| KeyId::random()).collect();
        issue(&mut store, &b, 4_000);
        assert_eq!(store.index.tombs.log.len(), 5);
        drop(store);
        // A first-version schema 2 store: one more tombstone logged only in its log table.
        let legacy = KeyId::random();
        let path = dir.path().join("store.redb");
        {
            let db = redb::Database::create(&path).unwrap();
            let tx = db.begin_write().unwrap();
            tx.open_table(super::super::META)
                .unwrap()
                .insert("schema", 2)
                .unwrap();
            let mut w = W::default();
            w.u8(1).str("M").str("S");
            tx.open_table(TOMBS)
                .unwrap()
                .insert((100, *legacy.as_bytes()), w.0.as_slice())
                .unwrap();
            let mut entry = legacy.as_bytes().to_vec();
            entry.extend_from_slice(&100u64.to_be_bytes());
            tx.open_table(TOMB_LOG)
                .unwrap()
                .insert(0, entry.as_slice())
                .unwrap();
            tx.commit().unwrap();
        }
        let mut store = open(dir.path(), 7);
        assert_eq!(store.index.tombs.log.len(), 6, "the log read back");
        {
            let tx = store.begin().unwrap();
            for id in a.iter().chain(&b).chain([&legacy]) {
                assert!(tx.key_id_used(*id).unwrap());
            }
            assert_eq!(tx.tombstone(b[0]).unwrap().unwrap().0, 4_000);
            assert_eq!(tx.tombstone(legacy).unwrap().unwrap().0, 100);
        }
        {
            let tx = store.db.begin_read().unwrap();
            let meta = tx.open_table(super::super::META).unwrap();
            assert_eq!(
                meta.get("schema").unwrap().unwrap().value(),
                super::super::SCHEMA_VERSION
            );
        }
        // The next run takes the whole log, and the log table goes.
        issue(&mut store, &[KeyId::random()], 6_000);
        assert!(store.index.tombs.log.is_empty());
        assert!(store.index.tombs.log_from.is_none());
        let tx = store.db.begin_read().unwrap();
        assert!(matches!(
            tx.open_table(TOMB_LOG),
            Err(redb::TableError::TableDoesNotExist(_))
        ));
        drop(tx);
        drop(store);
        let mut store = open(dir.path(), 7);
        assert!(store.index.tombs.log.is_empty());
        let tx = store.begin().unwrap();
        for id in a.iter().chain(&b).chain([&legacy]) {
            assert!(tx.key_id_used(*id).unwrap());
        }
    }

    /// Every run has a Bloom filter that holds each of its key IDs, whether the run was written
    /// from the log, by a merge, or read back at open; and the filters keep lookups of unused
    /// IDs out of nearly every run.
    #[test]
    fn every_run_has_a_filter_holding_its_ids_and_unused_ids_skip_the_runs() {
        use redb::ReadableDatabase;
        fn check(store: &Store) {
            let tombs = &store.index.tombs;
            assert!(tombs.runs.len() >= 3, "{} runs", tombs.runs.len());
            assert_eq!(tombs.filters.len(), tombs.runs.len(), "one filter per run");
            let tx = store.db.begin_read().unwrap();
            for run in &tombs.runs {
                let filter = &tombs.filters[&run.n];
                let t = tx.open_table(run_table(&run_name(run.n))).unwrap();
                for entry in t.iter().unwrap() {
                    assert!(filter.contains(&entry.unwrap().0.value()), "run {}", run.n);
                }
            }
            // An unused ID passes a run's filter about once in a hundred.
            let probes = 10_000;
            let passed: usize = (0..probes)
                .map(|_| KeyId::random())
                .map(|id| {
                    tombs
                        .runs
                        .iter()
                        .filter(|r| tombs.filters[&r.n].contains(id.as_bytes()))
                        .count()
                })
                .sum();
            let rate = passed as f64 / (probes * tombs.runs.len()) as f64;
            assert!(rate < 0.03, "false positive rate {rate}");
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("keys")).unwrap();
        let mut store = open(dir.path(), 64);
        let mut ids = Vec::new();
        for i in 0..200u64 {
            let chunk: Vec<KeyId> = (0..8).map(|_| KeyId::random()).collect();
            issue(&mut store, &chunk, 1_000 + i);
            ids.extend(chunk);
        }
        assert!(
            store.index.tombs.runs.iter().any(|r| r.tier(64) >= 1),
            "a merge wrote a run"
        );
        check(&store);
        drop(store);
        let mut store = open(dir.path(), 64);
        check(&store);
        let tx = store.begin().unwrap();
        for id in &ids {
            assert!(tx.key_id_used(*id).unwrap());
        }
    }

    /// Merging the largest tier never holds the writer for one long transaction: every merge
    /// transaction writes at most one step of run entries, every tombstone is found after every
    /// batch while merges run, and a crash in the middle of a merge loses nothing (the
    /// half-written run is dropped at the next open, and the merge starts again).
    #[test]
    fn merges_run_in_bounded_steps_between_batches_and_survive_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("keys")).unwrap();
        let mut store = open(dir.path(), 4);
        let mut ids: Vec<KeyId> = Vec::new();
        let mut merging_batches = 0;
        let mut crashed = false;
        for i in 0..300u64 {
            let chunk: Vec<KeyId> = (0..2).map(|_| KeyId::random()).collect();
            let keys = chunk.iter().map(|id| (*id, sae("M"), sae("S"))).collect();
            store
                .apply(vec![
                    RecordIssued {
                        keys,
                        now: 1_000 + i,
                        notify: vec![],
                    }
                    .into(),
                ])
                .unwrap();
            store.upkeep();
            ids.extend(chunk);
            let merging = store.index.tombs.merging.clone();
            if merging.is_some() {
                merging_batches += 1;
            }
            let tx = store.begin().unwrap();
            for id in &ids {
                assert!(tx.key_id_used(*id).unwrap(), "batch {i}: tombstone lost");
            }
            drop(tx);
            // Crash (drop without any shutdown) half way through a merge of a tier above 0.
            if !crashed && merging.is_some_and(|m| m.after.is_some() && m.group[0].tier(4) >= 1) {
                let out = store.index.tombs.merging.as_ref().unwrap().out;
                drop(store);
                store = open(dir.path(), 4);
                assert_eq!(store.index.tombs.leftover, Some(out));
                assert!(store.index.tombs.merging.is_none());
                let tx = store.begin().unwrap();
                for id in &ids {
                    assert!(tx.key_id_used(*id).unwrap(), "tombstone lost in the crash");
                }
                crashed = true;
            }
        }
        assert!(crashed, "no merge above tier 0 was interrupted");
        assert!(
            store.index.tombs.leftover.is_none(),
            "half-written run dropped"
        );
        // Merges took several batches each, and no step wrote more than 8 run entries, though
        // runs of 64 entries and more were written by merges.
        assert!(
            merging_batches > 20,
            "{merging_batches} batches saw a merge"
        );
        assert!(
            store.largest_merge_step <= 8,
            "{} entries in one step",
            store.largest_merge_step
        );
        assert!(
            store.index.tombs.runs.iter().any(|r| r.tier(4) >= 2),
            "{:?}",
            store.index.tombs.runs
        );
        // And after a clean reopen, every tombstone is still found.
        drop(store);
        let mut store = open(dir.path(), 4);
        let tx = store.begin().unwrap();
        for id in &ids {
            assert!(tx.key_id_used(*id).unwrap());
        }
        assert!(!tx.key_id_used(KeyId::random()).unwrap());
    }
}
