//! The source's part of a relayed batch, sans-IO: the counterpart of
//! [`super::destination`].
//!
//! [`SourceBatch::start`] decides everything a batch is (its destination, policy and suite,
//! key IDs, the relayed keys from the CSPRNG, message 1) over a route the caller computed;
//! [`SourceBatch::on_answer`] takes message 2 and gives message 3, after which the destination
//! may commit (so a failure from then on leaves keys there: [`SourceBatch::maybe_committed`]);
//! [`SourceBatch::on_ack`] takes message 4 and releases the keys. The shell sends the messages,
//! stores the keys only after the ack, and voids the batch at the destination on any failure.

use qkd_types::{KeyId, KeyStreamId, NodeId, SaeId, Secret, UnixMillis};
use rand::RngCore;

use super::destination::{Directory, Offer, StreamSlice};
use super::hop::AUTH_LEN;
use crate::manager::e2e::{self, E2eError};

/// What a batch is for.
#[derive(Debug, Clone)]
pub struct BatchSpec {
    /// The master SAE (attached here).
    pub master: SaeId,
    /// The slaves, all attached at one node.
    pub slaves: Vec<SaeId>,
    /// Key size in bits.
    pub size_bits: u32,
    /// Keys in the batch.
    pub number: usize,
    /// Keys that wrap multicast keys, never delivered themselves.
    pub wrap: bool,
    /// Keys for the pair's pool, at its default size.
    pub pool: bool,
    /// Indices of a key stream the batch reserves: its key IDs are the stream's, not random.
    pub stream: Option<StreamRun>,
}

/// A run of indices of a key stream, reserved by one batch.
#[derive(Debug, Clone)]
pub struct StreamRun {
    /// The stream.
    pub id: KeyStreamId,
    /// The IDs of the run's keys, in index order.
    pub key_ids: Vec<KeyId>,
    /// The index of the first.
    pub first_index: u64,
    /// When the keys expire at both ends.
    pub expires_at: UnixMillis,
}

/// Why a batch cannot start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    /// A slave is not configured anywhere.
    #[error("a slave SAE is not configured")]
    UnknownSlave,
    /// Slaves at different nodes need a multicast, not one batch.
    #[error("additional slaves at different nodes")]
    SlavesApart,
    /// The slaves' pairs differ in policy or suite.
    #[error("the slaves' pairs differ in policy or suite")]
    MixedProfiles,
    /// A stream batch whose key IDs do not match its number of keys.
    #[error("stream run and batch size differ")]
    StreamRun,
}

/// Where a batch must go and how much link key each hop needs, before a route is chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Needs {
    /// The slaves' node.
    pub dest: NodeId,
    /// Link key each hop uses (pad and MAC key); 0 if no QKD key is relayed.
    pub link_bytes: u64,
}

/// Checks a batch can be made and says what route it needs.
pub fn needs(dir: &dyn Directory, spec: &BatchSpec) -> Result<Needs, StartError> {
    if spec
        .stream
        .as_ref()
        .is_some_and(|s| s.key_ids.len() != spec.number)
    {
        return Err(StartError::StreamRun);
    }
    let first = spec.slaves.first().ok_or(StartError::UnknownSlave)?;
    let dest = dir.node_of(first).ok_or(StartError::UnknownSlave)?.clone();
    if spec.slaves.iter().any(|s| dir.node_of(s) != Some(&dest)) {
        return Err(StartError::SlavesApart);
    }
    let mode = dir.mode(&spec.master, first);
    // One batch, one policy and suite: never make keys for a pair under another pair's.
    if spec
        .slaves
        .iter()
        .any(|s| dir.mode(&spec.master, s) != mode)
        && !dir.mixed_profiles_allowed()
    {
        return Err(StartError::MixedProfiles);
    }
    let relayed_len = u64::from(mode.relayed_len(spec.size_bits));
    let link_bytes = if relayed_len == 0 {
        0
    } else {
        relayed_len * spec.number as u64 + u64::from(AUTH_LEN)
    };
    Ok(Needs { dest, link_bytes })
}

#[derive(Debug)]
enum Phase {
    /// Message 1 sent; waiting for message 2.
    Offered(e2e::SourceState),
    /// Message 3 sent; waiting for the ack. The destination may have committed.
    Confirmed(e2e::SourceState),
    /// Failed or finished.
    Done,
}

/// One batch at its source, between its messages.
#[derive(Debug)]
pub struct SourceBatch {
    relay_id: [u8; 16],
    key_ids: Vec<KeyId>,
    phase: Phase,
}

/// The first hop's content: the header, the relayed keys (to travel under the one-time pad)
/// and message 1.
#[derive(Debug)]
pub struct Outgoing {
    /// The header every node on the path reads.
    pub offer: Offer,
    /// The relayed keys, one `relayed_len` run per key.
    pub payload: Secret,
    /// End-to-end message 1 (empty for QKD-only).
    pub msg1: Vec<u8>,
}

impl SourceBatch {
    /// Starts a batch over `path` (this node first, the slaves' node last): draws its IDs and
    /// relayed keys from `rng` and makes message 1.
    pub fn start(
        dir: &dyn Directory,
        spec: &BatchSpec,
        path: Vec<NodeId>,
        rng: &mut dyn RngCore,
    ) -> Result<(Self, Outgoing), E2eError> {
        let mode = dir.mode(&spec.master, &spec.slaves[0]);
        let relayed_len = mode.relayed_len(spec.size_bits);
        let mut id = || {
            let mut b = [0u8; 16];
            rng.fill_bytes(&mut b);
            b
        };
        let relay_id = id();
        let key_ids: Vec<KeyId> = match &spec.stream {
            Some(s) => s.key_ids.clone(),
            None => (0..spec.number).map(|_| uuid_v4(id())).collect(),
        };
        let relay_key_ids: Vec<KeyId> = (0..spec.number).map(|_| uuid_v4(id())).collect();
        let mut payload = Secret::zeroed(relayed_len as usize * spec.number);
        rng.fill_bytes(payload.expose_mut());
        let dest = path.last().cloned().unwrap_or_else(|| dir.node().clone());
        let ctx = e2e::Context {
            mode,
            kme_source: dir.kme().clone(),
            kme_dest: dir.kme_of(&dest),
            master: spec.master.clone(),
            slaves: spec.slaves.clone(),
            size_bits: spec.size_bits,
            key_ids: key_ids.clone(),
            relay_key_ids: relay_key_ids.clone(),
        };
        let (state, msg1) = e2e::source_start(dir.e2e(), &ctx, &payload)?;
        let offer = Offer {
            relay_id,
            path,
            master: spec.master.clone(),
            slaves: spec.slaves.clone(),
            size_bits: spec.size_bits,
            policy: mode.policy_name().to_string(),
            suite: mode.suite_name().to_string(),
            key_ids: key_ids.clone(),
            relay_key_ids,
            relayed_len,
            wrap: spec.wrap,
            pool: spec.pool,
            stream: spec.stream.as_ref().map(|s| StreamSlice {
                id: s.id,
                first_index: s.first_index,
                expires_at: s.expires_at,
            }),
        };
        let batch = Self {
            relay_id,
            key_ids,
            phase: Phase::Offered(state),
        };
        Ok((
            batch,
            Outgoing {
                offer,
                payload,
                msg1,
            },
        ))
    }

    /// The batch's ID (the relay ID every message of it carries).
    pub fn relay_id(&self) -> [u8; 16] {
        self.relay_id
    }

    /// Whether the destination may hold the keys: message 3 was made, so it may have been
    /// delivered and committed. Before that a failed batch left nothing anywhere.
    pub fn maybe_committed(&self) -> bool {
        matches!(self.phase, Phase::Confirmed(_))
    }

    /// Message 2 from the destination: message 3, to forward along the path.
    pub fn on_answer(&mut self, dir: &dyn Directory, msg2: &[u8]) -> Result<Vec<u8>, E2eError> {
        let Phase::Offered(state) = std::mem::replace(&mut self.phase, Phase::Done) else {
            return Err(E2eError::Order);
        };
        let (state, msg3) = e2e::source_finish(dir.e2e(), state, msg2)?;
        self.phase = Phase::Confirmed(state);
        Ok(msg3)
    }

    /// The acknowledgement: the destination has committed; the keys with their IDs.
    pub fn on_ack(
        &mut self,
        dir: &dyn Directory,
        ack: &[u8],
    ) -> Result<Vec<(KeyId, Secret)>, E2eError> {
        let Phase::Confirmed(state) = std::mem::replace(&mut self.phase, Phase::Done) else {
            return Err(E2eError::Order);
        };
        let keys = e2e::source_ack(dir.e2e(), state, ack)?;
        Ok(std::mem::take(&mut self.key_ids)
            .into_iter()
            .zip(keys)
            .collect())
    }
}

/// A random (version 4) UUID from 16 random bytes, as every key ID is.
fn uuid_v4(mut b: [u8; 16]) -> KeyId {
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    KeyId::from_bytes(b)
}
