//! Wire conversion of the relay protocol: the peer service's protobuf messages
//! (`qkd.peer.v1`) into the relay engine's domain inputs ([`crate::relay`]) and back. Every
//! field read from a peer is checked here (lengths, identifier syntax); what the fields mean is
//! checked by the engine.

use std::collections::BTreeSet;

use qkd_proto::peer as pb;
use qkd_types::{KeyId, KeyStreamId, LinkId, NodeId, SaeId};

use crate::manager::{Malformed, PeerError, key_id, request_id};
use crate::relay::destination::{Delivery, Multicast, NOTICE_MAX_KEYS, Notice, Offer, StreamSlice};
use crate::relay::topology::{LinkAdvert, NodeAdvert};

pub(crate) fn parse_path(p: &[String]) -> Result<Vec<NodeId>, PeerError> {
    if p.len() < 2 || p.len() > 64 {
        return Err(Malformed::Field("path length").into());
    }
    let path: Vec<NodeId> = p
        .iter()
        .map(|n| NodeId::parse(n))
        .collect::<Result<_, _>>()
        .map_err(|error| Malformed::Id {
            what: "node ID in the path",
            error,
        })?;
    let distinct: BTreeSet<&NodeId> = path.iter().collect();
    if distinct.len() != path.len() {
        return Err(Malformed::Field("path repeats a node").into());
    }
    Ok(path)
}

pub(crate) fn advert_msg(a: &NodeAdvert) -> pb::NodeAdvertMsg {
    pb::NodeAdvertMsg {
        origin: a.origin.to_string(),
        seq: a.seq,
        links: a
            .links
            .iter()
            .map(|l| pb::LinkAdvertMsg {
                link_id: l.link.to_string(),
                peer: l.peer.to_string(),
                up: l.up,
                available_bytes: l.available_bytes,
                secret_key_rate_bps: l.secret_key_rate_bps.unwrap_or(-1.0),
            })
            .collect(),
    }
}

pub(crate) fn advert_of(m: &pb::NodeAdvertMsg) -> Result<NodeAdvert, qkd_types::IdError> {
    Ok(NodeAdvert {
        origin: NodeId::parse(&m.origin)?,
        seq: m.seq,
        links: m
            .links
            .iter()
            .map(|l| {
                Ok(LinkAdvert {
                    link: LinkId::parse(&l.link_id)?,
                    peer: NodeId::parse(&l.peer)?,
                    up: l.up,
                    available_bytes: l.available_bytes,
                    secret_key_rate_bps: (l.secret_key_rate_bps >= 0.0)
                        .then_some(l.secret_key_rate_bps),
                })
            })
            .collect::<Result<_, qkd_types::IdError>>()?,
    })
}

/// A relay header as the destination reads it.
pub(crate) fn offer_of(h: &pb::RelayHeader, path: &[NodeId]) -> Result<Offer, PeerError> {
    let master = SaeId::parse(&h.master_sae).map_err(|error| Malformed::Id {
        what: "master SAE ID",
        error,
    })?;
    let slaves: Vec<SaeId> = h
        .slave_saes
        .iter()
        .map(|s| SaeId::parse(s))
        .collect::<Result<_, _>>()
        .map_err(|error| Malformed::Id {
            what: "slave SAE ID",
            error,
        })?;
    let stream = match &h.stream {
        None => None,
        Some(s) => Some(StreamSlice {
            id: <[u8; 16]>::try_from(s.key_stream_id.as_slice())
                .map(KeyStreamId::from_bytes)
                .map_err(|_| Malformed::IdLength("key stream ID"))?,
            first_index: s.first_index,
            expires_at: s.expires_at_ms,
        }),
    };
    Ok(Offer {
        relay_id: request_id(&h.relay_id)?,
        path: path.to_vec(),
        master,
        slaves,
        size_bits: h.size_bits,
        policy: h.policy.clone(),
        suite: h.suite.clone(),
        key_ids: key_ids(&h.key_ids)?,
        relay_key_ids: key_ids(&h.relay_key_ids)?,
        relayed_len: h.relayed_len,
        wrap: h.wrap,
        pool: h.pool,
        stream,
    })
}

/// Key IDs as a message lists them (16 bytes each).
fn key_ids(v: &[Vec<u8>]) -> Result<Vec<KeyId>, PeerError> {
    v.iter().map(|k| key_id(k)).collect()
}

/// Multicast keys as a `Forward` of kind deliver carries them.
pub(crate) fn multicast_of(msg: &[u8]) -> Result<Multicast, PeerError> {
    let m: pb::MulticastDeliver =
        prost::Message::decode(msg).map_err(|_| Malformed::Field("multicast delivery"))?;
    Ok(Multicast {
        key_ids: key_ids(&m.key_ids)?,
        sealed: m.sealed,
        size_bits: m.size_bits,
    })
}

/// A delivery notice as a `Forward` of kind notice carries it: at least one delivery, none
/// without keys, at most [`NOTICE_MAX_KEYS`] key IDs in all.
pub(crate) fn notice_of(msg: &[u8]) -> Result<Notice, PeerError> {
    let m: pb::DeliveryNotice =
        prost::Message::decode(msg).map_err(|_| Malformed::Field("delivery notice"))?;
    let keys: usize = m.deliveries.iter().map(|d| d.key_ids.len()).sum();
    if m.deliveries.is_empty() || keys > NOTICE_MAX_KEYS {
        return Err(Malformed::Field("delivery notice: number of keys").into());
    }
    let deliveries = m
        .deliveries
        .iter()
        .map(|d| {
            if d.key_ids.is_empty() {
                return Err(Malformed::Field("delivery notice: a delivery without keys").into());
            }
            Ok(Delivery {
                delivered_at: d.delivered_at,
                key_ids: key_ids(&d.key_ids)?,
            })
        })
        .collect::<Result<_, PeerError>>()?;
    Ok(Notice {
        deliveries,
        source_kme: m.source_kme,
        sig: m.sig,
    })
}

/// The wire form of a delivery notice of `source_kme`, signed `sig`.
pub(crate) fn notice_msg(
    source_kme: &str,
    deliveries: &[Delivery],
    sig: Vec<u8>,
) -> pb::DeliveryNotice {
    pb::DeliveryNotice {
        source_kme: source_kme.to_string(),
        sig,
        deliveries: deliveries
            .iter()
            .map(|d| pb::Delivery {
                delivered_at: d.delivered_at,
                key_ids: d.key_ids.iter().map(|k| k.as_bytes().to_vec()).collect(),
            })
            .collect(),
    }
}

/// What a hop message's tag authenticates: the message's encoding with an empty tag.
pub(crate) fn hop_authenticated(req: &pb::RelayRequest) -> Vec<u8> {
    let mut m = req.clone();
    m.tag.clear();
    prost::Message::encode_to_vec(&m)
}

/// A relay header as the source sends it.
pub(crate) fn header_msg(o: &Offer) -> pb::RelayHeader {
    pb::RelayHeader {
        relay_id: o.relay_id.to_vec(),
        path: o.path.iter().map(|n| n.to_string()).collect(),
        master_sae: o.master.to_string(),
        slave_saes: o.slaves.iter().map(|s| s.to_string()).collect(),
        size_bits: o.size_bits,
        policy: o.policy.clone(),
        suite: o.suite.clone(),
        key_ids: o.key_ids.iter().map(|k| k.as_bytes().to_vec()).collect(),
        relay_key_ids: o
            .relay_key_ids
            .iter()
            .map(|k| k.as_bytes().to_vec())
            .collect(),
        relayed_len: o.relayed_len,
        wrap: o.wrap,
        pool: o.pool,
        stream: o.stream.map(|s| pb::StreamSlice {
            key_stream_id: s.id.as_bytes().to_vec(),
            first_index: s.first_index,
            expires_at_ms: s.expires_at,
        }),
    }
}
