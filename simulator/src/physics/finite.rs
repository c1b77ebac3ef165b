//! Finite-key decoy-state BB84.
//!
//! * [`Lim2014`]: three intensities μ₁ > μ₂ + μ₃, μ₂ > μ₃ ≥ 0, key from basis X (probability
//!   q_x), parameter estimation from Z; Lim, Curty, Walenta, Xu, Zbinden, PRA 89, 022307 (2014),
//!   Eqs. (1)–(5), with ε_sec = 21ε and, when asked, ε_sec = κℓ solved by fixed-point iteration.
//! * [`Rusca2018`]: one decoy (two intensities μ₁ > μ₂, no vacuum), key from Z, phase error from
//!   X; Rusca, Boaron, Grünenfelder, Martin, Zbinden, APL 112, 171104 (2018), App. A (A16, A17,
//!   A19, A22, A23, A25; ε_sec = 19ε; the e^k/p_k prefactor of A18 restored as in Lim), with the
//!   dead-time correction of App. B.
//!
//! Detector model of Lim (simulator/docs/models.md §1): R_k = D_k(1 + p_ap),
//! e_k = p_dc + e_mis(1 − e^(−η k)) + p_ap D_k/2 with η = η_sys (see the ambiguity note there).
//! Counts are expected values, so the
//! functions are deterministic; [`Counts`] add up, so a satellite pass with a time-varying
//! channel sums its counts before one key-length evaluation.

use std::f64::consts::LN_2;

use serde::{Deserialize, Serialize};

use super::channel::{DvHardware, ParamError, dead_time_factor, h2, lim_click, lim_error};
use super::optimise::{Simplex, multi_start_max, nelder_mead_max_with};
use super::postproc::EcModel;

/// Expected detection statistics of one block, per intensity `k` (index into the intensities).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Counts<const K: usize> {
    /// Emitted pulses N.
    pub pulses: f64,
    /// Detections with both in the key basis (X for Lim, Z for Rusca), per intensity.
    pub n_key: [f64; K],
    /// Errors among them.
    pub m_key: [f64; K],
    /// Detections with both in the test basis, per intensity.
    pub n_test: [f64; K],
    /// Errors among them.
    pub m_test: [f64; K],
}

impl<const K: usize> std::ops::AddAssign for Counts<K> {
    fn add_assign(&mut self, o: Self) {
        self.pulses += o.pulses;
        for k in 0..K {
            self.n_key[k] += o.n_key[k];
            self.m_key[k] += o.m_key[k];
            self.n_test[k] += o.n_test[k];
            self.m_test[k] += o.m_test[k];
        }
    }
}

impl<const K: usize> Default for Counts<K> {
    fn default() -> Self {
        Self {
            pulses: 0.0,
            n_key: [0.0; K],
            m_key: [0.0; K],
            n_test: [0.0; K],
            m_test: [0.0; K],
        }
    }
}

impl<const K: usize> Counts<K> {
    /// Detections in the key basis, all intensities.
    pub fn key_total(&self) -> f64 {
        self.n_key.iter().sum()
    }
    /// The counts of `factor` times as many pulses (expected counts are linear in the pulses).
    pub fn scaled(&self, factor: f64) -> Self {
        Self {
            pulses: self.pulses * factor,
            n_key: self.n_key.map(|v| v * factor),
            m_key: self.m_key.map(|v| v * factor),
            n_test: self.n_test.map(|v| v * factor),
            m_test: self.m_test.map(|v| v * factor),
        }
    }

    /// Observed QBER in the key basis.
    pub fn key_qber(&self) -> f64 {
        let n = self.key_total();
        if n > 0.0 {
            self.m_key.iter().sum::<f64>() / n
        } else {
            0.5
        }
    }
}

/// ε_sec either fixed or proportional to the key length (ε_sec = κℓ, Lim 2014 Sec. IV).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Secrecy {
    /// A fixed ε_sec.
    Fixed(f64),
    /// ε_sec = κ·ℓ.
    PerBit(f64),
}

/// Result of a finite-key evaluation of one block.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct FiniteKey {
    /// Secret key length ℓ in bits (≥ 0, before authentication cost).
    pub key_bits: f64,
    /// Emitted pulses N needed for the block.
    pub pulses: f64,
    /// ℓ/N.
    pub key_per_pulse: f64,
    /// Observed key-basis QBER.
    pub qber: f64,
    /// Upper bound on the phase error rate of the key.
    pub phase_error: f64,
    /// Lower bound on vacuum key-basis detections (s_X,0 for Lim, s_Z,0 for Rusca).
    pub s0: f64,
    /// Lower bound on single-photon key-basis detections.
    pub s1: f64,
    /// ε_sec actually used.
    pub eps_sec: f64,
    /// Whether error correction was possible at all at this QBER.
    pub ec_ok: bool,
}

impl FiniteKey {
    /// The result for an unrounded key length `l` (floored and clamped at 0 unless `raw`).
    #[allow(clippy::too_many_arguments)] // one field each, named at the call sites
    fn assemble(
        l: f64,
        raw: bool,
        pulses: f64,
        qber: f64,
        phase: f64,
        (s0, s1): (f64, f64),
        eps_sec: f64,
        ec_ok: bool,
    ) -> Self {
        let key_bits = if raw { l } else { l.floor().max(0.0) };
        FiniteKey {
            key_bits,
            pulses,
            key_per_pulse: if pulses > 0.0 { key_bits / pulses } else { 0.0 },
            qber,
            phase_error: phase,
            s0,
            s1,
            eps_sec,
            ec_ok,
        }
    }
}

/// γ(a, b, c, d) of Lim 2014 Eq. (5), with 21²/a² inside the logarithm.
pub fn gamma(a: f64, b: f64, c: f64, d: f64) -> f64 {
    if !(b > 0.0 && b < 1.0 && c > 0.0 && d > 0.0) {
        return if b <= 0.0 && c > 0.0 && d > 0.0 {
            0.0
        } else {
            0.5
        };
    }
    let t = (c + d) * (1.0 - b) * b / (c * d * LN_2);
    let arg = (c + d) / (c * d * (1.0 - b) * b) * 441.0 / (a * a);
    let v = t * arg.log2();
    if v > 0.0 { v.sqrt() } else { 0.0 }
}

/// τ_n = Σ_k p_k e^(−μ_k) μ_kⁿ/n!, the probability that an n-photon state was sent.
pub fn tau<const K: usize>(n: u32, mu: &[f64; K], p: &[f64; K]) -> f64 {
    let fact = (1..=n).product::<u32>() as f64;
    (0..K)
        .map(|k| p[k] * (-mu[k]).exp() * mu[k].powi(n as i32) / fact)
        .sum()
}

/// Parameters of the three-intensity protocol that are optimised.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LimSettings {
    /// Intensities μ₁ > μ₂ + μ₃, μ₂ > μ₃ ≥ 0.
    pub mu: [f64; 3],
    /// Probabilities p_μ₁, p_μ₂, p_μ₃ (sum 1).
    pub p: [f64; 3],
    /// Probability of basis X (the key basis), both sides.
    pub q_x: f64,
}

impl LimSettings {
    /// Checks the constraints of the protocol.
    pub fn validate(&self) -> Result<(), ParamError> {
        let [m1, m2, m3] = self.mu;
        if !(m3 >= 0.0 && m2 > m3) {
            return Err(ParamError::new("mu2", m2, "needs mu2 > mu3 ≥ 0"));
        }
        if m1 <= m2 + m3 {
            return Err(ParamError::new("mu1", m1, "needs mu1 > mu2 + mu3"));
        }
        if self.p.iter().any(|p| !(*p > 0.0 && *p < 1.0))
            || (self.p.iter().sum::<f64>() - 1.0).abs() > 1e-9
        {
            return Err(ParamError::new(
                "p",
                self.p[0],
                "intensity probabilities lie in (0, 1) and sum to 1",
            ));
        }
        if !(self.q_x > 0.0 && self.q_x < 1.0) {
            return Err(ParamError::new("q_x", self.q_x, "must lie in (0, 1)"));
        }
        Ok(())
    }
}

/// Finite-key three-intensity decoy BB84 of Lim et al. 2014.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lim2014 {
    /// Hardware and fibre (dark counts, afterpulsing, misalignment, η_Bob).
    pub hw: DvHardware,
    /// Error-correction leakage (Lim: f = 1.16).
    pub ec: EcModel,
    /// Correctness ε_cor (Lim: 10⁻¹⁵).
    pub eps_cor: f64,
    /// Secrecy (Lim: ε_sec = 10⁻¹⁵·ℓ).
    pub secrecy: Secrecy,
    /// Post-sifting block size n_X in the key basis (Lim: 10⁴ … 10⁹).
    pub block_bits: f64,
    /// Fixed weakest intensity μ₃ (Lim: 2×10⁻⁴).
    pub mu3: f64,
}

impl Lim2014 {
    /// The evaluation setting of Lim 2014 Sec. IV with block size `n_x`.
    pub fn paper(n_x: f64) -> Self {
        Self {
            hw: DvHardware::LIM2014,
            ec: EcModel::Efficiency { f: 1.16 },
            eps_cor: 1e-15,
            secrecy: Secrecy::PerBit(1e-15),
            block_bits: n_x,
            mu3: 2e-4,
        }
    }

    /// Expected counts of `pulses` pulses at system transmittance `eta_sys`.
    pub fn counts(&self, s: &LimSettings, eta_sys: f64, pulses: f64) -> Counts<3> {
        let hw = &self.hw;
        let (kx, kz) = (s.q_x * s.q_x, (1.0 - s.q_x) * (1.0 - s.q_x));
        // Dead time (0 in the paper's setting): Rusca 2018, App. B.
        let total: f64 = (0..3)
            .map(|k| s.p[k] * lim_click(eta_sys, hw.dark_count_prob, hw.afterpulse_prob, s.mu[k]))
            .sum();
        let c_dt = dead_time_factor(hw.rep_rate_hz, total, hw.dead_time_s);
        let mut c = Counts {
            pulses,
            ..Counts::default()
        };
        for k in 0..3 {
            let r = c_dt * lim_click(eta_sys, hw.dark_count_prob, hw.afterpulse_prob, s.mu[k]);
            let e = c_dt
                * lim_error(
                    eta_sys,
                    hw.dark_count_prob,
                    hw.afterpulse_prob,
                    hw.misalignment,
                    s.mu[k],
                );
            c.n_key[k] = pulses * kx * s.p[k] * r;
            c.m_key[k] = pulses * kx * s.p[k] * e;
            c.n_test[k] = pulses * kz * s.p[k] * r;
            c.m_test[k] = pulses * kz * s.p[k] * e;
        }
        c
    }

    /// Pulses needed to sift `block_bits` key-basis bits at `eta_sys`.
    pub fn pulses_for_block(&self, s: &LimSettings, eta_sys: f64) -> f64 {
        let per_pulse = self.counts(s, eta_sys, 1.0).key_total();
        if per_pulse > 0.0 {
            self.block_bits / per_pulse
        } else {
            f64::INFINITY
        }
    }

    /// Key length from (expected or observed) counts. `raw` keeps ℓ unclamped and unfloored, for
    /// the optimiser.
    pub fn key_from_counts(&self, s: &LimSettings, c: &Counts<3>) -> FiniteKey {
        self.key_inner(s, c, false)
    }

    fn key_inner(&self, s: &LimSettings, c: &Counts<3>, raw: bool) -> FiniteKey {
        let cor = self.verification_bits();
        match self.secrecy {
            Secrecy::Fixed(eps) => self.key_at(s, c, eps, cor, raw),
            Secrecy::PerBit(kappa) => {
                // ε_sec = κℓ: start from ℓ ≤ n_X and iterate; ℓ decreases monotonically.
                let mut l = c.key_total().max(1.0);
                let mut out = self.key_at(s, c, kappa * l, cor, raw);
                for _ in 0..30 {
                    let next = out.key_bits.max(1.0);
                    if (next - l).abs() < 0.5 {
                        break;
                    }
                    l = next;
                    out = self.key_at(s, c, kappa * l, cor, raw);
                }
                out
            }
        }
    }

    /// log₂(2/ε_cor), the bits error verification discloses. The same for every evaluation, so
    /// the callers compute it once (the optimiser evaluates `key_at` about 1,300 times a point).
    fn verification_bits(&self) -> f64 {
        (2.0 / self.eps_cor).log2()
    }

    /// Key length of Eq. (1) at a given ε_sec; `verification_bits` is
    /// [`Self::verification_bits`].
    fn key_at(
        &self,
        s: &LimSettings,
        c: &Counts<3>,
        eps_sec: f64,
        verification_bits: f64,
        raw: bool,
    ) -> FiniteKey {
        let mu = s.mu;
        let p = s.p;
        let ln = (21.0 / eps_sec).ln();
        let bounds = |n: &[f64; 3]| {
            let n_tot: f64 = n.iter().sum();
            let d = (n_tot / 2.0 * ln).sqrt();
            let minus: [f64; 3] = std::array::from_fn(|k| mu[k].exp() / p[k] * (n[k] - d));
            let plus: [f64; 3] = std::array::from_fn(|k| mu[k].exp() / p[k] * (n[k] + d));
            (minus, plus)
        };
        let (t0, t1) = (tau(0, &mu, &p), tau(1, &mu, &p));
        let s01 = |n: &[f64; 3]| {
            let (nm, np) = bounds(n);
            let s0 = (t0 * (mu[1] * nm[2] - mu[2] * np[1]) / (mu[1] - mu[2])).max(0.0);
            let s1 = t1
                * mu[0]
                * (nm[1]
                    - np[2]
                    - (mu[1] * mu[1] - mu[2] * mu[2]) / (mu[0] * mu[0]) * (np[0] - s0 / t0))
                / (mu[0] * (mu[1] - mu[2]) - mu[1] * mu[1] + mu[2] * mu[2]);
            (s0, s1.max(0.0))
        };
        let (sx0, sx1) = s01(&c.n_key);
        let (_, sz1) = s01(&c.n_test);
        let (mm, mp) = bounds(&c.m_test);
        let vz1 = (t1 * (mp[1] - mm[2]) / (mu[1] - mu[2])).max(0.0);
        let phase = if sz1 > 0.0 {
            let b = (vz1 / sz1).min(0.5);
            (b + gamma(eps_sec, b, sz1, sx1)).min(0.5)
        } else {
            0.5
        };
        let n_x = c.key_total();
        let qber = c.key_qber();
        let leak = self.ec.leakage(n_x, qber);
        let ec_ok = leak.is_some();
        let l = sx0 + sx1
            - sx1 * h2(phase)
            - leak.unwrap_or(n_x)
            - 6.0 * (21.0 / eps_sec).log2()
            - verification_bits;
        FiniteKey::assemble(l, raw, c.pulses, qber, phase, (sx0, sx1), eps_sec, ec_ok)
    }

    /// Key of one block of `block_bits` at `eta_sys` with settings `s`.
    pub fn block_key(&self, s: &LimSettings, eta_sys: f64) -> FiniteKey {
        let n = self.pulses_for_block(s, eta_sys);
        if !n.is_finite() {
            return self.key_from_counts(s, &Counts::default());
        }
        self.key_from_counts(s, &self.counts(s, eta_sys, n))
    }

    /// Settings maximising ℓ/N at `eta_sys` (Nelder–Mead over q_x, p_μ₁, p_μ₂, μ₁, μ₂ with μ₃
    /// fixed; the unclamped ℓ guides the search through the region without key).
    pub fn optimise(&self, eta_sys: f64) -> (LimSettings, FiniteKey) {
        self.optimise_with(eta_sys, &LimFixed::default())
    }

    /// Like [`Self::optimise`], with the parameters that `fixed` gives held at their values (a
    /// paper's setting) and only the others optimised. Check `fixed` first with
    /// [`LimFixed::validate`]; settings it makes impossible give no key.
    pub fn optimise_with(&self, eta_sys: f64, fixed: &LimFixed) -> (LimSettings, FiniteKey) {
        let exact = |x: &[f64; 5]| {
            let s = lim_decode(self.mu3, fixed, x);
            (s, self.block_key(&s, eta_sys))
        };
        if fixed.all_fixed() {
            return exact(&[0.0; 5]);
        }
        // q_x is searched as ln q_x, down to 1 %, and p_μ₁ down to 1 %: at small blocks the best
        // setting spends most pulses on the test basis (q_x ≈ 0.01–0.1 near the reach with
        // n_X = 10⁴). A linear box from q_x = 0.2 cut that reach by 5 km, and a linear one from
        // 0.01 found key only at some distances near it (simulator/docs/models.md §1.1).
        let (lo, hi, starts) = self.search_space();
        // The search holds ε_sec = κℓ at one ℓ (the exact key length of the first start, then
        // of the best start before refining): the function searched is then smooth and
        // deterministic, so each simplex converges to its tolerance in 100–300 evaluations,
        // where tracking ℓ from one evaluation to the next made the function noisy and every
        // run end at its cap (1,300 evaluations a point). ℓ enters through logarithms, so the
        // optimum hardly moves with it; the settings found are evaluated exactly. Against the
        // tracking search this gives key rates within 2 % and mostly higher (tested), with
        // about 40 % of its evaluations.
        let l_guess = std::cell::Cell::new(exact(&starts[0]).1.key_bits.max(1.0));
        let objective = self.objective(eta_sys, fixed, &l_guess, false);
        let each = Simplex {
            max_evals: 120,
            rel_tol: 1e-6,
            step: 0.1,
        };
        let mut best = (starts[0], f64::NEG_INFINITY);
        for x0 in &starts {
            let r = nelder_mead_max_with(&objective, *x0, lo, hi, &each);
            if r.1 > best.1 {
                best = r;
            }
        }
        l_guess.set(exact(&best.0).1.key_bits.max(1.0));
        let at_best = objective(&best.0);
        let refine = Simplex {
            max_evals: 300,
            rel_tol: 1e-9,
            step: 0.02,
        };
        let refined = nelder_mead_max_with(&objective, best.0, lo, hi, &refine);
        let found = exact(if refined.1 > at_best {
            &refined.0
        } else {
            &best.0
        });
        if found.1.key_bits > 0.03 * self.block_bits && found.0.q_x > 0.02 {
            return found;
        }
        // Little or no key (ℓ < 3 % of n_X), or q_x on its bound of 1 %: near or beyond the
        // reach, where the region with key narrows and two optima compete (q_x at its bound, or
        // near 0.2–0.4; small blocks above all). The earlier search (ℓ tracked, longer runs, and a spread of
        // further starts when it finds no key) runs too and the better result is kept, so the
        // reach is never shorter than it was.
        let wide = exact(&self.tracking_search(eta_sys, fixed, (lo, hi), &starts));
        if wide.1.key_per_pulse > found.1.key_per_pulse {
            wide
        } else {
            found
        }
    }

    /// The box searched (in the coordinates of [`lim_decode`]) and the starts. Several starts
    /// (short runs), then the best one refined: the landscape has a ridge along q_x at long
    /// distance where a single simplex can stall on a bound.
    fn search_space(&self) -> ([f64; 5], [f64; 5], [[f64; 5]; 3]) {
        let mu3 = self.mu3;
        let lo = [0.01f64.ln(), 0.01, 0.05, 2.0 * mu3 + 0.05, 0.02];
        let hi = [0.999f64.ln(), 0.95, 0.95, 1.0, 0.9];
        let starts = [
            [0.85f64.ln(), 0.6, 0.6, 0.5, 0.3],
            [0.7f64.ln(), 0.2, 0.65, 0.43, 0.45],
            [0.95f64.ln(), 0.4, 0.5, 0.6, 0.35],
        ];
        (lo, hi, starts)
    }

    /// The search of [`Self::optimise_with`] before 2026-12-06, kept for the points where the
    /// faster one finds no key: ε_sec = κℓ solved along the search (each evaluation at the ℓ
    /// of the previous one), three starts of 300 evaluations refined by 400, and when they find
    /// no key, twelve more starts spread over the box.
    fn tracking_search(
        &self,
        eta_sys: f64,
        fixed: &LimFixed,
        (lo, hi): ([f64; 5], [f64; 5]),
        starts: &[[f64; 5]],
    ) -> [f64; 5] {
        let l_guess = std::cell::Cell::new(self.block_bits);
        let objective = self.objective(eta_sys, fixed, &l_guess, true);
        let best = multi_start_max(&objective, starts, lo, hi, 300, 400);
        if best.1 > 0.0 {
            best.0
        } else {
            // No key from the usual starts: near the reach (small blocks above all) the
            // region with key is a thin sliver, so search again from a spread of points.
            let more = spread_starts(&lo, &hi);
            let again = multi_start_max(&objective, &more, lo, hi, 200, 400);
            if again.1 > best.1 { again.0 } else { best.0 }
        }
    }
}

impl Lim2014 {
    /// The function the optimiser maximises: ℓ/N of the settings [`lim_decode`] gives, the
    /// unclamped ℓ guiding the search through the region without key.
    ///
    /// The search solves ε_sec = κℓ only approximately, at ℓ = `l_guess`; with `track`, each
    /// evaluation sets `l_guess` to its own ℓ for the next (ℓ enters through logarithms and
    /// moves little between neighbouring settings). The settings found are then evaluated
    /// exactly by `block_key`.
    fn objective<'a>(
        &'a self,
        eta_sys: f64,
        fixed: &'a LimFixed,
        l_guess: &'a std::cell::Cell<f64>,
        track: bool,
    ) -> impl Fn(&[f64; 5]) -> f64 + 'a {
        let cor = self.verification_bits();
        move |x: &[f64; 5]| {
            let s = lim_decode(self.mu3, fixed, x);
            if s.validate().is_err() {
                return -1e300;
            }
            let per_pulse = self.counts(&s, eta_sys, 1.0);
            let n = self.block_bits / per_pulse.key_total();
            if !(n.is_finite() && n > 0.0) {
                return -1e300;
            }
            let c = per_pulse.scaled(n);
            let k = match self.secrecy {
                Secrecy::Fixed(eps) => self.key_at(&s, &c, eps, cor, true),
                Secrecy::PerBit(kappa) => {
                    let k = self.key_at(&s, &c, kappa * l_guess.get().max(1.0), cor, true);
                    if track {
                        l_guess.set(k.key_bits.max(1.0));
                    }
                    k
                }
            };
            k.key_bits / n
        }
    }
}

/// The settings of the optimiser's point `x` = (ln q_x, p_μ₁, p_μ₂/(1 − p_μ₁), μ₁,
/// (μ₂ − μ₃)/(μ₁ − 2μ₃)), with the parameters `fixed` gives held.
fn lim_decode(mu3: f64, fixed: &LimFixed, x: &[f64; 5]) -> LimSettings {
    let mu1 = fixed.mu1.unwrap_or(x[3]);
    let mu2 = fixed.mu2.unwrap_or(mu3 + x[4] * (mu1 - 2.0 * mu3));
    let p1 = fixed.p_mu1.unwrap_or(x[1]);
    let p2 = fixed.p_mu2.unwrap_or((1.0 - p1) * x[2]);
    LimSettings {
        mu: [mu1, mu2, mu3],
        p: [p1, p2, 1.0 - p1 - p2],
        q_x: fixed.q_x.unwrap_or(x[0].exp()),
    }
}

/// Parameters of [`Lim2014`] held at given values instead of optimised (`None`: optimised). μ₃
/// is always fixed, by [`Lim2014::mu3`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimFixed {
    /// Signal intensity μ₁, mean photons per pulse.
    pub mu1: Option<f64>,
    /// Decoy intensity μ₂, mean photons per pulse.
    pub mu2: Option<f64>,
    /// Probability of sending μ₁.
    pub p_mu1: Option<f64>,
    /// Probability of sending μ₂ (μ₃ takes the rest).
    pub p_mu2: Option<f64>,
    /// Probability of the key basis X, both sides.
    pub q_x: Option<f64>,
}

impl LimFixed {
    /// Whether nothing is left to optimise.
    pub fn all_fixed(&self) -> bool {
        self.mu1.is_some()
            && self.mu2.is_some()
            && self.p_mu1.is_some()
            && self.p_mu2.is_some()
            && self.q_x.is_some()
    }

    /// Checks the fixed values against the protocol's constraints (with the model's μ₃).
    pub fn validate(&self, mu3: f64) -> Result<(), ParamError> {
        check_fixed_intensity("mu1", self.mu1)?;
        check_fixed_intensity("mu2", self.mu2)?;
        check_fixed_probability("p_mu1", self.p_mu1)?;
        check_fixed_probability("p_mu2", self.p_mu2)?;
        check_fixed_probability("q_x", self.q_x)?;
        if !(mu3.is_finite() && mu3 >= 0.0) {
            return Err(ParamError::new("mu3", mu3, "must be a finite number ≥ 0"));
        }
        if let Some(m2) = self.mu2
            && m2 <= mu3
        {
            return Err(ParamError::new("mu2", m2, "needs mu2 > mu3"));
        }
        if let (Some(m1), Some(m2)) = (self.mu1, self.mu2)
            && m1 <= m2 + mu3
        {
            return Err(ParamError::new("mu1", m1, "needs mu1 > mu2 + mu3"));
        }
        if let (Some(p1), Some(p2)) = (self.p_mu1, self.p_mu2)
            && p1 + p2 >= 1.0
        {
            return Err(ParamError::new(
                "p_mu2",
                p2,
                "p_mu1 + p_mu2 must stay below 1 (mu3 takes the rest)",
            ));
        }
        Ok(())
    }
}

/// A fixed intensity, if given, lies in (0, 2] photons per pulse.
pub(crate) fn check_fixed_intensity(field: &'static str, v: Option<f64>) -> Result<(), ParamError> {
    match v {
        Some(v) if !(v > 0.0 && v <= 2.0) => Err(ParamError::new(
            field,
            v,
            "an intensity lies in (0, 2] photons per pulse",
        )),
        _ => Ok(()),
    }
}

fn check_fixed_probability(field: &'static str, v: Option<f64>) -> Result<(), ParamError> {
    match v {
        Some(v) if !(v > 0.0 && v < 1.0) => Err(ParamError::new(field, v, "must lie in (0, 1)")),
        _ => Ok(()),
    }
}

/// Twelve deterministic starting points spread over the box `[lo, hi]` (a Halton sequence in
/// bases 2, 3, 5, 7, 11), for a second search when the usual starts find no key.
fn spread_starts<const D: usize>(lo: &[f64; D], hi: &[f64; D]) -> Vec<[f64; D]> {
    const BASES: [u32; 5] = [2, 3, 5, 7, 11];
    (1..=12u32)
        .map(|i| {
            std::array::from_fn(|d| {
                let (mut f, mut r, mut n) = (1.0, 0.0, i);
                let b = BASES[d % BASES.len()];
                while n > 0 {
                    f /= f64::from(b);
                    r += f * f64::from(n % b);
                    n /= b;
                }
                lo[d] + r * (hi[d] - lo[d])
            })
        })
        .collect()
}

/// Parameters of the one-decoy protocol.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RuscaSettings {
    /// Intensities μ₁ > μ₂ > 0.
    pub mu: [f64; 2],
    /// Probability of μ₁ (μ₂ has 1 − p₁).
    pub p1: f64,
    /// Probability of basis Z (the key basis), both sides.
    pub p_z: f64,
}

/// Finite-key one-decoy BB84 of Rusca et al. 2018.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rusca2018 {
    /// Hardware (dead time enters through the App. B correction).
    pub hw: DvHardware,
    /// Error-correction leakage.
    pub ec: EcModel,
    /// ε_sec (= 19ε).
    pub eps_sec: f64,
    /// ε_cor.
    pub eps_cor: f64,
    /// Post-sifting block size n_Z.
    pub block_bits: f64,
    /// Index (0 or 1) of the intensity used for the vacuum upper bound (A16), fixed beforehand.
    pub vacuum_bound_intensity: usize,
}

impl Rusca2018 {
    /// Paper-like defaults: f = 1.16 (their EC), ε_sec = 10⁻⁹, ε_cor = 10⁻¹⁵, vacuum bound from μ₂.
    pub fn new(hw: DvHardware, block_bits: f64) -> Self {
        Self {
            hw,
            ec: EcModel::Efficiency { f: 1.16 },
            eps_sec: 1e-9,
            eps_cor: 1e-15,
            block_bits,
            vacuum_bound_intensity: 1,
        }
    }

    /// Expected counts of `pulses` pulses, dead time included.
    pub fn counts(&self, s: &RuscaSettings, eta_sys: f64, pulses: f64) -> Counts<2> {
        let hw = &self.hw;
        let p = [s.p1, 1.0 - s.p1];
        let total: f64 = (0..2)
            .map(|k| p[k] * lim_click(eta_sys, hw.dark_count_prob, hw.afterpulse_prob, s.mu[k]))
            .sum();
        let c_dt = dead_time_factor(hw.rep_rate_hz, total, hw.dead_time_s);
        let (kz, kx) = (s.p_z * s.p_z, (1.0 - s.p_z) * (1.0 - s.p_z));
        let mut c = Counts {
            pulses,
            ..Counts::default()
        };
        #[allow(clippy::needless_range_loop)] // k indexes five parallel arrays
        for k in 0..2 {
            let r = c_dt * lim_click(eta_sys, hw.dark_count_prob, hw.afterpulse_prob, s.mu[k]);
            let e = c_dt
                * lim_error(
                    eta_sys,
                    hw.dark_count_prob,
                    hw.afterpulse_prob,
                    hw.misalignment,
                    s.mu[k],
                );
            c.n_key[k] = pulses * kz * p[k] * r;
            c.m_key[k] = pulses * kz * p[k] * e;
            c.n_test[k] = pulses * kx * p[k] * r;
            c.m_test[k] = pulses * kx * p[k] * e;
        }
        c
    }

    /// Key length from counts; `raw` keeps ℓ unclamped for the optimiser.
    pub fn key_from_counts(&self, s: &RuscaSettings, c: &Counts<2>) -> FiniteKey {
        self.key_inner(s, c, false)
    }

    fn key_inner(&self, s: &RuscaSettings, c: &Counts<2>, raw: bool) -> FiniteKey {
        let mu = s.mu;
        let p = [s.p1, 1.0 - s.p1];
        let eps = self.eps_sec / 19.0;
        let delta = |n: f64| (n * (1.0 / eps).ln() / 2.0).sqrt();
        let t0: f64 = (0..2).map(|k| p[k] * (-mu[k]).exp()).sum();
        let t1: f64 = (0..2).map(|k| p[k] * (-mu[k]).exp() * mu[k]).sum();
        let kv = self.vacuum_bound_intensity.min(1);
        // (s0_upper, s0_lower, s1_lower) for one basis.
        let bounds = |n: &[f64; 2], m: &[f64; 2]| {
            let (n_tot, m_tot) = (n[0] + n[1], m[0] + m[1]);
            let (dn, dm) = (delta(n_tot), delta(m_tot));
            let nm: [f64; 2] = std::array::from_fn(|k| mu[k].exp() / p[k] * (n[k] - dn));
            let np: [f64; 2] = std::array::from_fn(|k| mu[k].exp() / p[k] * (n[k] + dn));
            let s0u = 2.0 * (t0 * mu[kv].exp() / p[kv] * (m[kv] + dm) + dn);
            let s0l = (t0 / (mu[0] - mu[1]) * (mu[0] * nm[1] - mu[1] * np[0])).max(0.0);
            let s1l = t1 * mu[0] / (mu[1] * (mu[0] - mu[1]))
                * (nm[1]
                    - mu[1] * mu[1] / (mu[0] * mu[0]) * np[0]
                    - (mu[0] * mu[0] - mu[1] * mu[1]) / (mu[0] * mu[0]) * s0u / t0);
            (s0u, s0l, s1l.max(0.0))
        };
        let (_, sz0, sz1) = bounds(&c.n_key, &c.m_key);
        let (_, _, sx1) = bounds(&c.n_test, &c.m_test);
        let dmx = delta(c.m_test[0] + c.m_test[1]);
        let mxp0 = mu[0].exp() / p[0] * (c.m_test[0] + dmx);
        let mxm1 = mu[1].exp() / p[1] * (c.m_test[1] - dmx);
        let vx1 = (t1 / (mu[0] - mu[1]) * (mxp0 - mxm1)).max(0.0);
        let phase = if sx1 > 0.0 && sz1 > 0.0 {
            let b = (vx1 / sx1).min(0.5);
            (b + gamma(self.eps_sec, b, sz1, sx1)).min(0.5)
        } else {
            0.5
        };
        let n_z = c.key_total();
        let qber = c.key_qber();
        let leak = self.ec.leakage(n_z, qber);
        let l = sz0 + sz1 * (1.0 - h2(phase))
            - leak.unwrap_or(n_z)
            - 6.0 * (19.0 / self.eps_sec).log2()
            - (2.0 / self.eps_cor).log2();
        let ec_ok = leak.is_some();
        FiniteKey::assemble(
            l,
            raw,
            c.pulses,
            qber,
            phase,
            (sz0, sz1),
            self.eps_sec,
            ec_ok,
        )
    }

    /// Pulses needed to sift `block_bits` key-basis bits.
    pub fn pulses_for_block(&self, s: &RuscaSettings, eta_sys: f64) -> f64 {
        let per_pulse = self.counts(s, eta_sys, 1.0).key_total();
        if per_pulse > 0.0 {
            self.block_bits / per_pulse
        } else {
            f64::INFINITY
        }
    }

    /// Key of one block at `eta_sys`.
    pub fn block_key(&self, s: &RuscaSettings, eta_sys: f64) -> FiniteKey {
        let n = self.pulses_for_block(s, eta_sys);
        if !n.is_finite() {
            return self.key_from_counts(s, &Counts::default());
        }
        self.key_from_counts(s, &self.counts(s, eta_sys, n))
    }

    /// Settings maximising ℓ/N at `eta_sys` (over μ₁, μ₂, p₁, p_Z).
    pub fn optimise(&self, eta_sys: f64) -> (RuscaSettings, FiniteKey) {
        self.optimise_with(eta_sys, &RuscaFixed::default())
    }

    /// Like [`Self::optimise`], with the parameters that `fixed` gives held at their values and
    /// only the others optimised. Check `fixed` first with [`RuscaFixed::validate`].
    pub fn optimise_with(&self, eta_sys: f64, fixed: &RuscaFixed) -> (RuscaSettings, FiniteKey) {
        let decode = |x: &[f64; 4]| {
            let mu1 = fixed.mu1.unwrap_or(x[0]);
            RuscaSettings {
                mu: [mu1, fixed.mu2.unwrap_or(mu1 * x[1])],
                p1: fixed.p_mu1.unwrap_or(x[2]),
                p_z: fixed.p_z.unwrap_or(x[3]),
            }
        };
        let objective = |x: &[f64; 4]| {
            let s = decode(x);
            if !(s.mu[0] > s.mu[1] && s.mu[1] > 0.0) {
                return -1e300;
            }
            let per_pulse = self.counts(&s, eta_sys, 1.0);
            let n = self.block_bits / per_pulse.key_total();
            if !(n.is_finite() && n > 0.0) {
                return -1e300;
            }
            self.key_inner(&s, &per_pulse.scaled(n), true).key_bits / n
        };
        let x = if fixed.all_fixed() {
            [0.0; 4]
        } else {
            let lo = [0.05, 0.02, 0.05, 0.2];
            let hi = [1.0, 0.95, 0.95, 0.999];
            // Two starts, then the better one refined (see `Lim2014::optimise_with`).
            let starts = [[0.5, 0.4, 0.7, 0.85], [0.35, 0.3, 0.5, 0.7]];
            let best = multi_start_max(&objective, &starts, lo, hi, 300, 300);
            if best.1 > 0.0 {
                best.0
            } else {
                let more = spread_starts(&lo, &hi);
                let again = multi_start_max(&objective, &more, lo, hi, 200, 300);
                if again.1 > best.1 { again.0 } else { best.0 }
            }
        };
        let s = decode(&x);
        (s, self.block_key(&s, eta_sys))
    }
}

/// Parameters of [`Rusca2018`] held at given values instead of optimised (`None`: optimised).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuscaFixed {
    /// Signal intensity μ₁, mean photons per pulse.
    pub mu1: Option<f64>,
    /// Decoy intensity μ₂ < μ₁, mean photons per pulse.
    pub mu2: Option<f64>,
    /// Probability of sending μ₁.
    pub p_mu1: Option<f64>,
    /// Probability of the key basis Z, both sides.
    pub p_z: Option<f64>,
}

impl RuscaFixed {
    /// Whether nothing is left to optimise.
    pub fn all_fixed(&self) -> bool {
        self.mu1.is_some() && self.mu2.is_some() && self.p_mu1.is_some() && self.p_z.is_some()
    }

    /// Checks the fixed values against the protocol's constraints.
    pub fn validate(&self) -> Result<(), ParamError> {
        check_fixed_intensity("mu1", self.mu1)?;
        check_fixed_intensity("mu2", self.mu2)?;
        check_fixed_probability("p_mu1", self.p_mu1)?;
        check_fixed_probability("p_z", self.p_z)?;
        if let (Some(m1), Some(m2)) = (self.mu1, self.mu2)
            && m1 <= m2
        {
            return Err(ParamError::new("mu2", m2, "needs mu2 < mu1"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The optimised settings and keys, bit for bit, of the optimisers as they were before the
    /// speed work of 2026-12-05 (commit 4a26cfe, recorded on x86-64 Linux with glibc's libm):
    /// changes made for speed must leave every evaluation, and so every result, identical. Rows:
    /// (block, km, [key per pulse, q_x or p_Z, μ₁, μ₂, p_μ₁, p_μ₂ (Lim only)]).
    ///
    /// Lim's search changed on 2026-12-06 (ℓ held during each simplex,
    /// `lim_search_keeps_the_tracking_search_key_and_reach`): its rows now bound the key from
    /// below (at least 98 % of the recorded key), and Rusca's stay bit for bit.
    #[test]
    fn optimised_results_are_bit_identical_to_the_recorded_ones() {
        let lim: [(f64, f64, [u64; 6]); 7] = [
            (
                1e7,
                0.0,
                [
                    0x3f75ef22312427b8,
                    0x3feb76505ecd1b90,
                    0x3fdb764d049bd48b,
                    0x3fcd7409428d48a0,
                    0x3fd8169a83b91a6e,
                    0x3fdca58e62d754b5,
                ],
            ),
            (
                1e7,
                50.0,
                [
                    0x3f40d6d1d63987e2,
                    0x3feb6f8f4dfb6f20,
                    0x3fda5c866e15775c,
                    0x3fcc2a539ceb4d69,
                    0x3fd81e2407f1bca6,
                    0x3fdc8b3141a76846,
                ],
            ),
            (
                1e7,
                100.0,
                [
                    0x3f08fc25a1fe9d33,
                    0x3feb2a15f9afcd28,
                    0x3fdaa55fe88f964d,
                    0x3fcbc3c444fb05dd,
                    0x3fd935420c5afca0,
                    0x3fdb5e5a61f8beaf,
                ],
            ),
            (
                1e7,
                150.0,
                [
                    0x3ec618eb00aa7658,
                    0x3fe9a4b76018f2a9,
                    0x3fda22d6f087f989,
                    0x3fca484e36867e79,
                    0x3fd9caf6c718c5a6,
                    0x3fda0a2f8c2c4868,
                ],
            ),
            (
                1e7,
                175.0,
                [
                    0x3e60ccfe1ecfac14,
                    0x3fdc2daa1cd0dfab,
                    0x3fd6204a57f4af56,
                    0x3fc2e582bb59dd1c,
                    0x3fe238e825453fa0,
                    0x3fd157e97e60312e,
                ],
            ),
            (
                1e4,
                125.0,
                [
                    0x3e379779de4821ff,
                    0x3fbee1c163985a97,
                    0x3fe4229c8418d0e1,
                    0x3fc00dbfacb9ee53,
                    0x3f98b9d887f4c4d8,
                    0x3fe00c71e347447a,
                ],
            ),
            (
                1e4,
                129.5,
                [
                    0x3dc1b1aff949902c,
                    0x3f847ae147b194b6,
                    0x3fdf9d1866bbef80,
                    0x3fb9d7aad94cfdad,
                    0x3fa7e0b01452db25,
                    0x3fe1556385ffa05f,
                ],
            ),
        ];
        for (n_x, km, want) in lim {
            let m = Lim2014::paper(n_x);
            let (_, k) = m.optimise(m.hw.eta_sys(km));
            let recorded = f64::from_bits(want[0]);
            assert!(
                k.key_per_pulse >= 0.98 * recorded,
                "Lim, n_X = {n_x}, {km} km: {} < {recorded}",
                k.key_per_pulse
            );
        }
        let rusca: [(f64, f64, [u64; 5]); 3] = [
            (
                1e7,
                50.0,
                [
                    0x3f4ded2c43abf75d,
                    0x3fecac9797f1ccd5,
                    0x3fd532be51a6f8c0,
                    0x3fbd8eccd8b843ba,
                    0x3fe2ad9f7b375eaf,
                ],
            ),
            (
                1e7,
                150.0,
                [
                    0x3eef097b86da7e69,
                    0x3febee0368ee6b58,
                    0x3fdc5ebc5ad82995,
                    0x3fc1606b4c16d06d,
                    0x3fe5a3de9b2fba92,
                ],
            ),
            (
                1e4,
                191.5,
                [
                    0x3e1b71f00c09eecd,
                    0x3fc999999999999a,
                    0x3fd86cda2db84f34,
                    0x3fb91409c7ed32aa,
                    0x3fc213d00c1ec7e4,
                ],
            ),
        ];
        for (n_z, km, want) in rusca {
            let m = Rusca2018::new(DvHardware::METRO_GHZ, n_z);
            let (s, k) = m.optimise(m.hw.eta_sys(km));
            let got = [k.key_per_pulse, s.p_z, s.mu[0], s.mu[1], s.p1].map(f64::to_bits);
            assert_eq!(got, want, "Rusca, n_Z = {n_z}, {km} km");
        }
    }

    /// The search holding ℓ (2026-12-06) against the tracking search it replaced, on a grid of
    /// block sizes and distances up to and just beyond the reach: key wherever the old search
    /// found key (so the reach is never shorter), and never more than 2 % less key. On this
    /// grid the new key is 0.996 to 2.59 times the old (2.59 near the reach at n_X = 10⁴, where
    /// the tracking search stalled); elsewhere, −0.2 % at n_X = 10⁴ and 110 km was the worst
    /// seen, within the ±2 % the tracking search's own result moves with its noise.
    #[test]
    fn lim_search_keeps_the_tracking_search_key_and_reach() {
        let fixed = LimFixed::default();
        let (mut worst, mut best) = (f64::INFINITY, 0.0f64);
        for n_x in [1e4, 1e5, 1e7, 1e9] {
            let m = Lim2014::paper(n_x);
            let (lo, hi, starts) = m.search_space();
            let old = |km: f64| {
                let eta = m.hw.eta_sys(km);
                let x = m.tracking_search(eta, &fixed, (lo, hi), &starts);
                m.block_key(&lim_decode(m.mu3, &fixed, &x), eta)
            };
            let new = |km: f64| m.optimise(m.hw.eta_sys(km)).1;
            let reach = |f: &dyn Fn(f64) -> FiniteKey| {
                super::super::optimise::bisect_last_true(|l| f(l).key_bits > 0.0, 0.0, 300.0, 0.02)
            };
            let old_reach = reach(&old);
            assert!(reach(&new) >= old_reach, "n_X = {n_x}: reach");
            let mut lengths: Vec<f64> = (0..12).map(|i| old_reach * f64::from(i) / 12.0).collect();
            lengths.extend([-2.0, -1.0, -0.5, -0.1, 0.0, 0.5].map(|d| old_reach + d));
            for km in lengths {
                let (o, n) = (old(km), new(km));
                if o.key_bits > 0.0 {
                    let ratio = n.key_per_pulse / o.key_per_pulse;
                    assert!(ratio > 0.98, "n_X = {n_x}, {km} km: {ratio}");
                    worst = worst.min(ratio);
                    best = best.max(ratio);
                }
            }
        }
        eprintln!("new/old key per pulse: {worst} to {best}");
        assert!(worst > 0.98, "{worst}");
    }

    #[test]
    fn gamma_shrinks_with_statistics() {
        let small = gamma(1e-10, 0.02, 1e4, 1e4);
        let large = gamma(1e-10, 0.02, 1e8, 1e8);
        assert!(small > large && large > 0.0);
    }

    #[test]
    fn lim_key_grows_with_block_size_and_stays_below_asymptote() {
        let eta = DvHardware::LIM2014.eta_sys(50.0);
        let mut prev = 0.0;
        for n in [1e5, 1e6, 1e7, 1e9] {
            let (_, k) = Lim2014::paper(n).optimise(eta);
            assert!(k.key_per_pulse > prev, "n_X = {n}: {}", k.key_per_pulse);
            prev = k.key_per_pulse;
        }
        // Infinite-decoy asymptote with the same detector (η_sys, p_z → 1): R ≤ Q₁ ≈ μ e^-μ η.
        assert!(prev < eta * 0.37);
    }

    #[test]
    fn lim_has_finite_reach_and_rusca_works() {
        let lim = Lim2014::paper(1e7);
        let far = lim.optimise(DvHardware::LIM2014.eta_sys(300.0)).1;
        assert_eq!(far.key_bits, 0.0);
        let near = lim.optimise(DvHardware::LIM2014.eta_sys(20.0)).1;
        assert!(near.key_bits > 0.0 && near.phase_error < 0.1);
        let r = Rusca2018::new(DvHardware::METRO_GHZ, 1e7);
        let k = r.optimise(DvHardware::METRO_GHZ.eta_sys(50.0)).1;
        assert!(k.key_bits > 0.0 && k.qber < 0.05, "{k:?}");
        let far = r.optimise(DvHardware::METRO_GHZ.eta_sys(400.0)).1;
        assert_eq!(far.key_bits, 0.0);
    }

    #[test]
    fn small_blocks_reach_as_far_as_a_wider_search() {
        // One decoy, n_Z = 10⁴: the two usual starts found no key beyond 189.2 km; the spread
        // of further starts finds it to ~192.7 km.
        let r = Rusca2018::new(DvHardware::METRO_GHZ, 1e4);
        let k = r.optimise(r.hw.eta_sys(191.5)).1;
        assert!(k.key_bits > 0.0, "{k:?}");
        assert_eq!(r.optimise(r.hw.eta_sys(196.0)).1.key_bits, 0.0);
    }

    #[test]
    fn fixed_parameters_are_held() {
        let lim = Lim2014::paper(1e6);
        let eta = lim.hw.eta_sys(40.0);
        let fixed = LimFixed {
            mu1: Some(0.45),
            q_x: Some(0.8),
            ..LimFixed::default()
        };
        fixed.validate(lim.mu3).unwrap();
        let (s, k) = lim.optimise_with(eta, &fixed);
        assert_eq!((s.mu[0], s.q_x), (0.45, 0.8));
        assert!(k.key_bits > 0.0 && k.key_per_pulse <= lim.optimise(eta).1.key_per_pulse);
        let bad = LimFixed {
            mu1: Some(0.2),
            mu2: Some(0.3),
            ..LimFixed::default()
        };
        assert_eq!(bad.validate(lim.mu3).unwrap_err().field, "mu1");
        let r = Rusca2018::new(DvHardware::METRO_GHZ, 1e6);
        let f = RuscaFixed {
            p_z: Some(0.7),
            ..RuscaFixed::default()
        };
        let (s, _) = r.optimise_with(r.hw.eta_sys(40.0), &f);
        assert_eq!(s.p_z, 0.7);
    }

    #[test]
    fn counts_add_up() {
        let lim = Lim2014::paper(1e6);
        let s = LimSettings {
            mu: [0.5, 0.1, 2e-4],
            p: [0.7, 0.2, 0.1],
            q_x: 0.9,
        };
        s.validate().unwrap();
        let mut c = lim.counts(&s, 1e-3, 1e9);
        c += lim.counts(&s, 1e-3, 1e9);
        let d = lim.counts(&s, 1e-3, 2e9);
        assert!((c.key_total() / d.key_total() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn optimisers_beat_a_coarse_grid() {
        for l in [10.0, 80.0] {
            let lim = Lim2014::paper(1e7);
            let eta = lim.hw.eta_sys(l);
            let (_, k) = lim.optimise(eta);
            let mut grid = 0.0f64;
            for q_x in [0.8, 0.85, 0.9] {
                for p1 in [0.2, 0.3, 0.4, 0.5, 0.6] {
                    for p2 in [0.2, 0.3, 0.4] {
                        for mu1 in [0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6] {
                            for mu2 in [0.1, 0.15, 0.2, 0.25] {
                                let s = LimSettings {
                                    mu: [mu1, mu2, 2e-4],
                                    p: [p1, p2, 1.0 - p1 - p2],
                                    q_x,
                                };
                                grid = grid.max(lim.block_key(&s, eta).key_per_pulse);
                            }
                        }
                    }
                }
            }
            assert!(
                k.key_per_pulse >= 0.999 * grid,
                "Lim at {l} km: {} < grid {grid}",
                k.key_per_pulse
            );
            let r = Rusca2018::new(DvHardware::METRO_GHZ, 1e7);
            let eta = r.hw.eta_sys(l);
            let (_, k) = r.optimise(eta);
            let mut grid = 0.0f64;
            for mu1 in [0.2, 0.3, 0.4, 0.5] {
                for ratio in [0.2, 0.3, 0.4] {
                    for p1 in [0.4, 0.5, 0.6, 0.7] {
                        for p_z in [0.8, 0.85, 0.9, 0.95] {
                            let s = RuscaSettings {
                                mu: [mu1, mu1 * ratio],
                                p1,
                                p_z,
                            };
                            grid = grid.max(r.block_key(&s, eta).key_per_pulse);
                        }
                    }
                }
            }
            assert!(
                k.key_per_pulse >= 0.999 * grid,
                "Rusca at {l} km: {} < grid {grid}",
                k.key_per_pulse
            );
        }
    }
}
