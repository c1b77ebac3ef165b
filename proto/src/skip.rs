//! The JSON bodies of SKIP, the Secure Key Integration Protocol (IETF draft-cisco-skip-02):
//! [`Capabilities`], [`Key`], [`Entropy`] and our [`Error`] body, plus the protocol's two textual
//! types, [`SystemId`] (a Key Provider's ID) and the hex encodings of key IDs and key bytes.
//!
//! Field names are Rust names; the SKIP spellings (`localSystemID`, `keyId`, `randomStr`...)
//! appear only as serde renames. Key bytes and entropy travel only inside [`HexSecret`], which
//! zeroizes its text on drop and never shows it under `Debug`. This module holds no policy:
//! which IDs a caller may name, size limits and status codes live in `qkd-kms`.

use std::fmt;

use qkd_types::{KeyId, Secret};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroizing;

/// Longest system ID we accept, in bytes: the draft requires implementations to handle at least
/// 32 bytes, so an ID of at most 32 fits every Key Provider and encryptor.
pub const MAX_SYSTEM_ID_LEN: usize = 32;

/// Hex digits of a key ID: the 16 bytes of the key's UUID (the draft's default of 128 bits).
pub const KEY_ID_HEX_LEN: usize = 32;

/// Response of `GET /capabilities` (draft §4.1). All five members are required.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// Whether `GET /entropy` is offered.
    pub entropy: bool,
    /// Whether `GET /key` is offered.
    pub key: bool,
    /// Free text naming how keys are made (at most 16 bytes fit every client).
    pub algorithm: String,
    /// This Key Provider's ID.
    #[serde(rename = "localSystemID")]
    pub local_system_id: SystemId,
    /// The peer Key Providers the caller may share keys with; at least one.
    #[serde(rename = "remoteSystemID")]
    pub remote_system_ids: Vec<SystemId>,
}

/// 200 body of `GET /key` and `GET /key/<keyId>` (draft §4.2, §4.3).
#[derive(Debug, Serialize, Deserialize)]
pub struct Key {
    /// The key's ID, lowercase hex.
    #[serde(rename = "keyId")]
    pub key_id: HexKeyId,
    /// The key bytes, lowercase hex.
    pub key: HexSecret,
}

/// 200 body of `GET /entropy` (draft §4.4).
#[derive(Debug, Serialize, Deserialize)]
pub struct Entropy {
    /// The random bytes, lowercase hex.
    #[serde(rename = "randomStr")]
    pub random_str: HexSecret,
    /// Their length in bits (the draft's example pairs 256 with 64 hex digits).
    pub minentropy: u32,
}

/// Body of every error answer. The draft defines none; clients ignore it, people read it.
/// Never carries key bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Error {
    /// What went wrong and what to fix.
    pub message: String,
}

/// A Key Provider's ID (`localSystemID`, `remoteSystemID`): 1 to [`MAX_SYSTEM_ID_LEN`] bytes of
/// RFC 3986 unreserved characters (`A-Z a-z 0-9 . _ ~ -`), so that it travels in a query string
/// without percent-encoding (known clients encode nothing).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SystemId(Box<str>);

/// Why a string is not a [`SystemId`]. Caused by whoever wrote it (operator or encryptor).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SystemIdError {
    /// Empty.
    #[error("system ID must not be empty")]
    Empty,
    /// Longer than [`MAX_SYSTEM_ID_LEN`].
    #[error("system ID is {0} bytes long; at most {MAX_SYSTEM_ID_LEN} are allowed")]
    TooLong(usize),
    /// A character outside the unreserved set.
    #[error("system ID contains {0:?}; only A-Z, a-z, 0-9, '.', '_', '~' and '-' are allowed")]
    BadChar(char),
}

impl SystemId {
    /// Parses a system ID.
    pub fn parse(s: &str) -> Result<Self, SystemIdError> {
        if s.is_empty() {
            return Err(SystemIdError::Empty);
        }
        if s.len() > MAX_SYSTEM_ID_LEN {
            return Err(SystemIdError::TooLong(s.len()));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || "._~-".contains(*c)))
        {
            return Err(SystemIdError::BadChar(c));
        }
        Ok(Self(s.into()))
    }

    /// The ID as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SystemId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SystemId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SystemId({:?})", &*self.0)
    }
}

impl Serialize for SystemId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SystemId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A key ID as SKIP carries it: the 16 bytes of our UUID key ID as 32 hex digits. Emitted in
/// lowercase, parsed in any case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HexKeyId(pub KeyId);

/// A `keyId` that is not 32 hex digits. Caused by the encryptor (or its peer, which passed it on).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("keyId must be {KEY_ID_HEX_LEN} hexadecimal digits")]
pub struct KeyIdError;

impl HexKeyId {
    /// Parses 32 hex digits, any case.
    pub fn parse(s: &str) -> Result<Self, KeyIdError> {
        if s.len() != KEY_ID_HEX_LEN {
            return Err(KeyIdError);
        }
        let mut bytes = [0u8; 16];
        hex::decode_to_slice(s, &mut bytes).map_err(|_| KeyIdError)?;
        Ok(Self(KeyId::from_bytes(bytes)))
    }
}

impl fmt::Display for HexKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0.as_bytes()))
    }
}

impl Serialize for HexKeyId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HexKeyId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Secret bytes as SKIP carries them (`key`, `randomStr`): lowercase hex.
///
/// The text is zeroized on drop and `Debug` prints `<HEX SECRET>`. It is deliberately not `Clone`.
pub struct HexSecret(Zeroizing<String>);

/// A `key` or `randomStr` that is not hex. Caused by the remote Key Provider.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an even number of hexadecimal digits")]
pub struct HexSecretError;

impl HexSecret {
    /// Encodes secret bytes for the wire.
    ///
    /// This is the one place where key bytes and entropy leave [`Secret`] on their way to an
    /// encryptor: the caller has authenticated it (mutual TLS) and checked it may have them; the
    /// text is zeroized when the [`HexSecret`] is dropped.
    pub fn from_secret(secret: &Secret) -> Self {
        // Exposed for the wire towards the authenticated encryptor (see above).
        Self(Zeroizing::new(hex::encode(secret.expose())))
    }

    /// Decodes the bytes (client side: tests and tools), any case.
    pub fn to_secret(&self) -> Result<Secret, HexSecretError> {
        let bytes = hex::decode(self.0.as_bytes()).map_err(|_| HexSecretError)?;
        Ok(Secret::new(Zeroizing::new(bytes)))
    }

    /// Length of the hex text (not secret: it follows from the size asked for).
    pub fn encoded_len(&self) -> usize {
        self.0.len()
    }
}

impl fmt::Debug for HexSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<HEX SECRET>")
    }
}

impl Serialize for HexSecret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for HexSecret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|s| Self(Zeroizing::new(s)))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_use_the_draft_spellings() {
        let caps = Capabilities {
            entropy: true,
            key: true,
            algorithm: "QKD+PQ".into(),
            local_system_id: SystemId::parse("KP_A").unwrap(),
            remote_system_ids: vec![SystemId::parse("KP_B").unwrap()],
        };
        assert_eq!(
            serde_json::to_value(&caps).unwrap(),
            serde_json::json!({"entropy": true, "key": true, "algorithm": "QKD+PQ",
                "localSystemID": "KP_A", "remoteSystemID": ["KP_B"]})
        );
    }

    #[test]
    fn key_ids_are_32_hex_digits_any_case_and_emitted_lowercase() {
        let id = HexKeyId::parse("00112233445566778899AABBCCDDEEFF").unwrap();
        assert_eq!(id.to_string(), "00112233445566778899aabbccddeeff");
        assert_eq!(HexKeyId::parse(&id.to_string()).unwrap(), id);
        for bad in [
            "",
            "0011",
            "00112233445566778899aabbccddeeffaa",
            "g0112233445566778899aabbccddeeff",
        ] {
            assert!(HexKeyId::parse(bad).is_err(), "{bad}");
        }
        // The same bytes as the UUID key ID the other front ends show.
        let uuid = KeyId::parse("00112233-4455-6677-8899-aabbccddeeff").unwrap();
        assert_eq!(id.0, uuid);
    }

    #[test]
    fn key_bodies_are_lowercase_hex_and_hidden_from_debug() {
        let key = Key {
            key_id: HexKeyId::parse("00112233445566778899aabbccddeeff").unwrap(),
            key: HexSecret::from_secret(&Secret::copy_from(&[0xAB, 0x01])),
        };
        assert_eq!(
            serde_json::to_string(&key).unwrap(),
            r#"{"keyId":"00112233445566778899aabbccddeeff","key":"ab01"}"#
        );
        assert!(!format!("{key:?}").contains("ab01"));
        let back: Key =
            serde_json::from_str(r#"{"keyId":"00112233445566778899AABBCCDDEEFF","key":"AB01"}"#)
                .unwrap();
        assert_eq!(
            back.key.to_secret().unwrap(),
            Secret::copy_from(&[0xAB, 0x01])
        );
    }

    #[test]
    fn system_ids_are_short_and_unreserved() {
        assert!(SystemId::parse("KP_A-1.x~").is_ok());
        assert_eq!(SystemId::parse(""), Err(SystemIdError::Empty));
        assert_eq!(
            SystemId::parse(&"a".repeat(33)),
            Err(SystemIdError::TooLong(33))
        );
        for bad in ["a b", "a&b", "a/b", "a?b", "a#b", "a%b"] {
            assert!(
                matches!(SystemId::parse(bad), Err(SystemIdError::BadChar(_))),
                "{bad}"
            );
        }
    }
}
