//! A test-only, in-memory [`KeyService`] with real pools and consume-once delivery, so that the
//! ETSI 014 conformance table checks meaningful behaviour (503 without consuming, keys fetched
//! once per slave, a third SAE refused without burning the key) without the real key manager.
//!
//! Model: one pool of key bits per ordered (master, slave) pair; enc_keys takes `number × size`
//! bits atomically or fails with `InsufficientKeyMaterial`; every delivered key remembers its
//! master, its slaves and which slaves fetched it; dec_keys is atomic over the whole batch.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use async_trait::async_trait;
use qkd_kms::api::{
    DecKeysRequest, DeliveredKey, EncKeysRequest, KeyLimits, KeyProfile, KeyService, PairStatus,
    ServiceError,
};
use qkd_types::{KeyId, KmeId, SaeId, Secret};

/// Registration of the fake KME.
#[derive(Debug, Clone)]
pub struct FakeConfig {
    /// This KME's ID.
    pub kme: &'static str,
    /// SAEs attached to this KME.
    pub attached: Vec<&'static str>,
    /// SAEs attached elsewhere in the network.
    pub remote: Vec<&'static str>,
    /// Ordered pairs (master, slave) that may share keys, with their pool size in bits.
    pub pairs: Vec<(&'static str, &'static str, u64)>,
}

/// Keys delivered to a master, awaiting their slaves.
#[derive(Debug)]
struct Stored {
    master: SaeId,
    slaves: Vec<SaeId>,
    fetched: HashSet<SaeId>,
    key: Secret,
}

#[derive(Debug)]
struct State {
    /// Remaining bits per (master, slave).
    pools: HashMap<(SaeId, SaeId), u64>,
    keys: HashMap<KeyId, Stored>,
    /// Deterministic key bytes: a counter run through a mixer (tests need distinct keys, not
    /// secure ones).
    counter: u64,
}

/// The fake key manager.
#[derive(Debug)]
pub struct FakeKeys {
    config: FakeConfig,
    capacity: HashMap<(SaeId, SaeId), u64>,
    state: Mutex<State>,
}

fn sae(s: &str) -> SaeId {
    SaeId::parse(s).expect("test SAE IDs are valid")
}

impl FakeKeys {
    /// A fake KME with full pools.
    pub fn new(config: FakeConfig) -> Self {
        let capacity: HashMap<_, _> = config
            .pairs
            .iter()
            .map(|(m, s, bits)| ((sae(m), sae(s)), *bits))
            .collect();
        Self {
            state: Mutex::new(State {
                pools: capacity.clone(),
                keys: HashMap::new(),
                counter: 0,
            }),
            capacity,
            config,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("fake state lock poisoned")
    }
}

fn mix(mut z: u64) -> u64 {
    // splitmix64
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[async_trait]
impl KeyService for FakeKeys {
    fn admits(&self, s: &SaeId) -> bool {
        self.config.attached.contains(&s.as_str())
    }

    fn knows(&self, s: &SaeId) -> bool {
        self.admits(s) || self.config.remote.contains(&s.as_str())
    }

    fn limits(&self, _: &SaeId, _: &SaeId) -> KeyLimits {
        // The conformance table's contract: no multicast.
        KeyLimits {
            max_sae_id_count: 0,
            ..KeyLimits::default()
        }
    }

    fn may_pair(&self, master: &SaeId, slave: &SaeId) -> bool {
        self.capacity.contains_key(&(master.clone(), slave.clone()))
    }

    fn profile(&self, _: &SaeId, _: &SaeId) -> KeyProfile {
        // Every pair of the fake is made alike.
        KeyProfile {
            policy: "QKD+PQ+T",
            suite: "X25519/ML-KEM-768",
        }
    }

    async fn status(&self, master: &SaeId, slave: &SaeId) -> Result<PairStatus, ServiceError> {
        let limits = self.limits(master, slave);
        let pair = (master.clone(), slave.clone());
        let bits = |m: &HashMap<(SaeId, SaeId), u64>| {
            m.get(&pair).copied().unwrap_or(0) / u64::from(limits.key_size)
        };
        let stored_key_count = bits(&self.state().pools);
        Ok(PairStatus {
            source_kme: KmeId::parse(self.config.kme).expect("valid KME ID"),
            target_kme: KmeId::parse(self.config.kme).expect("valid KME ID"),
            limits,
            stored_key_count,
            max_key_count: bits(&self.capacity),
        })
    }

    async fn enc_keys(&self, req: EncKeysRequest) -> Result<Vec<DeliveredKey>, ServiceError> {
        let mut state = self.state();
        let need = u64::from(req.number) * u64::from(req.size_bits);
        let pool = state
            .pools
            .get_mut(&(req.master.clone(), req.slave.clone()))
            .ok_or(ServiceError::InsufficientKeyMaterial)?;
        if *pool < need {
            return Err(ServiceError::InsufficientKeyMaterial);
        }
        *pool -= need;
        let mut slaves = vec![req.slave.clone()];
        slaves.extend(req.additional_slaves.iter().cloned());
        let mut out = Vec::new();
        for _ in 0..req.number {
            let mut key = Secret::zeroed(req.size_bits as usize / 8);
            for chunk in key.expose_mut().chunks_mut(8) {
                state.counter += 1;
                let word = mix(state.counter).to_le_bytes();
                chunk.copy_from_slice(&word[..chunk.len()]);
            }
            let id = KeyId::random();
            out.push(DeliveredKey {
                id,
                key: key.duplicate(),
            });
            state.keys.insert(
                id,
                Stored {
                    master: req.master.clone(),
                    slaves: slaves.clone(),
                    fetched: HashSet::new(),
                    key,
                },
            );
        }
        Ok(out)
    }

    async fn dec_keys(&self, req: DecKeysRequest) -> Result<Vec<DeliveredKey>, ServiceError> {
        let mut state = self.state();
        // Lookup first (400), then authorisation (401); nothing changes unless both pass.
        for id in &req.key_ids {
            match state.keys.get(id) {
                Some(k) if k.master == req.master && !k.fetched.contains(&req.slave) => {}
                _ => return Err(ServiceError::KeysNotFound),
            }
        }
        if !req
            .key_ids
            .iter()
            .all(|id| state.keys[id].slaves.contains(&req.slave))
        {
            return Err(ServiceError::NotSlave);
        }
        let mut out = Vec::new();
        for id in &req.key_ids {
            let done = {
                let k = state.keys.get_mut(id).expect("checked above");
                k.fetched.insert(req.slave.clone());
                out.push(DeliveredKey {
                    id: *id,
                    key: k.key.duplicate(),
                });
                k.fetched.len() == k.slaves.len()
            };
            if done {
                state.keys.remove(id);
            }
        }
        Ok(out)
    }
}
