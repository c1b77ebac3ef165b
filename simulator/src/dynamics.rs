//! Time-resolved network simulation with key buffers, at key-block level.
//!
//! Every link of a [`Scenario`] fills a key buffer (one per link, shared by its two ends) at the
//! rate its model gives over time, cuts, outages, attacks and satellite passes included: the
//! inflow of a step is the link's cumulative key at the end of the step minus that at its start.
//! Application pairs ask for key at a demanded rate ([`Demand`]: constant, bursty on/off, or a
//! trace). Each step, the pairs are served in turn (the first pair rotates every step, so no pair
//! is always first): the pair's demand of the step is met along the path with the fewest hops
//! whose every buffer holds all of it, as a key-management system would route; when no such path
//! exists, along the widest path of the *current* buffers (largest bottleneck, then fewest hops)
//! and then the next (at most [`DynamicsOptions::max_paths`] paths). One-time-pad relaying draws
//! the same number of bits from every hop's buffer, in whole key blocks. Demand
//! not met in its step is reported as unmet and dropped: an application that finds no key falls
//! back or waits, it does not queue forever.
//!
//! Routing is the simulator's own (the key-management system is never involved). Buffered key
//! stays usable while a link is down: relaying uses the classical network, and key made before a
//! cut or an attack is as good as ever. A buffer holds at most `capacity_bits`; key arriving at a
//! full buffer is counted as overflow (QKDNetSim's M_max); `initial_bits` is the pre-shared
//! start (its M_min).
//!
//! [`run_dynamics`] is deterministic: the same scenario, options and demand give the same result.
//! The effect of cuts and attacks is measured against the same run with every scheduled and
//! random event removed (the links of [`baseline_links`]).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

#[cfg(feature = "output")]
use crate::network::OutputError;
use crate::passtrack::TrackError;
#[cfg(feature = "output")]
use crate::passtrack::open_table;
use crate::physical::Phase;
use crate::scenario::{BuiltLink, Scenario, ScenarioError};

/// How much key an application pair asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Demand {
    /// A constant rate, bit/s.
    Constant {
        /// Rate, bit/s.
        bits_per_s: f64,
    },
    /// On/off bursts: `bits_per_s` during bursts whose lengths and gaps are exponential with
    /// means `on_s` and `off_s`, drawn from `seed` (each pair gets its own stream).
    Bursty {
        /// Rate during a burst, bit/s.
        bits_per_s: f64,
        /// Mean burst length, s.
        on_s: f64,
        /// Mean gap, s.
        off_s: f64,
        /// Seed.
        seed: u64,
    },
    /// A step function of time: from each `t_s` on, the rate is its `bits_per_s`. Per pair when
    /// the trace names pairs; `all` applies to the pairs it does not name.
    Trace(Trace),
}

/// A demand trace read from CSV.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Trace {
    /// Rows for every pair not named: (t_s, bits_per_s), sorted by time.
    pub all: Vec<(f64, f64)>,
    /// Rows per named pair `A:B`.
    pub per_pair: Vec<(String, Vec<(f64, f64)>)>,
}

/// A demand or trace file that makes no sense. Whoever wrote it causes it; the message names the
/// line and the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DemandError {
    /// The demand description does not parse.
    #[error("--demand {given}: {problem}")]
    Spec {
        /// What was given.
        given: String,
        /// What is wrong.
        problem: String,
    },
    /// A trace file line is wrong.
    #[error(transparent)]
    Trace(#[from] TrackError),
}

impl Demand {
    /// Parses `constant:BPS`, `bursty:BPS,ON_S,OFF_S[,SEED]` or `trace:FILE.csv`. A trace has a
    /// header with `t_s` and `bits_per_s` and optionally `pair` (`A:B`).
    pub fn parse(text: &str) -> Result<Self, DemandError> {
        let err = |p: &str| DemandError::Spec {
            given: text.to_string(),
            problem: p.to_string(),
        };
        let (kind, rest) = text
            .split_once(':')
            .ok_or_else(|| err("write constant:BPS, bursty:BPS,ON_S,OFF_S[,SEED] or trace:FILE"))?;
        let num = |s: &str, what: &str| -> Result<f64, DemandError> {
            let v: f64 = s
                .trim()
                .parse()
                .map_err(|_| err(&format!("{what} `{s}` is not a number")))?;
            if v.is_finite() && v >= 0.0 {
                Ok(v)
            } else {
                Err(err(&format!("{what} must be a finite number ≥ 0")))
            }
        };
        match kind {
            "constant" => Ok(Demand::Constant {
                bits_per_s: num(rest, "the rate")?,
            }),
            "bursty" => {
                let parts: Vec<&str> = rest.split(',').collect();
                if !(3..=4).contains(&parts.len()) {
                    return Err(err("write bursty:BPS,ON_S,OFF_S[,SEED]"));
                }
                let (on_s, off_s) = (num(parts[1], "ON_S")?, num(parts[2], "OFF_S")?);
                if on_s <= 0.0 || off_s <= 0.0 {
                    return Err(err("mean burst length and gap must be > 0 s"));
                }
                let seed = match parts.get(3) {
                    Some(s) => s
                        .trim()
                        .parse()
                        .map_err(|_| err(&format!("SEED `{s}` is not an integer")))?,
                    None => 0,
                };
                Ok(Demand::Bursty {
                    bits_per_s: num(parts[0], "the rate")?,
                    on_s,
                    off_s,
                    seed,
                })
            }
            #[cfg(feature = "output")]
            "trace" => Ok(Demand::Trace(Trace::load(Path::new(rest))?)),
            #[cfg(not(feature = "output"))]
            "trace" => Err(err("reading a trace needs the `output` feature")),
            _ => Err(err("the kind is constant, bursty or trace")),
        }
    }

    /// Demanded rate (bit/s) of pair `index` (named `name`, `A:B`) over each step
    /// `[k·step, (k+1)·step)`, as bits per step.
    fn per_step(&self, index: usize, name: &str, step_s: u64, steps: usize) -> Vec<f64> {
        let dt = step_s as f64;
        match self {
            Demand::Constant { bits_per_s } => vec![bits_per_s * dt; steps],
            Demand::Bursty {
                bits_per_s,
                on_s,
                off_s,
                seed,
            } => {
                let mut rng = ChaCha8Rng::seed_from_u64(
                    seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                );
                let mut exp = |mean: f64| -mean * (1.0 - rng.random::<f64>()).ln();
                // Start in a random phase of the on/off cycle.
                let mut on = rng_start(on_s / (on_s + off_s), index as u64 ^ seed);
                let mut t = 0.0;
                let mut next = if on { exp(*on_s) } else { exp(*off_s) };
                let mut out = vec![0.0; steps];
                for (k, slot) in out.iter_mut().enumerate() {
                    let end = (k as f64 + 1.0) * dt;
                    let mut on_time = 0.0;
                    while t < end {
                        let until = next.min(end);
                        if on {
                            on_time += until - t;
                        }
                        t = until;
                        if t >= next {
                            on = !on;
                            next = t + if on { exp(*on_s) } else { exp(*off_s) };
                        }
                    }
                    *slot = bits_per_s * on_time;
                }
                out
            }
            Demand::Trace(tr) => {
                let rows = tr
                    .per_pair
                    .iter()
                    .find(|(p, _)| p == name)
                    .map_or(&tr.all, |(_, r)| r);
                (0..steps)
                    .map(|k| {
                        // Integrate the step function over the step.
                        let (a, b) = (k as f64 * dt, (k as f64 + 1.0) * dt);
                        let mut bits = 0.0;
                        for (i, &(t, r)) in rows.iter().enumerate() {
                            let t_next = rows.get(i + 1).map_or(f64::INFINITY, |x| x.0);
                            let lo = t.max(a);
                            let hi = t_next.min(b);
                            if hi > lo {
                                bits += r * (hi - lo);
                            }
                        }
                        bits
                    })
                    .collect()
            }
        }
    }
}

fn rng_start(p_on: f64, seed: u64) -> bool {
    ChaCha8Rng::seed_from_u64(seed.wrapping_add(1)).random::<f64>() < p_on
}

#[cfg(feature = "output")]
impl Trace {
    /// Reads a trace CSV (`t_s`, `bits_per_s`, optional `pair`).
    pub fn load(path: &Path) -> Result<Self, DemandError> {
        let bad = |line: usize, field: &str, problem: String| {
            DemandError::Trace(TrackError::new(path, line, field, problem))
        };
        let (mut rdr, headers) = open_table(path)?;
        let col = |name: &str| headers.iter().position(|h| h == name);
        let (Some(ct), Some(cr)) = (col("t_s"), col("bits_per_s")) else {
            return Err(bad(
                1,
                "header",
                "needs the columns t_s and bits_per_s (and optionally pair)".into(),
            ));
        };
        let cp = col("pair");
        let mut trace = Trace::default();
        for (i, rec) in rdr.records().enumerate() {
            let rec = rec.map_err(|e| bad(i + 2, "row", e.to_string()))?;
            let line = rec.position().map_or(i + 2, |p| p.line() as usize);
            let num = |c: usize, name: &str| -> Result<f64, DemandError> {
                let s = rec.get(c).unwrap_or("");
                match s.parse::<f64>() {
                    Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
                    _ => Err(bad(line, name, format!("`{s}` is not a finite number ≥ 0"))),
                }
            };
            let (t, r) = (num(ct, "t_s")?, num(cr, "bits_per_s")?);
            let pair = cp.and_then(|c| rec.get(c)).unwrap_or("").to_string();
            let rows = if pair.is_empty() {
                &mut trace.all
            } else {
                if !pair.contains(':') {
                    return Err(bad(
                        line,
                        "pair",
                        format!("`{pair}`: write the pair as A:B"),
                    ));
                }
                match trace.per_pair.iter().position(|(p, _)| *p == pair) {
                    Some(j) => &mut trace.per_pair[j].1,
                    None => {
                        trace.per_pair.push((pair, Vec::new()));
                        let last = trace.per_pair.len() - 1;
                        &mut trace.per_pair[last].1
                    }
                }
            };
            if rows.last().is_some_and(|&(t0, _)| t <= t0) {
                return Err(bad(line, "t_s", format!("{t}: times must increase")));
            }
            rows.push((t, r));
        }
        if trace.all.is_empty() && trace.per_pair.is_empty() {
            return Err(bad(1, "file", "no rows".into()));
        }
        Ok(trace)
    }
}

/// How to run.
#[derive(Debug, Clone)]
pub struct DynamicsOptions {
    /// Time step, s.
    pub step_s: u64,
    /// Key-block size: relays draw whole blocks, bits.
    pub block_bits: u64,
    /// Buffer capacity per link, bits.
    pub capacity_bits: u64,
    /// Pre-shared key in every buffer at the start, bits.
    pub initial_bits: u64,
    /// Most paths tried per pair and step.
    pub max_paths: usize,
    /// Width of the reported time buckets, s (a multiple of the step).
    pub aggregate_s: u64,
}

impl Default for DynamicsOptions {
    fn default() -> Self {
        Self {
            step_s: 60,
            block_bits: 256,
            capacity_bits: 1 << 30,
            initial_bits: 0,
            max_paths: 3,
            aggregate_s: 3600,
        }
    }
}

/// One reported bucket of one pair.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PairBucket {
    /// End of the bucket, s.
    pub t_s: u64,
    /// Key asked for, bits.
    pub demanded_bits: u64,
    /// Key delivered end to end, bits.
    pub served_bits: u64,
    /// Demand not met, bits.
    pub unmet_bits: u64,
    /// Hops of the longest path used in the bucket (0 if none).
    pub max_hops: u32,
}

/// One reported bucket of one link.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LinkBucket {
    /// End of the bucket, s.
    pub t_s: u64,
    /// Buffer at the end of the bucket, bits.
    pub buffer_bits: u64,
    /// Lowest buffer level at a step end in the bucket, bits.
    pub min_buffer_bits: u64,
    /// Key the link made in the bucket, bits.
    pub generated_bits: u64,
    /// Key relays drew from the buffer, bits.
    pub consumed_bits: u64,
    /// Key lost to a full buffer, bits.
    pub overflow_bits: u64,
    /// Fraction of steps with the link up.
    pub up_fraction: f32,
}

/// Totals of one pair.
#[derive(Debug, Clone, Serialize)]
pub struct PairDynamics {
    /// `A:B`.
    pub pair: String,
    /// Per bucket.
    #[serde(skip)]
    pub buckets: Vec<PairBucket>,
    /// Total demand, bits.
    pub demanded_bits: u64,
    /// Total served, bits.
    pub served_bits: u64,
    /// Total unmet, bits.
    pub unmet_bits: u64,
    /// Served / demanded (1 when nothing was asked).
    pub served_fraction: f64,
    /// Fraction of steps with demand where all of it was served.
    pub satisfied_steps: f64,
    /// Longest path used, hops.
    pub max_hops: u32,
    /// Served by the same run without events, bits (when a baseline was run).
    pub baseline_served_bits: Option<u64>,
}

/// Totals of one link.
#[derive(Debug, Clone, Serialize)]
pub struct LinkDynamics {
    /// Link id.
    pub link: String,
    /// Per bucket.
    #[serde(skip)]
    pub buckets: Vec<LinkBucket>,
    /// Key made, bits.
    pub generated_bits: u64,
    /// Key consumed by relays, bits.
    pub consumed_bits: u64,
    /// Key lost to a full buffer, bits.
    pub overflow_bits: u64,
    /// Buffer at the end, bits.
    pub final_buffer_bits: u64,
    /// Fraction of steps ending with less than one block in the buffer.
    pub empty_fraction: f64,
}

/// The result of a run.
#[derive(Debug, Clone, Serialize)]
pub struct DynamicsResult {
    /// Scenario name.
    pub name: String,
    /// Simulated span, s.
    pub duration_s: u64,
    /// Step, s.
    pub step_s: u64,
    /// Bucket width, s.
    pub aggregate_s: u64,
    /// Key block, bits.
    pub block_bits: u64,
    /// Buffer capacity, bits.
    pub capacity_bits: u64,
    /// Per pair.
    pub pairs: Vec<PairDynamics>,
    /// Per link.
    pub links: Vec<LinkDynamics>,
}

/// Runs the network with buffers over the scenario span. `demand` applies to every pair of the
/// scenario (a trace may name pairs).
pub fn run_dynamics(
    sc: &Scenario,
    links: &[BuiltLink],
    demand: &Demand,
    opts: &DynamicsOptions,
) -> DynamicsResult {
    let step = opts.step_s.max(1);
    let steps = (sc.scenario.duration_s / step) as usize;
    let per_bucket = (opts.aggregate_s.max(step) / step).max(1) as usize;
    let n_buckets = steps.div_ceil(per_bucket);
    let block = opts.block_bits.max(1);
    let n_nodes = sc.nodes.len();
    let node = |id: &str| sc.nodes.iter().position(|n| n.id == id);
    let pairs: Vec<(usize, usize, String)> = sc
        .pairs
        .iter()
        .filter_map(|p| Some((node(&p.a)?, node(&p.b)?, format!("{}:{}", p.a, p.b))))
        .collect();
    let demands: Vec<Vec<f64>> = pairs
        .iter()
        .enumerate()
        .map(|(i, (_, _, name))| demand.per_step(i, name, step, steps))
        .collect();
    let mut adj: Vec<Vec<(usize, usize)>> = vec![Vec::new(); n_nodes];
    for (li, l) in links.iter().enumerate() {
        adj[l.a].push((l.b, li));
        adj[l.b].push((l.a, li));
    }
    let mut router = Router::new(n_nodes);
    let mut buffer: Vec<u64> = vec![opts.initial_bits.min(opts.capacity_bits); links.len()];
    let mut prev_cum: Vec<u64> = links.iter().map(|l| l.model.sample(0).0).collect();
    let mut link_out: Vec<LinkDynamics> = links
        .iter()
        .map(|l| LinkDynamics {
            link: l.id.clone(),
            buckets: Vec::with_capacity(n_buckets),
            generated_bits: 0,
            consumed_bits: 0,
            overflow_bits: 0,
            final_buffer_bits: 0,
            empty_fraction: 0.0,
        })
        .collect();
    let mut pair_out: Vec<PairDynamics> = pairs
        .iter()
        .map(|(_, _, name)| PairDynamics {
            pair: name.clone(),
            buckets: Vec::with_capacity(n_buckets),
            demanded_bits: 0,
            served_bits: 0,
            unmet_bits: 0,
            served_fraction: 1.0,
            satisfied_steps: 0.0,
            max_hops: 0,
            baseline_served_bits: None,
        })
        .collect();
    let mut lb = vec![LinkAcc::default(); links.len()];
    let mut pb = vec![PairAcc::default(); pairs.len()];
    let mut empty_steps = vec![0u64; links.len()];
    let (mut demand_steps, mut satisfied) = (vec![0u64; pairs.len()], vec![0u64; pairs.len()]);
    // Fractional demand carried between steps so that block rounding loses nothing.
    let mut carry = vec![0.0f64; pairs.len()];
    // `k` is the time step: it indexes every pair's demand series and sets the time.
    #[allow(clippy::needless_range_loop)]
    for k in 0..steps {
        let t_ms = (k as u64 + 1) * step * 1000;
        for (li, l) in links.iter().enumerate() {
            let (cum, phase, _) = l.model.sample(t_ms);
            let made = cum.saturating_sub(prev_cum[li]);
            prev_cum[li] = cum;
            let room = opts.capacity_bits - buffer[li];
            let kept = made.min(room);
            buffer[li] += kept;
            let a = &mut lb[li];
            a.generated += made;
            a.overflow += made - kept;
            if phase == Phase::Up {
                a.up_steps += 1;
            }
        }
        let n_pairs = pairs.len();
        for j in 0..n_pairs {
            let p = (j + k) % n_pairs.max(1);
            let (from, to, _) = &pairs[p];
            let want_f = demands[p][k] + carry[p];
            let want = (want_f / block as f64).floor() as u64 * block;
            carry[p] = want_f - want as f64;
            if want == 0 {
                continue;
            }
            demand_steps[p] += 1;
            let mut left = want;
            for attempt in 0..opts.max_paths.max(1) {
                let found = if attempt == 0 {
                    router
                        .shortest(&adj, &buffer, want, *from, *to)
                        .map(|path| (path, want))
                        .or_else(|| router.widest(&adj, &buffer, block, *from, *to))
                } else {
                    router.widest(&adj, &buffer, block, *from, *to)
                };
                let Some((path, bottleneck)) = found else {
                    break;
                };
                let take = (left.min(bottleneck) / block) * block;
                if take == 0 {
                    break;
                }
                for &li in &path {
                    buffer[li] -= take;
                    lb[li].consumed += take;
                }
                left -= take;
                pb[p].max_hops = pb[p].max_hops.max(path.len() as u32);
                if left == 0 {
                    break;
                }
            }
            if left == 0 {
                satisfied[p] += 1;
            }
            pb[p].demanded += want;
            pb[p].served += want - left;
        }
        for (li, b) in buffer.iter().enumerate() {
            let a = &mut lb[li];
            a.min_buffer = a.min_buffer.min(*b);
            if *b < block {
                empty_steps[li] += 1;
            }
        }
        if (k + 1) % per_bucket == 0 || k + 1 == steps {
            let t_s = (k as u64 + 1) * step;
            let n_steps = ((k % per_bucket) + 1) as f32;
            for (li, a) in lb.iter_mut().enumerate() {
                link_out[li].buckets.push(LinkBucket {
                    t_s,
                    buffer_bits: buffer[li],
                    min_buffer_bits: a.min_buffer,
                    generated_bits: a.generated,
                    consumed_bits: a.consumed,
                    overflow_bits: a.overflow,
                    up_fraction: a.up_steps as f32 / n_steps,
                });
                *a = LinkAcc::default();
            }
            for (p, a) in pb.iter_mut().enumerate() {
                pair_out[p].buckets.push(PairBucket {
                    t_s,
                    demanded_bits: a.demanded,
                    served_bits: a.served,
                    unmet_bits: a.demanded - a.served,
                    max_hops: a.max_hops,
                });
                *a = PairAcc::default();
            }
        }
    }
    for (li, l) in link_out.iter_mut().enumerate() {
        l.generated_bits = l.buckets.iter().map(|b| b.generated_bits).sum();
        l.consumed_bits = l.buckets.iter().map(|b| b.consumed_bits).sum();
        l.overflow_bits = l.buckets.iter().map(|b| b.overflow_bits).sum();
        l.final_buffer_bits = buffer[li];
        l.empty_fraction = empty_steps[li] as f64 / steps.max(1) as f64;
    }
    for (p, out) in pair_out.iter_mut().enumerate() {
        out.demanded_bits = out.buckets.iter().map(|b| b.demanded_bits).sum();
        out.served_bits = out.buckets.iter().map(|b| b.served_bits).sum();
        out.unmet_bits = out.demanded_bits - out.served_bits;
        out.max_hops = out.buckets.iter().map(|b| b.max_hops).max().unwrap_or(0);
        out.served_fraction = if out.demanded_bits == 0 {
            1.0
        } else {
            out.served_bits as f64 / out.demanded_bits as f64
        };
        out.satisfied_steps = if demand_steps[p] == 0 {
            1.0
        } else {
            satisfied[p] as f64 / demand_steps[p] as f64
        };
    }
    DynamicsResult {
        name: sc.scenario.name.clone(),
        duration_s: steps as u64 * step,
        step_s: step,
        aggregate_s: per_bucket as u64 * step,
        block_bits: block,
        capacity_bits: opts.capacity_bits,
        pairs: pair_out,
        links: link_out,
    }
}

/// The scenario's links built without any event, scheduled or random: the baseline against which
/// a run measures the effect of cuts and attacks.
pub fn baseline_links(sc: &Scenario, file: &Path) -> Result<Vec<BuiltLink>, ScenarioError> {
    let mut clean = sc.clone();
    clean.events.clear();
    clean.faults = None;
    for l in &mut clean.links {
        if let Some(ops) = l.model.as_mut().and_then(|m| m.ops_mut()) {
            ops.events.clear();
            ops.random_faults = None;
        }
        if let Some(crate::spec::LinkModelSpec::ConstantRate(c)) = &mut l.model {
            c.events.clear();
        }
    }
    clean.build_links(file, &|_| ())
}

impl DynamicsResult {
    /// Records the baseline's served key per pair (same pairs, same order).
    pub fn set_baseline(&mut self, baseline: &DynamicsResult) {
        for (p, b) in self.pairs.iter_mut().zip(&baseline.pairs) {
            p.baseline_served_bits = Some(b.served_bits);
        }
    }

    /// Writes `dynamics_pairs.csv`, `dynamics_links.csv` and `dynamics_summary.json` into `dir`.
    #[cfg(feature = "output")]
    pub fn write(&self, dir: &Path) -> Result<(), OutputError> {
        std::fs::create_dir_all(dir)?;
        let mut w = csv::Writer::from_path(dir.join("dynamics_pairs.csv"))?;
        w.write_record([
            "t_s",
            "pair",
            "demanded_bits",
            "served_bits",
            "unmet_bits",
            "max_hops",
        ])?;
        for p in &self.pairs {
            for b in &p.buckets {
                w.write_record([
                    b.t_s.to_string(),
                    p.pair.clone(),
                    b.demanded_bits.to_string(),
                    b.served_bits.to_string(),
                    b.unmet_bits.to_string(),
                    b.max_hops.to_string(),
                ])?;
            }
        }
        w.flush()?;
        let mut w = csv::Writer::from_path(dir.join("dynamics_links.csv"))?;
        w.write_record([
            "t_s",
            "link",
            "buffer_bits",
            "min_buffer_bits",
            "generated_bits",
            "consumed_bits",
            "overflow_bits",
            "up_fraction",
        ])?;
        for l in &self.links {
            for b in &l.buckets {
                w.write_record([
                    b.t_s.to_string(),
                    l.link.clone(),
                    b.buffer_bits.to_string(),
                    b.min_buffer_bits.to_string(),
                    b.generated_bits.to_string(),
                    b.consumed_bits.to_string(),
                    b.overflow_bits.to_string(),
                    format!("{:.4}", b.up_fraction),
                ])?;
            }
        }
        w.flush()?;
        std::fs::write(
            dir.join("dynamics_summary.json"),
            serde_json::to_vec_pretty(self)?,
        )?;
        Ok(())
    }

    /// A plain-text summary: one line per pair.
    pub fn summary_table(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "scenario {}: {} links, {} pairs, {} s simulated at {} s steps, blocks of {} bits",
            self.name,
            self.links.len(),
            self.pairs.len(),
            self.duration_s,
            self.step_s,
            self.block_bits
        );
        let _ = writeln!(
            out,
            "{:<34} {:>14} {:>14} {:>9} {:>10} {:>5} {:>16}",
            "pair", "demanded", "served", "served %", "steps ok %", "hops", "lost to events"
        );
        for p in &self.pairs {
            let _ = writeln!(
                out,
                "{:<34} {:>14} {:>14} {:>9.2} {:>10.2} {:>5} {:>16}",
                p.pair,
                p.demanded_bits,
                p.served_bits,
                100.0 * p.served_fraction,
                100.0 * p.satisfied_steps,
                p.max_hops,
                p.baseline_served_bits
                    .map_or("-".into(), |b| b.saturating_sub(p.served_bits).to_string())
            );
        }
        out
    }
}

#[derive(Debug, Clone, Copy)]
struct LinkAcc {
    generated: u64,
    consumed: u64,
    overflow: u64,
    min_buffer: u64,
    up_steps: u64,
}

impl Default for LinkAcc {
    fn default() -> Self {
        Self {
            generated: 0,
            consumed: 0,
            overflow: 0,
            min_buffer: u64::MAX,
            up_steps: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct PairAcc {
    demanded: u64,
    served: u64,
    max_hops: u32,
}

/// Path searches over the current buffers with reusable scratch space.
struct Router {
    best: Vec<(u64, u32)>,
    via: Vec<Option<(usize, usize)>>,
    heap: BinaryHeap<(u64, Reverse<u32>, usize)>,
    queue: std::collections::VecDeque<usize>,
}

impl Router {
    fn new(n: usize) -> Self {
        Self {
            best: vec![(0, u32::MAX); n],
            via: vec![None; n],
            heap: BinaryHeap::new(),
            queue: std::collections::VecDeque::new(),
        }
    }

    /// The path with the fewest hops over links whose buffers hold at least `need` bits
    /// (breadth-first, in the scenario's link order).
    fn shortest(
        &mut self,
        adj: &[Vec<(usize, usize)>],
        buffer: &[u64],
        need: u64,
        from: usize,
        to: usize,
    ) -> Option<Vec<usize>> {
        if from == to {
            return None;
        }
        self.via.fill(None);
        self.queue.clear();
        self.queue.push_back(from);
        let mut seen_to = false;
        'search: while let Some(u) = self.queue.pop_front() {
            for &(v, li) in &adj[u] {
                if v == from || self.via[v].is_some() || buffer[li] < need {
                    continue;
                }
                self.via[v] = Some((u, li));
                if v == to {
                    seen_to = true;
                    break 'search;
                }
                self.queue.push_back(v);
            }
        }
        if !seen_to {
            return None;
        }
        self.trace_back(from, to)
    }

    fn trace_back(&self, from: usize, to: usize) -> Option<Vec<usize>> {
        let mut path = Vec::new();
        let mut cur = to;
        while cur != from {
            let (prev, li) = self.via[cur]?;
            path.push(li);
            cur = prev;
        }
        path.reverse();
        Some(path)
    }

    /// The path (link indices) from `from` to `to` with the largest bottleneck buffer (≥ one
    /// block), then the fewest hops; with its bottleneck.
    fn widest(
        &mut self,
        adj: &[Vec<(usize, usize)>],
        buffer: &[u64],
        block: u64,
        from: usize,
        to: usize,
    ) -> Option<(Vec<usize>, u64)> {
        self.best.fill((0, u32::MAX));
        self.via.fill(None);
        self.heap.clear();
        self.best[from] = (u64::MAX, 0);
        self.heap.push((u64::MAX, Reverse(0), from));
        while let Some((w, Reverse(h), u)) = self.heap.pop() {
            if (w, h) != self.best[u] {
                continue;
            }
            if u == to {
                break;
            }
            for &(v, li) in &adj[u] {
                let nw = w.min(buffer[li]);
                if nw < block {
                    continue;
                }
                let (bw, bh) = self.best[v];
                if nw > bw || (nw == bw && h + 1 < bh) {
                    self.best[v] = (nw, h + 1);
                    self.via[v] = Some((u, li));
                    self.heap.push((nw, Reverse(h + 1), v));
                }
            }
        }
        if from == to {
            return None;
        }
        let bottleneck = self.best[to].0;
        self.via[to]?;
        Some((self.trace_back(from, to)?, bottleneck))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demand_parsing_and_errors() {
        assert_eq!(
            Demand::parse("constant:1000").unwrap(),
            Demand::Constant { bits_per_s: 1000.0 }
        );
        assert!(matches!(
            Demand::parse("bursty:5000,60,600").unwrap(),
            Demand::Bursty { seed: 0, .. }
        ));
        for bad in [
            "constant",
            "constant:-3",
            "bursty:1,0,5",
            "poisson:3",
            "bursty:1,2",
        ] {
            let e = Demand::parse(bad).unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn bursty_demand_has_the_right_mean_and_is_seeded() {
        let d = Demand::parse("bursty:1000,60,240,7").unwrap();
        let a = d.per_step(0, "a:b", 10, 100_000);
        let b = d.per_step(0, "a:b", 10, 100_000);
        assert_eq!(a, b);
        let mean = a.iter().sum::<f64>() / (100_000.0 * 10.0);
        // Duty cycle on/(on + off) = 20 %.
        assert!((mean / 200.0 - 1.0).abs() < 0.05, "{mean}");
        assert!(a.contains(&0.0) && a.contains(&10_000.0));
        assert_ne!(a, d.per_step(1, "a:c", 10, 100_000));
    }

    #[cfg(feature = "output")]
    #[test]
    fn trace_is_a_step_function_per_pair() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("t.csv");
        std::fs::write(&f, "t_s,bits_per_s,pair\n0,100,\n30,0,\n0,7,x:y\n").unwrap();
        let d = Demand::parse(&format!("trace:{}", f.display())).unwrap();
        assert_eq!(d.per_step(0, "a:b", 20, 3), vec![2000.0, 1000.0, 0.0]);
        assert_eq!(d.per_step(1, "x:y", 20, 2), vec![140.0, 140.0]);
        std::fs::write(&f, "t_s,bits_per_s\n0,100\n0,5\n").unwrap();
        let e = Trace::load(&f).unwrap_err().to_string();
        assert!(e.contains("line 3") && e.contains("t_s"), "{e}");
        std::fs::write(&f, "t_s,bits_per_s\n0,abc\n").unwrap();
        let e = Trace::load(&f).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("bits_per_s"), "{e}");
        std::fs::write(&f, "time,bits\n0,1\n").unwrap();
        assert!(Trace::load(&f).unwrap_err().to_string().contains("t_s"));
    }

    #[test]
    fn router_prefers_wide_then_short_paths() {
        // 0-1-3 (buffers 10, 10), 0-2-3 (5, 100), 0-3 (1).
        let ends = [(0, 1), (1, 3), (0, 2), (2, 3), (0, 3)];
        let mut adj = vec![Vec::new(); 4];
        for (i, &(a, b)) in ends.iter().enumerate() {
            adj[a].push((b, i));
            adj[b].push((a, i));
        }
        let mut r = Router::new(4);
        assert_eq!(
            r.widest(&adj, &[10, 10, 5, 100, 1], 1, 0, 3),
            Some((vec![0, 1], 10))
        );
        assert_eq!(
            r.widest(&adj, &[10, 10, 10, 100, 10], 1, 0, 3),
            Some((vec![4], 10))
        );
        assert_eq!(r.widest(&adj, &[10, 10, 5, 100, 1], 20, 0, 3), None);
        // Fewest hops among links holding the whole demand.
        assert_eq!(
            r.shortest(&adj, &[10, 10, 10, 100, 10], 10, 0, 3),
            Some(vec![4])
        );
        assert_eq!(
            r.shortest(&adj, &[10, 10, 10, 100, 9], 10, 0, 3),
            Some(vec![0, 1])
        );
        assert_eq!(
            r.shortest(&adj, &[10, 9, 10, 100, 9], 10, 0, 3),
            Some(vec![2, 3])
        );
        assert_eq!(r.shortest(&adj, &[1, 1, 1, 1, 1], 10, 0, 3), None);
    }
}
