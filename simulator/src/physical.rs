//! Physics-backed [`LinkModel`]s: a fibre link whose key arrives in finite blocks at the rate,
//! QBER and block size its protocol and hardware give, with outages, maintenance and
//! eavesdropping over time; and a satellite downlink whose key arrives once per usable pass.
//!
//! Both are built once (all physics evaluated up front) and then answer
//! [`LinkModel::cumulative_secret_bits`] and [`LinkModel::status`] by binary search, so a node can
//! poll them and a network simulation can step hundreds of them at 1 s resolution cheaply.
//!
//! Block semantics: the link sifts key-basis bits at a constant rate while up; a block closes
//! when `block_bits` have been sifted, and only then does its secret key (after parameter
//! estimation, EC, verification, PA and the authentication cost) appear. Any change of
//! conditions (outage, start or end of an attack) discards the block being filled: its statistics
//! would no longer be those of one channel.

use qkd_hardware::{LinkState, LinkStatus};
use qkd_types::UnixMillis;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::detail::BoundFamily;
use crate::faults::{Effect, Interval, intercept_resend_error, intercept_resend_excess_noise};
use crate::model::LinkModel;
use crate::physics::bounds::plob;
use crate::physics::channel::{DvHardware, db_to_transmittance, fibre_transmittance};
use crate::physics::cv::Gg02;
use crate::physics::decoy::AsymptoticBb84;
use crate::physics::finite::{Counts, Lim2014, LimSettings, Rusca2018, RuscaSettings};
use crate::physics::postproc::{Authentication, net_block_key};
use crate::physics::twinfield::TwinField;
use crate::physics::{bbm92::Bbm92, cv_finite, mdi::MdiQkd, sns};
use crate::satellite::{GroundStation, LinkBudget, Orbit, gmst_rad, look, passes};

/// What one post-processing block of a link gives under fixed conditions.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BlockPlan {
    /// Time to fill one block, s (infinite if nothing is detected).
    pub block_s: f64,
    /// Net secret key per block, bits (after the authentication cost).
    pub key_bits: u64,
    /// QBER of the key basis (None for CV-QKD).
    pub qber: Option<f64>,
    /// Why no key is produced, if so (the link reports itself aborted).
    pub abort: Option<String>,
}

impl BlockPlan {
    /// Mean secret key rate, bit/s.
    pub fn rate_bps(&self) -> f64 {
        if self.abort.is_some() || !self.block_s.is_finite() {
            0.0
        } else {
            self.key_bits as f64 / self.block_s
        }
    }
}

/// A link held against the fundamental bound of its protocol family: repeaterless protocols
/// (decoy and MDI BB84, BBM92, CV-QKD, satellite downlinks) against PLOB, −log₂(1 − η);
/// twin-field ones against the single-repeater bound −log₂(1 − √η) (see `physics::bounds`).
/// η is the channel transmittance (fibre and fixed losses, or the free-space budget without the
/// detector), and the bound counts one channel use per pulse or symbol.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BoundCheck {
    /// The bound that applies.
    pub bound: BoundFamily,
    /// The key the worst case gives: bit/s for a fibre link (its highest rate over the
    /// conditions of the run: undisturbed and under each event), bits for a satellite link (the
    /// pass with the highest ratio, before cloud or outage losses).
    pub key: f64,
    /// The bound in the same unit, at the same loss and channel-use rate.
    pub limit: f64,
    /// `key / limit` (0 when both are 0): above 1 the model breaks a fundamental bound, which
    /// is a bug in the model or parameters outside its validity.
    pub ratio: f64,
}

impl BoundCheck {
    /// Builds a check from a key and the bound in the same unit.
    pub fn new(bound: BoundFamily, key: f64, limit: f64) -> Self {
        let ratio = if limit > 0.0 {
            key / limit
        } else if key > 0.0 {
            f64::INFINITY
        } else {
            0.0
        };
        Self {
            bound,
            key,
            limit,
            ratio,
        }
    }

    /// Whether the key exceeds the bound.
    pub fn violated(&self) -> bool {
        self.ratio > 1.0
    }

    /// Of two checks, the one closer to (or further past) its bound.
    fn worse(self, other: Self) -> Self {
        if other.ratio > self.ratio {
            other
        } else {
            self
        }
    }
}

/// A fibre protocol with its parameters, ready to evaluate blocks.
#[derive(Debug, Clone)]
pub enum FibreProtocol {
    /// Asymptotic decoy BB84 (GLLP), `block_bits` sifted bits per block, signal `mu`.
    DecoyAsymptotic {
        /// The model.
        model: AsymptoticBb84,
        /// Signal intensity.
        mu: f64,
        /// Sifted bits per block.
        block_bits: f64,
    },
    /// Lim 2014 finite key with settings optimised for the undisturbed channel.
    Lim {
        /// The model (its `block_bits` is n_X).
        model: Lim2014,
        /// Settings.
        settings: LimSettings,
    },
    /// Rusca 2018 one-decoy finite key with optimised settings.
    Rusca {
        /// The model.
        model: Rusca2018,
        /// Settings.
        settings: RuscaSettings,
    },
    /// GG02 CV-QKD, `block_symbols` symbols per block (asymptotic rate per block).
    Cv {
        /// The model.
        model: Gg02,
        /// Symbols per block.
        block_symbols: f64,
    },
    /// PM twin-field, `block_bits` detections per block.
    TwinField {
        /// The model.
        model: TwinField,
        /// Detected (sifted) events per block.
        block_bits: f64,
    },
    /// Decoy MDI-QKD (asymptotic rate), `block_bits` key-basis detections per block.
    Mdi {
        /// The model.
        model: MdiQkd,
        /// Signal intensity (both sides), optimised for the undisturbed link.
        mu: f64,
        /// Key-basis detections per block.
        block_bits: f64,
    },
    /// Entanglement-based BBM92 (asymptotic rate), `block_bits` sifted coincidences per block.
    Bbm92 {
        /// The model.
        model: Bbm92,
        /// Source brightness λ, optimised for the undisturbed link.
        lambda: f64,
        /// Sifted coincidences per block.
        block_bits: f64,
    },
    /// SNS twin-field with its finite-key analysis; one block is one run of `pulses` pairs.
    SnsTf {
        /// The model.
        model: sns::Sns,
        /// Settings optimised for the undisturbed link.
        settings: sns::SnsSettings,
        /// Pulse pairs per block.
        pulses: f64,
        /// Phase slice Δ, rad.
        delta_rad: f64,
        /// ε_cor.
        eps_cor: f64,
        /// ε_sec.
        eps_sec: f64,
    },
    /// CV-QKD, homodyne or heterodyne, composable finite size per block.
    CvFinite {
        /// Channel and detector.
        model: Gg02,
        /// Homodyne or heterodyne.
        detection: cv_finite::CvDetection,
        /// Finite-size settings (its `symbols` is the block).
        finite: cv_finite::CvFiniteSize,
    },
}

impl FibreProtocol {
    /// Short name for reasons and tables.
    pub fn name(&self) -> &'static str {
        match self {
            FibreProtocol::DecoyAsymptotic { .. } => "decoy BB84 (asymptotic)",
            FibreProtocol::Lim { .. } => "finite-key decoy BB84 (Lim 2014)",
            FibreProtocol::Rusca { .. } => "one-decoy BB84 (Rusca 2018)",
            FibreProtocol::Cv { .. } => "GG02 CV-QKD",
            FibreProtocol::TwinField { .. } => "twin-field (PM-QKD)",
            FibreProtocol::Mdi { .. } => "decoy MDI-QKD",
            FibreProtocol::Bbm92 { .. } => "entanglement-based BBM92",
            FibreProtocol::SnsTf { .. } => "SNS twin-field (finite key)",
            FibreProtocol::CvFinite { .. } => "CV-QKD (finite size)",
        }
    }

    /// The bound of the protocol's family, the end-to-end channel transmittance over
    /// `length_km` (fibre and fixed losses, no detector) and the channel uses per second.
    pub fn bound_setting(&self, length_km: f64) -> (BoundFamily, f64, f64) {
        let dv = |hw: &DvHardware| (BoundFamily::Plob, hw.eta_ch(length_km), hw.rep_rate_hz);
        let fibre =
            |family, alpha, rate| (family, fibre_transmittance(length_km, alpha, 0.0), rate);
        match self {
            FibreProtocol::DecoyAsymptotic { model, .. } => dv(&model.hw),
            FibreProtocol::Lim { model, .. } => dv(&model.hw),
            FibreProtocol::Rusca { model, .. } => dv(&model.hw),
            FibreProtocol::Cv { model, .. } | FibreProtocol::CvFinite { model, .. } => (
                BoundFamily::Plob,
                db_to_transmittance(model.alpha_db_per_km * length_km),
                model.symbol_rate_hz,
            ),
            FibreProtocol::TwinField { model, .. } => fibre(
                BoundFamily::SingleRepeater,
                model.alpha_db_per_km,
                model.rep_rate_hz,
            ),
            FibreProtocol::SnsTf { model, .. } => fibre(
                BoundFamily::SingleRepeater,
                model.alpha_db_per_km,
                model.rep_rate_hz,
            ),
            FibreProtocol::Mdi { model, .. } => {
                fibre(BoundFamily::Plob, model.alpha_db_per_km, model.rep_rate_hz)
            }
            FibreProtocol::Bbm92 { model, .. } => {
                fibre(BoundFamily::Plob, model.alpha_db_per_km, model.rep_rate_hz)
            }
        }
    }

    /// The link's key rates (one per condition) held against the family bound over
    /// `length_km`: the highest rate decides.
    pub fn bound_check<'a>(
        &self,
        length_km: f64,
        plans: impl IntoIterator<Item = &'a BlockPlan>,
    ) -> BoundCheck {
        let (family, eta_ch, uses_per_s) = self.bound_setting(length_km);
        let key = plans
            .into_iter()
            .map(BlockPlan::rate_bps)
            .fold(0.0, f64::max);
        BoundCheck::new(family, key, family.per_use(eta_ch) * uses_per_s)
    }

    /// One block over `length_km` with a fraction `eve` of pulses intercepted and resent.
    pub fn plan(
        &self,
        length_km: f64,
        eve: f64,
        qber_abort: f64,
        auth: &Authentication,
    ) -> BlockPlan {
        let with_eve = |hw: &DvHardware| DvHardware {
            misalignment: (hw.misalignment + intercept_resend_error(eve)).min(0.5),
            ..*hw
        };
        let (block_s, pa_bits, qber) = match self {
            FibreProtocol::DecoyAsymptotic {
                model,
                mu,
                block_bits,
            } => {
                let m = AsymptoticBb84 {
                    hw: with_eve(&model.hw),
                    ..*model
                };
                let p = m.at_distance(length_km, *mu);
                let sifted_rate = p.sifted_per_pulse * m.hw.rep_rate_hz;
                let frac = if p.sifted_per_pulse > 0.0 {
                    p.key_per_pulse / p.sifted_per_pulse
                } else {
                    0.0
                };
                (block_bits / sifted_rate, block_bits * frac, Some(p.qber))
            }
            FibreProtocol::Lim { model, settings } => {
                let m = Lim2014 {
                    hw: with_eve(&model.hw),
                    ..*model
                };
                let eta = m.hw.eta_sys(length_km);
                let k = m.block_key(settings, eta);
                (k.pulses / m.hw.rep_rate_hz, k.key_bits, Some(k.qber))
            }
            FibreProtocol::Rusca { model, settings } => {
                let m = Rusca2018 {
                    hw: with_eve(&model.hw),
                    ..*model
                };
                let k = m.block_key(settings, m.hw.eta_sys(length_km));
                (k.pulses / m.hw.rep_rate_hz, k.key_bits, Some(k.qber))
            }
            FibreProtocol::Cv {
                model,
                block_symbols,
            } => {
                let m = Gg02 {
                    xi: model.xi + intercept_resend_excess_noise(eve),
                    ..*model
                };
                let k = m.at_distance(length_km).key_per_symbol;
                (block_symbols / m.symbol_rate_hz, block_symbols * k, None)
            }
            FibreProtocol::TwinField { model, block_bits } => {
                let m = TwinField {
                    misalignment: (model.misalignment + intercept_resend_error(eve)).min(0.5),
                    ..*model
                };
                let (_, mu_opt) = optimal_tf_mu(model, length_km);
                let (r, e) = m.key_per_pulse(length_km, mu_opt);
                let eta_arm = 10f64.powf(-m.alpha_db_per_km * length_km / 20.0) * m.eta_det;
                let q = 1.0 - (1.0 - m.dark_count_prob).powi(2) * (-mu_opt * eta_arm).exp();
                let sifted_rate = q * m.rep_rate_hz * 2.0 / f64::from(m.phase_slices.max(1));
                (
                    block_bits / sifted_rate,
                    block_bits * r / (q * 2.0 / f64::from(m.phase_slices.max(1))),
                    Some(e),
                )
            }
            FibreProtocol::Mdi {
                model,
                mu,
                block_bits,
            } => {
                let m = MdiQkd {
                    misalignment: (model.misalignment + intercept_resend_error(eve)).min(0.5),
                    ..*model
                };
                let (ea, eb) = m.arms(length_km);
                let p = m.at_arms(ea, eb, *mu, *mu);
                let sifted_rate = p.gain * m.rep_rate_hz;
                (
                    block_bits / sifted_rate,
                    block_bits * p.key_per_pulse / p.gain.max(1e-300),
                    Some(p.qber),
                )
            }
            FibreProtocol::Bbm92 {
                model,
                lambda,
                block_bits,
            } => {
                let m = Bbm92 {
                    misalignment: (model.misalignment + intercept_resend_error(eve)).min(0.5),
                    ..*model
                };
                let (ea, eb) = m.sides(length_km);
                let p = m.at_sides(ea, eb, *lambda);
                let sifted = m.sifting * p.gain;
                (
                    block_bits / (sifted * m.rep_rate_hz),
                    block_bits * p.key_per_pulse / sifted.max(1e-300),
                    Some(p.qber),
                )
            }
            FibreProtocol::SnsTf {
                model,
                settings,
                pulses,
                delta_rad,
                eps_cor,
                eps_sec,
            } => {
                let m = sns::Sns {
                    misalignment: (model.misalignment + intercept_resend_error(eve)).min(0.5),
                    ..*model
                };
                let k = m.finite(length_km, *pulses, settings, *delta_rad, *eps_cor, *eps_sec);
                (pulses / m.rep_rate_hz, k.key_bits, Some(k.qber))
            }
            FibreProtocol::CvFinite {
                model,
                detection,
                finite,
            } => {
                let m = Gg02 {
                    xi: model.xi + intercept_resend_excess_noise(eve),
                    ..*model
                };
                let k = finite.at_distance(&m, *detection, length_km).key_per_symbol;
                (finite.symbols / m.symbol_rate_hz, finite.symbols * k, None)
            }
        };
        let auth = match (self, qber) {
            (FibreProtocol::Lim { model, .. }, Some(q)) => auth.with_ec(&model.ec, q),
            (FibreProtocol::Rusca { model, .. }, Some(q)) => auth.with_ec(&model.ec, q),
            _ => *auth,
        };
        let key_bits = net_block_key(pa_bits, &auth);
        let abort = match qber {
            Some(q) if q > qber_abort => Some(format!(
                "QBER {:.2} % above the abort threshold {:.2} %: possible eavesdropping, key generation stopped",
                100.0 * q,
                100.0 * qber_abort
            )),
            _ if !block_s.is_finite() => Some("no detections: channel loss too high".to_string()),
            _ if key_bits == 0 => Some(match qber {
                Some(q) => format!(
                    "no secret key: {} gives zero key length at QBER {:.2} % over {length_km} km",
                    self.name(),
                    100.0 * q
                ),
                None => format!(
                    "no secret key: {} gives zero key length over {length_km} km (excess noise too high)",
                    self.name()
                ),
            }),
            _ => None,
        };
        BlockPlan {
            block_s,
            key_bits,
            qber,
            abort,
        }
    }
}

fn optimal_tf_mu(m: &TwinField, length_km: f64) -> (f64, f64) {
    let (mu, r) = crate::physics::optimise::log_grid_golden_max(
        |mu| m.key_per_pulse(length_km, mu).0,
        1e-5,
        2.0,
        32,
    );
    (r, mu)
}

#[derive(Debug, Clone)]
enum SegState {
    Up(usize),
    Down(String),
    Aborted(String),
}

#[derive(Debug, Clone)]
struct Segment {
    start_ms: u64,
    state: SegState,
    bits_at_start: u64,
}

/// A link whose conditions change at discrete times (events), each condition with its own
/// [`BlockPlan`]. Implements [`LinkModel`].
#[derive(Debug, Clone)]
pub struct TimelineLink {
    plans: Vec<BlockPlan>,
    segments: Vec<Segment>,
    bound: Option<BoundCheck>,
}

impl TimelineLink {
    /// Builds the timeline from `intervals`, evaluating `plan(eve_fraction)` once per distinct
    /// condition.
    pub fn new(intervals: &[Interval], mut plan: impl FnMut(f64) -> BlockPlan) -> Self {
        let mut bounds: Vec<u64> = vec![0];
        for iv in intervals {
            bounds.push(iv.start_ms);
            bounds.push(iv.end_ms);
        }
        bounds.sort_unstable();
        bounds.dedup();
        let mut plans: Vec<(f64, BlockPlan)> = Vec::new();
        let mut segments: Vec<Segment> = Vec::with_capacity(bounds.len());
        let mut bits = 0u64;
        for &start in &bounds {
            let active = intervals
                .iter()
                .filter(|iv| iv.start_ms <= start && start < iv.end_ms);
            let mut down: Option<&'static str> = None;
            let mut eve = 0.0f64;
            for iv in active {
                match iv.effect {
                    Effect::Down(r) => {
                        // Precedence: a cut hides an outage, an outage hides maintenance.
                        let rank = |r: &str| {
                            [crate::faults::REASON_CUT, crate::faults::REASON_OUTAGE]
                                .iter()
                                .position(|x| *x == r)
                                .unwrap_or(2)
                        };
                        if down.is_none_or(|d| rank(r) < rank(d)) {
                            down = Some(r);
                        }
                    }
                    Effect::Eavesdrop(f) => eve = eve.max(f),
                }
            }
            let state = match down {
                Some(r) => SegState::Down(r.to_string()),
                None => {
                    let idx = match plans.iter().position(|(f, _)| *f == eve) {
                        Some(idx) => idx,
                        None => {
                            plans.push((eve, plan(eve)));
                            plans.len() - 1
                        }
                    };
                    match &plans[idx].1.abort {
                        Some(r) => SegState::Aborted(r.clone()),
                        None => SegState::Up(idx),
                    }
                }
            };
            // Merge with the previous segment when nothing changes (e.g. an overlapping event).
            let same = segments.last().is_some_and(|s| match (&s.state, &state) {
                (SegState::Up(a), SegState::Up(b)) => a == b,
                (SegState::Down(a), SegState::Down(b))
                | (SegState::Aborted(a), SegState::Aborted(b)) => a == b,
                _ => false,
            });
            if same {
                continue;
            }
            if let Some(prev) = segments.last() {
                bits = bits.saturating_add(blocks_between(prev, start, &plans));
            }
            segments.push(Segment {
                start_ms: start,
                state,
                bits_at_start: bits,
            });
        }
        Self {
            plans: plans.into_iter().map(|(_, p)| p).collect(),
            segments,
            bound: None,
        }
    }

    /// The same link, held against `bound` (see [`FibreProtocol::bound_check`]).
    pub fn with_bound(self, bound: BoundCheck) -> Self {
        Self {
            bound: Some(bound),
            ..self
        }
    }

    /// The block plans of the conditions the link runs under (undisturbed first).
    pub fn plans(&self) -> &[BlockPlan] {
        &self.plans
    }

    /// The bound check, for links with a physical channel.
    pub fn bound(&self) -> Option<&BoundCheck> {
        self.bound.as_ref()
    }

    /// A link without events.
    pub fn steady(plan: BlockPlan) -> Self {
        Self::new(&[], |_| plan.clone())
    }

    /// The undisturbed plan (no eavesdropping), if the link ever runs undisturbed.
    pub fn baseline(&self) -> Option<&BlockPlan> {
        self.plans.first()
    }

    fn segment(&self, t: u64) -> &Segment {
        // `segments` is never empty: `new` always pushes the segment starting at 0.
        let i = self
            .segments
            .partition_point(|s| s.start_ms <= t)
            .saturating_sub(1);
        &self.segments[i]
    }
}

fn blocks_between(seg: &Segment, end_ms: u64, plans: &[(f64, BlockPlan)]) -> u64 {
    match seg.state {
        SegState::Up(i) => {
            let p = &plans[i].1;
            let n = ((end_ms - seg.start_ms) as f64 / (p.block_s * 1000.0)).floor();
            (n as u64).saturating_mul(p.key_bits)
        }
        _ => 0,
    }
}

/// Coarse state of a link at a time, cheap to query (no strings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Producing key.
    Up,
    /// Down (outage, cut, maintenance, no satellite in view).
    Down,
    /// Aborted by the protocol (QBER, no key).
    Aborted,
}

impl Phase {
    /// The name in output files: `up`, `down` or `aborted`.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Up => "up",
            Phase::Down => "down",
            Phase::Aborted => "aborted",
        }
    }
}

impl TimelineLink {
    /// Cumulative key, phase and QBER at `t` ms, in one lookup.
    pub fn sample(&self, t: UnixMillis) -> (u64, Phase, Option<f64>) {
        let seg = self.segment(t);
        match seg.state {
            SegState::Up(i) => {
                let p = &self.plans[i];
                let n = ((t - seg.start_ms) as f64 / (p.block_s * 1000.0)).floor() as u64;
                (
                    seg.bits_at_start
                        .saturating_add(n.saturating_mul(p.key_bits)),
                    Phase::Up,
                    p.qber,
                )
            }
            SegState::Down(_) => (seg.bits_at_start, Phase::Down, None),
            SegState::Aborted(_) => (seg.bits_at_start, Phase::Aborted, None),
        }
    }
}

impl LinkModel for TimelineLink {
    fn cumulative_secret_bits(&self, t: UnixMillis) -> u64 {
        self.sample(t).0
    }

    fn status(&self, t: UnixMillis) -> LinkStatus {
        let seg = self.segment(t);
        match &seg.state {
            SegState::Up(i) => {
                let p = &self.plans[*i];
                LinkStatus {
                    state: LinkState::Up,
                    qber: p.qber,
                    secret_key_rate_bps: Some(p.rate_bps()),
                }
            }
            SegState::Down(r) => LinkStatus {
                state: LinkState::Down { reason: r.clone() },
                qber: None,
                secret_key_rate_bps: Some(0.0),
            },
            SegState::Aborted(r) => {
                let qber = self
                    .plans
                    .iter()
                    .find(|p| p.abort.as_deref() == Some(r))
                    .and_then(|p| p.qber);
                LinkStatus {
                    state: LinkState::Aborted { reason: r.clone() },
                    qber,
                    secret_key_rate_bps: Some(0.0),
                }
            }
        }
    }
}

/// Everything a satellite downlink needs.
#[derive(Debug, Clone)]
pub struct SatelliteDownlink {
    /// The orbit (circular model; with a TLE, its mean altitude sets the reference point the
    /// protocol is configured for).
    pub orbit: Orbit,
    /// A real orbit from a TLE, propagated with SGP4; when given it replaces the circular
    /// geometry for passes, elevation and range.
    #[cfg(feature = "tle")]
    pub tle: Option<crate::tle::Tle>,
    /// The ground station.
    pub station: GroundStation,
    /// Optical link budget.
    pub budget: LinkBudget,
    /// Finite-key protocol; its `hw.eta_bob` is ignored (the budget gives the transmittance).
    pub protocol: Lim2014,
    /// Unix time of the epoch (link start), s.
    pub epoch_unix_s: f64,
    /// Span over which passes are computed, s.
    pub horizon_s: f64,
    /// A pass is at night if the Sun stays below this elevation (degrees).
    pub max_sun_elevation_deg: f64,
    /// Use only night passes (the Micius practice). When false, daylight passes run with the
    /// daylight background below.
    pub night_only: bool,
    /// Background click probability per detector per pulse in daylight (sky radiance through
    /// the receiver's spectral, spatial and temporal filters); replaces the dark-count
    /// probability when it is larger.
    pub day_background_prob: f64,
    /// Seed for cloud cover.
    pub seed: u64,
    /// Authentication cost per pass.
    pub auth: Authentication,
}

/// Where the satellite is: the circular model, or SGP4 on a TLE.
enum Geometry<'a> {
    Circular(&'a Orbit),
    #[cfg(feature = "tle")]
    Tle(&'a crate::tle::Tle),
}

impl<'a> Geometry<'a> {
    fn of(d: &'a SatelliteDownlink) -> Self {
        #[cfg(feature = "tle")]
        if let Some(t) = &d.tle {
            return Geometry::Tle(t);
        }
        Geometry::Circular(&d.orbit)
    }

    fn passes(&self, d: &SatelliteDownlink, _gmst0: f64) -> Vec<crate::satellite::Pass> {
        match self {
            Geometry::Circular(o) => passes(
                o,
                &d.station,
                d.epoch_unix_s,
                d.horizon_s,
                1.0,
                d.max_sun_elevation_deg,
            ),
            // A set SGP4 cannot propagate over the horizon (a decayed orbit) gives the passes
            // found before the failure: none.
            #[cfg(feature = "tle")]
            Geometry::Tle(t) => t
                .passes(
                    &d.station,
                    d.epoch_unix_s,
                    d.horizon_s,
                    10.0,
                    d.max_sun_elevation_deg,
                )
                .unwrap_or_default(),
        }
    }

    /// Elevation (rad) and range (km) `t` seconds after the epoch.
    fn look(&self, d: &SatelliteDownlink, t: f64, gmst0: f64) -> (f64, f64) {
        match self {
            Geometry::Circular(o) => look(o, &d.station, t, gmst0, true),
            #[cfg(feature = "tle")]
            Geometry::Tle(tle) => tle
                .look(&d.station, d.epoch_unix_s + t)
                .unwrap_or((-std::f64::consts::FRAC_PI_2, f64::INFINITY)),
        }
    }
}

/// What happened on one pass.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PassOutcome {
    /// Start, ms after the epoch.
    pub start_ms: u64,
    /// End, ms after the epoch.
    pub end_ms: u64,
    /// Highest elevation, degrees.
    pub max_elevation_deg: f64,
    /// Net key of the pass (delivered at its end), bits.
    pub key_bits: u64,
    /// PLOB over the pass, bits: −log₂(1 − η_ch(t)) per pulse summed over its steps, with
    /// η_ch the free-space channel without the detector.
    pub bound_bits: f64,
    /// Observed QBER.
    pub qber: f64,
    /// Why the pass gave no key, if so.
    pub lost: Option<String>,
}

/// A satellite–ground link whose key arrives at the end of each usable pass. Implements
/// [`LinkModel`].
#[derive(Debug, Clone)]
pub struct PassLink {
    passes: Vec<PassOutcome>,
    /// The pass whose key comes closest to its PLOB bound.
    bound: BoundCheck,
    /// Cumulative key after pass i.
    cumulative: Vec<u64>,
}

impl PassLink {
    /// Computes all passes of `d` over its horizon (1 s steps) and their finite keys. `down`
    /// holds outage intervals of the ground station (a pass overlapping one is lost).
    pub fn new(d: &SatelliteDownlink, down: &[Interval]) -> Self {
        let gmst0 = gmst_rad(d.epoch_unix_s);
        let mut rng = ChaCha8Rng::seed_from_u64(d.seed);
        let hw = d.protocol.hw;
        // Settings optimised once for a mid-elevation (30°) point of a pass: the protocol is
        // configured before the pass, not per pass.
        let ref_eta = d.budget.system(
            crate::satellite::slant_range_km(d.orbit.altitude_km, 30f64.to_radians()),
            30f64.to_radians(),
        );
        let lim_pass = Lim2014 {
            block_bits: 1e6,
            ..d.protocol
        };
        let (settings, _) = lim_pass.optimise(ref_eta);
        let mut out = Vec::new();
        let mut bound = BoundCheck::new(BoundFamily::Plob, 0.0, 0.0);
        let geometry = Geometry::of(d);
        for p in geometry.passes(d, gmst0) {
            let clear = rng.random::<f64>() < d.station.clear_sky_prob;
            let (start_ms, end_ms) = ((p.start_s * 1000.0) as u64, (p.end_s * 1000.0) as u64);
            let protocol = if p.night {
                d.protocol
            } else {
                let dark_count_prob = hw.dark_count_prob.max(d.day_background_prob);
                Lim2014 {
                    hw: DvHardware {
                        dark_count_prob,
                        ..hw
                    },
                    ..d.protocol
                }
            };
            let mut counts = Counts::<3>::default();
            let mut bound_bits = 0.0;
            let mut t = p.start_s;
            while t < p.end_s {
                let (el, range) = geometry.look(d, t, gmst0);
                counts += protocol.counts(&settings, d.budget.system(range, el), hw.rep_rate_hz);
                bound_bits += plob(d.budget.channel(range, el)) * hw.rep_rate_hz;
                t += 1.0;
            }
            let k = protocol.key_from_counts(&settings, &counts);
            let key = net_block_key(k.key_bits, &d.auth);
            bound = bound.worse(BoundCheck::new(BoundFamily::Plob, key as f64, bound_bits));
            let outage = down
                .iter()
                .find(|iv| iv.start_ms < end_ms && start_ms < iv.end_ms);
            let lost = if d.night_only && !p.night {
                Some("daylight pass: the link is configured for night-only operation".to_string())
            } else if !clear {
                Some("pass lost to cloud cover".to_string())
            } else if let Some(iv) = outage {
                Some(match iv.effect {
                    Effect::Down(r) => r.to_string(),
                    Effect::Eavesdrop(_) => "pass disturbed".to_string(),
                })
            } else if key == 0 {
                Some(format!(
                    "no secret key from this {} pass (QBER {:.2} %: the finite-key bound gives zero)",
                    if p.night { "night" } else { "daylight" },
                    100.0 * k.qber
                ))
            } else {
                None
            };
            out.push(PassOutcome {
                start_ms,
                end_ms,
                max_elevation_deg: p.max_elevation_deg,
                key_bits: if lost.is_none() { key } else { 0 },
                bound_bits,
                qber: k.qber,
                lost,
            });
        }
        let mut cum = 0u64;
        let cumulative = out
            .iter()
            .map(|p| {
                cum = cum.saturating_add(p.key_bits);
                cum
            })
            .collect();
        Self {
            passes: out,
            cumulative,
            bound,
        }
    }

    /// The pass whose key comes closest to (or goes past) its PLOB bound.
    pub fn bound(&self) -> &BoundCheck {
        &self.bound
    }

    /// The passes and their outcome.
    pub fn passes(&self) -> &[PassOutcome] {
        &self.passes
    }
}

impl PassLink {
    /// Cumulative key, phase and QBER at `t` ms, in one lookup.
    pub fn sample(&self, t: UnixMillis) -> (u64, Phase, Option<f64>) {
        let n = self.passes.partition_point(|p| p.end_ms <= t);
        let cum = if n == 0 { 0 } else { self.cumulative[n - 1] };
        match self.passes.get(n) {
            Some(p) if p.start_ms <= t && p.lost.is_none() => (cum, Phase::Up, Some(p.qber)),
            _ => (cum, Phase::Down, None),
        }
    }
}

impl LinkModel for PassLink {
    fn cumulative_secret_bits(&self, t: UnixMillis) -> u64 {
        let n = self.passes.partition_point(|p| p.end_ms <= t);
        if n == 0 { 0 } else { self.cumulative[n - 1] }
    }

    fn status(&self, t: UnixMillis) -> LinkStatus {
        let i = self.passes.partition_point(|p| p.end_ms <= t);
        match self.passes.get(i) {
            Some(p) if p.start_ms <= t => match &p.lost {
                None => LinkStatus {
                    state: LinkState::Up,
                    qber: Some(p.qber),
                    secret_key_rate_bps: Some(
                        p.key_bits as f64 * 1000.0 / (p.end_ms - p.start_ms).max(1) as f64,
                    ),
                },
                Some(r) => LinkStatus {
                    state: LinkState::Down { reason: r.clone() },
                    qber: None,
                    secret_key_rate_bps: Some(0.0),
                },
            },
            Some(p) => LinkStatus {
                state: LinkState::Down {
                    reason: format!(
                        "satellite not in view; next pass in {} s",
                        (p.start_ms - t) / 1000
                    ),
                },
                qber: None,
                secret_key_rate_bps: Some(0.0),
            },
            None => LinkStatus {
                state: LinkState::Down {
                    reason: "beyond the computed pass horizon".into(),
                },
                qber: None,
                secret_key_rate_bps: Some(0.0),
            },
        }
    }
}

/// A trusted-satellite relay between two ground stations: both downlinks feed the satellite's
/// buffers, and each relay consumes equal amounts from both, so the A–B key available by `t` is
/// min(K_A(t), K_B(t)). Implements [`LinkModel`].
#[derive(Debug)]
pub struct RelayLink {
    /// Downlink to station A.
    pub a: Box<dyn LinkModel>,
    /// Downlink to station B.
    pub b: Box<dyn LinkModel>,
}

impl LinkModel for RelayLink {
    fn cumulative_secret_bits(&self, t: UnixMillis) -> u64 {
        self.a
            .cumulative_secret_bits(t)
            .min(self.b.cumulative_secret_bits(t))
    }

    fn status(&self, t: UnixMillis) -> LinkStatus {
        let (a, b) = (self.a.status(t), self.b.status(t));
        match (&a.state, &b.state) {
            (LinkState::Up, LinkState::Up) => a,
            (LinkState::Up, _) => b,
            _ => a,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::EventSpec;

    fn decoy() -> FibreProtocol {
        FibreProtocol::DecoyAsymptotic {
            model: AsymptoticBb84 {
                hw: DvHardware::GYS,
                f_ec: 1.22,
                p_z: 0.5,
                method: crate::physics::decoy::DecoyMethod::Infinite,
            },
            mu: 0.48,
            block_bits: 1e5,
        }
    }

    #[test]
    fn blocks_outages_and_aborts() {
        let p = decoy();
        let auth = Authentication::default();
        let events = [
            EventSpec::FibreCut {
                at_s: 100.0,
                repair_s: 50.0,
            },
            EventSpec::InterceptResend {
                at_s: 300.0,
                duration_s: 100.0,
                fraction: 1.0,
            },
        ];
        let ivs: Vec<_> = events.iter().flat_map(|e| e.intervals()).collect();
        let link = TimelineLink::new(&ivs, |eve| p.plan(25.0, eve, 0.11, &auth));
        let base = p.plan(25.0, 0.0, 0.11, &auth);
        assert!(base.abort.is_none());
        let bms = (base.block_s * 1000.0) as u64;
        // Nothing before the first block, one block right after.
        assert_eq!(link.cumulative_secret_bits(bms - 1), 0);
        assert_eq!(link.cumulative_secret_bits(bms + 1), base.key_bits);
        // Down during the cut, nothing gained.
        assert!(matches!(link.status(120_000).state, LinkState::Down { .. }));
        assert_eq!(
            link.cumulative_secret_bits(149_999),
            link.cumulative_secret_bits(100_000)
        );
        // Full intercept-resend: QBER ≈ 3.3 % + 25 % → aborted with a reason.
        match link.status(350_000).state {
            LinkState::Aborted { reason } => assert!(reason.contains("QBER"), "{reason}"),
            s => panic!("{s:?}"),
        }
        assert_eq!(
            link.cumulative_secret_bits(399_000),
            link.cumulative_secret_bits(300_000)
        );
        assert!(link.cumulative_secret_bits(1_000_000) > link.cumulative_secret_bits(400_000));
        // Monotone everywhere.
        let mut prev = 0;
        for t in (0..1_000_000).step_by(997) {
            let c = link.cumulative_secret_bits(t);
            assert!(c >= prev);
            prev = c;
        }
    }

    #[test]
    fn weak_attack_raises_qber_without_abort() {
        let p = decoy();
        let plan = p.plan(25.0, 0.1, 0.11, &Authentication::default());
        let base = p.plan(25.0, 0.0, 0.11, &Authentication::default());
        assert!(plan.abort.is_none());
        assert!(plan.qber.unwrap() > base.qber.unwrap() + 0.02);
        assert!(plan.key_bits < base.key_bits);
    }
}
