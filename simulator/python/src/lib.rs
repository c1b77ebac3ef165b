//! `qkd_sim`: Python bindings of `qkd-simulator`. Every function is a thin wrapper over the
//! Rust library: the same code computes the same numbers as `qkd-sim` and the Rust API.
//! Numeric inputs are array-like (NumPy arrays, lists or scalars) and numeric outputs NumPy
//! arrays; structured inputs and outputs (link specifications, satellite passes, run
//! summaries) are dicts with the field names of the configuration files.
//!
//! This crate owns only the conversion between Python and Rust values; it must never compute
//! physics of its own.

#![forbid(unsafe_code)]

mod protocols;
mod time_resolved;

use numpy::{AllowTypeChange, IntoPyArray, PyArray1, PyArrayDyn, PyArrayLike1, PyArrayLikeDyn};
use pyo3::exceptions::{PyIOError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyList, PyString};
use qkd_simulator::curve::{Axis, CurveProtocol, for_each_rate_point, sweep};
use qkd_simulator::detail::{BoundFamily, DetailedPoint, FixedParams};
use qkd_simulator::physics::bounds;
use qkd_simulator::physics::channel::DvHardware;
use qkd_simulator::physics::cv::Gg02;
use qkd_simulator::physics::decoy::{AsymptoticBb84, DecoyMethod};
use qkd_simulator::physics::finite::{Lim2014, LimFixed, Rusca2018, RuscaFixed, Secrecy};
use qkd_simulator::physics::postproc::EcModel;
use qkd_simulator::physics::twinfield::TwinField;
use qkd_simulator::spec::{Built, HardwarePreset, LinkModelSpec};

type Arr<'py> = PyArrayLikeDyn<'py, f64, AllowTypeChange>;
type Arr1<'py> = PyArrayLike1<'py, f64, AllowTypeChange>;
type Columns<'py> = Bound<'py, PyDict>;
/// A named column: how to get its value from a row.
type Column<'a, T> = (&'a str, &'a dyn Fn(&T) -> f64);

fn value_error(e: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(e.to_string())
}

/// Element-wise `f` over an array-like, same shape out.
fn map<'py>(py: Python<'py>, x: &Arr<'py>, f: impl Fn(f64) -> f64) -> Bound<'py, PyArrayDyn<f64>> {
    x.as_array().mapv(f).into_pyarray(py)
}

/// A dict of NumPy columns from rows, read once: every column is filled in the same pass.
fn columns<'py, T>(py: Python<'py>, rows: &[T], cols: &[Column<'_, T>]) -> PyResult<Columns<'py>> {
    let mut out: Vec<Vec<f64>> = cols
        .iter()
        .map(|_| Vec::with_capacity(rows.len()))
        .collect();
    for row in rows {
        for ((_, f), v) in cols.iter().zip(out.iter_mut()) {
            v.push(f(row));
        }
    }
    let d = PyDict::new(py);
    for ((name, _), v) in cols.iter().zip(out) {
        d.set_item(*name, PyArray1::from_vec(py, v))?;
    }
    Ok(d)
}

/// JSON text of a Python object (dict, list, str, numbers), through Python's `json` module.
fn to_json(py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<String> {
    py.import("json")?.call_method1("dumps", (obj,))?.extract()
}

/// A Python object from a serializable Rust value, through JSON.
fn from_rust<'py, T: serde::Serialize>(py: Python<'py>, v: &T) -> PyResult<Bound<'py, PyAny>> {
    let text = serde_json::to_string(v).map_err(value_error)?;
    py.import("json")?.call_method1("loads", (text,))
}

// ---------------------------------------------------------------- hardware

fn preset(name: &str) -> PyResult<HardwarePreset> {
    Ok(match name {
        "gys" => HardwarePreset::Gys,
        "kth" => HardwarePreset::Kth,
        "lim2014" => HardwarePreset::Lim2014,
        "metro-ghz" => HardwarePreset::MetroGhz,
        other => {
            return Err(PyValueError::new_err(format!(
                "hardware `{other}`: expected one of gys, kth, lim2014, metro-ghz"
            )));
        }
    })
}

/// Hardware from a preset name or a dict (`{"preset": ..., field: value, ...}` with the
/// fields of `hardware()`).
fn dv_hardware(py: Python<'_>, hw: &Bound<'_, PyAny>) -> PyResult<DvHardware> {
    if let Ok(name) = hw.extract::<String>() {
        return Ok(preset(&name)?.hardware());
    }
    let spec: qkd_simulator::spec::HardwareSpec = serde_json::from_str(&to_json(py, hw)?)
        .map_err(|e| value_error(format!("hardware: {e}")))?;
    Ok(spec.resolve(HardwarePreset::Gys))
}

/// hardware(preset="gys", **overrides) -> dict
///
/// The parameters of a hardware preset (`gys`, `kth`, `lim2014`, `metro-ghz`) with optional
/// overrides. Units: rep_rate_hz in Hz, alpha_db_per_km in dB/km, extra_loss_db in dB,
/// eta_bob (optics × detector efficiency), dark_count_prob (per detector per gate),
/// afterpulse_prob and misalignment as probabilities, dead_time_s in s. Any function taking
/// `hardware=` accepts the preset name or such a dict.
#[pyfunction]
#[pyo3(signature = (preset="gys", **overrides))]
fn hardware<'py>(
    py: Python<'py>,
    preset: &str,
    overrides: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyAny>> {
    let d = PyDict::new(py);
    d.set_item("preset", preset)?;
    if let Some(o) = overrides {
        d.update(o.as_mapping())?;
    }
    let hw = dv_hardware(py, d.as_any())?;
    hw.validate().map_err(value_error)?;
    from_rust(py, &hw)
}

// ---------------------------------------------------------------- bounds

/// plob(eta) -> ndarray
///
/// PLOB bound −log₂(1 − η), secret bits per channel use, at channel transmittance η ∈ [0, 1]
/// (Pirandola et al. 2017). Accurate down to η = 1e-300.
#[pyfunction]
fn plob<'py>(py: Python<'py>, eta: Arr<'py>) -> Bound<'py, PyArrayDyn<f64>> {
    map(py, &eta, bounds::plob)
}

/// tgw(eta) -> ndarray
///
/// TGW bound log₂[(1 + η)/(1 − η)], bits per channel use (Takeoka, Guha, Wilde 2014).
#[pyfunction]
fn tgw<'py>(py: Python<'py>, eta: Arr<'py>) -> Bound<'py, PyArrayDyn<f64>> {
    map(py, &eta, bounds::tgw)
}

/// single_repeater(eta) -> ndarray
///
/// Single-repeater bound −log₂(1 − √η), bits per channel use at end-to-end channel
/// transmittance η: the bound twin-field protocols are held against.
#[pyfunction]
fn single_repeater<'py>(py: Python<'py>, eta: Arr<'py>) -> Bound<'py, PyArrayDyn<f64>> {
    map(py, &eta, bounds::single_repeater)
}

/// plob_thermal(eta, n_bar) -> ndarray
///
/// PLOB upper bound of a thermal-loss channel with n_bar mean thermal photons, bits per use,
/// clamped at 0.
#[pyfunction]
fn plob_thermal<'py>(py: Python<'py>, eta: Arr<'py>, n_bar: f64) -> Bound<'py, PyArrayDyn<f64>> {
    map(py, &eta, |e| bounds::plob_thermal(e, n_bar))
}

/// db_to_transmittance(loss_db) -> ndarray
///
/// Transmittance 10^(−dB/10) of a loss in dB.
#[pyfunction]
fn db_to_transmittance<'py>(py: Python<'py>, loss_db: Arr<'py>) -> Bound<'py, PyArrayDyn<f64>> {
    map(
        py,
        &loss_db,
        qkd_simulator::physics::channel::db_to_transmittance,
    )
}

// ---------------------------------------------------------------- curves

/// The protocol of a curve from the names of `qkd-sim rate`, with the CLI's defaults.
#[allow(clippy::too_many_arguments)]
fn curve_protocol(
    py: Python<'_>,
    name: &str,
    block_bits: f64,
    mu: Option<f64>,
    nu: Option<f64>,
    p_z: Option<f64>,
    alpha: Option<f64>,
    params: Option<&Bound<'_, PyAny>>,
    more: &protocols::MoreCurveArgs,
) -> PyResult<(CurveProtocol, Option<f64>)> {
    let parse = |what: &str| -> PyResult<Option<String>> {
        params
            .map(|p| to_json(py, p))
            .transpose()
            .map_err(|e| PyValueError::new_err(format!("{what} params: {e}")))
    };
    // `mu` is the protocol's own value for vacuum + weak and a fixed parameter elsewhere.
    Ok(match name {
        "decoy-infinite" => (CurveProtocol::DecoyInfinite, mu),
        "decoy-vacuum-weak" => (
            CurveProtocol::DecoyVacuumWeak {
                mu: mu.unwrap_or(0.48),
                nu: nu.unwrap_or(0.05),
            },
            None,
        ),
        "no-decoy" => (CurveProtocol::NoDecoy, mu),
        "efficient-bb84" => (
            CurveProtocol::EfficientBb84 {
                p_z: p_z.unwrap_or(0.9),
            },
            mu,
        ),
        "finite-key" => (CurveProtocol::FiniteKey { block_bits }, mu),
        "one-decoy" => (CurveProtocol::OneDecoy { block_bits }, mu),
        "cv-gg02" => {
            let mut m: Gg02 = match parse("cv-gg02")? {
                Some(t) => serde_json::from_str(&t).map_err(value_error)?,
                None => Gg02::REFERENCE,
            };
            if let Some(a) = alpha {
                m.alpha_db_per_km = a;
            }
            (CurveProtocol::CvGg02(m), mu)
        }
        "twin-field" => {
            let mut m: TwinField = match parse("twin-field")? {
                Some(t) => serde_json::from_str(&t).map_err(value_error)?,
                None => TwinField::LONG_HAUL,
            };
            if let Some(a) = alpha {
                m.alpha_db_per_km = a;
            }
            (CurveProtocol::TwinField(m), mu)
        }
        "mdi-qkd" | "bbm92" | "sns-tf" | "cv-qkd" => (
            protocols::curve_protocol(py, name, alpha, params, more)?,
            mu,
        ),
        other => {
            return Err(PyValueError::new_err(format!(
                "protocol `{other}`: expected one of decoy-infinite, decoy-vacuum-weak, no-decoy, \
                 efficient-bb84, finite-key, one-decoy, cv-gg02, twin-field, mdi-qkd, bbm92, \
                 sns-tf, cv-qkd"
            )));
        }
    })
}

/// Declares the float columns of `rate_curve`: their names, in order, and one point's values.
macro_rules! curve_columns {
    ($p:ident, $opt:ident; $($name:literal => $value:expr,)*) => {
        /// Names of the float columns of `rate_curve`, in the order of [`curve_row`].
        const CURVE_COLUMNS: &[&str] = &[$($name,)*];
        /// One point's values of the float columns, NaN where the protocol has no such value.
        fn curve_row($p: &DetailedPoint) -> [f64; CURVE_COLUMNS.len()] {
            let $opt = |v: Option<f64>| v.unwrap_or(f64::NAN);
            [$($value,)*]
        }
    };
}

curve_columns! {
    p, opt;
    "x" => p.point.x,
    "length_km" => p.point.length_km,
    "loss_db" => p.point.loss_db,
    "key_per_pulse" => p.point.key_per_pulse,
    "key_bps" => p.point.key_bps,
    "qber" => p.point.qber,
    "plob_per_use" => p.point.plob_per_use,
    "plob_bps" => p.point.plob_bps,
    "tgw_per_use" => p.point.tgw_per_use,
    "bound_per_use" => p.bound_per_use,
    "bound_bps" => p.bound_bps,
    "mu1" => opt(p.params.mu1),
    "mu2" => opt(p.params.mu2),
    "mu3" => opt(p.params.mu3),
    "p_mu1" => opt(p.params.p_mu1),
    "p_mu2" => opt(p.params.p_mu2),
    "p_mu3" => opt(p.params.p_mu3),
    "p_basis" => opt(p.params.p_basis),
    "gain_mu1" => opt(p.estimates.gain_mu1),
    "gain_mu2" => opt(p.estimates.gain_mu2),
    "gain_mu3" => opt(p.estimates.gain_mu3),
    "error_rate_mu1" => opt(p.estimates.error_rate_mu1),
    "error_rate_mu2" => opt(p.estimates.error_rate_mu2),
    "error_rate_mu3" => opt(p.estimates.error_rate_mu3),
    "y0" => opt(p.estimates.y0),
    "y1_lower" => opt(p.estimates.y1_lower),
    "q1_lower" => opt(p.estimates.q1_lower),
    "e1_upper" => opt(p.estimates.e1_upper),
    "phase_error_upper" => opt(p.estimates.phase_error_upper),
    "s0_lower" => opt(p.estimates.s0_lower),
    "s1_lower" => opt(p.estimates.s1_lower),
    "key_bits_per_block" => opt(p.estimates.key_bits_per_block),
    "pulses_per_block" => opt(p.estimates.pulses_per_block),
    "i_ab" => opt(p.estimates.i_ab),
    "chi_be" => opt(p.estimates.chi_be),
}

/// Points written at a time into each column: see [`CurveColumns`].
const BLOCK: usize = 32;

/// The columns of a curve, filled point by point while the curve is computed: each point is
/// read once, while it is still in the cache, and no vector of points is kept. Points are
/// gathered column-wise in a small block (a few KB, in L1) and each column then takes the
/// block's values in one contiguous copy.
///
/// Measured on a 1,000-point curve (benchmarks/bench.py, Python call against the Rust call):
/// a table of closures read back from the vector of points cost 27 ns a point (+10 %); one
/// `push` per value into each column, 40 ns (+11 %); one row-major table whose columns are
/// strided views, 7 ns (+3.5 %, but every column then keeps the whole table and is not
/// contiguous); this, 17 ns (+6 %).
struct CurveColumns {
    /// Every column so far, but for the block's values.
    values: [Vec<f64>; CURVE_COLUMNS.len()],
    /// The latest points, column-wise: `block[j][k]` is column `j` of the `k`-th.
    block: [[f64; BLOCK]; CURVE_COLUMNS.len()],
    /// Points in `block`.
    in_block: usize,
    exceeds: Vec<bool>,
    bound: Option<BoundFamily>,
}

impl CurveColumns {
    fn with_capacity(n: usize) -> Self {
        CurveColumns {
            values: std::array::from_fn(|_| Vec::with_capacity(n)),
            block: [[0.0; BLOCK]; CURVE_COLUMNS.len()],
            in_block: 0,
            exceeds: Vec::with_capacity(n),
            bound: None,
        }
    }

    fn push(&mut self, p: &DetailedPoint) {
        let k = self.in_block;
        for (b, v) in self.block.iter_mut().zip(curve_row(p)) {
            b[k] = v;
        }
        self.in_block += 1;
        if self.in_block == BLOCK {
            self.flush();
        }
        self.exceeds.push(p.exceeds_bound);
        self.bound.get_or_insert(p.bound);
    }

    /// Moves the block's points to the columns.
    fn flush(&mut self) {
        let k = self.in_block;
        for (col, b) in self.values.iter_mut().zip(&self.block) {
            col.extend_from_slice(&b[..k]);
        }
        self.in_block = 0;
    }

    /// The dict of NumPy columns, each array taking its vector without a copy.
    fn into_dict(mut self, py: Python<'_>) -> PyResult<Columns<'_>> {
        self.flush();
        // The keys, made once per process rather than once per call.
        static NAMES: PyOnceLock<Vec<Py<PyString>>> = PyOnceLock::new();
        let names = NAMES.get_or_init(py, || {
            CURVE_COLUMNS
                .iter()
                .map(|n| PyString::intern(py, n).unbind())
                .collect()
        });
        let d = PyDict::new(py);
        for (name, v) in names.iter().zip(self.values) {
            d.set_item(name.bind(py), PyArray1::from_vec(py, v))?;
        }
        d.set_item("exceeds_bound", PyArray1::from_vec(py, self.exceeds))?;
        // The bound family by its serde name ("plob", "single-repeater"), as the CLI writes
        // it, without a round trip through Python's `json`.
        let bound: Option<String> = self
            .bound
            .map(|b| serde_json::to_value(b).map_err(value_error))
            .transpose()?
            .and_then(|v| v.as_str().map(str::to_owned));
        d.set_item("bound", bound)?;
        Ok(d)
    }
}

/// rate_curve(protocol, start=0.0, stop=200.0, points=201, *, x=None, axis="distance",
/// hardware="gys", f_ec=1.22, block_bits=1e7, mu=None, nu=None, p_z=None, mu2=None, mu3=None,
/// p_mu1=None, p_mu2=None, p_basis=None, alpha_db_per_km=None, params=None, pulses=None,
/// detection=None, symbols=None) -> dict
///
/// Secret key rate versus fibre length (axis="distance", x in km) or channel loss
/// (axis="loss", x in dB), exactly as `qkd-sim rate`: same protocols, same defaults, same
/// numbers. `points` x values evenly from `start` to `stop`, or the given array `x`.
///
/// protocol: decoy-infinite, decoy-vacuum-weak, no-decoy, efficient-bb84, finite-key (Lim
/// 2014, block_bits = n_X), one-decoy (Rusca 2018, block_bits = n_Z), cv-gg02, twin-field
/// (total Alice-Bob length), mdi-qkd, bbm92, sns-tf (asymptotic, or finite key with `pulses`
/// pulse pairs) and cv-qkd (`detection` homodyne or heterodyne, composable finite size with
/// `symbols`), whose parameters `params` sets as a dict (see `mdi_qkd`, `bbm92`, `sns_tf`,
/// `cv_qkd`). `mu` and `nu` (photons per pulse) set vacuum + weak (defaults 0.48,
/// 0.05); elsewhere `mu`, `mu2`, `mu3`, `p_mu1`, `p_mu2` and `p_basis` (key-basis probability)
/// fix parameters that are otherwise optimised per point. `p_z` is efficient BB84's basis
/// bias (0.9). `params` gives the CV-QKD (Gg02) or twin-field parameters as a dict;
/// `alpha_db_per_km` overrides the fibre attenuation (dB/km).
///
/// Returns a dict of NumPy arrays (one contiguous float64 array per column), the columns of
/// rate.csv: x (km or dB), length_km (km), loss_db (dB), key_per_pulse (bit per pulse,
/// symbol or pulse pair), key_bps (bit/s), qber, plob_per_use (bit per channel use), plob_bps
/// (bit/s), tgw_per_use (bit per channel use), bound_per_use and bound_bps (the bound of the
/// protocol's family, named by "bound": "plob" or "single-repeater"), exceeds_bound (bool),
/// the parameters used (mu1..3 in photons per pulse, p_mu1..3 and p_basis probabilities) and
/// the estimator values (gain_mu1..3 and y0, y1_lower, q1_lower per pulse, error_rate_mu1..3,
/// e1_upper and phase_error_upper as rates, s0_lower and s1_lower in detections per block,
/// key_bits_per_block in bits, pulses_per_block, i_ab and chi_be in bit per symbol); NaN
/// where a protocol has no such value.
#[pyfunction]
#[pyo3(signature = (protocol, start=0.0, stop=200.0, points=201, *, x=None, axis="distance",
    hardware=None, f_ec=1.22, block_bits=1e7, mu=None, nu=None, p_z=None, mu2=None,
    mu3=None, p_mu1=None, p_mu2=None, p_basis=None, alpha_db_per_km=None, params=None,
    pulses=None, detection=None, symbols=None))]
#[allow(clippy::too_many_arguments)]
fn rate_curve<'py>(
    py: Python<'py>,
    protocol: &str,
    start: f64,
    stop: f64,
    points: usize,
    x: Option<Arr1<'py>>,
    axis: &str,
    hardware: Option<Bound<'py, PyAny>>,
    f_ec: f64,
    block_bits: f64,
    mu: Option<f64>,
    nu: Option<f64>,
    p_z: Option<f64>,
    mu2: Option<f64>,
    mu3: Option<f64>,
    p_mu1: Option<f64>,
    p_mu2: Option<f64>,
    p_basis: Option<f64>,
    alpha_db_per_km: Option<f64>,
    params: Option<Bound<'py, PyAny>>,
    pulses: Option<f64>,
    detection: Option<String>,
    symbols: Option<f64>,
) -> PyResult<Columns<'py>> {
    let more = protocols::MoreCurveArgs {
        pulses,
        detection,
        symbols,
    };
    let mut hw = match &hardware {
        Some(h) => dv_hardware(py, h)?,
        None => DvHardware::GYS,
    };
    let dv = !matches!(
        protocol,
        "cv-gg02" | "twin-field" | "mdi-qkd" | "bbm92" | "sns-tf" | "cv-qkd"
    );
    if dv && let Some(a) = alpha_db_per_km {
        hw.alpha_db_per_km = a;
    }
    let (proto, fixed_mu) = curve_protocol(
        py,
        protocol,
        block_bits,
        mu,
        nu,
        p_z,
        alpha_db_per_km.filter(|_| !dv),
        params.as_ref(),
        &more,
    )?;
    let fixed = FixedParams {
        mu: fixed_mu,
        mu2,
        mu3,
        p_mu1,
        p_mu2,
        p_basis,
    };
    let axis = match axis {
        "distance" => Axis::Distance,
        "loss" => Axis::Loss,
        other => {
            return Err(PyValueError::new_err(format!(
                "axis `{other}`: expected distance or loss"
            )));
        }
    };
    let xs: Vec<f64> = match x {
        Some(xs) => xs.as_array().iter().copied().collect(),
        None => sweep(start, stop, points).map_err(value_error)?,
    };
    let cols = py
        .detach(|| {
            let mut cols = CurveColumns::with_capacity(xs.len());
            for_each_rate_point(&proto, &hw, f_ec, &fixed, axis, &xs, |p| cols.push(p))
                .map(|()| cols)
        })
        .map_err(value_error)?;
    cols.into_dict(py)
}

/// The Rust library's result for a curve, held opaque: what `_rust_rate_curve` returns.
#[pyclass(module = "qkd_sim", frozen)]
struct _RustCurve {
    points: Vec<DetailedPoint>,
}

#[pymethods]
impl _RustCurve {
    fn __len__(&self) -> usize {
        self.points.len()
    }
}

/// _rust_rate_curve(protocol, start, stop, points) -> object
///
/// The Rust library call behind `rate_curve` with the CLI's defaults, its result (a Rust
/// vector of points) returned unconverted: the reference the binding's overhead is measured
/// against (benchmarks/bench.py times both calls from Python with the same clock, each result
/// freed after the clock stops).
#[pyfunction]
fn _rust_rate_curve(
    py: Python<'_>,
    protocol: &str,
    start: f64,
    stop: f64,
    points: usize,
) -> PyResult<_RustCurve> {
    let (proto, mu) = curve_protocol(
        py,
        protocol,
        1e7,
        None,
        None,
        None,
        None,
        None,
        &protocols::MoreCurveArgs::default(),
    )?;
    let fixed = FixedParams {
        mu,
        ..FixedParams::NONE
    };
    let hw = DvHardware::GYS;
    let points = py
        .detach(|| {
            qkd_simulator::curve::rate_curve_detailed(
                &proto,
                &hw,
                1.22,
                &fixed,
                Axis::Distance,
                start,
                stop,
                points,
            )
        })
        .map_err(value_error)?;
    Ok(_RustCurve { points })
}

// ---------------------------------------------------------------- link models

fn decoy_method(method: &str, nu: f64) -> PyResult<DecoyMethod> {
    Ok(match method {
        "infinite" => DecoyMethod::Infinite,
        "vacuum-weak" => DecoyMethod::VacuumWeak { nu },
        "no-decoy" => DecoyMethod::NoDecoy,
        other => {
            return Err(PyValueError::new_err(format!(
                "method `{other}`: expected infinite, vacuum-weak or no-decoy"
            )));
        }
    })
}

fn asymptotic(
    py: Python<'_>,
    method: &str,
    nu: f64,
    p_z: f64,
    f_ec: f64,
    hardware: Option<&Bound<'_, PyAny>>,
) -> PyResult<AsymptoticBb84> {
    let hw = match hardware {
        Some(h) => dv_hardware(py, h)?,
        None => DvHardware::GYS,
    };
    hw.validate().map_err(value_error)?;
    if !(p_z > 0.0 && p_z < 1.0) {
        return Err(PyValueError::new_err(format!(
            "p_z = {p_z}: must lie in (0, 1)"
        )));
    }
    if !(1.0..=3.0).contains(&f_ec) {
        return Err(PyValueError::new_err(format!(
            "f_ec = {f_ec}: an EC inefficiency lies in [1, 3]"
        )));
    }
    Ok(AsymptoticBb84 {
        hw,
        f_ec,
        p_z,
        method: decoy_method(method, nu)?,
    })
}

/// decoy_bb84(eta_sys, mu=None, *, method="infinite", nu=0.05, p_z=0.5, f_ec=1.22,
/// hardware="gys") -> dict
///
/// Asymptotic decoy-state BB84 (GLLP; Ma, Qi, Zhao, Lo 2005) at system transmittances
/// `eta_sys` (channel × Bob, dimensionless array). `mu` (photons per pulse, scalar or array) is
/// optimised per point when None. method: infinite, vacuum-weak (weak decoy `nu`) or
/// no-decoy; `p_z` the basis-Z probability (0.5 standard, ~0.9 efficient BB84).
///
/// Returns arrays: mu, key_per_pulse (bit/pulse), sifted_per_pulse, gain (Q_mu), qber (E_mu),
/// y1 (single-photon yield; lower bound for finite decoys), e1 (single-photon error; upper
/// bound).
#[pyfunction]
#[pyo3(signature = (eta_sys, mu=None, *, method="infinite", nu=0.05, p_z=0.5, f_ec=1.22, hardware=None))]
#[allow(clippy::too_many_arguments)]
fn decoy_bb84<'py>(
    py: Python<'py>,
    eta_sys: Arr1<'py>,
    mu: Option<Arr<'py>>,
    method: &str,
    nu: f64,
    p_z: f64,
    f_ec: f64,
    hardware: Option<Bound<'py, PyAny>>,
) -> PyResult<Columns<'py>> {
    let m = asymptotic(py, method, nu, p_z, f_ec, hardware.as_ref())?;
    let etas: Vec<f64> = eta_sys.as_array().iter().copied().collect();
    let mus: Option<Vec<f64>> = mu.map(|m| m.as_array().iter().copied().collect());
    if let Some(v) = &mus
        && v.len() != 1
        && v.len() != etas.len()
    {
        return Err(PyValueError::new_err(format!(
            "mu has {} values for {} transmittances",
            v.len(),
            etas.len()
        )));
    }
    let rows: Vec<(f64, qkd_simulator::physics::decoy::AsymptoticPoint)> = py.detach(|| {
        etas.iter()
            .enumerate()
            .map(|(i, &eta)| match &mus {
                Some(v) => {
                    let mu = if v.len() == 1 { v[0] } else { v[i] };
                    (mu, m.at_eta(eta, mu))
                }
                None => m.optimal_mu(eta),
            })
            .collect()
    });
    columns(
        py,
        &rows,
        &[
            ("mu", &|r: &(f64, _)| r.0),
            ("key_per_pulse", &|r| r.1.key_per_pulse),
            ("sifted_per_pulse", &|r| r.1.sifted_per_pulse),
            ("gain", &|r| r.1.gain),
            ("qber", &|r| r.1.qber),
            ("y1", &|r| r.1.y1),
            ("e1", &|r| r.1.e1),
        ],
    )
}

/// decoy_max_distance(mu=None, *, method="infinite", nu=0.05, p_z=0.5, f_ec=1.22,
/// hardware="gys") -> float
///
/// Largest fibre length (km, to 1 m) with a positive asymptotic decoy-BB84 key rate, at fixed
/// `mu` (photons per pulse) or with mu optimised at every length.
#[pyfunction]
#[pyo3(signature = (mu=None, *, method="infinite", nu=0.05, p_z=0.5, f_ec=1.22, hardware=None))]
fn decoy_max_distance(
    py: Python<'_>,
    mu: Option<f64>,
    method: &str,
    nu: f64,
    p_z: f64,
    f_ec: f64,
    hardware: Option<Bound<'_, PyAny>>,
) -> PyResult<f64> {
    let m = asymptotic(py, method, nu, p_z, f_ec, hardware.as_ref())?;
    Ok(py.detach(|| m.max_distance(mu)))
}

fn finite_columns<'py>(
    py: Python<'py>,
    rows: &[(Vec<f64>, qkd_simulator::physics::finite::FiniteKey)],
    names: &[&'static str],
) -> PyResult<Columns<'py>> {
    type Row = (Vec<f64>, qkd_simulator::physics::finite::FiniteKey);
    let d = columns(
        py,
        rows,
        &[
            ("key_bits", &|r: &Row| r.1.key_bits),
            ("pulses", &|r| r.1.pulses),
            ("key_per_pulse", &|r| r.1.key_per_pulse),
            ("qber", &|r| r.1.qber),
            ("phase_error", &|r| r.1.phase_error),
            ("s0", &|r| r.1.s0),
            ("s1", &|r| r.1.s1),
            ("eps_sec", &|r| r.1.eps_sec),
        ],
    )?;
    for (i, name) in names.iter().enumerate() {
        let v: Vec<f64> = rows.iter().map(|r| r.0[i]).collect();
        d.set_item(*name, PyArray1::from_vec(py, v))?;
    }
    let ok: Vec<bool> = rows.iter().map(|r| r.1.ec_ok).collect();
    d.set_item("ec_ok", PyArray1::from_vec(py, ok))?;
    Ok(d)
}

/// finite_key_lim(eta_sys, block_bits=1e7, *, hardware="lim2014", f_ec=1.16, eps_cor=1e-15,
/// eps_sec=None, mu3=2e-4, mu1=None, mu2=None, p_mu1=None, p_mu2=None, q_x=None) -> dict
///
/// Finite-key three-intensity decoy BB84 (Lim et al., PRA 89, 022307 (2014)) at system
/// transmittances `eta_sys`, block n_X = `block_bits` key-basis bits, parameters optimised
/// per point except those given (intensities in photons per pulse, probabilities). eps_sec
/// None means ε_sec = 1e-15·ℓ as in the paper.
///
/// Returns arrays: key_bits (ℓ per block), pulses (per block), key_per_pulse, qber,
/// phase_error (upper bound), s0, s1 (lower bounds on vacuum and single-photon key-basis
/// detections), eps_sec, ec_ok (bool), and the settings mu1, mu2, mu3, p_mu1, p_mu2, p_mu3, q_x.
#[pyfunction]
#[pyo3(signature = (eta_sys, block_bits=1e7, *, hardware=None, f_ec=1.16, eps_cor=1e-15,
    eps_sec=None, mu3=2e-4, mu1=None, mu2=None, p_mu1=None, p_mu2=None, q_x=None))]
#[allow(clippy::too_many_arguments)]
fn finite_key_lim<'py>(
    py: Python<'py>,
    eta_sys: Arr1<'py>,
    block_bits: f64,
    hardware: Option<Bound<'py, PyAny>>,
    f_ec: f64,
    eps_cor: f64,
    eps_sec: Option<f64>,
    mu3: f64,
    mu1: Option<f64>,
    mu2: Option<f64>,
    p_mu1: Option<f64>,
    p_mu2: Option<f64>,
    q_x: Option<f64>,
) -> PyResult<Columns<'py>> {
    let hw = match &hardware {
        Some(h) => dv_hardware(py, h)?,
        None => DvHardware::LIM2014,
    };
    hw.validate().map_err(value_error)?;
    check_block(block_bits)?;
    let ec = EcModel::Efficiency { f: f_ec };
    ec.validate().map_err(value_error)?;
    let m = Lim2014 {
        hw,
        ec,
        eps_cor,
        secrecy: eps_sec.map_or(Secrecy::PerBit(1e-15), Secrecy::Fixed),
        block_bits,
        mu3,
    };
    let fixed = LimFixed {
        mu1,
        mu2,
        p_mu1,
        p_mu2,
        q_x,
    };
    fixed.validate(mu3).map_err(value_error)?;
    let etas: Vec<f64> = eta_sys.as_array().iter().copied().collect();
    let rows: Vec<_> = py.detach(|| {
        etas.iter()
            .map(|&eta| {
                let (s, k) = m.optimise_with(eta, &fixed);
                (
                    vec![s.mu[0], s.mu[1], s.mu[2], s.p[0], s.p[1], s.p[2], s.q_x],
                    k,
                )
            })
            .collect()
    });
    finite_columns(
        py,
        &rows,
        &["mu1", "mu2", "mu3", "p_mu1", "p_mu2", "p_mu3", "q_x"],
    )
}

/// one_decoy_rusca(eta_sys, block_bits=1e7, *, hardware="metro-ghz", f_ec=1.16,
/// eps_sec=1e-9, eps_cor=1e-15, mu1=None, mu2=None, p_mu1=None, p_z=None) -> dict
///
/// Finite-key one-decoy BB84 (Rusca et al., APL 112, 171104 (2018)), dead time included, at
/// system transmittances `eta_sys`, block n_Z = `block_bits`; parameters optimised per point
/// except those given.
///
/// Returns arrays as finite_key_lim, with the settings mu1, mu2, p_mu1, p_z.
#[pyfunction]
#[pyo3(signature = (eta_sys, block_bits=1e7, *, hardware=None, f_ec=1.16, eps_sec=1e-9,
    eps_cor=1e-15, mu1=None, mu2=None, p_mu1=None, p_z=None))]
#[allow(clippy::too_many_arguments)]
fn one_decoy_rusca<'py>(
    py: Python<'py>,
    eta_sys: Arr1<'py>,
    block_bits: f64,
    hardware: Option<Bound<'py, PyAny>>,
    f_ec: f64,
    eps_sec: f64,
    eps_cor: f64,
    mu1: Option<f64>,
    mu2: Option<f64>,
    p_mu1: Option<f64>,
    p_z: Option<f64>,
) -> PyResult<Columns<'py>> {
    let hw = match &hardware {
        Some(h) => dv_hardware(py, h)?,
        None => DvHardware::METRO_GHZ,
    };
    hw.validate().map_err(value_error)?;
    check_block(block_bits)?;
    let mut m = Rusca2018::new(hw, block_bits);
    m.ec = EcModel::Efficiency { f: f_ec };
    m.ec.validate().map_err(value_error)?;
    m.eps_sec = eps_sec;
    m.eps_cor = eps_cor;
    let fixed = RuscaFixed {
        mu1,
        mu2,
        p_mu1,
        p_z,
    };
    fixed.validate().map_err(value_error)?;
    let etas: Vec<f64> = eta_sys.as_array().iter().copied().collect();
    let rows: Vec<_> = py.detach(|| {
        etas.iter()
            .map(|&eta| {
                let (s, k) = m.optimise_with(eta, &fixed);
                (vec![s.mu[0], s.mu[1], s.p1, s.p_z], k)
            })
            .collect()
    });
    finite_columns(py, &rows, &["mu1", "mu2", "p_mu1", "p_z"])
}

fn check_block(b: f64) -> PyResult<()> {
    if b.is_finite() && (1e3..=1e13).contains(&b) {
        Ok(())
    } else {
        Err(PyValueError::new_err(format!(
            "block_bits = {b}: a block holds between 1e3 and 1e13 bits"
        )))
    }
}

/// cv_gg02(transmittance, params=None) -> dict
///
/// GG02 CV-QKD, reverse reconciliation, homodyne, trusted detector, asymptotic (Lodewyck et
/// al. 2007; Laudenbach et al. 2018) at channel transmittances T. `params` (dict) overrides
/// the reference setting: v_a, xi (SNU), eta_det, v_el (SNU), beta, alpha_db_per_km (dB/km),
/// symbol_rate_hz (Hz).
///
/// Returns arrays key_per_symbol, i_ab and chi_be (bit/symbol).
#[pyfunction]
#[pyo3(signature = (transmittance, params=None))]
fn cv_gg02<'py>(
    py: Python<'py>,
    transmittance: Arr1<'py>,
    params: Option<Bound<'py, PyAny>>,
) -> PyResult<Columns<'py>> {
    let m = gg02(py, params.as_ref())?;
    let rows: Vec<_> = transmittance
        .as_array()
        .iter()
        .map(|&t| m.at_transmittance(t))
        .collect();
    cv_columns(py, &rows)
}

fn gg02(py: Python<'_>, params: Option<&Bound<'_, PyAny>>) -> PyResult<Gg02> {
    let m = match params {
        Some(p) => merge(py, &Gg02::REFERENCE, p)?,
        None => Gg02::REFERENCE,
    };
    m.validate().map_err(value_error)?;
    Ok(m)
}

/// `base` with the fields of the dict `over` replaced (unknown fields refused).
fn merge<T: serde::Serialize + serde::de::DeserializeOwned>(
    py: Python<'_>,
    base: &T,
    over: &Bound<'_, PyAny>,
) -> PyResult<T> {
    let mut v = serde_json::to_value(base).map_err(value_error)?;
    let o: serde_json::Value = serde_json::from_str(&to_json(py, over)?).map_err(value_error)?;
    match (&mut v, o) {
        (serde_json::Value::Object(b), serde_json::Value::Object(o)) => b.extend(o),
        _ => return Err(PyValueError::new_err("params must be a dict")),
    }
    serde_json::from_value(v).map_err(value_error)
}

/// twin_field(length_km, params=None) -> dict
///
/// Phase-matching twin-field QKD (Ma, Zeng, Zhou 2018) at total Alice-Bob fibre lengths (km),
/// total intensity optimised per point. `params` (dict) overrides the long-haul setting:
/// alpha_db_per_km (dB/km), eta_det, dark_count_prob (per pulse), misalignment,
/// phase_slices, phase_noise_rad (rad), f_ec, rep_rate_hz (Hz).
///
/// Returns arrays mu (total photons per pulse pair), key_per_pulse (bit per pulse pair), qber
/// (E_Z) and phase_error (E_X).
#[pyfunction]
#[pyo3(signature = (length_km, params=None))]
fn twin_field<'py>(
    py: Python<'py>,
    length_km: Arr1<'py>,
    params: Option<Bound<'py, PyAny>>,
) -> PyResult<Columns<'py>> {
    let m = match &params {
        Some(p) => merge(py, &TwinField::LONG_HAUL, p)?,
        None => TwinField::LONG_HAUL,
    };
    CurveProtocol::TwinField(m)
        .validate()
        .map_err(value_error)?;
    let ls: Vec<f64> = length_km.as_array().iter().copied().collect();
    let rows: Vec<(f64, f64, f64, f64)> =
        py.detach(|| ls.iter().map(|&l| m.optimal_detail(l)).collect());
    columns(
        py,
        &rows,
        &[
            ("mu", &|r: &(f64, f64, f64, f64)| r.0),
            ("key_per_pulse", &|r| r.1),
            ("qber", &|r| r.2),
            ("phase_error", &|r| r.3),
        ],
    )
}

// ---------------------------------------------------------------- link specs, satellites

fn spec_from(py: Python<'_>, spec: &Bound<'_, PyAny>) -> PyResult<LinkModelSpec> {
    if let Ok(text) = spec.extract::<String>() {
        return toml::from_str(&text).map_err(|e| value_error(format!("link spec: {e}")));
    }
    serde_json::from_str(&to_json(py, spec)?).map_err(|e| value_error(format!("link spec: {e}")))
}

/// A link model built from a specification (`LinkModelSpec`: the `model` of a node's link
/// configuration or of a scenario link), physics evaluated once at construction.
#[pyclass(module = "qkd_sim", frozen)]
struct Link {
    kind: &'static str,
    built: Built,
}

#[pymethods]
impl Link {
    /// Link(spec)
    ///
    /// `spec`: a dict such as {"kind": "finite-key-bb84", "length_km": 40.0,
    /// "block_bits": 1e6}, or the same as TOML text. Errors name the field.
    #[new]
    fn new(py: Python<'_>, spec: Bound<'_, PyAny>) -> PyResult<Self> {
        let s = spec_from(py, &spec)?;
        let built = py.detach(|| s.build_concrete()).map_err(value_error)?;
        Ok(Link {
            kind: s.kind(),
            built,
        })
    }

    /// The model's `kind`.
    #[getter]
    fn kind(&self) -> &'static str {
        self.kind
    }

    /// sample(t_ms) -> dict
    ///
    /// The link at times `t_ms` (ms after the link start): cumulative_bits (uint64, secret
    /// bits delivered so far), phase (list of "up", "down", "aborted") and qber (NaN when
    /// down or not reported).
    fn sample<'py>(&self, py: Python<'py>, t_ms: Arr1<'py>) -> PyResult<Columns<'py>> {
        let mut bits = Vec::new();
        let mut phase = Vec::new();
        let mut qber = Vec::new();
        for &t in t_ms.as_array().iter() {
            if !(t.is_finite() && t >= 0.0) {
                return Err(PyValueError::new_err(format!("t_ms = {t}: times are ≥ 0")));
            }
            let (c, p, q) = self.built.sample(t as u64);
            bits.push(c);
            phase.push(format!("{p:?}").to_lowercase());
            qber.push(q.unwrap_or(f64::NAN));
        }
        let d = PyDict::new(py);
        d.set_item("cumulative_bits", PyArray1::from_vec(py, bits))?;
        d.set_item("phase", PyList::new(py, phase)?)?;
        d.set_item("qber", PyArray1::from_vec(py, qber))?;
        Ok(d)
    }

    /// status(t_ms) -> dict
    ///
    /// The status a node sees at `t_ms` (ms): state, secret_key_rate_bps (bit/s), qber.
    fn status<'py>(&self, py: Python<'py>, t_ms: f64) -> PyResult<Bound<'py, PyAny>> {
        let st = self.built.as_model().status(t_ms.max(0.0) as u64);
        let d = PyDict::new(py);
        d.set_item("state", format!("{:?}", st.state))?;
        d.set_item("secret_key_rate_bps", st.secret_key_rate_bps)?;
        d.set_item("qber", st.qber)?;
        Ok(d.into_any())
    }

    /// passes() -> list[dict]
    ///
    /// For a satellite-downlink: every pass with start_ms, end_ms (ms after the start),
    /// max_elevation_deg, key_bits (net secret key of the pass), bound_bits (PLOB summed over
    /// the pass, bits), qber and lost (why it gave no key, or None). Empty for fibre links.
    fn passes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match &self.built {
            Built::Pass(p) => from_rust(py, &p.passes()),
            _ => Ok(PyList::empty(py).into_any()),
        }
    }

    fn __repr__(&self) -> String {
        format!("Link(kind={:?})", self.kind)
    }
}

/// satellite_passes(orbit, station, start_unix_s, horizon_s=86400.0, step_s=1.0,
/// max_sun_elevation_deg=-12.0) -> list[dict]
///
/// Visibility windows of a circular orbit (dict: altitude_km, inclination_deg, raan_deg,
/// phase_deg) over a ground station (dict: lat_deg, lon_deg, min_elevation_deg,
/// clear_sky_prob) in [0, horizon_s) seconds after `start_unix_s` (Unix time, s). Each pass:
/// start_s, end_s (s after the start), max_elevation_deg, night (bool).
#[pyfunction]
#[pyo3(signature = (orbit, station, start_unix_s, horizon_s=86400.0, step_s=1.0, max_sun_elevation_deg=-12.0))]
fn satellite_passes<'py>(
    py: Python<'py>,
    orbit: Bound<'py, PyAny>,
    station: Bound<'py, PyAny>,
    start_unix_s: f64,
    horizon_s: f64,
    step_s: f64,
    max_sun_elevation_deg: f64,
) -> PyResult<Bound<'py, PyAny>> {
    use qkd_simulator::satellite::{GroundStation, Orbit, passes};
    let o: Orbit = serde_json::from_str(&to_json(py, &orbit)?)
        .map_err(|e| value_error(format!("orbit: {e}")))?;
    o.validate().map_err(value_error)?;
    let s: GroundStation = serde_json::from_str(&to_json(py, &station)?)
        .map_err(|e| value_error(format!("station: {e}")))?;
    if !(step_s > 0.0 && horizon_s > 0.0 && horizon_s / step_s <= 1e8) {
        return Err(PyValueError::new_err(
            "horizon_s and step_s must be > 0, with at most 1e8 steps",
        ));
    }
    let p = py.detach(|| {
        passes(
            &o,
            &s,
            start_unix_s,
            horizon_s,
            step_s,
            max_sun_elevation_deg,
        )
    });
    from_rust(py, &p)
}

// ---------------------------------------------------------------- network runs

/// run_scenario(path, aggregate_s=60, threads=None, pairs=None, out=None) -> dict
///
/// Runs a scenario file (TOML or JSON) as `qkd-sim run` does: every link stepped at the
/// scenario's resolution, end-to-end key for its pairs and for `pairs` (list of "A:B").
/// `out` (a directory) also writes links.csv, pairs.csv and summary.json there.
///
/// Returns the summary (as summary.json: name, duration_s, step_s, aggregate_s, links with
/// total_bits, mean_rate_bps (bit/s), availability..., bound (the fundamental bound the link is
/// held against: {bound: "plob" or "single-repeater", key, limit, ratio}, key and limit in bit/s
/// for fibre and bits per pass for satellites, ratio > 1 a violation; None for constant-rate
/// links), pairs with path, total_bits, detour...)
/// plus times_s (bucket end times, s), and per link and pair the arrays cumulative_bits
/// (uint64) and, per link, key_bits, qber and up_fraction per bucket.
#[pyfunction]
#[pyo3(signature = (path, aggregate_s=60, threads=None, pairs=None, out=None))]
fn run_scenario<'py>(
    py: Python<'py>,
    path: std::path::PathBuf,
    aggregate_s: u64,
    threads: Option<usize>,
    pairs: Option<Vec<String>>,
    out: Option<std::path::PathBuf>,
) -> PyResult<Bound<'py, PyAny>> {
    use qkd_simulator::network::{RunOptions, run};
    use qkd_simulator::scenario::Scenario;
    let mut sc = Scenario::load(&path).map_err(value_error)?;
    add_pairs(&mut sc, pairs.unwrap_or_default(), &path)?;
    let threads =
        threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |p| p.get()));
    let r = py
        .detach(|| {
            let links = sc.build_links(&path, &|_| {})?;
            Ok::<_, qkd_simulator::scenario::ScenarioError>(run(
                &sc,
                &links,
                RunOptions {
                    aggregate_s,
                    threads,
                },
                &|_| {},
            ))
        })
        .map_err(value_error)?;
    if let Some(dir) = out {
        r.write(&dir)
            .map_err(|e| PyIOError::new_err(e.to_string()))?;
    }
    let summary = from_rust(py, &r)?;
    let d = summary.cast::<PyDict>()?;
    d.set_item("times_s", PyArray1::from_vec(py, r.times.clone()))?;
    let links = d
        .get_item("links")?
        .ok_or_else(|| value_error("no links"))?;
    for (i, l) in r.links.iter().enumerate() {
        let ld = links.get_item(i)?;
        let col = |f: &dyn Fn(&qkd_simulator::network::Bucket) -> f64| {
            PyArray1::from_vec(py, l.buckets.iter().map(f).collect::<Vec<f64>>())
        };
        let cum: Vec<u64> = l.buckets.iter().map(|b| b.cumulative_bits).collect();
        ld.set_item("cumulative_bits", PyArray1::from_vec(py, cum))?;
        ld.set_item("key_bits", col(&|b| b.key_bits as f64))?;
        ld.set_item("qber", col(&|b| f64::from(b.qber)))?;
        ld.set_item("up_fraction", col(&|b| f64::from(b.up_fraction)))?;
    }
    let pairs = d
        .get_item("pairs")?
        .ok_or_else(|| value_error("no pairs"))?;
    for (i, p) in r.pairs.iter().enumerate() {
        let pd = pairs.get_item(i)?;
        pd.set_item(
            "cumulative_bits",
            PyArray1::from_vec(py, p.cumulative_bits.clone()),
        )?;
        pd.set_item(
            "shared_cumulative_bits",
            PyArray1::from_vec(py, p.shared_cumulative_bits.clone()),
        )?;
    }
    Ok(summary)
}

/// Adds node pairs given as "A:B" to a scenario, checking the node ids.
fn add_pairs(
    sc: &mut qkd_simulator::scenario::Scenario,
    pairs: Vec<String>,
    path: &std::path::Path,
) -> PyResult<()> {
    for p in pairs {
        let Some((a, b)) = p.split_once(':') else {
            return Err(PyValueError::new_err(format!(
                "pair {p}: write the two node ids as A:B"
            )));
        };
        for id in [a, b] {
            if !sc.nodes.iter().any(|n| n.id == id) {
                return Err(PyValueError::new_err(format!(
                    "pair {p}: {} has no node `{id}`",
                    path.display()
                )));
            }
        }
        sc.pairs.push(qkd_simulator::scenario::PairSpec {
            a: a.into(),
            b: b.into(),
        });
    }
    Ok(())
}

/// Columns of CV-QKD points: key_per_symbol, i_ab, chi_be (bit/symbol).
fn cv_columns<'py>(
    py: Python<'py>,
    rows: &[qkd_simulator::physics::cv::CvPoint],
) -> PyResult<Columns<'py>> {
    columns(
        py,
        rows,
        &[
            (
                "key_per_symbol",
                &|p: &qkd_simulator::physics::cv::CvPoint| p.key_per_symbol,
            ),
            ("i_ab", &|p| p.i_ab),
            ("chi_be", &|p| p.chi_be),
        ],
    )
}

/// QKD link and network models of qkd-simulator, from Python.
///
/// Key-rate curves (`rate_curve`, the numbers of `qkd-sim rate`), link models (`decoy_bb84`,
/// `finite_key_lim`, `one_decoy_rusca`, `cv_gg02`, `twin_field`, `mdi_qkd`, `bbm92`, `sns_tf`,
/// `cv_qkd`, `Link`), detector timing (`detector_timing`), bounds (`plob`, `tgw`,
/// `single_repeater`, `plob_thermal`), optimisers (all parameters not given are optimised;
/// `decoy_max_distance`), satellite passes (`satellite_passes`, `Link.passes`,
/// `passes_from_loss`, `tle_passes`) and network runs (`run_scenario`, `run_dynamics`). Arrays
/// in, NumPy arrays out.
#[pymodule]
fn qkd_sim(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(hardware, m)?)?;
    m.add_function(wrap_pyfunction!(plob, m)?)?;
    m.add_function(wrap_pyfunction!(tgw, m)?)?;
    m.add_function(wrap_pyfunction!(single_repeater, m)?)?;
    m.add_function(wrap_pyfunction!(plob_thermal, m)?)?;
    m.add_function(wrap_pyfunction!(db_to_transmittance, m)?)?;
    m.add_function(wrap_pyfunction!(rate_curve, m)?)?;
    m.add_function(wrap_pyfunction!(_rust_rate_curve, m)?)?;
    m.add_function(wrap_pyfunction!(decoy_bb84, m)?)?;
    m.add_function(wrap_pyfunction!(decoy_max_distance, m)?)?;
    m.add_function(wrap_pyfunction!(finite_key_lim, m)?)?;
    m.add_function(wrap_pyfunction!(one_decoy_rusca, m)?)?;
    m.add_function(wrap_pyfunction!(cv_gg02, m)?)?;
    m.add_function(wrap_pyfunction!(twin_field, m)?)?;
    m.add_function(wrap_pyfunction!(satellite_passes, m)?)?;
    m.add_function(wrap_pyfunction!(run_scenario, m)?)?;
    m.add_class::<Link>()?;
    protocols::register(m)?;
    time_resolved::register(m)?;
    Ok(())
}
