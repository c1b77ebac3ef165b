//! One link's pool of key blocks, as seen by one end of the link.
//!
//! Both ends hold the same blocks under the same sequence numbers. The **allocator** end (the
//! node at the device's master end) alone chooses which bytes back which key: it walks the pool
//! in order, so allocation is a cursor that only moves forward. The other end only *takes* the
//! ranges the allocator announced, after checking that each lies in a block it holds and that no
//! byte of it was taken before. Either way a byte of link key is taken at most once, ever: a taken
//! range is never given back, whether its key was delivered or voided.
//!
//! Architecture invariant: a block's bytes move only forward: free → taken. Nothing here can
//! make a taken byte free again.

use std::collections::BTreeMap;

use qkd_types::BlockId;

/// A run of bytes inside one block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Range {
    /// Sequence number of the block on its link.
    pub block_seq: u64,
    /// First byte within the block.
    pub offset: u32,
    /// Number of bytes, at least one.
    pub len: u32,
}

/// Whether both ends hold a block yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockState {
    /// Stored at the allocator, not yet confirmed by the peer: not usable.
    Pending,
    /// Held by both ends: usable.
    Available,
}

/// What the pool knows about one block (never its bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockMeta {
    /// Device identifier of the block.
    pub id: BlockId,
    /// Length in bytes.
    pub len: u32,
    /// Pending or available.
    pub state: BlockState,
    /// Taken byte ranges `[start, end)`, sorted, disjoint, merged.
    pub taken: Vec<(u32, u32)>,
}

impl BlockMeta {
    /// Bytes not yet taken.
    pub fn free_bytes(&self) -> u64 {
        u64::from(self.len)
            - self
                .taken
                .iter()
                .map(|(s, e)| u64::from(e - s))
                .sum::<u64>()
    }

    /// Whether every byte is taken (the block can be erased).
    pub fn is_drained(&self) -> bool {
        self.free_bytes() == 0
    }

    fn overlaps(&self, start: u32, end: u32) -> bool {
        self.taken.iter().any(|&(s, e)| start < e && s < end)
    }

    fn insert(&mut self, start: u32, end: u32) {
        self.taken.push((start, end));
        self.taken.sort_unstable();
        let mut merged: Vec<(u32, u32)> = Vec::with_capacity(self.taken.len());
        for &(s, e) in &self.taken {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        self.taken = merged;
    }

    /// End of the highest taken range (0 if none).
    fn high_water(&self) -> u32 {
        self.taken.last().map_or(0, |r| r.1)
    }
}

/// Why a pool operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// SAE demand: not enough available link key for the whole request.
    #[error("not enough link key: {wanted} bytes wanted, {available} available")]
    Insufficient {
        /// Bytes the request needs.
        wanted: u64,
        /// Bytes available now.
        available: u64,
    },
    /// Peer: a range names a block this end does not hold or that is not available yet.
    #[error("range names block {0}, which this end does not hold as available")]
    UnknownBlock(u64),
    /// Peer: a range is empty or runs past the end of its block.
    #[error("range {0:?} lies outside its block")]
    OutOfBounds(Range),
    /// Peer (or a bug at the allocator): a range overlaps bytes already taken.
    #[error("range {0:?} overlaps link key already taken")]
    AlreadyTaken(Range),
    /// Peer: a block offer does not continue the link's sequence, or repeats a block differently.
    #[error("block {seq} offered out of sequence (expected {expected})")]
    OutOfSequence {
        /// Sequence number offered.
        seq: u64,
        /// Sequence number expected next.
        expected: u64,
    },
    /// Device (or a peer relaying what its device said): a block's device key ID was already
    /// used for link key on this link. Its bytes are refused, whatever they are: a device that
    /// re-issues key could make a one-time pad serve twice.
    #[error("device key ID {0} was already used on this link (the device re-issued key)")]
    Reissued(BlockId),
    /// Bug: an allocation was asked of the end that does not allocate.
    #[error("this end of the link does not allocate")]
    NotAllocator,
}

/// One end's view of one link's pool.
#[derive(Debug, Clone)]
pub struct LinkPool {
    allocator: bool,
    capacity_bytes: u64,
    blocks: BTreeMap<u64, BlockMeta>,
    next_seq: u64,
    /// Allocator: first byte not yet allocated, as (block sequence, offset).
    cursor: (u64, u32),
    /// Device key IDs of the most recent blocks, held or already erased.
    seen: SeenIds,
}

/// How many of a link's most recent device key IDs each end remembers (and stores), so that a
/// device re-issuing key is caught. Bounded, because real devices issue random IDs at up to
/// hundreds of thousands per second.
pub const SEEN_DEVICE_IDS: usize = 1 << 16;

/// The last [`SEEN_DEVICE_IDS`] device key IDs, oldest first.
#[derive(Debug, Clone, Default)]
struct SeenIds {
    order: std::collections::VecDeque<BlockId>,
    set: std::collections::HashSet<BlockId>,
}

impl SeenIds {
    fn contains(&self, id: &BlockId) -> bool {
        self.set.contains(id)
    }

    fn insert(&mut self, id: BlockId) {
        if self.set.insert(id) {
            self.order.push_back(id);
            while self.order.len() > SEEN_DEVICE_IDS {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }
}

impl LinkPool {
    /// An empty pool. `allocator` is true at the device's master end.
    pub fn new(allocator: bool, capacity_bytes: u64) -> Self {
        Self {
            allocator,
            capacity_bytes,
            blocks: BTreeMap::new(),
            next_seq: 0,
            cursor: (0, 0),
            seen: SeenIds::default(),
        }
    }

    /// Whether a device key ID was used on this link recently (within [`SEEN_DEVICE_IDS`]).
    pub fn seen_device_id(&self, id: &BlockId) -> bool {
        self.seen.contains(id) && !crate::events::defects::active().reissued_ids
    }

    /// Remembers device key IDs of earlier blocks (from the store, oldest first), so that a
    /// device re-issuing any of them is refused ([`PoolError::Reissued`]). They are older than
    /// the blocks the pool holds, so they go first in the window's order (evicted first).
    pub fn remember_device_ids(&mut self, ids: impl IntoIterator<Item = BlockId>) {
        let held: Vec<BlockId> = self.blocks.values().map(|b| b.id).collect();
        let mut seen = SeenIds::default();
        for id in ids.into_iter().chain(held) {
            seen.insert(id);
        }
        self.seen = seen;
    }

    /// Rebuilds a pool from stored blocks (`next_seq` is one past the highest sequence ever
    /// used, so drained and erased blocks are not reused).
    pub fn restore(
        allocator: bool,
        capacity_bytes: u64,
        next_seq: u64,
        blocks: impl IntoIterator<Item = (u64, BlockMeta)>,
    ) -> Self {
        let blocks: BTreeMap<u64, BlockMeta> = blocks.into_iter().collect();
        let next_seq = blocks
            .keys()
            .next_back()
            .map_or(next_seq, |s| next_seq.max(s + 1));
        // Allocation is sequential, so every byte before the last taken byte is taken (or its
        // block erased): the cursor resumes right after it.
        let cursor = blocks
            .iter()
            .rev()
            .find(|(_, b)| !b.taken.is_empty())
            .map(|(&seq, b)| (seq, b.high_water()))
            .or_else(|| blocks.keys().next().map(|&s| (s, 0)))
            .unwrap_or((next_seq, 0));
        let mut seen = SeenIds::default();
        for b in blocks.values() {
            seen.insert(b.id);
        }
        Self {
            allocator,
            capacity_bytes,
            blocks,
            next_seq,
            cursor,
            seen,
        }
    }

    /// Whether this end allocates.
    pub fn is_allocator(&self) -> bool {
        self.allocator
    }

    /// Configured capacity in bytes.
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_bytes
    }

    /// Sequence number the next new block gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The block with this sequence number.
    pub fn block(&self, seq: u64) -> Option<&BlockMeta> {
        self.blocks.get(&seq)
    }

    /// All blocks, in order.
    pub fn blocks(&self) -> impl Iterator<Item = (u64, &BlockMeta)> {
        self.blocks.iter().map(|(s, b)| (*s, b))
    }

    /// Free bytes in available blocks: what allocations can use now.
    pub fn available_bytes(&self) -> u64 {
        self.blocks
            .values()
            .filter(|b| b.state == BlockState::Available)
            .map(BlockMeta::free_bytes)
            .sum()
    }

    /// Free bytes in all blocks, pending included: what counts against the capacity.
    pub fn stored_bytes(&self) -> u64 {
        self.blocks.values().map(BlockMeta::free_bytes).sum()
    }

    /// Room left before the pool reaches its capacity.
    pub fn room_bytes(&self) -> u64 {
        self.capacity_bytes.saturating_sub(self.stored_bytes())
    }

    /// Adds a block under the next sequence number. At the allocator new blocks start pending;
    /// at the other end they arrive already held by both ends.
    pub fn add_block(&mut self, seq: u64, id: BlockId, len: u32) -> Result<(), PoolError> {
        if let Some(existing) = self.blocks.get(&seq) {
            // A repeated offer of the same block is fine (idempotent retry).
            return if existing.id == id && existing.len == len {
                Ok(())
            } else {
                Err(PoolError::OutOfSequence {
                    seq,
                    expected: self.next_seq,
                })
            };
        }
        if seq != self.next_seq || len == 0 {
            return Err(PoolError::OutOfSequence {
                seq,
                expected: self.next_seq,
            });
        }
        if self.seen_device_id(&id) {
            return Err(PoolError::Reissued(id));
        }
        self.seen.insert(id);
        let state = if self.allocator {
            BlockState::Pending
        } else {
            BlockState::Available
        };
        self.blocks.insert(
            seq,
            BlockMeta {
                id,
                len,
                state,
                taken: Vec::new(),
            },
        );
        self.next_seq = seq + 1;
        Ok(())
    }

    /// Allocator: the peer holds these blocks now.
    pub fn mark_available(&mut self, seqs: impl IntoIterator<Item = u64>) {
        for s in seqs {
            if let Some(b) = self.blocks.get_mut(&s) {
                b.state = BlockState::Available;
            }
        }
    }

    /// Allocator: picks link bytes for keys of the given sizes (bytes), in order, all or none,
    /// and takes them.
    pub fn allocate(&mut self, sizes: &[u32]) -> Result<Vec<Vec<Range>>, PoolError> {
        if !self.allocator {
            return Err(PoolError::NotAllocator);
        }
        let wanted: u64 = sizes.iter().map(|&s| u64::from(s)).sum();
        let mut cursor = self.cursor;
        let mut out = Vec::with_capacity(sizes.len());
        let mut got = 0u64;
        for &size in sizes {
            let mut need = size;
            let mut ranges = Vec::new();
            while need > 0 {
                let Some((seq, off, free)) = self.next_free(cursor) else {
                    return Err(PoolError::Insufficient {
                        wanted,
                        available: got + self.free_after(cursor),
                    });
                };
                let n = need.min(free);
                ranges.push(Range {
                    block_seq: seq,
                    offset: off,
                    len: n,
                });
                need -= n;
                got += u64::from(n);
                cursor = (seq, off + n);
            }
            out.push(ranges);
        }
        for r in out.iter().flatten() {
            // Invariant: next_free only returns untaken bytes of available blocks, so this
            // cannot fail; if it ever did, the allocation is refused rather than reused.
            self.blocks
                .get_mut(&r.block_seq)
                .ok_or(PoolError::UnknownBlock(r.block_seq))?
                .insert(r.offset, r.offset + r.len);
        }
        self.cursor = cursor;
        Ok(out)
    }

    /// Either end: takes ranges announced by the allocator, after checking all of them (all or
    /// none).
    pub fn take(&mut self, ranges: &[Range]) -> Result<(), PoolError> {
        self.check_free(ranges)?;
        for r in ranges {
            if let Some(b) = self.blocks.get_mut(&r.block_seq) {
                b.insert(r.offset, r.offset + r.len);
            }
        }
        Ok(())
    }

    /// Checks that `ranges` lie in available blocks, are free, and do not overlap each other.
    pub fn check_free(&self, ranges: &[Range]) -> Result<(), PoolError> {
        let mut scratch: BTreeMap<u64, BlockMeta> = BTreeMap::new();
        for r in ranges {
            let block = match scratch.get_mut(&r.block_seq) {
                Some(b) => b,
                None => {
                    let b = self
                        .blocks
                        .get(&r.block_seq)
                        .filter(|b| b.state == BlockState::Available)
                        .ok_or(PoolError::UnknownBlock(r.block_seq))?;
                    scratch.entry(r.block_seq).or_insert_with(|| b.clone())
                }
            };
            let end = r
                .offset
                .checked_add(r.len)
                .filter(|&e| r.len > 0 && e <= block.len);
            let Some(end) = end else {
                return Err(PoolError::OutOfBounds(*r));
            };
            if block.overlaps(r.offset, end) {
                return Err(PoolError::AlreadyTaken(*r));
            }
            block.insert(r.offset, end);
        }
        Ok(())
    }

    /// Blocks whose every byte is taken; the store erases them.
    pub fn drained(&self) -> Vec<u64> {
        self.blocks
            .iter()
            .filter(|(_, b)| b.is_drained())
            .map(|(s, _)| *s)
            .collect()
    }

    /// Forgets blocks (erased from the store).
    pub fn forget(&mut self, seqs: &[u64]) {
        for s in seqs {
            self.blocks.remove(s);
        }
    }

    /// Non-allocator: the allocator continues the link at `seq`, having discarded the blocks
    /// before it that this end never got (its peer's device could not deliver them). They are
    /// skipped: never held here, never used by either end. Only moves forward, and refuses a jump
    /// no link could make (which would exhaust the sequence numbers).
    pub fn skip_to(&mut self, seq: u64) -> Result<(), PoolError> {
        const MAX_GAP: u64 = 1 << 40;
        if self.allocator || seq.saturating_sub(self.next_seq) > MAX_GAP {
            return Err(PoolError::OutOfSequence {
                seq,
                expected: self.next_seq,
            });
        }
        self.next_seq = self.next_seq.max(seq);
        Ok(())
    }

    /// Non-allocator: every block before `seq` is used up at the allocator; returns them so the
    /// store can erase them.
    pub fn released_before(&self, seq: u64) -> Vec<u64> {
        self.blocks.range(..seq).map(|(s, _)| *s).collect()
    }

    /// Allocator: every block before this sequence number is used up.
    pub fn low_water(&self) -> u64 {
        self.blocks
            .iter()
            .find(|(_, b)| !b.is_drained())
            .map_or(self.next_seq, |(s, _)| *s)
    }

    /// The first free byte at or after `cursor` in an available block, with the free run length.
    fn next_free(&self, cursor: (u64, u32)) -> Option<(u64, u32, u32)> {
        for (&seq, b) in self.blocks.range(cursor.0..) {
            if b.state != BlockState::Available {
                // Blocks become available in order; allocation never skips a pending one, so
                // the cursor stays a single point.
                return None;
            }
            let from = if seq == cursor.0 { cursor.1 } else { 0 };
            if from < b.len {
                return Some((seq, from, b.len - from));
            }
        }
        None
    }

    fn free_after(&self, cursor: (u64, u32)) -> u64 {
        let mut total = 0u64;
        for (&seq, b) in self.blocks.range(cursor.0..) {
            if b.state != BlockState::Available {
                break;
            }
            let from = if seq == cursor.0 { cursor.1 } else { 0 };
            total += u64::from(b.len.saturating_sub(from));
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool_with(allocator: bool, blocks: &[u32]) -> LinkPool {
        let mut p = LinkPool::new(allocator, 1 << 20);
        for (i, &len) in blocks.iter().enumerate() {
            p.add_block(i as u64, BlockId::random(), len).unwrap();
        }
        p.mark_available(0..blocks.len() as u64);
        p
    }

    #[test]
    fn allocation_walks_forward_across_blocks() {
        let mut p = pool_with(true, &[40, 40]);
        let a = p.allocate(&[32, 32]).unwrap();
        assert_eq!(
            a[0],
            vec![Range {
                block_seq: 0,
                offset: 0,
                len: 32
            }]
        );
        assert_eq!(
            a[1],
            vec![
                Range {
                    block_seq: 0,
                    offset: 32,
                    len: 8
                },
                Range {
                    block_seq: 1,
                    offset: 0,
                    len: 24
                }
            ]
        );
        assert_eq!(p.available_bytes(), 16);
        assert_eq!(p.drained(), vec![0]);
        // All or nothing.
        assert_eq!(
            p.allocate(&[8, 16]),
            Err(PoolError::Insufficient {
                wanted: 24,
                available: 16
            })
        );
        assert_eq!(p.available_bytes(), 16);
        assert_eq!(
            p.allocate(&[16]).unwrap()[0],
            vec![Range {
                block_seq: 1,
                offset: 24,
                len: 16
            }]
        );
    }

    #[test]
    fn a_reissued_device_key_id_is_refused_even_after_its_block_is_gone() {
        let mut p = LinkPool::new(true, 1 << 20);
        let id = BlockId::random();
        p.add_block(0, id, 64).unwrap();
        // The same block offered again under its own sequence is an idempotent retry.
        p.add_block(0, id, 64).unwrap();
        // Under a new sequence it is key the device already gave: refused.
        assert_eq!(p.add_block(1, id, 64), Err(PoolError::Reissued(id)));
        p.mark_available([0]);
        p.allocate(&[64]).unwrap();
        p.forget(&p.drained());
        assert_eq!(p.add_block(1, id, 64), Err(PoolError::Reissued(id)));
        // Across a restart, through the IDs the store remembers.
        let mut q = LinkPool::restore(true, 1 << 20, 1, []);
        q.remember_device_ids([id]);
        assert!(q.seen_device_id(&id));
        assert_eq!(q.add_block(1, id, 64), Err(PoolError::Reissued(id)));
        q.add_block(1, BlockId::random(), 64).unwrap();
    }

    #[test]
    fn the_window_of_device_key_ids_is_bounded() {
        let mut p = LinkPool::new(false, u64::MAX);
        let first = BlockId::random();
        p.add_block(0, first, 8).unwrap();
        for seq in 1..=SEEN_DEVICE_IDS as u64 {
            p.add_block(seq, BlockId::random(), 8).unwrap();
        }
        assert!(!p.seen_device_id(&first));
        assert_eq!(p.seen.set.len(), SEEN_DEVICE_IDS);
    }

    #[test]
    fn pending_blocks_are_not_allocated() {
        let mut p = LinkPool::new(true, 1 << 20);
        p.add_block(0, BlockId::random(), 64).unwrap();
        assert_eq!(p.available_bytes(), 0);
        assert!(p.allocate(&[8]).is_err());
        p.mark_available([0]);
        assert!(p.allocate(&[8]).is_ok());
    }

    #[test]
    fn take_checks_everything_and_is_atomic() {
        let mut p = pool_with(false, &[32]);
        let r = |o, l| Range {
            block_seq: 0,
            offset: o,
            len: l,
        };
        assert_eq!(
            p.take(&[r(0, 8), r(4, 8)]),
            Err(PoolError::AlreadyTaken(r(4, 8)))
        );
        assert_eq!(p.available_bytes(), 32, "nothing taken by a refused call");
        assert_eq!(p.take(&[r(30, 4)]), Err(PoolError::OutOfBounds(r(30, 4))));
        assert_eq!(p.take(&[r(0, 0)]), Err(PoolError::OutOfBounds(r(0, 0))));
        assert_eq!(
            p.take(&[r(u32::MAX, 2)]),
            Err(PoolError::OutOfBounds(r(u32::MAX, 2)))
        );
        assert_eq!(
            p.take(&[Range {
                block_seq: 9,
                offset: 0,
                len: 1
            }]),
            Err(PoolError::UnknownBlock(9))
        );
        p.take(&[r(0, 8)]).unwrap();
        assert_eq!(p.take(&[r(7, 2)]), Err(PoolError::AlreadyTaken(r(7, 2))));
        p.take(&[r(8, 24)]).unwrap();
        assert_eq!(p.drained(), vec![0]);
    }

    #[test]
    fn offers_must_follow_the_sequence() {
        let mut p = LinkPool::new(false, 100);
        let id = BlockId::random();
        assert!(matches!(
            p.add_block(1, id, 8),
            Err(PoolError::OutOfSequence {
                seq: 1,
                expected: 0
            })
        ));
        p.add_block(0, id, 8).unwrap();
        p.add_block(0, id, 8).unwrap(); // idempotent
        assert!(p.add_block(0, BlockId::random(), 8).is_err());
        assert_eq!(p.room_bytes(), 92);
    }

    #[test]
    fn restore_resumes_cursor_after_last_taken_byte() {
        let mut p = pool_with(true, &[16, 16, 16]);
        p.allocate(&[20]).unwrap();
        let blocks: Vec<_> = p.blocks().map(|(s, b)| (s, b.clone())).collect();
        let mut q = LinkPool::restore(true, 1 << 20, 0, blocks);
        assert_eq!(q.next_seq(), 3);
        let a = q.allocate(&[4]).unwrap();
        assert_eq!(
            a[0],
            vec![Range {
                block_seq: 1,
                offset: 4,
                len: 4
            }]
        );
    }

    /// A byte is never handed out twice, whatever the mix of request sizes.
    #[test]
    fn property_no_byte_twice() {
        let mut p = pool_with(true, &[100, 7, 33, 64, 1, 250]);
        let mut seen = std::collections::HashSet::new();
        let mut sizes = [3u32, 8, 1, 32, 17, 5, 64].iter().cycle();
        loop {
            let s = *sizes.next().unwrap();
            match p.allocate(&[s, s / 2 + 1]) {
                Ok(v) => {
                    for r in v.iter().flatten() {
                        for b in r.offset..r.offset + r.len {
                            assert!(seen.insert((r.block_seq, b)), "byte handed out twice");
                        }
                    }
                }
                Err(PoolError::Insufficient { .. }) if p.available_bytes() < 70 => break,
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(seen.len() as u64 + p.available_bytes(), 455);
    }

    #[test]
    fn the_non_allocator_skips_blocks_its_allocator_discarded() {
        let id = |b: u8| BlockId::from_bytes([b; 16]);
        let mut p = LinkPool::restore(false, 1 << 20, 0, Vec::new());
        p.add_block(0, id(1), 64).unwrap();
        // Blocks 1 and 2 were discarded at the allocator; it goes on at 3.
        assert!(matches!(
            p.add_block(3, id(4), 64),
            Err(PoolError::OutOfSequence {
                seq: 3,
                expected: 1
            })
        ));
        p.skip_to(3).unwrap();
        p.add_block(3, id(4), 64).unwrap();
        assert_eq!(p.next_seq(), 4);
        // Never backwards, and never a jump that would exhaust the sequence numbers.
        p.skip_to(2).unwrap();
        assert_eq!(p.next_seq(), 4);
        assert!(p.skip_to(u64::MAX).is_err());
        // The allocator never skips: it alone numbers the blocks.
        assert!(
            LinkPool::restore(true, 1 << 20, 0, Vec::new())
                .skip_to(5)
                .is_err()
        );
    }
}
