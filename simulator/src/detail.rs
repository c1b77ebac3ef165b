//! What lies behind each point of a key-rate curve: the parameters used (optimised, or fixed where
//! a paper fixes them), the estimator values the rate is computed from (gains and error rates per
//! intensity, the single-photon yield lower bound, the phase-error upper bound, block
//! statistics), and the bound of the protocol's family with a flag for any violation.
//!
//! [`FixedParams`] says which parameters a sweep holds fixed; [`DetailedPoint`] is one point
//! with all of the above, written by `qkd-sim rate` to rate.csv and rate.json
//! ([`write_csv`], [`write_json`], feature `output`). Values a protocol does not have are `None`
//! (an empty CSV cell, `null` in JSON).

use serde::{Deserialize, Serialize};

use crate::curve::{CurvePoint, CurveProtocol};
use crate::physics::bounds::{plob, single_repeater};
use crate::physics::channel::ParamError;
use crate::physics::decoy::AsymptoticPoint;
use crate::physics::finite::{
    Counts, FiniteKey, LimFixed, LimSettings, RuscaFixed, RuscaSettings, check_fixed_intensity,
};

/// Protocol parameters a sweep holds at given values instead of optimising them per point
/// (`None`: optimised, or the protocol's own value). Which fields a protocol takes:
///
/// | protocol | fields |
/// |---|---|
/// | `decoy-infinite`, `no-decoy`, `efficient-bb84` | `mu` |
/// | `finite-key` (Lim 2014) | `mu` (= μ₁), `mu2`, `mu3` (default 2×10⁻⁴), `p_mu1`, `p_mu2`, `p_basis` (= q_x) |
/// | `one-decoy` (Rusca 2018) | `mu` (= μ₁), `mu2`, `p_mu1`, `p_basis` (= p_Z) |
///
/// `decoy-vacuum-weak` and `efficient-bb84` carry their fixed values in the protocol itself;
/// CV-QKD and twin-field take none. Any other field is refused by [`FixedParams::validate`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixedParams {
    /// Signal intensity μ (μ₁ of the finite-key protocols), mean photons per pulse.
    pub mu: Option<f64>,
    /// Decoy intensity μ₂, mean photons per pulse.
    pub mu2: Option<f64>,
    /// Weakest decoy μ₃ of Lim 2014, mean photons per pulse.
    pub mu3: Option<f64>,
    /// Probability of sending μ₁.
    pub p_mu1: Option<f64>,
    /// Probability of sending μ₂.
    pub p_mu2: Option<f64>,
    /// Probability of the key basis on both sides (q_x of Lim, p_Z of Rusca): the basis bias.
    pub p_basis: Option<f64>,
}

impl FixedParams {
    /// Nothing fixed: every parameter optimised.
    pub const NONE: FixedParams = FixedParams {
        mu: None,
        mu2: None,
        mu3: None,
        p_mu1: None,
        p_mu2: None,
        p_basis: None,
    };

    /// The names of the fields that are set.
    pub fn given(&self) -> Vec<&'static str> {
        [
            ("mu", self.mu),
            ("mu2", self.mu2),
            ("mu3", self.mu3),
            ("p_mu1", self.p_mu1),
            ("p_mu2", self.p_mu2),
            ("p_basis", self.p_basis),
        ]
        .into_iter()
        .filter_map(|(n, v)| v.map(|_| n))
        .collect()
    }

    /// Checks that `protocol` takes every field that is set, and that the values satisfy the
    /// protocol's constraints. The error names the field.
    pub fn validate(&self, protocol: &CurveProtocol) -> Result<(), ParamError> {
        let takes: &[&str] = match protocol {
            CurveProtocol::DecoyInfinite
            | CurveProtocol::NoDecoy
            | CurveProtocol::EfficientBb84 { .. } => &["mu"],
            CurveProtocol::FiniteKey { .. } => &["mu", "mu2", "mu3", "p_mu1", "p_mu2", "p_basis"],
            CurveProtocol::OneDecoy { .. } => &["mu", "mu2", "p_mu1", "p_basis"],
            _ => &[],
        };
        let value = |n: &str| match n {
            "mu" => self.mu,
            "mu2" => self.mu2,
            "mu3" => self.mu3,
            "p_mu1" => self.p_mu1,
            "p_mu2" => self.p_mu2,
            _ => self.p_basis,
        };
        if let Some(n) = self.given().into_iter().find(|n| !takes.contains(n)) {
            return Err(ParamError::new(
                n,
                value(n).unwrap_or(f64::NAN),
                "is not a parameter of this protocol",
            ));
        }
        // The protocols' own checks, with their names for the fields turned into ours.
        let ours = |mut e: ParamError| {
            e.field = match e.field {
                "mu1" => "mu",
                "q_x" | "p_z" => "p_basis",
                f => f,
            };
            e
        };
        match protocol {
            CurveProtocol::FiniteKey { .. } => self.lim().validate(self.lim_mu3()).map_err(ours),
            CurveProtocol::OneDecoy { .. } => self.rusca().validate().map_err(ours),
            _ => check_fixed_intensity("mu", self.mu),
        }
    }

    /// The fixed parameters as Lim 2014 takes them.
    pub fn lim(&self) -> LimFixed {
        LimFixed {
            mu1: self.mu,
            mu2: self.mu2,
            p_mu1: self.p_mu1,
            p_mu2: self.p_mu2,
            q_x: self.p_basis,
        }
    }

    /// μ₃ of Lim 2014: the fixed value or the paper's 2×10⁻⁴.
    pub fn lim_mu3(&self) -> f64 {
        self.mu3.unwrap_or(2e-4)
    }

    /// The fixed parameters as Rusca 2018 takes them.
    pub fn rusca(&self) -> RuscaFixed {
        RuscaFixed {
            mu1: self.mu,
            mu2: self.mu2,
            p_mu1: self.p_mu1,
            p_z: self.p_basis,
        }
    }
}

/// The parameters a point was computed with (optimised or fixed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct PointParams {
    /// Signal intensity μ₁ (μ of the asymptotic protocols; total μ of twin-field).
    pub mu1: Option<f64>,
    /// Second intensity μ₂ (ν of vacuum + weak).
    pub mu2: Option<f64>,
    /// Third intensity μ₃ (0, the vacuum, for vacuum + weak).
    pub mu3: Option<f64>,
    /// Probability of μ₁.
    pub p_mu1: Option<f64>,
    /// Probability of μ₂.
    pub p_mu2: Option<f64>,
    /// Probability of μ₃.
    pub p_mu3: Option<f64>,
    /// Probability of the key basis, both sides (½ for standard BB84).
    pub p_basis: Option<f64>,
}

/// The estimator values behind a point's rate. Probabilities are per emitted pulse (or pulse
/// pair, for twin-field); counts are per post-processing block.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Estimates {
    /// Gain (detection probability per pulse) of μ₁.
    pub gain_mu1: Option<f64>,
    /// Gain of μ₂.
    pub gain_mu2: Option<f64>,
    /// Gain of μ₃.
    pub gain_mu3: Option<f64>,
    /// Error rate of the detections of μ₁.
    pub error_rate_mu1: Option<f64>,
    /// Error rate of μ₂.
    pub error_rate_mu2: Option<f64>,
    /// Error rate of μ₃.
    pub error_rate_mu3: Option<f64>,
    /// Vacuum (background) yield Y₀: exact for the asymptotic protocols, lower bound from the
    /// block for the finite-key ones.
    pub y0: Option<f64>,
    /// Single-photon yield Y₁: exact with infinite decoys, a lower bound otherwise.
    pub y1_lower: Option<f64>,
    /// Single-photon gain: key-basis single-photon detections per pulse sent in the key basis
    /// (Y₁·μe^(−μ) at the signal for the asymptotic protocols, Y₁·τ₁ over all intensities for
    /// the finite-key ones), lower bound.
    pub q1_lower: Option<f64>,
    /// Single-photon bit error rate e₁ (upper bound with finite decoys).
    pub e1_upper: Option<f64>,
    /// Phase error rate of the single-photon key bits, upper bound (e₁ in the asymptotic
    /// protocols, e_ph + γ in the finite-key ones; E_X of twin-field).
    pub phase_error_upper: Option<f64>,
    /// Lower bound on vacuum key-basis detections in one block.
    pub s0_lower: Option<f64>,
    /// Lower bound on single-photon key-basis detections in one block.
    pub s1_lower: Option<f64>,
    /// Secret key bits per block (before the authentication cost).
    pub key_bits_per_block: Option<f64>,
    /// Pulses emitted per block.
    pub pulses_per_block: Option<f64>,
    /// CV-QKD: Alice–Bob mutual information, bit/symbol.
    pub i_ab: Option<f64>,
    /// CV-QKD: Holevo bound on Eve's information on Bob's data, bit/symbol.
    pub chi_be: Option<f64>,
}

/// The upper bound a protocol's family is held against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BoundFamily {
    /// Repeaterless protocols: PLOB, −log₂(1 − η) per channel use.
    Plob,
    /// Protocols with one untrusted middle node (twin-field): the single-repeater bound
    /// −log₂(1 − √η) (Pirandola et al., Commun. Phys. 2, 51 (2019)).
    SingleRepeater,
}

impl BoundFamily {
    /// The family of `protocol`.
    pub fn of(protocol: &CurveProtocol) -> Self {
        match protocol {
            CurveProtocol::TwinField(_) | CurveProtocol::SnsTf { .. } => {
                BoundFamily::SingleRepeater
            }
            _ => BoundFamily::Plob,
        }
    }

    /// The bound per channel use at end-to-end channel transmittance `eta_ch`.
    pub fn per_use(self, eta_ch: f64) -> f64 {
        match self {
            BoundFamily::Plob => plob(eta_ch),
            BoundFamily::SingleRepeater => single_repeater(eta_ch),
        }
    }

    /// A name for reports.
    pub fn describe(self) -> &'static str {
        match self {
            BoundFamily::Plob => "PLOB -log2(1-eta) (repeaterless)",
            BoundFamily::SingleRepeater => "single-repeater -log2(1-sqrt(eta)) (twin-field)",
        }
    }
}

/// One point of a curve with everything behind it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct DetailedPoint {
    /// The point itself.
    #[serde(flatten)]
    pub point: CurvePoint,
    /// The bound the protocol's family is held against.
    pub bound: BoundFamily,
    /// That bound per channel use at the point's channel loss.
    pub bound_per_use: f64,
    /// That bound in bit/s at the protocol's repetition rate.
    pub bound_bps: f64,
    /// Whether the key rate exceeds the bound (a bug in a model, or parameters outside its
    /// validity).
    pub exceeds_bound: bool,
    /// Parameters used.
    #[serde(flatten)]
    pub params: PointParams,
    /// Estimator values.
    #[serde(flatten)]
    pub estimates: Estimates,
}

impl DetailedPoint {
    /// Column names of [`Self::csv_row`], in order: the [`CurvePoint`] columns first.
    pub const CSV_HEADER: [&'static str; 37] = [
        "x",
        "length_km",
        "loss_db",
        "key_per_pulse",
        "key_bps",
        "qber",
        "plob_per_use",
        "plob_bps",
        "tgw_per_use",
        "bound",
        "bound_per_use",
        "bound_bps",
        "exceeds_bound",
        "mu1",
        "mu2",
        "mu3",
        "p_mu1",
        "p_mu2",
        "p_mu3",
        "p_basis",
        "gain_mu1",
        "gain_mu2",
        "gain_mu3",
        "error_rate_mu1",
        "error_rate_mu2",
        "error_rate_mu3",
        "y0",
        "y1_lower",
        "q1_lower",
        "e1_upper",
        "phase_error_upper",
        "s0_lower",
        "s1_lower",
        "key_bits_per_block",
        "pulses_per_block",
        "i_ab",
        "chi_be",
    ];

    /// One CSV row. Numbers use Rust's shortest round-trip form, so parsing a cell gives back
    /// exactly the computed `f64`; `None` and NaN are empty cells.
    pub fn csv_row(&self) -> Vec<String> {
        let num = |v: f64| {
            if v.is_nan() {
                String::new()
            } else {
                v.to_string()
            }
        };
        let opt = |v: Option<f64>| v.map_or(String::new(), num);
        let p = &self.point;
        let (q, e) = (&self.params, &self.estimates);
        vec![
            num(p.x),
            num(p.length_km),
            num(p.loss_db),
            num(p.key_per_pulse),
            num(p.key_bps),
            num(p.qber),
            num(p.plob_per_use),
            num(p.plob_bps),
            num(p.tgw_per_use),
            match self.bound {
                BoundFamily::Plob => "plob".into(),
                BoundFamily::SingleRepeater => "single-repeater".into(),
            },
            num(self.bound_per_use),
            num(self.bound_bps),
            self.exceeds_bound.to_string(),
            opt(q.mu1),
            opt(q.mu2),
            opt(q.mu3),
            opt(q.p_mu1),
            opt(q.p_mu2),
            opt(q.p_mu3),
            opt(q.p_basis),
            opt(e.gain_mu1),
            opt(e.gain_mu2),
            opt(e.gain_mu3),
            opt(e.error_rate_mu1),
            opt(e.error_rate_mu2),
            opt(e.error_rate_mu3),
            opt(e.y0),
            opt(e.y1_lower),
            opt(e.q1_lower),
            opt(e.e1_upper),
            opt(e.phase_error_upper),
            opt(e.s0_lower),
            opt(e.s1_lower),
            opt(e.key_bits_per_block),
            opt(e.pulses_per_block),
            opt(e.i_ab),
            opt(e.chi_be),
        ]
    }
}

/// Writes `points` as CSV (header [`DetailedPoint::CSV_HEADER`]) to `path`.
#[cfg(feature = "output")]
pub fn write_csv(
    points: &[DetailedPoint],
    path: &std::path::Path,
) -> Result<(), crate::network::OutputError> {
    let mut w = csv::Writer::from_path(path)?;
    w.write_record(DetailedPoint::CSV_HEADER)?;
    for p in points {
        w.write_record(p.csv_row())?;
    }
    w.flush()?;
    Ok(())
}

/// Writes `points` as a pretty-printed JSON array (one object per point, the CSV columns as
/// keys; NaN and `None` as `null`) to `path`.
pub fn write_json(
    points: &[DetailedPoint],
    path: &std::path::Path,
) -> Result<(), crate::network::OutputError> {
    std::fs::write(path, serde_json::to_vec_pretty(points)?)?;
    Ok(())
}

/// Points whose key rate exceeds their family's bound: the x values.
pub fn violations(points: &[DetailedPoint]) -> Vec<f64> {
    points
        .iter()
        .filter(|p| p.exceeds_bound)
        .map(|p| p.point.x)
        .collect()
}

// Constructors used by `curve`, one per kind of model.

impl Estimates {
    /// From an asymptotic decoy-BB84 point at signal `mu` (vacuum + weak adds decoy ν's gain
    /// and error rate, and the vacuum's).
    pub(crate) fn asymptotic(
        p: &AsymptoticPoint,
        mu: f64,
        decoy: Option<(f64, f64, f64)>,
        y0: f64,
    ) -> Self {
        let (gain_mu2, error_rate_mu2, gain_mu3, error_rate_mu3) = match decoy {
            Some((_, q_nu, e_nu)) => (Some(q_nu), Some(e_nu), Some(y0), Some(0.5)),
            None => (None, None, None, None),
        };
        Estimates {
            gain_mu1: Some(p.gain),
            gain_mu2,
            gain_mu3,
            error_rate_mu1: Some(p.qber),
            error_rate_mu2,
            error_rate_mu3,
            y0: Some(y0),
            y1_lower: Some(p.y1),
            q1_lower: Some(p.y1 * mu * (-mu).exp()),
            e1_upper: Some(p.e1),
            phase_error_upper: Some(p.e1),
            ..Estimates::default()
        }
    }

    /// From a finite-key block of `K` intensities with probabilities `p` and expected counts
    /// `c`; `tau` are the probabilities that a vacuum and a single-photon state was sent, and
    /// `(key, sifted)` the fractions of pulses sifted into the key basis (q²) and into either
    /// basis (q² + (1 − q)²).
    pub(crate) fn finite<const K: usize>(
        k: &FiniteKey,
        c: &Counts<K>,
        p: &[f64; K],
        (tau0, tau1): (f64, f64),
        (key, sifted): (f64, f64),
    ) -> Self {
        let gain = |i: usize| {
            (i < K && c.pulses > 0.0)
                .then(|| (c.n_key[i] + c.n_test[i]) / (c.pulses * p[i] * sifted))
        };
        let err = |i: usize| {
            (i < K).then(|| {
                let n = c.n_key[i] + c.n_test[i];
                if n > 0.0 {
                    (c.m_key[i] + c.m_test[i]) / n
                } else {
                    0.5
                }
            })
        };
        let in_key_basis = c.pulses * key;
        let per =
            |s: f64, tau: f64| (in_key_basis > 0.0 && tau > 0.0).then(|| s / (in_key_basis * tau));
        Estimates {
            gain_mu1: gain(0),
            gain_mu2: gain(1),
            gain_mu3: gain(2),
            error_rate_mu1: err(0),
            error_rate_mu2: err(1),
            error_rate_mu3: err(2),
            y0: per(k.s0, tau0),
            y1_lower: per(k.s1, tau1),
            q1_lower: per(k.s1, 1.0),
            phase_error_upper: Some(k.phase_error),
            s0_lower: Some(k.s0),
            s1_lower: Some(k.s1),
            key_bits_per_block: Some(k.key_bits),
            pulses_per_block: Some(k.pulses),
            ..Estimates::default()
        }
    }
}

impl PointParams {
    /// Lim 2014 settings.
    pub(crate) fn lim(s: &LimSettings) -> Self {
        PointParams {
            mu1: Some(s.mu[0]),
            mu2: Some(s.mu[1]),
            mu3: Some(s.mu[2]),
            p_mu1: Some(s.p[0]),
            p_mu2: Some(s.p[1]),
            p_mu3: Some(s.p[2]),
            p_basis: Some(s.q_x),
        }
    }

    /// Rusca 2018 settings.
    pub(crate) fn rusca(s: &RuscaSettings) -> Self {
        PointParams {
            mu1: Some(s.mu[0]),
            mu2: Some(s.mu[1]),
            p_mu1: Some(s.p1),
            p_mu2: Some(1.0 - s.p1),
            p_basis: Some(s.p_z),
            ..PointParams::default()
        }
    }
}
