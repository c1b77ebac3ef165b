//! The in-memory key-ID index of the waiting and pool keys: where each one's record is (its
//! sequence in `keys_by_seq` or `pool_by_seq`), rebuilt from the records at open and changed with
//! them in each transaction (put back if the transaction is dropped uncommitted).
//!
//! It is the only memory the store spends per stored key, so it is kept small (issue 8: a node
//! holding the pools of several SAE pairs holds hundreds of thousands of keys):
//!
//! * An entry is keyed by the first 8 bytes of the key ID ([`Short`]), not the 16: key IDs are
//!   random, and every record carries its full key ID, which the reader checks
//!   ([`super::Txn`]'s `record`). The index therefore answers *candidates*, and never confuses
//!   two keys: keys whose IDs share their first 8 bytes (a collision: about one in 10^7 for a
//!   store of 400,000 random IDs, or a peer choosing such IDs) all stay listed under that short
//!   ID, and the reader takes the one whose record names the ID asked for.
//! * The sequence is kept as a 32-bit distance from a base (the oldest sequence held when the
//!   base was set), not as 64 bits. A sequence too far from the base (over 4 billion keys
//!   later, while an old key is still held) is kept whole in the overflow map, as are the
//!   sequences of colliding keys; the base moves up when the oldest keys are gone
//!   ([`Slots::insert`]).
//!
//! So an entry costs 12 bytes (and a control byte, or a share of a B-tree node) instead of 24.
//! The waiting keys' map is ordered (a B-tree), for [`super::Tables::keys_after`]: the first 8
//! bytes of an ID order IDs as the whole ID does, within a short ID the reader sorts.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;

use qkd_types::{KeyId, UnixMillis};

use super::tombs;

/// The first 8 bytes of a key ID: what the index is keyed by.
pub(super) type Short = [u8; 8];

/// The short ID of `id`.
pub(super) fn short(id: KeyId) -> Short {
    let b = id.as_bytes();
    [b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]
}

/// Marks a short ID whose sequences are all in the overflow map.
const WIDE: u32 = u32::MAX;
/// The largest distance from the base kept in 32 bits.
const SPAN: u64 = WIDE as u64 - 1;

/// Where each waiting and pool key is, by key ID, and the tombstone log.
#[derive(Debug, Default)]
pub(super) struct Index {
    /// Waiting keys; ordered, for [`super::Tables::keys_after`].
    pub keys: Slots<BTreeMap<Short, u32>>,
    /// Pool keys.
    pub pool: Slots<HashMap<Short, u32>>,
    /// The next sequence of a waiting key.
    pub next_key: u64,
    /// The next sequence of a pool key.
    pub next_pool: u64,
    /// Tombstones: the log and the runs (see [`tombs`]).
    pub tombs: tombs::TombIndex,
}

/// Which index an entry belongs to.
#[derive(Debug, Clone, Copy)]
pub(super) enum Which {
    Keys,
    Pool,
}

/// The index changes of one transaction, undone if it is dropped without a commit.
#[derive(Debug)]
pub(super) struct IndexTxn<'s> {
    pub index: &'s mut Index,
    /// Changes to put back, oldest first.
    undo: Vec<Undo>,
}

/// A change to put back.
#[derive(Debug)]
enum Undo {
    /// A waiting or pool key was added at a sequence.
    Added(Which, KeyId, u64),
    /// A waiting or pool key was removed from a sequence.
    Removed(Which, KeyId, u64),
    /// Of the tombstone log: the time an entry had.
    Log(KeyId, Option<UnixMillis>),
    /// The time the tombstone log starts at.
    LogFrom(Option<UnixMillis>),
}

impl<'s> IndexTxn<'s> {
    /// Starts recording changes to `index`.
    pub fn new(index: &'s mut Index) -> Self {
        Self {
            index,
            undo: Vec::new(),
        }
    }
}

impl IndexTxn<'_> {
    /// The sequences that may hold `id` (those of every key sharing its short ID): the caller
    /// reads each record and keeps the one naming `id`.
    pub fn candidates(&self, which: Which, id: KeyId) -> Candidates<'_> {
        match which {
            Which::Keys => self.index.keys.candidates(short(id)),
            Which::Pool => self.index.pool.candidates(short(id)),
        }
    }

    /// Adds `id`, which is not in the index, at a fresh sequence: that sequence.
    pub fn add(&mut self, which: Which, id: KeyId) -> u64 {
        let next = match which {
            Which::Keys => &mut self.index.next_key,
            Which::Pool => &mut self.index.next_pool,
        };
        let seq = *next;
        *next += 1;
        self.index.insert(which, id, seq);
        self.undo.push(Undo::Added(which, id, seq));
        seq
    }

    /// Removes `id`, found at `seq`.
    pub fn remove(&mut self, which: Which, id: KeyId, seq: u64) {
        if self.index.remove(which, id, seq) {
            self.undo.push(Undo::Removed(which, id, seq));
        }
    }

    /// Sets (or with `None` removes) the time of `id` in the tombstone log.
    pub fn set_log(&mut self, id: KeyId, to: Option<UnixMillis>) {
        let log = &mut self.index.tombs.log;
        let before = match to {
            Some(e) => log.insert(id, e),
            None => log.remove(&id),
        };
        self.undo.push(Undo::Log(id, before));
    }

    /// Sets the time the tombstone log starts at.
    pub fn set_log_from(&mut self, to: Option<UnixMillis>) {
        let before = std::mem::replace(&mut self.index.tombs.log_from, to);
        self.undo.push(Undo::LogFrom(before));
    }

    /// Keeps the changes (the transaction committed).
    pub fn commit(mut self) {
        self.undo.clear();
    }
}

impl Drop for IndexTxn<'_> {
    fn drop(&mut self) {
        // Sequences handed out stay used: a gap in the sequence is harmless.
        while let Some(undo) = self.undo.pop() {
            match undo {
                Undo::Added(which, id, seq) => {
                    self.index.remove(which, id, seq);
                }
                Undo::Removed(which, id, seq) => self.index.insert(which, id, seq),
                Undo::Log(id, Some(e)) => {
                    self.index.tombs.log.insert(id, e);
                }
                Undo::Log(id, None) => {
                    self.index.tombs.log.remove(&id);
                }
                Undo::LogFrom(from) => self.index.tombs.log_from = from,
            }
        }
    }
}

impl Index {
    /// Adds `id` at `seq` (at open, and through [`IndexTxn`]).
    pub fn insert(&mut self, which: Which, id: KeyId, seq: u64) {
        match which {
            Which::Keys => self.keys.insert(short(id), seq),
            Which::Pool => self.pool.insert(short(id), seq),
        }
    }

    /// Removes `id` at `seq`: whether it was there.
    pub fn remove(&mut self, which: Which, id: KeyId, seq: u64) -> bool {
        match which {
            Which::Keys => self.keys.remove(short(id), seq),
            Which::Pool => self.pool.remove(short(id), seq),
        }
    }
}

/// The sequences listed under one short ID.
#[derive(Debug, Clone)]
pub(super) enum Candidates<'a> {
    /// At most one.
    One(Option<u64>),
    /// Several (a collision), or one too far from the base.
    Many(std::slice::Iter<'a, u64>),
}

impl Iterator for Candidates<'_> {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        match self {
            Candidates::One(s) => s.take(),
            Candidates::Many(i) => i.next().copied(),
        }
    }
}

/// A map from short ID to 32-bit value: a hash map or, where order matters, a B-tree.
pub(super) trait ShortMap: Default {
    fn get(&self, k: &Short) -> Option<u32>;
    fn insert(&mut self, k: Short, v: u32);
    fn remove(&mut self, k: &Short);
    fn values_mut(&mut self) -> impl Iterator<Item = &mut u32>;
}

impl ShortMap for HashMap<Short, u32> {
    fn get(&self, k: &Short) -> Option<u32> {
        HashMap::get(self, k).copied()
    }
    fn insert(&mut self, k: Short, v: u32) {
        HashMap::insert(self, k, v);
    }
    fn remove(&mut self, k: &Short) {
        HashMap::remove(self, k);
    }
    fn values_mut(&mut self) -> impl Iterator<Item = &mut u32> {
        HashMap::values_mut(self)
    }
}

impl ShortMap for BTreeMap<Short, u32> {
    fn get(&self, k: &Short) -> Option<u32> {
        BTreeMap::get(self, k).copied()
    }
    fn insert(&mut self, k: Short, v: u32) {
        BTreeMap::insert(self, k, v);
    }
    fn remove(&mut self, k: &Short) {
        BTreeMap::remove(self, k);
    }
    fn values_mut(&mut self) -> impl Iterator<Item = &mut u32> {
        BTreeMap::values_mut(self)
    }
}

/// Short ID -> sequences of the keys under it.
///
/// Invariant: a short ID is in `wide` exactly when its entry in `narrow` is [`WIDE`], and then
/// all its sequences are in `wide` (at least one); otherwise its one sequence is `base` plus its
/// entry in `narrow`.
#[derive(Debug)]
pub(super) struct Slots<M> {
    narrow: M,
    wide: HashMap<Short, Vec<u64>>,
    /// The sequence a 32-bit entry counts from.
    base: u64,
    /// The largest distance from `base` kept in 32 bits ([`SPAN`]; smaller in tests).
    span: u64,
    /// The base is moved up only by an insert at or beyond this sequence: a key held for very
    /// long keeps the base down, and each try costs a pass over the map.
    rebase_from: u64,
    /// Sequences held.
    len: usize,
}

impl<M: ShortMap> Default for Slots<M> {
    fn default() -> Self {
        Self::with_span(SPAN)
    }
}

impl<M: ShortMap> Slots<M> {
    fn with_span(span: u64) -> Self {
        Self {
            narrow: M::default(),
            wide: HashMap::new(),
            base: 0,
            span,
            rebase_from: 0,
            len: 0,
        }
    }

    /// Keys held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }

    /// The sequences under `s`.
    pub fn candidates(&self, s: Short) -> Candidates<'_> {
        match self.narrow.get(&s) {
            None => Candidates::One(None),
            Some(WIDE) => Candidates::Many(self.wide.get(&s).map_or([].iter(), |v| v.iter())),
            Some(d) => Candidates::One(Some(self.base + u64::from(d))),
        }
    }

    /// Lists `seq` under `s`.
    pub fn insert(&mut self, s: Short, seq: u64) {
        self.len += 1;
        if self.len == 1 {
            // Empty: count from here.
            self.base = seq;
        } else if seq > self.base.saturating_add(self.span) && seq >= self.rebase_from {
            self.rebase(seq);
        }
        match self.narrow.get(&s) {
            None if self.fits(seq) => self.narrow.insert(s, self.narrow_of(seq)),
            None => {
                self.narrow.insert(s, WIDE);
                self.wide.insert(s, vec![seq]);
            }
            Some(WIDE) => self.wide.entry(s).or_default().push(seq),
            Some(d) => {
                self.narrow.insert(s, WIDE);
                self.wide.insert(s, vec![self.base + u64::from(d), seq]);
            }
        }
    }

    /// Takes `seq` from under `s`: whether it was there.
    pub fn remove(&mut self, s: Short, seq: u64) -> bool {
        let removed = match self.narrow.get(&s) {
            None => false,
            Some(WIDE) => {
                let Some(seqs) = self.wide.get_mut(&s) else {
                    return false;
                };
                let Some(i) = seqs.iter().position(|&q| q == seq) else {
                    return false;
                };
                seqs.swap_remove(i);
                let (left, first) = (seqs.len(), seqs.first().copied());
                match (left, first) {
                    (0, _) => {
                        self.wide.remove(&s);
                        self.narrow.remove(&s);
                    }
                    (1, Some(one)) if self.fits(one) => {
                        self.wide.remove(&s);
                        self.narrow.insert(s, self.narrow_of(one));
                    }
                    _ => {}
                }
                true
            }
            Some(d) if self.base + u64::from(d) == seq => {
                self.narrow.remove(&s);
                true
            }
            Some(_) => false,
        };
        if removed {
            self.len -= 1;
        }
        removed
    }

    fn fits(&self, seq: u64) -> bool {
        seq >= self.base && seq - self.base <= self.span
    }

    /// The 32-bit entry of `seq`, which [fits](Self::fits).
    fn narrow_of(&self, seq: u64) -> u32 {
        // `fits` bounds the distance by `span` < `WIDE`.
        u32::try_from(seq - self.base).unwrap_or(WIDE)
    }

    /// Moves the base up to the oldest sequence held in 32 bits (to `seq` if there is none),
    /// so that `seq`, beyond `base + span`, may fit; what is in the overflow map stays there.
    fn rebase(&mut self, seq: u64) {
        let oldest = self
            .narrow
            .values_mut()
            .filter(|d| **d != WIDE)
            .map(|d| *d)
            .min();
        match oldest {
            Some(shift) => {
                for d in self.narrow.values_mut().filter(|d| **d != WIDE) {
                    *d -= shift;
                }
                self.base += u64::from(shift);
            }
            None => self.base = seq,
        }
        self.rebase_from = seq.saturating_add(self.span / 2 + 1);
    }
}

impl Slots<BTreeMap<Short, u32>> {
    /// Short IDs at or after `from`'s, in order, each with its sequences.
    pub fn from(&self, from: Option<KeyId>) -> impl Iterator<Item = (Short, Candidates<'_>)> {
        let start = from.map_or(Bound::Unbounded, |id| Bound::Included(short(id)));
        self.narrow
            .range((start, Bound::Unbounded))
            .map(|(s, _)| (*s, self.candidates(*s)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(prefix: u64, rest: u64) -> KeyId {
        let mut b = [0; 16];
        b[..8].copy_from_slice(&prefix.to_be_bytes());
        b[8..].copy_from_slice(&rest.to_be_bytes());
        KeyId::from_bytes(b)
    }

    fn seqs<M: ShortMap>(s: &Slots<M>, id: KeyId) -> Vec<u64> {
        let mut v: Vec<u64> = s.candidates(short(id)).collect();
        v.sort();
        v
    }

    #[test]
    fn colliding_ids_are_all_listed_and_removed_one_by_one() {
        let mut s = Slots::<HashMap<Short, u32>>::default();
        let (a, b, c, other) = (id(7, 1), id(7, 2), id(7, 3), id(8, 1));
        s.insert(short(a), 10);
        s.insert(short(other), 11);
        s.insert(short(b), 12);
        s.insert(short(c), 13);
        assert_eq!(
            seqs(&s, a),
            vec![10, 12, 13],
            "every key under the short ID"
        );
        assert_eq!(seqs(&s, other), vec![11]);
        assert_eq!(s.len(), 4);
        assert!(!s.remove(short(a), 11), "11 is another short ID's");
        assert!(s.remove(short(b), 12));
        assert!(!s.remove(short(b), 12), "removed once");
        assert_eq!(seqs(&s, a), vec![10, 13]);
        assert!(s.remove(short(a), 10));
        assert_eq!(seqs(&s, a), vec![13], "back to one entry");
        assert!(s.wide.is_empty(), "which is kept in 32 bits again");
        assert!(s.remove(short(c), 13));
        assert_eq!(seqs(&s, a), Vec::<u64>::new());
        assert!(s.narrow.len() == 1 && s.len() == 1);
    }

    #[test]
    fn sequences_far_from_the_base_are_kept_whole_and_the_base_moves_up() {
        let mut s = Slots::<BTreeMap<Short, u32>>::with_span(100);
        s.insert(short(id(1, 0)), 5);
        s.insert(short(id(2, 0)), 50);
        // 5 is still held: 500 does not fit in [5, 105], so it is kept whole.
        s.insert(short(id(3, 0)), 500);
        assert_eq!(seqs(&s, id(3, 0)), vec![500]);
        assert_eq!(s.wide.len(), 1);
        assert!(s.remove(short(id(1, 0)), 5));
        // The next rebase may only come half a span after the last try (500 + 51).
        s.insert(short(id(4, 0)), 520);
        assert_eq!(s.base, 5, "no pass over the map on every insert");
        s.insert(short(id(5, 0)), 560);
        assert_eq!(s.base, 50, "the base moved up to the oldest sequence held");
        for (k, q) in [(2, 50), (3, 500), (4, 520), (5, 560)] {
            assert_eq!(seqs(&s, id(k, 0)), vec![q], "{k}");
        }
        assert!(s.remove(short(id(2, 0)), 50));
        assert!(s.remove(short(id(3, 0)), 500));
        assert!(s.remove(short(id(4, 0)), 520));
        assert!(s.remove(short(id(5, 0)), 560));
        assert_eq!(s.len(), 0);
        assert!(s.narrow.is_empty() && s.wide.is_empty());
        // Empty, it counts from the next sequence.
        s.insert(short(id(6, 0)), 10_000);
        assert_eq!(s.base, 10_000);
        assert!(s.wide.is_empty());
    }

    #[test]
    fn short_ids_are_listed_in_key_id_order() {
        let mut s = Slots::<BTreeMap<Short, u32>>::default();
        for (k, q) in [(9, 0), (3, 1), (5, 2), (3, 3)] {
            s.insert(short(id(k, q)), q);
        }
        let all: Vec<(Short, Vec<u64>)> = s.from(None).map(|(k, c)| (k, c.collect())).collect();
        assert_eq!(
            all,
            vec![
                (3u64.to_be_bytes(), vec![1, 3]),
                (5u64.to_be_bytes(), vec![2]),
                (9u64.to_be_bytes(), vec![0]),
            ]
        );
        let from: Vec<Short> = s.from(Some(id(5, 99))).map(|(k, _)| k).collect();
        assert_eq!(from, vec![5u64.to_be_bytes(), 9u64.to_be_bytes()]);
    }

    #[test]
    fn a_dropped_transaction_puts_colliding_entries_back() {
        let mut index = Index::default();
        let (a, b) = (id(1, 1), id(1, 2));
        let mut tx = IndexTxn::new(&mut index);
        let sa = tx.add(Which::Pool, a);
        tx.commit();
        let mut tx = IndexTxn::new(&mut index);
        let sb = tx.add(Which::Pool, b);
        tx.remove(Which::Pool, a, sa);
        assert_eq!(tx.candidates(Which::Pool, a).collect::<Vec<_>>(), vec![sb]);
        drop(tx);
        assert_eq!(
            index.pool.candidates(short(b)).collect::<Vec<_>>(),
            vec![sa],
            "only a is left, at its sequence"
        );
        assert_eq!(index.pool.len(), 1);
    }

    /// Through the store: keys whose IDs share their first 8 bytes are each found, served,
    /// retired and taken as themselves, in a transaction, after one dropped and after a reopen;
    /// an ID that shares them with stored keys but was never stored is not found.
    #[test]
    fn the_store_never_confuses_keys_whose_short_ids_collide() {
        use crate::store::vault::FileKek;
        use crate::store::{PoolKey, Store, StoredKey, Tables};
        use qkd_types::{SaeId, Secret};

        let sae = |s: &str| SaeId::parse(s).unwrap();
        let waiting = |expires_at| StoredKey {
            request: [7; 16],
            master: sae("M"),
            slaves: vec![(sae("S"), false)],
            size_bits: 256,
            expires_at,
            made_under: None,
            pool: false,
        };
        let pooled = PoolKey {
            master: sae("M"),
            slaves: vec![sae("S")],
            size_bits: 256,
            created_at: 5,
            made_under: None,
        };
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("keys")).unwrap();
        let path = dir.path().join("store.redb");
        let kek = FileKek::open(&dir.path().join("keys"), 1_000, 86_400_000).unwrap();
        // Three waiting and three pool keys under one short ID, one of each under another,
        // stored out of key-ID order.
        let w = [id(5, 3), id(5, 1), id(9, 0), id(5, 2)];
        let p = [id(5, 2), id(6, 0), id(5, 9), id(5, 4)];
        let never = id(5, 7);
        let fill = |i: usize| Secret::copy_from(&[i as u8 + 1; 32]);
        let (mut store, _) = Store::open(&path, &kek).unwrap();
        let mut tx = store.begin().unwrap();
        for (i, k) in w.iter().enumerate() {
            tx.put_key(*k, &waiting(1_000 + i as u64), &fill(i))
                .unwrap();
        }
        for (i, k) in p.iter().enumerate() {
            tx.put_pool_key(*k, &pooled, &fill(10 + i)).unwrap();
        }
        // Stored again: the same record is rewritten, no second entry.
        tx.put_key(w[1], &waiting(1_001), &fill(1)).unwrap();
        tx.commit().unwrap();
        let check = |store: &mut Store, pool_left: &[usize]| {
            let tx = store.begin().unwrap();
            for (i, k) in w.iter().enumerate() {
                assert_eq!(tx.key_bytes(*k).unwrap(), Some(fill(i)), "waiting {i}");
                assert_eq!(
                    tx.key_meta(*k).unwrap().unwrap().expires_at,
                    1_000 + i as u64
                );
                assert!(tx.key_id_used(*k).unwrap());
            }
            for (i, k) in p.iter().enumerate() {
                assert_eq!(
                    tx.has_pool_key(*k).unwrap(),
                    pool_left.contains(&i),
                    "pool {i}"
                );
            }
            assert_eq!(tx.key_bytes(never).unwrap(), None);
            assert!(!tx.key_id_used(never).unwrap());
            assert!(!tx.has_pool_key(never).unwrap());
            // In key-ID order, in pages that split a short ID's keys.
            let mut sorted = w.to_vec();
            sorted.sort();
            let first = tx.keys_after(None, 2).unwrap();
            let rest = tx.keys_after(Some(first[1].0), 10).unwrap();
            let all: Vec<KeyId> = first.iter().chain(&rest).map(|(k, _)| *k).collect();
            assert_eq!(all, sorted);
        };
        check(&mut store, &[0, 1, 2, 3]);
        // Taken and retired in a transaction dropped uncommitted: all back.
        let mut tx = store.begin().unwrap();
        let (_, key) = tx.take_pool_key(p[2]).unwrap().unwrap();
        assert_eq!(key, fill(12));
        assert!(tx.take_pool_key(p[2]).unwrap().is_none(), "taken once");
        let meta = tx.key_meta(w[3]).unwrap().unwrap();
        tx.retire_key(w[3], &meta, 2_000).unwrap();
        assert_eq!(tx.key_bytes(w[3]).unwrap(), None);
        assert_eq!(tx.key_bytes(w[0]).unwrap(), Some(fill(0)));
        drop(tx);
        check(&mut store, &[0, 1, 2, 3]);
        // Taken for good: the others under the short ID stay.
        let mut tx = store.begin().unwrap();
        let (_, key) = tx.take_pool_key(p[0]).unwrap().unwrap();
        assert_eq!(key, fill(10));
        tx.commit().unwrap();
        check(&mut store, &[1, 2, 3]);
        drop(store);
        let (mut store, rec) = Store::open(&path, &kek).unwrap();
        let pool: Vec<KeyId> = rec.pool.iter().map(|(k, _)| *k).collect();
        assert_eq!(pool, vec![p[1], p[2], p[3]], "recovered in arrival order");
        check(&mut store, &[1, 2, 3]);
        let mut tx = store.begin().unwrap();
        for (i, k) in [(3, p[3]), (2, p[2])] {
            assert_eq!(tx.take_pool_key(k).unwrap().unwrap().1, fill(10 + i));
        }
        tx.commit().unwrap();
        assert_eq!(store.index.pool.len(), 1);
        assert_eq!(store.index.keys.len(), 4);
    }
}
