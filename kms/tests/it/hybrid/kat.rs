//! Known-answer vectors of the QKMS-HYB-v1 combiner (docs/hybrid.md, "Combiner") and of the confirmation
//! values (docs/hybrid.md, "Exchange"), for every suite × policy with N = 1 and N = 3.
//!
//! `kms/tests/vectors/qkms-hyb-v1.json` gives every input as bytes: hex, or for long opaque
//! values (ML-KEM/FrodoKEM keys and ciphertexts) `{"sha384_ctr": label, "len": n}`, meaning
//! `SHA-384(label ‖ u32be(0)) ‖ SHA-384(label ‖ u32be(1)) ‖ …` truncated to `n` bytes. The
//! combiner treats KEM values as opaque, so these need not be valid keys; the X25519 values are
//! RFC 7748 §6.1's and the P-384 ones a real key agreement from the listed scalars.
//!
//! Each vector is checked twice: against the library, and against [`independent`], a
//! straight-line re-implementation from the spec text on *ring* (not aws-lc-rs), so the
//! vectors are not just the library's own output. Regenerate with
//! `cargo test -p qkd-kms --test it hybrid::kat::regenerate -- --ignored`.

use std::path::PathBuf;

use qkd_kms::hybrid::combiner::{self, Batch, Context, KeySlot, Ma, Mb, SharedSecrets};
use qkd_kms::hybrid::{Policy, Suite};
use qkd_types::{KeyId, KmeId, SaeId, Secret};
use serde_json::{Value, json};

/// Everything the combiner and the confirmation take, as plain bytes and strings.
#[derive(Clone, Debug, PartialEq)]
pub struct Inputs {
    pub suite: String,
    pub policy: String,
    pub kme_a: String,
    pub kme_b: String,
    pub sae_master: String,
    pub sae_slaves: Vec<String>,
    pub size_bits: u32,
    pub key_ids: Vec<[u8; 16]>,
    pub relay_key_ids: Vec<[u8; 16]>,
    pub k_qkd: Vec<Vec<u8>>,
    pub ss_t: Option<Vec<u8>>,
    pub ss_pq: Vec<u8>,
    pub ss_sb: Option<Vec<u8>>,
    pub ss_sa: Option<Vec<u8>>,
    pub static_hash_a: Option<Vec<u8>>,
    pub static_hash_b: Option<Vec<u8>>,
    pub ek_pq: Vec<u8>,
    pub epk_t_a: Vec<u8>,
    pub epk_t_b: Vec<u8>,
    pub nonce_a: Vec<u8>,
    pub nonce_b: Vec<u8>,
    pub ct_pq: Vec<u8>,
    pub ct_sb: Vec<u8>,
    pub ct_sa: Vec<u8>,
}

/// What a vector pins.
#[derive(Clone, Debug, PartialEq)]
pub struct Outputs {
    pub common: Vec<u8>,
    pub info_batch_sha384: Vec<u8>,
    pub ma_sha384: Vec<u8>,
    pub mb_sha384: Vec<u8>,
    pub th: Vec<u8>,
    pub kc_b: Vec<u8>,
    pub kc_a: Vec<u8>,
    pub tag_b: Vec<u8>,
    pub tag_a: Vec<u8>,
    pub keys: Vec<Vec<u8>>,
}

fn vectors_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/qkms-hyb-v1.json")
}

/// `SHA-384(label ‖ u32be(0)) ‖ SHA-384(label ‖ u32be(1)) ‖ …`, truncated to `len`.
pub fn sha384_ctr(label: &str, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 48);
    let mut i = 0u32;
    while out.len() < len {
        let mut c = ring::digest::Context::new(&ring::digest::SHA384);
        c.update(label.as_bytes());
        c.update(&i.to_be_bytes());
        out.extend_from_slice(c.finish().as_ref());
        i += 1;
    }
    out.truncate(len);
    out
}

fn sha384(b: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA384, b)
        .as_ref()
        .to_vec()
}

/// The library's answer.
pub fn library(i: &Inputs) -> Outputs {
    let suite = Suite::parse(&i.suite)
        .or_else(|_| {
            Suite::ALL
                .into_iter()
                .find(|s| s.name() == i.suite)
                .ok_or(())
        })
        .unwrap();
    let policy = Policy::parse(&i.policy).unwrap();
    let context = Context {
        suite,
        policy,
        kme_a: KmeId::parse(&i.kme_a).unwrap(),
        kme_b: KmeId::parse(&i.kme_b).unwrap(),
        sae_master: SaeId::parse(&i.sae_master).unwrap(),
        sae_slaves: i
            .sae_slaves
            .iter()
            .map(|s| SaeId::parse(s).unwrap())
            .collect(),
        size_bits: i.size_bits,
    };
    let slots = i
        .key_ids
        .iter()
        .enumerate()
        .map(|(n, k)| KeySlot {
            key_id: KeyId::from_bytes(*k),
            relay_key_id: i.relay_key_ids.get(n).map(|r| KeyId::from_bytes(*r)),
        })
        .collect();
    let hashes = i.static_hash_a.as_ref().map(|a| combiner::StaticKeyHashes {
        a: a.as_slice().try_into().unwrap(),
        b: i.static_hash_b.as_deref().unwrap().try_into().unwrap(),
    });
    let batch = Batch::new(context, slots, hashes).unwrap();
    let ma = Ma {
        ek_pq: i.ek_pq.clone(),
        epk_t: i.epk_t_a.clone(),
        nonce: i.nonce_a.as_slice().try_into().unwrap(),
        ct_static: i.ct_sb.clone(),
    }
    .encode();
    let mb = Mb {
        ct_pq: i.ct_pq.clone(),
        epk_t: i.epk_t_b.clone(),
        nonce: i.nonce_b.as_slice().try_into().unwrap(),
        ct_static: i.ct_sa.clone(),
    }
    .encode();
    let secrets = SharedSecrets {
        qkd: i.k_qkd.iter().map(|k| Secret::copy_from(k)).collect(),
        classical: i.ss_t.as_deref().map(Secret::copy_from),
        pq: Secret::copy_from(&i.ss_pq),
        static_to_b: i.ss_sb.as_deref().map(Secret::copy_from),
        static_to_a: i.ss_sa.as_deref().map(Secret::copy_from),
    };
    let keys = combiner::derive_keys(&batch, &ma, &mb, &secrets).unwrap();
    let th = combiner::transcript_hash(batch.info_batch(), &ma, &mb);
    let ck = combiner::confirm_keys(&batch, &secrets, &th).unwrap();
    Outputs {
        common: batch.common().to_vec(),
        info_batch_sha384: sha384(batch.info_batch()),
        ma_sha384: sha384(&ma),
        mb_sha384: sha384(&mb),
        th: th.to_vec(),
        kc_b: ck.kc_b.expose().to_vec(),
        kc_a: ck.kc_a.expose().to_vec(),
        tag_b: combiner::tag_b(&ck, &th).to_vec(),
        tag_a: combiner::tag_a(&ck, &th).to_vec(),
        keys: keys.iter().map(|k| k.key.expose().to_vec()).collect(),
    }
}

/// A second implementation, written straight from the text of docs/hybrid.md on *ring*.
pub fn independent(i: &Inputs) -> Outputs {
    use ring::{digest, hkdf, hmac};

    fn enc(x: &[u8]) -> Vec<u8> {
        let mut v = (x.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(x);
        v
    }
    fn lst(xs: &[&[u8]]) -> Vec<u8> {
        let mut v = (xs.len() as u32).to_be_bytes().to_vec();
        for x in xs {
            v.extend(enc(x));
        }
        v
    }
    struct L(usize);
    impl hkdf::KeyType for L {
        fn len(&self) -> usize {
            self.0
        }
    }
    fn hkdf384(salt: &[u8], ikm: &[u8], info: &[u8], len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        hkdf::Salt::new(hkdf::HKDF_SHA384, salt)
            .extract(ikm)
            .expand(&[info], L(len))
            .unwrap()
            .fill(&mut out)
            .unwrap();
        out
    }
    let h = |b: &[u8]| digest::digest(&digest::SHA384, b).as_ref().to_vec();

    // common = enc("QKMS-HYB-v1") ‖ enc(suite) ‖ enc(policy) ‖ enc(KME_A) ‖ enc(KME_B) ‖
    //          enc(SAE_master) ‖ enc(lst(sorted SAE_slave_j)) ‖ enc(u32be(size_bits))
    //          [‖ enc(H(spk_A)) ‖ enc(H(spk_B))]
    let mut slaves: Vec<&[u8]> = i.sae_slaves.iter().map(|s| s.as_bytes()).collect();
    slaves.sort();
    let mut common = Vec::new();
    common.extend(enc(b"QKMS-HYB-v1"));
    common.extend(enc(i.suite.as_bytes()));
    common.extend(enc(i.policy.as_bytes()));
    common.extend(enc(i.kme_a.as_bytes()));
    common.extend(enc(i.kme_b.as_bytes()));
    common.extend(enc(i.sae_master.as_bytes()));
    common.extend(enc(&lst(&slaves)));
    common.extend(enc(&i.size_bits.to_be_bytes()));
    if let (Some(a), Some(b)) = (&i.static_hash_a, &i.static_hash_b) {
        common.extend(enc(a));
        common.extend(enc(b));
    }
    let n = i.key_ids.len();
    let relay = |j: usize| -> &[u8] { i.relay_key_ids.get(j).map_or(&[][..], |r| &r[..]) };
    let kids: Vec<&[u8]> = i.key_ids.iter().map(|k| &k[..]).collect();
    let rids: Vec<&[u8]> = (0..n).map(relay).collect();
    let mut info_batch = common.clone();
    info_batch.extend(enc(&lst(&kids)));
    info_batch.extend(enc(&lst(&rids)));

    // MA = enc(ek_PQ) ‖ enc(epk_T_A) ‖ enc(nonce_A) [‖ enc(ct_sB)], MB likewise.
    let mut ma = [enc(&i.ek_pq), enc(&i.epk_t_a), enc(&i.nonce_a)].concat();
    let mut mb = [enc(&i.ct_pq), enc(&i.epk_t_b), enc(&i.nonce_b)].concat();
    if i.suite == "X25519/Classic-McEliece-460896" {
        ma.extend(enc(&i.ct_sb));
        mb.extend(enc(&i.ct_sa));
    }

    let tail: Vec<u8> = [
        i.ss_t.clone().unwrap_or_default(),
        i.ss_pq.clone(),
        i.ss_sb.clone().unwrap_or_default(),
        i.ss_sa.clone().unwrap_or_default(),
    ]
    .concat();
    let l = (i.size_bits / 8) as usize;
    let mut keys = Vec::new();
    for j in 0..n {
        let info_i = [common.clone(), enc(&i.key_ids[j]), enc(relay(j))].concat();
        let info = h(&[enc(&info_i), enc(&ma), enc(&mb)].concat());
        let qkd = i.k_qkd.get(j).cloned().unwrap_or_default();
        let ikm = [qkd, tail.clone()].concat();
        keys.push(hkdf384(b"QKMS-HYB-v1", &ikm, &info, l));
    }
    let th = h(&[enc(&info_batch), enc(&ma), enc(&mb)].concat());
    let ikm = [i.k_qkd.concat(), tail].concat();
    let kc = hkdf384(b"QKMS-HYB-v1 confirm", &ikm, &th, 96);
    let tag = |k: &[u8], label: &[u8]| {
        let key = hmac::Key::new(hmac::HMAC_SHA384, k);
        hmac::sign(&key, &[label, &th[..]].concat())
            .as_ref()
            .to_vec()
    };
    Outputs {
        common,
        info_batch_sha384: h(&info_batch),
        ma_sha384: h(&ma),
        mb_sha384: h(&mb),
        th: th.clone(),
        kc_b: kc[..48].to_vec(),
        kc_a: kc[48..].to_vec(),
        tag_b: tag(&kc[..48], b"B"),
        tag_a: tag(&kc[48..], b"A"),
        keys,
    }
}

// ---- the fixed inputs ----

fn lens(suite: &str) -> (usize, usize, usize, usize, usize) {
    // (epk_T, ss_T, ek_PQ, ct_PQ, ss_PQ)
    match suite {
        "X25519/ML-KEM-768" | "X25519/Classic-McEliece-460896" => (32, 32, 1184, 1088, 32),
        "X25519/ML-KEM-1024" => (32, 32, 1568, 1568, 32),
        "P-384/ML-KEM-1024" => (97, 48, 1568, 1568, 32),
        "X25519/FrodoKEM-976-AES" => (32, 32, 15_632, 15_744, 24),
        "X25519/FrodoKEM-1344-AES" => (32, 32, 21_520, 21_632, 32),
        _ => unreachable!(),
    }
}

/// Classical values: (sk_A, sk_B, epk_A, epk_B, ss).
fn classical(suite: &str) -> [Vec<u8>; 5] {
    let hx = |s: &str| hex::decode(s).unwrap();
    if suite.starts_with("X25519") {
        // RFC 7748 §6.1.
        return [
            hx("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"),
            hx("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"),
            hx("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"),
            hx("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"),
            hx("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"),
        ];
    }
    use aws_lc_rs::agreement::{ECDH_P384, PrivateKey, UnparsedPublicKey, agree};
    let ska = sha384_ctr("QKMS-HYB-v1 KAT P-384 sk_A", 48);
    let skb = sha384_ctr("QKMS-HYB-v1 KAT P-384 sk_B", 48);
    let a = PrivateKey::from_private_key(&ECDH_P384, &ska).unwrap();
    let b = PrivateKey::from_private_key(&ECDH_P384, &skb).unwrap();
    let pa = a.compute_public_key().unwrap().as_ref().to_vec();
    let pb = b.compute_public_key().unwrap().as_ref().to_vec();
    let ss = agree(&a, UnparsedPublicKey::new(&ECDH_P384, &pb), (), |s| {
        Ok(s.to_vec())
    })
    .unwrap();
    [ska, skb, pa, pb, ss]
}

fn fixed_inputs(suite: Suite, policy: Policy, n: usize) -> (Inputs, Option<[Vec<u8>; 2]>) {
    let name = suite.name();
    let g = |what: &str, len: usize| sha384_ctr(&format!("QKMS-HYB-v1 KAT {name} {what}"), len);
    let id16 = |what: String| -> [u8; 16] { g(&what, 16).try_into().unwrap() };
    let (_, _, ek_len, ct_len, ss_len) = lens(name);
    let [ska, skb, pa, pb, ss] = classical(name);
    let uses_t = policy.uses_classical();
    let uses_qkd = policy.uses_qkd();
    let mcel = suite.static_kem().is_some();
    let inputs = Inputs {
        suite: name.into(),
        policy: policy.name().into(),
        kme_a: "kme-paris.example".into(),
        kme_b: "kme-berlin.example".into(),
        sae_master: "sae-enc-a".into(),
        sae_slaves: if n == 1 {
            vec!["sae-enc-b".into()]
        } else {
            vec!["sae-zulu".into(), "sae-bravo".into()]
        },
        size_bits: if n == 1 { 256 } else { 520 },
        key_ids: (0..n).map(|j| id16(format!("key_ID {j}"))).collect(),
        relay_key_ids: if uses_qkd {
            (0..n).map(|j| id16(format!("relay_key_ID {j}"))).collect()
        } else {
            vec![]
        },
        k_qkd: if uses_qkd {
            (0..n).map(|j| g(&format!("k_QKD {j}"), 32)).collect()
        } else {
            vec![]
        },
        ss_t: uses_t.then(|| ss.clone()),
        ss_pq: g("ss_PQ", ss_len),
        ss_sb: mcel.then(|| g("ss_sB", 32)),
        ss_sa: mcel.then(|| g("ss_sA", 32)),
        static_hash_a: mcel.then(|| sha384(&g("static pk A", 524_160))),
        static_hash_b: mcel.then(|| sha384(&g("static pk B", 524_160))),
        ek_pq: g("ek_PQ", ek_len),
        epk_t_a: if uses_t { pa } else { vec![] },
        epk_t_b: if uses_t { pb } else { vec![] },
        nonce_a: g("nonce_A", 32),
        nonce_b: g("nonce_B", 32),
        ct_pq: g("ct_PQ", ct_len),
        ct_sb: if mcel { g("ct_sB", 156) } else { vec![] },
        ct_sa: if mcel { g("ct_sA", 156) } else { vec![] },
    };
    (inputs, uses_t.then_some([ska, skb]))
}

// ---- JSON ----

fn bytes_json(name: &str, suite: &str, what: &str, b: &[u8]) -> Value {
    let label = format!("QKMS-HYB-v1 KAT {suite} {what}");
    if b.len() > 256 && sha384_ctr(&label, b.len()) == b {
        json!({ "sha384_ctr": label, "len": b.len() })
    } else {
        let _ = name;
        Value::String(hex::encode(b))
    }
}

fn bytes_of(v: &Value) -> Vec<u8> {
    match v {
        Value::String(s) => hex::decode(s).unwrap(),
        Value::Object(o) => sha384_ctr(
            o["sha384_ctr"].as_str().unwrap(),
            o["len"].as_u64().unwrap() as usize,
        ),
        _ => panic!("bad bytes {v}"),
    }
}

fn opt_bytes(v: &Value) -> Option<Vec<u8>> {
    (!v.is_null()).then(|| bytes_of(v))
}

fn hexes(v: &Value) -> Vec<Vec<u8>> {
    v.as_array().unwrap().iter().map(bytes_of).collect()
}

fn to_json(i: &Inputs, sk_t: &Option<[Vec<u8>; 2]>, o: &Outputs) -> Value {
    let s = i.suite.as_str();
    let hx = |b: &[u8]| Value::String(hex::encode(b));
    let oh = |b: &Option<Vec<u8>>| b.as_ref().map_or(Value::Null, |b| hx(b));
    json!({
        "name": format!("{} {} N={}", i.suite, i.policy, i.key_ids.len()),
        "suite": i.suite, "policy": i.policy,
        "kme_a": i.kme_a, "kme_b": i.kme_b,
        "sae_master": i.sae_master, "sae_slaves": i.sae_slaves,
        "size_bits": i.size_bits,
        "key_ids": i.key_ids.iter().map(|k| hx(k)).collect::<Vec<_>>(),
        "relay_key_ids": i.relay_key_ids.iter().map(|k| hx(k)).collect::<Vec<_>>(),
        "k_qkd": i.k_qkd.iter().map(|k| hx(k)).collect::<Vec<_>>(),
        "sk_t_a": sk_t.as_ref().map_or(Value::Null, |k| hx(&k[0])),
        "sk_t_b": sk_t.as_ref().map_or(Value::Null, |k| hx(&k[1])),
        "ss_t": oh(&i.ss_t), "ss_pq": hx(&i.ss_pq),
        "ss_sb": oh(&i.ss_sb), "ss_sa": oh(&i.ss_sa),
        "static_hash_a": oh(&i.static_hash_a), "static_hash_b": oh(&i.static_hash_b),
        "ek_pq": bytes_json("ek_pq", s, "ek_PQ", &i.ek_pq),
        "epk_t_a": hx(&i.epk_t_a), "epk_t_b": hx(&i.epk_t_b),
        "nonce_a": hx(&i.nonce_a), "nonce_b": hx(&i.nonce_b),
        "ct_pq": bytes_json("ct_pq", s, "ct_PQ", &i.ct_pq),
        "ct_sb": hx(&i.ct_sb), "ct_sa": hx(&i.ct_sa),
        "expected": {
            "common": hx(&o.common),
            "info_batch_sha384": hx(&o.info_batch_sha384),
            "ma_sha384": hx(&o.ma_sha384), "mb_sha384": hx(&o.mb_sha384),
            "th": hx(&o.th), "kc_b": hx(&o.kc_b), "kc_a": hx(&o.kc_a),
            "tag_b": hx(&o.tag_b), "tag_a": hx(&o.tag_a),
            "keys": o.keys.iter().map(|k| hx(k)).collect::<Vec<_>>(),
        }
    })
}

fn from_json(v: &Value) -> (Inputs, Outputs) {
    let s = |k: &str| v[k].as_str().unwrap().to_owned();
    let ids = |k: &str| -> Vec<[u8; 16]> {
        hexes(&v[k])
            .into_iter()
            .map(|b| b.try_into().unwrap())
            .collect()
    };
    let e = &v["expected"];
    (
        Inputs {
            suite: s("suite"),
            policy: s("policy"),
            kme_a: s("kme_a"),
            kme_b: s("kme_b"),
            sae_master: s("sae_master"),
            sae_slaves: v["sae_slaves"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_str().unwrap().to_owned())
                .collect(),
            size_bits: v["size_bits"].as_u64().unwrap() as u32,
            key_ids: ids("key_ids"),
            relay_key_ids: ids("relay_key_ids"),
            k_qkd: hexes(&v["k_qkd"]),
            ss_t: opt_bytes(&v["ss_t"]),
            ss_pq: bytes_of(&v["ss_pq"]),
            ss_sb: opt_bytes(&v["ss_sb"]),
            ss_sa: opt_bytes(&v["ss_sa"]),
            static_hash_a: opt_bytes(&v["static_hash_a"]),
            static_hash_b: opt_bytes(&v["static_hash_b"]),
            ek_pq: bytes_of(&v["ek_pq"]),
            epk_t_a: bytes_of(&v["epk_t_a"]),
            epk_t_b: bytes_of(&v["epk_t_b"]),
            nonce_a: bytes_of(&v["nonce_a"]),
            nonce_b: bytes_of(&v["nonce_b"]),
            ct_pq: bytes_of(&v["ct_pq"]),
            ct_sb: bytes_of(&v["ct_sb"]),
            ct_sa: bytes_of(&v["ct_sa"]),
        },
        Outputs {
            common: bytes_of(&e["common"]),
            info_batch_sha384: bytes_of(&e["info_batch_sha384"]),
            ma_sha384: bytes_of(&e["ma_sha384"]),
            mb_sha384: bytes_of(&e["mb_sha384"]),
            th: bytes_of(&e["th"]),
            kc_b: bytes_of(&e["kc_b"]),
            kc_a: bytes_of(&e["kc_a"]),
            tag_b: bytes_of(&e["tag_b"]),
            tag_a: bytes_of(&e["tag_a"]),
            keys: hexes(&e["keys"]),
        },
    )
}

fn all_fixed() -> Vec<(Inputs, Option<[Vec<u8>; 2]>)> {
    let mut out = Vec::new();
    for suite in Suite::ALL {
        for policy in Policy::ALL {
            for n in [1, 3] {
                out.push(fixed_inputs(suite, policy, n));
            }
        }
    }
    out
}

/// Writes the vector file from the fixed inputs (after checking both implementations agree).
#[test]
#[ignore = "rewrites kms/tests/vectors/qkms-hyb-v1.json"]
fn regenerate() {
    let vectors: Vec<Value> = all_fixed()
        .iter()
        .map(|(i, sk)| {
            let o = library(i);
            assert_eq!(o, independent(i), "{} {}", i.suite, i.policy);
            to_json(i, sk, &o)
        })
        .collect();
    let doc = json!({
        "scheme": "QKMS-HYB-v1 (docs/hybrid.md: combiner and confirmation)",
        "bytes": "hex, or {\"sha384_ctr\": label, \"len\": n} = SHA-384(label || u32be(0)) || SHA-384(label || u32be(1)) || ... truncated to n bytes",
        "notes": [
            "KEM public keys and ciphertexts are opaque to the combiner: the ML-KEM/FrodoKEM values here are pseudo-random strings of the right lengths, not valid keys",
            "X25519 values are RFC 7748 section 6.1; P-384 values are a real ECDH from sk_t_a/sk_t_b (big-endian scalars); ss_T is the x-coordinate",
            "policy QKD+PQ: epk_T fields are empty and ss_T is absent; PQ+T: no relay key IDs (each encoded as the empty string in info) and no k_QKD",
            "X25519/Classic-McEliece-460896: ephemeral ML-KEM-768 plus mutual static McEliece; common ends with enc(static_hash_a) || enc(static_hash_b), MA with enc(ct_sb), MB with enc(ct_sa), IKM with ss_sb || ss_sa; static_hash_x = SHA-384 of the static public key (here of sha384_ctr('QKMS-HYB-v1 KAT <suite> static pk A|B', 524160))",
            "expected.keys[i] = K_i; kc_b || kc_a from HKDF-SHA-384(salt 'QKMS-HYB-v1 confirm', IKM = k_QKD_1..N || ss_T || ss_PQ [|| ss_sB || ss_sA], info = TH, L = 96); tag_b = HMAC-SHA-384(kc_b, 'B' || TH); tag_a = HMAC-SHA-384(kc_a, 'A' || TH)"
        ],
        "vectors": vectors,
    });
    std::fs::write(
        vectors_path(),
        serde_json::to_string_pretty(&doc).unwrap() + "\n",
    )
    .unwrap();
}

#[test]
fn vectors_match_library_and_independent_implementation() {
    let text = std::fs::read_to_string(vectors_path()).unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    let vectors = doc["vectors"].as_array().unwrap();
    assert_eq!(vectors.len(), Suite::ALL.len() * Policy::ALL.len() * 2);
    let mut seen = std::collections::BTreeSet::new();
    for v in vectors {
        let (inputs, expected) = from_json(v);
        seen.insert((
            inputs.suite.clone(),
            inputs.policy.clone(),
            inputs.key_ids.len(),
        ));
        let name = v["name"].as_str().unwrap();
        assert_eq!(library(&inputs), expected, "library, {name}");
        assert_eq!(independent(&inputs), expected, "independent, {name}");
        assert_eq!(expected.keys.len(), inputs.key_ids.len());
        assert!(
            expected
                .keys
                .iter()
                .all(|k| k.len() == inputs.size_bits as usize / 8)
        );
        // The file's inputs are the fixed ones (so the file cannot drift from its recipe).
        let suite = Suite::ALL
            .into_iter()
            .find(|s| s.name() == inputs.suite)
            .unwrap();
        let policy = Policy::parse(&inputs.policy).unwrap();
        assert_eq!(
            fixed_inputs(suite, policy, inputs.key_ids.len()).0,
            inputs,
            "{name}"
        );
    }
    for suite in Suite::ALL {
        for policy in Policy::ALL {
            for n in [1, 3] {
                assert!(seen.contains(&(suite.name().to_owned(), policy.name().to_owned(), n)));
            }
        }
    }
}

#[test]
fn classical_values_are_real_key_agreements() {
    for suite in [Suite::X25519MlKem768, Suite::P384MlKem1024] {
        let [ska, skb, pa, pb, ss] = classical(suite.name());
        use aws_lc_rs::agreement::{ECDH_P384, PrivateKey, UnparsedPublicKey, X25519, agree};
        let alg = if suite == Suite::P384MlKem1024 {
            &ECDH_P384
        } else {
            &X25519
        };
        let a = PrivateKey::from_private_key(alg, &ska).unwrap();
        let b = PrivateKey::from_private_key(alg, &skb).unwrap();
        assert_eq!(a.compute_public_key().unwrap().as_ref(), &pa[..]);
        assert_eq!(b.compute_public_key().unwrap().as_ref(), &pb[..]);
        let s = agree(&b, UnparsedPublicKey::new(alg, &pa), (), |s| Ok(s.to_vec())).unwrap();
        assert_eq!(s, ss);
    }
}

/// Changing any bound input changes the derived key(s) that bind it.
#[test]
fn every_bound_input_changes_k() {
    type Edit = fn(&mut Inputs);
    type Mutation = (&'static str, Edit, Option<usize>);
    fn flip(b: &mut [u8]) {
        let last = b.len() - 1;
        b[last] ^= 1;
    }
    // `Some(j)`: only K_j binds the field; `None`: every K_i does.
    let mutations: &[Mutation] = &[
        ("suite", |i| i.suite = "X25519/ML-KEM-1024".into(), None),
        ("policy", |i| i.policy = "QKD+PQ".into(), None),
        ("kme_a", |i| i.kme_a.push('x'), None),
        ("kme_b", |i| i.kme_b.push('x'), None),
        ("sae_master", |i| i.sae_master.push('x'), None),
        ("sae_slave", |i| i.sae_slaves[0].push('x'), None),
        (
            "extra sae_slave",
            |i| i.sae_slaves.push("sae-x".into()),
            None,
        ),
        ("size_bits", |i| i.size_bits = 264, None),
        ("ek_pq", |i| flip(&mut i.ek_pq), None),
        ("epk_t_a", |i| flip(&mut i.epk_t_a), None),
        ("epk_t_b", |i| flip(&mut i.epk_t_b), None),
        ("nonce_a", |i| flip(&mut i.nonce_a), None),
        ("nonce_b", |i| flip(&mut i.nonce_b), None),
        ("ct_pq", |i| flip(&mut i.ct_pq), None),
        ("ss_t", |i| flip(i.ss_t.as_mut().unwrap()), None),
        ("ss_pq", |i| flip(&mut i.ss_pq), None),
        ("key_id 0", |i| flip(&mut i.key_ids[0]), Some(0)),
        ("key_id 2", |i| flip(&mut i.key_ids[2]), Some(2)),
        ("relay_key_id 1", |i| flip(&mut i.relay_key_ids[1]), Some(1)),
        ("k_qkd 1", |i| flip(&mut i.k_qkd[1]), Some(1)),
    ];
    let (base, _) = fixed_inputs(Suite::X25519MlKem768, Policy::QkdPqT, 3);
    let k0 = library(&base);
    for (what, m, only) in mutations {
        let mut i = base.clone();
        m(&mut i);
        if what == &"policy" {
            // QKD+PQ takes no classical part: drop it so the combiner accepts the inputs.
            i.ss_t = None;
            i.epk_t_a.clear();
            i.epk_t_b.clear();
        }
        if what == &"suite" {
            i.ek_pq = sha384_ctr("other", 1568);
            i.ct_pq = sha384_ctr("other", 1568);
        }
        let k = library(&i);
        assert_eq!(k, independent(&i), "{what}");
        for j in 0..3 {
            let must_differ = only.is_none_or(|o| o == j);
            if must_differ {
                assert_ne!(k.keys[j], k0.keys[j], "{what} must change K_{j}");
            } else {
                assert_eq!(
                    k.keys[j][..],
                    k0.keys[j][..],
                    "{what} binds only its own key"
                );
            }
        }
        // The transcript (signed and confirmed) binds every field, including the secrets
        // through the confirmation keys.
        assert_ne!(
            (k.th.clone(), k.kc_b.clone()),
            (k0.th.clone(), k0.kc_b.clone()),
            "{what}"
        );
    }
    // Static-suite fields.
    let (base, _) = fixed_inputs(Suite::X25519McEliece460896, Policy::QkdPqT, 1);
    let k0 = library(&base);
    let static_mutations: &[(&str, Edit)] = &[
        ("static_hash_a", |i| flip(i.static_hash_a.as_mut().unwrap())),
        ("static_hash_b", |i| flip(i.static_hash_b.as_mut().unwrap())),
        ("ct_sb", |i| flip(&mut i.ct_sb)),
        ("ct_sa", |i| flip(&mut i.ct_sa)),
        ("ss_sb", |i| flip(i.ss_sb.as_mut().unwrap())),
        ("ss_sa", |i| flip(i.ss_sa.as_mut().unwrap())),
    ];
    for (what, m) in static_mutations {
        let mut i = base.clone();
        m(&mut i);
        assert_ne!(library(&i).keys[0], k0.keys[0], "{what}");
    }
}
