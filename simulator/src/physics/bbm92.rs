//! Entanglement-based BBM92 (entangled-pair BB84: Bennett, Brassard, Mermin, PRL 68, 557
//! (1992)) with a parametric down-conversion (PDC) source, asymptotic.
//!
//! Model and rate: Ma, Fung, Lo, PRA 76, 012307 (2007), Sec. III–IV. The source emits a
//! thermal-like number of pairs with mean 2λ (λ is half the expected pair number per pulse), placed
//! anywhere between Alice and Bob; each side has transmittance η_A, η_B (fibre × detector) and a
//! background Y₀ per pulse. The overall gain and QBER are
//!
//! * Q_λ = 1 − (1 − Y₀A)/(1 + η_Aλ)² − (1 − Y₀B)/(1 + η_Bλ)² + (1 − Y₀A)(1 − Y₀B)/(1 + η_Aλ + η_Bλ − η_Aη_Bλ)²,
//! * E_λQ_λ = e₀Q_λ − 2(e₀ − e_d)λ(1 + λ)η_Aη_B/[(1 + η_Aλ)(1 + η_Bλ)(1 + η_Aλ + η_Bλ − η_Aη_Bλ)],
//!
//! and, the source being basis independent, Koashi–Preskill's one-way rate applies with the phase
//! error equal to the bit error: R = q Q_λ[1 − f h(E_λ) − h(E_λ)], q = ½ for standard BB84 sifting.
//! Y₀ = 2·p_dc (two detectors per side), as in the rest of the simulator.

use serde::{Deserialize, Serialize};

use super::channel::{ParamError, fibre_transmittance, h2, probability, probability_open};
use super::mdi::validate_two_arm;
use super::optimise::log_grid_golden_max;

/// Parameters of an entanglement-based link with the source between the users.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bbm92 {
    /// Fibre attenuation, dB/km.
    pub alpha_db_per_km: f64,
    /// Detector efficiency (with receiver optics) at each side.
    pub eta_det: f64,
    /// Dark-count probability per detector per pulse (Y₀ = 2 p_dc per side).
    pub dark_count_prob: f64,
    /// Misalignment (intrinsic detector and polarisation) error e_d.
    pub misalignment: f64,
    /// Error-correction inefficiency f.
    pub f_ec: f64,
    /// Pulse (pump) repetition rate, Hz.
    pub rep_rate_hz: f64,
    /// Source position as a fraction of the distance from Alice (½: the middle).
    pub source_fraction: f64,
    /// Basis sifting factor q (½ for standard BB84).
    pub sifting: f64,
}

/// One evaluated point.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Bbm92Point {
    /// Secret key per pulse (≥ 0).
    pub key_per_pulse: f64,
    /// Coincidence gain Q_λ.
    pub gain: f64,
    /// QBER E_λ.
    pub qber: f64,
    /// λ used (half the mean pair number).
    pub lambda: f64,
}

impl Bbm92 {
    /// The detector setting Ma, Fung and Lo use for their fibre comparison (GYS detectors,
    /// simulator/docs/models.md §2.1): η_det = 4.5 %, p_dc = 8.5×10⁻⁷, e_d = 3.3 %, α = 0.21 dB/km,
    /// f = 1.22, 2 MHz, source in the middle.
    pub const GYS: Bbm92 = Bbm92 {
        alpha_db_per_km: 0.21,
        eta_det: 0.045,
        dark_count_prob: 0.85e-6,
        misalignment: 0.033,
        f_ec: 1.22,
        rep_rate_hz: 2e6,
        source_fraction: 0.5,
        sifting: 0.5,
    };

    /// A modern fibre setting: SNSPDs (η 80 %, p_dc 10⁻⁸), e_d = 1 %, f = 1.1, 100 MHz.
    pub const SNSPD: Bbm92 = Bbm92 {
        alpha_db_per_km: 0.2,
        eta_det: 0.8,
        dark_count_prob: 1e-8,
        misalignment: 0.01,
        f_ec: 1.1,
        rep_rate_hz: 1e8,
        source_fraction: 0.5,
        sifting: 0.5,
    };

    /// Gain and QBER at side transmittances `eta_a`, `eta_b` and brightness `lambda`.
    pub fn at_sides(&self, eta_a: f64, eta_b: f64, lambda: f64) -> Bbm92Point {
        let y0 = 2.0 * self.dark_count_prob;
        let (a, b) = (1.0 + eta_a * lambda, 1.0 + eta_b * lambda);
        let c = 1.0 + eta_a * lambda + eta_b * lambda - eta_a * eta_b * lambda;
        let gain = (1.0 - (1.0 - y0) / (a * a) - (1.0 - y0) / (b * b)
            + (1.0 - y0) * (1.0 - y0) / (c * c))
            .clamp(0.0, 1.0);
        let e0 = 0.5;
        let qber = if gain > 0.0 {
            ((e0 * gain
                - 2.0 * (e0 - self.misalignment) * lambda * (1.0 + lambda) * eta_a * eta_b
                    / (a * b * c))
                / gain)
                .clamp(0.0, 0.5)
        } else {
            0.5
        };
        let key = self.sifting * gain * (1.0 - self.f_ec * h2(qber) - h2(qber));
        Bbm92Point {
            key_per_pulse: key.max(0.0),
            gain,
            qber,
            lambda,
        }
    }

    /// The two sides' transmittances over a total distance.
    pub fn sides(&self, length_km: f64) -> (f64, f64) {
        let la = length_km * self.source_fraction;
        (
            fibre_transmittance(la, self.alpha_db_per_km, 0.0) * self.eta_det,
            fibre_transmittance(length_km - la, self.alpha_db_per_km, 0.0) * self.eta_det,
        )
    }

    /// Key per pulse over a total distance with λ optimised.
    pub fn optimal(&self, length_km: f64) -> Bbm92Point {
        let (ea, eb) = self.sides(length_km);
        let (l, _) = log_grid_golden_max(|l| self.at_sides(ea, eb, l).key_per_pulse, 1e-5, 2.0, 32);
        self.at_sides(ea, eb, l)
    }

    /// Checks the parameters; the error names the field.
    pub fn validate(&self) -> Result<(), ParamError> {
        validate_two_arm(
            self.alpha_db_per_km,
            self.eta_det,
            self.dark_count_prob,
            self.misalignment,
            self.f_ec,
            self.rep_rate_hz,
        )?;
        probability("source_fraction", self.source_fraction)?;
        probability_open("sifting", self.sifting)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::physics::bounds::plob;

    #[test]
    fn ideal_source_statistics() {
        // Lossless, noiseless: Q = 1 − 1/(1 + λ)² (at least one pair) and E = λ/(2(2 + λ))
        // (errors from multi-pair emission only), Ma–Fung–Lo Eqs. (9)–(10) in that limit.
        let m = Bbm92 {
            dark_count_prob: 0.0,
            misalignment: 0.0,
            ..Bbm92::GYS
        };
        for l in [0.01, 0.1, 0.5] {
            let p = m.at_sides(1.0, 1.0, l);
            assert!((p.gain - (1.0 - 1.0 / ((1.0 + l) * (1.0 + l)))).abs() < 1e-12);
            assert!((p.qber - l / (2.0 * (2.0 + l))).abs() < 1e-12, "{}", p.qber);
        }
    }

    #[test]
    fn repeaterless_and_source_in_the_middle_helps_against_dark_counts() {
        let m = Bbm92::GYS;
        for l in [0.0, 50.0, 100.0, 150.0] {
            let p = m.optimal(l);
            let eta = fibre_transmittance(l, m.alpha_db_per_km, 0.0);
            assert!(p.key_per_pulse < plob(eta), "{l} km");
        }
        let end = Bbm92 {
            source_fraction: 0.0,
            ..m
        };
        // With the source at Alice, dark counts at Bob dominate sooner than with the source in
        // the middle, where coincidences suppress them on both sides (Ma–Fung–Lo Sec. V).
        let reach = |b: &Bbm92| {
            crate::physics::optimise::bisect_last_true(
                |l| b.optimal(l).key_per_pulse > 0.0,
                0.0,
                1000.0,
                0.01,
            )
        };
        assert!(
            reach(&m) > reach(&end) + 10.0,
            "{} vs {}",
            reach(&m),
            reach(&end)
        );
    }
}
