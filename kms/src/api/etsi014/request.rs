//! The sans-IO request layer of the ETSI GS QKD 014 front end.
//!
//! [`route`] takes what the HTTP shell saw (method, raw path, raw query, Content-Type, body bytes)
//! and the caller's SAE ID from its certificate, consults the key manager's synchronous policy
//! methods ([`KeyService::admits`], [`knows`](KeyService::knows), [`limits`](KeyService::limits),
//! [`may_pair`](KeyService::may_pair), [`profile`](KeyService::profile)), and returns either a checked [`Call`] or the [`EtsiError`]
//! to answer at once. [`handle`] runs the call against the key manager and renders the reply.
//!
//! The protocol-neutral steps (admission, slave, values, multicast list, pairing, profiles,
//! extensions, key-ID list) are [`crate::api::check`], shared with the gRPC front end; this layer
//! adds the HTTP forms around them.
//!
//! The order of checks is product policy (docs/etsi014.md §5) and must not be
//! rearranged:
//! * status and enc_keys: caller admission (401) → path slave known and not the caller (400) →
//!   query/body syntax and values, the `additional_slave_SAE_IDs` list included (400) → pairing
//!   permission (401) → every pair of the request shares one policy and suite (400) →
//!   `extension_mandatory` (400) → key availability (503, key manager);
//! * dec_keys: caller admission (401) → request shape (400) → lookup by (path master, key_ID)
//!   (400, key manager; an unparsable path ID ends there too) → caller is a slave (401, key manager).
//!
//! Nothing here does I/O, reads a clock or touches key bytes other than to encode a delivered key.

use http::{Method, StatusCode};
use qkd_proto::etsi014;
use qkd_types::{KeyId, SaeId};

use super::reply::{ALLOW_KEYS, ALLOW_STATUS, EtsiError, Reply, error_reply, outcome_of};
use crate::api::check;
use crate::api::observe::{Operation, Outcome};
use crate::api::{DecKeysRequest, DeliveredKey, EncKeysRequest, KeyService, PairStatus};

/// The path prefix of every ETSI 014 method.
pub const BASE_PATH: &str = "/api/v1/keys/";

/// A request as the HTTP shell received it, before any interpretation.
#[derive(Debug, Clone, Copy)]
pub struct RawRequest<'a> {
    /// HTTP method.
    pub method: &'a Method,
    /// Path, still percent-encoded.
    pub path: &'a str,
    /// Query string without the `?`, still percent-encoded; `None` if the URL had none.
    pub query: Option<&'a str>,
    /// The Content-Type header's raw value, if any.
    pub content_type: Option<&'a [u8]>,
    /// The whole request body.
    pub body: Body<'a>,
}

/// The request body as far as the shell read it.
#[derive(Debug, Clone, Copy)]
pub enum Body<'a> {
    /// The complete body.
    Complete(&'a [u8]),
    /// The body exceeded the shell's limit (it was discarded).
    TooLarge,
}

/// A request that passed every check of the front end and now needs the key manager.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// Get status.
    Status {
        /// The caller.
        master: SaeId,
        /// The slave named in the path.
        slave: SaeId,
    },
    /// Get key.
    EncKeys(EncKeysRequest),
    /// Get key with key IDs.
    DecKeys(DecKeysRequest),
}

/// Checks a request in policy order; see the module documentation.
pub fn route(
    req: &RawRequest<'_>,
    caller: Option<&SaeId>,
    service: &dyn KeyService,
) -> Result<Call, EtsiError> {
    // 1. Admission comes before everything, even before 404/405: a client that is not one of
    //    our SAEs learns nothing about the request it sent.
    let caller = check::admit(caller, service)?;

    let (segment, method_name) = split_path(req.path)?;
    match method_name {
        "status" => {
            if req.method != Method::GET {
                return Err(EtsiError::MethodNotAllowed {
                    allow: ALLOW_STATUS,
                });
            }
            let slave = path_slave(segment, caller, service)?;
            if let Some(q) = nonempty(req.query) {
                return Err(EtsiError::BadQuery(format!(
                    "status takes no query parameters (got {:?})",
                    first_name(q)
                )));
            }
            get_body_is_empty(req.body)?;
            check::permit(caller, &slave, service)?;
            Ok(Call::Status {
                master: caller.clone(),
                slave,
            })
        }
        "enc_keys" => {
            let is_get = keys_method(req.method)?;
            let slave = path_slave(segment, caller, service)?;
            let wire = if is_get {
                get_body_is_empty(req.body)?;
                enc_keys_query(req.query)?
            } else {
                post_has_no_query(req.query)?;
                json_body::<etsi014::KeyRequest>(req)?
            };
            let params = check::EncKeysParams {
                number: wire.number,
                size: wire.size,
                additional_slaves: wire.additional_slave_sae_ids.unwrap_or_default(),
                mandatory_extensions: wire
                    .extension_mandatory
                    .unwrap_or_default()
                    .into_iter()
                    .flat_map(|o| o.into_iter().map(|(name, _)| name))
                    .collect(),
            };
            Ok(Call::EncKeys(check::enc_keys(
                params, caller, slave, service,
            )?))
        }
        "dec_keys" => {
            let is_get = keys_method(req.method)?;
            let key_ids = if is_get {
                get_body_is_empty(req.body)?;
                vec![dec_keys_query(req.query)?]
            } else {
                post_has_no_query(req.query)?;
                let wire = json_body::<etsi014::KeyIds>(req)?;
                wire.key_ids.into_iter().map(|e| e.key_id).collect()
            };
            let key_ids = check::key_ids(key_ids)?;
            // The path master gets no check of its own (docs/etsi014.md §5, dec_keys step 3): an ID that cannot
            // even be parsed names no key, exactly like an unknown one.
            let master = SaeId::from_path_segment(segment)
                .map_err(|_| EtsiError::Service(crate::api::ServiceError::KeysNotFound))?;
            Ok(Call::DecKeys(DecKeysRequest {
                slave: caller.clone(),
                master,
                key_ids,
            }))
        }
        _ => Err(EtsiError::NotFound),
    }
}

/// Checks a request, runs it against the key manager and renders the answer.
pub async fn handle(
    req: &RawRequest<'_>,
    caller: Option<&SaeId>,
    service: &dyn KeyService,
) -> Reply {
    handle_classified(req, caller, service).await.0
}

/// [`handle`], also saying which operation the request was and how it ended, for the
/// instrumentation hook ([`crate::api::observe`]).
pub async fn handle_classified(
    req: &RawRequest<'_>,
    caller: Option<&SaeId>,
    service: &dyn KeyService,
) -> (Reply, Operation, Outcome) {
    let result = match route(req, caller, service) {
        Ok(call) => execute(call, service).await,
        Err(e) => Err(e),
    };
    let operation = operation_of(req.path);
    match result {
        Ok(reply) => (reply, operation, Outcome::Ok),
        Err(e) => (error_reply(&e), operation, outcome_of(&e)),
    }
}

/// The operation a path names, for instrumentation only (no check relies on it).
pub fn operation_of(path: &str) -> Operation {
    match split_path(path) {
        Ok((_, "status")) => Operation::Status,
        Ok((_, "enc_keys")) => Operation::EncKeys,
        Ok((_, "dec_keys")) => Operation::DecKeys,
        _ => Operation::Other,
    }
}

/// Runs a checked call.
pub async fn execute(call: Call, service: &dyn KeyService) -> Result<Reply, EtsiError> {
    match call {
        Call::Status { master, slave } => {
            let status = service.status(&master, &slave).await?;
            Ok(Reply::json(
                StatusCode::OK,
                &status_body(master, slave, status),
            ))
        }
        Call::EncKeys(req) => Ok(container(service.enc_keys(req).await?)),
        Call::DecKeys(req) => Ok(container(service.dec_keys(req).await?)),
    }
}

fn status_body(master: SaeId, slave: SaeId, s: PairStatus) -> etsi014::Status {
    etsi014::Status {
        source_kme_id: s.source_kme,
        target_kme_id: s.target_kme,
        master_sae_id: master,
        slave_sae_id: slave,
        key_size: s.limits.key_size,
        stored_key_count: s.stored_key_count,
        max_key_count: s.max_key_count,
        max_key_per_request: s.limits.max_key_per_request,
        max_key_size: s.limits.max_key_size,
        min_key_size: s.limits.min_key_size,
        max_sae_id_count: s.limits.max_sae_id_count,
        status_extension: None,
    }
}

fn container(keys: Vec<DeliveredKey>) -> Reply {
    let body = etsi014::KeyContainer {
        keys: keys
            .iter()
            .map(|k| etsi014::Key {
                key_id: k.id,
                key_id_extension: None,
                key: etsi014::KeyValue::from_secret(&k.key),
                key_extension: None,
            })
            .collect(),
        key_container_extension: None,
    };
    Reply::json(StatusCode::OK, &body)
}

/// Splits `/api/v1/keys/{id}/{method}` into its two segments; anything else is 404.
fn split_path(path: &str) -> Result<(&str, &str), EtsiError> {
    let rest = path.strip_prefix(BASE_PATH).ok_or(EtsiError::NotFound)?;
    let (segment, method) = rest.split_once('/').ok_or(EtsiError::NotFound)?;
    if method.contains('/') {
        return Err(EtsiError::NotFound);
    }
    Ok((segment, method))
}

/// GET and POST are the methods of enc_keys and dec_keys; returns whether it is GET.
fn keys_method(method: &Method) -> Result<bool, EtsiError> {
    match *method {
        Method::GET => Ok(true),
        Method::POST => Ok(false),
        _ => Err(EtsiError::MethodNotAllowed { allow: ALLOW_KEYS }),
    }
}

/// The path slave of status and enc_keys: a configured SAE other than the caller.
fn path_slave(segment: &str, caller: &SaeId, service: &dyn KeyService) -> Result<SaeId, EtsiError> {
    let slave = SaeId::from_path_segment(segment).ok();
    Ok(check::known_slave(slave, caller, service)?)
}

fn nonempty(query: Option<&str>) -> Option<&str> {
    query.filter(|q| !q.split('&').all(str::is_empty))
}

fn first_name(query: &str) -> String {
    pairs(query)
        .next()
        .and_then(Result::ok)
        .map(|(n, _)| n)
        .unwrap_or_default()
}

fn get_body_is_empty(body: Body<'_>) -> Result<(), EtsiError> {
    match body {
        Body::Complete(&[]) => Ok(()),
        _ => Err(EtsiError::GetWithBody),
    }
}

fn post_has_no_query(query: Option<&str>) -> Result<(), EtsiError> {
    match nonempty(query) {
        None => Ok(()),
        Some(q) => Err(EtsiError::BadQuery(format!(
            "a POST request takes its parameters in the JSON body, not the query (got {:?})",
            first_name(q)
        ))),
    }
}

/// Percent-decoded `name=value` pairs of a query string; empty pieces (`a=1&&b=2`) are skipped.
fn pairs(query: &str) -> impl Iterator<Item = Result<(String, String), EtsiError>> + '_ {
    query.split('&').filter(|p| !p.is_empty()).map(|piece| {
        let (name, value) = piece.split_once('=').unwrap_or((piece, ""));
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| {
                    EtsiError::BadQuery("query is not UTF-8 after percent-decoding".into())
                })
        };
        Ok((decode(name)?, decode(value)?))
    })
}

/// A decimal integer as the GET form carries it: ASCII digits only, no sign.
fn decimal(name: &str, value: &str) -> Result<u64, EtsiError> {
    let bad = || EtsiError::BadQuery(format!("{name} must be a decimal integer"));
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    value.parse().map_err(|_| bad())
}

/// The GET form of enc_keys: at most one `number` and one `size`, nothing else.
fn enc_keys_query(query: Option<&str>) -> Result<etsi014::KeyRequest, EtsiError> {
    let mut req = etsi014::KeyRequest::default();
    for pair in pairs(query.unwrap_or("")) {
        let (name, value) = pair?;
        let slot = match name.as_str() {
            "number" => &mut req.number,
            "size" => &mut req.size,
            _ => {
                return Err(EtsiError::BadQuery(format!(
                    "GET enc_keys takes only number and size; {name:?} needs POST or does not exist"
                )));
            }
        };
        if slot.is_some() {
            return Err(EtsiError::BadQuery(format!("{name} given twice")));
        }
        *slot = Some(decimal(&name, &value)?);
    }
    Ok(req)
}

/// The GET form of dec_keys: exactly one `key_ID`, nothing else.
fn dec_keys_query(query: Option<&str>) -> Result<KeyId, EtsiError> {
    let mut found = None;
    for pair in pairs(query.unwrap_or("")) {
        let (name, value) = pair?;
        if name != "key_ID" {
            return Err(EtsiError::BadQuery(format!(
                "GET dec_keys takes exactly one key_ID; {name:?} needs POST or does not exist"
            )));
        }
        if found.is_some() {
            return Err(EtsiError::BadQuery(
                "GET dec_keys takes exactly one key_ID; use POST for several".into(),
            ));
        }
        found = Some(
            KeyId::parse(&value).map_err(|_| EtsiError::BadQuery("key_ID is not a UUID".into()))?,
        );
    }
    found.ok_or_else(|| EtsiError::BadQuery("GET dec_keys needs a key_ID".into()))
}

/// A POST body: empty means `{}`; otherwise a JSON object, declared as JSON if declared at all.
fn json_body<T: serde::de::DeserializeOwned>(req: &RawRequest<'_>) -> Result<T, EtsiError> {
    let body = match req.body {
        Body::Complete(b) => b,
        Body::TooLarge => return Err(EtsiError::BodyTooLarge),
    };
    if body.is_empty() {
        // docs/etsi014.md §3.1: an empty POST body is `{}`, whatever the Content-Type says.
        return etsi014::from_json_object(b"{}").map_err(|e| EtsiError::BadBody(e.to_string()));
    }
    if req.content_type.is_some_and(|ct| !is_json(ct)) {
        return Err(EtsiError::UnsupportedMediaType);
    }
    etsi014::from_json_object(body).map_err(|e| EtsiError::BadBody(e.to_string()))
}

/// `application/json`, any case, with or without parameters such as `charset=utf-8`.
fn is_json(content_type: &[u8]) -> bool {
    std::str::from_utf8(content_type).is_ok_and(|ct| {
        ct.split(';')
            .next()
            .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::api::ServiceError;
    use crate::api::check::RequestError;
    use crate::api::check::policy::{HYBRID, Policy, QKD_ONLY, sae};

    fn mixed(slaves: &[&str]) -> Result<Call, EtsiError> {
        let pairs = slaves
            .iter()
            .map(|s| {
                let profile = if *s == "A2" { QKD_ONLY } else { HYBRID };
                (sae("A"), sae(s), profile)
            })
            .collect();
        Err(RequestError::MixedProfiles { pairs }.into())
    }

    const K1: &str = "550e8400-e29b-41d4-a716-446655440000";
    const K2: &str = "6ba7b810-9dad-11d1-80b4-00c04fd430c8";

    fn key(s: &str) -> KeyId {
        KeyId::parse(s).unwrap()
    }

    fn enc(slave: &str, number: u32, size_bits: u32, extra: &[&str]) -> Result<Call, EtsiError> {
        Ok(Call::EncKeys(EncKeysRequest {
            master: sae("A"),
            slave: sae(slave),
            additional_slaves: extra.iter().map(|s| sae(s)).collect(),
            number,
            size_bits,
        }))
    }

    fn dec(master: &str, ids: &[&str]) -> Result<Call, EtsiError> {
        Ok(Call::DecKeys(DecKeysRequest {
            slave: sae("A"),
            master: sae(master),
            key_ids: ids.iter().map(|s| key(s)).collect(),
        }))
    }

    fn bad_query() -> Result<Call, EtsiError> {
        Err(EtsiError::BadQuery(String::new()))
    }

    fn bad_body() -> Result<Call, EtsiError> {
        Err(EtsiError::BadBody(String::new()))
    }

    /// One row: caller, method, path, query, content type, body, expected outcome. For
    /// `BadQuery` and `BadBody` only the variant is compared (their text is descriptive).
    type Row = (
        Option<&'static str>,
        &'static str,
        &'static str,
        Option<&'static str>,
        Option<&'static str>,
        &'static str,
        Result<Call, EtsiError>,
    );

    #[rustfmt::skip]
    fn table() -> Vec<Row> {
        use EtsiError as E;
        use RequestError as R;
        fn r(e: RequestError) -> Result<Call, EtsiError> {
            Err(e.into())
        }
        const JSON: Option<&str> = Some("application/json");
        let p_st = "/api/v1/keys/B/status";
        let p_enc = "/api/v1/keys/B/enc_keys";
        let p_dec = "/api/v1/keys/M/dec_keys";
        let dec1 = r#"{"key_IDs":[{"key_ID":"550e8400-e29b-41d4-a716-446655440000"}]}"#;
        vec![
            // Admission first, on every path, even with a malformed request.
            (None, "GET", p_st, None, None, "", r(R::NotAdmitted)),
            (Some("B"), "GET", p_st, None, None, "", r(R::NotAdmitted)),
            (Some("Z"), "POST", p_enc, None, JSON, "{bad", r(R::NotAdmitted)),
            (Some("B"), "POST", p_dec, None, JSON, "[]", r(R::NotAdmitted)),
            (Some("B"), "GET", "/nope", None, None, "", r(R::NotAdmitted)),
            (Some("B"), "DELETE", p_st, None, None, "", r(R::NotAdmitted)),
            // 404 and 405.
            (Some("A"), "GET", "/api/v1/keys/B/other", None, None, "", Err(E::NotFound)),
            (Some("A"), "GET", "/api/v1/keys/B/status/", None, None, "", Err(E::NotFound)),
            (Some("A"), "GET", "/api/v1/keys/B", None, None, "", Err(E::NotFound)),
            (Some("A"), "GET", "/api/v2/keys/B/status", None, None, "", Err(E::NotFound)),
            (Some("A"), "POST", p_st, None, None, "", Err(E::MethodNotAllowed { allow: ALLOW_STATUS, })),
            (Some("A"), "PUT", p_enc, None, None, "", Err(E::MethodNotAllowed { allow: ALLOW_KEYS })),
            (Some("A"), "DELETE", p_dec, None, None, "", Err(E::MethodNotAllowed { allow: ALLOW_KEYS })),
            (Some("A"), "PATCH", p_enc, None, JSON, "{bad", Err(E::MethodNotAllowed { allow: ALLOW_KEYS })),
            // status.
            (Some("A"), "GET", p_st, None, None, "", Ok(Call::Status { master: sae("A"), slave: sae("B"), })),
            (Some("A"), "GET", "/api/v1/keys/%42/status", None, None, "", Ok(Call::Status { master: sae("A"), slave: sae("B"), })),
            (Some("A"), "GET", "/api/v1/keys/Q/status", None, None, "", r(R::UnknownSlave)),
            (Some("A"), "GET", "/api/v1/keys//status", None, None, "", r(R::UnknownSlave)),
            (Some("A"), "GET", "/api/v1/keys/a%2Fb/status", None, None, "", r(R::UnknownSlave)),
            (Some("A"), "GET", "/api/v1/keys/A/status", None, None, "", r(R::SlaveIsCaller)),
            (Some("A"), "GET", "/api/v1/keys/%41/status", None, None, "", r(R::SlaveIsCaller)),
            (Some("A"), "GET", "/api/v1/keys/X/status", None, None, "", r(R::NotPermitted)),
            (Some("A"), "GET", p_st, Some("x=1"), None, "", bad_query()),
            (Some("A"), "GET", p_st, Some(""), None, "", Ok(Call::Status { master: sae("A"), slave: sae("B"), })),
            // Unknown slave beats a bad query; bad query beats pairing.
            (Some("A"), "GET", "/api/v1/keys/Q/status", Some("x=1"), None, "", r(R::UnknownSlave)),
            (Some("A"), "GET", "/api/v1/keys/X/status", Some("x=1"), None, "", bad_query()),
            // enc_keys, GET form.
            (Some("A"), "GET", p_enc, None, None, "", enc("B", 1, 256, &[])),
            (Some("A"), "GET", p_enc, Some("number=3&size=1024"), None, "", enc("B", 3, 1024, &[])),
            (Some("A"), "GET", p_enc, Some("size=64&number=128"), None, "", enc("B", 128, 64, &[])),
            (Some("A"), "GET", p_enc, Some("%6Eumber=2"), None, "", enc("B", 2, 256, &[])),
            (Some("A"), "GET", p_enc, Some("number=2&&"), None, "", enc("B", 2, 256, &[])),
            (Some("A"), "GET", p_enc, Some("number=x"), None, "", bad_query()),
            (Some("A"), "GET", p_enc, Some("number=+3"), None, "", bad_query()),
            (Some("A"), "GET", p_enc, Some("number=-1"), None, "", bad_query()),
            (Some("A"), "GET", p_enc, Some("number=1.5"), None, "", bad_query()),
            (Some("A"), "GET", p_enc, Some("number"), None, "", bad_query()),
            (Some("A"), "GET", p_enc, Some("number=99999999999999999999999"), None, "", bad_query()),
            (Some("A"), "GET", p_enc, Some("number=1&number=2"), None, "", bad_query()),
            (Some("A"), "GET", p_enc, Some("additional_slave_SAE_IDs=C"), None, "", bad_query()),
            (Some("A"), "GET", p_enc, Some("abc_ext=1"), None, "", bad_query()),
            (Some("A"), "GET", p_enc, Some("Number=1"), None, "", bad_query()),
            (Some("A"), "GET", p_enc, None, JSON, "{}", Err(E::GetWithBody)),
            (Some("A"), "GET", p_enc, Some("number=0"), None, "", r(R::NumberOutOfRange { max: 128 })),
            (Some("A"), "GET", p_enc, Some("number=129"), None, "", r(R::NumberOutOfRange { max: 128 })),
            (Some("A"), "GET", p_enc, Some("size=0"), None, "", r(R::SizeOutOfRange { min: 64, max: 1024 })),
            (Some("A"), "GET", p_enc, Some("size=1032"), None, "", r(R::SizeOutOfRange { min: 64, max: 1024 })),
            (Some("A"), "GET", p_enc, Some("size=60"), None, "", r(R::SizeOutOfRange { min: 64, max: 1024 })),
            (Some("A"), "GET", p_enc, Some("size=100"), None, "", r(R::SizeNotMultipleOf8)),
            (Some("A"), "GET", "/api/v1/keys/X/enc_keys", Some("size=100"), None, "", r(R::SizeNotMultipleOf8)),
            (Some("A"), "GET", "/api/v1/keys/X/enc_keys", None, None, "", r(R::NotPermitted)),
            (Some("A"), "GET", "/api/v1/keys/Q/enc_keys", Some("size=100"), None, "", r(R::UnknownSlave)),
            // enc_keys, POST form.
            (Some("A"), "POST", p_enc, None, None, "", enc("B", 1, 256, &[])),
            (Some("A"), "POST", p_enc, None, Some("text/plain"), "", enc("B", 1, 256, &[])),
            (Some("A"), "POST", p_enc, None, JSON, "{}", enc("B", 1, 256, &[])),
            (Some("A"), "POST", p_enc, None, None, r#"{"number":2}"#, enc("B", 2, 256, &[])),
            (Some("A"), "POST", p_enc, None, Some("Application/JSON; charset=utf-8"), r#"{"number":2,"size":512,"future":{}}"#, enc("B", 2, 512, &[])),
            (Some("A"), "POST", p_enc, None, Some("text/plain"), r#"{"number":2}"#, Err(E::UnsupportedMediaType)),
            (Some("A"), "POST", p_enc, None, Some("application/jsonx"), r#"{"number":2}"#, Err(E::UnsupportedMediaType)),
            (Some("A"), "POST", p_enc, Some("number=2"), JSON, "{}", bad_query()),
            (Some("A"), "POST", p_enc, None, JSON, "{bad", bad_body()),
            (Some("A"), "POST", p_enc, None, JSON, "[]", bad_body()),
            (Some("A"), "POST", p_enc, None, JSON, r#"{"number":"3"}"#, bad_body()),
            (Some("A"), "POST", p_enc, None, JSON, r#"{"number":1.5}"#, bad_body()),
            (Some("A"), "POST", p_enc, None, JSON, r#"{"number":-1}"#, bad_body()),
            (Some("A"), "POST", p_enc, None, JSON, r#"{"size":"256"}"#, bad_body()),
            (Some("A"), "POST", p_enc, None, JSON, r#"{"size":100}"#, r(R::SizeNotMultipleOf8)),
            (Some("A"), "POST", p_enc, None, JSON, r#"{"number":99999999999}"#, r(R::NumberOutOfRange { max: 128 })),
            // Multicast list: counted, known, distinct; then pairing.
            (Some("A"), "POST", p_enc, None, JSON, r#"{"additional_slave_SAE_IDs":["C"]}"#, enc("B", 1, 256, &["C"])),
            (Some("A"), "POST", p_enc, None, JSON, r#"{"additional_slave_SAE_IDs":[]}"#, enc("B", 1, 256, &[])),
            (Some("A"), "POST", p_enc, None, JSON, r#"{"additional_slave_SAE_IDs":["C","A2","M"]}"#, r(R::TooManyAdditionalSlaves { max: 2 })),
            (Some("A"), "POST", "/api/v1/keys/C/enc_keys", None, JSON, r#"{"additional_slave_SAE_IDs":["B"]}"#, r(R::TooManyAdditionalSlaves { max: 0 })),
            (Some("A"), "POST", p_enc, None, JSON, r#"{"additional_slave_SAE_IDs":["Q"]}"#, r(R::UnknownSlave)),
            (Some("A"), "POST", p_enc, None, JSON, r#"{"additional_slave_SAE_IDs":["B"]}"#, r(R::DuplicateAdditionalSlave)),
            (Some("A"), "POST", p_enc, None, JSON, r#"{"additional_slave_SAE_IDs":["A"]}"#, r(R::DuplicateAdditionalSlave)),
            (Some("A"), "POST", p_enc, None, JSON, r#"{"additional_slave_SAE_IDs":["C","C"]}"#, r(R::DuplicateAdditionalSlave)),
            (Some("A"), "POST", p_enc, None, JSON, r#"{"additional_slave_SAE_IDs":["X"]}"#, r(R::NotPermitted)),
            (Some("A"), "POST", p_enc, None, JSON, r#"{"additional_slave_SAE_IDs":"C"}"#, bad_body()),
            // One profile per request: after pairing permission, before extension_mandatory.
            (Some("A"), "POST", p_enc, None, JSON, r#"{"additional_slave_SAE_IDs":["A2"]}"#, mixed(&["B", "A2"])),
            (Some("A"), "POST", "/api/v1/keys/A2/enc_keys", None, JSON, r#"{"additional_slave_SAE_IDs":["C","B"]}"#, mixed(&["A2", "C", "B"])),
            (Some("A"), "POST", p_enc, None, JSON, r#"{"additional_slave_SAE_IDs":["A2","X"]}"#, r(R::NotPermitted)),
            (Some("A"), "POST", p_enc, None, JSON, r#"{"additional_slave_SAE_IDs":["A2"],"extension_mandatory":[{"abc_a":1}]}"#, mixed(&["B", "A2"])),
            (Some("A"), "POST", p_enc, None, JSON, r#"{"additional_slave_SAE_IDs":["C"],"extension_mandatory":[{"abc_a":1}]}"#, r(R::UnsupportedMandatoryExtensions { names: vec!["abc_a".into()] })),
            // Extensions: mandatory after pairing, optional ignored.
            (Some("A"), "POST", p_enc, None, JSON, r#"{"extension_mandatory":[{"abc_route_type":"direct"}]}"#, r(R::UnsupportedMandatoryExtensions { names: vec!["abc_route_type".into()], })),
            (Some("A"), "POST", p_enc, None, JSON, r#"{"extension_mandatory":[{"abc_a":1},{"abc_b":2}]}"#, r(R::UnsupportedMandatoryExtensions { names: vec!["abc_a".into(), "abc_b".into()], })),
            (Some("A"), "POST", "/api/v1/keys/X/enc_keys", None, JSON, r#"{"extension_mandatory":[{"abc_a":1}]}"#, r(R::NotPermitted)),
            (Some("A"), "POST", p_enc, None, JSON, r#"{"size":100,"extension_mandatory":[{"abc_a":1}]}"#, r(R::SizeNotMultipleOf8)),
            (Some("A"), "POST", p_enc, None, JSON, r#"{"extension_mandatory":[]}"#, enc("B", 1, 256, &[])),
            (Some("A"), "POST", p_enc, None, JSON, r#"{"extension_optional":[{"abc_x":1}]}"#, enc("B", 1, 256, &[])),
            (Some("A"), "POST", p_enc, None, JSON, r#"{"extension_mandatory":{"abc_x":1}}"#, bad_body()),
            // dec_keys, GET form.
            (Some("A"), "GET", p_dec, Some("key_ID=550e8400-e29b-41d4-a716-446655440000"), None, "", dec("M", &[K1])),
            (Some("A"), "GET", p_dec, Some("key_ID=550E8400-E29B-41D4-A716-446655440000"), None, "", dec("M", &[K1])),
            (Some("A"), "GET", p_dec, None, None, "", bad_query()),
            (Some("A"), "GET", p_dec, Some("key_ID="), None, "", bad_query()),
            (Some("A"), "GET", p_dec, Some("key_ID=nope"), None, "", bad_query()),
            (Some("A"), "GET", p_dec, Some("key_ID=550e8400-e29b-41d4-a716-446655440000&key_ID=6ba7b810-9dad-11d1-80b4-00c04fd430c8"), None, "", bad_query()),
            (Some("A"), "GET", p_dec, Some("key_ID=550e8400-e29b-41d4-a716-446655440000&key_IDs_extension=1"), None, "", bad_query()),
            // dec_keys, POST form; the path master is not checked here.
            (Some("A"), "POST", p_dec, None, JSON, dec1, dec("M", &[K1])),
            (Some("A"), "POST", "/api/v1/keys/Nobody/dec_keys", None, JSON, dec1, dec("Nobody", &[K1])),
            (Some("A"), "POST", "/api/v1/keys/A/dec_keys", None, JSON, dec1, dec("A", &[K1])),
            (Some("A"), "POST", "/api/v1/keys/a%2Fb/dec_keys", None, JSON, dec1, Err(E::Service(ServiceError::KeysNotFound))),
            (Some("A"), "POST", "/api/v1/keys/a%2Fb/dec_keys", None, JSON, "{}", bad_body()),
            (Some("A"), "POST", p_dec, None, JSON, r#"{"key_IDs":[{"key_ID":"6ba7b810-9dad-11d1-80b4-00c04fd430c8"},{"key_ID":"550e8400-e29b-41d4-a716-446655440000","key_ID_extension":{}}],"key_IDs_extension":{}}"#, dec("M", &[K2, K1])),
            (Some("A"), "POST", p_dec, None, JSON, r#"{"key_IDs":[]}"#, r(R::NoKeyIds)),
            (Some("A"), "POST", p_dec, None, JSON, "{}", bad_body()),
            (Some("A"), "POST", p_dec, None, None, "", bad_body()),
            (Some("A"), "POST", p_dec, None, JSON, r#"{"key_IDs":[{"key_ID":""}]}"#, bad_body()),
            (Some("A"), "POST", p_dec, None, JSON, r#"{"key_IDs":[{"key_ID":"x"}]}"#, bad_body()),
            (Some("A"), "POST", p_dec, None, JSON, r#"{"key_IDs":"x"}"#, bad_body()),
            (Some("A"), "POST", p_dec, None, JSON, r#"{"key_IDs":[{"key_ID":"550e8400-e29b-41d4-a716-446655440000"},{"key_ID":"550E8400-E29B-41D4-A716-446655440000"}]}"#, r(R::DuplicateKeyId)),
            (Some("A"), "POST", p_dec, None, Some("text/plain"), dec1, Err(E::UnsupportedMediaType)),
        ]
    }

    fn same(got: &Result<Call, EtsiError>, want: &Result<Call, EtsiError>) -> bool {
        match (got, want) {
            (Err(EtsiError::BadQuery(_)), Err(EtsiError::BadQuery(_))) => true,
            (Err(EtsiError::BadBody(_)), Err(EtsiError::BadBody(_))) => true,
            _ => got == want,
        }
    }

    #[test]
    fn routing_table() {
        let mut failures = Vec::new();
        for (i, (caller, method, path, query, ct, body, want)) in table().into_iter().enumerate() {
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            let caller = caller.map(sae);
            let req = RawRequest {
                method: &method,
                path,
                query,
                content_type: ct.map(str::as_bytes),
                body: Body::Complete(body.as_bytes()),
            };
            let got = route(&req, caller.as_ref(), &Policy);
            if !same(&got, &want) {
                failures.push(format!(
                    "row {i}: {method} {path}?{query:?} {body}\n  got  {got:?}\n  want {want:?}"
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn too_large_body_is_400_but_only_after_admission() {
        let post = Method::POST;
        let req = RawRequest {
            method: &post,
            path: "/api/v1/keys/B/enc_keys",
            query: None,
            content_type: None,
            body: Body::TooLarge,
        };
        assert_eq!(
            route(&req, Some(&sae("A")), &Policy),
            Err(EtsiError::BodyTooLarge)
        );
        assert_eq!(
            route(&req, Some(&sae("B")), &Policy),
            Err(RequestError::NotAdmitted.into())
        );
    }

    #[tokio::test]
    async fn handle_renders_service_errors() {
        let get = Method::GET;
        let req = RawRequest {
            method: &get,
            path: "/api/v1/keys/B/enc_keys",
            query: None,
            content_type: None,
            body: Body::Complete(b""),
        };
        let reply = handle(&req, Some(&sae("A")), &Policy).await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        let v: serde_json::Value = serde_json::from_slice(&reply.body.unwrap()).unwrap();
        assert_eq!(v["message"], "key data access error");
    }

    proptest::proptest! {
        /// Whatever arrives (method, path, query, content type, body), `route` answers without
        /// panicking, and every refusal maps to a status the policy allows, with a JSON body
        /// unless it is 401.
        #[test]
        fn arbitrary_requests_get_a_policy_status(
            method in proptest::sample::select(vec!["GET", "POST", "PUT", "DELETE", "PATCH"]),
            sae_seg in proptest::sample::select(vec!["B", "C", "A", "A2", "X", "%42", "%", "", "B%2F", "urn%3Ax"]),
            op in proptest::sample::select(vec!["status", "enc_keys", "dec_keys", "keys", ""]),
            query in proptest::option::of("[a-zA-Z_=&%0-9.-]{0,40}"),
            ctype in proptest::option::of(proptest::sample::select(vec!["application/json", "text/plain", "application/json; charset=utf-8", ""])),
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
            json_body in proptest::option::of(proptest::sample::select(vec![
                "{}", "{\"number\":3}", "{\"number\":\"3\"}", "{\"size\":1.5}", "[]", "{\"key_IDs\":[]}",
                "{\"key_IDs\":[{\"key_ID\":\"550e8400-e29b-41d4-a716-446655440000\"}]}", "null", "{\"number\":-1}",
                "{\"additional_slave_SAE_IDs\":[\"C\",\"C\"]}",
            ])),
            caller in proptest::option::of(proptest::sample::select(vec!["A", "A2", "B", "Z"])),
        ) {
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            let path = format!("/api/v1/keys/{sae_seg}/{op}");
            let body_bytes: Vec<u8> = json_body.map(|j| j.as_bytes().to_vec()).unwrap_or(body);
            let req = RawRequest {
                method: &method,
                path: &path,
                query: query.as_deref(),
                content_type: ctype.map(str::as_bytes),
                body: Body::Complete(&body_bytes),
            };
            let caller = caller.map(sae);
            if let Err(e) = route(&req, caller.as_ref(), &Policy) {
                let reply = super::super::reply::error_reply(&e);
                let code = reply.status.as_u16();
                proptest::prop_assert!([400, 401, 404, 405].contains(&code), "{code} for {e:?}");
                proptest::prop_assert_eq!(reply.body.is_none(), code == 401);
            }
        }
    }
}
