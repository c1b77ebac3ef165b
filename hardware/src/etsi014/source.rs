//! [`Etsi014Source`]: one end of a QKD link whose key comes from a device's ETSI 014 KME.
//!
//! Strict on output: a block reaches the caller only if its key decodes as standard base64, has
//! exactly the agreed size, and its ID was asked for (slave end) and has not been seen in the
//! last [`DeviceLimits::seen_ids`] IDs (both ends). A batch with one bad key is refused whole.
//!
//! Link state follows the device: a fault marks the link down or aborted as
//! [`DeviceFault::link_state`] says (the one mapping), and a device that answers well again
//! brings it back up on its own; a key that failed a check keeps the link aborted until a good
//! key answer. QBER and key rate come from the device's `status_extension` where the
//! configuration names the members ([`DeviceConfig::status_metrics`]); otherwise the key rate is
//! measured from the key fetched over the last minute, on the injected clock.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use backon::Retryable;
use qkd_proto::etsi014::{DeviceStatus, KeyContainer};
use qkd_types::{BlockId, Clock, KeyId, Secret, SystemClock, UnixMillis};
use rustls_pki_types::CertificateDer;

use super::client::{DeviceClient, Http, StatusAnswer};
#[cfg(doc)]
use super::config::DeviceLimits;
use super::config::{ConfigError, DeviceConfig};
use crate::{
    DeviceError, DeviceFault, DeviceOp, KeyBlock, KeyCheck, KeySource, LinkRole, LinkState,
    LinkStatus, SourceInfo,
};

/// The span over which the key rate is measured when the device does not report it.
const RATE_WINDOW_MS: u64 = 60_000;

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
    /// Time for the measured key rate (tests inject a manual clock).
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// The device's status from the last successful check of its KME ID; `None` until the
    /// first check and again after a transport failure, so that a reconnection (possibly to a
    /// replaced device) is checked before the next key request.
    verified: Option<DeviceStatus>,
    seen: SeenIds,
    /// The last fault in an answer the device gave (a key that failed a check, another KME, an
    /// oversized or malformed answer): it keeps the link aborted or down, as
    /// [`DeviceFault::link_state`] says, until the device answers well again.
    standing: Option<DeviceFault>,
    /// QBER and key rate from the last status, where the device reports them.
    reported: Reported,
    /// Key fetched over time.
    meter: Meter,
}

/// Link figures a device reported in its last status.
#[derive(Debug, Clone, Copy, Default)]
struct Reported {
    qber: Option<f64>,
    key_rate_bps: Option<f64>,
}

/// Credentials read and checked by [`Etsi014Source::reload_tls`], ready to install.
#[derive(Debug)]
pub struct DeviceTls(Http);

impl DeviceTls {
    /// The client certificate chain, end entity first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.0.credentials.chain
    }

    /// The CA certificates the device's certificate must chain to.
    pub fn ca(&self) -> &[CertificateDer<'static>] {
        &self.0.credentials.ca
    }
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
    /// The QBER the device reports, where the configuration names its member.
    pub qber: Option<f64>,
    /// The key rate the device reports in bit/s, where the configuration names its member.
    pub reported_key_rate_bps: Option<f64>,
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
        Self::with_clock(config, role, Arc::new(SystemClock))
    }

    /// [`Etsi014Source::new`] with the clock the measured key rate runs on.
    pub fn with_clock(
        config: DeviceConfig,
        role: LinkRole,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ConfigError> {
        let client = DeviceClient::new(&config)?;
        let seen = SeenIds::new(config.limits.seen_ids);
        let meter = Meter::new(clock.now());
        Ok(Self {
            config,
            role,
            client,
            clock,
            state: Mutex::new(State {
                verified: None,
                seen,
                standing: None,
                reported: Reported::default(),
                meter,
            }),
        })
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &DeviceConfig {
        &self.config
    }

    /// The client certificate chain presented to the device now, end entity first.
    pub fn client_chain(&self) -> Vec<CertificateDer<'static>> {
        self.client.http().credentials.chain
    }

    /// Re-reads the CA, the client certificate and its key and runs the offline check on them
    /// ([`DeviceConfig::load_credentials`]); nothing changes until
    /// [`Etsi014Source::install_tls`].
    pub fn reload_tls(&self) -> Result<DeviceTls, ConfigError> {
        Http::build(&self.config).map(|(http, _)| DeviceTls(http))
    }

    /// The next request opens a new connection presenting `next` (a request under way finishes
    /// on its connection), and the device's KME ID is checked again before the next key request,
    /// as after any reconnection.
    pub fn install_tls(&self, next: DeviceTls) {
        self.client.install(next.0);
        self.lock().verified = None;
    }

    /// The online check: the device answers `status` for our pair, names the configured KME,
    /// and serves a key size both ends can use.
    pub async fn check_online(&self) -> Result<OnlineReport, DeviceError> {
        let status = self.verify().await?;
        let key_bits = self.key_bits(&status)?;
        let reported = self.lock().reported;
        Ok(OnlineReport {
            kme_id: status.source_kme_id.0.clone(),
            key_bits,
            keys_per_request: self.keys_per_request(&status),
            stored_key_count: status.stored_key_count,
            qber: reported.qber,
            reported_key_rate_bps: reported.key_rate_bps,
        })
    }

    /// Asks the device for its status and checks it names the configured KME and SAEs.
    async fn verify(&self) -> Result<DeviceStatus, DeviceError> {
        let StatusAnswer { status, extension } = self
            .client
            .status(&self.config.peer_sae_id)
            .await
            .map_err(|f| self.fault(f))?;
        if status.source_kme_id.0 != self.config.expected_kme_id.as_str() {
            return Err(self.fault(DeviceFault::KmeMismatch {
                expected: self.config.expected_kme_id.clone(),
                reported: printable(&status.source_kme_id.0),
            }));
        }
        if let Some(me) = &status.master_sae_id
            && me.0 != self.config.sae_id.as_str()
        {
            return Err(self.fault(DeviceFault::SaeMismatch {
                expected: self.config.sae_id.clone(),
                reported: printable(&me.0),
            }));
        }
        let metrics = &self.config.status_metrics;
        let member = |name: &Option<String>| {
            let name = name.as_deref()?;
            extension.as_ref()?.get(name)?.as_f64()
        };
        let reported = Reported {
            qber: member(&metrics.qber).filter(|q| (0.0..=1.0).contains(q)),
            key_rate_bps: member(&metrics.key_rate_bps).filter(|r| r.is_finite() && *r >= 0.0),
        };
        let mut st = self.lock();
        st.verified = Some(status.clone());
        st.reported = reported;
        // The device names the right KME again: an identity fault no longer stands.
        if matches!(st.standing, Some(DeviceFault::KmeMismatch { .. })) {
            st.standing = None;
        }
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
            return Err(DeviceError::Device(DeviceFault::KeySize {
                configured: bits,
                min,
                max,
                default: status.key_size,
            }));
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

    /// Records a fault and turns it into the trait's error: a lost connection forgets the KME
    /// check (the next request may reach another device); a fault in the content of an answer
    /// stands (see [`State::standing`]) until the device answers well again. (Statuses and
    /// lost connections need not stand: the next status request meets them again.)
    fn fault(&self, f: DeviceFault) -> DeviceError {
        let mut st = self.lock();
        // A device that names another KME or another SAE is not verified any more either.
        if f.lost_connection()
            || matches!(
                f,
                DeviceFault::KmeMismatch { .. } | DeviceFault::SaeMismatch { .. }
            )
        {
            st.verified = None;
        }
        if f.breaks_integrity()
            || matches!(
                f,
                DeviceFault::Malformed { .. } | DeviceFault::BodyTooLarge { .. }
            )
        {
            st.standing = Some(f.clone());
        }
        DeviceError::Device(f)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Checks a key container and turns it into blocks.
    fn accept(
        &self,
        op: DeviceOp,
        container: KeyContainer,
        bits: u32,
        asked: Asked<'_>,
    ) -> Result<Vec<KeyBlock>, DeviceError> {
        let checked = check_keys(op, container, bits, asked);
        let mut st = self.lock();
        let refused = match checked {
            Ok(blocks) => match blocks.iter().find(|b| st.seen.contains(&b.id)) {
                Some(b) => DeviceFault::ReissuedId { op, key: b.id },
                None => {
                    for b in &blocks {
                        st.seen.insert(b.id);
                    }
                    let fetched = blocks.len() as u64 * u64::from(bits);
                    st.meter.record(self.clock.now(), fetched);
                    st.standing = None;
                    return Ok(blocks);
                }
            },
            Err(f) => f,
        };
        drop(st);
        Err(self.fault(refused))
    }
}

/// What a key request asked for.
#[derive(Debug, Clone, Copy)]
enum Asked<'a> {
    /// Master end: at most this many new keys.
    AtMost(usize),
    /// Slave end: exactly these keys.
    Ids(&'a [BlockId]),
}

/// The checks on one answer, apart from the window of seen IDs: standard base64, the agreed
/// size, no ID twice, and no more keys than asked (master end) or exactly the IDs asked,
/// returned in the order asked (slave end).
fn check_keys(
    op: DeviceOp,
    container: KeyContainer,
    bits: u32,
    asked: Asked<'_>,
) -> Result<Vec<KeyBlock>, DeviceFault> {
    let want = bits as usize / 8;
    let got = container.keys.len();
    let mut blocks = Vec::with_capacity(got);
    let mut ids = HashSet::with_capacity(got);
    for key in container.keys {
        let id = BlockId::from_uuid(key.key_id.uuid());
        let bad = |check| DeviceFault::BadKey { op, key: id, check };
        if !ids.insert(id) {
            return Err(bad(KeyCheck::RepeatedInAnswer));
        }
        let secret: Secret = key.key.to_secret().map_err(|_| bad(KeyCheck::NotBase64))?;
        if secret.len() != want {
            return Err(bad(KeyCheck::WrongSize {
                bits: secret.len() * 8,
                expected: bits,
            }));
        }
        blocks.push(KeyBlock { id, key: secret });
    }
    let asked = match asked {
        Asked::AtMost(n) if got > n => {
            return Err(DeviceFault::WrongKeys { op, asked: n, got });
        }
        Asked::AtMost(_) => return Ok(blocks),
        Asked::Ids(asked) => asked,
    };
    // Exactly the asked IDs, returned in the order asked (devices may reorder).
    if got != asked.len() || asked.iter().any(|a| !ids.contains(a)) {
        return Err(DeviceFault::WrongKeys {
            op,
            asked: asked.len(),
            got,
        });
    }
    let mut by_id: std::collections::HashMap<BlockId, KeyBlock> =
        blocks.into_iter().map(|b| (b.id, b)).collect();
    Ok(asked.iter().filter_map(|a| by_id.remove(a)).collect())
}

#[async_trait]
impl KeySource for Etsi014Source {
    fn as_etsi014(&self) -> Option<&Etsi014Source> {
        Some(self)
    }

    fn info(&self) -> SourceInfo {
        SourceInfo {
            kind: "etsi014".into(),
            simulated: false,
            role: self.role,
        }
    }

    async fn status(&self) -> LinkStatus {
        let checked = self.verify().await;
        let now = self.clock.now();
        let mut st = self.lock();
        let state = match checked {
            Ok(_) => match &st.standing {
                Some(f) => f.link_state(),
                None => LinkState::Up,
            },
            Err(e) => e.link_state().unwrap_or_else(|| LinkState::Down {
                reason: e.to_string(),
            }),
        };
        if state != LinkState::Up {
            return LinkStatus {
                state,
                qber: None,
                secret_key_rate_bps: Some(0.0),
            };
        }
        let measured = st.meter.rate(now);
        LinkStatus {
            state,
            qber: st.reported.qber,
            secret_key_rate_bps: st.reported.key_rate_bps.or(measured),
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
                    let got = self.accept(DeviceOp::EncKeys, container, bits, Asked::AtMost(n))?;
                    if got.is_empty() {
                        break;
                    }
                    available = available.saturating_sub(got.len());
                    out.extend(got);
                }
                // Key ran out between the status and this request: hand out what we have.
                Err(f) if !out.is_empty() => {
                    let e = self.fault(f);
                    tracing::debug!(error = %e, "enc_keys stopped a batch early");
                    break;
                }
                Err(f) => return Err(self.fault(f)),
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
                        DeviceFault::Status {
                            code: 400 | 404,
                            ..
                        }
                    )
                })
                .await;
            match fetched {
                Ok(container) => out.extend(self.accept(
                    DeviceOp::DecKeys,
                    container,
                    bits,
                    Asked::Ids(chunk),
                )?),
                // 400 is the spec's answer for an unknown key; 404 is what several KMEs send.
                Err(DeviceFault::Status {
                    code: code @ (400 | 404),
                    message,
                    ..
                }) => {
                    // Named at warn: the node drops the batch at both ends, and an operator
                    // should see which device refused what, and how.
                    tracing::warn!(
                        code,
                        key = %chunk[0],
                        message = message.as_deref().filter(|m| *m != NOT_FOUND).unwrap_or(""),
                        "dec_keys: the device answered HTTP {code}: it does not hold the key \
                         (never produced, already fetched, or not arrived); nothing consumed"
                    );
                    return Err(DeviceError::UnknownBlock(chunk[0]));
                }
                Err(f) => return Err(self.fault(f)),
            }
        }
        Ok(out)
    }
}

/// Key fetched over the last [`RATE_WINDOW_MS`], in one-second buckets (so its size is bounded
/// however often the node polls), for the measured key rate.
#[derive(Debug)]
struct Meter {
    /// When the source was made: the rate of a younger source is over its lifetime.
    since: UnixMillis,
    /// (second, bits fetched in it), oldest first.
    buckets: VecDeque<(u64, u64)>,
}

impl Meter {
    fn new(since: UnixMillis) -> Self {
        Self {
            since,
            buckets: VecDeque::new(),
        }
    }

    fn record(&mut self, now: UnixMillis, bits: u64) {
        let second = now / 1000;
        match self.buckets.back_mut() {
            Some((s, b)) if *s == second => *b += bits,
            _ => self.buckets.push_back((second, bits)),
        }
        self.trim(now);
    }

    /// Bits per second over the window ending at `now` (or since the source was made, if
    /// later); `None` before any time has passed.
    fn rate(&mut self, now: UnixMillis) -> Option<f64> {
        self.trim(now);
        let span = now.saturating_sub(self.since).min(RATE_WINDOW_MS);
        if span == 0 {
            return None;
        }
        let bits: u64 = self.buckets.iter().map(|(_, b)| b).sum();
        Some(bits as f64 * 1000.0 / span as f64)
    }

    fn trim(&mut self, now: UnixMillis) {
        let oldest = now.saturating_sub(RATE_WINDOW_MS) / 1000;
        while self.buckets.front().is_some_and(|(s, _)| *s < oldest) {
            self.buckets.pop_front();
        }
    }
}

/// A device's text for an operator: control characters dropped, at most 200 characters.
fn printable(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(200).collect()
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

    #[test]
    fn the_measured_rate_covers_the_last_minute_or_the_lifetime() {
        let mut m = Meter::new(1_000_000);
        assert_eq!(m.rate(1_000_000), None);
        // 256 000 bits in the first 10 s: 25.6 kbit/s.
        m.record(1_004_000, 128_000);
        m.record(1_009_500, 128_000);
        assert_eq!(m.rate(1_010_000), Some(25_600.0));
        // Many records in one second share a bucket.
        for _ in 0..1000 {
            m.record(1_009_900, 0);
        }
        assert_eq!(m.buckets.len(), 2);
        // Two minutes later with nothing fetched: the window is empty.
        assert_eq!(m.rate(1_130_000), Some(0.0));
        assert!(m.buckets.is_empty());
        m.record(1_130_000, 60_000);
        assert_eq!(m.rate(1_130_000), Some(1_000.0));
    }
}
