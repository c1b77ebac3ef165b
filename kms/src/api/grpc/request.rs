//! The sans-IO request layer of the gRPC key delivery front end: each protobuf request and the
//! caller's SAE ID (from its certificate) become a checked call on the
//! [`KeyService`](crate::api::KeyService), or a [`GrpcError`].
//!
//! The order of checks is the ETSI 014 front end's (docs/etsi014.md §5, docs/grpc.md), through the
//! same functions ([`crate::api::check`]):
//! * GetStatus and GetKeys: caller admission → slave known and not the caller → field syntax
//!   (additional slave IDs) → values, additional-slave list, pairing permission, one profile per
//!   request → key availability (key manager);
//! * GetKeysByIds: caller admission → request shape (every key ID a UUID, at least one, none twice)
//!   → lookup by (master_sae_id, key ID) and "caller is a slave" (key manager). An unparsable
//!   master_sae_id names no key, exactly like an unknown one.
//! * OpenStream: caller admission → peer known and not the caller → key_stream_id syntax →
//!   pairing permission → QoS and the stream itself (key manager, [`crate::core::stream`]).
//! * GetStreamKey, StreamKeys, CloseStream: caller admission → key_stream_id syntax → whose
//!   stream it is (key manager).
//!
//! Nothing here does I/O, reads a clock or touches key bytes.

use qkd_proto::keys as pb;
use qkd_types::{KeyId, KeyStreamId, SaeId};

use super::status::GrpcError;
use crate::api::check::{self, EncKeysParams};
use crate::api::{DecKeysRequest, EncKeysRequest, KeyService, OpenStreamRequest, ServiceError};
use crate::core::stream::Qos;

/// Checks a GetStatus request; returns (master, slave).
pub fn status(
    caller: Option<&SaeId>,
    req: &pb::GetStatusRequest,
    service: &dyn KeyService,
) -> Result<(SaeId, SaeId), GrpcError> {
    let caller = check::admit(caller, service)?;
    let slave = check::known_slave(SaeId::parse(&req.slave_sae_id).ok(), caller, service)?;
    check::permit(caller, &slave, service)?;
    Ok((caller.clone(), slave))
}

/// Checks a GetKeys request.
pub fn get_keys(
    caller: Option<&SaeId>,
    req: &pb::GetKeysRequest,
    service: &dyn KeyService,
) -> Result<EncKeysRequest, GrpcError> {
    let caller = check::admit(caller, service)?;
    let slave = check::known_slave(SaeId::parse(&req.slave_sae_id).ok(), caller, service)?;
    let additional_slaves = parse_each(
        &req.additional_slave_sae_ids,
        "additional_slave_sae_ids",
        |s| SaeId::parse(s).map_err(|e| format!("not a valid SAE ID: {e}")),
    )?;
    let params = EncKeysParams {
        number: req.number.map(u64::from),
        size: req.size.map(u64::from),
        additional_slaves,
        // keys.proto has no extensions.
        mandatory_extensions: Vec::new(),
    };
    Ok(check::enc_keys(params, caller, slave, service)?)
}

/// Checks a GetKeysByIds request.
pub fn get_keys_by_ids(
    caller: Option<&SaeId>,
    req: &pb::GetKeysByIdsRequest,
    service: &dyn KeyService,
) -> Result<DecKeysRequest, GrpcError> {
    let caller = check::admit(caller, service)?;
    let key_ids = parse_each(&req.key_ids, "key_ids", |s| {
        KeyId::parse(s)
            .map_err(|_| "not a UUID (e.g. 550e8400-e29b-41d4-a716-446655440000)".to_owned())
    })?;
    let key_ids = check::key_ids(key_ids)?;
    let master = SaeId::parse(&req.master_sae_id).map_err(|_| ServiceError::KeysNotFound)?;
    Ok(DecKeysRequest {
        slave: caller.clone(),
        master,
        key_ids,
    })
}

/// Checks an OpenStream request.
pub fn open_stream(
    caller: Option<&SaeId>,
    req: &pb::OpenStreamRequest,
    service: &dyn KeyService,
) -> Result<OpenStreamRequest, GrpcError> {
    let caller = check::admit(caller, service)?;
    let peer = check::known_slave(SaeId::parse(&req.peer_sae_id).ok(), caller, service)?;
    let join = req.key_stream_id.as_deref().map(stream_id).transpose()?;
    check::permit(caller, &peer, service)?;
    let q = req.qos.clone().unwrap_or_default();
    Ok(OpenStreamRequest {
        caller: caller.clone(),
        peer,
        qos: Qos {
            chunk_bytes: q.key_chunk_size,
            max_bps: q.max_bps,
            min_bps: q.min_bps,
            jitter_ms: q.jitter,
            priority: q.priority,
            timeout_ms: q.timeout,
            ttl_s: q.ttl,
            metadata_mimetype: q.metadata_mimetype,
        },
        join,
    })
}

/// Checks the caller and the stream ID of GetStreamKey, StreamKeys and CloseStream; returns
/// (caller, stream).
pub fn stream_call(
    caller: Option<&SaeId>,
    key_stream_id: &str,
    service: &dyn KeyService,
) -> Result<(SaeId, KeyStreamId), GrpcError> {
    let caller = check::admit(caller, service)?;
    Ok((caller.clone(), stream_id(key_stream_id)?))
}

/// The wire form of a granted QoS.
pub fn qos_message(q: &Qos) -> pb::Qos {
    pb::Qos {
        key_chunk_size: q.chunk_bytes,
        max_bps: q.max_bps,
        min_bps: q.min_bps,
        jitter: q.jitter_ms,
        priority: q.priority,
        timeout: q.timeout_ms,
        ttl: q.ttl_s,
        metadata_mimetype: q.metadata_mimetype.clone(),
    }
}

fn stream_id(s: &str) -> Result<KeyStreamId, GrpcError> {
    KeyStreamId::parse(s).map_err(|_| GrpcError::Malformed {
        field: "key_stream_id".into(),
        problem: "not a UUID (e.g. 550e8400-e29b-41d4-a716-446655440000)".into(),
    })
}

/// Parses every entry of a repeated field; the first failure names the field and its index.
fn parse_each<T>(
    items: &[String],
    field: &str,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Vec<T>, GrpcError> {
    items
        .iter()
        .enumerate()
        .map(|(i, s)| {
            parse(s).map_err(|problem| GrpcError::Malformed {
                field: format!("{field}[{i}]"),
                problem,
            })
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::api::check::RequestError;
    use crate::api::check::policy::{Policy, sae};

    fn keys(
        slave: &str,
        number: Option<u32>,
        size: Option<u32>,
        extra: &[&str],
    ) -> pb::GetKeysRequest {
        pb::GetKeysRequest {
            slave_sae_id: slave.into(),
            number,
            size,
            additional_slave_sae_ids: extra.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn malformed<T: std::fmt::Debug>(r: Result<T, GrpcError>) -> bool {
        matches!(r, Err(GrpcError::Malformed { .. }))
    }

    #[test]
    fn get_keys_checks_in_the_etsi_order() {
        let a = sae("A");
        let check = |caller: Option<&SaeId>, req| get_keys(caller, &req, &Policy);
        // Admission before anything else, even a malformed request.
        assert_eq!(
            check(Some(&sae("B")), keys("", Some(0), None, &["!"])),
            Err(RequestError::NotAdmitted.into())
        );
        assert_eq!(
            check(None, keys("B", None, None, &[])),
            Err(RequestError::NotAdmitted.into())
        );
        // Then the slave: unknown (or unparsable) beats bad values.
        assert_eq!(
            check(Some(&a), keys("Q", Some(0), None, &[])),
            Err(RequestError::UnknownSlave.into())
        );
        assert_eq!(
            check(Some(&a), keys("bad id", None, None, &[])),
            Err(RequestError::UnknownSlave.into())
        );
        assert_eq!(
            check(Some(&a), keys("A", None, None, &[])),
            Err(RequestError::SlaveIsCaller.into())
        );
        // Syntax, then values, then pairing.
        assert!(malformed(check(
            Some(&a),
            keys("X", Some(0), None, &["bad id"])
        )));
        assert_eq!(
            check(Some(&a), keys("X", Some(0), None, &[])),
            Err(RequestError::NumberOutOfRange { max: 128 }.into())
        );
        assert_eq!(
            check(Some(&a), keys("B", None, Some(100), &[])),
            Err(RequestError::SizeNotMultipleOf8.into())
        );
        assert_eq!(
            check(Some(&a), keys("B", None, None, &["C", "X", "M"])),
            Err(RequestError::TooManyAdditionalSlaves { max: 2 }.into())
        );
        assert_eq!(
            check(Some(&a), keys("X", None, None, &[])),
            Err(RequestError::NotPermitted.into())
        );
        assert_eq!(
            check(Some(&a), keys("B", None, None, &["X"])),
            Err(RequestError::NotPermitted.into())
        );
        // Defaults: one key of the pair's default size.
        let ok = check(Some(&a), keys("B", None, None, &["C"])).unwrap();
        assert_eq!((ok.number, ok.size_bits), (1, 256));
        assert_eq!(ok.additional_slaves, vec![sae("C")]);
    }

    #[test]
    fn stream_calls_check_admission_peer_id_syntax_then_pairing() {
        const K: &str = "550e8400-e29b-41d4-a716-446655440000";
        let open = |caller: Option<&SaeId>, peer: &str, id: Option<&str>| {
            let req = pb::OpenStreamRequest {
                peer_sae_id: peer.into(),
                qos: Some(pb::Qos {
                    key_chunk_size: 32,
                    ttl: 5,
                    ..Default::default()
                }),
                key_stream_id: id.map(str::to_owned),
            };
            open_stream(caller, &req, &Policy)
        };
        let a = sae("A");
        assert_eq!(
            open(Some(&sae("B")), "Q", Some("x")),
            Err(RequestError::NotAdmitted.into())
        );
        assert_eq!(
            open(Some(&a), "Q", Some("x")),
            Err(RequestError::UnknownSlave.into())
        );
        assert_eq!(
            open(Some(&a), "A", None),
            Err(RequestError::SlaveIsCaller.into())
        );
        assert!(malformed(open(Some(&a), "X", Some("x"))));
        assert_eq!(
            open(Some(&a), "X", Some(K)),
            Err(RequestError::NotPermitted.into())
        );
        let ok = open(Some(&a), "B", Some(&K.to_uppercase())).unwrap();
        assert_eq!(ok.join, Some(KeyStreamId::parse(K).unwrap()));
        assert_eq!((ok.qos.chunk_bytes, ok.qos.ttl_s), (32, 5));
        assert_eq!(open(Some(&a), "B", None).unwrap().join, None);

        assert_eq!(
            stream_call(None, K, &Policy),
            Err(RequestError::NotAdmitted.into())
        );
        assert!(malformed(stream_call(Some(&a), "nope", &Policy)));
        assert_eq!(
            stream_call(Some(&a), K, &Policy).unwrap().1,
            KeyStreamId::parse(K).unwrap()
        );
    }

    #[test]
    fn status_checks_admission_slave_and_pairing() {
        let req = |s: &str| pb::GetStatusRequest {
            slave_sae_id: s.into(),
        };
        assert_eq!(
            status(Some(&sae("C")), &req("B"), &Policy),
            Err(RequestError::NotAdmitted.into())
        );
        assert_eq!(
            status(Some(&sae("A")), &req("Q"), &Policy),
            Err(RequestError::UnknownSlave.into())
        );
        assert_eq!(
            status(Some(&sae("A")), &req("X"), &Policy),
            Err(RequestError::NotPermitted.into())
        );
        assert_eq!(
            status(Some(&sae("A")), &req("B"), &Policy),
            Ok((sae("A"), sae("B")))
        );
    }

    #[test]
    fn get_keys_by_ids_checks_shape_then_leaves_the_master_to_the_lookup() {
        const K: &str = "550e8400-e29b-41d4-a716-446655440000";
        let req = |m: &str, ids: &[&str]| pb::GetKeysByIdsRequest {
            master_sae_id: m.into(),
            key_ids: ids.iter().map(|s| s.to_string()).collect(),
        };
        let a = sae("A");
        let check = |r| get_keys_by_ids(Some(&a), &r, &Policy);
        assert_eq!(
            get_keys_by_ids(None, &req("B", &["x"]), &Policy),
            Err(RequestError::NotAdmitted.into())
        );
        assert!(malformed(check(req("B", &[K, "nope"]))));
        assert_eq!(check(req("B", &[])), Err(RequestError::NoKeyIds.into()));
        assert_eq!(
            check(req("B", &[K, &K.to_uppercase()])),
            Err(RequestError::DuplicateKeyId.into())
        );
        assert_eq!(
            check(req("bad id", &[K])),
            Err(ServiceError::KeysNotFound.into())
        );
        let ok = check(req("Nobody", &[K])).unwrap();
        assert_eq!(ok.master, sae("Nobody"));
        assert_eq!(ok.slave, a);
    }
}
