//! The pools of finished keys at a master's node, one per (master, slave) pair: which keys are
//! ready, which are too old to hand out, and when to make more. Sans-IO: the caller passes `now`,
//! starts the batches this decides, persists what it hands out, and reports back.
//!
//! Rules:
//! * A pool holds keys oldest first; a key older than the pool TTL is never handed out (its slave
//!   copy expires at the peer) and is dropped by the next relay tick ([`Pools::expire`]) or
//!   request, whichever comes first.
//! * A request takes all it asks for or nothing.
//! * Refills keep a pool at its target, in batches of at most `batch_keys`, with at most
//!   `max_inflight` batches of one pair under way at once, so that one pair cannot take every
//!   link's key.
//! * A batch smaller than `batch_keys` starts only when none of the pair is under way. Each
//!   batch costs one end-to-end exchange (two signatures, two verifications, the KEMs, a round
//!   trip per hop) whatever its size: under steady demand, topping up the few keys taken since
//!   the last batch started would make batches of a handful of keys, and the exchanges would
//!   cost more than the keys. The missing keys wait for a full batch or for the pair's batches
//!   to end: counting the keys of the batches under way, a pool is less than a batch short.

use std::collections::{BTreeMap, VecDeque};

use qkd_types::{KeyId, SaeId, UnixMillis};

/// A (master, slave) pair.
pub type Pair = (SaeId, SaeId);

/// How pools are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolRules {
    /// Keys each pool is kept at.
    pub target: usize,
    /// Most keys one refill batch makes.
    pub batch_keys: usize,
    /// Most refill batches of one pair under way at once.
    pub max_inflight: usize,
    /// Age after which a ready key is no longer handed out, in milliseconds.
    pub ttl_ms: u64,
}

/// What a request took from a pool.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Taken {
    /// The keys handed out, oldest first; `None` if the pool held too few (nothing taken).
    pub keys: Option<Vec<KeyId>>,
    /// Keys found too old on the way, to discard durably.
    pub stale: Vec<KeyId>,
}

/// A refill batch to start: `keys` keys for `pair`. Report its end with
/// [`Pools::refill_done`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refill {
    /// The pair.
    pub pair: Pair,
    /// Keys to make.
    pub keys: usize,
}

#[derive(Debug, Default)]
struct PairPool {
    /// The ready keys, oldest first, in the batches they were made in: a key costs its ID
    /// alone (16 bytes), the time is kept once per batch.
    ready: VecDeque<Batch>,
    /// Keys in `ready`.
    len: usize,
    inflight: usize,
    inflight_keys: usize,
}

/// Ready keys made at one time: `ids[next..]` are still in the pool.
#[derive(Debug)]
struct Batch {
    created: UnixMillis,
    ids: Box<[KeyId]>,
    next: usize,
}

impl Batch {
    fn left(&self) -> &[KeyId] {
        &self.ids[self.next..]
    }
}

impl PairPool {
    fn push(&mut self, created: UnixMillis, ids: Vec<KeyId>) {
        if !ids.is_empty() {
            self.len += ids.len();
            self.ready.push_back(Batch {
                created,
                ids: ids.into_boxed_slice(),
                next: 0,
            });
        }
    }

    /// Takes the `n` oldest keys (`n` at most `len`) into `out`.
    fn take_into(&mut self, mut n: usize, out: &mut Vec<KeyId>) {
        while n > 0 {
            let Some(b) = self.ready.front_mut() else {
                break;
            };
            let k = n.min(b.ids.len() - b.next);
            out.extend_from_slice(&b.ids[b.next..b.next + k]);
            b.next += k;
            n -= k;
            self.len -= k;
            if b.next == b.ids.len() {
                self.ready.pop_front();
            }
        }
    }
}

/// Every pair's pool at this node.
#[derive(Debug)]
pub struct Pools {
    rules: PoolRules,
    pairs: BTreeMap<Pair, PairPool>,
}

impl Pools {
    /// Empty pools kept by `rules`.
    pub fn new(rules: PoolRules) -> Self {
        Self {
            rules,
            pairs: BTreeMap::new(),
        }
    }

    /// Puts back keys the store held at start (`created_at` each), in the order they were made.
    pub fn restore(&mut self, keys: impl IntoIterator<Item = (Pair, KeyId, UnixMillis)>) {
        let mut by_pair: BTreeMap<Pair, Vec<(UnixMillis, KeyId)>> = BTreeMap::new();
        for (pair, id, created) in keys {
            by_pair.entry(pair).or_default().push((created, id));
        }
        for (pair, mut keys) in by_pair {
            // Stable: keys made at one time keep their order.
            keys.sort_by_key(|(created, _)| *created);
            let pool = self.pairs.entry(pair).or_default();
            for run in keys.chunk_by(|a, b| a.0 == b.0) {
                pool.push(run[0].0, run.iter().map(|(_, id)| *id).collect());
            }
        }
    }

    /// Keys of `pair` that may still be handed out at `now`.
    pub fn level(&self, pair: &Pair, now: UnixMillis) -> u64 {
        let min_created = now.saturating_sub(self.rules.ttl_ms);
        self.pairs.get(pair).map_or(0, |p| {
            p.ready
                .iter()
                .filter(|b| b.created >= min_created)
                .map(|b| b.left().len() as u64)
                .sum()
        })
    }

    /// Every pair's pooled keys (however old), for a reload's assessment.
    pub fn held(&self) -> BTreeMap<Pair, u64> {
        self.pairs
            .iter()
            .filter(|(_, p)| p.len > 0)
            .map(|(pair, p)| (pair.clone(), p.len as u64))
            .collect()
    }

    /// Empties the pool of `pair` (a reload voided it): the IDs it held. Refills under way are
    /// still counted until they end.
    pub fn drain(&mut self, pair: &Pair) -> Vec<KeyId> {
        self.pairs
            .get_mut(pair)
            .map(|p| {
                let mut ids = Vec::with_capacity(p.len);
                p.take_into(p.len, &mut ids);
                ids
            })
            .unwrap_or_default()
    }

    /// Drops the keys of `pair` too old to hand out at `now`: their IDs, to discard durably.
    /// Until then they count toward the pool, so a pool of stale keys would start no refill; the
    /// shell calls this on every tick, before the refills.
    pub fn expire(&mut self, pair: &Pair, now: UnixMillis) -> Vec<KeyId> {
        let min_created = now.saturating_sub(self.rules.ttl_ms);
        let Some(pool) = self.pairs.get_mut(pair) else {
            return Vec::new();
        };
        let mut stale = Vec::new();
        while let Some(b) = pool.ready.front() {
            if b.created >= min_created {
                break;
            }
            stale.extend_from_slice(b.left());
            pool.len -= b.left().len();
            pool.ready.pop_front();
        }
        stale
    }

    /// Takes `number` keys of `pair` for its master, all or nothing, discarding the keys too old
    /// to hand out.
    pub fn take(&mut self, pair: &Pair, number: usize, now: UnixMillis) -> Taken {
        let stale = self.expire(pair, now);
        let pool = self.pairs.entry(pair.clone()).or_default();
        let keys = (pool.len >= number).then(|| {
            let mut ids = Vec::with_capacity(number);
            pool.take_into(number, &mut ids);
            ids
        });
        Taken { keys, stale }
    }

    /// The refill batches to start now for `pair`, each counted as under way until
    /// [`Pools::refill_done`].
    pub fn refills(&mut self, pair: &Pair) -> Vec<Refill> {
        let r = self.rules;
        let pool = self.pairs.entry(pair.clone()).or_default();
        let mut out = Vec::new();
        while pool.inflight < r.max_inflight {
            let n = r
                .target
                .saturating_sub(pool.len + pool.inflight_keys)
                .min(r.batch_keys);
            if n == 0 || (n < r.batch_keys && pool.inflight > 0) {
                break;
            }
            pool.inflight += 1;
            pool.inflight_keys += n;
            out.push(Refill {
                pair: pair.clone(),
                keys: n,
            });
        }
        out
    }

    /// A refill batch ended: with its keys (durably stored, made at `now`) or without (it
    /// failed; the next request or tick starts another).
    pub fn refill_done(&mut self, refill: &Refill, made: Option<(Vec<KeyId>, UnixMillis)>) {
        let pool = self.pairs.entry(refill.pair.clone()).or_default();
        pool.inflight = pool.inflight.saturating_sub(1);
        pool.inflight_keys = pool.inflight_keys.saturating_sub(refill.keys);
        if let Some((ids, now)) = made {
            pool.push(now, ids);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: PoolRules = PoolRules {
        target: 10,
        batch_keys: 4,
        max_inflight: 2,
        ttl_ms: 1_000,
    };

    fn pair() -> Pair {
        (
            SaeId::parse("ENC-A").unwrap(),
            SaeId::parse("ENC-B").unwrap(),
        )
    }

    fn ids(n: usize) -> Vec<KeyId> {
        (0..n).map(|_| KeyId::random()).collect()
    }

    #[test]
    fn refills_stop_at_the_target_and_at_the_inflight_cap() {
        let mut p = Pools::new(RULES);
        let first = p.refills(&pair());
        assert_eq!(
            first.iter().map(|r| r.keys).collect::<Vec<_>>(),
            vec![4, 4],
            "two batches at most, four keys each"
        );
        assert!(p.refills(&pair()).is_empty(), "the cap holds");
        p.refill_done(&first[0], Some((ids(4), 0)));
        // 4 ready + 4 under way: the 2 missing keys wait, as a batch is still under way.
        assert!(p.refills(&pair()).is_empty());
        p.refill_done(&first[1], None);
        // The failed batch's keys are no longer counted: 4 ready, 6 missing, nothing under way:
        // a full batch, then not the 2 left over while it runs.
        let next = p.refills(&pair());
        assert_eq!(next.iter().map(|r| r.keys).collect::<Vec<_>>(), vec![4]);
        p.refill_done(&next[0], Some((ids(4), 0)));
        assert_eq!(p.level(&pair(), 0), 8);
        // Nothing under way: the last 2 go in a batch of their own, and the pool is full.
        let last = p.refills(&pair());
        assert_eq!(last.iter().map(|r| r.keys).collect::<Vec<_>>(), vec![2]);
        p.refill_done(&last[0], Some((ids(2), 0)));
        assert_eq!(p.level(&pair(), 0), 10);
        assert!(p.refills(&pair()).is_empty());
    }

    #[test]
    fn while_a_batch_runs_only_full_batches_start() {
        let mut p = Pools::new(RULES);
        p.restore(ids(10).into_iter().map(|id| (pair(), id, 0)));
        // Nothing under way: the first key taken is made again at once.
        assert!(p.take(&pair(), 1, 0).keys.is_some());
        let one = p.refills(&pair());
        assert_eq!(one.iter().map(|r| r.keys).collect::<Vec<_>>(), vec![1]);
        // While it runs, keys taken one at a time wait until a full batch is missing.
        for missing in 1..RULES.batch_keys {
            assert!(p.take(&pair(), 1, 0).keys.is_some());
            assert!(p.refills(&pair()).is_empty(), "{missing} missing");
        }
        assert!(p.take(&pair(), 1, 0).keys.is_some());
        let full = p.refills(&pair());
        assert_eq!(full.iter().map(|r| r.keys).collect::<Vec<_>>(), vec![4]);
        // Both batches end: nothing is missing.
        p.refill_done(&one[0], Some((ids(1), 0)));
        p.refill_done(&full[0], Some((ids(4), 0)));
        assert_eq!(p.level(&pair(), 0), 10);
        assert!(p.refills(&pair()).is_empty());
    }

    #[test]
    fn keys_past_the_ttl_stop_counting_once_expired_and_are_refilled() {
        let mut p = Pools::new(RULES);
        let old = ids(8);
        p.restore(old.iter().map(|id| (pair(), *id, 0)));
        p.restore(ids(2).into_iter().map(|id| (pair(), id, 900)));
        // At 1,500 the first eight are past the TTL: not handed out, but still counted until
        // dropped, so the full pool starts no refill.
        assert_eq!(p.level(&pair(), 1_500), 2);
        assert!(p.refills(&pair()).is_empty());
        assert_eq!(
            p.expire(&pair(), 1_500),
            old,
            "the stale keys, oldest first"
        );
        assert_eq!(p.expire(&pair(), 1_500), Vec::<KeyId>::new(), "once");
        assert_eq!(p.held().get(&pair()), Some(&2));
        let refills = p.refills(&pair());
        assert_eq!(
            refills.iter().map(|r| r.keys).collect::<Vec<_>>(),
            vec![4, 4]
        );
        // A pair never seen has nothing to expire, and gets no pool for asking.
        let other = (pair().1, pair().0);
        assert!(p.expire(&other, 1_500).is_empty());
        assert!(!p.held().contains_key(&other));
    }

    #[test]
    fn a_request_takes_all_or_nothing_oldest_first() {
        let mut p = Pools::new(RULES);
        let k = ids(3);
        p.restore(k.iter().enumerate().map(|(i, id)| (pair(), *id, i as u64)));
        assert_eq!(p.take(&pair(), 4, 10), Taken::default());
        assert_eq!(p.level(&pair(), 10), 3, "a refused request takes nothing");
        assert_eq!(
            p.take(&pair(), 2, 10),
            Taken {
                keys: Some(k[..2].to_vec()),
                stale: vec![]
            }
        );
        assert_eq!(p.level(&pair(), 10), 1);
    }

    #[test]
    fn keys_past_the_ttl_are_never_handed_out_and_are_discarded() {
        let mut p = Pools::new(RULES);
        let old = ids(2);
        let young = ids(1);
        p.restore([
            (pair(), young[0], 900),
            (pair(), old[0], 0),
            (pair(), old[1], 10),
        ]);
        // At 1,500 the keys made before 500 are too old.
        assert_eq!(p.level(&pair(), 1_500), 1);
        let t = p.take(&pair(), 2, 1_500);
        assert_eq!(t.keys, None);
        assert_eq!(
            t.stale, old,
            "discarded oldest first, even when the request fails"
        );
        assert_eq!(p.take(&pair(), 1, 1_500).keys, Some(young));
    }

    #[test]
    fn keys_are_taken_across_batches_in_order() {
        let mut p = Pools::new(RULES);
        let k = ids(7);
        p.restore(
            k.iter()
                .enumerate()
                .map(|(i, id)| (pair(), *id, [0, 0, 0, 5, 5, 8, 8][i])),
        );
        assert_eq!(p.held().get(&pair()), Some(&7));
        assert_eq!(p.take(&pair(), 2, 10).keys, Some(k[..2].to_vec()));
        assert_eq!(p.take(&pair(), 4, 10).keys, Some(k[2..6].to_vec()));
        assert_eq!(p.level(&pair(), 10), 1);
        let r = p.refills(&pair());
        p.refill_done(&r[0], Some((ids(4), 20)));
        assert_eq!(p.level(&pair(), 20), 5);
        assert_eq!(p.drain(&pair())[0], k[6], "drained oldest first");
        assert_eq!(p.held().get(&pair()), None);
    }

    #[test]
    fn pairs_are_kept_apart() {
        let mut p = Pools::new(RULES);
        let other = (pair().1, pair().0);
        let r = p.refills(&pair());
        p.refill_done(&r[0], Some((ids(4), 0)));
        assert_eq!(p.level(&other, 0), 0);
        assert_eq!(
            p.refills(&other).len(),
            2,
            "the other direction has its own cap"
        );
    }
}
