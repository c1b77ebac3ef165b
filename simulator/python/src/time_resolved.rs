//! Bindings of the time-resolved parts: network runs with key buffers (`qkd-sim dynamics`) and
//! satellite passes from loss tables or TLEs (`qkd-sim pass`). Conversions only.

use numpy::PyArray1;
use pyo3::exceptions::{PyIOError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use qkd_simulator::dynamics::{Demand, DynamicsOptions, baseline_links, run_dynamics as run};
use qkd_simulator::passtrack::{PassOptions, PassReport, TrackSample, evaluate_passes};
use qkd_simulator::physics::channel::db_to_transmittance;
use qkd_simulator::satellite::{GroundStation, LinkBudget};
use qkd_simulator::scenario::Scenario;
use qkd_simulator::tle::Tle;

use crate::{Arr1, add_pairs, from_rust, merge, value_error};

/// run_dynamics(path, demand="constant:1000", *, days=None, step_s=60, aggregate_s=3600,
/// block_bits=256, capacity_bits=1e9, initial_bits=0, pairs=None, baseline=True, out=None)
/// -> dict
///
/// `qkd-sim dynamics`: the scenario with a key buffer per link, `demand` on every pair
/// (constant:BPS, bursty:BPS,ON_S,OFF_S[,SEED] or trace:FILE.csv; bit/s and s), relays drawing
/// whole blocks of `block_bits` hop by hop. `days` overrides the scenario's span; `pairs`
/// (list of "A:B") adds pairs; `baseline` also runs the scenario without events, for the key
/// lost to cuts and attacks; `out` writes the CSV/JSON files as the CLI does.
///
/// Returns the summary (per pair: demanded_bits, served_bits, unmet_bits, served_fraction,
/// satisfied_steps, max_hops, baseline_served_bits; per link: generated_bits, consumed_bits,
/// overflow_bits, final_buffer_bits, empty_fraction) with, per pair, the arrays t_s,
/// demanded_bits, served_bits and unmet_bits and, per link, t_s, buffer_bits, generated_bits
/// and consumed_bits (one value per bucket of `aggregate_s` seconds).
#[pyfunction]
#[pyo3(signature = (path, demand="constant:1000", *, days=None, step_s=60, aggregate_s=3600,
    block_bits=256, capacity_bits=1e9, initial_bits=0.0, pairs=None, baseline=true, out=None))]
#[allow(clippy::too_many_arguments)]
fn run_dynamics<'py>(
    py: Python<'py>,
    path: std::path::PathBuf,
    demand: &str,
    days: Option<f64>,
    step_s: u64,
    aggregate_s: u64,
    block_bits: u64,
    capacity_bits: f64,
    initial_bits: f64,
    pairs: Option<Vec<String>>,
    baseline: bool,
    out: Option<std::path::PathBuf>,
) -> PyResult<Bound<'py, PyAny>> {
    let demand = Demand::parse(demand).map_err(value_error)?;
    let mut sc = Scenario::load(&path).map_err(value_error)?;
    add_pairs(&mut sc, pairs.unwrap_or_default(), &path)?;
    if let Some(d) = days {
        if !(d > 0.0 && d <= 366.0) {
            return Err(PyValueError::new_err(format!(
                "days = {d}: simulate between a second and a year"
            )));
        }
        sc.scenario.duration_s = (d * 86_400.0).round() as u64;
    }
    if step_s == 0 || block_bits == 0 || capacity_bits.is_nan() || capacity_bits < block_bits as f64
    {
        return Err(PyValueError::new_err(
            "step_s and block_bits must be > 0, and capacity_bits at least one block",
        ));
    }
    if !(initial_bits.is_finite() && initial_bits >= 0.0 && capacity_bits.is_finite()) {
        return Err(PyValueError::new_err(
            "initial_bits and capacity_bits are finite numbers of bits ≥ 0",
        ));
    }
    let opts = DynamicsOptions {
        step_s,
        block_bits,
        capacity_bits: capacity_bits as u64,
        initial_bits: initial_bits as u64,
        max_paths: 3,
        aggregate_s,
    };
    let r = py
        .detach(|| {
            let links = sc.build_links(&path, &|_| ())?;
            let mut r = run(&sc, &links, &demand, &opts);
            if baseline {
                let b = baseline_links(&sc, &path)?;
                r.set_baseline(&run(&sc, &b, &demand, &opts));
            }
            Ok::<_, qkd_simulator::scenario::ScenarioError>(r)
        })
        .map_err(value_error)?;
    if let Some(dir) = out {
        r.write(&dir)
            .map_err(|e| PyIOError::new_err(e.to_string()))?;
    }
    let summary = from_rust(py, &r)?;
    let d = summary.cast::<PyDict>()?;
    let list = |key: &str| -> PyResult<Bound<'py, PyAny>> {
        d.get_item(key)?
            .ok_or_else(|| value_error(format!("no {key}")))
    };
    let pairs_py = list("pairs")?;
    for (i, p) in r.pairs.iter().enumerate() {
        let pd = pairs_py.get_item(i)?;
        let col = |f: &dyn Fn(&qkd_simulator::dynamics::PairBucket) -> u64| {
            PyArray1::from_vec(py, p.buckets.iter().map(f).collect::<Vec<u64>>())
        };
        pd.set_item("t_s", col(&|b| b.t_s))?;
        pd.set_item("demanded", col(&|b| b.demanded_bits))?;
        pd.set_item("served", col(&|b| b.served_bits))?;
        pd.set_item("unmet", col(&|b| b.unmet_bits))?;
    }
    let links_py = list("links")?;
    for (i, l) in r.links.iter().enumerate() {
        let ld = links_py.get_item(i)?;
        let col = |f: &dyn Fn(&qkd_simulator::dynamics::LinkBucket) -> u64| {
            PyArray1::from_vec(py, l.buckets.iter().map(f).collect::<Vec<u64>>())
        };
        ld.set_item("t_s", col(&|b| b.t_s))?;
        ld.set_item("buffer", col(&|b| b.buffer_bits))?;
        ld.set_item("generated", col(&|b| b.generated_bits))?;
        ld.set_item("consumed", col(&|b| b.consumed_bits))?;
    }
    Ok(summary)
}

fn pass_options(
    py: Python<'_>,
    hardware: Option<&Bound<'_, PyAny>>,
    max_gap_s: f64,
) -> PyResult<PassOptions> {
    let mut opts = PassOptions::default();
    if let Some(h) = hardware {
        opts.protocol.hw = merge(py, &opts.protocol.hw, h)?;
    }
    opts.protocol.hw.validate().map_err(value_error)?;
    if !(max_gap_s > 0.0 && max_gap_s.is_finite()) {
        return Err(PyValueError::new_err(format!(
            "max_gap_s = {max_gap_s}: must be a finite number of seconds > 0"
        )));
    }
    opts.max_gap_s = max_gap_s;
    Ok(opts)
}

fn pass_list<'py>(py: Python<'py>, passes: &[PassReport]) -> PyResult<Bound<'py, PyAny>> {
    let list = PyList::empty(py);
    for p in passes {
        let d = from_rust(py, p)?;
        let col = |f: &dyn Fn(&qkd_simulator::passtrack::PassPoint) -> f64| {
            PyArray1::from_vec(py, p.points.iter().map(f).collect::<Vec<f64>>())
        };
        d.set_item("t_s", col(&|x| x.t_s))?;
        d.set_item("loss_db", col(&|x| x.loss_db))?;
        d.set_item("sifted_bps", col(&|x| x.sifted_bps))?;
        d.set_item("qber_t", col(&|x| x.qber))?;
        d.set_item("asymptotic_key_bps", col(&|x| x.asymptotic_key_bps))?;
        list.append(d)?;
    }
    Ok(list.into_any())
}

/// passes_from_loss(t_s, loss_db, *, hardware=None, max_gap_s=30.0) -> list[dict]
///
/// Satellite passes from a loss table over time (`qkd-sim pass --loss-table`): times (s) and
/// channel losses (dB, without the ground detector; NaN = no link). `hardware` (dict) overrides
/// the source and detector (default: Lim 2014's detector at 100 MHz with eta_bob = 0.5, the
/// detector efficiency). Each pass: start_s, end_s, min_loss_db, max_loss_db, sifted_bits,
/// key_basis_bits, secret_bits (finite key of the pass), qber, and the arrays t_s, loss_db,
/// sifted_bps, qber_t and asymptotic_key_bps over the pass.
#[pyfunction]
#[pyo3(signature = (t_s, loss_db, *, hardware=None, max_gap_s=30.0))]
fn passes_from_loss<'py>(
    py: Python<'py>,
    t_s: Arr1<'py>,
    loss_db: Arr1<'py>,
    hardware: Option<Bound<'py, PyAny>>,
    max_gap_s: f64,
) -> PyResult<Bound<'py, PyAny>> {
    let (t, l) = (t_s.as_array(), loss_db.as_array());
    if t.len() != l.len() {
        return Err(PyValueError::new_err(format!(
            "t_s has {} values and loss_db {}",
            t.len(),
            l.len()
        )));
    }
    let mut track = Vec::with_capacity(t.len());
    for (i, (&t, &l)) in t.iter().zip(l.iter()).enumerate() {
        if !t.is_finite() || track.last().is_some_and(|s: &TrackSample| t <= s.t_s) {
            return Err(PyValueError::new_err(format!(
                "t_s[{i}] = {t}: times are finite and increase"
            )));
        }
        track.push(TrackSample {
            t_s: t,
            eta_channel: if l.is_finite() {
                db_to_transmittance(l)
            } else {
                0.0
            },
        });
    }
    let opts = pass_options(py, hardware.as_ref(), max_gap_s)?;
    let passes = py.detach(|| evaluate_passes(&track, &opts));
    pass_list(py, &passes)
}

/// tle_passes(tle, station, *, norad_id=None, start_unix_s=None, hours=24.0, step_s=1.0,
/// night_only=True, hardware=None) -> list[dict]
///
/// `qkd-sim pass --tle`: the satellite of the TLE text `tle` (two- or three-line sets; the
/// first, or `norad_id`) propagated with SGP4 over the station (dict: lat_deg, lon_deg,
/// min_elevation_deg, default 15) from `start_unix_s` (Unix s; default the TLE epoch) for
/// `hours`, the loss from the Micius-like link budget. Passes as `passes_from_loss`, with
/// start_s and end_s in seconds after the start.
#[pyfunction]
#[pyo3(signature = (tle, station, *, norad_id=None, start_unix_s=None, hours=24.0, step_s=1.0,
    night_only=true, hardware=None))]
#[allow(clippy::too_many_arguments)]
fn tle_passes<'py>(
    py: Python<'py>,
    tle: &str,
    station: Bound<'py, PyAny>,
    norad_id: Option<u64>,
    start_unix_s: Option<f64>,
    hours: f64,
    step_s: f64,
    night_only: bool,
    hardware: Option<Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let sets = Tle::parse(tle, "<tle>").map_err(value_error)?;
    let sat = match norad_id {
        Some(id) => sets
            .iter()
            .find(|t| t.norad_id == id)
            .ok_or_else(|| PyValueError::new_err(format!("no satellite {id} in the TLE text")))?,
        None => &sets[0],
    };
    let base = GroundStation {
        lat_deg: 0.0,
        lon_deg: 0.0,
        min_elevation_deg: 15.0,
        clear_sky_prob: 1.0,
    };
    let st: GroundStation = merge(py, &base, &station)?;
    if !((-90.0..=90.0).contains(&st.lat_deg) && (-180.0..=360.0).contains(&st.lon_deg)) {
        return Err(PyValueError::new_err(
            "station: latitude in [−90, 90], longitude in [−180, 360]",
        ));
    }
    if !(hours > 0.0 && hours <= 744.0 && step_s > 0.0 && step_s <= 60.0) {
        return Err(PyValueError::new_err(
            "hours in (0, 744] and step_s in (0, 60]",
        ));
    }
    let mut opts = pass_options(py, hardware.as_ref(), 30.0)?;
    opts.max_gap_s = opts.max_gap_s.max(2.0 * step_s);
    let start = start_unix_s.unwrap_or(sat.epoch_unix_s);
    let passes = py
        .detach(|| {
            let track = sat.track(
                &st,
                &LinkBudget::MICIUS_LIKE,
                start,
                hours * 3600.0,
                step_s,
                -12.0,
                night_only,
            )?;
            Ok::<_, qkd_simulator::tle::TleError>(evaluate_passes(&track, &opts))
        })
        .map_err(value_error)?;
    pass_list(py, &passes)
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(run_dynamics, m)?)?;
    m.add_function(wrap_pyfunction!(passes_from_loss, m)?)?;
    m.add_function(wrap_pyfunction!(tle_passes, m)?)?;
    Ok(())
}
