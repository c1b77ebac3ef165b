//! The cases, run in a fixed order against a master's KME and a slave's KME.
//!
//! Every case that may make a KME hand out key declares the most keys it can cost, counting a
//! faulty KME that answers an error case with keys; the plan adds them up before anything runs,
//! and a case that does not fit the budget (or any of them in read-only mode) is skipped.
//!
//! Keys the KMEs hand out stay in [`qkd_types::Secret`]s ([`SeenKey`]) from the answer's body to
//! the end of the run, and are compared with `Secret`'s constant-time `==`.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::client::{Answer, SaeClient, SeenKey, is_key_container};
use crate::config::Config;
use crate::report::{Basis, CaseResult, Outcome, Report};

/// ETSI GS QKD 014 §6.4: the exact message for keys a KME cannot return.
pub const MSG_NOT_FOUND: &str = "one or more keys specified are not found on KME";
/// §6.2: size not a multiple of 8.
pub const MSG_SIZE_MULTIPLE_OF_8: &str = "size shall be a multiple of 8";
/// §6.2: unsupported mandatory extension.
pub const MSG_MANDATORY_UNSUPPORTED: &str = "not all extension_mandatory parameters are supported";
/// §6.2: optional extension not handled (a KME may answer 200 instead).
pub const MSG_OPTIONAL_UNHANDLED: &str = "not all extension_optional request options handled";

/// Where our decisions are written down.
const DECISIONS: &str = "docs/etsi014.md";

/// What the run will cost, announced before it starts.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Most keys the run can consume.
    pub max_keys: u32,
    /// The budget from the configuration.
    pub budget: u32,
    /// Cases skipped because they do not fit the budget or the mode.
    pub skipped: Vec<&'static str>,
}

/// The run could not start. Caused by the configuration or the network.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A client could not be built.
    #[error(transparent)]
    Client(#[from] crate::client::ClientError),
}

/// Cases that may consume keys, in run order, with their worst case (`None`: depends on the
/// KME's `max_key_per_request`, which costs that plus one).
const CONSUMING: &[(&str, Option<u32>)] = &[
    ("enc-keys-get-default", Some(1)),
    ("enc-keys-get-number-size", Some(2)),
    ("enc-keys-post-empty", Some(1)),
    ("enc-keys-post-number-size", Some(3)),
    ("enc-keys-size-multiple-of-8", Some(1)),
    ("enc-keys-number-too-large", None),
    ("enc-keys-size-out-of-range", Some(1)),
    ("enc-keys-extension-mandatory", Some(1)),
    ("enc-keys-malformed-json", Some(1)),
    ("enc-keys-multicast-unsupported", Some(1)),
    ("enc-keys-extension-optional", Some(1)),
    ("enc-keys-multicast", Some(1)),
];

/// Runs the suite. `on_plan` is called once the plan is known, before any key is requested.
pub async fn run(config: &Config, on_plan: impl FnOnce(&Plan)) -> Result<Report, RunError> {
    let master = SaeClient::new(&config.master, &config.ca)?;
    let slave = SaeClient::new(&config.slave, &config.ca)?;
    let third = match &config.third {
        Some(t) => Some(SaeClient::new(t, &config.ca)?),
        None => None,
    };
    let mut s = Suite {
        config,
        master,
        slave,
        third,
        cases: Vec::new(),
        quirks: BTreeSet::new(),
        allowed: BTreeSet::new(),
        consumed: 0,
        delivered: Vec::new(),
        errors: Vec::new(),
        status: None,
        pending: Pending::default(),
    };
    s.transport().await;
    s.status_cases().await;
    let plan = s.plan();
    on_plan(&plan);
    s.enc_keys_cases().await;
    s.dec_keys_cases().await;
    s.error_cases().await;
    Ok(Report {
        target: config.master.url.clone(),
        read_only: config.read_only,
        planned_keys: plan.max_keys,
        consumed_keys: s.consumed,
        quirks: s.quirks.into_iter().collect(),
        cases: s.cases,
    })
}

struct Suite<'c> {
    config: &'c Config,
    master: SaeClient,
    slave: SaeClient,
    third: Option<SaeClient>,
    cases: Vec<CaseResult>,
    quirks: BTreeSet<&'static str>,
    /// Consuming cases that fit the plan.
    allowed: BTreeSet<&'static str>,
    consumed: u32,
    /// Every key delivered, to look for in error bodies.
    delivered: Vec<SeenKey>,
    /// Every error answer seen (status ≥ 400).
    errors: Vec<(&'static str, Answer)>,
    /// The master's status for the pair, once read.
    status: Option<Limits>,
    /// Keys obtained by the master, waiting for the dec_keys cases.
    pending: Pending,
}

/// Keys the enc_keys cases obtained, by case, with their size in bits.
#[derive(Debug, Default)]
struct Pending {
    get_default: Delivered,
    get_number_size: (Delivered, u32),
    post_empty: Delivered,
    post_number_size: (Delivered, u32),
}

/// The numbers of a Status the cases need.
#[derive(Debug, Clone, Copy)]
struct Limits {
    key_size: u32,
    min: u32,
    max: u32,
    per_request: u32,
    stored: u64,
    multicast: u32,
}

/// Keys as delivered.
type Delivered = Vec<SeenKey>;

impl Suite<'_> {
    fn record(
        &mut self,
        id: &'static str,
        title: &'static str,
        basis: Basis,
        outcome: Outcome,
        seen: impl Into<String>,
        quirk: Option<&'static str>,
    ) {
        if let Some(q) = quirk {
            self.quirks.insert(q);
        }
        self.cases.push(CaseResult {
            id,
            title,
            basis,
            outcome,
            seen: seen.into(),
            quirk,
        });
    }

    fn check(
        &mut self,
        id: &'static str,
        title: &'static str,
        basis: Basis,
        result: Result<String, String>,
        quirk: Option<&'static str>,
    ) {
        let (outcome, seen) = match result {
            Ok(s) => (Outcome::Pass, s),
            Err(s) => (Outcome::Fail, s),
        };
        self.record(id, title, basis, outcome, seen, quirk);
    }

    fn skip(&mut self, id: &'static str, title: &'static str, basis: Basis, why: &str) {
        self.record(id, title, basis, Outcome::Skip, why, None);
    }

    fn client(&self, who: Who) -> &SaeClient {
        match who {
            Who::Master => &self.master,
            Who::Slave => &self.slave,
            Who::Third => self.third.as_ref().unwrap_or(&self.slave),
        }
    }

    fn verdict(&mut self, case: Case, result: Result<String, String>, quirk: Option<&'static str>) {
        self.check(case.id, case.title, case.basis, result, quirk);
    }

    fn skip_all(&mut self, cases: &[Case], why: &str) {
        for c in cases {
            self.skip(c.id, c.title, c.basis.clone(), why);
        }
    }

    /// Sends and remembers error answers for the cases on error bodies.
    async fn send(
        &mut self,
        who: Who,
        case: &'static str,
        method: &str,
        url: &str,
        body: Option<&str>,
    ) -> Answer {
        let ct = body.map(|_| "application/json");
        let a = self
            .client(who)
            .send(method, url, ct, body.unwrap_or(""))
            .await;
        if a.status >= 400 {
            self.errors.push((case, a.clone()));
        }
        a
    }

    // ---- transport -------------------------------------------------------------------------

    async fn transport(&mut self) {
        let v13 = self.master.handshake(&rustls::version::TLS13).await;
        let v12 = self.master.handshake(&rustls::version::TLS12).await;
        let seen = format!(
            "TLS 1.3: {}; TLS 1.2: {}",
            v13.as_deref().unwrap_or_else(|e| e),
            v12.as_deref().unwrap_or_else(|e| e)
        );
        // rustls offers nothing below TLS 1.2, so any completed handshake is 1.2 or higher.
        let ok = v13.is_ok() || v12.is_ok();
        self.check(
            "tls-1.2-or-higher",
            "HTTPS with TLS 1.2 or higher and mutual authentication",
            Basis::Spec("§5.1 Table 1"),
            pass_if(ok, seen),
            None,
        );

        // A client without a certificate must not be served.
        let anonymous = crate::client::tls_config(&self.config.ca, None, None)
            .and_then(|tls| SaeClient::with_tls(&self.config.master, &self.config.ca, tls));
        match anonymous {
            Ok(c) => {
                let url = c.url(&self.config.slave.sae_id, "/status");
                let a = c.send("GET", &url, None, "").await;
                let ok = a.status == 0 || a.status == 401;
                let seen = a.describe();
                self.check(
                    "client-certificate-required",
                    "a client without a certificate is refused (handshake or 401)",
                    Basis::Spec("§4, §5.1 Table 1"),
                    pass_if(ok, seen),
                    None,
                );
            }
            Err(e) => self.skip(
                "client-certificate-required",
                "a client without a certificate is refused (handshake or 401)",
                Basis::Spec("§4, §5.1 Table 1"),
                &e.to_string(),
            ),
        }
    }

    // ---- status ----------------------------------------------------------------------------

    async fn status_cases(&mut self) {
        let url = self.master.url(&self.slave.id, "/status");
        let a = self.send(Who::Master, "status", "GET", &url, None).await;
        let media_ok = a
            .content_type
            .as_deref()
            .is_some_and(|c| c.starts_with("application/json"));
        self.check(
            "json-media-type",
            "answers are application/json",
            Basis::Spec("§5.1 Table 1"),
            pass_if(media_ok && a.status == 200, a.describe()),
            None,
        );
        let Some(v) = a.json().filter(|_| a.status == 200) else {
            self.record(
                "status-fields",
                "Status has every required member with its JSON type",
                Basis::Spec("§6.1 Table 9"),
                Outcome::Fail,
                a.describe(),
                None,
            );
            return;
        };
        // Members and types.
        let texts = [
            "source_KME_ID",
            "target_KME_ID",
            "master_SAE_ID",
            "slave_SAE_ID",
        ];
        let ints = [
            "key_size",
            "stored_key_count",
            "max_key_count",
            "max_key_per_request",
            "max_key_size",
            "min_key_size",
            "max_SAE_ID_count",
        ];
        let mut problems = Vec::new();
        let mut quirk = None;
        for t in texts {
            match v.get(t) {
                Some(Value::String(_)) => {}
                Some(Value::Number(_)) if t.ends_with("SAE_ID") => {
                    problems.push(format!("{t} is a number"));
                    quirk = Some("integer-sae-ids");
                }
                Some(_) => problems.push(format!("{t} is not a string")),
                None => problems.push(format!("{t} missing")),
            }
        }
        for i in ints {
            if !v.get(i).is_some_and(Value::is_u64) {
                problems.push(format!("{i} missing or not a non-negative integer"));
            }
        }
        if v.get("status_extension").is_some_and(|e| !e.is_object()) {
            problems.push("status_extension is not an object".into());
        }
        let seen = if problems.is_empty() {
            "all 11 required members present and typed".to_string()
        } else {
            problems.join("; ")
        };
        self.check(
            "status-fields",
            "Status has every required member with its JSON type",
            Basis::Spec("§6.1 Table 9"),
            pass_if(problems.is_empty(), seen),
            quirk,
        );
        let text = |k: &str| match v.get(k) {
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => String::new(),
        };
        let names = format!(
            "master_SAE_ID {:?}, slave_SAE_ID {:?}",
            text("master_SAE_ID"),
            text("slave_SAE_ID")
        );
        let ok = text("master_SAE_ID") == self.master.id && text("slave_SAE_ID") == self.slave.id;
        self.check(
            "status-names-caller-and-slave",
            "Status names the calling SAE as master and the path's SAE as slave",
            Basis::Spec("§6.1 Table 9"),
            if ok { Ok(names) } else { Err(names) },
            None,
        );
        let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
        let to32 = |x: u64| u32::try_from(x).unwrap_or(u32::MAX);
        let limits = Limits {
            key_size: to32(n("key_size")),
            min: to32(n("min_key_size")),
            max: to32(n("max_key_size")),
            per_request: to32(n("max_key_per_request")),
            stored: n("stored_key_count"),
            multicast: to32(n("max_SAE_ID_count")),
        };
        let consistent = limits.min <= limits.key_size
            && limits.key_size <= limits.max
            && limits.per_request >= 1
            && limits.stored <= n("max_key_count")
            && limits.key_size > 0;
        let quirk = if limits.min == 256 && limits.max == 256 {
            Some("fixed-256")
        } else if limits.per_request == 1 {
            Some("number-one-only")
        } else {
            None
        };
        let seen = format!(
            "key_size {} in [{}, {}], {} per request, stored {} of {}, max_SAE_ID_count {}",
            limits.key_size,
            limits.min,
            limits.max,
            limits.per_request,
            limits.stored,
            n("max_key_count"),
            limits.multicast
        );
        self.check(
            "status-limits-consistent",
            "min_key_size ≤ key_size ≤ max_key_size, stored ≤ max_key_count, ≥ 1 key per request",
            Basis::Spec("§6.1 Table 9"),
            if consistent { Ok(seen) } else { Err(seen) },
            quirk,
        );
        self.status = Some(limits);

        // The slave's KME is the master's target.
        let url = self.slave.url(&self.master.id, "/status");
        let b = self.send(Who::Slave, "status", "GET", &url, None).await;
        let slave_kme = b
            .json()
            .and_then(|j| j.get("source_KME_ID").map(|x| x.to_string()))
            .unwrap_or_default();
        let target = v
            .get("target_KME_ID")
            .map(|x| x.to_string())
            .unwrap_or_default();
        let seen = format!(
            "slave's KME {slave_kme}, master's target_KME_ID {target} ({})",
            b.status
        );
        self.check(
            "status-target-kme",
            "target_KME_ID is the KME ID of the KME serving the slave",
            Basis::Spec("§6.1 Table 9"),
            pass_if(b.status == 200 && slave_kme == target, seen),
            None,
        );

        let url = self.master.url("qkd-conform-nobody", "/status");
        let a = self
            .send(Who::Master, "status-unknown-slave", "GET", &url, None)
            .await;
        self.check(
            "status-unknown-slave",
            "an unknown slave_SAE_ID is answered 400",
            Basis::Decision(DECISIONS),
            expect_status(&a, &[400]),
            None,
        );
        let url = self.master.url(&self.slave.id, "/status");
        let a = self
            .send(Who::Master, "status-get-only", "POST", &url, Some("{}"))
            .await;
        self.check(
            "status-get-only",
            "Get status is GET only: a POST is not served",
            Basis::Spec("§5.2 Table 3"),
            pass_if(!(200..300).contains(&a.status), a.describe()),
            None,
        );
        self.check(
            "status-post-405",
            "a method a path does not define is answered 405",
            Basis::Decision(DECISIONS),
            expect_status(&a, &[405]),
            None,
        );
        let url = self.master.raw_url("/api/v1/keys/qkd-conform/nothing-here");
        let a = self
            .send(Who::Master, "unknown-path-404", "GET", &url, None)
            .await;
        self.check(
            "unknown-path-404",
            "an unknown path is answered 404",
            Basis::Decision(DECISIONS),
            expect_status(&a, &[404]),
            None,
        );
    }

    fn plan(&mut self) -> Plan {
        let per_request = self.status.map_or(1, |l| l.per_request);
        let mut total = 0u32;
        let mut skipped = Vec::new();
        for (id, worst) in CONSUMING {
            let worst = worst.unwrap_or(per_request.saturating_add(1));
            if self.config.read_only || total.saturating_add(worst) > self.config.max_keys {
                skipped.push(*id);
            } else {
                total += worst;
                self.allowed.insert(id);
            }
        }
        Plan {
            max_keys: total,
            budget: self.config.max_keys,
            skipped,
        }
    }

    fn may(&mut self, id: &'static str, title: &'static str, basis: Basis) -> bool {
        if self.allowed.contains(id) {
            return true;
        }
        let why = if self.config.read_only {
            "read-only mode"
        } else {
            "key budget"
        };
        self.skip(id, title, basis, why);
        false
    }

    /// Checks a key container: `number` keys of `bits` bits, UUIDs, standard base64.
    fn keys_of(&mut self, a: &Answer, number: usize, bits: u32) -> Result<Delivered, String> {
        if a.status != 200 {
            return Err(a.describe());
        }
        let Some((out, capital)) = a.keys() else {
            return Err(match a.json() {
                Some(v) if is_key_container(&v) => "keys is not an array".into(),
                Some(_) => "200 without a keys member".into(),
                None => a.describe(),
            });
        };
        if capital {
            self.quirks.insert("capital-keys");
        }
        // Count what was handed out, conforming or not.
        self.consumed += u32::try_from(out.len()).unwrap_or(u32::MAX);
        self.delivered.extend(out.iter().map(SeenKey::duplicate));
        if out.len() != number {
            return Err(format!("asked for {number} keys, got {}", out.len()));
        }
        for k in &out {
            let id = &k.id;
            if uuid::Uuid::parse_str(id).is_err() {
                return Err(format!("key_ID {id:?} is not a UUID"));
            }
            match k.decode() {
                // A size that is not a multiple of 8 travels in whole bytes (padding bits).
                Some(bytes) if bytes.len() == (bits as usize).div_ceil(8) => {}
                Some(bytes) => {
                    return Err(format!(
                        "key {id}: {} bits, expected {bits}",
                        bytes.len() * 8
                    ));
                }
                None => return Err(format!("key {id}: not standard padded base64")),
            }
        }
        Ok(out)
    }

    // ---- enc_keys --------------------------------------------------------------------------

    async fn enc_keys_cases(&mut self) {
        let Some(l) = self.status else {
            for (id, _) in CONSUMING {
                self.skip(id, "enc_keys", Basis::Spec("§5.3"), "no usable Status");
            }
            return;
        };
        let slave = self.slave.id.clone();
        let enc = self.master.url(&slave, "/enc_keys");
        let two = 2.min(l.per_request) as usize;
        // A second size the KME serves, if any.
        let other = [l.key_size * 2, l.min, l.max]
            .into_iter()
            .find(|s| *s != l.key_size && *s >= l.min && *s <= l.max && s % 8 == 0)
            .unwrap_or(l.key_size);

        let three = 3.min(l.per_request) as usize;
        let sized = json!({"number": three, "size": other}).to_string();
        let url = format!("{enc}?number={two}&size={other}");
        self.pending.get_default = self
            .obtain(
                "enc-keys-get-default",
                "GET enc_keys without parameters: one key of the default size",
                Basis::Spec("§5.3, §6.3 Table 11"),
                (&enc, None),
                (1, l.key_size),
            )
            .await;
        let keys = self
            .obtain(
                "enc-keys-get-number-size",
                "GET enc_keys?number=&size=: that many keys of that size",
                Basis::Spec("§5.3"),
                (&url, None),
                (two, other),
            )
            .await;
        self.pending.get_number_size = (keys, other);
        self.pending.post_empty = self
            .obtain(
                "enc-keys-post-empty",
                "POST enc_keys with {}: one key of the default size",
                Basis::Spec("§5.3, §6.2 Table 10"),
                (&enc, Some("{}")),
                (1, l.key_size),
            )
            .await;
        let keys = self
            .obtain(
                "enc-keys-post-number-size",
                "POST enc_keys with number and size: that many keys of that size",
                Basis::Spec("§5.3, §6.2 Table 10"),
                (&enc, Some(&sized)),
                (three, other),
            )
            .await;
        self.pending.post_number_size = (keys, other);

        // Error cases, back to back: nothing they do may consume key.
        const SIZE_MULTIPLE_OF_8: Case = Case::spec(
            "enc-keys-size-multiple-of-8",
            "a size that is not a multiple of 8 gets the spec's exact message (or keys)",
            "§6.2",
        );
        const NUMBER_TOO_LARGE: Case = Case::decision(
            "enc-keys-number-too-large",
            "number above max_key_per_request is answered 400",
        );
        const SIZE_OUT_OF_RANGE: Case = Case::decision(
            "enc-keys-size-out-of-range",
            "size above max_key_size is answered 400",
        );
        const EXTENSION_MANDATORY: Case = Case::spec(
            "enc-keys-extension-mandatory",
            "an unsupported extension_mandatory gets the spec's message",
            "§6.2",
        );
        const MALFORMED_JSON: Case = Case::spec(
            "enc-keys-malformed-json",
            "a malformed JSON body is answered 400 with an Error body",
            "§5.3 Table 6",
        );
        const MULTICAST_UNSUPPORTED: Case = Case::decision(
            "enc-keys-multicast-unsupported",
            "additional_slave_SAE_IDs on a KME without multicast is answered 400",
        );
        let before = self.stored().await;
        // (case, GET URL or POST body, expected answer, size of the keys a faulty KME serves)
        let mut cases: Vec<(Case, Request, Expect, u32)> = Vec::new();
        match (l.min..=l.max).find(|s| s % 8 != 0) {
            // The spec allows KMEs that serve such sizes: 200 with such keys passes too.
            Some(size) => cases.push((
                SIZE_MULTIPLE_OF_8,
                Request::Get(format!("{enc}?size={size}")),
                Expect::Message(400, MSG_SIZE_MULTIPLE_OF_8),
                size,
            )),
            None => self.skip_all(
                &[SIZE_MULTIPLE_OF_8],
                "every size the KME serves is a multiple of 8",
            ),
        }
        let post = |body: Value| Request::Post(body.to_string());
        cases.extend([
            (
                NUMBER_TOO_LARGE,
                post(json!({"number": u64::from(l.per_request) + 1})),
                Expect::Status(&[400]),
                l.key_size,
            ),
            (
                SIZE_OUT_OF_RANGE,
                post(json!({"size": u64::from(l.max) + 8})),
                Expect::Status(&[400]),
                l.key_size,
            ),
            (
                EXTENSION_MANDATORY,
                post(json!({"extension_mandatory": [{"xyzconform_route": "direct"}]})),
                Expect::Message(400, MSG_MANDATORY_UNSUPPORTED),
                l.key_size,
            ),
            (
                MALFORMED_JSON,
                Request::Post("{\"number\": ".into()),
                Expect::Status(&[400]),
                l.key_size,
            ),
        ]);
        match (&self.third, l.multicast) {
            (Some(t), 0) => cases.push((
                MULTICAST_UNSUPPORTED,
                post(json!({"additional_slave_SAE_IDs": [t.id]})),
                Expect::Status(&[400]),
                l.key_size,
            )),
            (None, _) => self.skip_all(&[MULTICAST_UNSUPPORTED], "no third SAE configured"),
            _ => self.skip_all(&[MULTICAST_UNSUPPORTED], "the KME advertises multicast"),
        }
        for (case, request, expect, bits) in cases {
            let (method, url, body) = match &request {
                Request::Get(url) => ("GET", url.as_str(), None),
                Request::Post(body) => ("POST", enc.as_str(), Some(body.as_str())),
            };
            self.refused(case, (method, url, body), expect, bits).await;
        }
        let after = self.stored().await;
        let seen = format!("stored_key_count {before:?} before the error cases, {after:?} after");
        let ok = matches!((before, after), (Some(b), Some(a)) if a >= b);
        self.check(
            "enc-keys-nothing-consumed-on-error",
            "refused requests remove no key from the pool",
            Basis::Spec("§5.3 post-condition"),
            pass_if(ok, seen),
            None,
        );

        let title =
            "an unknown extension_optional is ignored (200) or refused with the spec's message";
        if self.may("enc-keys-extension-optional", title, Basis::Spec("§6.2")) {
            let body = json!({"extension_optional": [{"xyzconform_hint": 1}]}).to_string();
            let a = self
                .send(
                    Who::Master,
                    "enc-keys-extension-optional",
                    "POST",
                    &enc,
                    Some(&body),
                )
                .await;
            let r = if a.status == 200 {
                self.keys_of(&a, 1, l.key_size)
                    .map(|_| "200, extension ignored".to_string())
            } else {
                expect_message(&a, 400, MSG_OPTIONAL_UNHANDLED)
            };
            self.check(
                "enc-keys-extension-optional",
                title,
                Basis::Spec("§6.2"),
                r,
                None,
            );
        }
        self.multicast(l, &enc).await;
    }

    async fn multicast(&mut self, l: Limits, enc: &str) {
        let title = "multicast: master, slave and additional slave get the same key";
        let basis = Basis::Spec("§6.2 Table 10, Annex B");
        if !self.may("enc-keys-multicast", title, basis.clone()) {
            return;
        }
        let Some(third) = self.third.clone() else {
            return self.skip(
                "enc-keys-multicast",
                title,
                basis,
                "no third SAE configured",
            );
        };
        if l.multicast == 0 {
            return self.skip("enc-keys-multicast", title, basis, "max_SAE_ID_count is 0");
        }
        let body = json!({"additional_slave_SAE_IDs": [third.id]}).to_string();
        let a = self
            .send(Who::Master, "enc-keys-multicast", "POST", enc, Some(&body))
            .await;
        if a.status == 401 {
            // The KME's policy does not let the master share keys with the third SAE: a
            // precondition of the case, not a failure.
            return self.skip(
                "enc-keys-multicast",
                title,
                basis,
                "401: the master may not pair with the third SAE; permit that pair to test multicast",
            );
        }
        let keys = match self.keys_of(&a, 1, l.key_size) {
            Ok(k) => k,
            Err(e) => return self.check("enc-keys-multicast", title, basis, Err(e), None),
        };
        let key = &keys[0];
        let mut seen = Vec::new();
        let mut ok = true;
        for who in [Who::Slave, Who::Third] {
            let client = if who == Who::Slave {
                self.slave.clone()
            } else {
                third.clone()
            };
            let url = client.url(&self.master.id, "/dec_keys");
            let body = json!({"key_IDs": [{"key_ID": key.id}]}).to_string();
            let r = self
                .send(who, "enc-keys-multicast", "POST", &url, Some(&body))
                .await;
            let same = r.keys().is_some_and(|(got, _)| {
                got.first()
                    .is_some_and(|k| k.text.is_some() && k.text == key.text)
            });
            ok &= r.status == 200 && same;
            seen.push(format!(
                "{}: {}{}",
                client.id,
                r.status,
                if same { " same key" } else { "" }
            ));
        }
        let seen = seen.join(", ");
        self.check("enc-keys-multicast", title, basis, pass_if(ok, seen), None);
    }

    /// A request the KME must serve with `number` keys of `bits` bits: GET without a body,
    /// POST with one. Returns the keys (none if the case failed or was skipped).
    async fn obtain(
        &mut self,
        id: &'static str,
        title: &'static str,
        basis: Basis,
        (url, body): (&str, Option<&str>),
        (number, bits): (usize, u32),
    ) -> Delivered {
        if !self.may(id, title, basis.clone()) {
            return Vec::new();
        }
        let method = if body.is_some() { "POST" } else { "GET" };
        let a = self.send(Who::Master, id, method, url, body).await;
        let (keys, r) = match self.keys_of(&a, number, bits) {
            Ok(k) => {
                let seen = format!("{} {} keys", a.status, k.len());
                (k, Ok(seen))
            }
            Err(e) => (Vec::new(), Err(e)),
        };
        // 405 for one form while the other works: a KME that serves only the other form.
        let quirk = match (a.status, body) {
            (405, None) => Some("post-only"),
            (405, Some(_)) => Some("get-only"),
            _ => None,
        };
        self.check(id, title, basis, r, quirk);
        keys
    }

    /// A request the KME must refuse; a faulty KME's keys are counted all the same. A 200
    /// passes only for [`Expect::Message`] cases where the spec lets a KME serve the request
    /// (sizes that are not multiples of 8), with keys of `bits` bits.
    async fn refused(
        &mut self,
        case: Case,
        (method, url, body): (&str, &str, Option<&str>),
        expect: Expect,
        bits: u32,
    ) {
        let (id, title, basis) = (case.id, case.title, case.basis);
        if !self.may(id, title, basis.clone()) {
            return;
        }
        let a = self.send(Who::Master, id, method, url, body).await;
        let served = a.status == 200;
        let keys = self.keys_of(&a, 1, bits);
        let r = match expect {
            Expect::Message(_, MSG_SIZE_MULTIPLE_OF_8) if served => {
                keys.map(|_| format!("200: the KME serves {bits}-bit keys"))
            }
            Expect::Message(code, message) => expect_message(&a, code, message),
            Expect::Status(codes) => expect_status(&a, codes),
        };
        self.check(id, title, basis, r, None);
    }

    async fn stored(&mut self) -> Option<u64> {
        let url = self.master.url(&self.slave.id, "/status");
        let a = self.master.send("GET", &url, None, "").await;
        a.json()?.get("stored_key_count")?.as_u64()
    }

    // ---- dec_keys --------------------------------------------------------------------------

    async fn dec_keys_cases(&mut self) {
        const POST: Case = Case::spec(
            "dec-keys-post",
            "POST dec_keys at the slave's KME returns the master's key, same ID and bytes",
            "§5.4, §6.4 Table 12",
        );
        const AT_MOST_ONCE: Case = Case::spec(
            "dec-keys-at-most-once",
            "a key is delivered at most once: asking again gets the spec's message",
            "§5.4 post-condition, §6.4",
        );
        const GET: Case = Case::spec(
            "dec-keys-get",
            "GET dec_keys?key_ID= returns the master's key",
            "§5.4",
        );
        const GET_TWO_IDS: Case = Case::decision(
            "dec-keys-get-two-ids",
            "a GET dec_keys with two key_IDs is answered 400",
        );
        const SEVERAL_IN_ORDER: Case = Case::decision(
            "dec-keys-several-in-order",
            "POST dec_keys returns several keys in the order asked",
        );
        const NOT_THE_SLAVE: Case = Case::spec(
            "dec-keys-not-the-slave",
            "an SAE that is not the key's slave gets 401, and the key stays for the slave",
            "§5.4 (401 authorisation), §5.1 Table 8",
        );
        const UNKNOWN: Case = Case::spec(
            "dec-keys-unknown",
            "an unknown key_ID gets 400 and the spec's exact message",
            "§6.4",
        );
        const UNKNOWN_GET: Case = Case::spec(
            "dec-keys-unknown-get",
            "GET dec_keys with an unknown key_ID gets 400 and the spec's exact message",
            "§6.4",
        );
        const REFUSED_BODIES: [(Case, &str); 3] = [
            (
                Case::decision(
                    "dec-keys-malformed-id",
                    "a key_ID that is not a UUID is answered 400",
                ),
                r#"{"key_IDs": [{"key_ID": "not-a-uuid"}]}"#,
            ),
            (
                Case::decision(
                    "dec-keys-empty-list",
                    "an empty key_IDs list is answered 400",
                ),
                r#"{"key_IDs": []}"#,
            ),
            (
                Case::decision(
                    "dec-keys-missing-list",
                    "a body without key_IDs is answered 400",
                ),
                "{}",
            ),
        ];
        const PUT: Case = Case::decision("dec-keys-put-405", "PUT on dec_keys is answered 405");

        let dec = self.slave.url(&self.master.id, "/dec_keys");

        // POST form, one key, delivered once: a second request finds nothing.
        let keys = std::mem::take(&mut self.pending.post_empty);
        match keys.first() {
            Some(k) => {
                let a = self.dec_post(Who::Slave, POST.id, &[&k.id]).await;
                let quirk = (a.status == 405).then_some("get-only");
                self.verdict(POST, same_keys(&a, &[k]), quirk);
                let a = self.dec_post(Who::Slave, AT_MOST_ONCE.id, &[&k.id]).await;
                self.not_found(AT_MOST_ONCE, &a);
            }
            None => self.skip_all(&[POST, AT_MOST_ONCE], "no key from POST enc_keys"),
        }

        // GET form.
        let keys = std::mem::take(&mut self.pending.get_default);
        match keys.first() {
            Some(k) => {
                let url = format!("{dec}?key_ID={}", k.id);
                let a = self.send(Who::Slave, GET.id, "GET", &url, None).await;
                let quirk = (a.status == 405).then_some("post-only");
                self.verdict(GET, same_keys(&a, &[k]), quirk);
            }
            None => self.skip_all(&[GET], "no key from GET enc_keys"),
        }

        // Two keys: a GET naming both is refused and consumes nothing; a POST gets both in
        // the order asked.
        let (keys, _) = std::mem::take(&mut self.pending.get_number_size);
        if let [first, second, ..] = keys.as_slice() {
            let url = format!("{dec}?key_ID={}&key_ID={}", first.id, second.id);
            let a = self
                .send(Who::Slave, GET_TWO_IDS.id, "GET", &url, None)
                .await;
            self.verdict(GET_TWO_IDS, expect_status(&a, &[400]), None);
            let reversed: Vec<&SeenKey> = keys.iter().rev().collect();
            let a = self
                .dec_post(Who::Slave, SEVERAL_IN_ORDER.id, &ids(&reversed))
                .await;
            self.verdict(SEVERAL_IN_ORDER, same_keys(&a, &reversed), None);
        } else {
            self.skip_all(
                &[GET_TWO_IDS, SEVERAL_IN_ORDER],
                "fewer than two keys obtained",
            );
        }

        // Not the slave: 401, and the key stays for its slave.
        let (keys, _) = std::mem::take(&mut self.pending.post_number_size);
        match (&self.third, keys.first()) {
            (Some(_), Some(k)) => {
                let a = self.dec_post(Who::Third, NOT_THE_SLAVE.id, &[&k.id]).await;
                let all: Vec<&SeenKey> = keys.iter().collect();
                let b = self
                    .dec_post(Who::Slave, NOT_THE_SLAVE.id, &ids(&all))
                    .await;
                let leaked = a.json().is_some_and(|v| is_key_container(&v));
                let r = match (a.status, same_keys(&b, &all)) {
                    (401, Ok(_)) if !leaked => Ok(format!(
                        "401 ({}), then the slave got its keys",
                        body_kind(&a)
                    )),
                    (_, r) => Err(format!(
                        "third SAE: {}; slave: {}",
                        a.describe(),
                        r.err().unwrap_or_else(|| b.describe())
                    )),
                };
                self.verdict(NOT_THE_SLAVE, r, None);
            }
            (None, _) => self.skip_all(&[NOT_THE_SLAVE], "no third SAE configured"),
            (_, None) => self.skip_all(&[NOT_THE_SLAVE], "no keys from POST enc_keys"),
        }

        // Requests that cannot deliver a key: safe in read-only mode.
        let random = uuid::Uuid::new_v4().to_string();
        let a = self.dec_post(Who::Slave, UNKNOWN.id, &[&random]).await;
        self.not_found(UNKNOWN, &a);
        let url = format!("{dec}?key_ID={}", uuid::Uuid::new_v4());
        let a = self
            .send(Who::Slave, UNKNOWN_GET.id, "GET", &url, None)
            .await;
        if a.status == 405 {
            let seen = "405: the KME serves POST only".to_string();
            self.verdict(UNKNOWN_GET, Ok(seen), None);
        } else {
            self.not_found(UNKNOWN_GET, &a);
        }
        for (case, body) in REFUSED_BODIES {
            let a = self
                .send(Who::Slave, case.id, "POST", &dec, Some(body))
                .await;
            self.verdict(case, expect_status(&a, &[400]), None);
        }
        let a = self.send(Who::Slave, PUT.id, "PUT", &dec, Some("{}")).await;
        self.verdict(PUT, expect_status(&a, &[405]), None);
    }

    /// POST dec_keys for these key IDs (of keys the master obtained), as `who`.
    async fn dec_post(&mut self, who: Who, case: &'static str, key_ids: &[&str]) -> Answer {
        let list: Vec<Value> = key_ids.iter().map(|id| json!({"key_ID": id})).collect();
        let body = json!({"key_IDs": list}).to_string();
        let url = self.client(who).url(&self.master.id, "/dec_keys");
        self.send(who, case, "POST", &url, Some(&body)).await
    }

    /// The answer must be 400 with the spec's "not found" message (404 is the
    /// `not-found-404` quirk, and fails).
    fn not_found(&mut self, case: Case, a: &Answer) {
        let quirk = (a.status == 404).then_some("not-found-404");
        self.verdict(case, expect_message(a, 400, MSG_NOT_FOUND), quirk);
    }

    // ---- across the run ----------------------------------------------------------------------

    async fn error_cases(&mut self) {
        // Error bodies (Table 13): JSON object, string message, details an array of objects.
        let mut problems = Vec::new();
        let mut quirk = None;
        let mut n = 0;
        for (case, a) in &self.errors {
            if a.status != 400 && a.status != 503 {
                continue;
            }
            n += 1;
            let Some(v) = a.json().filter(Value::is_object) else {
                problems.push(format!("{case}: {}", a.describe()));
                if a.content_type
                    .as_deref()
                    .is_some_and(|c| c.starts_with("text/html"))
                {
                    quirk = Some("html-errors");
                }
                continue;
            };
            if !v.get("message").is_some_and(Value::is_string) {
                problems.push(format!("{case}: no string message"));
            }
            match v.get("details") {
                None => {}
                Some(Value::Array(items)) if items.iter().all(Value::is_object) => {}
                Some(Value::Array(_)) => {
                    problems.push(format!("{case}: details is not an array of objects"));
                    quirk = Some("details-strings");
                }
                Some(_) => {
                    problems.push(format!("{case}: details is not an array"));
                    quirk = Some("details-object");
                }
            }
            if !a
                .content_type
                .as_deref()
                .is_some_and(|c| c.starts_with("application/json"))
            {
                problems.push(format!("{case}: Content-Type {:?}", a.content_type));
            }
        }
        let seen = if problems.is_empty() {
            format!("{n} error answers, all Error bodies")
        } else {
            problems.into_iter().take(4).collect::<Vec<_>>().join("; ")
        };
        let ok = quirk.is_none() && seen.starts_with(&n.to_string());
        self.check(
            "error-bodies",
            "every 400 and 503 carries an application/json Error body (message, details)",
            Basis::Spec("§5.1 Tables 4, 6, 8; §6.5 Table 13"),
            pass_if(ok, seen),
            quirk,
        );

        // 401 answers: no keys; empty or a minimal Error body.
        let unauthorized: Vec<&Answer> = self
            .errors
            .iter()
            .map(|(_, a)| a)
            .filter(|a| a.status == 401)
            .collect();
        let empty = unauthorized.iter().filter(|a| a.body.is_empty()).count();
        if !unauthorized.is_empty() {
            let quirk = (empty == unauthorized.len()).then_some("empty-401");
            let bad = unauthorized.iter().any(|a| {
                !a.body.is_empty()
                    && !a
                        .json()
                        .is_some_and(|v| v.get("message").is_some() && v.get("keys").is_none())
            });
            let seen = format!(
                "{} answers 401, {empty} with an empty body",
                unauthorized.len()
            );
            self.check(
                "unauthorized-body",
                "401 answers carry no body or a minimal Error body, never keys",
                Basis::Decision(DECISIONS),
                if bad { Err(seen) } else { Ok(seen) },
                quirk,
            );
        }

        // No key bytes in any error.
        let mut leaks = Vec::new();
        for (case, a) in &self.errors {
            let quoted = self
                .delivered
                .iter()
                .any(|k| k.text.as_ref().is_some_and(|t| a.contains(t)));
            if quoted || a.json().is_some_and(|v| is_key_container(&v)) {
                leaks.push(*case);
            }
        }
        let seen = format!(
            "{} error answers checked against {} delivered keys",
            self.errors.len(),
            self.delivered.len()
        );
        self.check(
            "no-key-bytes-in-errors",
            "no error answer carries key bytes",
            Basis::Decision(DECISIONS),
            if leaks.is_empty() {
                Ok(seen)
            } else {
                Err(format!("key bytes in: {}", leaks.join(", ")))
            },
            None,
        );

        // Key IDs unique across the run.
        let mut ids = BTreeSet::new();
        let dup = self
            .delivered
            .iter()
            .find(|k| !ids.insert(k.id.to_lowercase()));
        let seen = format!("{} keys delivered", self.delivered.len());
        let dup = dup.map(|k| format!("key_ID {} delivered twice", k.id));
        self.check(
            "key-ids-unique",
            "every key_ID enc_keys hands out is new",
            Basis::Spec("§6.3 Table 11 (UUID)"),
            match dup {
                Some(d) => Err(d),
                None => Ok(seen),
            },
            None,
        );

        let capital = self.quirks.contains("capital-keys");
        self.check(
            "key-container-spelling",
            "the key container's member is spelled `keys` (the spec's example and every client)",
            Basis::Decision(DECISIONS),
            if capital {
                Err("`Keys`".into())
            } else {
                Ok("`keys`".into())
            },
            capital.then_some("capital-keys"),
        );
    }
}

/// A case: its short stable name, what it checks, and what it rests on.
#[derive(Debug, Clone)]
struct Case {
    id: &'static str,
    title: &'static str,
    basis: Basis,
}

impl Case {
    /// A case on a rule of the spec, at `clause`.
    const fn spec(id: &'static str, title: &'static str, clause: &'static str) -> Self {
        Self {
            id,
            title,
            basis: Basis::Spec(clause),
        }
    }

    /// A case on one of our decisions (where the spec is silent).
    const fn decision(id: &'static str, title: &'static str) -> Self {
        Self {
            id,
            title,
            basis: Basis::Decision(DECISIONS),
        }
    }
}

/// An enc_keys request: GET with this URL, or POST with this body.
#[derive(Debug)]
enum Request {
    Get(String),
    Post(String),
}

/// What a refused request must get.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// One of these statuses.
    Status(&'static [u16]),
    /// This status with exactly this `message`.
    Message(u16, &'static str),
}

/// Who sends a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Master,
    Slave,
    Third,
}

/// What was seen, as a pass or a failure.
fn pass_if(ok: bool, seen: String) -> Result<String, String> {
    if ok { Ok(seen) } else { Err(seen) }
}

fn expect_status(a: &Answer, want: &[u16]) -> Result<String, String> {
    if want.contains(&a.status) {
        Ok(a.describe())
    } else {
        Err(format!("expected {want:?}, got {}", a.describe()))
    }
}

fn expect_message(a: &Answer, status: u16, message: &str) -> Result<String, String> {
    let got = a
        .json()
        .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned));
    if a.status == status && got.as_deref() == Some(message) {
        Ok(format!("{status} {message:?}"))
    } else {
        Err(format!(
            "expected {status} {message:?}, got {}",
            a.describe()
        ))
    }
}

/// The answer holds exactly these keys (ID and bytes), in this order; key bytes are compared
/// with `Secret`'s constant-time `==`.
fn same_keys(a: &Answer, want: &[&SeenKey]) -> Result<String, String> {
    if a.status != 200 {
        return Err(a.describe());
    }
    let (list, _) = a.keys().ok_or_else(|| a.describe())?;
    if list.len() != want.len() {
        return Err(format!("asked for {} keys, got {}", want.len(), list.len()));
    }
    for (i, (w, got)) in want.iter().zip(&list).enumerate() {
        if !got.id.eq_ignore_ascii_case(&w.id) {
            return Err(format!(
                "position {i}: key_ID {}, expected {}",
                got.id, w.id
            ));
        }
        if got.text.is_none() || got.text != w.text {
            return Err(format!("key {}: bytes differ from the master's", w.id));
        }
    }
    Ok(format!(
        "200, {} keys identical to the master's",
        want.len()
    ))
}

/// The IDs of these keys.
fn ids<'k>(keys: &[&'k SeenKey]) -> Vec<&'k str> {
    keys.iter().map(|k| k.id.as_str()).collect()
}

fn body_kind(a: &Answer) -> &'static str {
    if a.body.is_empty() {
        "empty body"
    } else {
        "Error body"
    }
}
