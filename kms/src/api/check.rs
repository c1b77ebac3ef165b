//! The protocol-neutral request checks every front end runs, in the order product policy fixes
//! (docs/etsi014.md §5; docs/grpc.md follows the same order):
//!
//! * status and keys for a slave: caller admission ([`admit`]) → slave known and not the caller
//!   ([`known_slave`]) → the front end's own syntax checks → values, the additional-slave list,
//!   pairing permission, one profile per request and mandatory extensions ([`enc_keys`], or
//!   [`permit`] for status) → key availability (key manager);
//! * keys by ID: caller admission → request shape ([`key_ids`]) → lookup and "is a slave" (key
//!   manager).
//!
//! Each front end parses its wire form (ETSI query or JSON, protobuf) into the plain values these
//! functions take, and maps [`RequestError`] to its own status in its one mapping function. Sans-IO:
//! nothing here touches a socket, a clock or key bytes.

use std::collections::HashSet;

use qkd_types::{KeyId, SaeId};

use super::{EncKeysRequest, KeyProfile, KeyService};

/// Why a request was refused before it reached the key manager. Every variant is caused by the
/// calling SAE (or, for [`RequestError::MixedProfiles`], by how the operator configured its pairs).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// SAE: its certificate names no SAE attached to this KME (or no SAE at all).
    #[error("the client certificate names no SAE attached to this KME")]
    NotAdmitted,
    /// SAE: it may not pair with the slave or an additional slave.
    #[error("the caller may not share keys with the requested slave SAE")]
    NotPermitted,
    /// SAE: the slave or an additional slave is not a configured SAE.
    #[error("unknown slave_SAE_ID")]
    UnknownSlave,
    /// SAE: it named itself as the slave.
    #[error("slave_SAE_ID must differ from the calling SAE")]
    SlaveIsCaller,
    /// SAE: `number` outside 1..=max_key_per_request.
    #[error("number must be between 1 and {max}")]
    NumberOutOfRange {
        /// `max_key_per_request` of the pair.
        max: u32,
    },
    /// SAE: `size` outside min_key_size..=max_key_size.
    #[error("size must be between {min} and {max} bits")]
    SizeOutOfRange {
        /// `min_key_size` of the pair.
        min: u32,
        /// `max_key_size` of the pair.
        max: u32,
    },
    /// SAE: `size` within the range but not a multiple of 8.
    #[error("size shall be a multiple of 8")]
    SizeNotMultipleOf8,
    /// SAE: more additional slaves than `max_SAE_ID_count`.
    #[error("additional_slave_SAE_IDs has more than max_SAE_ID_count ({max}) entries")]
    TooManyAdditionalSlaves {
        /// `max_SAE_ID_count` of the pair.
        max: u32,
    },
    /// SAE: an additional slave repeats the master, the slave or another additional slave.
    #[error("additional_slave_SAE_IDs must differ from each other, the master and the slave")]
    DuplicateAdditionalSlave,
    /// SAE or operator: the pairs of the master with the slave and the additional slaves are
    /// configured with different policies or suites, so no one key can serve them all.
    #[error("all slaves of a request must share the policy and suite of the pair")]
    MixedProfiles {
        /// Each pair of the request, with its profile, in request order.
        pairs: Vec<(SaeId, SaeId, KeyProfile)>,
    },
    /// SAE: no key ID was named.
    #[error("key_IDs must hold at least one key_ID")]
    NoKeyIds,
    /// SAE: a key ID appears twice.
    #[error("key_IDs names a key_ID twice")]
    DuplicateKeyId,
    /// SAE: `extension_mandatory` names extensions this KME does not support.
    #[error("not all extension_mandatory parameters are supported")]
    UnsupportedMandatoryExtensions {
        /// The unsupported names, in request order.
        names: Vec<String>,
    },
}

/// The values of a Get key request as its wire form gave them (absent members are `None`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EncKeysParams {
    /// Number of keys; 1 when absent.
    pub number: Option<u64>,
    /// Key size in bits; the pair's default when absent.
    pub size: Option<u64>,
    /// Additional slaves (multicast), in request order.
    pub additional_slaves: Vec<SaeId>,
    /// Names of the mandatory extensions the request carries (none is supported).
    pub mandatory_extensions: Vec<String>,
}

/// Step 1 of every method: the caller's certificate names an SAE attached to this KME.
pub fn admit<'a>(
    caller: Option<&'a SaeId>,
    service: &dyn KeyService,
) -> Result<&'a SaeId, RequestError> {
    caller
        .filter(|c| service.admits(c))
        .ok_or(RequestError::NotAdmitted)
}

/// The slave of status and enc_keys: a configured SAE other than the caller. `None` stands for
/// an ID the wire form could not even parse, which names no SAE either.
pub fn known_slave(
    slave: Option<SaeId>,
    caller: &SaeId,
    service: &dyn KeyService,
) -> Result<SaeId, RequestError> {
    let slave = slave
        .filter(|s| service.knows(s))
        .ok_or(RequestError::UnknownSlave)?;
    if &slave == caller {
        return Err(RequestError::SlaveIsCaller);
    }
    Ok(slave)
}

/// The pairing permission of status: `caller` may obtain keys shared with `slave`.
pub fn permit(caller: &SaeId, slave: &SaeId, service: &dyn KeyService) -> Result<(), RequestError> {
    if service.may_pair(caller, slave) {
        Ok(())
    } else {
        Err(RequestError::NotPermitted)
    }
}

/// Values, multicast list, pairing, one profile per request and mandatory extensions of a Get
/// key request, in policy order.
pub fn enc_keys(
    params: EncKeysParams,
    caller: &SaeId,
    slave: SaeId,
    service: &dyn KeyService,
) -> Result<EncKeysRequest, RequestError> {
    let limits = service.limits(caller, &slave);

    let number_out_of_range = || RequestError::NumberOutOfRange {
        max: limits.max_key_per_request,
    };
    let number = params.number.unwrap_or(1);
    let number = u32::try_from(number)
        .ok()
        .filter(|n| (1..=limits.max_key_per_request).contains(n))
        .ok_or_else(number_out_of_range)?;
    let size_out_of_range = || RequestError::SizeOutOfRange {
        min: limits.min_key_size,
        max: limits.max_key_size,
    };
    let size = params.size.unwrap_or(u64::from(limits.key_size));
    let size_bits = u32::try_from(size)
        .ok()
        .filter(|s| *s > 0 && (limits.min_key_size..=limits.max_key_size).contains(s))
        .ok_or_else(size_out_of_range)?;
    if !size_bits.is_multiple_of(8) {
        return Err(RequestError::SizeNotMultipleOf8);
    }

    let additional = params.additional_slaves;
    if additional.len() > limits.max_sae_id_count as usize {
        return Err(RequestError::TooManyAdditionalSlaves {
            max: limits.max_sae_id_count,
        });
    }
    let mut seen: HashSet<&SaeId> = HashSet::from([caller, &slave]);
    for extra in &additional {
        if !service.knows(extra) {
            return Err(RequestError::UnknownSlave);
        }
        if !seen.insert(extra) {
            return Err(RequestError::DuplicateAdditionalSlave);
        }
    }

    permit(caller, &slave, service)?;
    for extra in &additional {
        permit(caller, extra, service)?;
    }

    // One key serves every slave of the request, so their pairs must agree on how keys are
    // made; serving them under the first pair's profile would silently weaken the others.
    if !additional.is_empty() {
        let profile = service.profile(caller, &slave);
        if additional
            .iter()
            .any(|a| service.profile(caller, a) != profile)
        {
            let pairs = std::iter::once(&slave)
                .chain(&additional)
                .map(|s| (caller.clone(), s.clone(), service.profile(caller, s)))
                .collect();
            return Err(RequestError::MixedProfiles { pairs });
        }
    }

    // This KME implements no extension, so every mandatory one is unsupported. Optional ones
    // are ignored (docs/etsi014.md §5 step 6).
    if !params.mandatory_extensions.is_empty() {
        return Err(RequestError::UnsupportedMandatoryExtensions {
            names: params.mandatory_extensions,
        });
    }

    Ok(EncKeysRequest {
        master: caller.clone(),
        slave,
        additional_slaves: additional,
        number,
        size_bits,
    })
}

/// The shape of a keys-by-ID request: at least one key ID, none twice.
pub fn key_ids(ids: Vec<KeyId>) -> Result<Vec<KeyId>, RequestError> {
    if ids.is_empty() {
        return Err(RequestError::NoKeyIds);
    }
    let mut seen = HashSet::with_capacity(ids.len());
    if !ids.iter().all(|id| seen.insert(*id)) {
        return Err(RequestError::DuplicateKeyId);
    }
    Ok(ids)
}

/// The registration the request-layer tests of every front end check against: A and A2 are
/// attached here; B, C, M and X are known elsewhere; A may pair with B, C and A2, A2 with B;
/// multicast (up to 2 extra slaves) only from A to B or A2; the pair A–A2 is QKD-only.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod policy {
    use super::*;
    use crate::api::{
        DecKeysRequest, DeliveredKey, EncKeysRequest, KeyLimits, PairStatus, ServiceError,
    };
    use async_trait::async_trait;

    /// Policy only; the async methods fail with a store error (checks never reach them).
    pub(crate) struct Policy;

    const HERE: [&str; 2] = ["A", "A2"];
    const KNOWN: [&str; 6] = ["A", "A2", "B", "C", "M", "X"];
    const PAIRS: [(&str, &str); 4] = [("A", "B"), ("A", "C"), ("A2", "B"), ("A", "A2")];
    pub(crate) const HYBRID: KeyProfile = KeyProfile {
        policy: "QKD+PQ+T",
        suite: "X25519/ML-KEM-768",
    };
    pub(crate) const QKD_ONLY: KeyProfile = KeyProfile {
        policy: "QKD-only",
        suite: "",
    };

    #[async_trait]
    impl KeyService for Policy {
        fn admits(&self, sae: &SaeId) -> bool {
            HERE.contains(&sae.as_str())
        }
        fn knows(&self, sae: &SaeId) -> bool {
            KNOWN.contains(&sae.as_str())
        }
        fn limits(&self, master: &SaeId, slave: &SaeId) -> KeyLimits {
            // Multicast only from A to B (up to 2 extra slaves); none elsewhere.
            let mut l = KeyLimits {
                max_sae_id_count: 0,
                ..KeyLimits::default()
            };
            if master.as_str() == "A" && ["B", "A2"].contains(&slave.as_str()) {
                l.max_sae_id_count = 2;
            }
            l
        }
        fn may_pair(&self, master: &SaeId, slave: &SaeId) -> bool {
            PAIRS.contains(&(master.as_str(), slave.as_str()))
        }
        fn profile(&self, _: &SaeId, slave: &SaeId) -> KeyProfile {
            // A2 is the one slave whose pair with A is configured QKD-only.
            if slave.as_str() == "A2" {
                QKD_ONLY
            } else {
                HYBRID
            }
        }
        async fn status(&self, _: &SaeId, _: &SaeId) -> Result<PairStatus, ServiceError> {
            Err(ServiceError::Storage)
        }
        async fn enc_keys(&self, _: EncKeysRequest) -> Result<Vec<DeliveredKey>, ServiceError> {
            Err(ServiceError::Storage)
        }
        async fn dec_keys(&self, _: DecKeysRequest) -> Result<Vec<DeliveredKey>, ServiceError> {
            Err(ServiceError::Storage)
        }
    }

    pub(crate) fn sae(s: &str) -> SaeId {
        SaeId::parse(s).unwrap()
    }
}
