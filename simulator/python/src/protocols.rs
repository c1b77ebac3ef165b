//! Bindings of the protocols beyond decoy BB84: decoy MDI-QKD, sending-or-not-sending twin-field
//! (asymptotic and finite key), entanglement-based BBM92, heterodyne and composable finite-size
//! CV-QKD, and detector timing jitter. Conversions only; the physics is the library's.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use qkd_simulator::curve::CurveProtocol;
use qkd_simulator::physics::bbm92::Bbm92;
use qkd_simulator::physics::cv::Gg02;
use qkd_simulator::physics::cv_finite::{self, CvDetection, CvFiniteSize};
use qkd_simulator::physics::detector::Timing;
use qkd_simulator::physics::mdi::MdiQkd;
use qkd_simulator::physics::sns::Sns;

use crate::{Arr1, Columns, columns, cv_columns, dv_hardware, from_rust, merge, value_error};

/// The `rate_curve` arguments only the protocols of this module use.
#[derive(Default)]
pub(crate) struct MoreCurveArgs {
    /// SNS pulse pairs per finite-key run.
    pub pulses: Option<f64>,
    /// CV-QKD detection.
    pub detection: Option<String>,
    /// CV-QKD symbols per finite-size block.
    pub symbols: Option<f64>,
}

/// The SNS setting `qkd-sim rate --protocol sns-tf` uses: Wang–Yu–Hu with 3 % misalignment.
fn sns_default() -> Sns {
    Sns {
        misalignment: 0.03,
        ..Sns::WYH2018
    }
}

fn model<T: serde::Serialize + serde::de::DeserializeOwned + Copy>(
    py: Python<'_>,
    base: T,
    params: Option<&Bound<'_, PyAny>>,
) -> PyResult<T> {
    match params {
        Some(p) => merge(py, &base, p),
        None => Ok(base),
    }
}

fn detection(name: Option<&str>) -> PyResult<CvDetection> {
    match name.unwrap_or("heterodyne") {
        "homodyne" => Ok(CvDetection::Homodyne),
        "heterodyne" => Ok(CvDetection::Heterodyne),
        other => Err(PyValueError::new_err(format!(
            "detection `{other}`: expected homodyne or heterodyne"
        ))),
    }
}

/// The curve protocol of `rate_curve` for the names of this module, with `qkd-sim rate`'s
/// defaults; `alpha` overrides the fibre attenuation as `--alpha` does.
pub(crate) fn curve_protocol(
    py: Python<'_>,
    name: &str,
    alpha: Option<f64>,
    params: Option<&Bound<'_, PyAny>>,
    more: &MoreCurveArgs,
) -> PyResult<CurveProtocol> {
    let p = match name {
        "mdi-qkd" => {
            let mut m = model(py, MdiQkd::XU2013, params)?;
            m.alpha_db_per_km = alpha.unwrap_or(m.alpha_db_per_km);
            CurveProtocol::Mdi(m)
        }
        "bbm92" => {
            let mut m = model(py, Bbm92::GYS, params)?;
            m.alpha_db_per_km = alpha.unwrap_or(m.alpha_db_per_km);
            CurveProtocol::Bbm92(m)
        }
        "sns-tf" => {
            let mut m = model(py, sns_default(), params)?;
            m.alpha_db_per_km = alpha.unwrap_or(m.alpha_db_per_km);
            CurveProtocol::SnsTf {
                model: m,
                pulses: more.pulses,
                delta_rad: 0.2,
            }
        }
        _ => {
            let mut m = model(py, Gg02::REFERENCE, params)?;
            m.alpha_db_per_km = alpha.unwrap_or(m.alpha_db_per_km);
            CurveProtocol::CvQkd {
                model: m,
                detection: detection(more.detection.as_deref())?,
                finite: more.symbols.map(|n| CvFiniteSize {
                    symbols: n,
                    ..Default::default()
                }),
            }
        }
    };
    p.validate().map_err(value_error)?;
    Ok(p)
}

fn lengths(length_km: &Arr1<'_>) -> PyResult<Vec<f64>> {
    let ls: Vec<f64> = length_km.as_array().iter().copied().collect();
    if let Some(l) = ls.iter().find(|l| !(l.is_finite() && **l >= 0.0)) {
        return Err(PyValueError::new_err(format!(
            "length_km = {l}: lengths are finite and ≥ 0"
        )));
    }
    Ok(ls)
}

/// mdi_qkd(length_km, params=None) -> dict
///
/// Decoy-state MDI-QKD with infinitely many decoys, asymptotic (Lo, Curty, Qi 2012; channel
/// model of Xu, Curty, Qi, Lo 2013) at total Alice-Bob fibre lengths (km), the common signal
/// intensity optimised per point. `params` (dict) overrides the Xu 2013 setting:
/// alpha_db_per_km (dB/km), eta_det, dark_count_prob (per detector per pulse), misalignment,
/// f_ec, rep_rate_hz (Hz), charlie_fraction (Charlie's position from Alice, 0.5 = middle).
///
/// Returns arrays mu (photons per pulse, each side), key_per_pulse (bit per pulse pair), gain
/// (Q_Z), qber (E_Z), y11 (two-single-photon yield) and e11 (its phase error).
#[pyfunction]
#[pyo3(signature = (length_km, params=None))]
fn mdi_qkd<'py>(
    py: Python<'py>,
    length_km: Arr1<'py>,
    params: Option<Bound<'py, PyAny>>,
) -> PyResult<Columns<'py>> {
    let m = model(py, MdiQkd::XU2013, params.as_ref())?;
    m.validate().map_err(value_error)?;
    let ls = lengths(&length_km)?;
    let rows: Vec<_> = py.detach(|| ls.iter().map(|&l| m.optimal(l)).collect());
    columns(
        py,
        &rows,
        &[
            ("mu", &|p: &qkd_simulator::physics::mdi::MdiPoint| p.mu),
            ("key_per_pulse", &|p| p.key_per_pulse),
            ("gain", &|p| p.gain),
            ("qber", &|p| p.qber),
            ("y11", &|p| p.y11),
            ("e11", &|p| p.e11),
        ],
    )
}

/// bbm92(length_km, params=None) -> dict
///
/// Entanglement-based BBM92 with a parametric down-conversion source (Ma, Fung, Lo 2007) at
/// total fibre lengths (km), brightness optimised per point. `params` (dict) overrides the GYS
/// detector setting: alpha_db_per_km, eta_det, dark_count_prob, misalignment, f_ec,
/// rep_rate_hz (Hz), source_fraction (source position from Alice), sifting.
///
/// Returns arrays lambda (half the mean pair number per pulse), key_per_pulse (bit/pulse), gain
/// (coincidence probability Q_λ) and qber (E_λ).
#[pyfunction]
#[pyo3(signature = (length_km, params=None))]
fn bbm92<'py>(
    py: Python<'py>,
    length_km: Arr1<'py>,
    params: Option<Bound<'py, PyAny>>,
) -> PyResult<Columns<'py>> {
    let m = model(py, Bbm92::GYS, params.as_ref())?;
    m.validate().map_err(value_error)?;
    let ls = lengths(&length_km)?;
    let rows: Vec<_> = py.detach(|| ls.iter().map(|&l| m.optimal(l)).collect());
    columns(
        py,
        &rows,
        &[
            (
                "lambda",
                &|p: &qkd_simulator::physics::bbm92::Bbm92Point| p.lambda,
            ),
            ("key_per_pulse", &|p| p.key_per_pulse),
            ("gain", &|p| p.gain),
            ("qber", &|p| p.qber),
        ],
    )
}

/// sns_tf(length_km, params=None, *, pulses=None, delta_rad=0.2, eps_cor=1e-10,
/// eps_sec=1e-10) -> dict
///
/// Sending-or-not-sending twin-field QKD (Wang, Yu, Hu 2018) at total Alice-Bob lengths (km).
/// Asymptotic when `pulses` is None (ε and μ_z optimised), otherwise the finite-key length of a
/// run of `pulses` pulse pairs (Yu et al. 2019, Jiang et al. 2019) with every setting optimised.
/// `params` (dict) overrides the setting of `qkd-sim rate --protocol sns-tf`: alpha_db_per_km,
/// eta_det, dark_count_prob, misalignment (of the single-photon interference), f_ec,
/// rep_rate_hz (Hz), charlie_fraction.
///
/// Returns arrays key_per_pulse (bit per pulse pair), qber (E_Z), phase_error (e1_ph, upper
/// bound), epsilon (sending probability), mu (μ_z); finite key also key_bits, n1 (untagged bits,
/// lower bound), n_t (effective Z events), p_z, mu1 and mu2 (the X-window decoys).
#[pyfunction]
#[pyo3(signature = (length_km, params=None, *, pulses=None, delta_rad=0.2, eps_cor=1e-10, eps_sec=1e-10))]
fn sns_tf<'py>(
    py: Python<'py>,
    length_km: Arr1<'py>,
    params: Option<Bound<'py, PyAny>>,
    pulses: Option<f64>,
    delta_rad: f64,
    eps_cor: f64,
    eps_sec: f64,
) -> PyResult<Columns<'py>> {
    let m = model(py, sns_default(), params.as_ref())?;
    CurveProtocol::SnsTf {
        model: m,
        pulses,
        delta_rad,
    }
    .validate()
    .map_err(value_error)?;
    for (field, v) in [("eps_cor", eps_cor), ("eps_sec", eps_sec)] {
        if !(v > 0.0 && v < 1e-3) {
            return Err(PyValueError::new_err(format!(
                "{field} = {v}: must lie in (0, 10⁻³)"
            )));
        }
    }
    let ls = lengths(&length_km)?;
    match pulses {
        None => {
            let rows: Vec<_> = py.detach(|| ls.iter().map(|&l| m.asymptotic_optimal(l)).collect());
            columns(
                py,
                &rows,
                &[
                    (
                        "key_per_pulse",
                        &|p: &qkd_simulator::physics::sns::SnsPoint| p.key_per_pulse,
                    ),
                    ("qber", &|p| p.qber),
                    ("phase_error", &|p| p.phase_error),
                    ("epsilon", &|p| p.epsilon),
                    ("mu", &|p| p.mu),
                    ("gain", &|p| p.gain),
                ],
            )
        }
        Some(n) => {
            let rows: Vec<_> = py.detach(|| {
                ls.iter()
                    .map(|&l| m.finite_optimal(l, n, delta_rad, eps_cor, eps_sec))
                    .collect()
            });
            type Row = (
                qkd_simulator::physics::sns::SnsSettings,
                qkd_simulator::physics::sns::SnsFinite,
            );
            columns(
                py,
                &rows,
                &[
                    ("key_per_pulse", &|r: &Row| r.1.key_per_pulse),
                    ("key_bits", &|r| r.1.key_bits),
                    ("qber", &|r| r.1.qber),
                    ("phase_error", &|r| r.1.phase_error),
                    ("n1", &|r| r.1.n1),
                    ("n_t", &|r| r.1.n_t),
                    ("epsilon", &|r| r.0.epsilon),
                    ("mu", &|r| r.0.mu_z),
                    ("p_z", &|r| r.0.p_z),
                    ("mu1", &|r| r.0.mu[0]),
                    ("mu2", &|r| r.0.mu[1]),
                ],
            )
        }
    }
}

/// cv_qkd(transmittance, params=None, *, detection="heterodyne", finite=None) -> dict
///
/// GG02 CV-QKD with homodyne or heterodyne detection (Fossier et al. 2009), asymptotic, or with
/// the composable finite-size rate against collective attacks when `finite` is a dict (fields
/// symbols (N), pe_fraction (m/N), p_ec, eps_s, eps_h, w (standard deviations); defaults 1e9,
/// 0.1, 0.9, 1e-10, 1e-10, 6.34). `params` as for `cv_gg02`.
///
/// Returns arrays key_per_symbol, i_ab and chi_be (bit/symbol; with `finite`, chi_be at the
/// worst-case channel), and with `finite` also t_low, xi_up (worst-case transmittance and excess
/// noise, SNU) and asymptotic (the asymptotic key per symbol).
#[pyfunction]
#[pyo3(signature = (transmittance, params=None, *, detection="heterodyne", finite=None))]
fn cv_qkd<'py>(
    py: Python<'py>,
    transmittance: Arr1<'py>,
    params: Option<Bound<'py, PyAny>>,
    detection: &str,
    finite: Option<Bound<'py, PyAny>>,
) -> PyResult<Columns<'py>> {
    let m = model(py, Gg02::REFERENCE, params.as_ref())?;
    m.validate().map_err(value_error)?;
    let det = self::detection(Some(detection))?;
    let ts: Vec<f64> = transmittance.as_array().iter().copied().collect();
    match finite {
        None => {
            let rows: Vec<_> = ts
                .iter()
                .map(|&t| cv_finite::asymptotic(&m, det, t))
                .collect();
            cv_columns(py, &rows)
        }
        Some(f) => {
            let f: CvFiniteSize = merge(py, &CvFiniteSize::default(), &f)?;
            f.validate().map_err(value_error)?;
            let rows: Vec<_> = ts.iter().map(|&t| f.at_transmittance(&m, det, t)).collect();
            columns(
                py,
                &rows,
                &[
                    ("key_per_symbol", &|p: &cv_finite::CvFinitePoint| {
                        p.key_per_symbol
                    }),
                    ("i_ab", &|p| p.i_ab),
                    ("chi_be", &|p| p.chi_be),
                    ("t_low", &|p| p.t_low),
                    ("xi_up", &|p| p.xi_up),
                    ("asymptotic", &|p| p.asymptotic),
                ],
            )
        }
    }
}

/// detector_timing(hardware, jitter_s, window_s=None) -> dict
///
/// The hardware (preset name or dict, as elsewhere) with a Gaussian detector timing jitter of
/// standard deviation `jitter_s` (s) folded in, the acceptance window `window_s` (s; default
/// the whole slot 1/rep_rate_hz): Bob's efficiency scaled by the fraction of detections inside
/// the window, the misalignment raised by half the fraction landing in the neighbouring slot.
/// Returns the hardware dict plus p_in and p_spill (the two fractions).
#[pyfunction]
#[pyo3(signature = (hardware, jitter_s, window_s=None))]
fn detector_timing<'py>(
    py: Python<'py>,
    hardware: Bound<'py, PyAny>,
    jitter_s: f64,
    window_s: Option<f64>,
) -> PyResult<Bound<'py, PyAny>> {
    let hw = dv_hardware(py, &hardware)?;
    let t = Timing { jitter_s, window_s };
    t.validate(hw.rep_rate_hz).map_err(value_error)?;
    let (p_in, spill) = t.fractions(hw.rep_rate_hz);
    let out = from_rust(py, &t.apply(&hw))?;
    let d = out.cast::<PyDict>()?;
    d.set_item("p_in", p_in)?;
    d.set_item("p_spill", spill)?;
    Ok(out)
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(mdi_qkd, m)?)?;
    m.add_function(wrap_pyfunction!(bbm92, m)?)?;
    m.add_function(wrap_pyfunction!(sns_tf, m)?)?;
    m.add_function(wrap_pyfunction!(cv_qkd, m)?)?;
    m.add_function(wrap_pyfunction!(detector_timing, m)?)?;
    Ok(())
}
