//! Network simulation in accelerated time: every link of a [`Scenario`] stepped at the
//! scenario's resolution, per-link time series aggregated into buckets, and end-to-end key
//! availability between node pairs along trusted-node paths.
//!
//! End to end, a trusted-node network relays key hop by hop with one-time pads: delivering k bits
//! from A to B along l₁…lₙ consumes k bits on *every* link (simulator/docs/models.md §6). For each pair the
//! report uses the widest path (largest bottleneck mean rate, then fewest hops), and gives the key
//! that path could have delivered by each time, min over its links of their cumulative key (all
//! of it dedicated to the pair: an upper bound when pairs share links), plus the fraction of time
//! the pair was connected by links that were up, rerouting allowed. A second figure splits each
//! link's key evenly between the reported pairs whose paths use it (a lower, shared-network
//! view). A path through a satellite is
//! the trusted-satellite XOR relay: min(K_A, K_B) (§7.5).
//!
//! Deterministic: the same scenario and seed give the same result, whatever the thread count.

use std::collections::BinaryHeap;

use serde::Serialize;

use crate::detail::BoundFamily;
use crate::physical::{BoundCheck, Phase};
use crate::scenario::{BuiltLink, Scenario};

/// How to run.
#[derive(Debug, Clone, Copy)]
pub struct RunOptions {
    /// Width of a time-series bucket, s (a multiple of the step; rounded up to one).
    pub aggregate_s: u64,
    /// Worker threads (links are split between them).
    pub threads: usize,
}

/// One bucket of one link.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Bucket {
    /// End of the bucket, s after the start.
    pub t_s: u64,
    /// Key generated in the bucket, bits.
    pub key_bits: u64,
    /// Cumulative key at the end of the bucket, bits.
    pub cumulative_bits: u64,
    /// Mean QBER over the up steps of the bucket (NaN if none or not reported).
    pub qber: f32,
    /// Fraction of steps up.
    pub up_fraction: f32,
    /// Fraction of steps aborted by the protocol.
    pub aborted_fraction: f32,
    /// Phase at the end of the bucket.
    pub phase: Phase,
}

/// Time series and summary of one link.
#[derive(Debug, Clone, Serialize)]
pub struct LinkSeries {
    /// Identifier.
    pub id: String,
    /// One end (node id).
    pub a: String,
    /// Other end.
    pub b: String,
    /// Protocol.
    pub kind: &'static str,
    /// Fibre length, km.
    pub length_km: Option<f64>,
    /// Buckets.
    #[serde(skip)]
    pub buckets: Vec<Bucket>,
    /// Total key over the run, bits.
    pub total_bits: u64,
    /// Mean secret key rate, bit/s.
    pub mean_rate_bps: f64,
    /// Fraction of the run up.
    pub availability: f64,
    /// Fraction of the run aborted by the protocol.
    pub aborted: f64,
    /// Time of the first key, s (None if none).
    pub first_key_s: Option<u64>,
    /// Times (s) at which the phase changed, with the new phase.
    #[serde(skip)]
    pub changes: Vec<(u64, Phase)>,
    /// The fundamental bound the link is held against (PLOB for repeaterless protocols and
    /// satellite downlinks, single-repeater for twin-field) and how close its key comes; None
    /// for a constant-rate link, which has no physical channel.
    pub bound: Option<BoundCheck>,
}

impl LinkSeries {
    /// Whether the link's key exceeds its bound.
    pub fn violates_bound(&self) -> bool {
        self.bound.is_some_and(|b| b.violated())
    }
}

/// End-to-end result for one pair.
#[derive(Debug, Clone, Serialize)]
pub struct PairSeries {
    /// One end.
    pub a: String,
    /// Other end.
    pub b: String,
    /// Widest path, node ids (empty if not connected at all).
    pub path: Vec<String>,
    /// Bottleneck mean rate of the path, bit/s.
    pub bottleneck_bps: f64,
    /// Key the path could have delivered by the end of each bucket, bits.
    #[serde(skip)]
    pub cumulative_bits: Vec<u64>,
    /// Key deliverable by the end of the run, bits.
    pub total_bits: u64,
    /// Links of the path (indices into the run's links).
    #[serde(skip)]
    pub path_links: Vec<usize>,
    /// Key the path could have delivered by the end of each bucket if every link's key were
    /// split evenly between the reported pairs whose paths use it, bits.
    #[serde(skip)]
    pub shared_cumulative_bits: Vec<u64>,
    /// Key deliverable by the end of the run under that even split, bits.
    pub shared_total_bits: u64,
    /// Fraction of time connected through up links (rerouting allowed).
    pub connected_fraction: f64,
    /// Why the path is longer than the network's shortest route, when a link of that route made
    /// no key in the run (a satellite without a usable pass, a link cut all along), or `None`.
    pub detour: Option<String>,
}

/// Result of a run.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    /// Scenario name.
    pub name: String,
    /// Simulated span, s.
    pub duration_s: u64,
    /// Step, s.
    pub step_s: u64,
    /// Bucket width, s.
    pub aggregate_s: u64,
    /// Bucket end times, s.
    #[serde(skip)]
    pub times: Vec<u64>,
    /// Per link.
    pub links: Vec<LinkSeries>,
    /// Per pair.
    pub pairs: Vec<PairSeries>,
}

/// Steps every link over the scenario span. `progress(done_links)` is called as links finish.
pub fn run(
    scenario: &Scenario,
    links: &[BuiltLink],
    opts: RunOptions,
    progress: &(dyn Fn(usize) + Sync),
) -> RunResult {
    let step = scenario.scenario.step_s.max(1);
    let duration = scenario.scenario.duration_s;
    let agg = opts.aggregate_s.max(step).div_ceil(step) * step;
    let steps = duration / step;
    let n_buckets = steps.div_ceil(agg / step);
    let times: Vec<u64> = (1..=n_buckets)
        .map(|b| (b * agg).min(steps * step))
        .collect();
    let done = std::sync::atomic::AtomicUsize::new(0);
    let simulate = |l: &BuiltLink| {
        let s = simulate_link(scenario, l, step, steps, &times);
        progress(done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1);
        s
    };
    let threads = opts.threads.clamp(1, links.len().max(1));
    let chunk = links.len().div_ceil(threads).max(1);
    let series: Vec<LinkSeries> = std::thread::scope(|s| {
        let handles: Vec<_> = links
            .chunks(chunk)
            .map(|c| s.spawn(move || c.iter().map(simulate).collect::<Vec<_>>()))
            .collect();
        // A panicking worker is a bug: pass its panic on rather than return a partial result.
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    let mut pairs: Vec<PairSeries> = scenario
        .pairs
        .iter()
        .map(|p| pair_series(scenario, links, &series, &p.a, &p.b, steps * step))
        .collect();
    share_links(&mut pairs, &series);
    RunResult {
        name: scenario.scenario.name.clone(),
        duration_s: steps * step,
        step_s: step,
        aggregate_s: agg,
        times,
        links: series,
        pairs,
    }
}

fn simulate_link(sc: &Scenario, l: &BuiltLink, step: u64, steps: u64, times: &[u64]) -> LinkSeries {
    let mut buckets = Vec::with_capacity(times.len());
    let mut changes = Vec::new();
    let (mut up_total, mut ab_total) = (0u64, 0u64);
    let mut first_key = None;
    let (start_cum, mut phase, _) = l.model.sample(0);
    changes.push((0, phase));
    let mut cum_prev_bucket = start_cum;
    let mut k = 1u64;
    for &t_end in times {
        let (mut up, mut ab, mut qsum, mut qn, mut n_steps) = (0u32, 0u32, 0f64, 0u32, 0u32);
        let mut cum = cum_prev_bucket;
        while k <= steps && k * step <= t_end {
            let t = k * step;
            let (c, ph, q) = l.model.sample(t * 1000);
            match ph {
                Phase::Up => {
                    up += 1;
                    if let Some(q) = q {
                        qsum += q;
                        qn += 1;
                    }
                }
                Phase::Aborted => ab += 1,
                Phase::Down => {}
            }
            if ph != phase {
                changes.push((t, ph));
                phase = ph;
            }
            if first_key.is_none() && c > start_cum {
                first_key = Some(t);
            }
            cum = c;
            k += 1;
            n_steps += 1;
        }
        // The last bucket may be shorter than the others.
        let n = n_steps.max(1) as f32;
        buckets.push(Bucket {
            t_s: t_end,
            key_bits: cum - cum_prev_bucket,
            cumulative_bits: cum,
            qber: if qn > 0 {
                (qsum / f64::from(qn)) as f32
            } else {
                f32::NAN
            },
            up_fraction: up as f32 / n,
            aborted_fraction: ab as f32 / n,
            phase,
        });
        up_total += u64::from(up);
        ab_total += u64::from(ab);
        cum_prev_bucket = cum;
    }
    let total = cum_prev_bucket - start_cum;
    let span = (steps * step).max(1) as f64;
    LinkSeries {
        id: l.id.clone(),
        a: sc.nodes[l.a].id.clone(),
        b: sc.nodes[l.b].id.clone(),
        kind: l.kind,
        length_km: l.length_km,
        buckets,
        total_bits: total,
        mean_rate_bps: total as f64 / span,
        availability: up_total as f64 / steps.max(1) as f64,
        aborted: ab_total as f64 / steps.max(1) as f64,
        first_key_s: first_key,
        changes,
        bound: l.model.bound().copied(),
    }
}

/// Widest path from `from` to `to` over links weighted by `rate`: maximises the bottleneck, then
/// minimises hops. Returns link indices in order, or None.
pub fn widest_path(
    n_nodes: usize,
    ends: &[(usize, usize)],
    rate: &[f64],
    from: usize,
    to: usize,
) -> Option<Vec<usize>> {
    let mut adj = vec![Vec::new(); n_nodes];
    for (i, &(a, b)) in ends.iter().enumerate() {
        adj[a].push((b, i));
        adj[b].push((a, i));
    }
    #[derive(PartialEq)]
    struct Item(f64, std::cmp::Reverse<usize>, usize);
    impl Eq for Item {}
    impl PartialOrd for Item {
        fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
            Some(self.cmp(o))
        }
    }
    impl Ord for Item {
        fn cmp(&self, o: &Self) -> std::cmp::Ordering {
            self.0
                .total_cmp(&o.0)
                .then(self.1.cmp(&o.1))
                .then(self.2.cmp(&o.2))
        }
    }
    let mut best = vec![(f64::NEG_INFINITY, usize::MAX); n_nodes];
    let mut via: Vec<Option<(usize, usize)>> = vec![None; n_nodes];
    let mut heap = BinaryHeap::new();
    best[from] = (f64::INFINITY, 0);
    heap.push(Item(f64::INFINITY, std::cmp::Reverse(0), from));
    while let Some(Item(w, std::cmp::Reverse(h), u)) = heap.pop() {
        if (w, h) != best[u] {
            continue;
        }
        for &(v, li) in &adj[u] {
            let nw = w.min(rate[li]);
            if nw <= 0.0 {
                continue;
            }
            let better = nw > best[v].0 || (nw == best[v].0 && h + 1 < best[v].1);
            if better {
                best[v] = (nw, h + 1);
                via[v] = Some((u, li));
                heap.push(Item(nw, std::cmp::Reverse(h + 1), v));
            }
        }
    }
    via[to]?;
    let mut path = Vec::new();
    let mut cur = to;
    while cur != from {
        let (prev, li) = via[cur]?;
        path.push(li);
        cur = prev;
    }
    path.reverse();
    Some(path)
}

/// Fills the shared-key fields: each link's key split evenly between the pairs routed over it.
fn share_links(pairs: &mut [PairSeries], series: &[LinkSeries]) {
    let mut users = vec![0u64; series.len()];
    for p in pairs.iter() {
        for &li in &p.path_links {
            users[li] += 1;
        }
    }
    let n_buckets = series.first().map_or(0, |s| s.buckets.len());
    for p in pairs.iter_mut() {
        p.shared_cumulative_bits = (0..n_buckets)
            .map(|k| {
                p.path_links
                    .iter()
                    .map(|&li| series[li].buckets[k].cumulative_bits / users[li].max(1))
                    .min()
                    .unwrap_or(0)
            })
            .collect();
        p.shared_total_bits = p.shared_cumulative_bits.last().copied().unwrap_or(0);
    }
}

fn pair_series(
    sc: &Scenario,
    links: &[BuiltLink],
    series: &[LinkSeries],
    a: &str,
    b: &str,
    span: u64,
) -> PairSeries {
    let idx = |id: &str| sc.nodes.iter().position(|n| n.id == id).unwrap_or(0);
    let (ia, ib) = (idx(a), idx(b));
    let ends: Vec<(usize, usize)> = links.iter().map(|l| (l.a, l.b)).collect();
    let rates: Vec<f64> = series.iter().map(|s| s.mean_rate_bps).collect();
    let path_links = widest_path(sc.nodes.len(), &ends, &rates, ia, ib).unwrap_or_default();
    let mut path = Vec::new();
    if !path_links.is_empty() {
        let mut cur = ia;
        path.push(sc.nodes[cur].id.clone());
        for &li in &path_links {
            cur = if ends[li].0 == cur {
                ends[li].1
            } else {
                ends[li].0
            };
            path.push(sc.nodes[cur].id.clone());
        }
    }
    let n_buckets = series.first().map_or(0, |s| s.buckets.len());
    let cumulative: Vec<u64> = (0..n_buckets)
        .map(|k| {
            if path_links.is_empty() {
                0
            } else {
                path_links
                    .iter()
                    .map(|&li| series[li].buckets[k].cumulative_bits)
                    .min()
                    .unwrap_or(0)
            }
        })
        .collect();
    let bottleneck = path_links
        .iter()
        .map(|&li| rates[li])
        .fold(f64::INFINITY, f64::min);
    let detour = detour_note(sc.nodes.len(), &ends, series, ia, ib, &path_links);
    PairSeries {
        a: a.to_string(),
        b: b.to_string(),
        path,
        bottleneck_bps: if path_links.is_empty() {
            0.0
        } else {
            bottleneck
        },
        total_bits: cumulative.last().copied().unwrap_or(0),
        path_links,
        shared_cumulative_bits: Vec::new(),
        shared_total_bits: 0,
        cumulative_bits: cumulative,
        connected_fraction: connected_fraction(sc.nodes.len(), &ends, series, ia, ib, span),
        detour,
    }
}

/// Explains a path longer than the fewest-hop route between `a` and `b`, when that route is
/// unusable because links on it made no key in the run.
fn detour_note(
    n: usize,
    ends: &[(usize, usize)],
    series: &[LinkSeries],
    a: usize,
    b: usize,
    path: &[usize],
) -> Option<String> {
    let shortest = widest_path(n, ends, &vec![1.0; ends.len()], a, b)?;
    let dead: Vec<&LinkSeries> = shortest
        .iter()
        .map(|&li| &series[li])
        .filter(|s| s.total_bits == 0)
        .collect();
    if dead.is_empty() || (!path.is_empty() && path.len() <= shortest.len()) {
        return None;
    }
    let names: Vec<String> = dead
        .iter()
        .map(|s| format!("{} ({})", s.id, s.kind))
        .collect();
    let route = if path.is_empty() {
        "no path".to_string()
    } else {
        format!("routed over {} hops", path.len())
    };
    Some(format!(
        "{route}: the {}-hop route is unusable because {} made no key in the run",
        shortest.len(),
        names.join(", ")
    ))
}

/// Fraction of `[0, span)` during which `a` and `b` are joined by up links; evaluated only at the
/// times some link changes phase.
fn connected_fraction(
    n: usize,
    ends: &[(usize, usize)],
    series: &[LinkSeries],
    a: usize,
    b: usize,
    span: u64,
) -> f64 {
    let mut events: Vec<(u64, usize, Phase)> = series
        .iter()
        .enumerate()
        .flat_map(|(li, s)| s.changes.iter().map(move |&(t, p)| (t, li, p)))
        .collect();
    events.sort_by_key(|e| (e.0, e.1));
    let mut up = vec![false; series.len()];
    let mut connected_time = 0u64;
    let mut i = 0;
    while i < events.len() {
        let t = events[i].0;
        while i < events.len() && events[i].0 == t {
            up[events[i].1] = events[i].2 == Phase::Up;
            i += 1;
        }
        let next = events.get(i).map_or(span, |e| e.0).min(span);
        if next > t && joined(n, ends, &up, a, b) {
            connected_time += next - t;
        }
    }
    connected_time as f64 / span.max(1) as f64
}

fn joined(n: usize, ends: &[(usize, usize)], up: &[bool], a: usize, b: usize) -> bool {
    let mut parent: Vec<usize> = (0..n).collect();
    fn find(p: &mut [usize], mut x: usize) -> usize {
        while p[x] != x {
            p[x] = p[p[x]];
            x = p[x];
        }
        x
    }
    for (i, &(x, y)) in ends.iter().enumerate() {
        if up[i] {
            let (rx, ry) = (find(&mut parent, x), find(&mut parent, y));
            parent[rx] = ry;
        }
    }
    find(&mut parent, a) == find(&mut parent, b)
}

impl RunResult {
    /// The links whose key exceeds their fundamental bound (none for a correct model).
    pub fn bound_violations(&self) -> impl Iterator<Item = &LinkSeries> {
        self.links.iter().filter(|l| l.violates_bound())
    }

    /// A plain-text summary table: one line per link (sorted by mean rate), then the pairs.
    pub fn summary_table(&self, max_links: usize) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "scenario {}: {} links, {} s simulated at {} s steps",
            self.name,
            self.links.len(),
            self.duration_s,
            self.step_s
        );
        let _ = writeln!(
            out,
            "{:<28} {:<18} {:>8} {:>14} {:>12} {:>7} {:>7} {:>9} {:>16}",
            "link",
            "protocol",
            "km",
            "key (bits)",
            "rate (b/s)",
            "up %",
            "abort %",
            "1st key s",
            "bound (% of it)"
        );
        let mut order: Vec<&LinkSeries> = self.links.iter().collect();
        order.sort_by(|x, y| x.mean_rate_bps.total_cmp(&y.mean_rate_bps));
        for l in order.iter().take(max_links) {
            let _ = writeln!(
                out,
                "{:<28} {:<18} {:>8} {:>14} {:>12.1} {:>7.1} {:>7.1} {:>9} {:>16}",
                truncate(&l.id, 28),
                l.kind,
                l.length_km.map_or("-".to_string(), |x| format!("{x:.1}")),
                l.total_bits,
                l.mean_rate_bps,
                100.0 * l.availability,
                100.0 * l.aborted,
                l.first_key_s.map_or("-".to_string(), |t| t.to_string()),
                l.bound.map_or("-".to_string(), |b| format!(
                    "{} {:.2}",
                    short_bound(b.bound),
                    100.0 * b.ratio
                ))
            );
        }
        let _ = writeln!(
            out,
            "bounds: repeaterless links against PLOB -log2(1-eta), twin-field links against the \
             single-repeater bound -log2(1-sqrt(eta)); constant-rate links have none"
        );
        for l in self.bound_violations() {
            if let Some(b) = l.bound {
                let _ = writeln!(
                    out,
                    "BOUND VIOLATED: link {} ({}) gives {:.4e} against {} {:.4e} ({}; a model bug \
                     or parameters outside its validity)",
                    l.id,
                    l.kind,
                    b.key,
                    b.bound.describe(),
                    b.limit,
                    if l.length_km.is_some() {
                        "bit/s"
                    } else {
                        "bits per pass"
                    }
                );
            }
        }
        if self.links.len() > max_links {
            let _ = writeln!(
                out,
                "... {} more links (slowest shown first; all in links.csv)",
                self.links.len() - max_links
            );
        }
        if !self.pairs.is_empty() {
            let _ = writeln!(
                out,
                "\n{:<36} {:>6} {:>14} {:>14} {:>14} {:>10}",
                "pair", "hops", "e2e key (bits)", "shared (bits)", "bottleneck b/s", "connected%"
            );
            for p in &self.pairs {
                let _ = writeln!(
                    out,
                    "{:<36} {:>6} {:>14} {:>14} {:>14.1} {:>10.1}",
                    truncate(&format!("{} <-> {}", p.a, p.b), 36),
                    p.path.len().saturating_sub(1),
                    p.total_bits,
                    p.shared_total_bits,
                    p.bottleneck_bps,
                    100.0 * p.connected_fraction
                );
            }
            for p in self.pairs.iter().filter(|p| p.detour.is_some()) {
                let _ = writeln!(
                    out,
                    "note: {} <-> {} {}",
                    p.a,
                    p.b,
                    p.detour.as_deref().unwrap_or_default()
                );
            }
        }
        out
    }

    /// Rows of links.csv (one per link and bucket) and pairs.csv (one per pair and bucket).
    pub fn rows(&self) -> (u64, u64) {
        let buckets = self.times.len() as u64;
        (
            self.links.len() as u64 * buckets,
            self.pairs.len() as u64 * buckets,
        )
    }

    /// Size of links.csv and pairs.csv, bytes, estimated from the rows and the lengths of the
    /// ids and numbers (within a few per cent), without writing anything: for a warning before
    /// a large write.
    pub fn estimated_csv_bytes(&self) -> u64 {
        let digits = |v: u64| (v.max(1).ilog10() + 1) as u64;
        let buckets = self.times.len() as u64;
        let t_digits: u64 = self.times.iter().map(|t| digits(*t)).sum();
        // qber (7), two fractions (6 each), phase (~2), 7 commas, newline.
        let fixed = 7 + 6 + 6 + 2 + 7 + 1;
        let links: u64 = self
            .links
            .iter()
            .map(|l| {
                let total = l.buckets.last().map_or(0, |b| b.cumulative_bits);
                let per_bucket = l.total_bits / buckets.max(1);
                t_digits
                    + buckets * (l.id.len() as u64 + fixed + digits(total) + digits(per_bucket))
            })
            .sum();
        let pairs: u64 = self
            .pairs
            .iter()
            .map(|p| {
                let name = (p.a.len() + p.b.len() + 3) as u64;
                t_digits + buckets * (name + 2 * digits(p.total_bits) + 4)
            })
            .sum();
        links + pairs
    }

    /// Writes `links.csv` (one row per link and bucket), `pairs.csv`, and `summary.json` into
    /// `dir`.
    #[cfg(feature = "output")]
    pub fn write(&self, dir: &std::path::Path) -> Result<(), OutputError> {
        std::fs::create_dir_all(dir)?;
        let mut w = csv::Writer::from_path(dir.join("links.csv"))?;
        w.write_record([
            "t_s",
            "link",
            "key_bits",
            "cumulative_bits",
            "qber",
            "up_fraction",
            "aborted_fraction",
            "phase",
        ])?;
        // 26 million rows for a EuroQCI day at 1 s: no allocation per row, and each float
        // formatted only when it differs from the row before (it rarely does).
        let mut num = String::new();
        let mut floats = [
            FloatField::default(),
            FloatField::default(),
            FloatField::default(),
        ];
        for l in &self.links {
            for b in &l.buckets {
                use std::fmt::Write as _;
                num.clear();
                let _ = write!(num, "{}", b.t_s);
                w.write_field(&num)?;
                w.write_field(&l.id)?;
                num.clear();
                let _ = write!(num, "{}", b.key_bits);
                w.write_field(&num)?;
                num.clear();
                let _ = write!(num, "{}", b.cumulative_bits);
                w.write_field(&num)?;
                w.write_field(floats[0].format(b.qber, 5))?;
                w.write_field(floats[1].format(b.up_fraction, 4))?;
                w.write_field(floats[2].format(b.aborted_fraction, 4))?;
                w.write_field(b.phase.name())?;
                w.write_record(None::<&[u8]>)?;
            }
        }
        w.flush()?;
        let mut w = csv::Writer::from_path(dir.join("pairs.csv"))?;
        w.write_record([
            "t_s",
            "pair",
            "e2e_cumulative_bits",
            "e2e_shared_cumulative_bits",
        ])?;
        for p in &self.pairs {
            let name = format!("{}<->{}", p.a, p.b);
            for ((t, c), sh) in self
                .times
                .iter()
                .zip(&p.cumulative_bits)
                .zip(&p.shared_cumulative_bits)
            {
                w.write_record([t.to_string(), name.clone(), c.to_string(), sh.to_string()])?;
            }
        }
        w.flush()?;
        self.write_summary(dir)
    }

    /// Writes `summary.json` (the run without its time series) into `dir`.
    pub fn write_summary(&self, dir: &std::path::Path) -> Result<(), OutputError> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("summary.json"), serde_json::to_vec_pretty(self)?)?;
        Ok(())
    }
}

/// A float column of the CSV: the text of the last value, reused while the value repeats. NaN
/// is an empty cell.
#[cfg(feature = "output")]
#[derive(Default)]
struct FloatField {
    bits: Option<u32>,
    text: String,
}

#[cfg(feature = "output")]
impl FloatField {
    fn format(&mut self, v: f32, decimals: usize) -> &str {
        if self.bits != Some(v.to_bits()) {
            self.bits = Some(v.to_bits());
            self.text = if v.is_nan() {
                String::new()
            } else {
                format!("{v:.decimals$}")
            };
        }
        &self.text
    }
}

fn short_bound(b: BoundFamily) -> &'static str {
    match b {
        BoundFamily::Plob => "plob",
        BoundFamily::SingleRepeater => "1-rep",
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        s.chars().take(n - 1).chain(['…']).collect()
    }
}

/// Writing results failed.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// File system.
    #[error("writing output: {0}")]
    Io(#[from] std::io::Error),
    /// CSV.
    #[cfg(feature = "output")]
    #[error("writing CSV: {0}")]
    Csv(#[from] csv::Error),
    /// JSON.
    #[error("writing JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// Plot.
    #[error("drawing plot: {0}")]
    Plot(String),
    /// Parquet (feature `parquet`).
    #[error("writing Parquet: {0}")]
    Parquet(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widest_path_prefers_bottleneck_then_hops() {
        // 0-1-3 with rates 10,10; 0-2-3 with 5,100; 0-3 direct with 1.
        let ends = [(0, 1), (1, 3), (0, 2), (2, 3), (0, 3)];
        let rate = [10.0, 10.0, 5.0, 100.0, 1.0];
        assert_eq!(widest_path(4, &ends, &rate, 0, 3), Some(vec![0, 1]));
        let rate = [10.0, 0.0, 5.0, 100.0, 1.0];
        assert_eq!(widest_path(4, &ends, &rate, 0, 3), Some(vec![2, 3]));
        assert_eq!(widest_path(4, &ends, &[0.0; 5], 0, 3), None);
    }

    fn series(id: &str, kind: &'static str, total_bits: u64) -> LinkSeries {
        LinkSeries {
            id: id.into(),
            a: String::new(),
            b: String::new(),
            kind,
            length_km: None,
            buckets: Vec::new(),
            total_bits,
            mean_rate_bps: total_bits as f64,
            availability: 1.0,
            aborted: 0.0,
            first_key_s: None,
            changes: Vec::new(),
            bound: None,
        }
    }

    #[test]
    fn a_link_above_its_bound_is_flagged_in_the_summary() {
        let mut fine = series("fine", "finite-key-bb84", 10);
        fine.length_km = Some(50.0);
        fine.bound = Some(BoundCheck::new(BoundFamily::Plob, 1e5, 1.5e8));
        let mut over = series("over", "twin-field", 10);
        over.length_km = Some(400.0);
        over.bound = Some(BoundCheck::new(BoundFamily::SingleRepeater, 2e4, 1e4));
        let none = series("const", "constant-rate", 10);
        let r = RunResult {
            name: "t".into(),
            duration_s: 1,
            step_s: 1,
            aggregate_s: 1,
            times: Vec::new(),
            links: vec![fine, over, none],
            pairs: Vec::new(),
        };
        let flagged: Vec<&str> = r.bound_violations().map(|l| l.id.as_str()).collect();
        assert_eq!(flagged, ["over"]);
        let table = r.summary_table(10);
        assert!(
            table.contains(
                "BOUND VIOLATED: link over (twin-field) gives 2.0000e4 against single-repeater"
            ),
            "{table}"
        );
        assert!(
            table.contains("1-rep 200.00") && table.contains("plob 0.07"),
            "{table}"
        );
        // A zero bound with key is a violation too; no key and no bound is not.
        assert!(BoundCheck::new(BoundFamily::Plob, 1.0, 0.0).violated());
        assert!(!BoundCheck::new(BoundFamily::Plob, 0.0, 0.0).violated());
    }

    #[test]
    fn a_detour_around_a_link_without_key_is_explained() {
        // 0 - 1 (satellite, no key) - 2, and a fibre chain 0 - 3 - 4 - 2.
        let ends = [(0, 1), (1, 2), (0, 3), (3, 4), (4, 2)];
        let s = [
            series("gs-a~sat", "satellite-downlink", 0),
            series("sat~gs-b", "satellite-downlink", 500),
            series("f1", "finite-key-bb84", 9),
            series("f2", "finite-key-bb84", 9),
            series("f3", "finite-key-bb84", 9),
        ];
        let rates: Vec<f64> = s.iter().map(|l| l.mean_rate_bps).collect();
        let path = widest_path(5, &ends, &rates, 0, 2).unwrap();
        assert_eq!(path, vec![2, 3, 4]);
        let note = detour_note(5, &ends, &s, 0, 2, &path).unwrap();
        assert!(
            note.contains("routed over 3 hops")
                && note.contains("2-hop route")
                && note.contains("gs-a~sat (satellite-downlink) made no key"),
            "{note}"
        );
        // With key on the satellite, no note.
        let mut ok = s.clone();
        ok[0].total_bits = 100;
        assert_eq!(detour_note(5, &ends, &ok, 0, 2, &[0, 1]), None);
    }
}
