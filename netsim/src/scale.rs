//! How the cost of the relay network grows with its size, measured in the simulation.
//!
//! [`measure`] builds a random mesh of N real key managers ([`Shape::Random`]: a random spanning
//! tree plus N/2 extra links, an average degree of about 3), with no fault injected
//! ([`Faults::none`]: every call arrives once, after a random delay of 0-30 ms each way), and
//! measures, in simulated time:
//!
//! 1. **Control traffic**: peer calls and their protobuf-encoded payload (request plus reply)
//!    by kind, per node per simulated second, over a fixed window after a warm-up in which the
//!    links fill and the pools of the measurement's pairs are refilled.
//! 2. **Latency against hop count**: the simulated time an `enc_keys` call for one key of a
//!    non-default size (so it is relayed on demand, never served from a pool) takes, for a pair
//!    from node `n0` to the first node at each graph distance from it (the relay follows the
//!    widest route, which may be longer: the route's hop count as `n0` computes it just before
//!    the call is reported too).
//! 3. **Route convergence after a link failure**: one link, chosen on the route to the
//!    farthest measured node if it is not a bridge (otherwise the first link that is not), is
//!    cut in both directions; convergence is the simulated time until no node's link-state
//!    database ([`KeyManager::topology`]) has a usable edge over it any more, i.e. until no
//!    node would route over it. The first node to drop it gives the detection time. Sampled
//!    every [`POLL`] of simulated time.
//!
//! Simulated figures are a pure function of the options; the wall-clock time is reported beside
//! them and depends on the machine.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use qkd_kms::api::{EncKeysRequest, KeyService};
use qkd_kms::events::defects::Defects;
use qkd_kms::manager::KeyManager;
use qkd_types::Clock;

use crate::{
    CallKind, Faults, Options, Pair, Shape, Sim, Traffic, link_id, node_id, run_paused, sae,
};

/// How often convergence is sampled, in simulated time.
pub const POLL: Duration = Duration::from_millis(20);

/// One measurement.
#[derive(Debug, Clone)]
pub struct ScaleOptions {
    /// Nodes.
    pub nodes: usize,
    /// Draws the mesh, the delays and everything else.
    pub seed: u64,
    /// Simulated time before the traffic window (links fill, routes form, pools refill).
    pub warmup: Duration,
    /// The traffic window.
    pub window: Duration,
    /// Every node's link-state flooding interval (the harness's default is 300 ms).
    pub advert_interval: Duration,
    /// Size of the keys asked on demand for the latency figures (pool keys are 256 bits).
    pub latency_bits: u32,
    /// Give up waiting for convergence after this much simulated time.
    pub convergence_limit: Duration,
}

impl ScaleOptions {
    /// The defaults for `nodes` nodes.
    pub fn new(nodes: usize) -> Self {
        ScaleOptions {
            nodes,
            seed: 1,
            warmup: Duration::from_secs(10),
            window: Duration::from_secs(10),
            advert_interval: crate::DEFAULT_ADVERT_INTERVAL,
            latency_bits: 512,
            convergence_limit: Duration::from_secs(60),
        }
    }
}

/// One relayed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatencyPoint {
    /// The destination node.
    pub node: usize,
    /// Its graph distance from `n0`.
    pub distance: usize,
    /// Hops of the route `n0` would take just before the call (widest path first).
    pub route_hops: Option<usize>,
    /// Simulated time until `enc_keys` returned, if it returned keys.
    pub ms: Option<u64>,
}

/// Route convergence after one link is cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Convergence {
    /// The link cut.
    pub link: (usize, usize),
    /// Simulated time until the first node no longer routes over it.
    pub first_ms: Option<u64>,
    /// Simulated time until no node routes over it.
    pub all_ms: Option<u64>,
}

/// What one measurement found.
#[derive(Debug, Clone)]
pub struct ScaleResult {
    /// Nodes.
    pub nodes: usize,
    /// Links.
    pub links: usize,
    /// Largest graph distance from `n0`.
    pub eccentricity: usize,
    /// Calls in the traffic window, all nodes together.
    pub traffic: Traffic,
    /// Length of the traffic window, in simulated milliseconds.
    pub window_ms: u64,
    /// Requests by hop count.
    pub latency: Vec<LatencyPoint>,
    /// After the cut.
    pub convergence: Convergence,
    /// Simulated time of the whole measurement.
    pub sim_ms: u64,
    /// Wall-clock time the measurement took (machine-dependent).
    pub wall: Duration,
}

impl ScaleResult {
    /// Calls of `kind` per node per simulated second.
    pub fn calls_per_node_s(&self, kind: CallKind) -> f64 {
        self.traffic.calls(kind) as f64 / self.nodes as f64 / (self.window_ms as f64 / 1000.0)
    }

    /// Payload bytes of `kind` per node per simulated second.
    pub fn bytes_per_node_s(&self, kind: CallKind) -> f64 {
        self.traffic.bytes(kind) as f64 / self.nodes as f64 / (self.window_ms as f64 / 1000.0)
    }
}

/// Runs one measurement on a fresh runtime with simulated time.
pub fn measure(o: &ScaleOptions) -> Result<ScaleResult, String> {
    let started = Instant::now();
    let mut r = run_paused(Defects::default(), measure_in(o.clone()))?;
    r.wall = started.elapsed();
    Ok(r)
}

async fn measure_in(o: ScaleOptions) -> Result<ScaleResult, String> {
    let mut sim = Sim::new(Options {
        seed: o.seed,
        steps: 0,
        shape: Shape::Random(o.nodes),
        defects: Defects::default(),
        faults: Faults::none(),
        store: crate::StoreKind::Disk,
    });
    sim.advert_interval = o.advert_interval;
    let n = sim.n;
    let dist = distances(n, &sim.links, 0, None);
    // One pair from n0 to the first node at each distance.
    let mut targets: BTreeMap<usize, usize> = BTreeMap::new();
    for (i, d) in dist.iter().enumerate() {
        if let Some(d) = *d
            && d > 0
        {
            targets.entry(d).or_insert(i);
        }
    }
    sim.pairs = targets
        .iter()
        .map(|(&d, &node)| Pair {
            master: sae(&format!("M{d}")),
            slave: sae(&format!("D{d}")),
            master_node: 0,
            slave_node: node,
            qkd_only_until_v2: false,
        })
        .collect();
    for i in 0..n {
        sim.start(i).await?;
    }
    tokio::time::sleep(o.warmup).await;

    // 1. Control traffic in a quiet window.
    sim.net.lock().traffic = Traffic::default();
    let t0 = tokio::time::Instant::now();
    tokio::time::sleep(o.window).await;
    let window_ms = t0.elapsed().as_millis() as u64;
    let traffic = std::mem::take(&mut sim.net.lock().traffic);

    // 2. Latency against hop count.
    let mut latency = Vec::new();
    let mut far_route: Vec<usize> = Vec::new();
    for (pi, (&d, &node)) in targets.iter().enumerate() {
        let m0 = sim.net.manager(0).ok_or("n0 is down")?;
        let route = m0
            .topology()
            .route(&node_id(0), &node_id(node), u64::from(o.latency_bits / 8));
        drop(m0);
        if let Some(r) = &route {
            far_route = r
                .iter()
                .filter_map(|id| (0..n).find(|&i| node_id(i) == *id))
                .collect();
        }
        let p = sim.pairs[pi].clone();
        let req = EncKeysRequest {
            master: p.master,
            slave: p.slave,
            additional_slaves: Vec::new(),
            number: 1,
            size_bits: o.latency_bits,
        };
        let t = tokio::time::Instant::now();
        let got = sim
            .sae_call(0, move |m: KeyManager| {
                Box::pin(async move { m.enc_keys(req).await })
            })
            .await;
        let ms = match got {
            Some(Ok(keys)) if !keys.is_empty() => Some(t.elapsed().as_millis() as u64),
            _ => None,
        };
        latency.push(LatencyPoint {
            node,
            distance: d,
            route_hops: route.map(|r| r.len() - 1),
            ms,
        });
    }

    // 3. Convergence after a cut.
    let link = choose_cut(n, &sim.links, &far_route).ok_or("every link is a bridge")?;
    let id = link_id(link.0, link.1);
    sim.net.lock().cut.insert(link);
    let cut_at = tokio::time::Instant::now();
    let mut done = vec![false; n];
    let mut first_ms = None;
    let mut all_ms = None;
    while cut_at.elapsed() < o.convergence_limit {
        tokio::time::sleep(POLL).await;
        for (i, d) in done.iter_mut().enumerate() {
            if *d {
                continue;
            }
            let Some(m) = sim.net.manager(i) else {
                continue;
            };
            if !m.topology().edges().values().any(|e| e.link == id) {
                *d = true;
                first_ms.get_or_insert(cut_at.elapsed().as_millis() as u64);
            }
        }
        if done.iter().all(|d| *d) {
            all_ms = Some(cut_at.elapsed().as_millis() as u64);
            break;
        }
    }

    for i in 0..n {
        if let Some(m) = sim.net.lock().managers[i].take() {
            m.halt();
        }
    }
    let violations = std::mem::take(
        &mut sim
            .checker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .violations,
    );
    if let Some(v) = violations.into_iter().next() {
        return Err(format!("invariant violated during the measurement: {v}"));
    }
    Ok(ScaleResult {
        nodes: n,
        links: sim.links.len(),
        eccentricity: dist.iter().flatten().copied().max().unwrap_or(0),
        traffic,
        window_ms,
        latency,
        convergence: Convergence {
            link,
            first_ms,
            all_ms,
        },
        sim_ms: sim.clock.now() - sim.clock.base,
        wall: Duration::ZERO,
    })
}

/// Graph distances from `from`, without link `without`.
fn distances(
    n: usize,
    links: &[(usize, usize)],
    from: usize,
    without: Option<(usize, usize)>,
) -> Vec<Option<usize>> {
    let mut adj = vec![Vec::new(); n];
    for &l in links {
        if Some(l) != without {
            adj[l.0].push(l.1);
            adj[l.1].push(l.0);
        }
    }
    let mut dist = vec![None; n];
    dist[from] = Some(0);
    let mut queue = VecDeque::from([from]);
    while let Some(a) = queue.pop_front() {
        let da = dist[a].unwrap_or(0);
        for &b in &adj[a] {
            if dist[b].is_none() {
                dist[b] = Some(da + 1);
                queue.push_back(b);
            }
        }
    }
    dist
}

/// The link to cut: the first hop of `route` whose loss leaves the network connected, else the
/// first such link of the network.
fn choose_cut(n: usize, links: &[(usize, usize)], route: &[usize]) -> Option<(usize, usize)> {
    let connected_without =
        |l: (usize, usize)| distances(n, links, 0, Some(l)).iter().all(|d| d.is_some());
    let on_route = route
        .windows(2)
        .map(|w| (w[0].min(w[1]), w[0].max(w[1])))
        .filter(|l| links.contains(l));
    on_route
        .chain(links.iter().copied())
        .find(|&l| connected_without(l))
}

/// The table [`measure`]'s results print as, one row per measurement.
pub fn table(rows: &[ScaleResult]) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "control traffic per node per simulated second (calls / payload bytes):"
    );
    let _ = write!(s, "{:>5} {:>6}", "N", "links");
    for k in CallKind::ALL {
        let _ = write!(s, " {:>22}", k.name());
    }
    let _ = writeln!(s, " {:>12}", "total B/s");
    for r in rows {
        let _ = write!(s, "{:>5} {:>6}", r.nodes, r.links);
        let mut total = 0.0;
        for k in CallKind::ALL {
            total += r.bytes_per_node_s(k);
            let cell = format!(
                "{:.1} / {:.0}",
                r.calls_per_node_s(k),
                r.bytes_per_node_s(k)
            );
            let _ = write!(s, " {cell:>22}");
        }
        let _ = writeln!(s, " {total:>12.0}");
    }
    let _ = writeln!(
        s,
        "\nroute convergence after cutting one link (simulated ms; first node / every node):"
    );
    for r in rows {
        let c = &r.convergence;
        let _ = writeln!(
            s,
            "{:>5}  cut n{}-n{}: first {}, all {}",
            r.nodes,
            c.link.0,
            c.link.1,
            opt(c.first_ms),
            opt(c.all_ms)
        );
    }
    let _ = writeln!(
        s,
        "\nrelay latency of one on-demand key (simulated ms) by distance from n0 \
         [route hops]:"
    );
    for r in rows {
        let _ = write!(s, "{:>5} ", r.nodes);
        for p in &r.latency {
            let _ = write!(
                s,
                " d{}[{}]={}",
                p.distance,
                p.route_hops.map_or("-".to_string(), |h| h.to_string()),
                opt(p.ms)
            );
        }
        let _ = writeln!(s);
    }
    let _ = writeln!(
        s,
        "\nsimulated and wall-clock time per N (wall clock depends on the machine):"
    );
    for r in rows {
        let _ = writeln!(
            s,
            "{:>5}  {:.1} s simulated, {:.1} s wall clock",
            r.nodes,
            r.sim_ms as f64 / 1000.0,
            r.wall.as_secs_f64()
        );
    }
    s
}

/// The results as CSV: one line per (N, figure).
pub fn csv(rows: &[ScaleResult]) -> String {
    use std::fmt::Write as _;
    let mut s = String::from("nodes,links,figure,kind,value,unit\n");
    for r in rows {
        let mut line = |figure: &str, kind: &str, value: String, unit: &str| {
            let _ = writeln!(s, "{},{},{figure},{kind},{value},{unit}", r.nodes, r.links);
        };
        for k in CallKind::ALL {
            line(
                "calls_per_node_s",
                k.name(),
                format!("{:.3}", r.calls_per_node_s(k)),
                "1/s",
            );
            line(
                "bytes_per_node_s",
                k.name(),
                format!("{:.1}", r.bytes_per_node_s(k)),
                "B/s",
            );
        }
        let c = &r.convergence;
        let link = format!("n{}-n{}", c.link.0, c.link.1);
        line("converge_first", &link, opt(c.first_ms), "ms");
        line("converge_all", &link, opt(c.all_ms), "ms");
        for p in &r.latency {
            line(
                "latency",
                &format!(
                    "d{}_route{}",
                    p.distance,
                    p.route_hops.map_or("-".to_string(), |h| h.to_string())
                ),
                opt(p.ms),
                "ms",
            );
        }
        line("sim_time", "", r.sim_ms.to_string(), "ms");
        line(
            "wall_time_machine_dependent",
            "",
            format!("{:.2}", r.wall.as_secs_f64()),
            "s",
        );
    }
    s
}

fn opt(v: Option<u64>) -> String {
    v.map_or("none".to_string(), |v| v.to_string())
}
