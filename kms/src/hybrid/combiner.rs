//! The QKMS-HYB-v1 combiner, byte for byte as docs/hybrid.md ("Combiner") specifies (ETSI TS 103 744
//! CatKDF with HKDF-SHA-384, `psk := k_QKD`), and the key-confirmation derivations ("Exchange").
//!
//! Everything here is a pure function of public bytes and [`Secret`]s: no randomness, no I/O, no
//! parsing of KEM values (public keys and ciphertexts are opaque byte strings of the suite's
//! lengths). That is what the known-answer vectors in `kms/tests/vectors/` exercise.
//!
//! Encodings (integers big-endian): `enc(x) = u32be(|x|) ‖ x`, `lst(x1..xn) = u32be(n) ‖ enc(x1)
//! ‖ … ‖ enc(xn)`, IDs as their UTF-8 bytes, UUIDs as their 16-byte binary form.
//!
//! Two points the spec leaves open are fixed here:
//! * an absent relay key ID (policy `PQ+T`) is encoded as the empty string, so the relay list of
//!   `info_batch` still has N entries;
//! * for suites with mutual static KEM keys, `common` ends with `enc(SHA-384(static pk of A)) ‖
//!   enc(SHA-384(static pk of B))`, `MA` ends with `enc(ct_sB)`, `MB` with `enc(ct_sA)`, and the
//!   IKM ends with `ss_sB ‖ ss_sA`.
//!
//! A policy without the classical component leaves `epk_T` empty in `MA` and `MB`.

use aws_lc_rs::{digest, hkdf, hmac};
use qkd_types::{KeyId, KmeId, SaeId, Secret};
use zeroize::Zeroizing;

use super::config::{Policy, Suite};
use super::error::HybridError;

/// The HKDF salt and domain label of every derived key.
pub const LABEL: &[u8] = b"QKMS-HYB-v1";
/// The HKDF salt of the key-confirmation keys.
pub const CONFIRM_SALT: &[u8] = b"QKMS-HYB-v1 confirm";
/// Prefix of the message A signs.
pub const SIG_A_LABEL: &[u8] = b"QKMS-HYB-v1 sigA";
/// Prefix of the message B signs.
pub const SIG_B_LABEL: &[u8] = b"QKMS-HYB-v1 sigB";
/// Length of a relayed QKD key component, in bytes.
pub const QKD_KEY_LEN: usize = 32;
/// Length of `nonce_A` and `nonce_B`.
pub const NONCE_LEN: usize = 32;
/// SHA-384 output length; also the length of TH, of each confirmation key and of each tag.
pub const HASH_LEN: usize = 48;
/// Largest output key: HKDF-SHA-384 can expand to at most 255 × 48 bytes.
pub const MAX_KEY_BYTES: u32 = 255 * 48;
/// Most keys one exchange may serve (bounds message sizes and work per exchange).
pub const MAX_BATCH: usize = 4096;

/// Who and what a batch of keys is for: everything `common` binds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    /// Configured suite (bound by name).
    pub suite: Suite,
    /// Configured policy (bound by name).
    pub policy: Policy,
    /// Source KME (initiator, master side).
    pub kme_a: KmeId,
    /// Destination KME (responder).
    pub kme_b: KmeId,
    /// The master SAE (at A) that asked for the keys.
    pub sae_master: SaeId,
    /// The slave SAE(s) at B; encoded sorted, so the order given here does not matter.
    pub sae_slaves: Vec<SaeId>,
    /// Output key size in bits (a multiple of 8, at most 97,920).
    pub size_bits: u32,
}

/// SHA-384 of each end's pinned static KEM public key, bound into `common` for suites with
/// mutual static KEM keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticKeyHashes {
    /// SHA-384 of A's static public key.
    pub a: [u8; HASH_LEN],
    /// SHA-384 of B's static public key.
    pub b: [u8; HASH_LEN],
}

/// One output key's identifiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeySlot {
    /// ETSI `key_ID` the SAEs will see.
    pub key_id: KeyId,
    /// End-to-end ID of the relayed QKD key behind it (ETSI 020 `key_id`); `None` exactly when
    /// the policy takes no QKD key (`PQ+T`).
    pub relay_key_id: Option<KeyId>,
}

/// A validated batch: context, key slots and the encodings derived from them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    context: Context,
    slots: Vec<KeySlot>,
    static_hashes: Option<StaticKeyHashes>,
    common: Vec<u8>,
    info_batch: Vec<u8>,
}

/// Every secret that enters the combiner for one exchange. Components the policy excludes must
/// be absent (`qkd` empty, `classical` `None`): the combiner fails closed on any mismatch.
#[derive(Debug)]
pub struct SharedSecrets {
    /// `k_QKD_i`, one 32-byte relayed key per output key, in slot order (empty for `PQ+T`).
    pub qkd: Vec<Secret>,
    /// `ss_T`, the classical ECDH secret (`None` for `QKD+PQ`).
    pub classical: Option<Secret>,
    /// `ss_PQ`, the ephemeral PQ KEM secret.
    pub pq: Secret,
    /// `ss_sB`, from A's encapsulation to B's static key (static suites only).
    pub static_to_b: Option<Secret>,
    /// `ss_sA`, from B's encapsulation to A's static key (static suites only).
    pub static_to_a: Option<Secret>,
}

/// One derived key with its identifiers.
#[derive(Debug)]
pub struct HybridKey {
    /// ETSI `key_ID`.
    pub key_id: KeyId,
    /// The relayed QKD key behind it, if the policy uses one.
    pub relay_key_id: Option<KeyId>,
    /// `size_bits / 8` bytes.
    pub key: Secret,
}

/// The two key-confirmation keys `KcB ‖ KcA` (docs/hybrid.md, "Exchange").
#[derive(Debug)]
pub struct ConfirmKeys {
    /// Keys B's tag (and our ack tag).
    pub kc_b: Secret,
    /// Keys A's tag.
    pub kc_a: Secret,
}

/// `MA = enc(ek_PQ) ‖ enc(epk_T_A) ‖ enc(nonce_A)` [`‖ enc(ct_sB)` for static suites].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ma {
    /// A's ephemeral PQ encapsulation key.
    pub ek_pq: Vec<u8>,
    /// A's ephemeral classical public key (empty if the policy excludes it).
    pub epk_t: Vec<u8>,
    /// A's fresh nonce; B's replay guard keys on it.
    pub nonce: [u8; NONCE_LEN],
    /// A's encapsulation to B's static key (empty unless the suite has static keys).
    pub ct_static: Vec<u8>,
}

/// `MB = enc(ct_PQ) ‖ enc(epk_T_B) ‖ enc(nonce_B)` [`‖ enc(ct_sA)` for static suites].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mb {
    /// B's encapsulation to `ek_PQ`.
    pub ct_pq: Vec<u8>,
    /// B's ephemeral classical public key (empty if the policy excludes it).
    pub epk_t: Vec<u8>,
    /// B's fresh nonce.
    pub nonce: [u8; NONCE_LEN],
    /// B's encapsulation to A's static key (empty unless the suite has static keys).
    pub ct_static: Vec<u8>,
}

impl Batch {
    /// Validates a batch and computes `common` and `info_batch`. Rejects, before any work: a
    /// size of 0, not a multiple of 8 or above [`MAX_KEY_BYTES`]; an empty batch or one above
    /// [`MAX_BATCH`]; duplicate key IDs or relay key IDs; no slave SAE or a repeated one; relay
    /// key IDs present when the policy takes no QKD key or missing when it needs one; static key
    /// hashes present or missing against the suite.
    pub fn new(
        context: Context,
        slots: Vec<KeySlot>,
        static_hashes: Option<StaticKeyHashes>,
    ) -> Result<Self, HybridError> {
        check_size(context.size_bits)?;
        if slots.is_empty() || slots.len() > MAX_BATCH {
            return Err(HybridError::BadBatch("batch must hold 1 to 4096 keys"));
        }
        let mut ids: Vec<[u8; 16]> = slots.iter().map(|s| *s.key_id.as_bytes()).collect();
        ids.sort_unstable();
        if ids.windows(2).any(|w| w[0] == w[1]) {
            return Err(HybridError::BadBatch("duplicate key_ID"));
        }
        if context.policy.uses_qkd() {
            let mut relay: Vec<[u8; 16]> = Vec::with_capacity(slots.len());
            for s in &slots {
                match s.relay_key_id {
                    Some(r) => relay.push(*r.as_bytes()),
                    None => {
                        return Err(HybridError::QkdKeys("policy needs a relay key ID per key"));
                    }
                }
            }
            relay.sort_unstable();
            if relay.windows(2).any(|w| w[0] == w[1]) {
                return Err(HybridError::BadBatch("duplicate relay key ID"));
            }
        } else if slots.iter().any(|s| s.relay_key_id.is_some()) {
            return Err(HybridError::QkdKeys("policy PQ+T takes no relayed key"));
        }
        let mut slaves = context.sae_slaves.clone();
        slaves.sort();
        if slaves.is_empty() {
            return Err(HybridError::BadBatch("no slave SAE"));
        }
        if slaves.windows(2).any(|w| w[0] == w[1]) {
            return Err(HybridError::BadBatch("duplicate slave SAE"));
        }
        match (context.suite.static_kem(), &static_hashes) {
            (Some(_), None) => return Err(HybridError::StaticKeys("no static key hashes")),
            (None, Some(_)) => {
                return Err(HybridError::StaticKeys("suite takes no static keys"));
            }
            _ => {}
        }

        let mut common = Vec::with_capacity(256);
        enc(&mut common, LABEL);
        enc(&mut common, context.suite.name().as_bytes());
        enc(&mut common, context.policy.name().as_bytes());
        enc(&mut common, context.kme_a.as_str().as_bytes());
        enc(&mut common, context.kme_b.as_str().as_bytes());
        enc(&mut common, context.sae_master.as_str().as_bytes());
        enc(
            &mut common,
            &lst(slaves.iter().map(|s| s.as_str().as_bytes())),
        );
        enc(&mut common, &context.size_bits.to_be_bytes());
        if let Some(h) = &static_hashes {
            enc(&mut common, &h.a);
            enc(&mut common, &h.b);
        }

        let mut info_batch = common.clone();
        enc(
            &mut info_batch,
            &lst(slots.iter().map(|s| &s.key_id.as_bytes()[..])),
        );
        enc(
            &mut info_batch,
            &lst(slots.iter().map(|s| relay_bytes(&s.relay_key_id))),
        );
        Ok(Self {
            context,
            slots,
            static_hashes,
            common,
            info_batch,
        })
    }

    /// The context.
    pub fn context(&self) -> &Context {
        &self.context
    }

    /// The key slots, in order.
    pub fn slots(&self) -> &[KeySlot] {
        &self.slots
    }

    /// The static key hashes, for static suites.
    pub fn static_hashes(&self) -> Option<&StaticKeyHashes> {
        self.static_hashes.as_ref()
    }

    /// `common`.
    pub fn common(&self) -> &[u8] {
        &self.common
    }

    /// `info_batch = common ‖ enc(lst(key_IDs)) ‖ enc(lst(relay_key_IDs))`.
    pub fn info_batch(&self) -> &[u8] {
        &self.info_batch
    }

    /// `info_i = common ‖ enc(key_ID_i) ‖ enc(relay_key_ID_i)`, or `None` if `i` is out of range.
    pub fn info_i(&self, i: usize) -> Option<Vec<u8>> {
        let s = self.slots.get(i)?;
        let mut out = Vec::with_capacity(self.common.len() + 40);
        out.extend_from_slice(&self.common);
        enc(&mut out, s.key_id.as_bytes());
        enc(&mut out, relay_bytes(&s.relay_key_id));
        Some(out)
    }

    /// Output key length in bytes.
    pub fn key_len(&self) -> usize {
        // Invariant: `check_size` bounded size_bits / 8 by MAX_KEY_BYTES, which fits in usize.
        (self.context.size_bits / 8) as usize
    }
}

impl Ma {
    /// The bound encoding.
    pub fn encode(&self) -> Vec<u8> {
        encode_message(&self.ek_pq, &self.epk_t, &self.nonce, &self.ct_static)
    }

    /// Parses `MA` strictly for the suite and policy: every field at its exact length, nothing
    /// after the last one.
    pub fn parse(suite: Suite, policy: Policy, bytes: &[u8]) -> Result<Self, HybridError> {
        let first = suite.ephemeral_kem().public_key_len();
        let (ek_pq, epk_t, nonce, ct_static) = parse_message(bytes, suite, policy, first, "MA")?;
        Ok(Self {
            ek_pq,
            epk_t,
            nonce,
            ct_static,
        })
    }
}

impl Mb {
    /// The bound encoding.
    pub fn encode(&self) -> Vec<u8> {
        encode_message(&self.ct_pq, &self.epk_t, &self.nonce, &self.ct_static)
    }

    /// Parses `MB` strictly for the suite and policy.
    pub fn parse(suite: Suite, policy: Policy, bytes: &[u8]) -> Result<Self, HybridError> {
        let first = suite.ephemeral_kem().ciphertext_len();
        let (ct_pq, epk_t, nonce, ct_static) = parse_message(bytes, suite, policy, first, "MB")?;
        Ok(Self {
            ct_pq,
            epk_t,
            nonce,
            ct_static,
        })
    }
}

/// Derives `K_1..K_N` (docs/hybrid.md, "Combiner"):
/// `K_i = HKDF-SHA-384(salt = "QKMS-HYB-v1", IKM = k_QKD_i ‖ ss_T ‖ ss_PQ [‖ ss_sB ‖ ss_sA],
/// info = SHA-384(enc(info_i) ‖ enc(MA) ‖ enc(MB)), L = size_bits / 8)`, leaving out the
/// components the policy excludes. `ma` and `mb` are the exact encodings that were exchanged.
pub fn derive_keys(
    batch: &Batch,
    ma: &[u8],
    mb: &[u8],
    secrets: &SharedSecrets,
) -> Result<Vec<HybridKey>, HybridError> {
    check_secrets(batch, secrets)?;
    let tail = secrets_tail(secrets);
    let salt = hkdf::Salt::new(hkdf::HKDF_SHA384, LABEL);
    let mut ma_enc = Vec::with_capacity(ma.len() + 4);
    enc(&mut ma_enc, ma);
    let mut mb_enc = Vec::with_capacity(mb.len() + 4);
    enc(&mut mb_enc, mb);
    let mut out = Vec::with_capacity(batch.slots.len());
    let mut ikm: Zeroizing<Vec<u8>> = Zeroizing::new(Vec::with_capacity(QKD_KEY_LEN + tail.len()));
    let mut info_i = Vec::with_capacity(batch.common.len() + 48);
    for (i, slot) in batch.slots.iter().enumerate() {
        ikm.clear();
        if batch.context.policy.uses_qkd() {
            // Exposed to feed the KDF; `check_secrets` ensured one 32-byte key per slot.
            ikm.extend_from_slice(secrets.qkd[i].expose());
        }
        ikm.extend_from_slice(&tail);

        info_i.clear();
        info_i.extend_from_slice(&batch.common);
        enc(&mut info_i, slot.key_id.as_bytes());
        enc(&mut info_i, relay_bytes(&slot.relay_key_id));
        let mut ctx = digest::Context::new(&digest::SHA384);
        ctx.update(&u32be_len(info_i.len()));
        ctx.update(&info_i);
        ctx.update(&ma_enc);
        ctx.update(&mb_enc);
        let info = ctx.finish();

        let mut key = Secret::zeroed(batch.key_len());
        let prk = salt.extract(&ikm);
        let info_parts = [info.as_ref()];
        prk.expand(&info_parts, OkmLen(key.len()))
            .and_then(|okm| okm.fill(key.expose_mut()))
            .map_err(|_| HybridError::Crypto("HKDF-SHA-384"))?;
        out.push(HybridKey {
            key_id: slot.key_id,
            relay_key_id: slot.relay_key_id,
            key,
        });
    }
    Ok(out)
}

/// `TH = SHA-384(enc(info_batch) ‖ enc(MA) ‖ enc(MB))`.
pub fn transcript_hash(info_batch: &[u8], ma: &[u8], mb: &[u8]) -> [u8; HASH_LEN] {
    hash_encoded(&[info_batch, ma, mb])
}

/// The message A signs: `"QKMS-HYB-v1 sigA" ‖ SHA-384(enc(info_batch) ‖ enc(MA))`.
pub fn sig_a_message(info_batch: &[u8], ma: &[u8]) -> Vec<u8> {
    let mut m = SIG_A_LABEL.to_vec();
    m.extend_from_slice(&hash_encoded(&[info_batch, ma]));
    m
}

/// The message B signs: `"QKMS-HYB-v1 sigB" ‖ TH`.
pub fn sig_b_message(th: &[u8; HASH_LEN]) -> Vec<u8> {
    let mut m = SIG_B_LABEL.to_vec();
    m.extend_from_slice(th);
    m
}

/// `KcB ‖ KcA = HKDF-SHA-384(salt = "QKMS-HYB-v1 confirm", IKM = k_QKD_1 ‖ … ‖ k_QKD_N ‖ ss_T ‖
/// ss_PQ [‖ ss_sB ‖ ss_sA], info = TH, L = 96)`.
pub fn confirm_keys(
    batch: &Batch,
    secrets: &SharedSecrets,
    th: &[u8; HASH_LEN],
) -> Result<ConfirmKeys, HybridError> {
    check_secrets(batch, secrets)?;
    let tail = secrets_tail(secrets);
    let mut ikm: Zeroizing<Vec<u8>> = Zeroizing::new(Vec::with_capacity(
        QKD_KEY_LEN * secrets.qkd.len() + tail.len(),
    ));
    for k in &secrets.qkd {
        // Exposed to feed the KDF.
        ikm.extend_from_slice(k.expose());
    }
    ikm.extend_from_slice(&tail);
    let mut both = Secret::zeroed(2 * HASH_LEN);
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA384, CONFIRM_SALT).extract(&ikm);
    let info = [&th[..]];
    prk.expand(&info, OkmLen(2 * HASH_LEN))
        .and_then(|okm| okm.fill(both.expose_mut()))
        .map_err(|_| HybridError::Crypto("HKDF-SHA-384 confirm"))?;
    let kc_b = both.slice(0, HASH_LEN);
    let kc_a = both.slice(HASH_LEN, HASH_LEN);
    match (kc_b, kc_a) {
        (Some(kc_b), Some(kc_a)) => Ok(ConfirmKeys { kc_b, kc_a }),
        _ => Err(HybridError::Crypto("confirm key split")),
    }
}

/// `tagB = HMAC-SHA-384(KcB, "B" ‖ TH)`.
pub fn tag_b(keys: &ConfirmKeys, th: &[u8; HASH_LEN]) -> [u8; HASH_LEN] {
    mac(&keys.kc_b, b"B", th)
}

/// `tagA = HMAC-SHA-384(KcA, "A" ‖ TH)`.
pub fn tag_a(keys: &ConfirmKeys, th: &[u8; HASH_LEN]) -> [u8; HASH_LEN] {
    mac(&keys.kc_a, b"A", th)
}

/// `tagAck = HMAC-SHA-384(KcB, "ack" ‖ TH)`: our addition to message 4 so that a relay node
/// cannot forge B's acknowledgement (an input of a different length from tagB's, under the same
/// key).
pub fn tag_ack(keys: &ConfirmKeys, th: &[u8; HASH_LEN]) -> [u8; HASH_LEN] {
    mac(&keys.kc_b, b"ack", th)
}

/// Constant-time check of a received tag against the expected one (the only way tags are
/// compared in this module).
pub(crate) fn verify_tag(
    expected: &[u8; HASH_LEN],
    received: &[u8],
    which: &'static str,
) -> Result<(), HybridError> {
    aws_lc_rs::constant_time::verify_slices_are_equal(expected, received)
        .map_err(|_| HybridError::BadTag(which))
}

/// `enc(x) = u32be(|x|) ‖ x`, appended to `out`.
pub fn enc(out: &mut Vec<u8>, x: &[u8]) {
    out.extend_from_slice(&u32be_len(x.len()));
    out.extend_from_slice(x);
}

/// `lst(x1..xn) = u32be(n) ‖ enc(x1) ‖ … ‖ enc(xn)`.
pub fn lst<'a>(items: impl ExactSizeIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&u32be_len(items.len()));
    for x in items {
        enc(&mut out, x);
    }
    out
}

// ---- private helpers ----

/// HKDF output length for aws-lc-rs.
struct OkmLen(usize);

impl hkdf::KeyType for OkmLen {
    fn len(&self) -> usize {
        self.0
    }
}

fn u32be_len(n: usize) -> [u8; 4] {
    // Invariant: every encoded string is bounded far below 4 GiB: IDs ≤ 64 B, batches ≤
    // MAX_BATCH entries, KEM values ≤ 22 kB, and wire input is checked against these lengths
    // before it is encoded.
    u32::try_from(n)
        .expect("encoded length fits in u32 (bounded inputs)")
        .to_be_bytes()
}

fn relay_bytes(r: &Option<KeyId>) -> &[u8] {
    match r {
        Some(id) => id.as_bytes(),
        None => &[],
    }
}

fn check_size(size_bits: u32) -> Result<(), HybridError> {
    if size_bits == 0 || !size_bits.is_multiple_of(8) || size_bits / 8 > MAX_KEY_BYTES {
        return Err(HybridError::BadSize(size_bits));
    }
    Ok(())
}

fn classical_len(suite: Suite, policy: Policy) -> usize {
    if policy.uses_classical() {
        suite.classical().public_key_len()
    } else {
        0
    }
}

fn hash_encoded(parts: &[&[u8]]) -> [u8; HASH_LEN] {
    let mut ctx = digest::Context::new(&digest::SHA384);
    for p in parts {
        ctx.update(&u32be_len(p.len()));
        ctx.update(p);
    }
    let d = ctx.finish();
    let mut out = [0u8; HASH_LEN];
    out.copy_from_slice(d.as_ref());
    out
}

fn mac(key: &Secret, label: &[u8], th: &[u8; HASH_LEN]) -> [u8; HASH_LEN] {
    // Exposed to key the HMAC; the hmac::Key cleanses its state when dropped.
    let k = hmac::Key::new(hmac::HMAC_SHA384, key.expose());
    let mut ctx = hmac::Context::with_key(&k);
    ctx.update(label);
    ctx.update(th);
    let tag = ctx.sign();
    let mut out = [0u8; HASH_LEN];
    out.copy_from_slice(tag.as_ref());
    out
}

fn encode_message(a: &[u8], b: &[u8], nonce: &[u8; NONCE_LEN], st: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(a.len() + b.len() + st.len() + NONCE_LEN + 16);
    enc(&mut out, a);
    enc(&mut out, b);
    enc(&mut out, nonce);
    if !st.is_empty() {
        enc(&mut out, st);
    }
    out
}

type Fields = (Vec<u8>, Vec<u8>, [u8; NONCE_LEN], Vec<u8>);

/// Parses `enc(first) ‖ enc(epk_T) ‖ enc(nonce) [‖ enc(ct_static)]` with exact lengths.
fn parse_message(
    bytes: &[u8],
    suite: Suite,
    policy: Policy,
    first: usize,
    what: &'static str,
) -> Result<Fields, HybridError> {
    let lens = [
        first,
        classical_len(suite, policy),
        NONCE_LEN,
        suite.static_kem().map_or(0, |k| k.ciphertext_len()),
    ];
    let mut rest = bytes;
    let count = if suite.static_kem().is_some() { 4 } else { 3 };
    let mut fields: Vec<Vec<u8>> = Vec::with_capacity(4);
    for want in lens.iter().take(count) {
        let (len_bytes, tail) = rest
            .split_first_chunk::<4>()
            .ok_or(HybridError::Malformed(what))?;
        let len = u32::from_be_bytes(*len_bytes) as usize;
        if len != *want || tail.len() < len {
            return Err(HybridError::Malformed(what));
        }
        let (field, tail) = tail.split_at(len);
        fields.push(field.to_vec());
        rest = tail;
    }
    if !rest.is_empty() {
        return Err(HybridError::Malformed(what));
    }
    let mut it = fields.into_iter();
    let a = it.next().unwrap_or_default();
    let b = it.next().unwrap_or_default();
    let n = it.next().unwrap_or_default();
    let st = it.next().unwrap_or_default();
    let nonce: [u8; NONCE_LEN] = n
        .as_slice()
        .try_into()
        .map_err(|_| HybridError::Malformed(what))?;
    Ok((a, b, nonce, st))
}

fn check_secrets(batch: &Batch, s: &SharedSecrets) -> Result<(), HybridError> {
    let policy = batch.context.policy;
    let suite = batch.context.suite;
    check_qkd(batch, &s.qkd)?;
    match (&s.classical, policy.uses_classical()) {
        (Some(t), true) if t.len() == suite.classical().shared_secret_len() => {}
        (None, false) => {}
        _ => return Err(HybridError::SecretLength("ss_T")),
    }
    if s.pq.len() != suite.ephemeral_kem().shared_secret_len() {
        return Err(HybridError::SecretLength("ss_PQ"));
    }
    let want = suite.static_kem().map(|k| k.shared_secret_len());
    for (ss, name) in [(&s.static_to_b, "ss_sB"), (&s.static_to_a, "ss_sA")] {
        match (ss, want) {
            (Some(x), Some(n)) if x.len() == n => {}
            (None, None) => {}
            _ => return Err(HybridError::SecretLength(name)),
        }
    }
    Ok(())
}

/// The relayed QKD keys fit the batch: one 32-byte key per slot for `QKD+` policies, none for
/// `PQ+T` (fail closed).
pub(crate) fn check_qkd(batch: &Batch, qkd: &[Secret]) -> Result<(), HybridError> {
    if batch.context.policy.uses_qkd() {
        if qkd.len() != batch.slots.len() {
            return Err(HybridError::QkdKeys(
                "need exactly one relayed QKD key per output key",
            ));
        }
        if qkd.iter().any(|k| k.len() != QKD_KEY_LEN) {
            return Err(HybridError::QkdKeys(
                "each relayed QKD key must be 32 bytes",
            ));
        }
    } else if !qkd.is_empty() {
        return Err(HybridError::QkdKeys("policy PQ+T takes no relayed key"));
    }
    Ok(())
}

/// `ss_T ‖ ss_PQ [‖ ss_sB ‖ ss_sA]`, the IKM after the QKD component(s).
fn secrets_tail(s: &SharedSecrets) -> Zeroizing<Vec<u8>> {
    let parts = [
        s.classical.as_ref(),
        Some(&s.pq),
        s.static_to_b.as_ref(),
        s.static_to_a.as_ref(),
    ];
    let len = parts.iter().flatten().map(|x| x.len()).sum();
    let mut tail = Zeroizing::new(Vec::with_capacity(len));
    for p in parts.into_iter().flatten() {
        // Exposed to feed the KDF.
        tail.extend_from_slice(p.expose());
    }
    tail
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(policy: Policy) -> Context {
        Context {
            suite: Suite::X25519MlKem768,
            policy,
            kme_a: KmeId::parse("kme-a").unwrap(),
            kme_b: KmeId::parse("kme-b").unwrap(),
            sae_master: SaeId::parse("sae-1").unwrap(),
            sae_slaves: vec![SaeId::parse("sae-2").unwrap()],
            size_bits: 256,
        }
    }

    fn slot(n: u8, relay: bool) -> KeySlot {
        KeySlot {
            key_id: KeyId::from_bytes([n; 16]),
            relay_key_id: relay.then(|| KeyId::from_bytes([n ^ 0x80; 16])),
        }
    }

    #[test]
    fn encodings() {
        let mut v = Vec::new();
        enc(&mut v, b"ab");
        assert_eq!(v, [0, 0, 0, 2, b'a', b'b']);
        let l = lst([&b"x"[..], &b""[..]].into_iter());
        assert_eq!(l, [0, 0, 0, 2, 0, 0, 0, 1, b'x', 0, 0, 0, 0]);
    }

    #[test]
    fn size_checks() {
        for bad in [0u32, 7, 9, 255, (MAX_KEY_BYTES + 1) * 8] {
            let mut c = ctx(Policy::QkdPqT);
            c.size_bits = bad;
            assert_eq!(
                Batch::new(c, vec![slot(1, true)], None),
                Err(HybridError::BadSize(bad))
            );
        }
        let mut c = ctx(Policy::QkdPqT);
        c.size_bits = MAX_KEY_BYTES * 8;
        assert!(Batch::new(c, vec![slot(1, true)], None).is_ok());
    }

    #[test]
    fn batch_checks_fail_closed() {
        assert!(matches!(
            Batch::new(ctx(Policy::QkdPqT), vec![slot(1, false)], None),
            Err(HybridError::QkdKeys(_))
        ));
        assert!(matches!(
            Batch::new(ctx(Policy::PqT), vec![slot(1, true)], None),
            Err(HybridError::QkdKeys(_))
        ));
        assert!(matches!(
            Batch::new(ctx(Policy::QkdPq), vec![slot(1, true), slot(1, true)], None),
            Err(HybridError::BadBatch(_))
        ));
        assert!(matches!(
            Batch::new(ctx(Policy::QkdPq), vec![], None),
            Err(HybridError::BadBatch(_))
        ));
        let mut c = ctx(Policy::PqT);
        c.sae_slaves.push(c.sae_slaves[0].clone());
        assert!(matches!(
            Batch::new(c, vec![slot(1, false)], None),
            Err(HybridError::BadBatch(_))
        ));
        let h = StaticKeyHashes {
            a: [1; 48],
            b: [2; 48],
        };
        assert!(matches!(
            Batch::new(ctx(Policy::PqT), vec![slot(1, false)], Some(h)),
            Err(HybridError::StaticKeys(_))
        ));
    }

    #[test]
    fn missing_component_fails_closed() {
        let b = Batch::new(ctx(Policy::QkdPqT), vec![slot(1, true)], None).unwrap();
        let s = SharedSecrets {
            qkd: vec![],
            classical: Some(Secret::zeroed(32)),
            pq: Secret::zeroed(32),
            static_to_b: None,
            static_to_a: None,
        };
        assert!(matches!(
            derive_keys(&b, b"", b"", &s),
            Err(HybridError::QkdKeys(_))
        ));
        let s = SharedSecrets {
            qkd: vec![Secret::zeroed(31)],
            ..s
        };
        assert!(matches!(
            derive_keys(&b, b"", b"", &s),
            Err(HybridError::QkdKeys(_))
        ));
        let s = SharedSecrets {
            qkd: vec![Secret::zeroed(32)],
            classical: None,
            ..s
        };
        assert_eq!(
            derive_keys(&b, b"", b"", &s).unwrap_err(),
            HybridError::SecretLength("ss_T")
        );
    }

    #[test]
    fn message_parse_is_strict() {
        let ma = Ma {
            ek_pq: vec![1; 1184],
            epk_t: vec![2; 32],
            nonce: [3; 32],
            ct_static: vec![],
        };
        let bytes = ma.encode();
        assert_eq!(
            Ma::parse(Suite::X25519MlKem768, Policy::QkdPqT, &bytes),
            Ok(ma.clone())
        );
        assert!(Ma::parse(Suite::X25519MlKem768, Policy::QkdPq, &bytes).is_err());
        assert!(Ma::parse(Suite::X25519MlKem1024, Policy::QkdPqT, &bytes).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Ma::parse(Suite::X25519MlKem768, Policy::QkdPqT, &longer).is_err());
        assert!(
            Ma::parse(
                Suite::X25519MlKem768,
                Policy::QkdPqT,
                &bytes[..bytes.len() - 1]
            )
            .is_err()
        );
        assert!(Ma::parse(Suite::X25519MlKem768, Policy::QkdPqT, &[]).is_err());
    }
}
