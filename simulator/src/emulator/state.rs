//! The state of an emulated device pair and its ETSI 014 logic, free of I/O: a request goes in
//! (device, caller, method, path, query, body), an answer comes out.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use qkd_proto::etsi014::{
    Error as ErrorBody, Key, KeyContainer, KeyIds, KeyRequest, KeyValue, Status, from_json_object,
};
use qkd_types::{Clock, KeyId, KmeId, SaeId, Secret, UnixMillis};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};

use crate::model::LinkModel;
use qkd_hardware::{LinkState, LinkStatus};

/// A deviation from ETSI GS QKD 014 seen in devices in the field, which a client must tolerate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Quirk {
    /// The key container's member is `Keys`, as Table 11 prints it.
    CapitalKeys,
    /// Only 256-bit keys: `key_size = min = max = 256`, any other `size` refused with 400.
    Fixed256,
    /// One key per request: `max_key_per_request = 1`, `number > 1` refused with 400.
    NumberOneOnly,
    /// Only the GET forms of enc_keys and dec_keys; POST answered 405.
    GetOnly,
    /// Only the POST forms of enc_keys and dec_keys; GET answered 405.
    PostOnly,
    /// Error `details` as a single object instead of an array of objects.
    DetailsObject,
    /// Error `details` as a list of strings.
    DetailsStrings,
    /// 401 with an empty body (by default the emulator sends a minimal Error body).
    Empty401,
    /// Error bodies are HTML pages (`text/html`), as a reverse proxy in front of a KME sends.
    HtmlErrors,
    /// 404 instead of 400 for keys not found at dec_keys.
    NotFound404,
    /// SAE IDs in Status as JSON integers (the SAEs must have numeric IDs).
    IntegerSaeIds,
}

impl Quirk {
    /// Every quirk, in a fixed order.
    pub const ALL: [Quirk; 11] = [
        Quirk::CapitalKeys,
        Quirk::Fixed256,
        Quirk::NumberOneOnly,
        Quirk::GetOnly,
        Quirk::PostOnly,
        Quirk::DetailsObject,
        Quirk::DetailsStrings,
        Quirk::Empty401,
        Quirk::HtmlErrors,
        Quirk::NotFound404,
        Quirk::IntegerSaeIds,
    ];

    /// The quirk's name, as in configuration files and reports (`capital-keys`...).
    pub fn name(self) -> &'static str {
        match self {
            Quirk::CapitalKeys => "capital-keys",
            Quirk::Fixed256 => "fixed-256",
            Quirk::NumberOneOnly => "number-one-only",
            Quirk::GetOnly => "get-only",
            Quirk::PostOnly => "post-only",
            Quirk::DetailsObject => "details-object",
            Quirk::DetailsStrings => "details-strings",
            Quirk::Empty401 => "empty-401",
            Quirk::HtmlErrors => "html-errors",
            Quirk::NotFound404 => "not-found-404",
            Quirk::IntegerSaeIds => "integer-sae-ids",
        }
    }
}

/// An answer a client must refuse: the device hands out bad key. Affects `enc_keys` and
/// `dec_keys` answers of both devices while set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// Each key one byte shorter than asked.
    WrongLength,
    /// Keys that are not standard padded base64 (URL-safe alphabet, no padding).
    BadBase64,
    /// The first key of an answer appears twice in it.
    DuplicateId,
    /// enc_keys answers carry the ID of the previous answer's first key again.
    ReissueId,
    /// Key containers padded with whitespace to [`OVERSIZED_ANSWER_BYTES`]: valid JSON, but
    /// larger than a client should ever read (a broken or hostile device).
    Oversized,
}

/// Size of every key container while [`Fault::Oversized`] is set, in bytes (20 MiB).
pub const OVERSIZED_ANSWER_BYTES: usize = 20 << 20;

/// The `status_extension` member in which the emulated devices report the link's QBER (0..=1),
/// vendor-style (ETSI 014 §6.2: a vendor prefix ending in `_`); absent while the link is down.
pub const QBER_MEMBER: &str = "emu_qber";
/// The `status_extension` member in which the emulated devices report the link's secret key
/// rate, in bit/s.
pub const KEY_RATE_MEMBER: &str = "emu_key_rate_bps";

/// How one device is off the air.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outage {
    /// Serving normally.
    #[default]
    None,
    /// Answers every request with 503 and an Error body.
    ServiceUnavailable,
    /// Accepts TCP connections and closes them at once (a device rebooting behind a switch).
    Refuse,
    /// Accepts requests and never answers them (a hung device).
    Hang,
}

/// How an emulated pair is set up.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairConfig {
    /// KME IDs of device 0 and device 1.
    pub kme_ids: [KmeId; 2],
    /// SAEs attached to device 0 and to device 1 (usually one node each; more for tests of
    /// authorisation, e.g. a third SAE that may not fetch another pair's keys).
    pub saes: [Vec<SaeId>; 2],
    /// Default key size in bits.
    pub key_size: u32,
    /// Smallest key size in bits.
    pub min_key_size: u32,
    /// Largest key size in bits.
    pub max_key_size: u32,
    /// Most keys per request.
    pub max_key_per_request: u32,
    /// Device buffer, in default-size keys: key produced beyond it is lost, as in a device
    /// whose SAE does not fetch.
    pub max_key_count: u64,
    /// Seed of the key stream (deterministic keys for tests).
    pub seed: u64,
    /// Vendor quirks, for both devices.
    #[serde(default)]
    pub quirks: BTreeSet<Quirk>,
}

impl PairConfig {
    /// A pair of devices `KME-0`/`KME-1` with one SAE each, 256-bit default keys (64 to 8192
    /// bits), 512 keys per request and room for 100 000 keys.
    pub fn new(sae0: SaeId, sae1: SaeId) -> Self {
        #[allow(clippy::unwrap_used)] // constant, valid IDs
        let kme = |s: &str| KmeId::parse(s).unwrap();
        Self {
            kme_ids: [kme("KME-0"), kme("KME-1")],
            saes: [vec![sae0], vec![sae1]],
            key_size: 256,
            min_key_size: 64,
            max_key_size: 8192,
            max_key_per_request: 512,
            max_key_count: 100_000,
            seed: 1,
            quirks: BTreeSet::new(),
        }
    }
}

/// The link's QBER and key rate for `status_extension`, as a vendor's device reports them.
fn link_figures(link: &LinkStatus) -> serde_json::Map<String, serde_json::Value> {
    let mut figures = serde_json::Map::new();
    let up = link.state == LinkState::Up;
    if let Some(q) = link.qber.filter(|_| up) {
        figures.insert(QBER_MEMBER.into(), q.into());
    }
    let rate = if up {
        link.secret_key_rate_bps
    } else {
        Some(0.0)
    };
    if let Some(r) = rate {
        figures.insert(KEY_RATE_MEMBER.into(), r.into());
    }
    figures
}

/// One request, as the HTTP shell hands it over.
#[derive(Debug)]
pub(crate) struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub body: &'a [u8],
    /// The caller's SAE ID from its certificate, if it maps to one.
    pub caller: Option<SaeId>,
}

/// One answer.
#[derive(Debug)]
pub(crate) struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    pub allow: Option<&'static str>,
}

/// Two emulated QKD devices sharing one key stream. Cheap to clone (a handle).
#[derive(Debug, Clone)]
pub struct DevicePair {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    model: Box<dyn LinkModel>,
    clock: Arc<dyn Clock>,
    start: UnixMillis,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: PairConfig,
    /// Bits of the stream handed out by enc_keys or lost to a full buffer.
    used_bits: u64,
    rng: ChaCha20Rng,
    /// Keys handed to a master and not yet fetched by every slave, by ID.
    pending: HashMap<KeyId, Pending>,
    outage: [Outage; 2],
    fault: Option<Fault>,
    last_issued: Option<KeyId>,
    /// Keys handed out by enc_keys, for tests and benchmarks.
    issued_keys: u64,
    /// How long after enc_keys a key becomes fetchable at the peer device, in clock
    /// milliseconds (the relay between devices is not instantaneous).
    peer_delay_ms: u64,
    /// dec_keys requests answered "not found", for tests.
    dec_refusals: u64,
}

#[derive(Debug)]
struct Pending {
    key: Secret,
    master: SaeId,
    slave: SaeId,
    /// The device where the slave fetches it.
    device: usize,
    /// Clock time (relative to the pair's start) from which the slave's device has it.
    visible_at: UnixMillis,
}

const NOT_FOUND: &str = "one or more keys specified are not found on KME";

impl DevicePair {
    /// A pair producing key as `model` says from `start` (clock time) on.
    pub fn new(
        config: PairConfig,
        model: Box<dyn LinkModel>,
        clock: Arc<dyn Clock>,
        start: UnixMillis,
    ) -> Self {
        let rng = ChaCha20Rng::seed_from_u64(config.seed);
        Self {
            shared: Arc::new(Shared {
                model,
                clock,
                start,
                inner: Mutex::new(Inner {
                    config,
                    used_bits: 0,
                    rng,
                    pending: HashMap::new(),
                    outage: [Outage::None; 2],
                    fault: None,
                    last_issued: None,
                    issued_keys: 0,
                    peer_delay_ms: 0,
                    dec_refusals: 0,
                }),
            }),
        }
    }

    /// Switches the vendor quirks of both devices.
    pub fn set_quirks(&self, quirks: impl IntoIterator<Item = Quirk>) {
        self.lock().config.quirks = quirks.into_iter().collect();
    }

    /// Sets (or with `None` clears) a fault.
    pub fn set_fault(&self, fault: Option<Fault>) {
        self.lock().fault = fault;
    }

    /// Takes device `device` (0 or 1) off the air, or back with [`Outage::None`].
    pub fn set_outage(&self, device: usize, outage: Outage) {
        self.lock().outage[device & 1] = outage;
    }

    /// The current outage of a device.
    pub fn outage(&self, device: usize) -> Outage {
        self.lock().outage[device & 1]
    }

    /// Device `device` loses the keys waiting there for its SAE (a restart without persistent
    /// storage): the peer's SAE got them, this one never will. Returns how many were lost.
    pub fn lose_pending(&self, device: usize) -> usize {
        let mut inner = self.lock();
        let before = inner.pending.len();
        inner.pending.retain(|_, p| p.device != device & 1);
        before - inner.pending.len()
    }

    /// Keys reach the peer device `ms` clock milliseconds after enc_keys handed them out; a
    /// dec_keys before that finds nothing (standards.md §1.8 item 7).
    pub fn set_peer_delay(&self, ms: u64) {
        self.lock().peer_delay_ms = ms;
    }

    /// dec_keys requests answered "not found" so far.
    pub fn dec_keys_refusals(&self) -> u64 {
        self.lock().dec_refusals
    }

    /// Keys handed out by enc_keys so far.
    pub fn issued_keys(&self) -> u64 {
        self.lock().issued_keys
    }

    /// Keys waiting for a slave to fetch them.
    pub fn pending_keys(&self) -> usize {
        self.lock().pending.len()
    }

    /// The IDs of the keys waiting for a slave to fetch them, in no particular order.
    pub fn pending_ids(&self) -> Vec<KeyId> {
        self.lock().pending.keys().copied().collect()
    }

    /// The IDs of the pending keys that have not reached the slave's device yet (see
    /// [`DevicePair::set_peer_delay`]): a dec_keys now finds none of them.
    pub fn late_ids(&self) -> Vec<KeyId> {
        let now = self.shared.clock.now().saturating_sub(self.shared.start);
        self.lock()
            .pending
            .iter()
            .filter(|(_, p)| p.visible_at > now)
            .map(|(id, _)| *id)
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.shared.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Answers one request to device `device`.
    pub(crate) fn handle(&self, device: usize, req: &Request<'_>) -> Response {
        let now = self.shared.clock.now().saturating_sub(self.shared.start);
        let produced = self.shared.model.cumulative_secret_bits(now);
        let link = self.shared.model.status(now);
        let mut inner = self.lock();
        inner.handle(device & 1, now, (produced, &link), req)
    }
}

impl Inner {
    fn has(&self, q: Quirk) -> bool {
        self.config.quirks.contains(&q)
    }

    /// Bits of key available now; key beyond the buffer is lost, as in a device.
    fn available_bits(&mut self, produced: u64) -> u64 {
        let cap = self
            .config
            .max_key_count
            .saturating_mul(u64::from(self.config.key_size));
        let mut free = produced.saturating_sub(self.used_bits);
        if free > cap {
            self.used_bits += free - cap;
            free = cap;
        }
        free
    }

    fn limits(&self) -> (u32, u32, u32, u32) {
        if self.has(Quirk::Fixed256) {
            (256, 256, 256, self.max_per_request())
        } else {
            (
                self.config.key_size,
                self.config.min_key_size,
                self.config.max_key_size,
                self.max_per_request(),
            )
        }
    }

    fn max_per_request(&self) -> u32 {
        if self.has(Quirk::NumberOneOnly) {
            1
        } else {
            self.config.max_key_per_request
        }
    }

    /// `model` is what the link model says now: key produced so far, and the link's status.
    fn handle(
        &mut self,
        dev: usize,
        now: UnixMillis,
        (produced, link): (u64, &LinkStatus),
        req: &Request<'_>,
    ) -> Response {
        if self.outage[dev] == Outage::ServiceUnavailable {
            return self.error(503, "device unavailable", None);
        }
        let Some(rest) = req.path.strip_prefix("/api/v1/keys/") else {
            return self.error(404, "unknown path", None);
        };
        let Some((segment, op)) = rest.split_once('/') else {
            return self.error(404, "unknown path", None);
        };
        // Caller admission: only SAEs attached to this device.
        let caller = match &req.caller {
            Some(c) if self.config.saes[dev].contains(c) => c.clone(),
            _ => return self.unauthorized(),
        };
        let Ok(peer) = SaeId::from_path_segment(segment) else {
            return self.error(400, "malformed SAE ID in path", None);
        };
        let post_refused = self.has(Quirk::GetOnly) && req.method == "POST";
        let get_refused = self.has(Quirk::PostOnly) && req.method == "GET";
        match (op, req.method) {
            ("status", "GET") => self.status(dev, (produced, link), caller, peer),
            ("status", _) => self.method_not_allowed("GET"),
            ("enc_keys" | "dec_keys", "GET" | "POST") if post_refused || get_refused => {
                self.method_not_allowed(if post_refused { "GET" } else { "POST" })
            }
            ("enc_keys", "GET" | "POST") => self.enc_keys(dev, now, produced, caller, peer, req),
            ("dec_keys", "GET" | "POST") => self.dec_keys(dev, now, caller, peer, req),
            ("enc_keys" | "dec_keys", _) => self.method_not_allowed("GET, POST"),
            _ => self.error(404, "unknown path", None),
        }
    }

    fn status(
        &mut self,
        dev: usize,
        (produced, link): (u64, &LinkStatus),
        caller: SaeId,
        slave: SaeId,
    ) -> Response {
        if !self.config.saes[1 - dev].contains(&slave) {
            return self.error(400, "unknown slave_SAE_ID", None);
        }
        let (key_size, min, max, per_request) = self.limits();
        let stored =
            (self.available_bits(produced) / u64::from(key_size)).min(self.config.max_key_count);
        let status = Status {
            source_kme_id: self.config.kme_ids[dev].clone(),
            target_kme_id: self.config.kme_ids[1 - dev].clone(),
            master_sae_id: caller,
            slave_sae_id: slave,
            key_size,
            stored_key_count: stored,
            max_key_count: self.config.max_key_count,
            max_key_per_request: per_request,
            max_key_size: max,
            min_key_size: min,
            max_sae_id_count: 0,
            status_extension: Some(link_figures(link)),
        };
        let mut value = serde_json::to_value(&status).unwrap_or_default();
        if self.has(Quirk::IntegerSaeIds) {
            for name in ["master_SAE_ID", "slave_SAE_ID"] {
                let n = value
                    .get(name)
                    .and_then(|v| v.as_str())
                    .and_then(|s| s.parse::<u64>().ok());
                if let Some(n) = n {
                    value[name] = n.into();
                }
            }
        }
        json(200, value.to_string().into_bytes())
    }

    fn enc_keys(
        &mut self,
        dev: usize,
        now: UnixMillis,
        produced: u64,
        master: SaeId,
        slave: SaeId,
        req: &Request<'_>,
    ) -> Response {
        if !self.config.saes[1 - dev].contains(&slave) {
            return self.error(400, "unknown slave_SAE_ID", None);
        }
        let request = if req.method == "GET" {
            match parse_enc_query(req.query) {
                Ok(r) => r,
                Err(m) => return self.error(400, m, None),
            }
        } else {
            match body_object::<KeyRequest>(req.body) {
                Ok(r) => r,
                Err(m) => return self.error(400, &m, None),
            }
        };
        if request
            .additional_slave_sae_ids
            .as_ref()
            .is_some_and(|v| !v.is_empty())
        {
            return self.error(400, "multicast is not supported (max_SAE_ID_count 0)", None);
        }
        if let Some(ext) = request
            .extension_mandatory
            .as_ref()
            .filter(|e| !e.is_empty())
        {
            let name = ext
                .iter()
                .flat_map(|o| o.keys())
                .next()
                .cloned()
                .unwrap_or_default();
            return self.error(
                400,
                "not all extension_mandatory parameters are supported",
                Some((
                    "extension_mandatory_unsupported",
                    format!("{name} is not supported"),
                )),
            );
        }
        let (key_size, min, max, per_request) = self.limits();
        let number = request.number.unwrap_or(1);
        let size = request.size.unwrap_or(u64::from(key_size));
        if number < 1 || number > u64::from(per_request) {
            return self.error(
                400,
                &format!("number must be between 1 and {per_request}"),
                None,
            );
        }
        if size < u64::from(min) || size > u64::from(max) {
            return self.error(
                400,
                &format!("size must be between {min} and {max} bits"),
                None,
            );
        }
        if !size.is_multiple_of(8) {
            return self.error(400, "size shall be a multiple of 8", None);
        }
        let need = number * size;
        if self.available_bits(produced) < need {
            return self.error(503, "insufficient key material", None);
        }
        self.used_bits += need;
        let mut keys = Vec::with_capacity(number as usize);
        for i in 0..number {
            let mut key = Secret::zeroed(size as usize / 8);
            self.rng.fill_bytes(key.expose_mut());
            let mut id = KeyId::random();
            if i == 0
                && self.fault == Some(Fault::ReissueId)
                && let Some(prev) = self.last_issued
            {
                id = prev;
            }
            if i == 0 {
                self.last_issued = Some(id);
            }
            keys.push((id, key));
        }
        self.issued_keys += number;
        let body = self.container(keys.iter().map(|(id, k)| (*id, k)));
        for (id, key) in keys {
            self.pending.insert(
                id,
                Pending {
                    key,
                    master: master.clone(),
                    slave: slave.clone(),
                    device: 1 - dev,
                    visible_at: now.saturating_add(self.peer_delay_ms),
                },
            );
        }
        body
    }

    fn dec_keys(
        &mut self,
        dev: usize,
        now: UnixMillis,
        caller: SaeId,
        master: SaeId,
        req: &Request<'_>,
    ) -> Response {
        let ids: Vec<KeyId> = if req.method == "GET" {
            match parse_dec_query(req.query) {
                Ok(id) => vec![id],
                Err(m) => return self.error(400, m, None),
            }
        } else {
            match body_object::<KeyIds>(req.body) {
                Ok(k) if !k.key_ids.is_empty() => k.key_ids.into_iter().map(|e| e.key_id).collect(),
                Ok(_) => return self.error(400, "key_IDs must not be empty", None),
                Err(m) => return self.error(400, &m, None),
            }
        };
        let mut distinct = BTreeSet::new();
        let found = ids.iter().all(|id| {
            distinct.insert(*id)
                && self
                    .pending
                    .get(id)
                    .is_some_and(|p| p.device == dev && p.master == master && p.visible_at <= now)
        });
        if !found {
            self.dec_refusals += 1;
            let code = if self.has(Quirk::NotFound404) {
                404
            } else {
                400
            };
            return self.error(code, NOT_FOUND, None);
        }
        if ids
            .iter()
            .any(|id| self.pending.get(id).is_some_and(|p| p.slave != caller))
        {
            return self.unauthorized();
        }
        let keys: Vec<(KeyId, Secret)> = ids
            .iter()
            .filter_map(|id| self.pending.remove(id).map(|p| (*id, p.key)))
            .collect();
        self.container(keys.iter().map(|(id, k)| (*id, k)))
    }

    fn container<'k>(&self, keys: impl Iterator<Item = (KeyId, &'k Secret)>) -> Response {
        let mut out: Vec<Key> = keys
            .map(|(id, secret)| Key {
                key_id: id,
                key_id_extension: None,
                key: match self.fault {
                    Some(Fault::WrongLength) if !secret.is_empty() => {
                        // `slice` keeps the bytes in a Secret; one byte short.
                        secret
                            .slice(0, secret.len() - 1)
                            .map(|s| KeyValue::from_secret(&s))
                            .unwrap_or_else(|| KeyValue::from_secret(secret))
                    }
                    _ => KeyValue::from_secret(secret),
                },
                key_extension: None,
            })
            .collect();
        if self.fault == Some(Fault::DuplicateId)
            && let Some(first) = out.first()
        {
            let dup = Key {
                key_id: first.key_id,
                key_id_extension: None,
                key: KeyValue::from_secret(&Secret::zeroed(4)),
                key_extension: None,
            };
            out.push(dup);
        }
        let container = KeyContainer {
            keys: out,
            key_container_extension: None,
        };
        let mut text = match serde_json::to_string(&container) {
            Ok(t) => zeroize::Zeroizing::new(t),
            Err(_) => return self.error(503, "key data access error", None),
        };
        if self.fault == Some(Fault::BadBase64) {
            // Standard base64 uses '+' and '/' and pads with '='; swap in the URL-safe
            // alphabet and drop the padding: a key a strict client must refuse.
            let mangled: String = text
                .chars()
                .map(|c| match c {
                    '+' => '-',
                    '/' => '_',
                    '=' => '.',
                    c => c,
                })
                .collect();
            text = zeroize::Zeroizing::new(mangled.replace('.', ""));
        }
        if self.has(Quirk::CapitalKeys) {
            text = zeroize::Zeroizing::new(text.replacen("{\"keys\":", "{\"Keys\":", 1));
        }
        if self.fault == Some(Fault::Oversized) {
            let pad = OVERSIZED_ANSWER_BYTES.saturating_sub(text.len());
            let mut padded = zeroize::Zeroizing::new(String::with_capacity(text.len() + pad));
            padded.push_str(&text);
            padded.extend(std::iter::repeat_n(' ', pad));
            text = padded;
        }
        json(200, text.as_bytes().to_vec())
    }

    fn unauthorized(&self) -> Response {
        if self.has(Quirk::Empty401) {
            return Response {
                status: 401,
                content_type: "application/json",
                body: Vec::new(),
                allow: None,
            };
        }
        self.error(401, "unauthorized", None)
    }

    fn method_not_allowed(&self, allow: &'static str) -> Response {
        let mut r = self.error(405, "method not allowed", None);
        r.allow = Some(allow);
        r
    }

    fn error(&self, status: u16, message: &str, detail: Option<(&str, String)>) -> Response {
        if self.has(Quirk::HtmlErrors) {
            return Response {
                status,
                content_type: "text/html",
                body: format!("<html><body><h1>{status}</h1><p>{message}</p></body></html>")
                    .into_bytes(),
                allow: None,
            };
        }
        let mut body = serde_json::to_value(ErrorBody::new(message)).unwrap_or_default();
        let detail = detail.unwrap_or_else(|| ("reason", message.to_owned()));
        if self.has(Quirk::DetailsObject) {
            body["details"] = serde_json::json!({ detail.0: detail.1 });
        } else if self.has(Quirk::DetailsStrings) {
            body["details"] = serde_json::json!([detail.1]);
        } else if status == 400 && message.starts_with("not all extension") {
            body["details"] = serde_json::json!([{ detail.0: detail.1 }]);
        }
        json(status, body.to_string().into_bytes())
    }
}

fn json(status: u16, body: Vec<u8>) -> Response {
    Response {
        status,
        content_type: "application/json",
        body,
        allow: None,
    }
}

fn body_object<T: for<'a> Deserialize<'a>>(body: &[u8]) -> Result<T, String> {
    if body.is_empty() {
        return from_json_object(b"{}").map_err(|e| e.to_string());
    }
    from_json_object(body).map_err(|e| format!("malformed request body: {e}"))
}

fn query_pairs(query: Option<&str>) -> impl Iterator<Item = (String, String)> + '_ {
    query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let dec = |s: &str| {
                percent_encoding::percent_decode_str(&s.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (dec(k), dec(v))
        })
}

fn parse_enc_query(query: Option<&str>) -> Result<KeyRequest, &'static str> {
    let mut r = KeyRequest::default();
    for (k, v) in query_pairs(query) {
        let n: u64 = v
            .parse()
            .map_err(|_| "number and size are decimal integers")?;
        match k.as_str() {
            "number" if r.number.is_none() => r.number = Some(n),
            "size" if r.size.is_none() => r.size = Some(n),
            _ => return Err("only one number and one size are allowed in a GET enc_keys"),
        }
    }
    Ok(r)
}

fn parse_dec_query(query: Option<&str>) -> Result<KeyId, &'static str> {
    let pairs: Vec<_> = query_pairs(query).collect();
    match pairs.as_slice() {
        [(k, v)] if k == "key_ID" => KeyId::parse(v).map_err(|_| "key_ID is not a UUID"),
        _ => Err("a GET dec_keys takes exactly one key_ID"),
    }
}
