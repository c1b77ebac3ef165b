//! The JSON bodies of ETSI GS QKD 014 V1.1.1 (Tables 9 to 13): [`Status`], [`KeyRequest`],
//! [`KeyContainer`] with its [`Key`]s, [`KeyIds`] and [`Error`].
//!
//! Field names are Rust names; the ETSI spellings (`key_ID`, `master_SAE_ID`...) appear only as
//! serde renames. Unknown members are ignored (forward compatibility), a known member of the wrong
//! JSON type is an error, and `number`/`size` must be JSON integers (`"3"`, `1.5` and `-1` are
//! refused). Request bodies go through [`from_json_object`], which also refuses a top-level value
//! that is not an object.
//!
//! Key bytes travel only inside [`KeyValue`], which zeroizes its base64 text on drop and never
//! shows it under `Debug`. This module holds no policy: limits and the order of checks live in
//! `qkd-kms`.
//!
//! Two shapes are for clients reading what devices in the field send, not for emitting:
//! [`DeviceStatus`] (integer IDs, missing limits) and [`DeviceError`] (`details` of any shape,
//! non-JSON bodies). Our KME emits [`Status`] and [`Error`] only.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use qkd_types::{KeyId, KmeId, SaeId, Secret};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroizing;

/// A JSON object, as carried by the `*_extension` members.
pub type JsonObject = serde_json::Map<String, serde_json::Value>;

/// Response of Get status (Table 9).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// KME ID of the responding KME.
    #[serde(rename = "source_KME_ID")]
    pub source_kme_id: KmeId,
    /// KME ID of the KME that serves the slave SAE.
    #[serde(rename = "target_KME_ID")]
    pub target_kme_id: KmeId,
    /// SAE ID of the calling SAE, from its certificate.
    #[serde(rename = "master_SAE_ID")]
    pub master_sae_id: SaeId,
    /// SAE ID named in the request path.
    #[serde(rename = "slave_SAE_ID")]
    pub slave_sae_id: SaeId,
    /// Default key size in bits.
    pub key_size: u32,
    /// Keys of the default size the KME can deliver to this pair right now.
    pub stored_key_count: u64,
    /// Largest possible `stored_key_count`.
    pub max_key_count: u64,
    /// Most keys in one request.
    pub max_key_per_request: u32,
    /// Largest key size in bits.
    pub max_key_size: u32,
    /// Smallest key size in bits.
    pub min_key_size: u32,
    /// Most entries in `additional_slave_SAE_IDs`; 0 means no multicast.
    #[serde(rename = "max_SAE_ID_count")]
    pub max_sae_id_count: u32,
    /// For future use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_extension: Option<JsonObject>,
}

/// Body of POST enc_keys (Table 10). Every member is optional; `{}` is a valid request.
///
/// `number` and `size` are `u64` so that a too-large integer is a value the KMS can name in a
/// descriptive error rather than a type error; both still refuse strings, fractions and negatives.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KeyRequest {
    /// Number of keys (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<u64>,
    /// Size of each key in bits (default: the Status `key_size`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Extra slaves that must receive the same keys (multicast).
    #[serde(
        rename = "additional_slave_SAE_IDs",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub additional_slave_sae_ids: Option<Vec<SaeId>>,
    /// Name/value pairs the KME shall handle or refuse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extension_mandatory: Option<Vec<JsonObject>>,
    /// Name/value pairs the KME may ignore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extension_optional: Option<Vec<JsonObject>>,
}

/// 200 body of enc_keys and dec_keys (Table 11).
#[derive(Debug, Serialize, Deserialize)]
pub struct KeyContainer {
    /// The keys. Table 11 prints the name as `Keys`; we emit `keys` and accept both as a client.
    #[serde(alias = "Keys")]
    pub keys: Vec<Key>,
    /// For future use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_container_extension: Option<JsonObject>,
}

/// One key of a [`KeyContainer`].
#[derive(Debug, Serialize, Deserialize)]
pub struct Key {
    /// The key's UUID.
    #[serde(rename = "key_ID")]
    pub key_id: KeyId,
    /// For future use.
    #[serde(
        rename = "key_ID_extension",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub key_id_extension: Option<JsonObject>,
    /// The key bytes, base64.
    pub key: KeyValue,
    /// For future use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_extension: Option<JsonObject>,
}

/// Body of POST dec_keys (Table 12).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyIds {
    /// The keys asked for (required; the KMS refuses an empty list).
    #[serde(rename = "key_IDs")]
    pub key_ids: Vec<KeyIdEntry>,
    /// For future use.
    #[serde(
        rename = "key_IDs_extension",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub key_ids_extension: Option<JsonObject>,
}

/// One entry of [`KeyIds`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyIdEntry {
    /// The key's UUID, in any letter case.
    #[serde(rename = "key_ID")]
    pub key_id: KeyId,
    /// For future use.
    #[serde(
        rename = "key_ID_extension",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub key_id_extension: Option<JsonObject>,
}

/// Body of 400 and 503 answers (Table 13). Never carries key bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Error {
    /// The error message (the spec's exact strings where it has one).
    pub message: String,
    /// Name/value pairs with more detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Vec<JsonObject>>,
}

impl Error {
    /// An error with a message and no details.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            details: None,
        }
    }
}

/// A Status as a client reads it from a device in the field: lenient where real KMEs differ.
///
/// [`Status`] is what our KME emits; this is what our device adapter accepts. IDs may be JSON
/// strings or integers (some KMEs number their SAEs), and only the members a client needs to pick
/// its request are required: `source_KME_ID` (checked against configuration) and `key_size`.
/// Missing limits read as "not advertised"; the client then falls back to safe defaults.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct DeviceStatus {
    /// KME ID of the responding KME.
    #[serde(rename = "source_KME_ID")]
    pub source_kme_id: LenientId,
    /// KME ID of the KME that serves the slave SAE.
    #[serde(rename = "target_KME_ID", default)]
    pub target_kme_id: Option<LenientId>,
    /// SAE ID of the calling SAE, as the KME derived it from the client certificate.
    #[serde(rename = "master_SAE_ID", default)]
    pub master_sae_id: Option<LenientId>,
    /// SAE ID named in the request path.
    #[serde(rename = "slave_SAE_ID", default)]
    pub slave_sae_id: Option<LenientId>,
    /// Default key size in bits.
    pub key_size: u32,
    /// Keys of the default size the KME can deliver to this pair right now.
    #[serde(default)]
    pub stored_key_count: Option<u64>,
    /// Largest possible `stored_key_count`.
    #[serde(default)]
    pub max_key_count: Option<u64>,
    /// Most keys in one request.
    #[serde(default)]
    pub max_key_per_request: Option<u32>,
    /// Largest key size in bits.
    #[serde(default)]
    pub max_key_size: Option<u32>,
    /// Smallest key size in bits.
    #[serde(default)]
    pub min_key_size: Option<u32>,
    /// Most entries in `additional_slave_SAE_IDs`; 0 means no multicast.
    #[serde(rename = "max_SAE_ID_count", default)]
    pub max_sae_id_count: Option<u32>,
}

/// An identifier read from a device: a JSON string, or a non-negative integer read as its decimal
/// text (KMEs that number their SAEs send `"master_SAE_ID": 12`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LenientId(pub String);

impl fmt::Display for LenientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for LenientId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Number(u64),
        }
        Ok(match Raw::deserialize(d)? {
            Raw::Text(s) => Self(s),
            Raw::Number(n) => Self(n.to_string()),
        })
    }
}

/// An error body as a client reads it from a device: every member optional, `details` of any
/// JSON shape (the spec's array of objects, a single object or a list of strings all occur).
/// Clients parse it best-effort and fall back to the HTTP status when the body is not JSON at all
/// (proxy pages, empty 401 bodies).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct DeviceError {
    /// The error message, when the body has a string `message`.
    #[serde(default, deserialize_with = "string_or_none")]
    pub message: Option<String>,
    /// Whatever the device put under `details`.
    #[serde(default)]
    pub details: Option<serde_json::Value>,
}

impl DeviceError {
    /// Reads an error body; anything that is not a JSON object gives an empty error.
    pub fn parse_lenient(body: &[u8]) -> Self {
        serde_json::from_slice(body).unwrap_or_default()
    }
}

fn string_or_none<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Some(s),
        _ => None,
    })
}

/// A key as it travels in JSON: standard base64 with padding, no line breaks (RFC 4648 §4).
///
/// The text is zeroized on drop and `Debug` prints `<KEY>`. It is deliberately not `Clone`.
pub struct KeyValue(Zeroizing<String>);

impl KeyValue {
    /// Encodes a key for the wire.
    ///
    /// This is the one place where delivered key bytes leave [`Secret`] on their way to an SAE:
    /// the caller has already authenticated the SAE (mutual TLS) and checked that it may have
    /// this key, and the encoded text is zeroized when the [`KeyValue`] is dropped.
    pub fn from_secret(secret: &Secret) -> Self {
        let mut text = Zeroizing::new(String::with_capacity(secret.len().div_ceil(3) * 4));
        // Exposed for the wire towards the authenticated SAE (see above).
        BASE64.encode_string(secret.expose(), &mut text);
        Self(text)
    }

    /// Decodes the key (client side: tests, peers, tools).
    pub fn to_secret(&self) -> Result<Secret, KeyValueError> {
        let mut bytes = Zeroizing::new(Vec::with_capacity(self.0.len() / 4 * 3));
        BASE64
            .decode_vec(self.0.as_bytes(), &mut bytes)
            .map_err(|_| KeyValueError)?;
        Ok(Secret::new(bytes))
    }

    /// Length of the base64 text (not secret: it follows from the key size).
    pub fn encoded_len(&self) -> usize {
        self.0.len()
    }
}

/// A `key` member that is not standard padded base64. Caused by the remote KME.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key is not standard padded base64")]
pub struct KeyValueError;

impl fmt::Debug for KeyValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<KEY>")
    }
}

impl Serialize for KeyValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for KeyValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|s| Self(Zeroizing::new(s)))
    }
}

/// Parses a request body that must be one JSON object (RFC 8259), refusing arrays, scalars and
/// anything after the object. serde alone would accept a JSON array for a struct (by position),
/// hence the explicit check of the first significant byte.
pub fn from_json_object<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, serde_json::Error> {
    let first = body
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    if first != Some(&b'{') {
        return Err(<serde_json::Error as serde::de::Error>::custom(
            "the body is not a JSON object",
        ));
    }
    serde_json::from_slice(body)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn key_request(json: &str) -> Result<KeyRequest, serde_json::Error> {
        from_json_object(json.as_bytes())
    }

    #[test]
    fn key_request_accepts_integers_and_ignores_unknown_members() {
        let r = key_request(r#"{"number": 3, "size": 1024, "vendor_thing": [1,2]}"#).unwrap();
        assert_eq!(r.number, Some(3));
        assert_eq!(r.size, Some(1024));
        assert_eq!(key_request("{}").unwrap(), KeyRequest::default());
        assert_eq!(key_request(" \n{}\n ").unwrap(), KeyRequest::default());
    }

    #[test]
    fn key_request_refuses_non_integers_and_wrong_types() {
        for bad in [
            r#"{"number": "3"}"#,
            r#"{"number": 1.5}"#,
            r#"{"number": -1}"#,
            r#"{"size": "256"}"#,
            r#"{"size": 256.0}"#,
            r#"{"size": true}"#,
            r#"{"additional_slave_SAE_IDs": "B"}"#,
            r#"{"additional_slave_SAE_IDs": [1]}"#,
            r#"{"extension_mandatory": {"abc_x": 1}}"#,
            r#"{"extension_mandatory": ["abc_x"]}"#,
            r#"{"extension_optional": 7}"#,
            r#"[1, 256]"#,
            r#""text""#,
            r#"3"#,
            r#"null"#,
            r#"{"number": 1"#,
            r#"{"number": 1} {}"#,
            r#"{"number": 1, "number": 2}"#,
            "",
        ] {
            assert!(key_request(bad).is_err(), "accepted {bad}");
        }
    }

    #[test]
    fn key_ids_shape() {
        let ids: KeyIds = from_json_object(
            br#"{"key_IDs": [{"key_ID": "550E8400-E29B-41D4-A716-446655440000", "x": 1}]}"#,
        )
        .unwrap();
        assert_eq!(
            ids.key_ids[0].key_id.to_string(),
            "550e8400-e29b-41d4-a716-446655440000"
        );
        for bad in [
            r#"{}"#,
            r#"{"key_IDs": {}}"#,
            r#"{"key_IDs": [{}]}"#,
            r#"{"key_IDs": [{"key_ID": ""}]}"#,
            r#"{"key_IDs": [{"key_ID": "nope"}]}"#,
            r#"{"key_IDs": ["550e8400-e29b-41d4-a716-446655440000"]}"#,
        ] {
            assert!(
                from_json_object::<KeyIds>(bad.as_bytes()).is_err(),
                "accepted {bad}"
            );
        }
    }

    #[test]
    fn container_uses_etsi_spellings_and_hides_keys_in_debug() {
        let secret = Secret::copy_from(&[0xAB; 32]);
        let id = KeyId::parse("550e8400-e29b-41d4-a716-446655440000").unwrap();
        let c = KeyContainer {
            keys: vec![Key {
                key_id: id,
                key_id_extension: None,
                key: KeyValue::from_secret(&secret),
                key_extension: None,
            }],
            key_container_extension: None,
        };
        let json = serde_json::to_string(&c).unwrap();
        let expected_key = BASE64.encode([0xAB; 32]);
        assert_eq!(expected_key.len(), 44);
        assert_eq!(
            json,
            format!(
                r#"{{"keys":[{{"key_ID":"550e8400-e29b-41d4-a716-446655440000","key":"{expected_key}"}}]}}"#
            )
        );
        let debug = format!("{c:?}");
        assert!(!debug.contains(&expected_key), "{debug}");
        assert!(debug.contains("<KEY>"));

        let back: KeyContainer =
            serde_json::from_str(&json.replace("\"keys\"", "\"Keys\"")).unwrap();
        assert_eq!(back.keys[0].key.to_secret().unwrap(), secret);
    }

    #[test]
    fn status_and_error_spellings() {
        let s = Status {
            source_kme_id: KmeId::parse("KME-A").unwrap(),
            target_kme_id: KmeId::parse("KME-B").unwrap(),
            master_sae_id: SaeId::parse("SAE-A").unwrap(),
            slave_sae_id: SaeId::parse("SAE-B").unwrap(),
            key_size: 352,
            stored_key_count: 25000,
            max_key_count: 100000,
            max_key_per_request: 128,
            max_key_size: 1024,
            min_key_size: 64,
            max_sae_id_count: 0,
            status_extension: None,
        };
        let v = serde_json::to_value(&s).unwrap();
        for name in [
            "source_KME_ID",
            "target_KME_ID",
            "master_SAE_ID",
            "slave_SAE_ID",
            "max_SAE_ID_count",
            "stored_key_count",
        ] {
            assert!(v.get(name).is_some(), "{name} missing in {v}");
        }
        assert!(v.get("status_extension").is_none());
        assert_eq!(
            serde_json::to_string(&Error::new("key data access error")).unwrap(),
            r#"{"message":"key data access error"}"#
        );
    }

    #[test]
    fn device_status_accepts_integer_ids_and_missing_limits() {
        let s: DeviceStatus = serde_json::from_str(
            r#"{"source_KME_ID": 7, "target_KME_ID": "KME-B", "master_SAE_ID": 12,
                "slave_SAE_ID": "13", "key_size": 256, "vendor": {}}"#,
        )
        .unwrap();
        assert_eq!(s.source_kme_id.0, "7");
        assert_eq!(s.master_sae_id.unwrap().0, "12");
        assert_eq!(s.max_key_per_request, None);
        assert!(serde_json::from_str::<DeviceStatus>(r#"{"key_size": 256}"#).is_err());
        assert!(
            serde_json::from_str::<DeviceStatus>(r#"{"source_KME_ID": -1, "key_size": 256}"#)
                .is_err()
        );
    }

    #[test]
    fn device_error_reads_every_details_shape() {
        for body in [
            r#"{"message": "m", "details": [{"a": 1}]}"#,
            r#"{"message": "m", "details": {"a": 1}}"#,
            r#"{"message": "m", "details": ["a is wrong"]}"#,
        ] {
            let e = DeviceError::parse_lenient(body.as_bytes());
            assert_eq!(e.message.as_deref(), Some("m"), "{body}");
            assert!(e.details.is_some());
        }
        for body in [
            "",
            "<html>502 Bad Gateway</html>",
            "[1]",
            r#"{"message": 3}"#,
        ] {
            assert_eq!(DeviceError::parse_lenient(body.as_bytes()).message, None);
        }
    }

    #[test]
    fn key_value_refuses_bad_base64() {
        let v: KeyValue = serde_json::from_str(r#""not base64!""#).unwrap();
        assert_eq!(v.to_secret().err(), Some(KeyValueError));
    }
}
