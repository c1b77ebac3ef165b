//! Channel and detector primitives shared by the discrete-variable models.
//!
//! Names follow simulator/docs/models.md §1: `eta_ch` is the channel transmittance alone (what PLOB uses),
//! `eta_det` the detector efficiency, `eta_bob` Bob's optics × detector, and `eta_sys` the product
//! channel × Bob that the DV key-rate formulas use. Every function clamps its result to the
//! physical range.
//!
//! Sources: Lo, Ma, Chen, PRL 94, 230504 (2005) and Ma, Qi, Zhao, Lo, PRA 72, 012326 (2005) for
//! yields, gains and QBER; Lim et al., PRA 89, 022307 (2014) for the detection/error model with
//! afterpulsing; Rusca et al., APL 112, 171104 (2018), App. B, for the dead-time correction.

use serde::{Deserialize, Serialize};

/// Attenuation of standard single-mode fibre (ITU-T G.652) at 1550 nm, dB/km.
pub const ALPHA_SMF_DB_PER_KM: f64 = 0.2;
/// Attenuation of ultra-low-loss fibre at 1550 nm, dB/km.
pub const ALPHA_ULL_DB_PER_KM: f64 = 0.16;

/// Binary entropy h(p) in bits; 0 at p ≤ 0 or p ≥ 1, symmetric about ½.
pub fn h2(p: f64) -> f64 {
    if !(p > 0.0 && p < 1.0) {
        return 0.0;
    }
    -p * p.log2() - (1.0 - p) * (1.0 - p).log2()
}

/// Transmittance of a loss given in dB: 10^(−dB/10).
pub fn db_to_transmittance(loss_db: f64) -> f64 {
    10f64.powf(-loss_db / 10.0)
}

/// Loss in dB of a transmittance: −10·log₁₀ η.
pub fn transmittance_to_db(eta: f64) -> f64 {
    -10.0 * eta.log10()
}

/// Channel transmittance η_ch of `length_km` of fibre with attenuation `alpha_db_per_km` plus
/// `extra_loss_db` of connectors, splices and insertion loss.
pub fn fibre_transmittance(length_km: f64, alpha_db_per_km: f64, extra_loss_db: f64) -> f64 {
    db_to_transmittance(alpha_db_per_km * length_km + extra_loss_db)
}

/// Hardware of a prepare-and-measure discrete-variable link with a weak-coherent source.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DvHardware {
    /// Source repetition rate in Hz.
    pub rep_rate_hz: f64,
    /// Fibre attenuation in dB/km.
    pub alpha_db_per_km: f64,
    /// Fixed extra loss (connectors, splices, insertion) in dB.
    pub extra_loss_db: f64,
    /// Bob's transmittance: receiver optics × detector efficiency (η_Bob).
    pub eta_bob: f64,
    /// Dark-count probability per detector per gate (p_dc). The background yield summed over
    /// both detectors is Y₀ = 2·p_dc.
    pub dark_count_prob: f64,
    /// Afterpulse probability (p_ap).
    pub afterpulse_prob: f64,
    /// Misalignment error probability (e_d, e_mis).
    pub misalignment: f64,
    /// Detector dead time in seconds (0 = none).
    pub dead_time_s: f64,
}

impl DvHardware {
    /// The GYS parameter set of Ma, Qi, Zhao, Lo 2005, Table I (Gobby, Yuan, Shields 2004):
    /// α = 0.21 dB/km, e_d = 3.3 %, Y₀ = 1.7×10⁻⁶, η_Bob = 4.5 %, 2 MHz.
    pub const GYS: DvHardware = DvHardware {
        rep_rate_hz: 2e6,
        alpha_db_per_km: 0.21,
        extra_loss_db: 0.0,
        eta_bob: 0.045,
        dark_count_prob: 0.85e-6,
        afterpulse_prob: 0.0,
        misalignment: 0.033,
        dead_time_s: 0.0,
    };

    /// The KTH parameter set of Ma et al. 2005, Table I (α 0.2, η_Bob 14.3 %, e_d 1 %,
    /// Y₀ 2×10⁻⁶ \[S\]).
    pub const KTH: DvHardware = DvHardware {
        rep_rate_hz: 2e6,
        alpha_db_per_km: 0.2,
        extra_loss_db: 0.0,
        eta_bob: 0.143,
        dark_count_prob: 1e-6,
        afterpulse_prob: 0.0,
        misalignment: 0.01,
        dead_time_s: 0.0,
    };

    /// The evaluation parameters of Lim et al. 2014, Sec. IV: InGaAs APD with η_Bob = 10 %,
    /// p_dc = 6×10⁻⁷, p_ap = 4 %, e_mis = 0.5 %, α = 0.2 dB/km. The paper does not fix a
    /// repetition rate; 1 GHz here.
    pub const LIM2014: DvHardware = DvHardware {
        rep_rate_hz: 1e9,
        alpha_db_per_km: 0.2,
        extra_loss_db: 0.0,
        eta_bob: 0.1,
        dark_count_prob: 6e-7,
        afterpulse_prob: 0.04,
        misalignment: 0.005,
        dead_time_s: 0.0,
    };

    /// A modern metro system in the spirit of Rusca et al. 2018 / Boaron et al. 2018: 2.5 GHz,
    /// InGaAs SPADs (η_det 25 %), ULL-like fibre not assumed (α = 0.2), 50 ns dead time.
    pub const METRO_GHZ: DvHardware = DvHardware {
        rep_rate_hz: 2.5e9,
        alpha_db_per_km: 0.2,
        extra_loss_db: 1.0,
        eta_bob: 0.25,
        dark_count_prob: 1e-7,
        afterpulse_prob: 0.01,
        misalignment: 0.01,
        dead_time_s: 50e-9,
    };

    /// Background yield per pulse summed over both detectors, Y₀ = 2·p_dc.
    pub fn y0(&self) -> f64 {
        2.0 * self.dark_count_prob
    }

    /// Channel transmittance η_ch of `length_km` of this link's fibre (with the extra loss).
    pub fn eta_ch(&self, length_km: f64) -> f64 {
        fibre_transmittance(length_km, self.alpha_db_per_km, self.extra_loss_db)
    }

    /// System transmittance η_sys = η_ch · η_Bob.
    pub fn eta_sys(&self, length_km: f64) -> f64 {
        self.eta_ch(length_km) * self.eta_bob
    }

    /// Checks that every parameter is physically meaningful; the error names the field.
    pub fn validate(&self) -> Result<(), ParamError> {
        positive("rep_rate_hz", self.rep_rate_hz)?;
        non_negative("alpha_db_per_km", self.alpha_db_per_km)?;
        non_negative("extra_loss_db", self.extra_loss_db)?;
        probability_open("eta_bob", self.eta_bob)?;
        probability("dark_count_prob", self.dark_count_prob)?;
        probability("afterpulse_prob", self.afterpulse_prob)?;
        if !(0.0..=0.5).contains(&self.misalignment) {
            return Err(ParamError::new(
                "misalignment",
                self.misalignment,
                "must lie in [0, 0.5]",
            ));
        }
        non_negative("dead_time_s", self.dead_time_s)?;
        if self.dead_time_s * self.rep_rate_hz > 1e6 {
            return Err(ParamError::new(
                "dead_time_s",
                self.dead_time_s,
                "dead time longer than a million pulse periods",
            ));
        }
        Ok(())
    }
}

/// A physically meaningless parameter: which one, its value, and what is wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field} = {value}: {problem}")]
pub struct ParamError {
    /// Name of the parameter, as in the configuration.
    pub field: &'static str,
    /// The value given.
    pub value: f64,
    /// What is wrong with it.
    pub problem: &'static str,
}

impl ParamError {
    /// A new error about `field`.
    pub fn new(field: &'static str, value: f64, problem: &'static str) -> Self {
        Self {
            field,
            value,
            problem,
        }
    }
}

/// `value` must be finite and > 0.
pub fn positive(field: &'static str, value: f64) -> Result<(), ParamError> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(ParamError::new(field, value, "must be a finite number > 0"))
    }
}

/// `value` must be finite and ≥ 0.
pub fn non_negative(field: &'static str, value: f64) -> Result<(), ParamError> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(ParamError::new(field, value, "must be a finite number ≥ 0"))
    }
}

/// `value` must be a probability in [0, 1].
pub fn probability(field: &'static str, value: f64) -> Result<(), ParamError> {
    if (0.0..=1.0).contains(&value) {
        Ok(())
    } else {
        Err(ParamError::new(
            field,
            value,
            "must be a probability in [0, 1]",
        ))
    }
}

/// `value` must be a probability in (0, 1].
pub fn probability_open(field: &'static str, value: f64) -> Result<(), ParamError> {
    if value > 0.0 && value <= 1.0 {
        Ok(())
    } else {
        Err(ParamError::new(field, value, "must lie in (0, 1]"))
    }
}

/// n-photon yield Y_n ≈ Y₀ + 1 − (1 − η)ⁿ (LMC 2005).
pub fn yield_n(eta_sys: f64, y0: f64, n: u32) -> f64 {
    (y0 + 1.0 - (1.0 - eta_sys).powi(n as i32)).min(1.0)
}

/// Single-photon yield Y₁ = Y₀ + η.
pub fn yield_1(eta_sys: f64, y0: f64) -> f64 {
    (y0 + eta_sys).min(1.0)
}

/// Gain of a coherent state of mean photon number μ: Q_μ = Y₀ + 1 − e^(−ημ).
pub fn gain(eta_sys: f64, y0: f64, mu: f64) -> f64 {
    (y0 - (-eta_sys * mu).exp_m1()).min(1.0)
}

/// QBER of intensity μ: E_μ = [e₀Y₀ + e_d(1 − e^(−ημ))]/Q_μ, e₀ = ½.
pub fn qber(eta_sys: f64, y0: f64, e_d: f64, mu: f64) -> f64 {
    let q = gain(eta_sys, y0, mu);
    if q <= 0.0 {
        return 0.5;
    }
    ((0.5 * y0 - e_d * (-eta_sys * mu).exp_m1()) / q).min(0.5)
}

/// Single-photon error rate e₁ = (e₀Y₀ + e_d·η)/Y₁.
pub fn error_1(eta_sys: f64, y0: f64, e_d: f64) -> f64 {
    ((0.5 * y0 + e_d * eta_sys) / yield_1(eta_sys, y0)).min(0.5)
}

/// Detection probability of Lim 2014: D_k = 1 − (1 − 2p_dc)·e^(−η_sys k).
pub fn lim_detection(eta_sys: f64, p_dc: f64, k: f64) -> f64 {
    1.0 - (1.0 - 2.0 * p_dc) * (-eta_sys * k).exp()
}

/// Click probability with afterpulsing (Lim 2014): R_k = D_k(1 + p_ap).
pub fn lim_click(eta_sys: f64, p_dc: f64, p_ap: f64, k: f64) -> f64 {
    (lim_detection(eta_sys, p_dc, k) * (1.0 + p_ap)).min(1.0)
}

/// Error-click probability of Lim 2014: e_k = p_dc + e_mis[1 − e^(−η k)] + p_ap·D_k/2.
///
/// The paper prints the *channel* transmittance in the misalignment term; only the *system*
/// transmittance reproduces its Fig. 1 (simulator/docs/models.md §1), so η_sys is used here.
pub fn lim_error(eta_sys: f64, p_dc: f64, p_ap: f64, e_mis: f64, k: f64) -> f64 {
    p_dc - e_mis * (-eta_sys * k).exp_m1() + p_ap * lim_detection(eta_sys, p_dc, k) / 2.0
}

/// Dead-time correction factor of Rusca 2018, App. B: c_dt = 1/(1 + f_rep·P_det·t_DT), with
/// P_det the total detection probability per pulse.
pub fn dead_time_factor(rep_rate_hz: f64, p_det: f64, dead_time_s: f64) -> f64 {
    1.0 / (1.0 + rep_rate_hz * p_det * dead_time_s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entropy_and_loss_conversions() {
        assert_eq!(h2(0.0), 0.0);
        assert!((h2(0.5) - 1.0).abs() < 1e-15);
        assert!((h2(0.11) - 0.4999).abs() < 1e-3);
        assert!((fibre_transmittance(50.0, 0.2, 0.0) - 0.1).abs() < 1e-12);
        assert!((transmittance_to_db(db_to_transmittance(37.5)) - 37.5).abs() < 1e-9);
    }

    #[test]
    fn gys_single_photon_values_at_50km() {
        // simulator/docs/models.md §2.1: true Y1 = 4.012e-3 and e1 = 3.32 % at 50 km with GYS.
        let hw = DvHardware::GYS;
        let eta = hw.eta_sys(50.0);
        assert!((yield_1(eta, hw.y0()) - 4.012e-3).abs() < 1e-6);
        assert!((error_1(eta, hw.y0(), hw.misalignment) - 0.0332).abs() < 5e-5);
    }

    #[test]
    fn gain_and_qber_limits() {
        // No channel: only background, QBER ½.
        assert!((gain(0.0, 1e-6, 0.5) - 1e-6).abs() < 1e-18);
        assert!((qber(0.0, 1e-6, 0.01, 0.5) - 0.5).abs() < 1e-12);
        // No background: QBER equals misalignment.
        assert!((qber(0.1, 0.0, 0.02, 0.5) - 0.02).abs() < 1e-12);
        assert!(lim_error(0.01, 0.0, 0.0, 0.01, 0.5) < lim_click(0.01, 0.0, 0.0, 0.5));
    }

    #[test]
    fn validation_names_the_field() {
        let mut hw = DvHardware::GYS;
        hw.eta_bob = 1.5;
        assert_eq!(hw.validate().unwrap_err().field, "eta_bob");
        hw = DvHardware::GYS;
        hw.rep_rate_hz = -1.0;
        assert_eq!(hw.validate().unwrap_err().field, "rep_rate_hz");
    }
}
