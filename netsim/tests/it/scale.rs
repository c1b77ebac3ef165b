//! The scaling measurement (`qkd_netsim::scale`) at N = 5: its figures are sane. No assertion
//! on wall-clock time.

use qkd_netsim::CallKind;
use qkd_netsim::scale::{ScaleOptions, measure};

#[test]
fn scale_of_five_is_sane() {
    let r = measure(&ScaleOptions::new(5)).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{}", qkd_netsim::scale::table(std::slice::from_ref(&r)));
    assert_eq!(r.nodes, 5);
    assert!(r.links >= 4, "a connected mesh of 5 has at least 4 links");
    // Every node floods its link state to every neighbour in the window (about 3 times a
    // second each with the 300 ms interval); each advert carries the whole database.
    assert!(r.calls_per_node_s(CallKind::Advertise) > 1.0, "{r:?}");
    assert!(
        r.bytes_per_node_s(CallKind::Advertise) > 5.0 * r.calls_per_node_s(CallKind::Advertise),
        "{r:?}"
    );
    // The cut link stops being routed over, first at one node, then everywhere.
    let c = &r.convergence;
    let (first, all) = (c.first_ms.expect("detected"), c.all_ms.expect("converged"));
    assert!(first > 0 && first <= all, "{c:?}");
    // Every on-demand request got its key, and a farther destination takes longer.
    assert!(
        r.latency.len() >= 2,
        "n0 should have nodes at two distances: {r:?}"
    );
    let ms: Vec<u64> = r
        .latency
        .iter()
        .map(|p| p.ms.unwrap_or_else(|| panic!("no key for {p:?}")))
        .collect();
    let hops: Vec<usize> = r
        .latency
        .iter()
        .map(|p| p.route_hops.expect("a route"))
        .collect();
    let last = ms.len() - 1;
    assert!(hops[last] > hops[0], "routes {hops:?}");
    assert!(ms[last] > ms[0], "latency {ms:?} over routes {hops:?}");
    // Simulated figures are deterministic.
    let again = measure(&ScaleOptions::new(5)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(again.traffic, r.traffic);
    assert_eq!(again.latency, r.latency);
    assert_eq!(again.convergence, r.convergence);
}
