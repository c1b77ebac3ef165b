//! Link-state adverts, sans-IO: what a node tells its neighbours about its own links, what it
//! learns from theirs (the [`Topology`] routes are computed over), which neighbours stopped
//! answering, and which links an operator drained.
//!
//! The shell calls [`Adverts::tick`] once per advert interval with the state of its links and
//! sends what it returns to every neighbour; it reports each send's outcome with
//! [`Adverts::on_sent`] and hands adverts received with [`Adverts::on_adverts`]. Time comes in as
//! `now`; nothing here does I/O. A neighbour that misses [`AdvertRules::missed_limit`] adverts in
//! a row is unreachable, and this node's own advert then shows the link to it down, so routes
//! computed anywhere avoid it (within an advert interval of the news arriving).

use std::collections::{BTreeMap, BTreeSet};

use qkd_types::{LinkId, NodeId, UnixMillis};

use super::topology::{LinkAdmin, LinkAdvert, NodeAdvert, Topology, advertised_up};

/// When adverts count as missed or too old.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdvertRules {
    /// Adverts a neighbour may leave unanswered in a row before its link is taken out of routes.
    pub missed_limit: u32,
    /// Age after which another node's advert is forgotten (its origin is gone or cut off).
    pub max_age_ms: u64,
}

impl AdvertRules {
    /// The rules for adverts every `interval_ms`: three missed in a row, forgotten after twenty
    /// intervals.
    pub fn every(interval_ms: u64) -> Self {
        Self {
            missed_limit: 3,
            max_age_ms: interval_ms.saturating_mul(20),
        }
    }
}

/// The state of one of this node's links at a tick, as the shell reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnLink {
    /// The link.
    pub link: LinkId,
    /// The neighbour at its other end.
    pub peer: NodeId,
    /// Whether its device reports it up.
    pub device_up: bool,
    /// Link key ready to be used on it.
    pub available_bytes: u64,
}

/// A change of a neighbour's reachability, reported by [`Adverts::on_sent`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reachability {
    /// The neighbour.
    pub peer: NodeId,
    /// Whether it answers adverts again (`true`) or has missed too many (`false`).
    pub reachable: bool,
}

/// One node's advert state. Owns the link-state database.
#[derive(Debug, Clone)]
pub struct Adverts {
    me: NodeId,
    rules: AdvertRules,
    topology: Topology,
    seq: u64,
    missed: BTreeMap<NodeId, u32>,
    unreachable: BTreeSet<NodeId>,
    /// Links an operator drained (advertised down until enabled again; not kept across a
    /// restart: a restarted node starts with every link enabled).
    drained: BTreeSet<LinkId>,
}

impl Adverts {
    /// No adverts yet; every neighbour presumed reachable, every link enabled.
    pub fn new(me: NodeId, rules: AdvertRules) -> Self {
        Self {
            me,
            rules,
            topology: Topology::new(),
            seq: 0,
            missed: BTreeMap::new(),
            unreachable: BTreeSet::new(),
            drained: BTreeSet::new(),
        }
    }

    /// One advert interval: this node's advert of `links` replaces its previous one, adverts
    /// too old are forgotten, and the result is every advert known, to be sent to each
    /// neighbour. Sequence numbers follow the clock (and always grow), so a restarted node's
    /// adverts supersede its earlier ones.
    pub fn tick(&mut self, now: UnixMillis, links: &[OwnLink]) -> Vec<NodeAdvert> {
        let own = NodeAdvert {
            origin: self.me.clone(),
            seq: {
                self.seq = (self.seq + 1).max(now);
                self.seq
            },
            links: links
                .iter()
                .map(|l| LinkAdvert {
                    link: l.link.clone(),
                    peer: l.peer.clone(),
                    up: advertised_up(
                        l.device_up,
                        !self.unreachable.contains(&l.peer),
                        self.admin(&l.link),
                    ),
                    available_bytes: l.available_bytes,
                    secret_key_rate_bps: None,
                })
                .collect(),
        };
        self.topology.update(own, now);
        self.topology.expire(now, self.rules.max_age_ms);
        self.topology.adverts().cloned().collect()
    }

    /// Adverts a neighbour sent: newer ones replace what is known. This node's own advert,
    /// echoed back, is ignored (only this node speaks for its links).
    pub fn on_adverts(&mut self, adverts: impl IntoIterator<Item = NodeAdvert>, now: UnixMillis) {
        for advert in adverts {
            if advert.origin != self.me {
                self.topology.update(advert, now);
            }
        }
    }

    /// Whether `peer` answered the adverts sent to it; a change of its reachability, if any.
    pub fn on_sent(&mut self, peer: &NodeId, answered: bool) -> Option<Reachability> {
        let missed = self.missed.entry(peer.clone()).or_default();
        *missed = if answered {
            0
        } else {
            missed.saturating_add(1)
        };
        let changed = if *missed == 0 {
            self.unreachable.remove(peer)
        } else if *missed >= self.rules.missed_limit {
            self.unreachable.insert(peer.clone())
        } else {
            false
        };
        changed.then(|| Reachability {
            peer: peer.clone(),
            reachable: answered,
        })
    }

    /// Sets an operator's choice for a link; returns the previous one. Takes effect with the
    /// next tick.
    pub fn set_admin(&mut self, link: &LinkId, admin: LinkAdmin) -> LinkAdmin {
        let before = self.admin(link);
        match admin {
            LinkAdmin::Drained => self.drained.insert(link.clone()),
            LinkAdmin::Enabled => self.drained.remove(link),
        };
        before
    }

    /// An operator's choice for a link.
    pub fn admin(&self, link: &LinkId) -> LinkAdmin {
        if self.drained.contains(link) {
            LinkAdmin::Drained
        } else {
            LinkAdmin::Enabled
        }
    }

    /// Whether a neighbour answers adverts (false once it missed too many in a row).
    pub fn reachable(&self, peer: &NodeId) -> bool {
        !self.unreachable.contains(peer)
    }

    /// The link-state database.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> NodeId {
        NodeId::parse(s).unwrap()
    }

    fn l(s: &str) -> LinkId {
        LinkId::parse(s).unwrap()
    }

    fn own(link: &str, peer: &str) -> OwnLink {
        OwnLink {
            link: l(link),
            peer: n(peer),
            device_up: true,
            available_bytes: 1000,
        }
    }

    fn up_in(adverts: &[NodeAdvert], origin: &str, link: &str) -> bool {
        adverts
            .iter()
            .find(|a| a.origin == n(origin))
            .and_then(|a| a.links.iter().find(|x| x.link == l(link)))
            .map(|x| x.up)
            .unwrap()
    }

    #[test]
    fn a_neighbour_missing_adverts_is_advertised_down_then_up_again() {
        let mut a = Adverts::new(n("A"), AdvertRules::every(100));
        let links = [own("A-B", "B")];
        assert!(up_in(&a.tick(1, &links), "A", "A-B"));
        assert_eq!(a.on_sent(&n("B"), false), None);
        assert_eq!(a.on_sent(&n("B"), false), None);
        assert!(
            up_in(&a.tick(2, &links), "A", "A-B"),
            "two misses are tolerated"
        );
        assert_eq!(
            a.on_sent(&n("B"), false),
            Some(Reachability {
                peer: n("B"),
                reachable: false
            })
        );
        assert!(!a.reachable(&n("B")));
        assert!(!up_in(&a.tick(3, &links), "A", "A-B"));
        assert_eq!(a.on_sent(&n("B"), false), None, "reported once");
        assert_eq!(
            a.on_sent(&n("B"), true),
            Some(Reachability {
                peer: n("B"),
                reachable: true
            })
        );
        assert!(up_in(&a.tick(4, &links), "A", "A-B"));
    }

    #[test]
    fn a_drained_link_is_advertised_down_until_enabled() {
        let mut a = Adverts::new(n("A"), AdvertRules::every(100));
        let links = [own("A-B", "B"), own("A-C", "C")];
        assert_eq!(
            a.set_admin(&l("A-B"), LinkAdmin::Drained),
            LinkAdmin::Enabled
        );
        let sent = a.tick(1, &links);
        assert!(!up_in(&sent, "A", "A-B"));
        assert!(up_in(&sent, "A", "A-C"));
        assert_eq!(
            a.set_admin(&l("A-B"), LinkAdmin::Enabled),
            LinkAdmin::Drained
        );
        assert!(up_in(&a.tick(2, &links), "A", "A-B"));
    }

    #[test]
    fn own_adverts_echoed_back_are_ignored_and_old_ones_forgotten() {
        let mut a = Adverts::new(n("A"), AdvertRules::every(100));
        let sent = a.tick(1_000, &[own("A-B", "B")]);
        // B echoes A's advert with a forged, newer sequence saying the link is down.
        let mut echo = sent[0].clone();
        echo.seq += 10;
        echo.links[0].up = false;
        let theirs = NodeAdvert {
            origin: n("B"),
            seq: 5,
            links: vec![LinkAdvert {
                link: l("A-B"),
                peer: n("A"),
                up: true,
                available_bytes: 10,
                secret_key_rate_bps: None,
            }],
        };
        a.on_adverts([echo, theirs], 1_000);
        assert!(up_in(&a.tick(1_050, &[own("A-B", "B")]), "A", "A-B"));
        assert!(a.topology().route(&n("A"), &n("B"), 0).is_some());
        // Twenty intervals later B's advert is forgotten; A's own is renewed every tick.
        let later = a.tick(1_000 + 2_001, &[own("A-B", "B")]);
        assert_eq!(later.len(), 1);
        assert_eq!(later[0].origin, n("A"));
    }

    #[test]
    fn sequence_numbers_grow_even_if_the_clock_does_not() {
        let mut a = Adverts::new(n("A"), AdvertRules::every(100));
        let s1 = a.tick(500, &[])[0].seq;
        let s2 = a.tick(400, &[])[0].seq;
        let s3 = a.tick(400, &[])[0].seq;
        assert!(s1 < s2 && s2 < s3);
        assert_eq!(s1, 500);
    }
}
