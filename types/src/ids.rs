//! Domain identifiers. Each is a newtype that can only be built through `parse`, so a value of the
//! type is always valid: no `validate()` afterwards.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

/// Longest SAE, KME, node or link identifier we accept, in bytes. ETSI GS QKD 020 caps SAE IDs at
/// 64 characters; we use the same limit for every textual ID so that IDs survive relay.
pub const MAX_ID_LEN: usize = 64;

/// Why a string is not a valid identifier. Caused by whoever supplied the string (operator
/// configuration, an SAE's URL, a peer's message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The identifier is empty.
    #[error("{kind} must not be empty")]
    Empty {
        /// Which kind of identifier.
        kind: &'static str,
    },
    /// The identifier is longer than [`MAX_ID_LEN`].
    #[error("{kind} is {len} bytes long; at most {MAX_ID_LEN} are allowed")]
    TooLong {
        /// Which kind of identifier.
        kind: &'static str,
        /// Its length in bytes.
        len: usize,
    },
    /// The identifier holds a character outside the RFC 3986 set.
    #[error(
        "{kind} contains {ch:?}; only RFC 3986 unreserved and sub-delimiter characters, ':' and '@' are allowed"
    )]
    BadChar {
        /// Which kind of identifier.
        kind: &'static str,
        /// The first offending character.
        ch: char,
    },
    /// A key or block ID that is not a UUID.
    #[error("{kind} is not a UUID")]
    NotUuid {
        /// Which kind of identifier.
        kind: &'static str,
    },
}

fn is_id_char(c: char) -> bool {
    // RFC 3986 unreserved, sub-delims, ':' and '@' (pchar without percent-encoding).
    c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@".contains(c)
}

fn check_text(kind: &'static str, s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if s.len() > MAX_ID_LEN {
        return Err(IdError::TooLong { kind, len: s.len() });
    }
    if let Some(ch) = s.chars().find(|c| !is_id_char(*c)) {
        return Err(IdError::BadChar { kind, ch });
    }
    Ok(())
}

macro_rules! text_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(Box<str>);

        impl $name {
            /// Parses an identifier: 1 to [`MAX_ID_LEN`] bytes of RFC 3986 characters.
            pub fn parse(s: &str) -> Result<Self, IdError> {
                check_text($kind, s)?;
                Ok(Self(s.into()))
            }

            /// The identifier as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), &*self.0)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

text_id!(
    /// A Secure Application Entity (an encryptor) as named in ETSI GS QKD 014; unique in the network.
    SaeId,
    "SAE ID"
);
text_id!(
    /// A Key Management Entity (ETSI GS QKD 014); in this stack one per trusted node.
    KmeId,
    "KME ID"
);
text_id!(
    /// A trusted node (one `qkd-node` daemon, one site).
    NodeId,
    "node ID"
);
text_id!(
    /// A QKD link between two adjacent nodes; the same ID at both ends.
    LinkId,
    "link ID"
);
text_id!(
    /// A person or tool allowed to change a node through its control listener, named by the
    /// `urn:qkd:operator:<name>` URI SAN of a management certificate.
    OperatorId,
    "operator name"
);

impl SaeId {
    /// Parses an SAE ID from a URL path segment: every `%XX` is decoded first (including encoded
    /// unreserved characters), then the result must be a valid ID.
    pub fn from_path_segment(segment: &str) -> Result<Self, IdError> {
        let decoded = percent_encoding::percent_decode_str(segment)
            .decode_utf8()
            .map_err(|_| IdError::BadChar {
                kind: "SAE ID",
                ch: char::REPLACEMENT_CHARACTER,
            })?;
        Self::parse(&decoded)
    }
}

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(Uuid);

        impl $name {
            /// Parses a UUID in any letter case (hyphenated, simple, braced or URN form).
            pub fn parse(s: &str) -> Result<Self, IdError> {
                Uuid::parse_str(s).map(Self).map_err(|_| IdError::NotUuid { kind: $kind })
            }

            /// A fresh random (version 4) identifier.
            pub fn random() -> Self {
                Self(Uuid::new_v4())
            }

            /// Wraps an existing UUID.
            pub const fn from_uuid(u: Uuid) -> Self {
                Self(u)
            }

            /// The 16-byte RFC 9562 binary form.
            pub fn as_bytes(&self) -> &[u8; 16] {
                self.0.as_bytes()
            }

            /// Builds the identifier from its 16-byte binary form.
            pub fn from_bytes(b: [u8; 16]) -> Self {
                Self(Uuid::from_bytes(b))
            }

            /// The UUID.
            pub fn uuid(&self) -> Uuid {
                self.0
            }
        }

        /// Lower-case hyphenated form, as the ETSI APIs carry it.
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0.hyphenated())
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(&self.0.hyphenated())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

uuid_id!(
    /// The ETSI `key_ID` of a key delivered to SAEs.
    KeyId,
    "key ID"
);
uuid_id!(
    /// The ID of an ETSI GS QKD 004 key stream (`Key_stream_ID`), the same at both of its ends.
    KeyStreamId,
    "key stream ID"
);
uuid_id!(
    /// The identifier a key source gives one block of link key (for a real device: the key_ID its
    /// own ETSI 014 interface reports).
    BlockId,
    "block ID"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sae_id_limits() {
        assert!(SaeId::parse("ENC-A").is_ok());
        assert!(SaeId::parse("urn:x:sae:ENC_A@site~1").is_ok());
        assert_eq!(SaeId::parse(""), Err(IdError::Empty { kind: "SAE ID" }));
        assert!(SaeId::parse(&"a".repeat(64)).is_ok());
        assert!(matches!(
            SaeId::parse(&"a".repeat(65)),
            Err(IdError::TooLong { len: 65, .. })
        ));
        assert!(matches!(
            SaeId::parse("a/b"),
            Err(IdError::BadChar { ch: '/', .. })
        ));
        assert!(matches!(
            SaeId::parse("a b"),
            Err(IdError::BadChar { ch: ' ', .. })
        ));
    }

    #[test]
    fn sae_id_from_path_decodes_everything() {
        assert_eq!(
            SaeId::from_path_segment("ENC%2DA").unwrap().as_str(),
            "ENC-A"
        );
        assert_eq!(
            SaeId::from_path_segment("urn%3Asae%3AX").unwrap().as_str(),
            "urn:sae:X"
        );
        assert!(SaeId::from_path_segment("a%2Fb").is_err());
        assert!(SaeId::from_path_segment("%FF").is_err());
    }

    #[test]
    fn key_id_case_insensitive_and_lowercase_out() {
        let a = KeyId::parse("550E8400-E29B-41D4-A716-446655440000").unwrap();
        let b = KeyId::parse("550e8400-e29b-41d4-a716-446655440000").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "550e8400-e29b-41d4-a716-446655440000");
        assert!(KeyId::parse("").is_err());
        assert!(KeyId::parse("not-a-uuid").is_err());
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(json, "\"550e8400-e29b-41d4-a716-446655440000\"");
    }
}
