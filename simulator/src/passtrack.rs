//! Satellite passes from a track over time: a measured link-loss table (time, loss in dB), an
//! elevation track (time, elevation, optionally range) turned into loss by a [`LinkBudget`], or an
//! SGP4 propagation of a TLE ([`crate::tle`]). Each pass is one finite-key block (Lim 2014, the
//! detection statistics of the whole pass summed: simulator/docs/models.md §5.4), and the report gives the
//! sifted and secret key per pass and the rates over the pass.
//!
//! Table semantics: `loss_db` is the channel loss from the satellite's source to the ground
//! detector's input, as the Micius tables quote it (Liao et al., Nature 549, 43 (2017); the
//! detector efficiency is applied separately, `eta_det`). A sample holds for the interval up to the
//! next one; a gap between samples longer than `max_gap_s`, or an empty or non-finite loss, ends a
//! pass. Reading and writing CSV files needs the `output` feature (on with `cli`).

use std::path::Path;

use serde::Serialize;

#[cfg(feature = "output")]
use crate::physics::channel::db_to_transmittance;
use crate::physics::channel::{DvHardware, transmittance_to_db};
use crate::physics::decoy::{AsymptoticBb84, DecoyMethod};
use crate::physics::finite::{Counts, Lim2014};
use crate::physics::postproc::{Authentication, net_block_key};
#[cfg(feature = "output")]
use crate::satellite::{LinkBudget, slant_range_km};

/// One sample of a track: time and channel transmittance (no detector).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TrackSample {
    /// Time, s (from the track's own origin).
    pub t_s: f64,
    /// Channel transmittance; 0 (or less) when there is no link.
    pub eta_channel: f64,
}

/// How passes are evaluated.
#[derive(Debug, Clone, Copy)]
pub struct PassOptions {
    /// Source and detector (repetition rate, dark counts, afterpulses, misalignment, dead time);
    /// its `eta_bob` is the ground detector efficiency.
    pub protocol: Lim2014,
    /// Gap between samples that separates two passes, s.
    pub max_gap_s: f64,
    /// Authentication cost per pass.
    pub auth: Authentication,
}

impl Default for PassOptions {
    /// Lim 2014's detector at 100 MHz (the Micius source rate) with a 50 % efficient detector.
    fn default() -> Self {
        let mut protocol = Lim2014::paper(1e6);
        protocol.hw = DvHardware {
            rep_rate_hz: 1e8,
            eta_bob: 0.5,
            ..DvHardware::LIM2014
        };
        Self {
            protocol,
            max_gap_s: 30.0,
            auth: Authentication::default(),
        }
    }
}

/// One sample of a pass report.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PassPoint {
    /// Time, s.
    pub t_s: f64,
    /// Channel loss, dB.
    pub loss_db: f64,
    /// Sifted (basis-matched) detections per second.
    pub sifted_bps: f64,
    /// QBER of the key basis at this loss.
    pub qber: f64,
    /// Secret key rate an infinitely long block would give at this loss (GLLP, infinite decoys,
    /// same detector), bit/s: the rate over the pass.
    pub asymptotic_key_bps: f64,
}

/// One pass.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PassReport {
    /// Start, s.
    pub start_s: f64,
    /// End, s.
    pub end_s: f64,
    /// Lowest loss of the pass, dB.
    pub min_loss_db: f64,
    /// Highest loss of the pass, dB.
    pub max_loss_db: f64,
    /// Sifted (basis-matched) bits of the pass.
    pub sifted_bits: f64,
    /// Key-basis bits of the pass (the finite-key block n_X).
    pub key_basis_bits: f64,
    /// Finite-key secret key of the pass after authentication, bits.
    pub secret_bits: u64,
    /// Observed key-basis QBER of the pass.
    pub qber: f64,
    /// Samples of the pass.
    #[serde(skip)]
    pub points: Vec<PassPoint>,
}

/// A track file that makes no sense: the file, the line, the column and what is wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{file}: line {line}: {field}: {problem}")]
pub struct TrackError {
    /// The file.
    pub file: String,
    /// 1-based line (1 is the header).
    pub line: usize,
    /// The column.
    pub field: String,
    /// What is wrong.
    pub problem: String,
}

/// Reads a loss table: CSV with columns `t_s` and `loss_db`. An empty `loss_db` means no link.
#[cfg(feature = "output")]
pub fn load_loss_table(path: &Path) -> Result<Vec<TrackSample>, TrackError> {
    let rows = read_columns(path, &["t_s", "loss_db"], &[])?;
    Ok(rows
        .into_iter()
        .map(|r| TrackSample {
            t_s: r[0].unwrap_or(0.0),
            eta_channel: r[1].map_or(0.0, db_to_transmittance),
        })
        .collect())
}

/// Reads an elevation track (`t_s`, `elevation_deg`, optional `range_km`) and turns it into a
/// transmittance track with `budget`; without a range column the slant range of a circular orbit
/// at `altitude_km` is used. Samples below `min_elevation_deg` have no link.
#[cfg(feature = "output")]
pub fn load_elevation_track(
    path: &Path,
    budget: &LinkBudget,
    altitude_km: f64,
    min_elevation_deg: f64,
) -> Result<Vec<TrackSample>, TrackError> {
    let rows = read_columns(path, &["t_s", "elevation_deg"], &["range_km"])?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let el = r[1].unwrap_or(-90.0);
            let el_rad = el.to_radians();
            let range = r[2].unwrap_or_else(|| slant_range_km(altitude_km, el_rad));
            TrackSample {
                t_s: r[0].unwrap_or(0.0),
                eta_channel: if el >= min_elevation_deg {
                    budget.channel(range, el_rad)
                } else {
                    0.0
                },
            }
        })
        .collect())
}

/// Splits a track into passes and evaluates each.
pub fn evaluate_passes(track: &[TrackSample], opts: &PassOptions) -> Vec<PassReport> {
    let mut out = Vec::new();
    let mut start = None;
    for i in 0..=track.len() {
        let live = track.get(i).is_some_and(|s| s.eta_channel > 0.0);
        let gap = i > 0
            && track
                .get(i)
                .is_some_and(|s| s.t_s - track[i - 1].t_s > opts.max_gap_s);
        match start {
            None if live => start = Some(i),
            Some(s) if !live || gap => {
                out.push(evaluate_pass(&track[s..i], track.get(i), opts));
                start = live.then_some(i);
            }
            _ => {}
        }
    }
    out
}

/// One pass from its samples; `next` (if any) closes the last sample's interval.
fn evaluate_pass(
    samples: &[TrackSample],
    next: Option<&TrackSample>,
    opts: &PassOptions,
) -> PassReport {
    let p = &opts.protocol;
    let hw = p.hw;
    // The protocol is configured before the pass, for its median transmittance.
    let mut etas: Vec<f64> = samples.iter().map(|s| s.eta_channel * hw.eta_bob).collect();
    etas.sort_by(f64::total_cmp);
    let (settings, _) = p.optimise(etas[etas.len() / 2]);
    let asym = AsymptoticBb84 {
        hw,
        f_ec: 1.16,
        p_z: 0.5,
        method: DecoyMethod::Infinite,
    };
    let mut counts = Counts::<3>::default();
    let mut points = Vec::with_capacity(samples.len());
    let default_dt = if samples.len() > 1 {
        samples[1].t_s - samples[0].t_s
    } else {
        1.0
    };
    for (i, s) in samples.iter().enumerate() {
        let until = samples
            .get(i + 1)
            .or(next)
            .map_or(s.t_s + default_dt, |n| n.t_s);
        let dt = (until - s.t_s).clamp(0.0, opts.max_gap_s);
        let eta_sys = s.eta_channel * hw.eta_bob;
        let per_s = p.counts(&settings, eta_sys, hw.rep_rate_hz);
        let sifted = per_s.key_total() + per_s.n_test.iter().sum::<f64>();
        counts += p.counts(&settings, eta_sys, hw.rep_rate_hz * dt);
        points.push(PassPoint {
            t_s: s.t_s,
            loss_db: transmittance_to_db(s.eta_channel),
            sifted_bps: sifted,
            qber: per_s.key_qber(),
            asymptotic_key_bps: asym.optimal_mu(eta_sys).1.key_per_pulse * hw.rep_rate_hz,
        });
    }
    let k = p.key_from_counts(&settings, &counts);
    let losses = points.iter().map(|x| x.loss_db);
    PassReport {
        start_s: samples[0].t_s,
        end_s: samples.last().map_or(0.0, |s| {
            next.map_or(s.t_s + default_dt, |n| n.t_s.min(s.t_s + opts.max_gap_s))
        }),
        min_loss_db: losses.clone().fold(f64::INFINITY, f64::min),
        max_loss_db: losses.fold(f64::NEG_INFINITY, f64::max),
        sifted_bits: counts.key_total() + counts.n_test.iter().sum::<f64>(),
        key_basis_bits: counts.key_total(),
        secret_bits: net_block_key(k.key_bits, &opts.auth),
        qber: counts.key_qber(),
        points,
    }
}

/// Writes `passes.csv` (one row per pass), `pass_points.csv` (one row per sample) and
/// `passes.json` into `dir`.
#[cfg(feature = "output")]
pub fn write_passes(passes: &[PassReport], dir: &Path) -> Result<(), crate::network::OutputError> {
    std::fs::create_dir_all(dir)?;
    let mut w = csv::Writer::from_path(dir.join("passes.csv"))?;
    for p in passes {
        w.serialize(p)?;
    }
    w.flush()?;
    let mut w = csv::Writer::from_path(dir.join("pass_points.csv"))?;
    w.write_record([
        "pass",
        "t_s",
        "loss_db",
        "sifted_bps",
        "qber",
        "asymptotic_key_bps",
    ])?;
    for (i, p) in passes.iter().enumerate() {
        for x in &p.points {
            w.write_record([
                i.to_string(),
                format!("{}", x.t_s),
                format!("{:.4}", x.loss_db),
                format!("{:.6e}", x.sifted_bps),
                format!("{:.6}", x.qber),
                format!("{:.6e}", x.asymptotic_key_bps),
            ])?;
        }
    }
    w.flush()?;
    std::fs::write(dir.join("passes.json"), serde_json::to_vec_pretty(passes)?)?;
    Ok(())
}

impl TrackError {
    /// An error at `line` (1 is the header, 0 the file itself) of `path`.
    pub fn new(path: &Path, line: usize, field: &str, problem: String) -> Self {
        Self {
            file: path.display().to_string(),
            line,
            field: field.to_string(),
            problem,
        }
    }
}

/// Opens a CSV file with a header row, cells trimmed, `#` lines ignored.
#[cfg(feature = "output")]
pub(crate) fn open_table(
    path: &Path,
) -> Result<(csv::Reader<std::fs::File>, csv::StringRecord), TrackError> {
    let mut rdr = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .comment(Some(b'#'))
        .from_path(path)
        .map_err(|e| TrackError::new(path, 0, "file", e.to_string()))?;
    let headers = rdr
        .headers()
        .map_err(|e| TrackError::new(path, 1, "header", e.to_string()))?
        .clone();
    Ok((rdr, headers))
}

/// Reads numeric columns by header name; `required` must be present, `optional` may be. Returns
/// per row the values in the order required ++ optional (None for empty cells or absent columns).
#[cfg(feature = "output")]
fn read_columns(
    path: &Path,
    required: &[&str],
    optional: &[&str],
) -> Result<Vec<Vec<Option<f64>>>, TrackError> {
    let bad =
        |line: usize, field: &str, problem: String| TrackError::new(path, line, field, problem);
    let (mut rdr, headers) = open_table(path)?;
    let mut cols = Vec::new();
    for name in required {
        match headers.iter().position(|h| h == *name) {
            Some(c) => cols.push(Some(c)),
            None => {
                return Err(bad(
                    1,
                    "header",
                    format!("needs the columns {}", required.join(", ")),
                ));
            }
        }
    }
    for name in optional {
        cols.push(headers.iter().position(|h| h == *name));
    }
    let names: Vec<&str> = required.iter().chain(optional).copied().collect();
    let mut out: Vec<Vec<Option<f64>>> = Vec::new();
    for (i, rec) in rdr.records().enumerate() {
        let rec = rec.map_err(|e| bad(i + 2, "row", e.to_string()))?;
        let line = rec.position().map_or(i + 2, |p| p.line() as usize);
        let mut row = Vec::with_capacity(cols.len());
        for (j, c) in cols.iter().enumerate() {
            let name = names[j];
            let cell = c.and_then(|c| rec.get(c)).unwrap_or("");
            if cell.is_empty() {
                if j == 0 {
                    return Err(bad(line, name, "a time is required".into()));
                }
                row.push(None);
                continue;
            }
            match cell.parse::<f64>() {
                Ok(v) if v.is_finite() => row.push(Some(v)),
                _ => return Err(bad(line, name, format!("`{cell}` is not a finite number"))),
            }
        }
        if let (Some(Some(t)), Some(prev)) = (row.first(), out.last())
            && prev[0].is_some_and(|p| *t <= p)
        {
            return Err(bad(line, required[0], format!("{t}: times must increase")));
        }
        out.push(row);
    }
    if out.is_empty() {
        return Err(bad(1, "file", "no rows".into()));
    }
    Ok(out)
}

#[cfg(test)]
#[cfg(feature = "output")]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn loss_table_splits_passes_at_gaps_and_empty_loss() {
        let dir = tempfile::tempdir().unwrap();
        let mut text = String::from("t_s,loss_db\n");
        for t in 0..100 {
            text.push_str(&format!("{t},32\n"));
        }
        text.push_str("100,\n");
        for t in 5000..5050 {
            text.push_str(&format!("{t},35\n"));
        }
        let track = load_loss_table(&write(dir.path(), "l.csv", &text)).unwrap();
        let passes = evaluate_passes(&track, &PassOptions::default());
        assert_eq!(passes.len(), 2);
        assert_eq!((passes[0].start_s, passes[0].end_s), (0.0, 100.0));
        assert_eq!(passes[1].points.len(), 50);
        assert!((passes[0].min_loss_db - 32.0).abs() < 1e-9);
        // Sifted bits are the integral of the sifted rate over the pass.
        let integral: f64 = passes[0].points.iter().map(|p| p.sifted_bps).sum();
        assert!((passes[0].sifted_bits / integral - 1.0).abs() < 1e-9);
        assert!(passes[0].sifted_bits > passes[0].key_basis_bits);
        assert!(passes[0].secret_bits as f64 <= passes[0].key_basis_bits);
    }

    #[test]
    fn bad_tables_name_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let e =
            load_loss_table(&write(dir.path(), "a.csv", "t_s,loss_db\n0,30\n0,31\n")).unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (3, "t_s"));
        let e = load_loss_table(&write(dir.path(), "b.csv", "t_s,loss_db\n0,x\n")).unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (2, "loss_db"));
        assert!(e.to_string().contains("b.csv"));
        let e = load_loss_table(&write(dir.path(), "c.csv", "time,loss\n0,1\n")).unwrap_err();
        assert_eq!(e.field, "header");
        let e = load_elevation_track(
            &write(
                dir.path(),
                "d.csv",
                "t_s,elevation_deg,range_km\n0,20,abc\n",
            ),
            &LinkBudget::MICIUS_LIKE,
            500.0,
            10.0,
        )
        .unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (2, "range_km"));
    }
}
