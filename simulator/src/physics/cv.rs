//! Gaussian-modulated coherent-state CV-QKD (GG02) with reverse reconciliation, homodyne
//! detection, collective attacks and a trusted (calibrated) detector, asymptotic.
//!
//! Sources: Lodewyck et al., PRA 76, 042305 (2007); Laudenbach et al., Adv. Quantum Technol. 1,
//! 1800011 (2018). All quantities in shot-noise units (simulator/docs/models.md §2.5):
//! χ_line = 1/T − 1 + ξ, χ_hom = (1 − η)/η + v_el/η, χ_tot = χ_line + χ_hom/T,
//! I_AB = ½ log₂[(V + χ_tot)/(1 + χ_tot)], K = β I_AB − χ_BE.

use serde::{Deserialize, Serialize};

use super::channel::{ParamError, db_to_transmittance, non_negative, positive, probability_open};

/// Parameters of a GG02 link.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gg02 {
    /// Alice's modulation variance V_A (SNU).
    pub v_a: f64,
    /// Excess noise ξ referred to the channel input (SNU).
    pub xi: f64,
    /// Homodyne detector efficiency η.
    pub eta_det: f64,
    /// Electronic noise v_el (SNU).
    pub v_el: f64,
    /// Reconciliation efficiency β.
    pub beta: f64,
    /// Fibre attenuation, dB/km.
    pub alpha_db_per_km: f64,
    /// Symbol rate in Hz.
    pub symbol_rate_hz: f64,
}

/// One evaluated point, bits per symbol.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CvPoint {
    /// Secret key per symbol, β I_AB − χ_BE, clamped at 0.
    pub key_per_symbol: f64,
    /// Alice–Bob mutual information.
    pub i_ab: f64,
    /// Holevo bound of Eve on Bob's data.
    pub chi_be: f64,
}

impl Gg02 {
    /// The test-vector setting of simulator/docs/models.md §2.5: V_A = 4, ξ = 0.01, η = 0.6, v_el = 0.01,
    /// β = 0.95, α = 0.2 dB/km; 100 MBaud.
    pub const REFERENCE: Gg02 = Gg02 {
        v_a: 4.0,
        xi: 0.01,
        eta_det: 0.6,
        v_el: 0.01,
        beta: 0.95,
        alpha_db_per_km: 0.2,
        symbol_rate_hz: 1e8,
    };

    /// Key rate at channel transmittance `t`.
    pub fn at_transmittance(&self, t: f64) -> CvPoint {
        if t <= 0.0 {
            return CvPoint {
                key_per_symbol: 0.0,
                i_ab: 0.0,
                chi_be: 0.0,
            };
        }
        let v = self.v_a + 1.0;
        let chi_line = 1.0 / t - 1.0 + self.xi;
        let chi_hom = (1.0 - self.eta_det) / self.eta_det + self.v_el / self.eta_det;
        let chi_tot = chi_line + chi_hom / t;
        let i_ab = 0.5 * ((v + chi_tot) / (1.0 + chi_tot)).log2();
        let a = v * v * (1.0 - 2.0 * t) + 2.0 * t + t * t * (v + chi_line).powi(2);
        let b = (t * (v * chi_line + 1.0)).powi(2);
        let sb = b.sqrt();
        let c = (v * sb + t * (v + chi_line) + a * chi_hom) / (t * (v + chi_tot));
        let d = sb * (v + sb * chi_hom) / (t * (v + chi_tot));
        let chi_be = holevo_from_invariants(a, b, c, d);
        CvPoint {
            key_per_symbol: (self.beta * i_ab - chi_be).max(0.0),
            i_ab,
            chi_be,
        }
    }

    /// Key rate over `length_km` of fibre.
    pub fn at_distance(&self, length_km: f64) -> CvPoint {
        self.at_transmittance(db_to_transmittance(self.alpha_db_per_km * length_km))
    }

    /// Checks the parameters.
    pub fn validate(&self) -> Result<(), ParamError> {
        positive("v_a", self.v_a)?;
        non_negative("xi", self.xi)?;
        probability_open("eta_det", self.eta_det)?;
        non_negative("v_el", self.v_el)?;
        probability_open("beta", self.beta)?;
        non_negative("alpha_db_per_km", self.alpha_db_per_km)?;
        positive("symbol_rate_hz", self.symbol_rate_hz)
    }
}

/// χ_BE = G((λ₁ − 1)/2) + G((λ₂ − 1)/2) − G((λ₃ − 1)/2) − G((λ₄ − 1)/2), clamped at 0, from the
/// invariants of the two symplectic spectra: λ²₁,₂ = ½[A ± √(A² − 4B)], λ²₃,₄ = ½[C ± √(C² − 4D)].
pub fn holevo_from_invariants(a: f64, b: f64, c: f64, d: f64) -> f64 {
    let eig = |p: f64, q: f64| {
        let r = (p * p - 4.0 * q).max(0.0).sqrt();
        (
            ((p + r) / 2.0).max(0.0).sqrt(),
            ((p - r) / 2.0).max(0.0).sqrt(),
        )
    };
    let (l1, l2) = eig(a, b);
    let (l3, l4) = eig(c, d);
    let g = |l: f64| entropy_g((l - 1.0) / 2.0);
    (g(l1) + g(l2) - g(l3) - g(l4)).max(0.0)
}

/// G(x) = (x + 1) log₂(x + 1) − x log₂ x, the entropy of a thermal state of mean photon number
/// x; 0 at x ≤ 0.
pub fn entropy_g(x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    (x + 1.0) * (x + 1.0).log2() - x * x.log2()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reproduces_test_vector() {
        // (L, K, I_AB, χ_BE) from simulator/docs/models.md §2.5 [C].
        let rows = [
            (0.0, 0.749, 0.875, 0.082),
            (10.0, 0.253, 0.659, 0.373),
            (25.0, 0.0916, 0.404, 0.292),
            (50.0, 0.0229, 0.154, 0.123),
            (80.0, 5.13e-3, 0.042, 0.035),
            (100.0, 1.97e-3, 0.017, 0.014),
        ];
        for (l, k, i, x) in rows {
            let p = Gg02::REFERENCE.at_distance(l);
            assert!(
                (p.key_per_symbol / k - 1.0).abs() < 0.01,
                "K at {l}: {}",
                p.key_per_symbol
            );
            assert!((p.i_ab / i - 1.0).abs() < 0.02, "I at {l}: {}", p.i_ab);
            assert!(
                (p.chi_be / x - 1.0).abs() < 0.03,
                "chi at {l}: {}",
                p.chi_be
            );
        }
        let hi = Gg02 {
            beta: 0.98,
            ..Gg02::REFERENCE
        };
        assert!((hi.at_distance(25.0).key_per_symbol / 0.104 - 1.0).abs() < 0.01);
        assert!((hi.at_distance(50.0).key_per_symbol / 0.0275 - 1.0).abs() < 0.01);
    }
}
