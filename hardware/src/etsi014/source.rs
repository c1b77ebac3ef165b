//! [`Etsi014Source`]: one end of a QKD link whose key comes from a device's ETSI 014 KME.
//!
//! Strict on output: a block reaches the caller only if its key decodes as standard base64, has
//! exactly the agreed size, and its ID was asked for (slave end) and has not been seen in the
//! last [`DeviceLimits::seen_ids`] IDs (both ends). A batch with one bad key is refused whole.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

use async_trait::async_trait;
use backon::Retryable;
use qkd_proto::etsi014::{DeviceStatus, KeyContainer};
use qkd_types::{BlockId, KeyId, Secret};

use super::client::{DeviceClient, RequestError};
#[cfg(doc)]
use super::config::DeviceLimits;
use super::config::{ConfigError, DeviceConfig};
use crate::{DeviceError, KeyBlock, KeySource, LinkRole, LinkState, LinkStatus, SourceInfo};

/// The message of ETSI 014 §6.4 for a dec_keys that names a key the KME does not hold.
const NOT_FOUND: &str = "one or more keys specified are not found on KME";

/// One end of a link backed by a QKD device, over ETSI GS QKD 014.
///
/// The master end calls the device's `enc_keys` naming the peer's SAE ID; each key becomes a
/// block whose [`BlockId`] is the device's `key_ID`. The slave end calls its own device's
/// `dec_keys` naming the peer's (master's) SAE ID with the IDs the peer node announced.
#[derive(Debug)]
pub struct Etsi014Source {
    config: DeviceConfig,
    role: LinkRole,
    client: DeviceClient,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// The device's status from the last successful check of its KME ID; `None` until the
    /// first check and again after a transport failure, so that a reconnection (possibly to a
    /// replaced device) is checked before the next key request.
    verified: Option<DeviceStatus>,
    seen: SeenIds,
}

/// What the online check found.
#[derive(Debug, Clone, PartialEq)]
pub struct OnlineReport {
    /// The KME ID the device reported (equal to the configured one).
    pub kme_id: String,
    /// The key size the adapter will ask for, in bits.
    pub key_bits: u32,
    /// Keys the device advertises per request (after the configured cap).
    pub keys_per_request: u32,
    /// Keys stored for this pair, as advertised.
    pub stored_key_count: Option<u64>,
}

/// The online check failed. Caused by the device or by its configuration.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The configuration is unusable (offline check).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The device could not be asked, or it refused.
    #[error(transparent)]
    Device(#[from] DeviceError),
}

impl Etsi014Source {
    /// Builds the source: the offline check runs here (files, key against certificate). The
    /// device is not contacted, so an unreachable device never stops a node from starting.
    pub fn new(config: DeviceConfig, role: LinkRole) -> Result<Self, ConfigError> {
        let client = DeviceClient::new(&config)?;
        let seen = SeenIds::new(config.limits.seen_ids);
        Ok(Self {
            config,
            role,
            client,
            state: Mutex::new(State {
                verified: None,
                seen,
            }),
        })
    }

    /// The online check: the device answers `status` for our pair, names the configured KME,
    /// and serves a key size both ends can use.
    pub async fn check_online(&self) -> Result<OnlineReport, DeviceError> {
        let status = self.verify().await?;
        let key_bits = self.key_bits(&status)?;
        Ok(OnlineReport {
            kme_id: status.source_kme_id.0.clone(),
            key_bits,
            keys_per_request: self.keys_per_request(&status),
            stored_key_count: status.stored_key_count,
        })
    }

    /// Asks the device for its status and checks it names the configured KME and SAEs.
    async fn verify(&self) -> Result<DeviceStatus, DeviceError> {
        let status = self
            .client
            .status(&self.config.peer_sae_id)
            .await
            .map_err(|e| self.fail("status", e))?;
        if status.source_kme_id.0 != self.config.expected_kme_id.as_str() {
            self.lock().verified = None;
            return Err(DeviceError::Transport(format!(
                "device names itself KME {:?}, expected {:?}; refusing its keys",
                status.source_kme_id.0,
                self.config.expected_kme_id.as_str()
            )));
        }
        if let Some(me) = &status.master_sae_id
            && me.0 != self.config.sae_id.as_str()
        {
            self.lock().verified = None;
            return Err(DeviceError::Transport(format!(
                "device identifies this node as SAE {:?}, expected {:?} (client certificate?)",
                me.0,
                self.config.sae_id.as_str()
            )));
        }
        self.lock().verified = Some(status.clone());
        Ok(status)
    }

    /// The verified status, checking the device first if it has not been checked since the
    /// last transport failure.
    async fn verified(&self) -> Result<DeviceStatus, DeviceError> {
        if let Some(s) = self.lock().verified.clone() {
            return Ok(s);
        }
        self.verify().await
    }

    fn key_bits(&self, status: &DeviceStatus) -> Result<u32, DeviceError> {
        let bits = self.config.key_bits.unwrap_or(status.key_size);
        let min = status.min_key_size.unwrap_or(status.key_size);
        let max = status.max_key_size.unwrap_or(status.key_size);
        if bits == 0 || !bits.is_multiple_of(8) || bits < min || bits > max {
            return Err(DeviceError::Unavailable(format!(
                "device serves keys of {min} to {max} bits (default {}), configured {bits}",
                status.key_size
            )));
        }
        Ok(bits)
    }

    fn keys_per_request(&self, status: &DeviceStatus) -> u32 {
        // A device that does not advertise its limit gets one key per request: always legal.
        status
            .max_key_per_request
            .unwrap_or(1)
            .clamp(1, self.config.limits.max_keys_per_request)
    }

    /// Maps a request failure to the trait's error, forgetting the KME check when the
    /// connection failed (the next request may reach another device).
    fn fail(&self, what: &str, e: RequestError) -> DeviceError {
        match e {
            RequestError::Transport(m) => {
                self.lock().verified = None;
                DeviceError::Unavailable(format!("{what}: device unreachable: {m}"))
            }
            RequestError::Status { code: 503, message } => DeviceError::Unavailable(format!(
                "{what}: device answered 503{}",
                message.map(|m| format!(": {m}")).unwrap_or_default()
            )),
            e @ RequestError::Status { .. } => DeviceError::Transport(format!("{what}: {e}")),
            RequestError::Malformed(m) => DeviceError::Transport(format!("{what}: {m}")),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Checks a key container and turns it into blocks; `asked` is the slave's list of IDs.
    fn accept(
        &self,
        container: KeyContainer,
        bits: u32,
        asked: Option<&[BlockId]>,
    ) -> Result<Vec<KeyBlock>, DeviceError> {
        let bad = |m: String| DeviceError::Transport(format!("refused the device's answer: {m}"));
        let want = bits as usize / 8;
        let mut blocks = Vec::with_capacity(container.keys.len());
        let mut ids = HashSet::with_capacity(container.keys.len());
        for key in container.keys {
            let id = BlockId::from_uuid(key.key_id.uuid());
            if !ids.insert(id) {
                return Err(bad(format!("key {id} appears twice")));
            }
            let secret: Secret = key
                .key
                .to_secret()
                .map_err(|_| bad(format!("key {id} is not standard padded base64")))?;
            if secret.len() != want {
                return Err(bad(format!(
                    "key {id} has {} bits, expected {bits}",
                    secret.len() * 8
                )));
            }
            blocks.push(KeyBlock { id, key: secret });
        }
        if let Some(asked) = asked {
            // Exactly the asked IDs, returned in the order asked (devices may reorder).
            if blocks.len() != asked.len() || asked.iter().any(|a| !ids.contains(a)) {
                return Err(bad(format!(
                    "asked for {} keys, got {} with other IDs",
                    asked.len(),
                    blocks.len()
                )));
            }
            let mut by_id: std::collections::HashMap<BlockId, KeyBlock> =
                blocks.into_iter().map(|b| (b.id, b)).collect();
            blocks = asked.iter().filter_map(|a| by_id.remove(a)).collect();
        }
        let mut st = self.lock();
        if let Some(b) = blocks.iter().find(|b| st.seen.contains(&b.id)) {
            return Err(bad(format!(
                "key {} was already issued (re-issued ID)",
                b.id
            )));
        }
        for b in &blocks {
            st.seen.insert(b.id);
        }
        Ok(blocks)
    }
}

#[async_trait]
impl KeySource for Etsi014Source {
    fn info(&self) -> SourceInfo {
        SourceInfo {
            kind: "etsi014".into(),
            simulated: false,
            role: self.role,
        }
    }

    async fn status(&self) -> LinkStatus {
        let state = match self.verify().await {
            Ok(_) => LinkState::Up,
            Err(e) => LinkState::Down {
                reason: e.to_string(),
            },
        };
        LinkStatus {
            state,
            qber: None,
            secret_key_rate_bps: None,
        }
    }

    async fn next_blocks(&self, max_blocks: usize) -> Result<Vec<KeyBlock>, DeviceError> {
        if self.role != LinkRole::Master {
            return Err(DeviceError::WrongRole {
                needed: LinkRole::Master,
                actual: self.role,
            });
        }
        if max_blocks == 0 {
            return Ok(Vec::new());
        }
        // A fresh status tells how much key is stored; it is also the KME check.
        let status = self.verify().await?;
        let bits = self.key_bits(&status)?;
        let per_request = self.keys_per_request(&status) as usize;
        // Stored keys are counted in default-size keys; convert to keys of our size.
        let mut available = match status.stored_key_count {
            Some(n) => (u128::from(n) * u128::from(status.key_size) / u128::from(bits))
                .min(usize::MAX as u128) as usize,
            None => per_request,
        };
        // Omit `size` when it is the device's default: some fixed-size KMEs refuse the member.
        let size = (bits != status.key_size).then_some(bits);
        let mut out = Vec::new();
        while out.len() < max_blocks && available > 0 {
            let n = (max_blocks - out.len()).min(per_request).min(available);
            let n32 = u32::try_from(n).unwrap_or(u32::MAX);
            match self
                .client
                .enc_keys(&self.config.peer_sae_id, n32, size)
                .await
            {
                Ok(container) => {
                    if container.keys.len() > n {
                        return Err(DeviceError::Transport(format!(
                            "refused the device's answer: asked for {n} keys, got {}",
                            container.keys.len()
                        )));
                    }
                    let got = self.accept(container, bits, None)?;
                    if got.is_empty() {
                        break;
                    }
                    available = available.saturating_sub(got.len());
                    out.extend(got);
                }
                // Key ran out between the status and this request: hand out what we have.
                Err(e) if !out.is_empty() => {
                    tracing::debug!(error = %e, "enc_keys stopped a batch early");
                    break;
                }
                Err(e) => return Err(self.fail("enc_keys", e)),
            }
        }
        Ok(out)
    }

    async fn blocks_by_id(&self, ids: &[BlockId]) -> Result<Vec<KeyBlock>, DeviceError> {
        if self.role != LinkRole::Slave {
            return Err(DeviceError::WrongRole {
                needed: LinkRole::Slave,
                actual: self.role,
            });
        }
        let mut distinct = HashSet::with_capacity(ids.len());
        if let Some(dup) = ids.iter().find(|id| !distinct.insert(**id)) {
            return Err(DeviceError::UnknownBlock(*dup));
        }
        if let Some(seen) = ids.iter().find(|id| self.lock().seen.contains(id)) {
            // Already fetched once: never fetch (or use) it again.
            return Err(DeviceError::UnknownBlock(*seen));
        }
        let status = self.verified().await?;
        let bits = self.key_bits(&status)?;
        let per_request = self.keys_per_request(&status) as usize;
        let mut out = Vec::with_capacity(ids.len());
        // All or nothing: if a later chunk fails, the blocks of earlier chunks are dropped
        // (zeroized) here, and the caller must drop the whole batch at both ends.
        for chunk in ids.chunks(per_request) {
            let key_ids: Vec<KeyId> = chunk
                .iter()
                .map(|b| KeyId::from_bytes(*b.as_bytes()))
                .collect();
            // A key the master just got may not have reached this device yet (standards.md
            // §1.8 item 7): "not found" consumes nothing, so it is asked again with back-off
            // before the block is reported unknown.
            let fetched = (|| self.client.dec_keys(&self.config.peer_sae_id, &key_ids))
                .retry(self.client.backoff())
                .when(|e| {
                    matches!(
                        e,
                        RequestError::Status {
                            code: 400 | 404,
                            ..
                        }
                    )
                })
                .await;
            match fetched {
                Ok(container) => out.extend(self.accept(container, bits, Some(chunk))?),
                // 400 is the spec's answer for an unknown key; 404 is what several KMEs send.
                Err(RequestError::Status {
                    code: 400 | 404,
                    message,
                }) => {
                    if let Some(m) = message.filter(|m| m != NOT_FOUND) {
                        tracing::debug!(message = %m, "dec_keys refused");
                    }
                    return Err(DeviceError::UnknownBlock(chunk[0]));
                }
                Err(e) => return Err(self.fail("dec_keys", e)),
            }
        }
        Ok(out)
    }
}

/// The last `cap` key IDs seen, to refuse a device that issues an ID twice.
#[derive(Debug)]
struct SeenIds {
    set: HashSet<BlockId>,
    order: VecDeque<BlockId>,
    cap: usize,
}

impl SeenIds {
    fn new(cap: usize) -> Self {
        Self {
            set: HashSet::new(),
            order: VecDeque::new(),
            cap: cap.max(1),
        }
    }

    fn contains(&self, id: &BlockId) -> bool {
        self.set.contains(id)
    }

    fn insert(&mut self, id: BlockId) {
        if self.set.insert(id) {
            self.order.push_back(id);
            if self.order.len() > self.cap
                && let Some(old) = self.order.pop_front()
            {
                self.set.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_of_seen_ids_is_bounded_and_remembers_the_latest() {
        let mut seen = SeenIds::new(3);
        let ids: Vec<BlockId> = (0..5).map(|_| BlockId::random()).collect();
        for id in &ids {
            seen.insert(*id);
        }
        assert!(!seen.contains(&ids[0]) && !seen.contains(&ids[1]));
        assert!(ids[2..].iter().all(|id| seen.contains(id)));
        seen.insert(ids[4]);
        assert_eq!(seen.order.len(), 3);
    }
}
