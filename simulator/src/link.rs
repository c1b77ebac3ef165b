//! A simulated QKD link end that implements [`qkd_hardware::KeySource`].
//!
//! The two ends of a link live in two node processes. They share a 32-byte seed (the demo writes
//! it into each node's data directory; it is never part of a configuration file) and derive block
//! `i` of the link from it with ChaCha20, so both ends see identical blocks in the same order
//! without talking to each other. The master end hands out blocks as fast as the
//! [`LinkModel`] produces them; the slave end hands out a block by ID once the master end could
//! have produced it, and only once.
//!
//! Block IDs are version-8 UUIDs carrying a 48-bit tag of the link and the block index, so the
//! slave end can check an ID belongs to its link and find the block without a lookup table.
//!
//! Simulated keys are for demos and tests, never for protecting data: [`SourceInfo::simulated`]
//! says so, and the node repeats it at start and in its status.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use qkd_hardware::{DeviceError, KeyBlock, KeySource, LinkRole, LinkState, LinkStatus, SourceInfo};
use qkd_types::{BlockId, Clock, LinkId, Secret, UnixMillis};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use ring::hmac;
use zeroize::Zeroizing;

use crate::model::LinkModel;

/// Length of a link seed in bytes.
pub const SEED_LEN: usize = 32;

/// Largest block index a block ID can carry (48 bits).
const MAX_INDEX: u64 = (1 << 48) - 1;

/// Parameters of one simulated link end.
#[derive(Debug)]
pub struct SimLinkConfig {
    /// The link, the same at both ends; part of the key derivation, so two links sharing a seed
    /// by mistake still get different keys.
    pub link: LinkId,
    /// Which end this is.
    pub role: LinkRole,
    /// Bits per block; a multiple of 8. Both ends must agree.
    pub block_bits: u32,
    /// Wall-clock time at which the link started producing key; both ends must agree, or the
    /// slave end may refuse blocks the master already produced.
    pub start: UnixMillis,
}

/// One end of a simulated link.
#[derive(Debug)]
pub struct SimulatedLink {
    config: SimLinkConfig,
    model: Box<dyn LinkModel>,
    clock: Arc<dyn Clock>,
    /// ChaCha20 key derived from the seed and the link ID.
    stream_key: Zeroizing<[u8; 32]>,
    /// Tag of this link carried in block IDs.
    tag: [u8; 6],
    state: Mutex<EndState>,
}

#[derive(Debug, Default)]
struct EndState {
    /// Master: index of the next block to hand out.
    next_index: u64,
    /// Master: the file that keeps `next_index` across restarts, as a device keeps its place in
    /// its key stream; without one, a restarted master end would hand out blocks again.
    position_file: Option<std::path::PathBuf>,
    /// Slave: indices already handed out (each at most once).
    fetched: BTreeSet<u64>,
}

/// The seed is not usable.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    /// The seed text is not 64 hexadecimal digits.
    #[error("a link seed is {SEED_LEN} bytes written as {} hexadecimal digits", SEED_LEN * 2)]
    Malformed,
    /// The block size is not a positive multiple of 8 bits.
    #[error("block size must be a positive multiple of 8 bits, got {0}")]
    BlockBits(u32),
}

impl SimulatedLink {
    /// One end of a link whose ends share `seed`.
    pub fn new(
        config: SimLinkConfig,
        seed: &Secret,
        model: Box<dyn LinkModel>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, SeedError> {
        if config.block_bits == 0 || !config.block_bits.is_multiple_of(8) {
            return Err(SeedError::BlockBits(config.block_bits));
        }
        if seed.len() != SEED_LEN {
            return Err(SeedError::Malformed);
        }
        // The seed is used as an HMAC key to derive the per-link stream key and ID tag.
        let prf = hmac::Key::new(hmac::HMAC_SHA256, seed.expose());
        let mut stream_key = Zeroizing::new([0u8; 32]);
        let mut msg = b"qkd-sim link key\0".to_vec();
        msg.extend_from_slice(config.link.as_str().as_bytes());
        stream_key.copy_from_slice(hmac::sign(&prf, &msg).as_ref());
        let mut msg = b"qkd-sim link tag\0".to_vec();
        msg.extend_from_slice(config.link.as_str().as_bytes());
        let mut tag = [0u8; 6];
        tag.copy_from_slice(&hmac::sign(&prf, &msg).as_ref()[..6]);
        Ok(Self {
            config,
            model,
            clock,
            stream_key,
            tag,
            state: Mutex::new(EndState::default()),
        })
    }

    /// Keeps the master end's position in its key stream in `path` (created if missing), so that
    /// after a restart it resumes where it was and never hands out a block twice, as a real
    /// device does. The position is written (and synced) before blocks are handed out: a crash
    /// after that loses those blocks, never repeats them. The slave end keeps no file: it hands
    /// out only blocks whose IDs its peer names, and the nodes refuse any ID already used.
    pub fn with_position_file(self, path: std::path::PathBuf) -> std::io::Result<Self> {
        let next_index = match std::fs::read_to_string(&path) {
            Ok(text) => text.trim().parse::<u64>().map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: not a block index", path.display()),
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        {
            let mut st = self
                .state
                .lock()
                .map_err(|_| std::io::Error::other("poisoned"))?;
            st.next_index = st.next_index.max(next_index);
            st.position_file = Some(path);
        }
        Ok(self)
    }

    /// Parses a seed written as 64 hexadecimal digits (surrounding white space ignored).
    pub fn parse_seed(text: &str) -> Result<Secret, SeedError> {
        let bytes = Zeroizing::new(hex::decode(text.trim()).map_err(|_| SeedError::Malformed)?);
        if bytes.len() != SEED_LEN {
            return Err(SeedError::Malformed);
        }
        Ok(Secret::copy_from(&bytes))
    }

    /// A fresh random seed, hex-encoded, for writing into both ends' data directories.
    pub fn generate_seed_hex() -> Zeroizing<String> {
        let mut b = Zeroizing::new([0u8; SEED_LEN]);
        rand::rng().fill_bytes(&mut *b);
        Zeroizing::new(hex::encode(*b))
    }

    /// Number of whole blocks produced by now.
    fn produced_blocks(&self) -> u64 {
        let t = self.clock.now().saturating_sub(self.config.start);
        (self.model.cumulative_secret_bits(t) / u64::from(self.config.block_bits)).min(MAX_INDEX)
    }

    fn block_id(&self, index: u64) -> BlockId {
        let mut b = [0u8; 16];
        b[..6].copy_from_slice(&self.tag);
        b[10..].copy_from_slice(&index.to_be_bytes()[2..]);
        BlockId::from_uuid(uuid::Builder::from_custom_bytes(b).into_uuid())
    }

    fn index_of(&self, id: BlockId) -> Option<u64> {
        let b = id.as_bytes();
        let rebuilt = {
            let mut x = [0u8; 8];
            x[2..].copy_from_slice(&b[10..]);
            u64::from_be_bytes(x)
        };
        (b[..6] == self.tag && self.block_id(rebuilt) == id).then_some(rebuilt)
    }

    fn block(&self, index: u64) -> KeyBlock {
        let mut rng = ChaCha20Rng::from_seed(*self.stream_key);
        rng.set_stream(index);
        let mut key = Secret::zeroed(self.config.block_bits as usize / 8);
        rng.fill_bytes(key.expose_mut());
        KeyBlock {
            id: self.block_id(index),
            key,
        }
    }

    /// Errors with [`DeviceError::Unavailable`] when the model says the link is down now.
    pub fn ensure_up(&self) -> Result<(), DeviceError> {
        let t = self.clock.now().saturating_sub(self.config.start);
        match self.model.status(t).state {
            LinkState::Up => Ok(()),
            LinkState::Down { reason } | LinkState::Aborted { reason } => {
                Err(DeviceError::Unavailable(reason))
            }
        }
    }
}

#[async_trait]
impl KeySource for SimulatedLink {
    fn info(&self) -> SourceInfo {
        SourceInfo {
            kind: "simulated".into(),
            simulated: true,
            role: self.config.role,
        }
    }

    async fn status(&self) -> LinkStatus {
        self.model
            .status(self.clock.now().saturating_sub(self.config.start))
    }

    async fn next_blocks(&self, max_blocks: usize) -> Result<Vec<KeyBlock>, DeviceError> {
        if self.config.role != LinkRole::Master {
            return Err(DeviceError::WrongRole {
                needed: LinkRole::Master,
                actual: self.config.role,
            });
        }
        let produced = self.produced_blocks();
        let range = {
            let mut st = self
                .state
                .lock()
                .map_err(|_| DeviceError::Transport("poisoned".into()))?;
            let start = st.next_index;
            let end = produced.min(start.saturating_add(max_blocks as u64));
            if end <= start {
                return Ok(Vec::new());
            }
            if let Some(path) = &st.position_file {
                write_position(path, end).map_err(|e| {
                    DeviceError::Transport(format!(
                        "cannot record the key stream position in {}: {e}",
                        path.display()
                    ))
                })?;
            }
            st.next_index = end;
            start..end
        };
        Ok(range.map(|i| self.block(i)).collect())
    }

    async fn blocks_by_id(&self, ids: &[BlockId]) -> Result<Vec<KeyBlock>, DeviceError> {
        if self.config.role != LinkRole::Slave {
            return Err(DeviceError::WrongRole {
                needed: LinkRole::Slave,
                actual: self.config.role,
            });
        }
        // A link that is down now may still hand out blocks produced before the outage: the
        // device stored them. Only blocks not yet produced are refused.
        let produced = self.produced_blocks();
        let mut indices = Vec::with_capacity(ids.len());
        {
            let st = self
                .state
                .lock()
                .map_err(|_| DeviceError::Transport("poisoned".into()))?;
            for id in ids {
                match self.index_of(*id) {
                    Some(i)
                        if i < produced && !st.fetched.contains(&i) && !indices.contains(&i) =>
                    {
                        indices.push(i)
                    }
                    _ => return Err(DeviceError::UnknownBlock(*id)),
                }
            }
        }
        let mut st = self
            .state
            .lock()
            .map_err(|_| DeviceError::Transport("poisoned".into()))?;
        // Re-check under the same lock we insert with: a concurrent call may have taken one.
        if let Some(i) = indices.iter().find(|i| st.fetched.contains(i)) {
            return Err(DeviceError::UnknownBlock(self.block_id(*i)));
        }
        st.fetched.extend(indices.iter().copied());
        drop(st);
        Ok(indices.into_iter().map(|i| self.block(i)).collect())
    }
}

/// Writes `index` to `path` atomically and durably (temporary file, sync, rename, sync dir).
/// (The key manager has its own helper, `kms::durable`; the simulator may not depend on it.)
fn write_position(path: &std::path::Path, index: u64) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        writeln!(f, "{index}")?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ConstantRate;
    use qkd_types::ManualClock;

    fn pair(bits: u64) -> (SimulatedLink, SimulatedLink, ManualClock) {
        let clock = ManualClock::new(1_000);
        let seed = SimulatedLink::parse_seed(&"ab".repeat(32)).unwrap();
        let mk = |role| {
            SimulatedLink::new(
                SimLinkConfig {
                    link: LinkId::parse("A-B").unwrap(),
                    role,
                    block_bits: 1024,
                    start: 1_000,
                },
                &seed,
                Box::new(ConstantRate::new(bits)),
                Arc::new(clock.clone()),
            )
            .unwrap()
        };
        (mk(LinkRole::Master), mk(LinkRole::Slave), clock)
    }

    #[tokio::test]
    async fn a_restarted_master_end_resumes_where_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("A-B.position");
        let (master, slave, clock) = pair(1024 * 100);
        let master = master.with_position_file(file.clone()).unwrap();
        clock.advance(1_000);
        let first: Vec<BlockId> = master
            .next_blocks(10)
            .await
            .unwrap()
            .iter()
            .map(|b| b.id)
            .collect();
        assert_eq!(first.len(), 10);
        drop(master);
        // The same end again, as after a crash of its node: no block is handed out twice.
        let (again, _, _) = pair(1024 * 100);
        let again = again.with_position_file(file).unwrap();
        let clock2 = ManualClock::new(2_000);
        let again = SimulatedLink {
            clock: Arc::new(clock2),
            ..again
        };
        let next = again.next_blocks(200).await.unwrap();
        assert_eq!(next.len(), 90);
        assert!(next.iter().all(|b| !first.contains(&b.id)));
        // The slave end still serves every block, once.
        let ids: Vec<BlockId> = next.iter().map(|b| b.id).collect();
        assert_eq!(slave.blocks_by_id(&ids).await.unwrap().len(), 90);
    }

    #[tokio::test]
    async fn both_ends_see_identical_blocks_in_order() {
        let (m, s, clock) = pair(10_240); // 10 blocks per second
        assert!(m.next_blocks(100).await.unwrap().is_empty());
        clock.advance(1_000);
        let blocks = m.next_blocks(100).await.unwrap();
        assert_eq!(blocks.len(), 10);
        let ids: Vec<_> = blocks.iter().map(|b| b.id).collect();
        let mirrored = s.blocks_by_id(&ids).await.unwrap();
        for (a, b) in blocks.iter().zip(&mirrored) {
            assert_eq!(a.id, b.id);
            assert_eq!(a.key, b.key);
        }
        // Blocks differ from each other.
        assert_ne!(blocks[0].key, blocks[1].key);
        // Master never repeats, slave never hands a block twice.
        assert!(m.next_blocks(100).await.unwrap().is_empty());
        assert!(matches!(
            s.blocks_by_id(&ids[..1]).await,
            Err(DeviceError::UnknownBlock(_))
        ));
    }

    #[tokio::test]
    async fn slave_refuses_future_and_foreign_blocks() {
        let (m, s, clock) = pair(10_240);
        clock.advance(100); // one block
        let first = m.next_blocks(1).await.unwrap();
        assert_eq!(first.len(), 1);
        // Block 5 does not exist yet at this time.
        let future = m.block_id(5);
        assert!(matches!(
            s.blocks_by_id(&[future]).await,
            Err(DeviceError::UnknownBlock(_))
        ));
        assert!(matches!(
            s.blocks_by_id(&[BlockId::random()]).await,
            Err(DeviceError::UnknownBlock(_))
        ));
        // Duplicates within one call are refused and consume nothing.
        assert!(s.blocks_by_id(&[first[0].id, first[0].id]).await.is_err());
        assert_eq!(s.blocks_by_id(&[first[0].id]).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn roles_are_enforced_and_seeds_separate_links() {
        let (m, s, clock) = pair(10_240);
        clock.advance(1_000);
        assert!(matches!(
            s.next_blocks(1).await,
            Err(DeviceError::WrongRole { .. })
        ));
        assert!(matches!(
            m.blocks_by_id(&[]).await,
            Err(DeviceError::WrongRole { .. })
        ));
        assert!(m.info().simulated);
        let other = SimulatedLink::new(
            SimLinkConfig {
                link: LinkId::parse("A-C").unwrap(),
                role: LinkRole::Master,
                block_bits: 1024,
                start: 1_000,
            },
            &SimulatedLink::parse_seed(&"ab".repeat(32)).unwrap(),
            Box::new(ConstantRate::new(10_240)),
            Arc::new(clock.clone()),
        )
        .unwrap();
        assert_ne!(
            other.next_blocks(1).await.unwrap()[0].key,
            m.next_blocks(1).await.unwrap()[0].key
        );
    }

    #[test]
    fn seed_parsing() {
        assert!(SimulatedLink::parse_seed("zz").is_err());
        assert!(SimulatedLink::parse_seed(&"ab".repeat(31)).is_err());
        assert!(SimulatedLink::parse_seed(&format!(" {}\n", "0f".repeat(32))).is_ok());
        assert_eq!(SimulatedLink::generate_seed_hex().len(), 64);
    }
}
