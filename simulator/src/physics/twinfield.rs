//! Twin-field QKD, in short: phase-matching QKD (Ma, Zeng, Zhou, PRX 8, 031043 (2018)) after the
//! twin-field idea of Lucamarini, Yuan, Dynes, Shields, Nature 557, 400 (2018).
//!
//! Alice and Bob each send a phase-randomised weak coherent state of intensity μ/2 over half the
//! distance to Charlie, who interferes them; the rate scales as √η and can beat PLOB. This is a
//! deliberately short model (simulator/docs/models.md §2.6): R = (2/M)·Q_μ[1 − f h(E_Z) − h(E_X)] with
//!
//! * Q_μ = 1 − (1 − p_d)² e^(−μ η_arm), η_arm = 10^(−αL/20) η_det;
//! * bit error E_Z from misalignment, phase slicing into M slices and residual phase-reference
//!   noise σ (rad): e_φ = [1 − sinc(π/M)·e^(−σ²/2)]/2, E_Z = [(e_d + e_φ)(1 − e^(−μη_arm)) + p_d]/Q_μ;
//! * phase error E_X bounded by the fraction of detections from even photon numbers (the
//!   infinite-decoy limit of PM-QKD): E_X = Σ_{k even} P_k Y_k / Q_μ.
//!
//! It is not a repeaterless protocol (Charlie is untrusted but in the middle) and is therefore
//! excluded from the PLOB property test; a test checks it does beat PLOB at long distance.

use serde::{Deserialize, Serialize};

use super::channel::h2;
use super::optimise::log_grid_golden_max;

/// Parameters of a PM-QKD link.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TwinField {
    /// Fibre attenuation, dB/km (ULL: 0.16).
    pub alpha_db_per_km: f64,
    /// Charlie's detector efficiency.
    pub eta_det: f64,
    /// Dark-count probability per detector per pulse.
    pub dark_count_prob: f64,
    /// Misalignment error.
    pub misalignment: f64,
    /// Number of phase slices M.
    pub phase_slices: u32,
    /// Residual phase-reference noise after phase tracking, rad (standard deviation).
    pub phase_noise_rad: f64,
    /// EC inefficiency.
    pub f_ec: f64,
    /// Repetition rate in Hz.
    pub rep_rate_hz: f64,
}

impl TwinField {
    /// A typical long-haul setting: ULL fibre, SNSPDs (η 60 %, p_d 10⁻⁸), M = 16, σ = 0.1 rad.
    pub const LONG_HAUL: TwinField = TwinField {
        alpha_db_per_km: 0.16,
        eta_det: 0.6,
        dark_count_prob: 1e-8,
        misalignment: 0.01,
        phase_slices: 16,
        phase_noise_rad: 0.1,
        f_ec: 1.16,
        rep_rate_hz: 1e9,
    };

    /// Key per pulse pair and QBER E_Z at total Alice–Bob distance `length_km` and total
    /// intensity `mu`.
    pub fn key_per_pulse(&self, length_km: f64, mu: f64) -> (f64, f64) {
        let (r, e_z, _) = self.evaluate(length_km, mu);
        (r, e_z)
    }

    /// Key per pulse pair, bit error E_Z and phase error E_X.
    fn evaluate(&self, length_km: f64, mu: f64) -> (f64, f64, f64) {
        let eta_arm = 10f64.powf(-self.alpha_db_per_km * length_km / 20.0) * self.eta_det;
        let pd = self.dark_count_prob;
        let q = 1.0 - (1.0 - pd).powi(2) * (-mu * eta_arm).exp();
        let m = f64::from(self.phase_slices.max(1));
        let x = std::f64::consts::PI / m;
        let sinc = x.sin() / x;
        let e_phi = (1.0 - sinc * (-self.phase_noise_rad.powi(2) / 2.0).exp()) / 2.0;
        let click = -(-mu * eta_arm).exp_m1();
        let e_z = (((self.misalignment + e_phi) * click + pd) / q).min(0.5);
        // Even photon-number detections: Σ_{k even} e^-μ μ^k/k! · [1 − (1−pd)²(1−η)^k].
        let mut even = 0.0;
        let mut pk = (-mu).exp();
        for k in 0..40u32 {
            if k % 2 == 0 {
                even += pk * (1.0 - (1.0 - pd).powi(2) * (1.0 - eta_arm).powi(k as i32));
            }
            pk *= mu / f64::from(k + 1);
        }
        let e_x = (even / q).min(0.5);
        let r = 2.0 / m * q * (1.0 - self.f_ec * h2(e_z) - h2(e_x));
        (r.max(0.0), e_z, e_x)
    }

    /// Key per pulse with μ optimised, and the QBER at that μ.
    pub fn optimal(&self, length_km: f64) -> (f64, f64) {
        let (_, r, e_z, _) = self.optimal_detail(length_km);
        (r, e_z)
    }

    /// The optimal total intensity μ with the key per pulse pair, E_Z and E_X there.
    pub fn optimal_detail(&self, length_km: f64) -> (f64, f64, f64, f64) {
        let (mu, r) = log_grid_golden_max(|mu| self.evaluate(length_km, mu).0, 1e-5, 2.0, 32);
        let (_, e_z, e_x) = self.evaluate(length_km, mu);
        (mu, r, e_z, e_x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::physics::bounds::plob;
    use crate::physics::channel::db_to_transmittance;

    #[test]
    fn beats_plob_far_away_but_not_close() {
        let tf = TwinField::LONG_HAUL;
        let eta = |l: f64| db_to_transmittance(0.16 * l);
        let (r500, e) = tf.optimal(500.0);
        assert!(r500 > plob(eta(500.0)), "{r500} vs {}", plob(eta(500.0)));
        assert!(e < 0.1);
        let (r20, _) = tf.optimal(20.0);
        assert!(r20 < plob(eta(20.0)));
        // √η scaling: 100 km more costs ~8 dB, not 16.
        let (r600, _) = tf.optimal(600.0);
        let ratio_db = 10.0 * (r500 / r600).log10();
        assert!(ratio_db > 6.0 && ratio_db < 12.0, "{ratio_db}");
    }
}
