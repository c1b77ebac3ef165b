//! The network graph as one node learns it, and route computation (sans-IO).
//!
//! Every node floods a [`NodeAdvert`] describing its own links (state, unallocated key, secret key
//! rate) to its neighbours, which keep the newest advert of every origin and pass it on. Routes
//! are computed over *available key*, not hop count: the widest path (largest bottleneck of
//! available link key), then the fewest hops, then the smallest node IDs for determinism. Links
//! that either end reports down or aborted (e.g. QBER above threshold) are never used.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use qkd_types::{LinkId, NodeId, UnixMillis};

/// One link as its advertising end sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkAdvert {
    /// The link.
    pub link: LinkId,
    /// The node at the other end.
    pub peer: NodeId,
    /// Producing key and reachable.
    pub up: bool,
    /// Unallocated link key, bytes.
    pub available_bytes: u64,
    /// Secret key rate, bit/s, if known.
    pub secret_key_rate_bps: Option<f64>,
}

/// Everything one node says about its links.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeAdvert {
    /// The advertising node.
    pub origin: NodeId,
    /// Increases with every new advert of the origin (its clock in ms, kept monotonic).
    pub seq: u64,
    /// Its links.
    pub links: Vec<LinkAdvert>,
}

/// Whether an operator lets new routes use one of this node's links.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkAdmin {
    /// Routes may use the link whenever it is up.
    #[default]
    Enabled,
    /// An operator drained the link: it is advertised down, so that no new route (this node's
    /// or any other's, once the advert arrived) goes over it; batches already under way finish.
    Drained,
}

/// Whether this node advertises one of its links up: its device produces key, the neighbour
/// answers adverts, and no operator drained it.
pub fn advertised_up(device_up: bool, peer_reachable: bool, admin: LinkAdmin) -> bool {
    device_up && peer_reachable && admin == LinkAdmin::Enabled
}

/// The link-state database of one node.
#[derive(Debug, Clone, Default)]
pub struct Topology {
    adverts: BTreeMap<NodeId, (NodeAdvert, UnixMillis)>,
}

/// A usable edge of the graph.
#[derive(Debug, Clone, PartialEq)]
pub struct Edge {
    /// The link.
    pub link: LinkId,
    /// Available key on it (the larger of both ends' reports: the allocator's is authoritative).
    pub available_bytes: u64,
}

impl Topology {
    /// An empty database.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores `advert` if it is newer than what is known of its origin; returns whether it was
    /// (and so must be flooded on).
    pub fn update(&mut self, advert: NodeAdvert, now: UnixMillis) -> bool {
        match self.adverts.get(&advert.origin) {
            Some((known, _)) if known.seq >= advert.seq => false,
            _ => {
                self.adverts.insert(advert.origin.clone(), (advert, now));
                true
            }
        }
    }

    /// Forgets adverts not refreshed since `now - max_age` (their origin is gone or cut off).
    pub fn expire(&mut self, now: UnixMillis, max_age: u64) {
        self.adverts
            .retain(|_, (_, at)| now.saturating_sub(*at) <= max_age);
    }

    /// Known adverts.
    pub fn adverts(&self) -> impl Iterator<Item = &NodeAdvert> {
        self.adverts.values().map(|(a, _)| a)
    }

    /// Usable edges: links both ends advertise, both up.
    pub fn edges(&self) -> BTreeMap<(NodeId, NodeId), Edge> {
        let mut out = BTreeMap::new();
        for (a, (adv, _)) in &self.adverts {
            for l in &adv.links {
                let Some((other, _)) = self.adverts.get(&l.peer) else {
                    continue;
                };
                let Some(back) = other
                    .links
                    .iter()
                    .find(|b| b.link == l.link && &b.peer == a)
                else {
                    continue;
                };
                if l.up && back.up {
                    let e = Edge {
                        link: l.link.clone(),
                        available_bytes: l.available_bytes.max(back.available_bytes),
                    };
                    out.insert((a.clone(), l.peer.clone()), e);
                }
            }
        }
        out
    }

    /// The best path from `from` to `to` (both included) over links with at least `min_bytes`
    /// available: widest bottleneck first, then fewest hops, then lexicographically smallest.
    pub fn route(&self, from: &NodeId, to: &NodeId, min_bytes: u64) -> Option<Vec<NodeId>> {
        self.route_avoiding(from, to, min_bytes, &BTreeSet::new())
    }

    /// Like [`Topology::route`], never through the nodes in `avoid` (end points excepted).
    pub fn route_avoiding(
        &self,
        from: &NodeId,
        to: &NodeId,
        min_bytes: u64,
        avoid: &BTreeSet<NodeId>,
    ) -> Option<Vec<NodeId>> {
        if from == to {
            return Some(vec![from.clone()]);
        }
        let edges = self.edges();
        let mut adj: BTreeMap<&NodeId, Vec<(&NodeId, u64)>> = BTreeMap::new();
        for ((a, b), e) in &edges {
            if e.available_bytes >= min_bytes
                && (b == to || !avoid.contains(b))
                && (a == from || !avoid.contains(a))
            {
                adj.entry(a).or_default().push((b, e.available_bytes));
            }
        }
        // Label: (bottleneck, Reverse(hops), Reverse(path)) maximised.
        type Label = (u64, Reverse<usize>, Reverse<Vec<NodeId>>);
        let mut best: BTreeMap<NodeId, Label> = BTreeMap::new();
        let mut heap: BinaryHeap<Label> = BinaryHeap::new();
        let start: Label = (u64::MAX, Reverse(0), Reverse(vec![from.clone()]));
        best.insert(from.clone(), start.clone());
        heap.push(start);
        while let Some((width, Reverse(hops), Reverse(path))) = heap.pop() {
            let Some(here) = path.last() else { continue };
            if best
                .get(here)
                .is_some_and(|b| *b > (width, Reverse(hops), Reverse(path.clone())))
            {
                continue;
            }
            if here == to {
                return Some(path);
            }
            for (next, cap) in adj.get(here).into_iter().flatten() {
                if path.contains(*next) {
                    continue;
                }
                let mut p = path.clone();
                p.push((*next).clone());
                let label: Label = (width.min(*cap), Reverse(hops + 1), Reverse(p));
                if best.get(*next).is_none_or(|b| label > *b) {
                    best.insert((*next).clone(), label.clone());
                    heap.push(label);
                }
            }
        }
        None
    }

    /// The link between two adjacent nodes, if usable.
    pub fn link_between(&self, a: &NodeId, b: &NodeId) -> Option<LinkId> {
        self.edges()
            .get(&(a.clone(), b.clone()))
            .map(|e| e.link.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> NodeId {
        NodeId::parse(s).unwrap()
    }

    /// Builds a database from undirected links (a, b, available, up).
    fn db(links: &[(&str, &str, u64, bool)]) -> Topology {
        let mut per: BTreeMap<NodeId, Vec<LinkAdvert>> = BTreeMap::new();
        for (a, b, avail, up) in links {
            let id = LinkId::parse(&format!("{a}-{b}")).unwrap();
            for (x, y) in [(a, b), (b, a)] {
                per.entry(n(x)).or_default().push(LinkAdvert {
                    link: id.clone(),
                    peer: n(y),
                    up: *up,
                    available_bytes: *avail,
                    secret_key_rate_bps: None,
                });
            }
        }
        let mut t = Topology::new();
        for (origin, links) in per {
            t.update(
                NodeAdvert {
                    origin,
                    seq: 1,
                    links,
                },
                0,
            );
        }
        t
    }

    /// A drained link is advertised down whatever its device says, and a triangle then routes
    /// around it, even though the direct link has the most key.
    #[test]
    fn a_drained_link_is_advertised_down_and_routed_around() {
        use LinkAdmin::{Drained, Enabled};
        assert!(advertised_up(true, true, Enabled));
        assert!(!advertised_up(true, true, Drained));
        assert!(!advertised_up(false, true, Enabled));
        assert!(!advertised_up(true, false, Enabled));
        let up = advertised_up(true, true, Drained);
        let t = db(&[
            ("A", "B", 9000, up),
            ("A", "C", 1000, true),
            ("B", "C", 1000, true),
        ]);
        assert_eq!(
            t.route(&n("A"), &n("B"), 32).unwrap(),
            vec![n("A"), n("C"), n("B")]
        );
    }

    #[test]
    fn widest_path_then_fewest_hops() {
        // A-B-C-D-E chain plus a detour A-F-E with more key.
        let t = db(&[
            ("A", "B", 1000, true),
            ("B", "C", 1000, true),
            ("C", "D", 1000, true),
            ("D", "E", 1000, true),
            ("A", "F", 5000, true),
            ("F", "E", 5000, true),
        ]);
        assert_eq!(
            t.route(&n("A"), &n("E"), 32).unwrap(),
            vec![n("A"), n("F"), n("E")]
        );
        // If the detour is poorer, the chain wins despite more hops.
        let t = db(&[
            ("A", "B", 1000, true),
            ("B", "C", 1000, true),
            ("C", "D", 1000, true),
            ("D", "E", 1000, true),
            ("A", "F", 100, true),
            ("F", "E", 5000, true),
        ]);
        assert_eq!(t.route(&n("A"), &n("E"), 32).unwrap().len(), 5);
        // Equal width: fewest hops.
        let t = db(&[
            ("A", "B", 1000, true),
            ("B", "C", 1000, true),
            ("A", "C", 1000, true),
        ]);
        assert_eq!(t.route(&n("A"), &n("C"), 32).unwrap(), vec![n("A"), n("C")]);
    }

    #[test]
    fn down_links_and_thin_links_are_avoided() {
        let t = db(&[
            ("A", "B", 1000, false),
            ("B", "C", 1000, true),
            ("A", "D", 1000, true),
            ("D", "C", 10, true),
        ]);
        assert_eq!(t.route(&n("A"), &n("C"), 32), None);
        assert_eq!(
            t.route(&n("A"), &n("C"), 8).unwrap(),
            vec![n("A"), n("D"), n("C")]
        );
        let avoid = BTreeSet::from([n("D")]);
        assert_eq!(t.route_avoiding(&n("A"), &n("C"), 8, &avoid), None);
    }

    #[test]
    fn one_sided_links_and_stale_adverts_do_not_count() {
        let mut t = Topology::new();
        t.update(
            NodeAdvert {
                origin: n("A"),
                seq: 5,
                links: vec![LinkAdvert {
                    link: LinkId::parse("A-B").unwrap(),
                    peer: n("B"),
                    up: true,
                    available_bytes: 100,
                    secret_key_rate_bps: None,
                }],
            },
            0,
        );
        assert!(t.edges().is_empty(), "B never confirmed the link");
        assert!(!t.update(
            NodeAdvert {
                origin: n("A"),
                seq: 5,
                links: vec![]
            },
            0
        ));
        assert!(!t.update(
            NodeAdvert {
                origin: n("A"),
                seq: 4,
                links: vec![]
            },
            0
        ));
        assert!(t.update(
            NodeAdvert {
                origin: n("A"),
                seq: 6,
                links: vec![]
            },
            10
        ));
        t.expire(20_000, 5_000);
        assert_eq!(t.adverts().count(), 0);
    }
}
