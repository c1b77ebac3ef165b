//! Decoy-state BB84 in the asymptotic limit (infinitely long keys).
//!
//! * GLLP rate, decoy form: R = q{−Q_μ f H₂(E_μ) + Q₁[1 − H₂(e₁)]} (Gottesman, Lo, Lütkenhaus,
//!   Preskill, QIC 4, 325 (2004); Lo, Ma, Chen, PRL 94, 230504 (2005)).
//! * Vacuum + weak decoy bounds on Y₁ and e₁: Ma, Qi, Zhao, Lo, PRA 72, 012326 (2005).
//! * Infinite decoys: Y₁ and e₁ known exactly.
//! * No decoy: GLLP with Δ = P_multi/Q_μ.
//! * Efficient BB84 (Lo, Chau, Ardehali, J. Cryptol. 18, 133 (2005)): basis Z with probability
//!   p_Z on both sides; sifting p_Z² + p_X² and a key from Z only.
//!
//! Model of the channel: simulator/docs/models.md §1 (η_sys, Y₀ = 2p_dc, e₀ = ½, misalignment e_d).

use std::f64::consts::LN_2;

use serde::{Deserialize, Serialize};

use super::channel::{DvHardware, dead_time_factor, error_1, gain, h2, qber, yield_1};
use super::optimise::{bisect_last_true, brent_max, log_grid_golden_max};

/// Where [`AsymptoticBb84::optimal_mu`] starts its search for the best signal intensity
/// (photons per pulse).
pub const MU_SEED: f64 = 0.5;

/// How Y₁ and e₁ are obtained.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum DecoyMethod {
    /// Infinitely many decoys: Y₁ and e₁ exactly.
    Infinite,
    /// One weak decoy of intensity `nu` plus the vacuum (Ma et al. 2005).
    VacuumWeak {
        /// Weak decoy intensity ν (< μ).
        nu: f64,
    },
    /// No decoy: GLLP with the worst-case multi-photon fraction.
    NoDecoy,
}

/// Everything a decoy-state asymptotic evaluation needs besides the distance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AsymptoticBb84 {
    /// Hardware and fibre.
    pub hw: DvHardware,
    /// Error-correction inefficiency f ≥ 1.
    pub f_ec: f64,
    /// Probability of basis Z on both sides: ½ for standard BB84 (sifting ½); close to 1 for
    /// efficient BB84, whose sifting factor is p_Z² + p_X². Errors are symmetric between the
    /// bases in this channel model, so both matching-basis sets contribute key.
    pub p_z: f64,
    /// Decoy method.
    pub method: DecoyMethod,
}

/// One evaluated point.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct AsymptoticPoint {
    /// Secret key per emitted pulse (≥ 0).
    pub key_per_pulse: f64,
    /// Sifted key-basis bits per emitted pulse.
    pub sifted_per_pulse: f64,
    /// Signal gain Q_μ.
    pub gain: f64,
    /// Signal QBER E_μ.
    pub qber: f64,
    /// Single-photon yield used (lower bound for finite decoys).
    pub y1: f64,
    /// Single-photon error used (upper bound for finite decoys).
    pub e1: f64,
}

/// Vacuum + weak decoy bounds (Y₁ᴸ, e₁ᵁ) of Ma et al. 2005, computed from the expected gains and
/// QBERs of the signal μ and decoy ν at system transmittance `eta_sys`. Clamped to Y₁ᴸ ≥ 0 and
/// e₁ᵁ ≤ ½.
pub fn vacuum_weak_bounds(eta_sys: f64, y0: f64, e_d: f64, mu: f64, nu: f64) -> (f64, f64) {
    let q_mu = gain(eta_sys, y0, mu);
    let q_nu = gain(eta_sys, y0, nu);
    let e_nu = qber(eta_sys, y0, e_d, nu);
    let y1_l = mu / (mu * nu - nu * nu)
        * (q_nu * nu.exp()
            - q_mu * mu.exp() * nu * nu / (mu * mu)
            - (mu * mu - nu * nu) / (mu * mu) * y0);
    let y1_l = y1_l.max(0.0);
    let e1_u = if y1_l > 0.0 {
        ((e_nu * q_nu * nu.exp() - 0.5 * y0) / (y1_l * nu)).clamp(0.0, 0.5)
    } else {
        0.5
    };
    (y1_l, e1_u)
}

/// GLLP key rate per pulse: q{−Q f H₂(E) + Q₁[1 − H₂(e₁)]}, clamped at 0.
pub fn gllp_rate(q: f64, f_ec: f64, q_mu: f64, e_mu: f64, q1: f64, e1: f64) -> f64 {
    (q * (q1 * (1.0 - h2(e1)) - f_ec * q_mu * h2(e_mu))).max(0.0)
}

impl AsymptoticBb84 {
    /// The evaluation setting of Ma, Qi, Zhao, Lo 2005 for the GYS hardware: standard BB84
    /// (p_Z = ½), f = 1.22, with the given decoy method.
    pub fn gys(method: DecoyMethod) -> Self {
        Self {
            hw: DvHardware::GYS,
            f_ec: 1.22,
            p_z: 0.5,
            method,
        }
    }

    /// The rate at system transmittance `eta_sys` with signal intensity `mu`. A detector dead
    /// time scales every detection by the factor c_dt of Rusca 2018, App. B (saturation removes
    /// detections whatever their content, so the QBER and the bounds are unchanged).
    pub fn at_eta(&self, eta_sys: f64, mu: f64) -> AsymptoticPoint {
        let mut p = self.at_eta_unsaturated(eta_sys, mu);
        if self.hw.dead_time_s > 0.0 {
            let c_dt = dead_time_factor(self.hw.rep_rate_hz, p.gain, self.hw.dead_time_s);
            p.key_per_pulse *= c_dt;
            p.sifted_per_pulse *= c_dt;
        }
        p
    }

    fn at_eta_unsaturated(&self, eta_sys: f64, mu: f64) -> AsymptoticPoint {
        let hw = &self.hw;
        let y0 = hw.y0();
        let q_mu = gain(eta_sys, y0, mu);
        let e_mu = qber(eta_sys, y0, hw.misalignment, mu);
        let q = self.p_z * self.p_z + (1.0 - self.p_z) * (1.0 - self.p_z);
        let sifted = q * q_mu;
        let (y1, e1) = match self.method {
            DecoyMethod::Infinite => (yield_1(eta_sys, y0), error_1(eta_sys, y0, hw.misalignment)),
            DecoyMethod::VacuumWeak { nu } => {
                vacuum_weak_bounds(eta_sys, y0, hw.misalignment, mu, nu)
            }
            DecoyMethod::NoDecoy => {
                // GLLP without decoys: all multi-photon pulses are assumed insecure.
                let p_multi = 1.0 - (1.0 + mu) * (-mu).exp();
                let delta = (p_multi / q_mu).min(1.0);
                let key = if delta < 1.0 {
                    q * q_mu
                        * (-f_h(self.f_ec, e_mu) + (1.0 - delta) * (1.0 - h2(e_mu / (1.0 - delta))))
                } else {
                    0.0
                };
                return AsymptoticPoint {
                    key_per_pulse: key.max(0.0),
                    sifted_per_pulse: sifted,
                    gain: q_mu,
                    qber: e_mu,
                    y1: q_mu * (1.0 - delta) / (mu * (-mu).exp()),
                    e1: (e_mu / (1.0 - delta)).min(0.5),
                };
            }
        };
        let q1 = y1 * mu * (-mu).exp();
        AsymptoticPoint {
            key_per_pulse: gllp_rate(q, self.f_ec, q_mu, e_mu, q1, e1),
            sifted_per_pulse: sifted,
            gain: q_mu,
            qber: e_mu,
            y1,
            e1,
        }
    }

    /// The rate over `length_km` of this link's fibre.
    pub fn at_distance(&self, length_km: f64, mu: f64) -> AsymptoticPoint {
        self.at_eta(self.hw.eta_sys(length_km), mu)
    }

    /// Signal intensity maximising the key rate at `eta_sys` (log grid then golden section on
    /// [10⁻⁴, 1.2], kept above the weak decoy), with the point it gives. With infinite decoys
    /// Newton's method finds the maximum of the smooth unclamped rate (see
    /// [`Self::optimal_mu_from`], here started from μ = [`MU_SEED`]).
    pub fn optimal_mu(&self, eta_sys: f64) -> (f64, AsymptoticPoint) {
        let mut seed = MU_SEED;
        self.optimal_mu_from(eta_sys, &mut seed)
    }

    /// Like [`Self::optimal_mu`], with infinite decoys started from `seed`, an estimate of the
    /// intensity maximising the unclamped rate (photons per pulse), which is replaced by the
    /// maximiser found. A curve passes each point's maximiser on to the next: neighbouring
    /// points have nearly the same optimum, and Newton's method then converges in two or three
    /// evaluations instead of Brent's thirteen. The optimum is found to 10⁻⁷ in ln μ or better
    /// from any seed, so the key rate (stationary there) does not depend on the seed beyond
    /// rounding. Other methods ignore the seed.
    pub fn optimal_mu_from(&self, eta_sys: f64, seed: &mut f64) -> (f64, AsymptoticPoint) {
        if self.method == DecoyMethod::Infinite {
            // With Y₁ and e₁ exact, the unclamped rate is smooth and unimodal in ln μ. Where
            // its maximum gives no key (beyond the reach) the grid search below decides.
            let (mu, best) = match self.newton_unclamped_max(eta_sys, *seed) {
                Some(found) => {
                    *seed = found.0;
                    found
                }
                None => self.brent_unclamped_max(eta_sys),
            };
            let p = self.at_eta(eta_sys, mu);
            if p.key_per_pulse > 0.0 {
                return (mu, p);
            }
            // Beyond the reach the unclamped rate is negative at every μ of [10⁻³, 1.2] (it is
            // unimodal and `best` is its maximum): the clamped key is 0 everywhere, and the grid
            // search below, which compares only key values, ends where it ends for any constant
            // function. Take that μ without evaluating the physics 64 times. Only a maximum
            // clearly below 0 (by 1 % of the error-correction term, far beyond the optimiser's
            // tolerance in ln μ) takes this path; near the reach the grid search still decides.
            let hw = &self.hw;
            let y0 = hw.y0();
            let q = self.sifting();
            let q_mu = gain(eta_sys, y0, mu);
            let ec = q * self.f_ec * q_mu * h2(qber(eta_sys, y0, hw.misalignment, mu));
            if best < -0.01 * ec {
                let (mu0, _) = log_grid_golden_max(|_| 0.0, 1e-3, 1.2, 24);
                return (mu0, self.at_eta(eta_sys, mu0));
            }
        }
        let lo = match self.method {
            DecoyMethod::VacuumWeak { nu } => nu * 1.05 + 1e-3,
            _ => 1e-3,
        };
        let (mu, _) = log_grid_golden_max(|mu| self.at_eta(eta_sys, mu).key_per_pulse, lo, 1.2, 24);
        (mu, self.at_eta(eta_sys, mu))
    }

    /// Sifting factor p_Z² + p_X².
    fn sifting(&self) -> f64 {
        self.p_z * self.p_z + (1.0 - self.p_z) * (1.0 - self.p_z)
    }

    /// With infinite decoys: the μ of [10⁻³, 1.2] maximising the unclamped rate
    /// q[Y₁μe^(−μ)(1 − H₂(e₁)) − f Q_μ H₂(E_μ)] (times the dead-time factor), and the rate
    /// there, by Brent's method in ln μ (13 evaluations or so, to 10⁻⁵ in ln μ). The reference
    /// for [`Self::newton_unclamped_max`], and its fallback.
    fn brent_unclamped_max(&self, eta_sys: f64) -> (f64, f64) {
        let hw = &self.hw;
        let y0 = hw.y0();
        let single = 1.0 - h2(error_1(eta_sys, y0, hw.misalignment));
        let y1 = yield_1(eta_sys, y0);
        let q = self.sifting();
        let raw = |t: f64| {
            let mu = t.exp();
            let q_mu = gain(eta_sys, y0, mu);
            let e_mu = qber(eta_sys, y0, hw.misalignment, mu);
            let r = q * (y1 * mu * (-mu).exp() * single - self.f_ec * q_mu * h2(e_mu));
            if hw.dead_time_s > 0.0 {
                r * dead_time_factor(hw.rep_rate_hz, q_mu, hw.dead_time_s)
            } else {
                r
            }
        };
        let (t, best) = brent_max(raw, 1e-3f64.ln(), 1.2f64.ln(), 1e-5);
        (t.exp(), best)
    }

    /// The maximiser of [`Self::brent_unclamped_max`]'s function and the rate there, by a
    /// safeguarded Newton's method on its derivative in t = ln μ, started at μ = `seed`.
    /// `None` where the closed-form derivatives below do not hold (a dead time, a clamp of
    /// Q_μ ≤ 1 or E_μ ≤ ½ reached, e_d ≥ ½), and the caller uses Brent's method instead.
    ///
    /// With a = e^(−ημ), Q = Y₀ + 1 − a, E = [Y₀/2 + e_d(1 − a)]/Q, s = 1 − H₂(e₁) and
    /// B = H₂(E) + (e_d − E) log₂[(1 − E)/E], the rate R/q = Y₁μe^(−μ)s − f Q H₂(E) has
    /// (using dQ/dμ = ηa and Q dE/dμ = ηa(e_d − E)):
    ///
    /// * dR/dμ / q = Y₁ s e^(−μ)(1 − μ) − f η a B;
    /// * d²R/dμ² / q = Y₁ s e^(−μ)(μ − 2) + f η² a [B + a(e_d − E)²/(ln 2 · E(1 − E)Q)].
    ///
    /// Four transcendental calls per evaluation (e^μ, e^(−ημ) − 1 and two logarithms). The
    /// bracket [lo, hi] of the sign change of dR/dμ shrinks at every evaluation; a Newton step
    /// that leaves it (or a convex stretch) is replaced by bisection, or by the box's end when
    /// that end has not been evaluated (the maximum may lie on it).
    fn newton_unclamped_max(&self, eta_sys: f64, seed: f64) -> Option<(f64, f64)> {
        let hw = &self.hw;
        let e_d = hw.misalignment;
        if hw.dead_time_s > 0.0 || !(0.0..0.5).contains(&e_d) {
            return None;
        }
        let eta = eta_sys;
        let y0 = hw.y0();
        let y1s = yield_1(eta, y0) * (1.0 - h2(error_1(eta, y0, e_d)));
        let q = self.sifting();
        let f = self.f_ec;
        // (dR/dt, d²R/dt², R), all divided by q, at t = ln μ.
        let eval = |t: f64| {
            let mu = t.exp();
            let em1 = (-eta * mu).exp_m1();
            let a = 1.0 + em1;
            let q_mu = y0 - em1;
            let e = (0.5 * y0 - e_d * em1) / q_mu;
            if !(q_mu > 0.0 && q_mu < 1.0 && e > 0.0 && e < 0.5) {
                return None;
            }
            let (ln_e, ln_1e) = (e.ln(), (-e).ln_1p());
            let h = -(e * ln_e + (1.0 - e) * ln_1e) / LN_2;
            let b = h + (e_d - e) * (ln_1e - ln_e) / LN_2;
            let emu = (-mu).exp();
            let fa = f * eta * a;
            let d1 = y1s * emu * (1.0 - mu) - fa * b;
            let de = e_d - e;
            let d2 = y1s * emu * (mu - 2.0)
                + fa * eta * (b + a * de * de / (LN_2 * e * (1.0 - e) * q_mu));
            let r = y1s * mu * emu - f * q_mu * h;
            Some((mu * d1, mu * d1 + mu * mu * d2, r))
        };
        let (t_min, t_max) = (1e-3f64.ln(), 1.2f64.ln());
        let (mut lo, mut hi) = (t_min, t_max);
        let (mut lo_seen, mut hi_seen) = (false, false);
        let mut t = if seed > 0.0 {
            seed.ln().clamp(t_min, t_max)
        } else {
            MU_SEED.ln()
        };
        for _ in 0..100 {
            let (g, g2, r) = eval(t)?;
            if g > 0.0 {
                if t >= t_max {
                    return Some((t_max.exp(), q * r));
                }
                (lo, lo_seen) = (t, true);
            } else if g < 0.0 {
                if t <= t_min {
                    return Some((t_min.exp(), q * r));
                }
                (hi, hi_seen) = (t, true);
            } else {
                return Some((t.exp(), q * r));
            }
            let newton = t - g / g2;
            let next = if g2 < 0.0 && newton > lo && newton < hi {
                newton
            } else if g > 0.0 && !hi_seen {
                t_max
            } else if g < 0.0 && !lo_seen {
                t_min
            } else {
                0.5 * (lo + hi)
            };
            // Newton converges quadratically: a step of 10⁻⁷ leaves an error of order 10⁻¹⁴.
            if (next - t).abs() <= 1e-7 || hi - lo <= 1e-9 {
                return Some((next.exp(), q * r));
            }
            t = next;
        }
        None
    }

    /// Largest fibre length (km, to 1 m) with a positive key rate at fixed `mu`, or with μ
    /// optimised at every length when `mu` is `None`.
    pub fn max_distance(&self, mu: Option<f64>) -> f64 {
        let positive = |l: f64| {
            let eta = self.hw.eta_sys(l);
            match mu {
                Some(mu) => self.at_eta(eta, mu).key_per_pulse > 0.0,
                None => self.optimal_mu(eta).1.key_per_pulse > 0.0,
            }
        };
        bisect_last_true(positive, 0.0, 2000.0, 1e-3)
    }
}

fn f_h(f_ec: f64, e: f64) -> f64 {
    f_ec * h2(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Beyond the reach `optimal_mu` skips the grid search when the rate is clearly negative at
    /// every μ: it must return exactly what the grid search returns (μ and point, bit for bit).
    #[test]
    fn the_shortcut_beyond_the_reach_equals_the_grid_search() {
        let metro_dead = DvHardware {
            dead_time_s: 1e-8,
            ..DvHardware::METRO_GHZ
        };
        let mut shortcut = 0;
        for (hw, p_z) in [
            (DvHardware::GYS, 0.5),
            (DvHardware::LIM2014, 0.5),
            (DvHardware::GYS, 0.9),
            (metro_dead, 0.5),
        ] {
            let m = AsymptoticBb84 {
                hw,
                f_ec: 1.22,
                p_z,
                method: DecoyMethod::Infinite,
            };
            for i in 0..2000 {
                let eta = hw.eta_sys(400.0 * f64::from(i) / 2000.0);
                let (mu, p) = m.optimal_mu(eta);
                if p.key_per_pulse > 0.0 {
                    continue;
                }
                let (grid_mu, _) =
                    log_grid_golden_max(|mu| m.at_eta(eta, mu).key_per_pulse, 1e-3, 1.2, 24);
                let grid = m.at_eta(eta, grid_mu);
                assert_eq!(mu.to_bits(), grid_mu.to_bits(), "η = {eta}");
                assert_eq!(format!("{p:?}"), format!("{grid:?}"), "η = {eta}");
                shortcut += 1;
            }
        }
        assert!(shortcut > 1000, "{shortcut}");
    }

    /// The optimiser before Newton's method (2026-12-05): Brent's method from scratch at every
    /// point, then the same decision on the clamped key.
    fn brent_optimal_mu(m: &AsymptoticBb84, eta: f64) -> (f64, AsymptoticPoint) {
        let (mu, best) = m.brent_unclamped_max(eta);
        let p = m.at_eta(eta, mu);
        if p.key_per_pulse > 0.0 {
            return (mu, p);
        }
        let (y0, e_d) = (m.hw.y0(), m.hw.misalignment);
        let ec = m.sifting() * m.f_ec * gain(eta, y0, mu) * h2(qber(eta, y0, e_d, mu));
        let (mu, _) = if best < -0.01 * ec {
            log_grid_golden_max(|_| 0.0, 1e-3, 1.2, 24)
        } else {
            log_grid_golden_max(|mu| m.at_eta(eta, mu).key_per_pulse, 1e-3, 1.2, 24)
        };
        (mu, m.at_eta(eta, mu))
    }

    /// Newton's method, from the fixed seed or from the previous point's optimum as a curve
    /// runs it, gives the key rates of Brent's method within 10⁻⁹ of the sifted bits per pulse
    /// (the rate is stationary at the optimum; Brent stopped at 10⁻⁵ in ln μ), never less than
    /// Brent's beyond rounding, key at exactly the same points, and the same reach to the
    /// metre.
    #[test]
    fn newton_matches_brent_on_a_grid_and_at_the_reach() {
        let mut max_rel = 0.0f64;
        for (hw, p_z) in [
            (DvHardware::GYS, 0.5),
            (DvHardware::GYS, 0.9),
            (DvHardware::KTH, 0.5),
            (DvHardware::LIM2014, 0.5),
            (DvHardware::METRO_GHZ, 0.5),
        ] {
            let m = AsymptoticBb84 {
                hw,
                f_ec: 1.22,
                p_z,
                method: DecoyMethod::Infinite,
            };
            let reach = m.max_distance(None);
            let brent_reach = bisect_last_true(
                |l| brent_optimal_mu(&m, hw.eta_sys(l)).1.key_per_pulse > 0.0,
                0.0,
                2000.0,
                1e-3,
            );
            assert!(
                (reach - brent_reach).abs() <= 1e-3,
                "{hw:?}: {reach} vs {brent_reach}"
            );
            // 0 km to 10 km past the reach, the last 2 km in 1 m steps.
            let mut lengths: Vec<f64> = (0..=1000).map(|i| reach * f64::from(i) / 1000.0).collect();
            lengths.extend((0..=2000).map(|i| reach - 1.0 + f64::from(i) * 1e-3));
            lengths.extend((0..=100).map(|i| reach + 1.0 + f64::from(i) * 0.1));
            let mut seed = MU_SEED;
            for l in lengths {
                let eta = hw.eta_sys(l);
                let (_, old) = brent_optimal_mu(&m, eta);
                for (_, new) in [m.optimal_mu(eta), m.optimal_mu_from(eta, &mut seed)] {
                    assert_eq!(
                        new.key_per_pulse > 0.0,
                        old.key_per_pulse > 0.0,
                        "{hw:?} at {l} km"
                    );
                    if old.key_per_pulse > 0.0 {
                        // Relative to the sifted bits: near the reach the key is a small
                        // difference of two terms of that size.
                        let rel = (new.key_per_pulse - old.key_per_pulse) / old.sifted_per_pulse;
                        assert!(rel.abs() <= 1e-9 && rel > -1e-13, "{hw:?} at {l} km: {rel}");
                        max_rel = max_rel.max(rel.abs());
                    } else {
                        assert_eq!(format!("{new:?}"), format!("{old:?}"), "{hw:?} at {l} km");
                    }
                }
            }
        }
        assert!(max_rel < 1e-9, "{max_rel}");
    }

    #[test]
    fn reproduces_computed_table_of_section_2_1() {
        // (L, infinite decoy with μ optimised, vacuum+weak μ = 0.48 ν = 0.05) [C], simulator/docs/models.md §2.1.
        let rows = [
            (0.0, 2.555e-3, 2.414e-3),
            (50.0, 2.226e-4, 2.096e-4),
            (100.0, 1.719e-5, 1.602e-5),
            (125.0, 3.212e-6, 2.855e-6),
        ];
        let inf = AsymptoticBb84::gys(DecoyMethod::Infinite);
        let vw = AsymptoticBb84::gys(DecoyMethod::VacuumWeak { nu: 0.05 });
        for (l, r_inf, r_vw) in rows {
            let (_, p) = inf.optimal_mu(inf.hw.eta_sys(l));
            assert!(
                (p.key_per_pulse / r_inf - 1.0).abs() < 5e-3,
                "inf at {l}: {}",
                p.key_per_pulse
            );
            let p = vw.at_distance(l, 0.48);
            assert!(
                (p.key_per_pulse / r_vw - 1.0).abs() < 5e-3,
                "vw at {l}: {}",
                p.key_per_pulse
            );
        }
    }

    #[test]
    fn bounds_at_50km_match_reference() {
        let hw = DvHardware::GYS;
        let (y1, e1) = vacuum_weak_bounds(hw.eta_sys(50.0), hw.y0(), hw.misalignment, 0.48, 0.05);
        assert!((y1 / 3.955e-3 - 1.0).abs() < 2e-3, "{y1}");
        assert!((e1 / 0.0354 - 1.0).abs() < 5e-3, "{e1}");
    }

    #[test]
    fn efficient_bb84_approaches_twice_standard() {
        let std = AsymptoticBb84::gys(DecoyMethod::Infinite);
        let eff = AsymptoticBb84 { p_z: 0.99, ..std };
        let r_std = std.at_distance(50.0, 0.48).key_per_pulse;
        let r_eff = eff.at_distance(50.0, 0.48).key_per_pulse;
        // Sifting p_Z² + p_X² versus ½ for standard BB84.
        assert!((r_eff / r_std - (0.99 * 0.99 + 0.01 * 0.01) / 0.5).abs() < 1e-9);
    }

    #[test]
    fn dead_time_saturates_short_links_only() {
        let free = AsymptoticBb84 {
            hw: DvHardware::METRO_GHZ,
            ..AsymptoticBb84::gys(DecoyMethod::Infinite)
        };
        let no_dt = AsymptoticBb84 {
            hw: DvHardware {
                dead_time_s: 0.0,
                ..DvHardware::METRO_GHZ
            },
            ..free
        };
        let ratio = |l: f64| {
            free.at_distance(l, 0.5).key_per_pulse / no_dt.at_distance(l, 0.5).key_per_pulse
        };
        // 2.5 GHz × 50 ns: at 0 km a click every few pulses saturates the detector.
        assert!(ratio(0.0) < 0.2, "{}", ratio(0.0));
        assert!(
            ratio(150.0) > 0.98 && ratio(150.0) < 1.0,
            "{}",
            ratio(150.0)
        );
    }

    #[test]
    fn no_decoy_is_much_shorter() {
        let nd = AsymptoticBb84::gys(DecoyMethod::NoDecoy).max_distance(None);
        let inf = AsymptoticBb84::gys(DecoyMethod::Infinite).max_distance(None);
        assert!(nd > 5.0 && nd < 0.5 * inf, "no decoy {nd} km vs {inf} km");
    }
}
