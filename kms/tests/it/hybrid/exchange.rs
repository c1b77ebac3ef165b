//! The authenticated exchange (docs/hybrid.md, "Exchange") end to end in memory: both ends agree for every
//! suite × policy; a trusted relay node that knows every relayed QKD key cannot derive K nor
//! substitute its own MA/MB; every tampered field is refused before any key is released; wrong
//! configuration aborts; replays are refused; tags are compared in constant time.

use qkd_kms::hybrid::combiner::{self, Batch, Ma, Mb, SharedSecrets};
use qkd_kms::hybrid::{
    Context, HybridError, HybridKey, Initiator, KeySlot, LocalIdentity, MemoryReplayGuard,
    NodeSigningKey, PeerPublicKeys, PinnedPeers, Policy, ReceivedInit, ReplayGuard, Suite,
};
use qkd_proto::hybrid as pb;
use qkd_types::{KeyId, KmeId, SaeId, Secret};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

/// One KME: its identity and what it pins.
struct Kme {
    me: LocalIdentity,
    pinned: PinnedPeers,
}

/// Two provisioned KMEs, A and B, pinning each other.
fn pair(suite: Suite, seed: u64) -> (Kme, Kme) {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut a = LocalIdentity::new(
        KmeId::parse("kme-a").unwrap(),
        NodeSigningKey::generate(&mut rng).unwrap(),
    );
    let mut b = LocalIdentity::new(
        KmeId::parse("kme-b").unwrap(),
        NodeSigningKey::generate(&mut rng).unwrap(),
    );
    if let Some(k) = suite.static_kem() {
        a = a.with_static_kem(static_key(k));
        b = b.with_static_kem(static_key(k));
    }
    let mut pa = PinnedPeers::new();
    pa.insert(b.public_keys().unwrap());
    let mut pb = PinnedPeers::new();
    pb.insert(a.public_keys().unwrap());
    (Kme { me: a, pinned: pa }, Kme { me: b, pinned: pb })
}

/// Classic McEliece keygen is slow (0.1-0.2 s): generate the two static key pairs once.
fn static_key(k: qkd_kms::hybrid::PqKem) -> qkd_kms::hybrid::StaticKemKeyPair {
    use std::sync::OnceLock;
    static KEYS: OnceLock<Vec<(Vec<u8>, Vec<u8>)>> = OnceLock::new();
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let keys = KEYS.get_or_init(|| {
        (0..2)
            .map(|_| {
                let kp = qkd_kms::hybrid::StaticKemKeyPair::generate(k).unwrap();
                (
                    kp.public_key().as_bytes().to_vec(),
                    kp.secret_bytes().expose().to_vec(),
                )
            })
            .collect()
    });
    let (pk, sk) = &keys[NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 2];
    qkd_kms::hybrid::StaticKemKeyPair::from_parts(
        qkd_kms::hybrid::StaticKemPublicKey::new(k, pk.clone()).unwrap(),
        Secret::copy_from(sk),
    )
    .unwrap()
}

fn context(suite: Suite, policy: Policy) -> Context {
    Context {
        suite,
        policy,
        kme_a: KmeId::parse("kme-a").unwrap(),
        kme_b: KmeId::parse("kme-b").unwrap(),
        sae_master: SaeId::parse("sae-master").unwrap(),
        sae_slaves: vec![SaeId::parse("sae-slave").unwrap()],
        size_bits: 256,
    }
}

/// A batch of `n` slots and the relayed QKD keys behind them (what the relay delivered to both
/// ends, and what every trusted node on the path also knows).
fn batch(policy: Policy, n: usize, seed: u8) -> (Vec<KeySlot>, Vec<[u8; 32]>) {
    let slots = (0..n)
        .map(|i| KeySlot {
            key_id: KeyId::from_bytes([seed ^ i as u8; 16]),
            relay_key_id: policy
                .uses_qkd()
                .then(|| KeyId::from_bytes([0x80 ^ seed ^ i as u8; 16])),
        })
        .collect();
    let qkd = if policy.uses_qkd() {
        (0..n).map(|i| [seed.wrapping_add(i as u8); 32]).collect()
    } else {
        vec![]
    };
    (slots, qkd)
}

fn secrets(k: &[[u8; 32]]) -> Vec<Secret> {
    k.iter().map(|k| Secret::copy_from(k)).collect()
}

/// Message 1 from A to B, with the given slots and relayed keys.
fn start(
    a: &Kme,
    b: &Kme,
    ctx: Context,
    slots: Vec<KeySlot>,
    qkd: &[[u8; 32]],
    rng: &mut ChaCha20Rng,
) -> (Initiator, pb::HybridInit) {
    let peer = a.pinned.get(b.me.kme()).unwrap();
    Initiator::start(&a.me, peer, ctx, slots, secrets(qkd), rng).unwrap()
}

/// B's answer to message 1 (its own configuration: `suite`, `policy`), with its relayed keys.
fn reply(
    b: &Kme,
    m1: &pb::HybridInit,
    (suite, policy): (Suite, Policy),
    qkd: &[[u8; 32]],
    rng: &mut ChaCha20Rng,
) -> (qkd_kms::hybrid::Responder, pb::HybridReply) {
    ReceivedInit::parse(m1)
        .unwrap()
        .verify(&b.me, &b.pinned, suite, policy)
        .unwrap()
        .respond(&b.me, secrets(qkd), &mut MemoryReplayGuard::default(), rng)
        .unwrap()
}

/// Every message of one exchange and the keys of both ends.
struct Run {
    m1: pb::HybridInit,
    m2: pb::HybridReply,
    m3: pb::HybridConfirm,
    m4: pb::HybridAck,
    keys_a: Vec<HybridKey>,
    keys_b: Vec<HybridKey>,
}

fn run(suite: Suite, policy: Policy, n: usize) -> Run {
    let (a, b) = pair(suite, 1);
    let (slots, qkd) = batch(policy, n, 7);
    let mut rng = ChaCha20Rng::seed_from_u64(99);
    let peer = a.pinned.get(b.me.kme()).unwrap();
    let (init, m1) = Initiator::start(
        &a.me,
        peer,
        context(suite, policy),
        slots,
        secrets(&qkd),
        &mut rng,
    )
    .unwrap();
    let verified = ReceivedInit::parse(&m1)
        .unwrap()
        .verify(&b.me, &b.pinned, suite, policy)
        .unwrap();
    let (resp, m2) = verified
        .respond(
            &b.me,
            secrets(&qkd),
            &mut MemoryReplayGuard::default(),
            &mut rng,
        )
        .unwrap();
    let (wait, m3) = init.handle_reply(&a.me, &m2).unwrap();
    let (keys_b, pending) = resp.handle_confirm(&m3).unwrap();
    let m4 = pending.ack();
    let keys_a = wait.handle_ack(&m4).unwrap();
    Run {
        m1,
        m2,
        m3,
        m4,
        keys_a,
        keys_b,
    }
}

fn available_suites() -> Vec<Suite> {
    Suite::ALL
        .into_iter()
        .filter(|s| s.is_available())
        .collect()
}

#[test]
fn both_ends_derive_identical_keys_for_every_suite_and_policy() {
    let expected = if cfg!(feature = "oqs") { 6 } else { 3 };
    assert_eq!(available_suites().len(), expected);
    for suite in available_suites() {
        for policy in Policy::ALL {
            for n in [1, 3] {
                let r = run(suite, policy, n);
                assert_eq!(r.keys_a.len(), n);
                assert_eq!(r.keys_b.len(), n);
                for (ka, kb) in r.keys_a.iter().zip(&r.keys_b) {
                    assert_eq!(ka.key, kb.key, "{suite} {policy} N={n}");
                    assert_eq!(ka.key_id, kb.key_id);
                    assert_eq!(ka.relay_key_id, kb.relay_key_id);
                    assert_eq!(ka.key.len(), 32);
                    assert_eq!(ka.relay_key_id.is_some(), policy.uses_qkd());
                }
                // Distinct keys within a batch.
                if n == 3 {
                    assert_ne!(r.keys_a[0].key, r.keys_a[1].key);
                }
                // The messages carry no key bytes.
                let wire = format!("{:?}{:?}{:?}{:?}", r.m1, r.m2, r.m3, r.m4);
                let k = r.keys_a[0].key.expose();
                for m in [
                    prost::Message::encode_to_vec(&r.m1),
                    prost::Message::encode_to_vec(&r.m2),
                    prost::Message::encode_to_vec(&r.m3),
                    prost::Message::encode_to_vec(&r.m4),
                ] {
                    assert!(!m.windows(k.len()).any(|w| w == k));
                }
                assert!(!wire.contains(&format!("{:?}", &k[..8])));
            }
        }
    }
}

#[test]
fn fresh_exchange_gives_fresh_keys_for_the_same_relayed_key() {
    let r1 = run(Suite::X25519MlKem768, Policy::QkdPqT, 1);
    let r2 = run(Suite::X25519MlKem768, Policy::QkdPqT, 1);
    assert_ne!(r1.keys_a[0].key, r2.keys_a[0].key);
}

/// A trusted relay node on the path knows every k_QKD and sees every message. It cannot derive
/// K: whatever it uses for ss_T and ss_PQ (it can compute neither), its K differs.
#[test]
fn trusted_relay_knowing_every_qkd_key_cannot_derive_k() {
    for policy in [Policy::QkdPqT, Policy::QkdPq] {
        let suite = Suite::X25519MlKem768;
        let r = run(suite, policy, 3);
        let (_, qkd) = batch(policy, 3, 7);
        // The relay rebuilds everything public from the wire.
        let received = ReceivedInit::parse(&r.m1).unwrap();
        let ctx = Context {
            suite,
            policy,
            kme_a: received.kme_a().clone(),
            kme_b: KmeId::parse(&r.m1.kme_b).unwrap(),
            sae_master: received.sae_master().clone(),
            sae_slaves: received.sae_slaves().to_vec(),
            size_bits: r.m1.size_bits,
        };
        let slots: Vec<KeySlot> = r
            .keys_a
            .iter()
            .map(|k| KeySlot {
                key_id: k.key_id,
                relay_key_id: k.relay_key_id,
            })
            .collect();
        let b = Batch::new(ctx, slots, None).unwrap();
        let ma = Ma::parse(suite, policy, &r.m1.ma).unwrap();
        let mb = Mb::parse(suite, policy, &r.m2.mb).unwrap();
        // Its best guesses: public values, zeros, and its own fresh ML-KEM/X25519 secrets.
        let fit = |v: &[u8]| {
            let mut o = vec![0u8; 32];
            for (d, s) in o.iter_mut().zip(v) {
                *d = *s;
            }
            o
        };
        let guesses: Vec<(Vec<u8>, Vec<u8>)> = vec![
            (vec![0; 32], vec![0; 32]),
            (fit(&ma.epk_t), fit(&mb.epk_t)),
            (fit(&mb.epk_t), fit(&mb.ct_pq)),
            (fit(&ma.ek_pq), fit(&mb.ct_pq)),
            (fit(&ma.nonce), fit(&mb.nonce)),
            (vec![0xff; 32], vec![0x5a; 32]),
        ];
        for (t, pq) in guesses {
            let s = SharedSecrets {
                qkd: secrets(&qkd),
                classical: policy.uses_classical().then(|| Secret::copy_from(&t)),
                pq: Secret::copy_from(&pq),
                static_to_b: None,
                static_to_a: None,
            };
            let forged = combiner::derive_keys(&b, &r.m1.ma, &r.m2.mb, &s).unwrap();
            for (f, real) in forged.iter().zip(&r.keys_a) {
                assert_eq!(f.key_id, real.key_id);
                assert_ne!(f.key, real.key, "relay derived the real key ({policy})");
            }
        }
        // Its own ML-KEM decapsulation key cannot open B's ciphertext (made for A's ek_PQ).
        let own = aws_lc_rs::kem::DecapsulationKey::generate(&aws_lc_rs::kem::ML_KEM_768).unwrap();
        let ss = own
            .decapsulate(aws_lc_rs::kem::Ciphertext::from(&mb.ct_pq[..]))
            .unwrap();
        let s = SharedSecrets {
            qkd: secrets(&qkd),
            classical: policy
                .uses_classical()
                .then(|| Secret::copy_from(&[1u8; 32])),
            pq: Secret::copy_from(ss.as_ref()),
            static_to_b: None,
            static_to_a: None,
        };
        let forged = combiner::derive_keys(&b, &r.m1.ma, &r.m2.mb, &s).unwrap();
        assert_ne!(forged[0].key, r.keys_a[0].key);
    }
}

/// The relay substitutes its own MA (its own ML-KEM and X25519 keys, so that it would know
/// ss_PQ and ss_T): B refuses it, whether the relay keeps sigA or signs with its own key.
#[test]
fn relay_substituting_its_own_ma_or_mb_fails_signature_verification() {
    let suite = Suite::X25519MlKem768;
    let policy = Policy::QkdPqT;
    let (a, b) = pair(suite, 1);
    let r = run(suite, policy, 1);
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let relay_key = NodeSigningKey::generate(&mut rng).unwrap();

    let own_dk = aws_lc_rs::kem::DecapsulationKey::generate(&aws_lc_rs::kem::ML_KEM_768).unwrap();
    let own_ek = own_dk.encapsulation_key().unwrap();
    let own_x = aws_lc_rs::agreement::PrivateKey::generate(&aws_lc_rs::agreement::X25519).unwrap();
    let their = Ma::parse(suite, policy, &r.m1.ma).unwrap();
    let fake_ma = Ma {
        ek_pq: own_ek.key_bytes().unwrap().as_ref().to_vec(),
        epk_t: own_x.compute_public_key().unwrap().as_ref().to_vec(),
        nonce: [9; 32],
        ct_static: vec![],
    }
    .encode();

    // Keeping A's signature.
    let mut m1 = r.m1.clone();
    m1.ma = fake_ma.clone();
    let err = ReceivedInit::parse(&m1)
        .unwrap()
        .verify(&b.me, &b.pinned, suite, policy)
        .unwrap_err();
    assert_eq!(err, HybridError::BadSignature("sigA"));

    // Re-signing with its own key (the relay has no pinned identity at B).
    let received = ReceivedInit::parse(&r.m1).unwrap();
    let ctx = Context {
        suite,
        policy,
        kme_a: received.kme_a().clone(),
        kme_b: b.me.kme().clone(),
        sae_master: received.sae_master().clone(),
        sae_slaves: received.sae_slaves().to_vec(),
        size_bits: 256,
    };
    let slots = vec![KeySlot {
        key_id: r.keys_a[0].key_id,
        relay_key_id: r.keys_a[0].relay_key_id,
    }];
    let bt = Batch::new(ctx, slots, None).unwrap();
    let relay_identity = LocalIdentity::new(a.me.kme().clone(), relay_key);
    // The relay's signature over its MA, produced the way A would (through a throwaway
    // exchange of its own identity, since signing is internal to the state machine).
    let relay_pins_b = a.pinned.get(b.me.kme()).unwrap().clone();
    let (_, relay_m1) = Initiator::start(
        &relay_identity,
        &relay_pins_b,
        bt.context().clone(),
        bt.slots().to_vec(),
        secrets(&batch(policy, 1, 7).1),
        &mut rng,
    )
    .unwrap();
    let err = ReceivedInit::parse(&relay_m1)
        .unwrap()
        .verify(&b.me, &b.pinned, suite, policy)
        .unwrap_err();
    assert_eq!(err, HybridError::BadSignature("sigA"));
    assert_ne!(
        their.ek_pq,
        Ma::parse(suite, policy, &relay_m1.ma).unwrap().ek_pq
    );

    // Substituting MB towards A: A refuses it before deriving anything.
    let (slots, qkd) = batch(policy, 1, 7);
    let peer = a.pinned.get(b.me.kme()).unwrap();
    let (init, m1) = Initiator::start(
        &a.me,
        peer,
        context(suite, policy),
        slots,
        secrets(&qkd),
        &mut rng,
    )
    .unwrap();
    let (_, mut m2) = reply(&b, &m1, (suite, policy), &qkd, &mut rng);
    let ma = Ma::parse(suite, policy, &m1.ma).unwrap();
    let ek = aws_lc_rs::kem::EncapsulationKey::new(&aws_lc_rs::kem::ML_KEM_768, &ma.ek_pq).unwrap();
    let (ct, _) = ek.encapsulate().unwrap();
    m2.mb = Mb {
        ct_pq: ct.as_ref().to_vec(),
        epk_t: own_x.compute_public_key().unwrap().as_ref().to_vec(),
        nonce: [1; 32],
        ct_static: vec![],
    }
    .encode();
    assert_eq!(
        init.handle_reply(&a.me, &m2).unwrap_err(),
        HybridError::BadSignature("sigB")
    );
}

/// Flips one byte (first, middle or last) of a byte field, or appends one if it is empty.
fn flips(v: &[u8]) -> Vec<Vec<u8>> {
    if v.is_empty() {
        return vec![vec![0]];
    }
    let mut out = Vec::new();
    for i in [0, v.len() / 2, v.len() - 1] {
        let mut w = v.to_vec();
        w[i] ^= 0x01;
        out.push(w);
    }
    let mut longer = v.to_vec();
    longer.push(0);
    out.push(longer);
    out.push(v[..v.len() - 1].to_vec());
    out
}

/// Each tampered field of each message is refused, and no key comes out of that end.
#[test]
fn every_tampered_field_is_rejected_before_any_key_is_released() {
    for suite in [Suite::X25519MlKem768, Suite::P384MlKem1024] {
        let policy = Policy::QkdPqT;
        let (a, b) = pair(suite, 1);
        let (slots, qkd) = batch(policy, 2, 7);
        let mut rng = ChaCha20Rng::seed_from_u64(3);

        // --- message 1, at B ---
        let start = |rng: &mut ChaCha20Rng| {
            Initiator::start(
                &a.me,
                a.pinned.get(b.me.kme()).unwrap(),
                context(suite, policy),
                slots.clone(),
                secrets(&qkd),
                rng,
            )
            .unwrap()
        };
        let (_, m1) = start(&mut rng);
        let at_b = |m: &pb::HybridInit| -> Result<(), HybridError> {
            let v = ReceivedInit::parse(m)?.verify(&b.me, &b.pinned, suite, policy)?;
            v.respond(
                &b.me,
                secrets(&qkd),
                &mut MemoryReplayGuard::default(),
                &mut ChaCha20Rng::seed_from_u64(4),
            )
            .map(|_| ())
        };
        assert!(at_b(&m1).is_ok());
        let mut tampered: Vec<(&str, pb::HybridInit)> = Vec::new();
        let mut push = |what, f: &dyn Fn(&mut pb::HybridInit)| {
            let mut m = m1.clone();
            f(&mut m);
            tampered.push((what, m));
        };
        push("suite", &|m| m.suite = "X25519/ML-KEM-1024".into());
        push("policy", &|m| m.policy = "QKD+PQ".into());
        push("kme_a", &|m| m.kme_a = "kme-c".into());
        push("kme_b", &|m| m.kme_b = "kme-c".into());
        push("sae_master", &|m| m.sae_master = "sae-x".into());
        push("sae_slaves", &|m| m.sae_slaves[0] = "sae-x".into());
        push("sae_slaves+", &|m| m.sae_slaves.push("sae-x".into()));
        push("size_bits", &|m| m.size_bits = 512);
        push("key_ids", &|m| m.key_ids[1][15] ^= 1);
        push("key_ids order", &|m| m.key_ids.swap(0, 1));
        push("key_ids-", &|m| {
            m.key_ids.pop();
        });
        push("relay_key_ids", &|m| m.relay_key_ids[0][0] ^= 1);
        push("relay_key_ids order", &|m| m.relay_key_ids.swap(0, 1));
        push("relay_key_ids empty", &|m| m.relay_key_ids.clear());
        for (i, v) in flips(&m1.ma).into_iter().enumerate() {
            tampered.push((["ma 0", "ma mid", "ma end", "ma+", "ma-"][i], {
                let mut m = m1.clone();
                m.ma = v;
                m
            }));
        }
        for (i, v) in flips(&m1.sig_a).into_iter().enumerate() {
            tampered.push((["sig 0", "sig mid", "sig end", "sig+", "sig-"][i], {
                let mut m = m1.clone();
                m.sig_a = v;
                m
            }));
        }
        for (what, m) in &tampered {
            let e = at_b(m).expect_err(what);
            assert!(
                matches!(
                    e,
                    HybridError::BadSignature(_)
                        | HybridError::Malformed(_)
                        | HybridError::SuiteMismatch { .. }
                        | HybridError::PolicyMismatch { .. }
                        | HybridError::WrongIdentity(_)
                        | HybridError::UnknownPeer(_)
                ),
                "{what}: {e:?}"
            );
            assert_eq!(e.culprit(), qkd_kms::hybrid::Culprit::Peer, "{what}");
        }

        // --- messages 2 and 4, at A; message 3, at B ---
        let fresh = |rng: &mut ChaCha20Rng| {
            let (init, m1) = start(rng);
            let (resp, m2) = ReceivedInit::parse(&m1)
                .unwrap()
                .verify(&b.me, &b.pinned, suite, policy)
                .unwrap()
                .respond(&b.me, secrets(&qkd), &mut MemoryReplayGuard::default(), rng)
                .unwrap();
            (init, resp, m2)
        };
        type Field = fn(&mut pb::HybridReply) -> &mut Vec<u8>;
        let m2_fields: [(&str, Field); 4] = [
            ("exchange_id", |m| &mut m.exchange_id),
            ("mb", |m| &mut m.mb),
            ("sig_b", |m| &mut m.sig_b),
            ("tag_b", |m| &mut m.tag_b),
        ];
        for (what, field) in m2_fields {
            for v_idx in 0..5 {
                let (init, _, mut m2) = fresh(&mut rng);
                let v = flips(field(&mut m2))[v_idx].clone();
                *field(&mut m2) = v;
                let e = init.handle_reply(&a.me, &m2).expect_err(what);
                assert_eq!(e.culprit(), qkd_kms::hybrid::Culprit::Peer, "{what}: {e:?}");
            }
        }
        for v_idx in 0..5 {
            for which in ["exchange_id", "tag_a"] {
                let (init, resp, m2) = fresh(&mut rng);
                let (_, mut m3) = init.handle_reply(&a.me, &m2).unwrap();
                let f = if which == "tag_a" {
                    &mut m3.tag_a
                } else {
                    &mut m3.exchange_id
                };
                *f = flips(f)[v_idx].clone();
                let e = resp.handle_confirm(&m3).expect_err(which);
                assert!(
                    matches!(e, HybridError::BadTag("tagA") | HybridError::WrongExchange),
                    "{e:?}"
                );
            }
            for which in ["exchange_id", "tag_ack"] {
                let (init, resp, m2) = fresh(&mut rng);
                let (wait, m3) = init.handle_reply(&a.me, &m2).unwrap();
                let (_, pending) = resp.handle_confirm(&m3).unwrap();
                let mut m4 = pending.ack();
                let f = if which == "tag_ack" {
                    &mut m4.tag_ack
                } else {
                    &mut m4.exchange_id
                };
                *f = flips(f)[v_idx].clone();
                let e = wait.handle_ack(&m4).expect_err(which);
                assert!(
                    matches!(e, HybridError::BadTag("ack") | HybridError::WrongExchange),
                    "{e:?}"
                );
            }
        }
    }
}

/// A relay node that changes the relayed QKD key towards B is caught by key confirmation.
#[test]
fn tampered_relayed_qkd_key_is_caught_by_confirmation() {
    let suite = Suite::X25519MlKem768;
    let policy = Policy::QkdPqT;
    let (a, b) = pair(suite, 1);
    let (slots, qkd) = batch(policy, 2, 7);
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let (init, m1) = start(&a, &b, context(suite, policy), slots, &qkd, &mut rng);
    let mut wrong = qkd.clone();
    wrong[1][0] ^= 1;
    let (_, m2) = reply(&b, &m1, (suite, policy), &wrong, &mut rng);
    assert_eq!(
        init.handle_reply(&a.me, &m2).unwrap_err(),
        HybridError::BadTag("tagB")
    );
}

#[test]
fn configuration_mismatch_aborts_without_fallback() {
    let (a, b) = pair(Suite::X25519MlKem768, 1);
    let (slots, qkd) = batch(Policy::QkdPqT, 1, 7);
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let (_, m1) = start(
        &a,
        &b,
        context(Suite::X25519MlKem768, Policy::QkdPqT),
        slots,
        &qkd,
        &mut rng,
    );
    let r = ReceivedInit::parse(&m1).unwrap();
    assert_eq!(
        r.clone()
            .verify(&b.me, &b.pinned, Suite::X25519MlKem1024, Policy::QkdPqT)
            .unwrap_err(),
        HybridError::SuiteMismatch {
            configured: Suite::X25519MlKem1024,
            received: "X25519/ML-KEM-768".into()
        }
    );
    for p in [Policy::QkdPq, Policy::PqT] {
        assert!(matches!(
            r.clone().verify(&b.me, &b.pinned, Suite::X25519MlKem768, p),
            Err(HybridError::PolicyMismatch { .. })
        ));
    }
    // B is not KME_B; KME_A is not pinned at B.
    let (c, _) = pair(Suite::X25519MlKem768, 2);
    assert!(matches!(
        r.clone()
            .verify(&c.me, &b.pinned, Suite::X25519MlKem768, Policy::QkdPqT),
        Err(HybridError::WrongIdentity(_))
    ));
    assert!(matches!(
        r.clone().verify(
            &b.me,
            &PinnedPeers::new(),
            Suite::X25519MlKem768,
            Policy::QkdPqT
        ),
        Err(HybridError::UnknownPeer(_))
    ));
    // KME_A pinned with another key pair: A's signature does not verify.
    let mut other = PinnedPeers::new();
    other.insert(
        PeerPublicKeys::new(
            KmeId::parse("kme-a").unwrap(),
            vec![c.me.signing().public_key()],
        )
        .unwrap(),
    );
    assert_eq!(
        r.verify(&b.me, &other, Suite::X25519MlKem768, Policy::QkdPqT)
            .unwrap_err(),
        HybridError::BadSignature("sigA")
    );
}

#[test]
fn missing_or_extra_components_fail_closed() {
    let (a, b) = pair(Suite::X25519MlKem768, 1);
    let peer = a.pinned.get(b.me.kme()).unwrap();
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    for policy in [Policy::QkdPqT, Policy::QkdPq] {
        let (slots, qkd) = batch(policy, 2, 7);
        // No relayed key, one short, or a short key.
        for q in [
            vec![],
            secrets(&qkd[..1]),
            vec![Secret::zeroed(31), Secret::zeroed(32)],
        ] {
            let e = Initiator::start(
                &a.me,
                peer,
                context(Suite::X25519MlKem768, policy),
                slots.clone(),
                q,
                &mut rng,
            )
            .unwrap_err();
            assert!(matches!(e, HybridError::QkdKeys(_)), "{e:?}");
        }
        // B without its relayed keys.
        let (_, m1) = Initiator::start(
            &a.me,
            peer,
            context(Suite::X25519MlKem768, policy),
            slots.clone(),
            secrets(&qkd),
            &mut rng,
        )
        .unwrap();
        let v = ReceivedInit::parse(&m1)
            .unwrap()
            .verify(&b.me, &b.pinned, Suite::X25519MlKem768, policy)
            .unwrap();
        assert!(matches!(
            v.respond(&b.me, vec![], &mut MemoryReplayGuard::default(), &mut rng),
            Err(HybridError::QkdKeys(_))
        ));
        // Slots without relay key IDs under a QKD policy.
        let bare: Vec<KeySlot> = slots
            .iter()
            .map(|s| KeySlot {
                relay_key_id: None,
                ..*s
            })
            .collect();
        assert!(matches!(
            Initiator::start(
                &a.me,
                peer,
                context(Suite::X25519MlKem768, policy),
                bare,
                secrets(&qkd),
                &mut rng
            ),
            Err(HybridError::QkdKeys(_))
        ));
    }
    // PQ+T with a relayed key: refused too (it would silently not be used).
    let (slots, _) = batch(Policy::PqT, 1, 7);
    assert!(matches!(
        Initiator::start(
            &a.me,
            peer,
            context(Suite::X25519MlKem768, Policy::PqT),
            slots,
            secrets(&[[1; 32]]),
            &mut rng
        ),
        Err(HybridError::QkdKeys(_))
    ));
}

#[test]
fn replayed_init_is_refused_through_the_hook() {
    let suite = Suite::X25519MlKem768;
    let policy = Policy::QkdPqT;
    let (a, b) = pair(suite, 1);
    let (slots, qkd) = batch(policy, 1, 7);
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let (_, m1) = start(&a, &b, context(suite, policy), slots, &qkd, &mut rng);
    /// A guard that also shows what the caller persists.
    #[derive(Default)]
    struct Recording {
        inner: MemoryReplayGuard,
        stored: Vec<(KmeId, [u8; 32])>,
    }
    impl ReplayGuard for Recording {
        fn check_and_record(&mut self, kme_a: &KmeId, nonce_a: &[u8; 32]) -> bool {
            self.stored.push((kme_a.clone(), *nonce_a));
            self.inner.check_and_record(kme_a, nonce_a)
        }
    }
    let mut guard = Recording::default();
    let verify = || {
        ReceivedInit::parse(&m1)
            .unwrap()
            .verify(&b.me, &b.pinned, suite, policy)
            .unwrap()
    };
    let v = verify();
    let nonce = *v.nonce_a();
    assert_eq!(v.kme_a(), a.me.kme());
    assert!(
        v.respond(&b.me, secrets(&qkd), &mut guard, &mut rng)
            .is_ok()
    );
    assert_eq!(guard.stored, vec![(a.me.kme().clone(), nonce)]);
    let e = verify()
        .respond(&b.me, secrets(&qkd), &mut guard, &mut rng)
        .unwrap_err();
    assert_eq!(e, HybridError::Replay);
    // A guard that cannot record fails closed.
    struct Broken;
    impl ReplayGuard for Broken {
        fn check_and_record(&mut self, _: &KmeId, _: &[u8; 32]) -> bool {
            false
        }
    }
    assert_eq!(
        verify()
            .respond(&b.me, secrets(&qkd), &mut Broken, &mut rng)
            .unwrap_err(),
        HybridError::Replay
    );
}

#[test]
fn key_rotation_accepts_either_pinned_key() {
    let suite = Suite::X25519MlKem768;
    let policy = Policy::PqT;
    let (a, b) = pair(suite, 1);
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    let new_a = LocalIdentity::new(
        a.me.kme().clone(),
        NodeSigningKey::generate(&mut rng).unwrap(),
    );
    let mut pinned = PinnedPeers::new();
    pinned.insert(
        PeerPublicKeys::new(
            a.me.kme().clone(),
            vec![a.me.signing().public_key(), new_a.signing().public_key()],
        )
        .unwrap(),
    );
    for ident in [&a.me, &new_a] {
        let (slots, _) = batch(policy, 1, 7);
        let (_, m1) = Initiator::start(
            ident,
            a.pinned.get(b.me.kme()).unwrap(),
            context(suite, policy),
            slots,
            vec![],
            &mut rng,
        )
        .unwrap();
        assert!(
            ReceivedInit::parse(&m1)
                .unwrap()
                .verify(&b.me, &pinned, suite, policy)
                .is_ok()
        );
    }
}

/// Tags are compared only through `verify_tag`, which uses aws-lc's constant-time comparison;
/// this tidy check keeps it that way (no `==` on tags anywhere in the hybrid sources).
#[test]
fn tags_are_compared_in_constant_time_only() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/hybrid");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap();
        for (n, line) in code.lines().enumerate() {
            let l = line.to_lowercase();
            let compares = l.contains("==") || l.contains("!=") || l.contains(".eq(");
            let about_tags = l.contains("tag") || l.contains("mac") || l.contains("kc_");
            assert!(
                !(compares && about_tags),
                "{}:{}: tag compared without verify_tag: {line}",
                path.display(),
                n + 1
            );
        }
        if text.contains("fn verify_tag(") {
            assert!(text.contains("constant_time::verify_slices_are_equal"));
            checked += 1;
        }
    }
    assert_eq!(checked, 1);
    // And behaviourally: a tag differing in its first or last byte, or truncated, is refused.
    let suite = Suite::X25519MlKem768;
    let (a, b) = pair(suite, 1);
    let (slots, qkd) = batch(Policy::QkdPqT, 1, 7);
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    for mutate in [
        |t: &mut Vec<u8>| t[0] ^= 0x80,
        |t: &mut Vec<u8>| t[47] ^= 0x01,
        |t: &mut Vec<u8>| t.truncate(47),
        |t: &mut Vec<u8>| t.clear(),
    ] {
        let (init, m1) = start(
            &a,
            &b,
            context(suite, Policy::QkdPqT),
            slots.clone(),
            &qkd,
            &mut rng,
        );
        let (_, mut m2) = reply(&b, &m1, (suite, Policy::QkdPqT), &qkd, &mut rng);
        mutate(&mut m2.tag_b);
        assert_eq!(
            init.handle_reply(&a.me, &m2).unwrap_err(),
            HybridError::BadTag("tagB")
        );
    }
}

#[test]
fn state_machines_do_not_print_secrets() {
    let r = run(Suite::X25519MlKem768, Policy::QkdPqT, 1);
    let k = &r.keys_a[0];
    let shown = format!("{k:?}");
    assert!(shown.contains("<SECRET"), "{shown}");
    assert!(!shown.contains(&hex::encode(&k.key.expose()[..4])));
    let (a, b) = pair(Suite::X25519MlKem768, 1);
    let (slots, qkd) = batch(Policy::QkdPqT, 1, 7);
    let (init, _) = Initiator::start(
        &a.me,
        a.pinned.get(b.me.kme()).unwrap(),
        context(Suite::X25519MlKem768, Policy::QkdPqT),
        slots,
        secrets(&qkd),
        &mut ChaCha20Rng::seed_from_u64(1),
    )
    .unwrap();
    let shown = format!("{init:?}");
    assert!(!shown.contains(&format!("{:?}", &qkd[0][..4])), "{shown}");
    assert!(shown.contains("SECRET"));
}

#[test]
fn static_suite_needs_static_keys_at_both_ends() {
    let suite = Suite::X25519McEliece460896;
    if !suite.is_available() {
        return;
    }
    let (a, b) = pair(suite, 1);
    let (slots, qkd) = batch(Policy::QkdPqT, 1, 7);
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    // A without a static key of its own, or without B's pinned static key: never one-sided.
    let bare_a = LocalIdentity::new(
        a.me.kme().clone(),
        NodeSigningKey::from_raw(a.me.signing().to_raw().unwrap()).unwrap(),
    );
    let e = Initiator::start(
        &bare_a,
        a.pinned.get(b.me.kme()).unwrap(),
        context(suite, Policy::QkdPqT),
        slots.clone(),
        secrets(&qkd),
        &mut rng,
    )
    .unwrap_err();
    assert!(matches!(e, HybridError::StaticKeys(_)), "{e:?}");
    let b_no_static =
        PeerPublicKeys::new(b.me.kme().clone(), vec![b.me.signing().public_key()]).unwrap();
    let e = Initiator::start(
        &a.me,
        &b_no_static,
        context(suite, Policy::QkdPqT),
        slots,
        secrets(&qkd),
        &mut rng,
    )
    .unwrap_err();
    assert!(matches!(e, HybridError::StaticKeys(_)), "{e:?}");
}
