//! The end-to-end authenticated exchange of docs/hybrid.md, "Exchange" as two sans-IO state machines: the
//! [`Initiator`] (source KME A, master side) and the responder (destination KME B: parse with
//! [`ReceivedInit`], check with [`ReceivedInit::verify`], answer with [`VerifiedInit::respond`],
//! finish with [`Responder::handle_confirm`]).
//!
//! ```text
//! 1  A→B  HybridInit     info_batch fields, MA, sigA = HSig(sk_A, "QKMS-HYB-v1 sigA" ‖ SHA-384(enc(info_batch) ‖ enc(MA)))
//! 2  B→A  HybridReply    MB, sigB = HSig(sk_B, "QKMS-HYB-v1 sigB" ‖ TH), tagB
//! 3  A→B  HybridConfirm  tagA                      (B verifies, derives K_i, commits them)
//! 4  B→A  HybridAck      tagAck                    (A verifies; only now may A release K_i)
//! ```
//!
//! Each step consumes its state, so a state machine that returned an error is gone, with its
//! ephemeral keys and shared secrets (all zeroized on drop). Nothing here persists anything:
//! the caller stores `(KME_A, nonce_A)` through its [`ReplayGuard`] and commits keys. Timeouts
//! belong to the caller too: an exchange that does not finish in time is void (drop the state).

use std::collections::HashSet;

use qkd_proto::hybrid as pb;
use qkd_types::{KeyId, KmeId, SaeId, Secret};

use super::combiner::{
    self, Batch, ConfirmKeys, Context, HASH_LEN, HybridKey, KeySlot, Ma, Mb, NONCE_LEN,
    SharedSecrets, StaticKeyHashes, check_qkd, verify_tag,
};
use super::config::{Policy, Suite};
use super::error::HybridError;
use super::identity::{LocalIdentity, PeerPublicKeys, PinnedPeers};
use super::kem::{self, ClassicalEphemeral, PqDecapsulationKey};

/// B's replay protection: remembers every `(KME_A, nonce_A)` it answered.
///
/// A real implementation stores the pair **durably** before returning `true`; if it cannot, it
/// must return `false` (fail closed). Expiry is safe once an exchange that old would be refused
/// anyway (the caller's timeout).
pub trait ReplayGuard {
    /// Records the pair; returns `false` if it was seen before (or cannot be recorded).
    fn check_and_record(&mut self, kme_a: &KmeId, nonce_a: &[u8; NONCE_LEN]) -> bool;
}

/// A [`ReplayGuard`] in memory, for tests and for single-process use where a restart also drops
/// every exchange in flight.
#[derive(Debug, Default)]
pub struct MemoryReplayGuard {
    seen: HashSet<(KmeId, [u8; NONCE_LEN])>,
}

impl ReplayGuard for MemoryReplayGuard {
    fn check_and_record(&mut self, kme_a: &KmeId, nonce_a: &[u8; NONCE_LEN]) -> bool {
        self.seen.insert((kme_a.clone(), *nonce_a))
    }
}

/// A [`ReplayGuard`] in memory whose entries last as long as their exchange could still complete
/// (its validity window), so it holds only the exchanges of one window, never grows without
/// bound, and needs no persistence: a message 1 replayed after its window (or after a restart)
/// gets a fresh answer that nobody can confirm, since message 3 needs secrets only the real
/// initiator had (docs/design.md, "Replay"). Sans-IO: the caller passes the time.
#[derive(Debug, Default)]
pub struct WindowReplayGuard {
    seen: HashSet<(KmeId, [u8; NONCE_LEN])>,
    by_expiry: std::collections::BTreeSet<(u64, KmeId, [u8; NONCE_LEN])>,
    valid_until: u64,
}

impl WindowReplayGuard {
    /// Forgets every entry whose window ended by `now`; entries recorded next last until
    /// `valid_until` (the deadline of the exchange about to be answered).
    pub fn arm(&mut self, now: u64, valid_until: u64) -> &mut Self {
        while let Some(first) = self.by_expiry.first().filter(|e| e.0 <= now).cloned() {
            self.by_expiry.remove(&first);
            self.seen.remove(&(first.1, first.2));
        }
        self.valid_until = valid_until;
        self
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

impl ReplayGuard for WindowReplayGuard {
    fn check_and_record(&mut self, kme_a: &KmeId, nonce_a: &[u8; NONCE_LEN]) -> bool {
        if !self.seen.insert((kme_a.clone(), *nonce_a)) {
            return false;
        }
        self.by_expiry
            .insert((self.valid_until, kme_a.clone(), *nonce_a));
        true
    }
}

/// Source side (A), after sending message 1 and before message 2 arrives.
#[derive(Debug)]
pub struct Initiator {
    batch: Batch,
    peer: PeerPublicKeys,
    ma: Vec<u8>,
    nonce_a: [u8; NONCE_LEN],
    classical: Option<ClassicalEphemeral>,
    pq: PqDecapsulationKey,
    qkd: Vec<Secret>,
    static_to_b: Option<Secret>,
}

/// Source side (A), after sending message 3: holds the derived keys until B's ack.
#[derive(Debug)]
pub struct AwaitingAck {
    exchange_id: [u8; NONCE_LEN],
    keys: Vec<HybridKey>,
    expected_ack: [u8; HASH_LEN],
}

/// Message 1 as received by B: decoded, **not yet authenticated**. Its IDs serve only to look up
/// the configuration to verify it against.
#[derive(Debug, Clone)]
pub struct ReceivedInit {
    suite: String,
    policy: String,
    kme_a: KmeId,
    kme_b: KmeId,
    sae_master: SaeId,
    sae_slaves: Vec<SaeId>,
    size_bits: u32,
    slots: Vec<KeySlot>,
    ma: Vec<u8>,
    sig_a: Vec<u8>,
}

/// Message 1 after B checked suite, policy, identities and A's signature.
#[derive(Debug)]
pub struct VerifiedInit {
    batch: Batch,
    peer: PeerPublicKeys,
    ma_bytes: Vec<u8>,
    ma: Ma,
}

/// Destination side (B), after sending message 2 and before message 3 arrives.
#[derive(Debug)]
pub struct Responder {
    nonce_a: [u8; NONCE_LEN],
    batch: Batch,
    ma: Vec<u8>,
    mb: Vec<u8>,
    th: [u8; HASH_LEN],
    secrets: SharedSecrets,
    confirm: ConfirmKeys,
}

/// Destination side (B), after message 3 verified: send the ack once the keys are committed.
#[derive(Debug)]
pub struct PendingAck {
    exchange_id: [u8; NONCE_LEN],
    tag: [u8; HASH_LEN],
}

impl Initiator {
    /// Starts an exchange for one batch: `context.kme_a` must be `local`, `context.kme_b` the
    /// pinned `peer`. `qkd_keys` holds one 32-byte relayed key per slot, in slot order, for
    /// `QKD+` policies, and nothing for `PQ+T` (anything else fails closed). Returns the state
    /// and message 1.
    pub fn start<R: rand::CryptoRng + ?Sized>(
        local: &LocalIdentity,
        peer: &PeerPublicKeys,
        context: Context,
        slots: Vec<KeySlot>,
        qkd_keys: Vec<Secret>,
        rng: &mut R,
    ) -> Result<(Self, pb::HybridInit), HybridError> {
        let suite = context.suite;
        let policy = context.policy;
        if !suite.is_available() {
            return Err(HybridError::SuiteUnavailable(suite));
        }
        if &context.kme_a != local.kme() {
            return Err(HybridError::BadBatch("KME_A is not this node"));
        }
        if &context.kme_b != peer.kme() {
            return Err(HybridError::BadBatch("pinned keys are not KME_B's"));
        }
        let hashes = static_hashes(suite, local, peer, true)?;
        let batch = Batch::new(context, slots, hashes)?;
        check_qkd(&batch, &qkd_keys)?;

        let mut nonce_a = [0u8; NONCE_LEN];
        rng.fill_bytes(&mut nonce_a);
        let classical = if policy.uses_classical() {
            Some(ClassicalEphemeral::generate(suite.classical(), rng)?)
        } else {
            None
        };
        let (pq, ek_pq) = kem::pq_generate(suite.ephemeral_kem())?;
        let (ct_static, static_to_b) = match (suite.static_kem(), peer.static_kem()) {
            (Some(k), Some(pk)) => {
                let (ct, ss) = kem::pq_encapsulate(k, pk.as_bytes(), "pinned static key of B")?;
                (ct, Some(ss))
            }
            _ => (Vec::new(), None),
        };
        let ma = Ma {
            ek_pq,
            epk_t: classical
                .as_ref()
                .map(|c| c.public().to_vec())
                .unwrap_or_default(),
            nonce: nonce_a,
            ct_static,
        }
        .encode();
        let sig_a = local
            .signing()
            .sign(&combiner::sig_a_message(batch.info_batch(), &ma))?;
        let ctx = batch.context();
        let msg = pb::HybridInit {
            suite: suite.name().to_owned(),
            policy: policy.name().to_owned(),
            kme_a: ctx.kme_a.to_string(),
            kme_b: ctx.kme_b.to_string(),
            sae_master: ctx.sae_master.to_string(),
            sae_slaves: ctx.sae_slaves.iter().map(ToString::to_string).collect(),
            size_bits: ctx.size_bits,
            key_ids: batch
                .slots()
                .iter()
                .map(|s| s.key_id.as_bytes().to_vec())
                .collect(),
            relay_key_ids: batch
                .slots()
                .iter()
                .filter_map(|s| s.relay_key_id.map(|r| r.as_bytes().to_vec()))
                .collect(),
            ma: ma.clone(),
            sig_a,
        };
        Ok((
            Self {
                batch,
                peer: peer.clone(),
                ma,
                nonce_a,
                classical,
                pq,
                qkd: qkd_keys,
                static_to_b,
            },
            msg,
        ))
    }

    /// `nonce_A`, which also names the exchange in messages 2 to 4.
    pub fn exchange_id(&self) -> &[u8; NONCE_LEN] {
        &self.nonce_a
    }

    /// The batch being exchanged.
    pub fn batch(&self) -> &Batch {
        &self.batch
    }

    /// Handles message 2: checks B's signature, derives the secrets, checks tagB, derives the
    /// keys and returns message 3. The keys stay inside [`AwaitingAck`] until B's ack.
    pub fn handle_reply(
        self,
        local: &LocalIdentity,
        reply: &pb::HybridReply,
    ) -> Result<(AwaitingAck, pb::HybridConfirm), HybridError> {
        if reply.exchange_id != self.nonce_a {
            return Err(HybridError::WrongExchange);
        }
        if local.kme() != &self.batch.context().kme_a {
            return Err(HybridError::BadBatch("KME_A is not this node"));
        }
        let suite = self.batch.context().suite;
        let policy = self.batch.context().policy;
        let mb = Mb::parse(suite, policy, &reply.mb)?;
        let th = combiner::transcript_hash(self.batch.info_batch(), &self.ma, &reply.mb);
        self.peer
            .verify(&combiner::sig_b_message(&th), &reply.sig_b, "sigB")?;

        let classical = match &self.classical {
            Some(c) => Some(c.agree(suite.classical(), &mb.epk_t)?),
            None => None,
        };
        let pq = kem::pq_decapsulate(suite.ephemeral_kem(), &self.pq, &mb.ct_pq, "ct_PQ")?;
        let static_to_a = match (suite.static_kem(), local.static_kem()) {
            (Some(_), Some(own)) => Some(own.decapsulate(&mb.ct_static, "ct_sA")?),
            (Some(_), None) => return Err(HybridError::StaticKeys("no local static key")),
            _ => None,
        };
        let secrets = SharedSecrets {
            qkd: self.qkd,
            classical,
            pq,
            static_to_b: self.static_to_b,
            static_to_a,
        };
        let confirm = combiner::confirm_keys(&self.batch, &secrets, &th)?;
        verify_tag(&combiner::tag_b(&confirm, &th), &reply.tag_b, "tagB")?;
        let keys = combiner::derive_keys(&self.batch, &self.ma, &reply.mb, &secrets)?;
        let msg = pb::HybridConfirm {
            exchange_id: self.nonce_a.to_vec(),
            tag_a: combiner::tag_a(&confirm, &th).to_vec(),
        };
        Ok((
            AwaitingAck {
                exchange_id: self.nonce_a,
                keys,
                expected_ack: combiner::tag_ack(&confirm, &th),
            },
            msg,
        ))
    }
}

impl AwaitingAck {
    /// `nonce_A`.
    pub fn exchange_id(&self) -> &[u8; NONCE_LEN] {
        &self.exchange_id
    }

    /// The derived keys, so that the caller can commit them durably while the ack is on its way.
    /// They must not reach the master SAE before [`AwaitingAck::handle_ack`] succeeds.
    pub fn pending_keys(&self) -> &[HybridKey] {
        &self.keys
    }

    /// Handles message 4: B verified tagA and committed. Returns the keys, now releasable once
    /// the caller's own commit succeeded.
    pub fn handle_ack(self, ack: &pb::HybridAck) -> Result<Vec<HybridKey>, HybridError> {
        if ack.exchange_id != self.exchange_id {
            return Err(HybridError::WrongExchange);
        }
        verify_tag(&self.expected_ack, &ack.tag_ack, "ack")?;
        Ok(self.keys)
    }
}

impl ReceivedInit {
    /// Decodes message 1: IDs parse, key IDs are 16 bytes, relay key IDs are absent or one per
    /// key. Suite, policy and signature are checked by [`ReceivedInit::verify`].
    pub fn parse(msg: &pb::HybridInit) -> Result<Self, HybridError> {
        let kme = |s: &str| KmeId::parse(s).map_err(|_| HybridError::Malformed("KME ID"));
        let sae = |s: &str| SaeId::parse(s).map_err(|_| HybridError::Malformed("SAE ID"));
        let uuid = |b: &[u8]| {
            <[u8; 16]>::try_from(b)
                .map(KeyId::from_bytes)
                .map_err(|_| HybridError::Malformed("key ID"))
        };
        if msg.key_ids.is_empty() || msg.key_ids.len() > combiner::MAX_BATCH {
            return Err(HybridError::Malformed("key ID count"));
        }
        if !msg.relay_key_ids.is_empty() && msg.relay_key_ids.len() != msg.key_ids.len() {
            return Err(HybridError::Malformed("relay key ID count"));
        }
        if msg.sae_slaves.len() > 64 {
            return Err(HybridError::Malformed("slave SAE count"));
        }
        let mut slots = Vec::with_capacity(msg.key_ids.len());
        for (i, k) in msg.key_ids.iter().enumerate() {
            slots.push(KeySlot {
                key_id: uuid(k)?,
                relay_key_id: match msg.relay_key_ids.get(i) {
                    Some(r) => Some(uuid(r)?),
                    None => None,
                },
            });
        }
        Ok(Self {
            suite: msg.suite.clone(),
            policy: msg.policy.clone(),
            kme_a: kme(&msg.kme_a)?,
            kme_b: kme(&msg.kme_b)?,
            sae_master: sae(&msg.sae_master)?,
            sae_slaves: msg
                .sae_slaves
                .iter()
                .map(|s| sae(s))
                .collect::<Result<_, _>>()?,
            size_bits: msg.size_bits,
            slots,
            ma: msg.ma.clone(),
            sig_a: msg.sig_a.clone(),
        })
    }

    /// The claimed source KME (unauthenticated until verified).
    pub fn kme_a(&self) -> &KmeId {
        &self.kme_a
    }

    /// The claimed master SAE (unauthenticated until verified).
    pub fn sae_master(&self) -> &SaeId {
        &self.sae_master
    }

    /// The claimed slave SAEs (unauthenticated until verified).
    pub fn sae_slaves(&self) -> &[SaeId] {
        &self.sae_slaves
    }

    /// Checks message 1 against B's own configuration for this pair (`suite`, `policy`, never
    /// negotiated), that KME_B is this node and KME_A a pinned peer, and A's hybrid signature.
    pub fn verify(
        self,
        local: &LocalIdentity,
        peers: &PinnedPeers,
        suite: Suite,
        policy: Policy,
    ) -> Result<VerifiedInit, HybridError> {
        if self.suite != suite.name() {
            return Err(HybridError::SuiteMismatch {
                configured: suite,
                received: self.suite,
            });
        }
        if self.policy != policy.name() {
            return Err(HybridError::PolicyMismatch {
                configured: policy,
                received: self.policy,
            });
        }
        if !suite.is_available() {
            return Err(HybridError::SuiteUnavailable(suite));
        }
        if &self.kme_b != local.kme() {
            return Err(HybridError::WrongIdentity("KME_B is not this node"));
        }
        if self.kme_a == self.kme_b {
            return Err(HybridError::WrongIdentity("KME_A equals KME_B"));
        }
        let peer = peers
            .get(&self.kme_a)
            .ok_or_else(|| HybridError::UnknownPeer(self.kme_a.to_string()))?;
        let hashes = static_hashes(suite, local, peer, false)?;
        let context = Context {
            suite,
            policy,
            kme_a: self.kme_a,
            kme_b: self.kme_b,
            sae_master: self.sae_master,
            sae_slaves: self.sae_slaves,
            size_bits: self.size_bits,
        };
        let batch = Batch::new(context, self.slots, hashes).map_err(|e| match e {
            HybridError::BadSize(_) => HybridError::Malformed("size_bits"),
            HybridError::BadBatch(s) | HybridError::QkdKeys(s) => HybridError::Malformed(s),
            other => other,
        })?;
        let ma = Ma::parse(suite, policy, &self.ma)?;
        peer.verify(
            &combiner::sig_a_message(batch.info_batch(), &self.ma),
            &self.sig_a,
            "sigA",
        )?;
        Ok(VerifiedInit {
            batch,
            peer: peer.clone(),
            ma_bytes: self.ma,
            ma,
        })
    }
}

impl VerifiedInit {
    /// The authenticated source KME.
    pub fn kme_a(&self) -> &KmeId {
        &self.batch.context().kme_a
    }

    /// `nonce_A`: the caller's replay store keys on `(KME_A, nonce_A)`; also the exchange ID.
    pub fn nonce_a(&self) -> &[u8; NONCE_LEN] {
        &self.ma.nonce
    }

    /// The authenticated batch (context, key IDs, relay key IDs): the caller checks the key IDs
    /// are new and looks up the relayed QKD keys by relay key ID (unknown or consumed: refuse).
    pub fn batch(&self) -> &Batch {
        &self.batch
    }

    /// Answers message 1: records `(KME_A, nonce_A)` through `replay` (refusing a repeat), runs
    /// the KEM and ECDH, signs the transcript and returns message 2. `qkd_keys` are the relayed
    /// keys in slot order (`QKD+` policies), or empty (`PQ+T`).
    pub fn respond<G: ReplayGuard + ?Sized, R: rand::CryptoRng + ?Sized>(
        self,
        local: &LocalIdentity,
        qkd_keys: Vec<Secret>,
        replay: &mut G,
        rng: &mut R,
    ) -> Result<(Responder, pb::HybridReply), HybridError> {
        check_qkd(&self.batch, &qkd_keys)?;
        if !replay.check_and_record(self.kme_a(), &self.ma.nonce) {
            return Err(HybridError::Replay);
        }
        let suite = self.batch.context().suite;
        let policy = self.batch.context().policy;
        let (epk_t, classical) = if policy.uses_classical() {
            let eph = ClassicalEphemeral::generate(suite.classical(), rng)?;
            let ss = eph.agree(suite.classical(), &self.ma.epk_t)?;
            (eph.public().to_vec(), Some(ss))
        } else {
            (Vec::new(), None)
        };
        let (ct_pq, pq) = kem::pq_encapsulate(suite.ephemeral_kem(), &self.ma.ek_pq, "ek_PQ")?;
        let (ct_static, static_to_b, static_to_a) = match (
            suite.static_kem(),
            local.static_kem(),
            self.peer.static_kem(),
        ) {
            (Some(k), Some(own), Some(theirs)) => {
                let ss_b = own.decapsulate(&self.ma.ct_static, "ct_sB")?;
                let (ct, ss_a) =
                    kem::pq_encapsulate(k, theirs.as_bytes(), "pinned static key of A")?;
                (ct, Some(ss_b), Some(ss_a))
            }
            (Some(_), _, _) => return Err(HybridError::StaticKeys("missing at B")),
            _ => (Vec::new(), None, None),
        };
        let mut nonce_b = [0u8; NONCE_LEN];
        rng.fill_bytes(&mut nonce_b);
        let mb = Mb {
            ct_pq,
            epk_t,
            nonce: nonce_b,
            ct_static,
        }
        .encode();
        let th = combiner::transcript_hash(self.batch.info_batch(), &self.ma_bytes, &mb);
        let sig_b = local.signing().sign(&combiner::sig_b_message(&th))?;
        let secrets = SharedSecrets {
            qkd: qkd_keys,
            classical,
            pq,
            static_to_b,
            static_to_a,
        };
        let confirm = combiner::confirm_keys(&self.batch, &secrets, &th)?;
        let msg = pb::HybridReply {
            exchange_id: self.ma.nonce.to_vec(),
            mb: mb.clone(),
            sig_b,
            tag_b: combiner::tag_b(&confirm, &th).to_vec(),
        };
        Ok((
            Responder {
                nonce_a: self.ma.nonce,
                batch: self.batch,
                ma: self.ma_bytes,
                mb,
                th,
                secrets,
                confirm,
            },
            msg,
        ))
    }
}

impl Responder {
    /// `nonce_A`.
    pub fn exchange_id(&self) -> &[u8; NONCE_LEN] {
        &self.nonce_a
    }

    /// The batch.
    pub fn batch(&self) -> &Batch {
        &self.batch
    }

    /// Handles message 3: checks tagA (constant time) and derives the keys. Commit them, then
    /// call [`PendingAck::ack`] for message 4; release them to the slave SAEs only then.
    pub fn handle_confirm(
        self,
        msg: &pb::HybridConfirm,
    ) -> Result<(Vec<HybridKey>, PendingAck), HybridError> {
        if msg.exchange_id != self.nonce_a {
            return Err(HybridError::WrongExchange);
        }
        verify_tag(
            &combiner::tag_a(&self.confirm, &self.th),
            &msg.tag_a,
            "tagA",
        )?;
        let keys = combiner::derive_keys(&self.batch, &self.ma, &self.mb, &self.secrets)?;
        Ok((
            keys,
            PendingAck {
                exchange_id: self.nonce_a,
                tag: combiner::tag_ack(&self.confirm, &self.th),
            },
        ))
    }
}

impl PendingAck {
    /// Message 4. Send it only after the keys are committed.
    pub fn ack(self) -> pb::HybridAck {
        pb::HybridAck {
            exchange_id: self.exchange_id.to_vec(),
            tag_ack: self.tag.to_vec(),
        }
    }
}

// ---- private helpers ----

/// Static key hashes for static suites: both ends must hold pinned static keys of the suite's
/// KEM (never one-sided).
fn static_hashes(
    suite: Suite,
    local: &LocalIdentity,
    peer: &PeerPublicKeys,
    local_is_a: bool,
) -> Result<Option<StaticKeyHashes>, HybridError> {
    let Some(k) = suite.static_kem() else {
        return Ok(None);
    };
    let own = local
        .static_kem()
        .filter(|s| s.public_key().kem() == k)
        .ok_or(HybridError::StaticKeys(
            "no local static key of the suite's KEM",
        ))?;
    let theirs = peer
        .static_kem()
        .filter(|s| s.kem() == k)
        .ok_or(HybridError::StaticKeys("no pinned static key of the peer"))?;
    let (a, b) = if local_is_a {
        (own.public_key().fingerprint(), theirs.fingerprint())
    } else {
        (theirs.fingerprint(), own.public_key().fingerprint())
    };
    Ok(Some(StaticKeyHashes { a, b }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_window_replay_guard_refuses_repeats_until_the_window_closes_and_stays_bounded() {
        let a = KmeId::parse("KME-A").unwrap();
        let mut g = WindowReplayGuard::default();
        assert!(g.arm(1_000, 5_000).check_and_record(&a, &[1; NONCE_LEN]));
        assert!(!g.arm(4_999, 9_000).check_and_record(&a, &[1; NONCE_LEN]));
        assert!(g.arm(4_999, 9_000).check_and_record(&a, &[2; NONCE_LEN]));
        // The first exchange's window closed at 5 000: it is forgotten, the second is not.
        g.arm(5_000, 10_000);
        assert_eq!(g.len(), 1);
        assert!(!g.check_and_record(&a, &[2; NONCE_LEN]));
        // However many exchanges pass, only those of one window are held.
        for t in 0..10_000u64 {
            let mut nonce = [0u8; NONCE_LEN];
            nonce[..8].copy_from_slice(&t.to_be_bytes());
            assert!(
                g.arm(20_000 + t, 20_000 + t + 100)
                    .check_and_record(&a, &nonce)
            );
        }
        assert!(g.len() <= 101, "{}", g.len());
    }
}
