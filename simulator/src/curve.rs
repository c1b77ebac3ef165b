//! Key-rate curves: secret key rate and QBER against distance or channel loss for one protocol,
//! with the PLOB and TGW bounds at the same *channel* loss alongside. The research CLI's `rate`
//! command is a thin shell over [`rate_curve`]; scripts can call it directly:
//!
//! ```
//! use qkd_simulator::curve::{Axis, CurveProtocol, rate_curve};
//! use qkd_simulator::physics::channel::DvHardware;
//!
//! let proto = CurveProtocol::DecoyVacuumWeak { mu: 0.48, nu: 0.05 };
//! let curve = rate_curve(&proto, &DvHardware::GYS, 1.22, Axis::Distance, 0.0, 150.0, 151).unwrap();
//! let last_positive = curve.iter().rev().find(|p| p.key_per_pulse > 0.0).unwrap();
//! assert!(last_positive.x > 139.0 && last_positive.x < 141.0);
//! assert!(curve.iter().all(|p| p.key_per_pulse <= p.plob_per_use));
//! ```
//!
//! [`rate_curve_detailed`] also returns, per point, the parameters used, the estimator values
//! behind the rate and the bound of the protocol's family ([`crate::detail`]), and can hold
//! parameters fixed where a paper fixes them:
//!
//! ```
//! use qkd_simulator::curve::{Axis, CurveProtocol, rate_curve_detailed};
//! use qkd_simulator::detail::FixedParams;
//! use qkd_simulator::physics::channel::DvHardware;
//!
//! // Lim 2014 at n_X = 10⁷ with the basis bias fixed at q_x = 0.9; the rest optimised.
//! let fixed = FixedParams { p_basis: Some(0.9), ..FixedParams::NONE };
//! let proto = CurveProtocol::FiniteKey { block_bits: 1e7 };
//! let c = rate_curve_detailed(&proto, &DvHardware::LIM2014, 1.16, &fixed, Axis::Distance, 20.0, 40.0, 2).unwrap();
//! assert_eq!(c[0].params.p_basis, Some(0.9));
//! assert!(c[0].estimates.y1_lower.unwrap() > 0.0 && c[0].estimates.phase_error_upper.unwrap() < 0.1);
//! assert!(!c[0].exceeds_bound);
//! ```

use serde::{Deserialize, Serialize};

use crate::detail::{BoundFamily, DetailedPoint, Estimates, FixedParams, PointParams};
use crate::physics::bounds::{plob, tgw};
use crate::physics::channel::{DvHardware, ParamError, db_to_transmittance, gain, qber};
use crate::physics::cv::Gg02;
use crate::physics::decoy::{AsymptoticBb84, DecoyMethod, MU_SEED};
use crate::physics::finite::{Lim2014, Rusca2018, tau};
use crate::physics::postproc::EcModel;
use crate::physics::twinfield::TwinField;
use crate::physics::{bbm92::Bbm92, cv_finite, mdi::MdiQkd, sns::Sns};

/// The protocol of a curve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum CurveProtocol {
    /// Decoy BB84 with infinitely many decoys, μ optimised per point.
    DecoyInfinite,
    /// Vacuum + weak decoy at fixed μ and ν.
    DecoyVacuumWeak {
        /// Signal.
        mu: f64,
        /// Weak decoy.
        nu: f64,
    },
    /// GLLP without decoys, μ optimised per point.
    NoDecoy,
    /// Efficient BB84 (basis Z with probability `p_z`), infinite decoys, μ optimised.
    EfficientBb84 {
        /// Basis-Z probability.
        p_z: f64,
    },
    /// Lim 2014 finite key with block n_X = `block_bits`, all parameters optimised per point.
    FiniteKey {
        /// Block size n_X.
        block_bits: f64,
    },
    /// Rusca 2018 one-decoy finite key with block n_Z = `block_bits`, optimised per point.
    OneDecoy {
        /// Block size n_Z.
        block_bits: f64,
    },
    /// GG02 CV-QKD with the given parameters (the hardware's α is ignored).
    CvGg02(Gg02),
    /// PM twin-field with the given parameters; the distance is the total Alice–Bob length.
    TwinField(TwinField),
    /// Decoy MDI-QKD (infinite decoys, asymptotic), μ optimised; total Alice–Bob length.
    Mdi(MdiQkd),
    /// Entanglement-based BBM92 with a PDC source, brightness optimised; total length.
    Bbm92(Bbm92),
    /// Sending-or-not-sending twin-field: asymptotic when `pulses` is absent, otherwise the
    /// finite-key rate of `pulses` pulse pairs with phase slice `delta_rad` (ε_cor = ε_sec =
    /// 10⁻¹⁰), all settings optimised; total length.
    SnsTf {
        /// Hardware and channel.
        model: Sns,
        /// Pulse pairs of one finite-key run.
        pulses: Option<f64>,
        /// Phase-matching slice Δ, rad.
        delta_rad: f64,
    },
    /// GG02 CV-QKD with homodyne or heterodyne detection; composable finite size when
    /// `finite` is given.
    CvQkd {
        /// Channel and detector.
        model: Gg02,
        /// Homodyne or heterodyne.
        detection: cv_finite::CvDetection,
        /// Finite-size settings (None: asymptotic).
        finite: Option<cv_finite::CvFiniteSize>,
    },
}

impl CurveProtocol {
    /// Checks the protocol parameters; the error names the parameter.
    pub fn validate(&self) -> Result<(), ParamError> {
        use crate::physics::channel::{positive, probability, probability_open};
        let block = |b: f64| {
            if b.is_finite() && (1e3..=1e13).contains(&b) {
                Ok(())
            } else {
                Err(ParamError::new(
                    "block_bits",
                    b,
                    "a block holds between 10³ and 10¹³ bits",
                ))
            }
        };
        match *self {
            CurveProtocol::DecoyInfinite | CurveProtocol::NoDecoy => Ok(()),
            CurveProtocol::DecoyVacuumWeak { mu, nu } => {
                if !(mu > 0.0 && mu <= 2.0) {
                    return Err(ParamError::new(
                        "mu",
                        mu,
                        "a signal intensity lies in (0, 2]",
                    ));
                }
                if !(nu > 0.0 && nu < mu) {
                    return Err(ParamError::new("nu", nu, "the weak decoy lies in (0, mu)"));
                }
                Ok(())
            }
            CurveProtocol::EfficientBb84 { p_z } => {
                if p_z > 0.0 && p_z < 1.0 {
                    Ok(())
                } else {
                    Err(ParamError::new("p_z", p_z, "must lie in (0, 1)"))
                }
            }
            CurveProtocol::FiniteKey { block_bits } | CurveProtocol::OneDecoy { block_bits } => {
                block(block_bits)
            }
            CurveProtocol::CvGg02(m) => m.validate(),
            CurveProtocol::Mdi(m) => m.validate(),
            CurveProtocol::Bbm92(m) => m.validate(),
            CurveProtocol::SnsTf {
                model,
                pulses,
                delta_rad,
            } => {
                model.validate()?;
                if let Some(n) = pulses
                    && !(n.is_finite() && (1e6..=1e18).contains(&n))
                {
                    return Err(ParamError::new(
                        "pulses",
                        n,
                        "a finite-key run sends between 10⁶ and 10¹⁸ pulse pairs",
                    ));
                }
                if !(delta_rad > 0.0 && delta_rad <= std::f64::consts::PI) {
                    return Err(ParamError::new(
                        "delta_rad",
                        delta_rad,
                        "the phase slice lies in (0, π]",
                    ));
                }
                Ok(())
            }
            CurveProtocol::CvQkd { model, finite, .. } => {
                model.validate()?;
                finite.map_or(Ok(()), |f| f.validate())
            }
            CurveProtocol::TwinField(m) => {
                probability_open("eta_det", m.eta_det)?;
                probability("dark_count_prob", m.dark_count_prob)?;
                probability("misalignment", m.misalignment)?;
                positive("rep_rate_hz", m.rep_rate_hz)?;
                positive("alpha_db_per_km", m.alpha_db_per_km)?;
                if m.phase_slices == 0 {
                    return Err(ParamError::new(
                        "phase_slices",
                        0.0,
                        "at least one phase slice",
                    ));
                }
                if !(1.0..=3.0).contains(&m.f_ec) {
                    return Err(ParamError::new(
                        "f_ec",
                        m.f_ec,
                        "an EC inefficiency lies in [1, 3]",
                    ));
                }
                Ok(())
            }
        }
    }
}

/// What the x axis is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Axis {
    /// Fibre length in km.
    Distance,
    /// Channel loss in dB.
    Loss,
}

/// One point of a curve.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CurvePoint {
    /// The x value (km or dB).
    pub x: f64,
    /// Fibre length, km.
    pub length_km: f64,
    /// Channel loss, dB.
    pub loss_db: f64,
    /// Secret key per channel use (pulse or symbol).
    pub key_per_pulse: f64,
    /// Secret key rate, bit/s.
    pub key_bps: f64,
    /// QBER (NaN for CV-QKD).
    pub qber: f64,
    /// PLOB bound per channel use at the channel loss.
    pub plob_per_use: f64,
    /// PLOB bound in bit/s at the same repetition rate.
    pub plob_bps: f64,
    /// TGW bound per channel use.
    pub tgw_per_use: f64,
}

/// A sweep that makes no sense.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CurveError {
    /// A parameter (of the hardware, the protocol or the sweep) is out of range.
    #[error(transparent)]
    Param(#[from] ParamError),
}

/// Evaluates `points` equally spaced points from `from` to `to` on `axis`, every protocol
/// parameter optimised per point (or the protocol's own value).
pub fn rate_curve(
    protocol: &CurveProtocol,
    hw: &DvHardware,
    f_ec: f64,
    axis: Axis,
    from: f64,
    to: f64,
    points: usize,
) -> Result<Vec<CurvePoint>, CurveError> {
    let c = rate_curve_detailed(
        protocol,
        hw,
        f_ec,
        &FixedParams::NONE,
        axis,
        from,
        to,
        points,
    )?;
    Ok(c.into_iter().map(|d| d.point).collect())
}

/// Like [`rate_curve`], with the parameters in `fixed` held at their values, and every point
/// with its parameters, estimator values and family bound.
#[allow(clippy::too_many_arguments)] // the sweep's parts, named at the call sites
pub fn rate_curve_detailed(
    protocol: &CurveProtocol,
    hw: &DvHardware,
    f_ec: f64,
    fixed: &FixedParams,
    axis: Axis,
    from: f64,
    to: f64,
    points: usize,
) -> Result<Vec<DetailedPoint>, CurveError> {
    rate_points(protocol, hw, f_ec, fixed, axis, &sweep(from, to, points)?)
}

/// The x values of [`rate_curve_detailed`]'s sweep: `points` evenly spaced from `from` to `to`.
pub fn sweep(from: f64, to: f64, points: usize) -> Result<Vec<f64>, CurveError> {
    if !(from.is_finite() && from >= 0.0) {
        return Err(ParamError::new("from", from, "the sweep starts at a finite value ≥ 0").into());
    }
    if !(to.is_finite() && to > from) {
        return Err(ParamError::new("to", to, "the sweep ends after it starts").into());
    }
    if !(2..=1_000_000).contains(&points) {
        return Err(ParamError::new("points", points as f64, "between 2 and 10⁶ points").into());
    }
    Ok((0..points)
        .map(|i| from + (to - from) * i as f64 / (points - 1) as f64)
        .collect())
}

/// Like [`rate_curve_detailed`] at the given x values (km or dB, each finite and ≥ 0) rather
/// than an even sweep.
pub fn rate_points(
    protocol: &CurveProtocol,
    hw: &DvHardware,
    f_ec: f64,
    fixed: &FixedParams,
    axis: Axis,
    xs: &[f64],
) -> Result<Vec<DetailedPoint>, CurveError> {
    let mut out = Vec::with_capacity(xs.len());
    for_each_rate_point(protocol, hw, f_ec, fixed, axis, xs, |p| out.push(*p))?;
    Ok(out)
}

/// Like [`rate_points`], each point handed to `visit` as soon as it is computed, in the order
/// of `xs`, instead of collected: a caller that lays the values out otherwise (the Python
/// bindings write NumPy columns) reads each point while it is still in the cache and skips the
/// vector of points. Nothing is visited when the arguments are refused.
pub fn for_each_rate_point(
    protocol: &CurveProtocol,
    hw: &DvHardware,
    f_ec: f64,
    fixed: &FixedParams,
    axis: Axis,
    xs: &[f64],
    mut visit: impl FnMut(&DetailedPoint),
) -> Result<(), CurveError> {
    hw.validate()?;
    if let Some(&x) = xs.iter().find(|x| !(x.is_finite() && **x >= 0.0)) {
        return Err(ParamError::new("x", x, "every x value is finite and ≥ 0").into());
    }
    if !(1.0..=3.0).contains(&f_ec) {
        return Err(ParamError::new("f_ec", f_ec, "an EC inefficiency lies in [1, 3]").into());
    }
    protocol.validate()?;
    fixed.validate(protocol)?;
    let alpha = match protocol {
        CurveProtocol::CvGg02(m) => m.alpha_db_per_km,
        CurveProtocol::TwinField(m) => m.alpha_db_per_km,
        CurveProtocol::Mdi(m) => m.alpha_db_per_km,
        CurveProtocol::Bbm92(m) => m.alpha_db_per_km,
        CurveProtocol::SnsTf { model, .. } => model.alpha_db_per_km,
        CurveProtocol::CvQkd { model, .. } => model.alpha_db_per_km,
        _ => hw.alpha_db_per_km,
    };
    if axis == Axis::Distance && alpha <= 0.0 {
        return Err(ParamError::new(
            "alpha_db_per_km",
            alpha,
            "a distance sweep needs a fibre attenuation > 0",
        )
        .into());
    }
    // Each optimised signal intensity seeds the next point's search (decoy BB84 with infinite
    // decoys: `AsymptoticBb84::optimal_mu_from`).
    let mut mu_seed = MU_SEED;
    for &x in xs {
        let (length_km, loss_db) = match axis {
            Axis::Distance => (x, alpha * x + hw.extra_loss_db),
            Axis::Loss => ((x - hw.extra_loss_db).max(0.0) / alpha.max(1e-12), x),
        };
        visit(&point(
            protocol,
            hw,
            f_ec,
            fixed,
            x,
            (length_km, loss_db),
            &mut mu_seed,
        ));
    }
    Ok(())
}

fn point(
    protocol: &CurveProtocol,
    hw: &DvHardware,
    f_ec: f64,
    fixed: &FixedParams,
    x: f64,
    (length_km, loss_db): (f64, f64),
    mu_seed: &mut f64,
) -> DetailedPoint {
    let eta_ch = db_to_transmittance(loss_db);
    let eta_sys = eta_ch * hw.eta_bob;
    let asym = |method, p_z| AsymptoticBb84 {
        hw: *hw,
        f_ec,
        p_z,
        method,
    };
    // μ fixed or optimised, with its point and parameters.
    let mut asym_point = |m: AsymptoticBb84| {
        let (mu, p) = match fixed.mu {
            Some(mu) => (mu, m.at_eta(eta_sys, mu)),
            None => m.optimal_mu_from(eta_sys, mu_seed),
        };
        let params = PointParams {
            mu1: Some(mu),
            p_mu1: Some(1.0),
            p_basis: Some(m.p_z),
            ..PointParams::default()
        };
        let est = Estimates::asymptotic(&p, mu, None, hw.y0());
        (p.key_per_pulse, p.qber, hw.rep_rate_hz, params, est)
    };
    let (key, qber_point, rate, params, estimates) = match protocol {
        CurveProtocol::DecoyInfinite => asym_point(asym(DecoyMethod::Infinite, 0.5)),
        CurveProtocol::DecoyVacuumWeak { mu, nu } => {
            let p = asym(DecoyMethod::VacuumWeak { nu: *nu }, 0.5).at_eta(eta_sys, *mu);
            // The decoy's statistics as the bounds of Ma et al. use them (no dead time).
            let decoy = (
                *nu,
                gain(eta_sys, hw.y0(), *nu),
                qber(eta_sys, hw.y0(), hw.misalignment, *nu),
            );
            let params = PointParams {
                mu1: Some(*mu),
                mu2: Some(*nu),
                mu3: Some(0.0),
                p_basis: Some(0.5),
                ..PointParams::default()
            };
            let est = Estimates::asymptotic(&p, *mu, Some(decoy), hw.y0());
            (p.key_per_pulse, p.qber, hw.rep_rate_hz, params, est)
        }
        CurveProtocol::NoDecoy => asym_point(asym(DecoyMethod::NoDecoy, 0.5)),
        CurveProtocol::EfficientBb84 { p_z } => asym_point(asym(DecoyMethod::Infinite, *p_z)),
        CurveProtocol::FiniteKey { block_bits } => {
            let m = Lim2014 {
                hw: *hw,
                ec: EcModel::Efficiency { f: f_ec },
                mu3: fixed.lim_mu3(),
                ..Lim2014::paper(*block_bits)
            };
            let (s, k) = m.optimise_with(eta_sys, &fixed.lim());
            let c = m.counts(&s, eta_sys, k.pulses);
            let qk = s.q_x * s.q_x;
            let sifted = qk + (1.0 - s.q_x) * (1.0 - s.q_x);
            let taus = (tau(0, &s.mu, &s.p), tau(1, &s.mu, &s.p));
            let est = Estimates::finite(&k, &c, &s.p, taus, (qk, sifted));
            (
                k.key_per_pulse,
                k.qber,
                hw.rep_rate_hz,
                PointParams::lim(&s),
                est,
            )
        }
        CurveProtocol::OneDecoy { block_bits } => {
            let mut m = Rusca2018::new(*hw, *block_bits);
            m.ec = EcModel::Efficiency { f: f_ec };
            let (s, k) = m.optimise_with(eta_sys, &fixed.rusca());
            let c = m.counts(&s, eta_sys, k.pulses);
            let p = [s.p1, 1.0 - s.p1];
            let qk = s.p_z * s.p_z;
            let sifted = qk + (1.0 - s.p_z) * (1.0 - s.p_z);
            let taus = (tau(0, &s.mu, &p), tau(1, &s.mu, &p));
            let est = Estimates::finite(&k, &c, &p, taus, (qk, sifted));
            (
                k.key_per_pulse,
                k.qber,
                hw.rep_rate_hz,
                PointParams::rusca(&s),
                est,
            )
        }
        CurveProtocol::CvGg02(m) => {
            let p = m.at_transmittance(eta_ch);
            let est = Estimates {
                i_ab: Some(p.i_ab),
                chi_be: Some(p.chi_be),
                ..Estimates::default()
            };
            (
                p.key_per_symbol,
                f64::NAN,
                m.symbol_rate_hz,
                PointParams::default(),
                est,
            )
        }
        CurveProtocol::TwinField(m) => {
            let (mu, r, e, e_x) = m.optimal_detail(length_km);
            let params = PointParams {
                mu1: Some(mu),
                ..PointParams::default()
            };
            let est = Estimates {
                error_rate_mu1: Some(e),
                phase_error_upper: Some(e_x),
                ..Estimates::default()
            };
            (r, e, m.rep_rate_hz, params, est)
        }
        CurveProtocol::Mdi(m) => {
            let p = m.optimal(length_km);
            let params = PointParams {
                mu1: Some(p.mu),
                p_mu1: Some(1.0),
                ..PointParams::default()
            };
            let est = Estimates {
                gain_mu1: Some(p.gain),
                error_rate_mu1: Some(p.qber),
                y1_lower: Some(p.y11),
                e1_upper: Some(p.e11),
                phase_error_upper: Some(p.e11),
                ..Estimates::default()
            };
            (p.key_per_pulse, p.qber, m.rep_rate_hz, params, est)
        }
        CurveProtocol::Bbm92(m) => {
            let p = m.optimal(length_km);
            let params = PointParams {
                mu1: Some(p.lambda),
                p_basis: Some(m.sifting),
                ..PointParams::default()
            };
            let est = Estimates {
                gain_mu1: Some(p.gain),
                error_rate_mu1: Some(p.qber),
                phase_error_upper: Some(p.qber),
                ..Estimates::default()
            };
            (p.key_per_pulse, p.qber, m.rep_rate_hz, params, est)
        }
        CurveProtocol::SnsTf {
            model,
            pulses,
            delta_rad,
        } => match pulses {
            None => {
                let p = model.asymptotic_optimal(length_km);
                let params = PointParams {
                    mu1: Some(p.mu),
                    p_mu1: Some(p.epsilon),
                    ..PointParams::default()
                };
                let est = Estimates {
                    gain_mu1: Some(p.gain),
                    error_rate_mu1: Some(p.qber),
                    phase_error_upper: Some(p.phase_error),
                    ..Estimates::default()
                };
                (p.key_per_pulse, p.qber, model.rep_rate_hz, params, est)
            }
            Some(n) => {
                let (s, k) = model.finite_optimal(length_km, *n, *delta_rad, 1e-10, 1e-10);
                let params = PointParams {
                    mu1: Some(s.mu_z),
                    mu2: Some(s.mu[0]),
                    mu3: Some(s.mu[1]),
                    p_mu1: Some(s.epsilon),
                    p_basis: Some(s.p_z),
                    ..PointParams::default()
                };
                let est = Estimates {
                    gain_mu1: Some(k.n_t / (n * s.p_z * s.p_z)),
                    error_rate_mu1: Some(k.qber),
                    s1_lower: Some(k.n1),
                    phase_error_upper: Some(k.phase_error),
                    key_bits_per_block: Some(k.key_bits),
                    pulses_per_block: Some(*n),
                    ..Estimates::default()
                };
                (k.key_per_pulse, k.qber, model.rep_rate_hz, params, est)
            }
        },
        CurveProtocol::CvQkd {
            model,
            detection,
            finite,
        } => {
            let (k, i_ab, chi_be) = match finite {
                None => {
                    let p = cv_finite::asymptotic(model, *detection, eta_ch);
                    (p.key_per_symbol, p.i_ab, p.chi_be)
                }
                Some(f) => {
                    let p = f.at_transmittance(model, *detection, eta_ch);
                    (p.key_per_symbol, p.i_ab, p.chi_be)
                }
            };
            let est = Estimates {
                i_ab: Some(i_ab),
                chi_be: Some(chi_be),
                ..Estimates::default()
            };
            (
                k,
                f64::NAN,
                model.symbol_rate_hz,
                PointParams::default(),
                est,
            )
        }
    };
    let bound = BoundFamily::of(protocol);
    let bound_per_use = bound.per_use(eta_ch);
    DetailedPoint {
        point: CurvePoint {
            x,
            length_km,
            loss_db,
            key_per_pulse: key,
            key_bps: key * rate,
            qber: qber_point,
            plob_per_use: plob(eta_ch),
            plob_bps: plob(eta_ch) * rate,
            tgw_per_use: tgw(eta_ch),
        },
        bound,
        bound_per_use,
        bound_bps: bound_per_use * rate,
        exceeds_bound: key > bound_per_use,
        params,
        estimates,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_meaningless_sweeps() {
        let p = CurveProtocol::DecoyInfinite;
        let err = |r: Result<Vec<CurvePoint>, CurveError>| match r {
            Err(CurveError::Param(e)) => e.field,
            Ok(_) => "ok",
        };
        assert_eq!(
            err(rate_curve(
                &p,
                &DvHardware::GYS,
                1.2,
                Axis::Distance,
                10.0,
                5.0,
                10
            )),
            "to"
        );
        assert_eq!(
            err(rate_curve(
                &p,
                &DvHardware::GYS,
                0.9,
                Axis::Distance,
                0.0,
                5.0,
                10
            )),
            "f_ec"
        );
        let bad = DvHardware {
            eta_bob: 0.0,
            ..DvHardware::GYS
        };
        assert_eq!(
            err(rate_curve(&p, &bad, 1.2, Axis::Distance, 0.0, 5.0, 10)),
            "eta_bob"
        );
    }

    #[test]
    fn loss_and_distance_axes_agree() {
        let p = CurveProtocol::DecoyInfinite;
        let d = rate_curve(&p, &DvHardware::GYS, 1.22, Axis::Distance, 0.0, 100.0, 3).unwrap();
        let l = rate_curve(&p, &DvHardware::GYS, 1.22, Axis::Loss, 0.0, 21.0, 3).unwrap();
        assert!((d[2].key_per_pulse / l[2].key_per_pulse - 1.0).abs() < 1e-9);
        assert!((l[2].length_km - 100.0).abs() < 1e-9);
    }
}
