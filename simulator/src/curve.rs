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

use serde::{Deserialize, Serialize};

use crate::physics::bounds::{plob, tgw};
use crate::physics::channel::{DvHardware, ParamError, db_to_transmittance};
use crate::physics::cv::Gg02;
use crate::physics::decoy::{AsymptoticBb84, DecoyMethod};
use crate::physics::finite::{Lim2014, Rusca2018};
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

/// Evaluates `points` equally spaced points from `from` to `to` on `axis`.
pub fn rate_curve(
    protocol: &CurveProtocol,
    hw: &DvHardware,
    f_ec: f64,
    axis: Axis,
    from: f64,
    to: f64,
    points: usize,
) -> Result<Vec<CurvePoint>, CurveError> {
    hw.validate()?;
    if !(from.is_finite() && from >= 0.0) {
        return Err(ParamError::new("from", from, "the sweep starts at a finite value ≥ 0").into());
    }
    if !(to.is_finite() && to > from) {
        return Err(ParamError::new("to", to, "the sweep ends after it starts").into());
    }
    if !(2..=1_000_000).contains(&points) {
        return Err(ParamError::new("points", points as f64, "between 2 and 10⁶ points").into());
    }
    if !(1.0..=3.0).contains(&f_ec) {
        return Err(ParamError::new("f_ec", f_ec, "an EC inefficiency lies in [1, 3]").into());
    }
    protocol.validate()?;
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
    Ok((0..points)
        .map(|i| {
            let x = from + (to - from) * i as f64 / (points - 1) as f64;
            let (length_km, loss_db) = match axis {
                Axis::Distance => (x, alpha * x + hw.extra_loss_db),
                Axis::Loss => ((x - hw.extra_loss_db).max(0.0) / alpha.max(1e-12), x),
            };
            point(protocol, hw, f_ec, x, length_km, loss_db)
        })
        .collect())
}

fn point(
    protocol: &CurveProtocol,
    hw: &DvHardware,
    f_ec: f64,
    x: f64,
    length_km: f64,
    loss_db: f64,
) -> CurvePoint {
    let eta_ch = db_to_transmittance(loss_db);
    let eta_sys = eta_ch * hw.eta_bob;
    let asym = |method, p_z| AsymptoticBb84 {
        hw: *hw,
        f_ec,
        p_z,
        method,
    };
    let (key, qber, rate) = match protocol {
        CurveProtocol::DecoyInfinite => {
            let (_, p) = asym(DecoyMethod::Infinite, 0.5).optimal_mu(eta_sys);
            (p.key_per_pulse, p.qber, hw.rep_rate_hz)
        }
        CurveProtocol::DecoyVacuumWeak { mu, nu } => {
            let p = asym(DecoyMethod::VacuumWeak { nu: *nu }, 0.5).at_eta(eta_sys, *mu);
            (p.key_per_pulse, p.qber, hw.rep_rate_hz)
        }
        CurveProtocol::NoDecoy => {
            let (_, p) = asym(DecoyMethod::NoDecoy, 0.5).optimal_mu(eta_sys);
            (p.key_per_pulse, p.qber, hw.rep_rate_hz)
        }
        CurveProtocol::EfficientBb84 { p_z } => {
            let (_, p) = asym(DecoyMethod::Infinite, *p_z).optimal_mu(eta_sys);
            (p.key_per_pulse, p.qber, hw.rep_rate_hz)
        }
        CurveProtocol::FiniteKey { block_bits } => {
            let m = Lim2014 {
                hw: *hw,
                ec: EcModel::Efficiency { f: f_ec },
                ..Lim2014::paper(*block_bits)
            };
            let (_, k) = m.optimise(eta_sys);
            (k.key_per_pulse, k.qber, hw.rep_rate_hz)
        }
        CurveProtocol::OneDecoy { block_bits } => {
            let mut m = Rusca2018::new(*hw, *block_bits);
            m.ec = EcModel::Efficiency { f: f_ec };
            let (_, k) = m.optimise(eta_sys);
            (k.key_per_pulse, k.qber, hw.rep_rate_hz)
        }
        CurveProtocol::CvGg02(m) => (
            m.at_transmittance(eta_ch).key_per_symbol,
            f64::NAN,
            m.symbol_rate_hz,
        ),
        CurveProtocol::TwinField(m) => {
            let (r, e) = m.optimal(length_km);
            (r, e, m.rep_rate_hz)
        }
        CurveProtocol::Mdi(m) => {
            let p = m.optimal(length_km);
            (p.key_per_pulse, p.qber, m.rep_rate_hz)
        }
        CurveProtocol::Bbm92(m) => {
            let p = m.optimal(length_km);
            (p.key_per_pulse, p.qber, m.rep_rate_hz)
        }
        CurveProtocol::SnsTf {
            model,
            pulses,
            delta_rad,
        } => match pulses {
            None => {
                let p = model.asymptotic_optimal(length_km);
                (p.key_per_pulse, p.qber, model.rep_rate_hz)
            }
            Some(n) => {
                let (_, k) = model.finite_optimal(length_km, *n, *delta_rad, 1e-10, 1e-10);
                (k.key_per_pulse, k.qber, model.rep_rate_hz)
            }
        },
        CurveProtocol::CvQkd {
            model,
            detection,
            finite,
        } => {
            let k = match finite {
                None => cv_finite::asymptotic(model, *detection, eta_ch).key_per_symbol,
                Some(f) => f.at_transmittance(model, *detection, eta_ch).key_per_symbol,
            };
            (k, f64::NAN, model.symbol_rate_hz)
        }
    };
    CurvePoint {
        x,
        length_km,
        loss_db,
        key_per_pulse: key,
        key_bps: key * rate,
        qber,
        plob_per_use: plob(eta_ch),
        plob_bps: plob(eta_ch) * rate,
        tgw_per_use: tgw(eta_ch),
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
