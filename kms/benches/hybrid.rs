//! Hybrid layer benchmark (not a timed test): the combiner's own cost per key against one
//! ML-KEM-768 keygen + encaps + decaps plus an X25519 exchange, hybrid keys/s per core for
//! batches of 1, 16 and 128 keys (one authenticated exchange per batch, both ends on one core),
//! and the cost of one full authenticated exchange.
//!
//! `cargo bench -p qkd-kms --bench hybrid` measures; without `--bench` (as `cargo test
//! --benches`, or the `hybrid::bench_smoke` integration test) every workload runs a few times
//! only, so the benchmark cannot rot.

use std::hint::black_box;
use std::time::{Duration, Instant};

use aws_lc_rs::{agreement, kem};
use qkd_kms::hybrid::combiner::{self, Batch, Ma, Mb, SharedSecrets};
use qkd_kms::hybrid::{
    Context, Initiator, KeySlot, LocalIdentity, MemoryReplayGuard, NodeSigningKey, PinnedPeers,
    Policy, ReceivedInit, Suite,
};
use qkd_types::{KeyId, KmeId, SaeId, Secret};

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    for line in run(full) {
        println!("{line}");
    }
}

/// Runs every workload; `full = false` runs each a handful of times. Returns report lines.
pub fn run(full: bool) -> Vec<String> {
    let budget = if full {
        Duration::from_millis(1500)
    } else {
        Duration::ZERO
    };
    let mut out = Vec::new();

    // 1. The combiner alone, per key (N = 1 batch: context hash + HKDF; plus the batch share).
    let fx = CombinerFixture::new(Suite::X25519MlKem768, Policy::QkdPqT, 1);
    let comb1 = time(budget, || {
        black_box(combiner::derive_keys(&fx.batch, &fx.ma, &fx.mb, &fx.secrets).ok());
    });
    let fx128 = CombinerFixture::new(Suite::X25519MlKem768, Policy::QkdPqT, 128);
    let comb128 = time(budget, || {
        black_box(combiner::derive_keys(&fx128.batch, &fx128.ma, &fx128.mb, &fx128.secrets).ok());
    }) / 128;

    // 2. The public-key work the combiner sits on: ML-KEM-768 keygen + encaps + decaps and an
    //    X25519 exchange (two ephemeral keys, two scalar multiplications each side).
    let pk_work = time(budget, || {
        black_box(public_key_work());
    });
    out.push(format!(
        "combiner per key, N=1 batch: {} µs; N=128 batch: {} µs/key",
        us(comb1),
        us(comb128)
    ));
    out.push(format!(
        "ML-KEM-768 keygen+encaps+decaps + X25519 exchange: {} µs",
        us(pk_work)
    ));
    out.push(format!(
        "combiner / public-key work: {:.1} % (N=1), {:.1} % (N=128 per key); target < 10 %",
        100.0 * comb1.as_secs_f64() / pk_work.as_secs_f64(),
        100.0 * comb128.as_secs_f64() / pk_work.as_secs_f64()
    ));

    // 3. Full authenticated exchanges, both ends on this one core.
    let ex = ExchangeFixture::new();
    for n in [1usize, 16, 128] {
        let t = time(budget, || {
            black_box(ex.exchange(Suite::X25519MlKem768, Policy::QkdPqT, n));
        });
        out.push(format!(
            "authenticated exchange X25519/ML-KEM-768 QKD+PQ+T, N={n}: {} µs both ends -> {:.0} hybrid keys/s per core",
            us(t),
            n as f64 / t.as_secs_f64()
        ));
    }
    let mut others = vec![Suite::X25519MlKem1024, Suite::P384MlKem1024];
    if cfg!(feature = "oqs") {
        others.extend([Suite::X25519Frodo976Aes, Suite::X25519Frodo1344Aes]);
    }
    for suite in others {
        let t = time(budget, || {
            black_box(ex.exchange(suite, Policy::QkdPqT, 1));
        });
        out.push(format!(
            "authenticated exchange {suite} QKD+PQ+T, N=1: {} µs both ends",
            us(t)
        ));
    }
    out
}

/// ML-KEM-768 keygen + encaps + decaps, and X25519: two ephemeral keys, two agreements.
fn public_key_work() -> Option<usize> {
    let dk = kem::DecapsulationKey::generate(&kem::ML_KEM_768).ok()?;
    let (ct, _) = dk.encapsulation_key().ok()?.encapsulate().ok()?;
    let ss = dk.decapsulate(ct.as_ref().into()).ok()?;
    let a = agreement::PrivateKey::generate(&agreement::X25519).ok()?;
    let b = agreement::PrivateKey::generate(&agreement::X25519).ok()?;
    let (pa, pb) = (a.compute_public_key().ok()?, b.compute_public_key().ok()?);
    let x25519 = agreement::UnparsedPublicKey::new;
    let s1 = agreement::agree(&a, x25519(&agreement::X25519, pb.as_ref()), (), |s| {
        Ok(s.len())
    });
    let s2 = agreement::agree(&b, x25519(&agreement::X25519, pa.as_ref()), (), |s| {
        Ok(s.len())
    });
    Some(ss.as_ref().len() + s1.ok()? + s2.ok()?)
}

fn us(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e6)
}

/// Median time of one call, over rounds of about `budget / 7` each (at least 3 calls when
/// `budget` is zero).
fn time(budget: Duration, mut f: impl FnMut()) -> Duration {
    f(); // warm-up
    if budget.is_zero() {
        f();
        f();
        return Duration::ZERO;
    }
    let t0 = Instant::now();
    f();
    let one = t0.elapsed().max(Duration::from_nanos(50));
    let per_round = ((budget.as_secs_f64() / 7.0) / one.as_secs_f64()).max(1.0) as u32;
    let mut samples: Vec<Duration> = (0..7)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..per_round {
                f();
            }
            t.elapsed() / per_round
        })
        .collect();
    samples.sort();
    samples[3]
}

fn ids(n: usize, seed: u8) -> Vec<KeySlot> {
    (0..n)
        .map(|i| KeySlot {
            key_id: KeyId::from_bytes([seed ^ (i as u8); 16]),
            relay_key_id: Some(KeyId::from_bytes([0x80 ^ seed ^ (i as u8); 16])),
        })
        .collect()
}

fn context(suite: Suite, policy: Policy) -> Context {
    let id = |s: &str| KmeId::parse(s).ok();
    let sae = |s: &str| SaeId::parse(s).ok();
    // Constant, valid IDs: parsing cannot fail.
    Context {
        suite,
        policy,
        kme_a: id("kme-a").unwrap_or_else(|| unreachable!()),
        kme_b: id("kme-b").unwrap_or_else(|| unreachable!()),
        sae_master: sae("sae-master").unwrap_or_else(|| unreachable!()),
        sae_slaves: vec![sae("sae-slave").unwrap_or_else(|| unreachable!())],
        size_bits: 256,
    }
}

struct CombinerFixture {
    batch: Batch,
    ma: Vec<u8>,
    mb: Vec<u8>,
    secrets: SharedSecrets,
}

impl CombinerFixture {
    fn new(suite: Suite, policy: Policy, n: usize) -> Self {
        let k = suite.ephemeral_kem();
        let c = suite.classical();
        let batch = Batch::new(context(suite, policy), ids(n, 1), None)
            .unwrap_or_else(|e| panic!("fixture batch: {e}"));
        let ma = Ma {
            ek_pq: vec![1; k.public_key_len()],
            epk_t: vec![2; c.public_key_len()],
            nonce: [3; 32],
            ct_static: vec![],
        }
        .encode();
        let mb = Mb {
            ct_pq: vec![4; k.ciphertext_len()],
            epk_t: vec![5; c.public_key_len()],
            nonce: [6; 32],
            ct_static: vec![],
        }
        .encode();
        let secrets = SharedSecrets {
            qkd: (0..n).map(|i| Secret::copy_from(&[i as u8; 32])).collect(),
            classical: Some(Secret::copy_from(&[7; 32])),
            pq: Secret::copy_from(&[8; 32]),
            static_to_b: None,
            static_to_a: None,
        };
        Self {
            batch,
            ma,
            mb,
            secrets,
        }
    }
}

struct ExchangeFixture {
    a: LocalIdentity,
    b: LocalIdentity,
    pinned_at_b: PinnedPeers,
    a_pins_b: qkd_kms::hybrid::PeerPublicKeys,
}

impl ExchangeFixture {
    fn new() -> Self {
        let mut rng = rand::rng();
        let key = |rng: &mut rand::rngs::ThreadRng| {
            NodeSigningKey::generate(rng).unwrap_or_else(|e| panic!("signing key: {e}"))
        };
        let a = LocalIdentity::new(
            context(Suite::default(), Policy::default()).kme_a,
            key(&mut rng),
        );
        let b = LocalIdentity::new(
            context(Suite::default(), Policy::default()).kme_b,
            key(&mut rng),
        );
        let mut pinned_at_b = PinnedPeers::new();
        let pa = a
            .public_keys()
            .unwrap_or_else(|e| panic!("public keys: {e}"));
        pinned_at_b.insert(pa);
        let a_pins_b = b
            .public_keys()
            .unwrap_or_else(|e| panic!("public keys: {e}"));
        Self {
            a,
            b,
            pinned_at_b,
            a_pins_b,
        }
    }

    /// One whole exchange (messages 1-4), both ends; returns the number of keys agreed.
    fn exchange(&self, suite: Suite, policy: Policy, n: usize) -> usize {
        let qkd = || (0..n).map(|i| Secret::copy_from(&[i as u8; 32])).collect();
        let go = || -> Result<usize, qkd_kms::hybrid::HybridError> {
            let mut rng = rand::rng();
            let (init, m1) = Initiator::start(
                &self.a,
                &self.a_pins_b,
                context(suite, policy),
                ids(n, 9),
                qkd(),
                &mut rng,
            )?;
            let (resp, m2) = ReceivedInit::parse(&m1)?
                .verify(&self.b, &self.pinned_at_b, suite, policy)?
                .respond(&self.b, qkd(), &mut MemoryReplayGuard::default(), &mut rng)?;
            let (wait, m3) = init.handle_reply(&self.a, &m2)?;
            let (kb, pending) = resp.handle_confirm(&m3)?;
            let ka = wait.handle_ack(&pending.ack())?;
            Ok(ka.len().min(kb.len()))
        };
        go().unwrap_or_else(|e| panic!("exchange: {e}"))
    }
}
