//! Decoy-state measurement-device-independent QKD (MDI-QKD), asymptotic.
//!
//! Alice and Bob each send phase-randomised BB84 weak coherent pulses (polarisation encoding) to
//! an untrusted relay, Charlie, who makes a partial Bell-state measurement (ψ⁻ and ψ⁺) with four
//! threshold detectors and announces the result. No detector side channel remains, and Charlie
//! may sit anywhere between them (`charlie_fraction`).
//!
//! * Key rate, Lo, Curty, Qi, PRL 108, 130503 (2012):
//!   R = Q₁₁ᶻ[1 − h(e₁₁ˣ)] − Qᶻ f h(Eᶻ), with Q₁₁ᶻ = μ_a μ_b e^(−μ_a−μ_b) Y₁₁ᶻ.
//! * Channel model (gains and errors in closed form, with the modified Bessel function I₀):
//!   Ma & Razavi, PRA 86, 062319 (2012), and Xu, Curty, Qi, Lo, NJP 15, 113007 (2013), App. B:
//!   with x = √(η_a μ_a η_b μ_b)/2, y = (1 − p_d)e^(−(η_a μ_a + η_b μ_b)/4) and μ' = η_a μ_a + η_b μ_b,
//!   * Qˣ = 2y²[1 + 2y² − 4y I₀(x) + I₀(2x)], EˣQˣ = e₀Qˣ − 2(e₀ − e_d)y²[I₀(2x) − 1];
//!   * Q_C = 2(1 − p_d)²e^(−μ'/2)[1 − (1 − p_d)e^(−η_a μ_a/2)][1 − (1 − p_d)e^(−η_b μ_b/2)],
//!     Q_E = 2p_d(1 − p_d)²e^(−μ'/2)[I₀(2x) − (1 − p_d)e^(−μ'/2)], Qᶻ = Q_C + Q_E,
//!     EᶻQᶻ = e_d Q_C + (1 − e_d)Q_E;
//!   * Y₁₁ = (1 − p_d)²[η_aη_b/2 + (2η_a + 2η_b − 3η_aη_b)p_d + 4(1 − η_a)(1 − η_b)p_d²],
//!     e₁₁Y₁₁ = e₀Y₁₁ − (e₀ − e_d)(1 − p_d)²η_aη_b/2.
//!
//! Infinitely many decoys (Y₁₁ and e₁₁ known exactly) and the efficient, asymptotic basis choice
//! (no sifting factor), as in Lo–Curty–Qi's rate. η here is each arm's fibre transmittance times
//! Charlie's detector efficiency; p_d is the dark-count probability per detector per pulse.
//! MDI-QKD is repeaterless: its rate stays below PLOB at the Alice–Bob channel transmittance
//! η_a·η_b (a property test checks it).

use serde::{Deserialize, Serialize};

use super::channel::{
    ParamError, fibre_transmittance, h2, non_negative, positive, probability, probability_open,
};
use super::optimise::log_grid_golden_max;

/// Parameters of an MDI-QKD link.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MdiQkd {
    /// Fibre attenuation, dB/km.
    pub alpha_db_per_km: f64,
    /// Efficiency of Charlie's detectors (with his optics).
    pub eta_det: f64,
    /// Dark-count (background) probability per detector per pulse, p_d.
    pub dark_count_prob: f64,
    /// Misalignment error e_d.
    pub misalignment: f64,
    /// Error-correction inefficiency f.
    pub f_ec: f64,
    /// Pulse repetition rate, Hz.
    pub rep_rate_hz: f64,
    /// Charlie's position as a fraction of the Alice–Bob distance from Alice (½: the middle).
    pub charlie_fraction: f64,
}

/// One evaluated point.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MdiPoint {
    /// Secret key per pulse pair (≥ 0).
    pub key_per_pulse: f64,
    /// Key-basis gain Qᶻ.
    pub gain: f64,
    /// Key-basis QBER Eᶻ.
    pub qber: f64,
    /// Two-single-photon yield Y₁₁.
    pub y11: f64,
    /// Two-single-photon phase error e₁₁ˣ.
    pub e11: f64,
    /// Signal intensity used (both sides).
    pub mu: f64,
}

impl MdiQkd {
    /// The simulation setting of Xu, Curty, Qi, Lo 2013 (their Table 1, the parameters of
    /// Lo–Curty–Qi 2012): η_det = 14.5 %, p_d = 3×10⁻⁶, e_d = 1.5 %, f = 1.16, α = 0.2 dB/km;
    /// 1 GHz here (the papers give rates per pulse).
    pub const XU2013: MdiQkd = MdiQkd {
        alpha_db_per_km: 0.2,
        eta_det: 0.145,
        dark_count_prob: 3e-6,
        misalignment: 0.015,
        f_ec: 1.16,
        rep_rate_hz: 1e9,
        charlie_fraction: 0.5,
    };

    /// A modern setting: SNSPDs at Charlie (η 70 %, p_d 10⁻⁸), e_d = 1 %, f = 1.1, 1 GHz.
    pub const SNSPD: MdiQkd = MdiQkd {
        alpha_db_per_km: 0.2,
        eta_det: 0.7,
        dark_count_prob: 1e-8,
        misalignment: 0.01,
        f_ec: 1.1,
        rep_rate_hz: 1e9,
        charlie_fraction: 0.5,
    };

    /// The two arms' transmittances (fibre × Charlie's detector) over a total distance.
    pub fn arms(&self, length_km: f64) -> (f64, f64) {
        let la = length_km * self.charlie_fraction;
        let lb = length_km - la;
        (
            fibre_transmittance(la, self.alpha_db_per_km, 0.0) * self.eta_det,
            fibre_transmittance(lb, self.alpha_db_per_km, 0.0) * self.eta_det,
        )
    }

    /// The rate at arm transmittances `eta_a`, `eta_b` with intensities `mu_a`, `mu_b`.
    pub fn at_arms(&self, eta_a: f64, eta_b: f64, mu_a: f64, mu_b: f64) -> MdiPoint {
        let pd = self.dark_count_prob;
        let ed = self.misalignment;
        let e0 = 0.5;
        let q = 1.0 - pd;
        let mu_p = eta_a * mu_a + eta_b * mu_b;
        let x = (eta_a * mu_a * eta_b * mu_b).sqrt() / 2.0;
        let i0_2x = bessel_i0(2.0 * x);
        let ea = (-mu_p / 2.0).exp();
        let q_c = 2.0
            * q
            * q
            * ea
            * (1.0 - q * (-eta_a * mu_a / 2.0).exp())
            * (1.0 - q * (-eta_b * mu_b / 2.0).exp());
        let q_e = 2.0 * pd * q * q * ea * (i0_2x - q * ea);
        let gain = q_c + q_e;
        let qber = if gain > 0.0 {
            ((ed * q_c + (1.0 - ed) * q_e) / gain).min(0.5)
        } else {
            0.5
        };
        let y11 = q
            * q
            * (eta_a * eta_b / 2.0
                + (2.0 * eta_a + 2.0 * eta_b - 3.0 * eta_a * eta_b) * pd
                + 4.0 * (1.0 - eta_a) * (1.0 - eta_b) * pd * pd);
        let e11 = if y11 > 0.0 {
            ((e0 * y11 - (e0 - ed) * q * q * eta_a * eta_b / 2.0) / y11).clamp(0.0, 0.5)
        } else {
            0.5
        };
        let q11 = mu_a * mu_b * (-mu_a - mu_b).exp() * y11;
        let key = q11 * (1.0 - h2(e11)) - gain * self.f_ec * h2(qber);
        MdiPoint {
            key_per_pulse: key.max(0.0),
            gain,
            qber,
            y11,
            e11,
            mu: mu_a,
        }
    }

    /// X-basis gain and QBER (the test basis; reported for completeness).
    pub fn x_basis(&self, eta_a: f64, eta_b: f64, mu_a: f64, mu_b: f64) -> (f64, f64) {
        let pd = self.dark_count_prob;
        let x = (eta_a * mu_a * eta_b * mu_b).sqrt() / 2.0;
        let y = (1.0 - pd) * (-(eta_a * mu_a + eta_b * mu_b) / 4.0).exp();
        let qx = 2.0 * y * y * (1.0 + 2.0 * y * y - 4.0 * y * bessel_i0(x) + bessel_i0(2.0 * x));
        let ex = if qx > 0.0 {
            (0.5 * qx - 2.0 * (0.5 - self.misalignment) * y * y * (bessel_i0(2.0 * x) - 1.0)) / qx
        } else {
            0.5
        };
        (qx, ex.clamp(0.0, 0.5))
    }

    /// Key per pulse pair over a total Alice–Bob distance with the (common) intensity optimised.
    pub fn optimal(&self, length_km: f64) -> MdiPoint {
        let (ea, eb) = self.arms(length_km);
        let (mu, _) = log_grid_golden_max(
            |mu| self.at_arms(ea, eb, mu, mu).key_per_pulse,
            1e-3,
            2.0,
            32,
        );
        self.at_arms(ea, eb, mu, mu)
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
        non_negative("charlie_fraction", self.charlie_fraction)?;
        probability("charlie_fraction", self.charlie_fraction)
    }
}

/// Checks the fields every two-arm model here shares (MDI, SNS, BBM92): attenuation, detector
/// efficiency, dark counts, misalignment, EC inefficiency, repetition rate.
pub fn validate_two_arm(
    alpha_db_per_km: f64,
    eta_det: f64,
    dark_count_prob: f64,
    misalignment: f64,
    f_ec: f64,
    rep_rate_hz: f64,
) -> Result<(), ParamError> {
    positive("alpha_db_per_km", alpha_db_per_km)?;
    probability_open("eta_det", eta_det)?;
    probability("dark_count_prob", dark_count_prob)?;
    if !(0.0..=0.5).contains(&misalignment) {
        return Err(ParamError::new(
            "misalignment",
            misalignment,
            "must lie in [0, 0.5]",
        ));
    }
    if !(1.0..=3.0).contains(&f_ec) {
        return Err(ParamError::new(
            "f_ec",
            f_ec,
            "an EC inefficiency lies in [1, 3]",
        ));
    }
    positive("rep_rate_hz", rep_rate_hz)
}

/// Modified Bessel function of the first kind, order 0, I₀(x) for x ≥ 0: the power series below
/// 15 (relative error < 10⁻¹⁵), the asymptotic expansion above.
pub fn bessel_i0(x: f64) -> f64 {
    let x = x.abs();
    if x < 15.0 {
        let q = x * x / 4.0;
        let (mut term, mut sum) = (1.0, 1.0);
        let mut k = 1.0;
        while term > 1e-17 * sum {
            term *= q / (k * k);
            sum += term;
            k += 1.0;
        }
        sum
    } else {
        // e^x/√(2πx) · Σ ((2k−1)!!)²/(k! (8x)^k)
        let mut term = 1.0;
        let mut sum = 1.0;
        for k in 1..12 {
            let kf = f64::from(k);
            term *= (2.0 * kf - 1.0).powi(2) / (kf * 8.0 * x);
            sum += term;
        }
        x.exp() / (2.0 * std::f64::consts::PI * x).sqrt() * sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::physics::bounds::plob;

    #[test]
    fn bessel_i0_matches_tabulated_values() {
        // Abramowitz & Stegun, Table 9.8: I0(1) = 1.2660658778, I0(5) = 27.239871823,
        // I0(20) = 4.355828256e7.
        assert!((bessel_i0(0.0) - 1.0).abs() < 1e-15);
        assert!((bessel_i0(1.0) / 1.266_065_877_8 - 1.0).abs() < 1e-9);
        assert!((bessel_i0(5.0) / 27.239_871_823 - 1.0).abs() < 1e-9);
        assert!((bessel_i0(20.0) / 4.355_828_256e7 - 1.0).abs() < 1e-8);
    }

    #[test]
    fn noiseless_limits() {
        // No dark counts, no misalignment: Eᶻ = 0, e₁₁ = 0 and Y₁₁ = η_aη_b/2.
        let m = MdiQkd {
            dark_count_prob: 0.0,
            misalignment: 0.0,
            ..MdiQkd::XU2013
        };
        let p = m.at_arms(0.1, 0.1, 0.5, 0.5);
        assert!(p.qber.abs() < 1e-15 && p.e11.abs() < 1e-15);
        assert!((p.y11 - 0.005).abs() < 1e-15);
        // Then R = μ²e^(−2μ)·η²/2, maximal at μ = 1.
        let r = 0.25 * (-1.0f64).exp() * 0.005;
        assert!((p.key_per_pulse / r - 1.0).abs() < 1e-12);
        // X-basis QBER of two coherent states: ≥ 25 % even without noise (multi-photon pairs).
        let (_, ex) = m.x_basis(0.1, 0.1, 0.5, 0.5);
        assert!(ex > 0.2 && ex < 0.5, "{ex}");
    }

    #[test]
    fn stays_below_plob_and_scales_as_eta() {
        let m = MdiQkd::XU2013;
        let mut prev = f64::INFINITY;
        for l in [0.0, 20.0, 50.0, 100.0, 150.0] {
            let p = m.optimal(l);
            let eta_ch = fibre_transmittance(l, m.alpha_db_per_km, 0.0);
            assert!(p.key_per_pulse < plob(eta_ch), "{l} km");
            assert!(p.key_per_pulse < prev);
            prev = p.key_per_pulse;
        }
        // Linear in the Alice–Bob transmittance far from the dark-count floor: 50 km more is
        // 10 dB less key (within 2 dB).
        let db = 10.0 * (m.optimal(50.0).key_per_pulse / m.optimal(100.0).key_per_pulse).log10();
        assert!((db - 10.0).abs() < 2.0, "{db}");
    }
}
