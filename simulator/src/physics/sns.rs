//! Sending-or-not-sending twin-field QKD (SNS-TF-QKD): asymptotic rate and finite-key analysis.
//!
//! * Protocol and asymptotic rate: Wang, Yu, Hu, PRA 98, 062323 (2018). In a Z window Alice
//!   (Bob) sends a phase-randomised coherent state μ_z with probability ε (bit 1 for Alice, 0
//!   for Bob) and nothing otherwise; Charlie's single-detector clicks are the effective events.
//!   Untagged bits are those where exactly one side sent exactly one photon, so
//!   R = 2ε(1 − ε)μ_z e^(−μ_z) s₁[1 − h(e₁ᵖʰ)] − f S_Z h(E_Z). Z windows need no single-photon
//!   interference, so the bit error E_Z does not depend on the misalignment: only the phase error,
//!   measured in the X windows, does. This is why SNS tolerates large misalignment.
//! * Finite key: Yu et al., PRA 99, 062325 (2019) and Jiang et al., Phys. Rev. Applied 12, 024061
//!   (2019): decoy windows (vacuum, μ₁, μ₂) estimate s₁ from one-sided events; the phase error
//!   comes from X-window events with both sending μ₁ whose phases differ by less than Δ/2
//!   (mod π), e₁ᵖʰ ≤ [T_Δ − e^(−2μ₁)S₀₀/2]/[2μ₁e^(−2μ₁)s₁]; the key length is
//!   N_f = n₁[1 − h(e₁ᵖʰ)] − f n_t h(E_Z) − log₂(2/ε_cor) − 2 log₂(1/(√2 ε_PA ε̂)).
//!   Statistical fluctuations use the Hoeffding form the simulator uses for Lim 2014
//!   (n ± √(n/2·ln(1/ε))), and the Z-from-X sampling of the phase error uses Lim's γ; the papers'
//!   Chernoff bounds are slightly tighter, so these keys are slightly conservative.
//!
//! Detection model at Charlie (two threshold detectors, dark-count probability p_d each, arm
//! transmittance η = fibre × detector): a mean photon number λ split evenly gives one click with
//! probability 2(1 − p_d)e^(−λ/2)[1 − (1 − p_d)e^(−λ/2)]; two phase-random coherent states of η μ
//! each give 2(1 − p_d)[e^(−ημ)I₀(ημ) − (1 − p_d)e^(−2ημ)].

use serde::{Deserialize, Serialize};

use super::channel::{ParamError, fibre_transmittance, h2, probability};
use super::finite::gamma;
use super::mdi::{bessel_i0, validate_two_arm};
use super::optimise::{log_grid_golden_max, multi_start_max};

/// Hardware and channel of an SNS link (Charlie in the middle unless `charlie_fraction` says
/// otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sns {
    /// Fibre attenuation, dB/km.
    pub alpha_db_per_km: f64,
    /// Charlie's detector efficiency.
    pub eta_det: f64,
    /// Dark-count probability per detector per pulse.
    pub dark_count_prob: f64,
    /// Misalignment error of the single-photon interference (X windows).
    pub misalignment: f64,
    /// Error-correction inefficiency f.
    pub f_ec: f64,
    /// Repetition rate, Hz.
    pub rep_rate_hz: f64,
    /// Charlie's position as a fraction of the distance from Alice.
    pub charlie_fraction: f64,
}

/// Asymptotic point.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SnsPoint {
    /// Secret key per pulse pair (≥ 0).
    pub key_per_pulse: f64,
    /// Z-window effective-event probability S_Z.
    pub gain: f64,
    /// Bit-flip error rate of Z windows E_Z.
    pub qber: f64,
    /// Phase-flip error of untagged bits e₁ᵖʰ.
    pub phase_error: f64,
    /// Sending probability ε.
    pub epsilon: f64,
    /// Signal intensity μ_z.
    pub mu: f64,
}

/// Settings of a finite-key SNS run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SnsSettings {
    /// Probability of a Z window (each side).
    pub p_z: f64,
    /// Sending probability in Z windows.
    pub epsilon: f64,
    /// Z-window intensity μ_z.
    pub mu_z: f64,
    /// Decoy intensities μ₁ < μ₂ of the X windows (the third is vacuum).
    pub mu: [f64; 2],
    /// Probabilities of vacuum, μ₁, μ₂ in X windows (sum 1).
    pub p_x: [f64; 3],
}

/// Finite-key result.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SnsFinite {
    /// Key length of the run, bits (≥ 0).
    pub key_bits: f64,
    /// Key per pulse pair.
    pub key_per_pulse: f64,
    /// Lower bound on untagged bits n₁.
    pub n1: f64,
    /// Upper bound on their phase error (with the sampling term).
    pub phase_error: f64,
    /// Observed Z-window bit-flip error rate.
    pub qber: f64,
    /// Effective Z events n_t.
    pub n_t: f64,
    /// The key length before clamping at 0 (negative: how far the run is from making key).
    pub raw_key_bits: f64,
}

impl Sns {
    /// A setting for Wang–Yu–Hu 2018's misalignment study: α = 0.2 dB/km, p_d = 10⁻¹¹,
    /// η_det = 50 %, f = 1.1, 1 GHz, e_d = 15 % (their detector values are not transcribed here;
    /// these reproduce their reach within 10 %, see the tests).
    pub const WYH2018: Sns = Sns {
        alpha_db_per_km: 0.2,
        eta_det: 0.5,
        dark_count_prob: 1e-11,
        misalignment: 0.15,
        f_ec: 1.1,
        rep_rate_hz: 1e9,
        charlie_fraction: 0.5,
    };

    /// The arms' transmittances (fibre × detector).
    pub fn arms(&self, length_km: f64) -> (f64, f64) {
        let la = length_km * self.charlie_fraction;
        (
            fibre_transmittance(la, self.alpha_db_per_km, 0.0) * self.eta_det,
            fibre_transmittance(length_km - la, self.alpha_db_per_km, 0.0) * self.eta_det,
        )
    }

    /// One-detector click probability when Alice's mean detected photons are `la` and Bob's `lb`,
    /// phases random and independent.
    fn one_click(&self, la: f64, lb: f64) -> f64 {
        let q = 1.0 - self.dark_count_prob;
        if la == 0.0 || lb == 0.0 {
            let l = la + lb;
            return 2.0 * q * (-l / 2.0).exp() * (1.0 - q * (-l / 2.0).exp());
        }
        // Detector intensities (la + lb ± 2√(la lb) cos φ)/2, averaged over φ.
        let s = (la + lb) / 2.0;
        let c = (la * lb).sqrt();
        2.0 * q * ((-s).exp() * bessel_i0(c) - q * (-2.0 * s).exp())
    }

    /// Z-window statistics: (S_Z, E_Z) for sending probability ε and intensity μ_z.
    pub fn z_windows(&self, eta_a: f64, eta_b: f64, epsilon: f64, mu_z: f64) -> (f64, f64) {
        let (a, b) = (eta_a * mu_z, eta_b * mu_z);
        let none = (1.0 - epsilon) * (1.0 - epsilon) * self.one_click(0.0, 0.0);
        let both = epsilon * epsilon * self.one_click(a, b);
        let one = epsilon * (1.0 - epsilon) * (self.one_click(a, 0.0) + self.one_click(0.0, b));
        let s = none + both + one;
        (s, if s > 0.0 { (none + both) / s } else { 0.5 })
    }

    /// Single-photon yield s₁ and phase error e₁ (infinite decoys): one photon from one side.
    pub fn single_photon(&self, eta_a: f64, eta_b: f64) -> (f64, f64) {
        let pd = self.dark_count_prob;
        let eta = (eta_a + eta_b) / 2.0;
        let s1 = (1.0 - pd) * (eta + 2.0 * (1.0 - eta) * pd);
        let err = (1.0 - pd) * (eta * self.misalignment + (1.0 - eta) * pd);
        (s1, if s1 > 0.0 { (err / s1).min(0.5) } else { 0.5 })
    }

    /// Asymptotic key per pulse pair (Wang–Yu–Hu 2018) at given ε and μ_z.
    pub fn asymptotic(&self, length_km: f64, epsilon: f64, mu_z: f64) -> SnsPoint {
        let mut p = self.asymptotic_raw(length_km, epsilon, mu_z);
        p.key_per_pulse = p.key_per_pulse.max(0.0);
        p
    }

    fn asymptotic_raw(&self, length_km: f64, epsilon: f64, mu_z: f64) -> SnsPoint {
        let (ea, eb) = self.arms(length_km);
        let (s_z, e_z) = self.z_windows(ea, eb, epsilon, mu_z);
        let (s1, e1) = self.single_photon(ea, eb);
        let n1 = 2.0 * epsilon * (1.0 - epsilon) * mu_z * (-mu_z).exp() * s1;
        SnsPoint {
            key_per_pulse: n1 * (1.0 - h2(e1)) - self.f_ec * s_z * h2(e_z),
            gain: s_z,
            qber: e_z,
            phase_error: e1,
            epsilon,
            mu: mu_z,
        }
    }

    /// Asymptotic key with ε (searched on a log scale, 10⁻⁶ to ½) and μ_z optimised. Large
    /// misalignment needs a very small ε: the bit-flip error of Z windows must stay below what
    /// 1 − h(e₁ᵖʰ) can pay for.
    pub fn asymptotic_optimal(&self, length_km: f64) -> SnsPoint {
        // The unclamped rate guides the simplex where no key is made yet.
        let (x, _) = multi_start_max(
            |x: &[f64; 2]| {
                self.asymptotic_raw(length_km, 10f64.powf(x[0]), x[1])
                    .key_per_pulse
            },
            &[[-1.4, 0.45], [-2.5, 0.45], [-3.5, 0.5], [-5.0, 0.5]],
            [-6.0, 1e-3],
            [-0.301, 1.5],
            200,
            300,
        );
        self.asymptotic(length_km, 10f64.powf(x[0]), x[1])
    }

    /// Finite-key length after `pulses` pulse pairs with `settings`, phase slice Δ = `delta_rad`,
    /// ε_cor and ε_sec (split evenly between its parts as in Jiang et al. 2019).
    pub fn finite(
        &self,
        length_km: f64,
        pulses: f64,
        s: &SnsSettings,
        delta_rad: f64,
        eps_cor: f64,
        eps_sec: f64,
    ) -> SnsFinite {
        let (ea, eb) = self.arms(length_km);
        let eps = eps_sec / 6.0;
        let dev = |n: f64| (n.max(0.0) / 2.0 * (1.0 / eps).ln()).sqrt();
        let lo = |n: f64| (n - dev(n)).max(0.0);
        let hi = |n: f64| n + dev(n);
        let p_x = 1.0 - s.p_z;
        let [mu1, mu2] = s.mu;
        // X windows, one-sided (the other side sends vacuum) and both-vacuum events.
        let n_00 = pulses * p_x * p_x * s.p_x[0] * s.p_x[0];
        let n_10 = pulses * p_x * p_x * s.p_x[1] * s.p_x[0];
        let n_20 = pulses * p_x * p_x * s.p_x[2] * s.p_x[0];
        let c00 = n_00 * self.one_click(0.0, 0.0);
        let c10 = n_10 * (self.one_click(ea * mu1, 0.0) + self.one_click(0.0, eb * mu1)) / 2.0;
        let c20 = n_20 * (self.one_click(ea * mu2, 0.0) + self.one_click(0.0, eb * mu2)) / 2.0;
        // Yields bounded from the observed counts (rates per window).
        let s00_l = lo(c00) / n_00;
        let s00_u = hi(c00) / n_00;
        let s10_l = lo(c10) / n_10;
        let s20_u = hi(c20) / n_20;
        // s₁ ≥ [μ₂²e^μ₁ S_μ₁0 − μ₁²e^μ₂ S_μ₂0 − (μ₂² − μ₁²)S₀₀]/[μ₁μ₂(μ₂ − μ₁)] (Yu 2019, Eq. 8).
        let s1_l = ((mu2 * mu2 * mu1.exp() * s10_l
            - mu1 * mu1 * mu2.exp() * s20_u
            - (mu2 * mu2 - mu1 * mu1) * s00_u)
            / (mu1 * mu2 * (mu2 - mu1)))
            .max(0.0);
        // Phase-matched X windows, both sending μ₁: relative phase within Δ/2 of 0 or π.
        let frac = (delta_rad / std::f64::consts::PI).min(1.0);
        let n_delta = pulses * p_x * p_x * s.p_x[1] * s.p_x[1] * frac;
        let (clicks, errors) = self.phase_matched(ea, eb, mu1, delta_rad);
        let t_delta_u = hi(n_delta * errors) / n_delta;
        let _ = clicks;
        let e1_u = if s1_l > 0.0 {
            ((t_delta_u - (-2.0 * mu1).exp() * s00_l / 2.0)
                / (2.0 * mu1 * (-2.0 * mu1).exp() * s1_l))
                .clamp(0.0, 0.5)
        } else {
            0.5
        };
        // Z windows.
        let (s_z, e_z) = self.z_windows(ea, eb, s.epsilon, s.mu_z);
        let n_z = pulses * s.p_z * s.p_z;
        let n_t = n_z * s_z;
        let n1 = n_z * 2.0 * s.epsilon * (1.0 - s.epsilon) * s.mu_z * (-s.mu_z).exp() * s1_l;
        let n1_l = lo(n1);
        // Untagged X-window single-photon events used for the phase-error estimate.
        let n_x1 = n_delta * 2.0 * mu1 * (-2.0 * mu1).exp() * s1_l;
        let phase = (e1_u + gamma(eps, e1_u, n1_l, n_x1.max(1.0))).min(0.5);
        let key = n1_l * (1.0 - h2(phase))
            - self.f_ec * n_t * h2(e_z)
            - (2.0 / eps_cor).log2()
            - 2.0 * (1.0 / (std::f64::consts::SQRT_2 * eps * eps)).log2();
        SnsFinite {
            key_bits: key.max(0.0),
            key_per_pulse: key.max(0.0) / pulses,
            raw_key_bits: key,
            n1: n1_l,
            phase_error: phase,
            qber: e_z,
            n_t,
        }
    }

    /// Finite key with all settings optimised (Nelder–Mead from several starts).
    pub fn finite_optimal(
        &self,
        length_km: f64,
        pulses: f64,
        delta_rad: f64,
        eps_cor: f64,
        eps_sec: f64,
    ) -> (SnsSettings, SnsFinite) {
        let settings = |x: &[f64; 6]| SnsSettings {
            p_z: x[0],
            epsilon: x[1],
            mu_z: x[2],
            mu: [x[3], x[3] + x[4]],
            p_x: [x[5], (1.0 - x[5]) * 0.8, (1.0 - x[5]) * 0.2],
        };
        // The unclamped key length guides the simplex where no key is made yet.
        let f = |x: &[f64; 6]| {
            self.finite(length_km, pulses, &settings(x), delta_rad, eps_cor, eps_sec)
                .raw_key_bits
                / pulses
        };
        let starts = [
            [0.9, 0.04, 0.45, 0.05, 0.2, 0.2],
            [0.7, 0.02, 0.4, 0.03, 0.3, 0.4],
            [0.95, 0.06, 0.5, 0.1, 0.3, 0.15],
            [0.5, 0.03, 0.3, 0.02, 0.15, 0.5],
        ];
        let (x, _) = multi_start_max(
            f,
            &starts,
            [0.05, 0.001, 0.01, 0.005, 0.01, 0.05],
            [0.99, 0.5, 1.2, 0.5, 1.0, 0.9],
            400,
            600,
        );
        let s = settings(&x);
        (
            s,
            self.finite(length_km, pulses, &s, delta_rad, eps_cor, eps_sec),
        )
    }

    /// Clicks and error clicks per phase-matched X window with both sending μ₁ (relative phase
    /// uniform within ±Δ/2 of a match), misalignment e_d sending that fraction of the light to the
    /// wrong detector.
    fn phase_matched(&self, ea: f64, eb: f64, mu1: f64, delta_rad: f64) -> (f64, f64) {
        let q = 1.0 - self.dark_count_prob;
        let (a, b) = (ea * mu1, eb * mu1);
        let steps = 64;
        let (mut clicks, mut errors) = (0.0, 0.0);
        for i in 0..steps {
            let phi = delta_rad * ((f64::from(i) + 0.5) / f64::from(steps) - 0.5);
            let c = 2.0 * (a * b).sqrt() * phi.cos();
            let (right0, wrong0) = ((a + b + c) / 2.0, (a + b - c).max(0.0) / 2.0);
            let ed = self.misalignment;
            let right = (1.0 - ed) * right0 + ed * wrong0;
            let wrong = (1.0 - ed) * wrong0 + ed * right0;
            let p_r = 1.0 - q * (-right).exp();
            let p_w = 1.0 - q * (-wrong).exp();
            clicks += p_r * (1.0 - p_w) + p_w * (1.0 - p_r);
            errors += p_w * (1.0 - p_r);
        }
        (clicks / f64::from(steps), errors / f64::from(steps))
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
        probability("charlie_fraction", self.charlie_fraction)
    }
}

/// Largest distance (km, to 0.1 km) with positive asymptotic SNS key.
pub fn asymptotic_reach(m: &Sns) -> f64 {
    crate::physics::optimise::bisect_last_true(
        |l| m.asymptotic_optimal(l).key_per_pulse > 0.0,
        0.0,
        2000.0,
        0.1,
    )
}

/// Convenience for curves: best key per pulse pair with μ_z only optimised at fixed ε.
pub fn optimal_mu(m: &Sns, length_km: f64, epsilon: f64) -> SnsPoint {
    let (mu, _) = log_grid_golden_max(
        |mu| m.asymptotic(length_km, epsilon, mu).key_per_pulse,
        1e-3,
        1.5,
        24,
    );
    m.asymptotic(length_km, epsilon, mu)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::physics::bounds::plob;

    #[test]
    fn z_windows_do_not_depend_on_misalignment() {
        let m = Sns::WYH2018;
        let bad = Sns {
            misalignment: 0.3,
            ..m
        };
        let (ea, eb) = m.arms(300.0);
        assert_eq!(
            m.z_windows(ea, eb, 0.2, 0.4),
            bad.z_windows(ea, eb, 0.2, 0.4)
        );
        assert!(bad.single_photon(ea, eb).1 > 0.29);
    }

    #[test]
    fn beats_plob_far_away() {
        let m = Sns {
            misalignment: 0.03,
            ..Sns::WYH2018
        };
        let p = m.asymptotic_optimal(400.0);
        let eta_ch = fibre_transmittance(400.0, m.alpha_db_per_km, 0.0);
        assert!(
            p.key_per_pulse > plob(eta_ch),
            "{} vs {}",
            p.key_per_pulse,
            plob(eta_ch)
        );
        // √η scaling: 100 km more costs about 10 dB, not 20.
        let q = m.asymptotic_optimal(500.0);
        let db = 10.0 * (p.key_per_pulse / q.key_per_pulse).log10();
        assert!(db > 8.0 && db < 14.0, "{db}");
    }

    #[test]
    fn tolerates_large_misalignment_as_published() {
        // Wang, Yu, Hu, PRA 98, 062323 (2018), abstract: the protocol "exceeds a secure distance
        // of 700, 600, 500, or 300 km even though the single-photon interference misalignment
        // error rate is as large as 15%, 25%, 35%, or 45%". Here: 687, 607, 497, 276 km.
        let published = [(0.15, 700.0), (0.25, 600.0), (0.35, 500.0), (0.45, 300.0)];
        let mut reach = Vec::new();
        for (e_d, km) in published {
            let m = Sns {
                misalignment: e_d,
                ..Sns::WYH2018
            };
            let r = asymptotic_reach(&m);
            assert!((r / km - 1.0).abs() < 0.1, "e_d {e_d}: {r} km vs {km}");
            reach.push(r);
        }
        // The steps between misalignments, which do not depend on the detector: −100, −100,
        // −200 km published.
        for (i, step) in [100.0, 100.0, 200.0].iter().enumerate() {
            let d = reach[i] - reach[i + 1];
            assert!((d - step).abs() < 30.0, "step {i}: {d} km");
        }
    }

    #[test]
    fn finite_key_approaches_asymptote() {
        let m = Sns {
            misalignment: 0.03,
            ..Sns::WYH2018
        };
        let asym = m.asymptotic_optimal(200.0).key_per_pulse;
        let mut prev = 0.0;
        for n in [1e11, 1e12, 1e13, 1e15] {
            let (_, k) = m.finite_optimal(200.0, n, 0.2, 1e-10, 1e-10);
            assert!(k.key_per_pulse > prev, "N = {n}: {}", k.key_per_pulse);
            assert!(k.key_per_pulse < asym);
            prev = k.key_per_pulse;
        }
        assert!(prev > 0.1 * asym, "{prev} vs {asym}");
    }
}
