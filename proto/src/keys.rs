//! Key delivery to SAEs over gRPC (`proto/keys.proto`): messages, client and server stubs.
//!
//! [`Key`] is the one message of the stack's gRPC protocols that carries key bytes. Its `Debug`
//! prints the key ID and the key's length only, and its bytes are zeroized when it is dropped.
//! (The encoded copy that tonic writes to the connection is the transport's, as with every
//! protocol that sends a key.)

#![allow(missing_docs, clippy::all)]

tonic::include_proto!("qkd.keys.v1");

/// Encoded file descriptor set of `keys.proto`, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("keys_descriptor");

impl Key {
    /// The wire form of a delivered key. The one place the gRPC front end copies key bytes out of
    /// a `Secret`: into the response to the authenticated SAE the key manager delivered them to.
    pub fn from_secret(key_id: String, secret: &qkd_types::Secret) -> Self {
        Self {
            key_id,
            key: secret.expose().to_vec(),
        }
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("key_id", &self.key_id)
            .field("key", &format_args!("<SECRET {} bytes>", self.key.len()))
            .finish()
    }
}

impl Drop for Key {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every message, field and RPC of `keys.proto` carries a comment on the line above it.
    #[test]
    fn every_declaration_of_keys_proto_is_commented() {
        let text = include_str!("../proto/keys.proto");
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        let mut checked = 0;
        for (i, line) in lines.iter().enumerate() {
            let field = line.ends_with(';') && line.contains(" = ");
            let decl = line.starts_with("message ")
                || line.starts_with("enum ")
                || line.starts_with("rpc ")
                || line.starts_with("service ");
            if field || decl {
                checked += 1;
                assert!(
                    i > 0 && lines[i - 1].starts_with("//"),
                    "keys.proto line {}: {line:?} has no comment",
                    i + 1
                );
            }
        }
        // 1 service, 7 RPCs, 14 messages, 1 enum of 9 values and 44 fields today.
        assert!(checked >= 76, "only {checked} declarations found");
    }

    #[test]
    fn key_debug_hides_the_bytes() {
        let k = Key {
            key_id: "550e8400-e29b-41d4-a716-446655440000".into(),
            key: vec![0xAB; 32],
        };
        let shown = format!("{:?}", GetKeysResponse { keys: vec![k] });
        assert!(shown.contains("<SECRET 32 bytes>"), "{shown}");
        assert!(!shown.contains("171"), "{shown}");
    }
}
