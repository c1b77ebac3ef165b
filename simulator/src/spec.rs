//! Declarative link models: [`LinkModelSpec`] is what a configuration file (a node's TOML link
//! section, a scenario file) says about a link, and [`LinkModelSpec::build`] turns it into a
//! [`LinkModel`] after checking every parameter for physical meaning.
//!
//! ```toml
//! [link.model]
//! kind = "finite-key-bb84"
//! length_km = 40.0
//! block_bits = 1e6
//! hardware = { preset = "lim2014", rep_rate_hz = 1e9 }
//! events = [ { kind = "fibre-cut", at_s = 3600, repair_s = 1800 } ]
//! ```
//!
//! Field names are snake_case; `kind` values kebab-case. Unknown fields are rejected.

use serde::{Deserialize, Serialize};

use crate::faults::{EventSpec, Interval, RandomFaults};
use crate::model::{ConstantRate, LinkModel};
use crate::physical::{BlockPlan, FibreProtocol, PassLink, SatelliteDownlink, TimelineLink};
use crate::physics::channel::{DvHardware, ParamError};
use crate::physics::cv::Gg02;
use crate::physics::decoy::{AsymptoticBb84, DecoyMethod};
use crate::physics::finite::{Lim2014, Rusca2018, Secrecy};
use crate::physics::postproc::{Authentication, EcModel};
use crate::physics::twinfield::TwinField;
use crate::physics::{bbm92::Bbm92, cv_finite, mdi::MdiQkd, sns};
use crate::satellite::{GroundStation, LinkBudget, Orbit};

/// A link model as written in a configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum LinkModelSpec {
    /// A fixed secret key rate (demos, tests).
    ConstantRate(ConstantRateSpec),
    /// Decoy-state BB84, asymptotic key rate (GLLP; infinite decoys or vacuum + weak).
    DecoyBb84(DecoyBb84Spec),
    /// Finite-key three-intensity decoy BB84 (Lim 2014), parameters optimised for the link.
    FiniteKeyBb84(FiniteKeySpec),
    /// Finite-key one-decoy BB84 (Rusca 2018), parameters optimised for the link.
    OneDecoyBb84(FiniteKeySpec),
    /// GG02 CV-QKD with reverse reconciliation.
    CvGg02(CvSpec),
    /// Twin-field QKD (phase matching), total Alice–Bob length.
    TwinField(TwinFieldSpec),
    /// Satellite–ground downlink, key per night pass.
    SatelliteDownlink(SatelliteSpec),
    /// Decoy MDI-QKD, total Alice–Bob length (Charlie at `params.charlie_fraction`).
    MdiQkd(MdiSpec),
    /// Entanglement-based BBM92, total length (source at `params.source_fraction`).
    Bbm92(Bbm92Spec),
    /// Sending-or-not-sending twin-field with its finite-key analysis, total length.
    SnsTf(SnsSpec),
    /// CV-QKD with homodyne or heterodyne detection and composable finite size.
    CvQkd(CvQkdSpec),
}

/// `kind = "mdi-qkd"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MdiSpec {
    /// Total Alice–Bob fibre length, km.
    pub length_km: f64,
    /// Model parameters (default [`MdiQkd::SNSPD`]).
    #[serde(default)]
    pub params: Option<MdiQkd>,
    /// Key-basis detections per block.
    #[serde(default = "default_block")]
    pub block_bits: f64,
    /// Events, faults, abort threshold, authentication.
    #[serde(default, flatten)]
    pub ops: LinkOps,
}

/// `kind = "bbm92"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bbm92Spec {
    /// Total Alice–Bob fibre length, km.
    pub length_km: f64,
    /// Model parameters (default [`Bbm92::SNSPD`]).
    #[serde(default)]
    pub params: Option<Bbm92>,
    /// Sifted coincidences per block.
    #[serde(default = "default_block")]
    pub block_bits: f64,
    /// Events, faults, abort threshold, authentication.
    #[serde(default, flatten)]
    pub ops: LinkOps,
}

/// `kind = "sns-tf"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnsSpec {
    /// Total Alice–Bob fibre length, km.
    pub length_km: f64,
    /// Model parameters (default [`sns::Sns::WYH2018`] with 3 % misalignment).
    #[serde(default)]
    pub params: Option<sns::Sns>,
    /// Pulse pairs per finite-key block (default 10¹²).
    #[serde(default = "default_sns_pulses")]
    pub pulses: f64,
    /// Phase slice Δ of the phase-matched X windows, rad (default 0.2).
    #[serde(default = "default_delta")]
    pub delta_rad: f64,
    /// ε_cor (default 10⁻¹⁰).
    #[serde(default = "default_eps_10")]
    pub eps_cor: f64,
    /// ε_sec (default 10⁻¹⁰).
    #[serde(default = "default_eps_10")]
    pub eps_sec: f64,
    /// Events, faults, abort threshold, authentication.
    #[serde(default, flatten)]
    pub ops: LinkOps,
}

fn default_sns_pulses() -> f64 {
    1e12
}
fn default_delta() -> f64 {
    0.2
}
fn default_eps_10() -> f64 {
    1e-10
}

/// `kind = "cv-qkd"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CvQkdSpec {
    /// Fibre length, km.
    pub length_km: f64,
    /// Channel and detector (default the simulator/docs/models.md §2.5 setting at 100 MBd).
    #[serde(default)]
    pub params: Option<Gg02>,
    /// `homodyne` or `heterodyne` (default heterodyne).
    #[serde(default = "default_detection")]
    pub detection: cv_finite::CvDetection,
    /// Finite-size settings; `symbols` is the block (default 10⁹ symbols, 10 % for estimation).
    #[serde(default)]
    pub finite: cv_finite::CvFiniteSize,
    /// Events, faults, authentication.
    #[serde(default, flatten)]
    pub ops: LinkOps,
}

fn default_detection() -> cv_finite::CvDetection {
    cv_finite::CvDetection::Heterodyne
}

/// `kind = "constant-rate"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConstantRateSpec {
    /// Secret key rate, bit/s.
    pub bits_per_second: u64,
    /// Reported QBER (default 1.5 %).
    #[serde(default)]
    pub qber: Option<f64>,
    /// Scheduled events.
    #[serde(default)]
    pub events: Vec<EventSpec>,
}

/// Hardware: a preset plus optional overrides of its fields.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HardwareSpec {
    /// Starting point (default depends on the protocol).
    #[serde(default)]
    pub preset: Option<HardwarePreset>,
    /// Repetition rate, Hz.
    #[serde(default)]
    pub rep_rate_hz: Option<f64>,
    /// Fibre attenuation, dB/km.
    #[serde(default)]
    pub alpha_db_per_km: Option<f64>,
    /// Connector/insertion loss, dB.
    #[serde(default)]
    pub extra_loss_db: Option<f64>,
    /// Bob's optics × detector efficiency.
    #[serde(default)]
    pub eta_bob: Option<f64>,
    /// Dark-count probability per detector per gate.
    #[serde(default)]
    pub dark_count_prob: Option<f64>,
    /// Afterpulse probability.
    #[serde(default)]
    pub afterpulse_prob: Option<f64>,
    /// Misalignment error.
    #[serde(default)]
    pub misalignment: Option<f64>,
    /// Dead time, s.
    #[serde(default)]
    pub dead_time_s: Option<f64>,
}

/// Named hardware parameter sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HardwarePreset {
    /// [`DvHardware::GYS`].
    Gys,
    /// [`DvHardware::KTH`].
    Kth,
    /// [`DvHardware::LIM2014`].
    Lim2014,
    /// [`DvHardware::METRO_GHZ`].
    MetroGhz,
}

impl HardwarePreset {
    /// The parameter set.
    pub fn hardware(self) -> DvHardware {
        match self {
            HardwarePreset::Gys => DvHardware::GYS,
            HardwarePreset::Kth => DvHardware::KTH,
            HardwarePreset::Lim2014 => DvHardware::LIM2014,
            HardwarePreset::MetroGhz => DvHardware::METRO_GHZ,
        }
    }
}

impl HardwareSpec {
    /// The resolved hardware, `default` preset if none is named.
    pub fn resolve(&self, default: HardwarePreset) -> DvHardware {
        let mut hw = self.preset.unwrap_or(default).hardware();
        let set = |dst: &mut f64, v: Option<f64>| {
            if let Some(v) = v {
                *dst = v;
            }
        };
        set(&mut hw.rep_rate_hz, self.rep_rate_hz);
        set(&mut hw.alpha_db_per_km, self.alpha_db_per_km);
        set(&mut hw.extra_loss_db, self.extra_loss_db);
        set(&mut hw.eta_bob, self.eta_bob);
        set(&mut hw.dark_count_prob, self.dark_count_prob);
        set(&mut hw.afterpulse_prob, self.afterpulse_prob);
        set(&mut hw.misalignment, self.misalignment);
        set(&mut hw.dead_time_s, self.dead_time_s);
        hw
    }
}

/// Settings shared by all fibre links.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkOps {
    /// Scheduled events.
    #[serde(default)]
    pub events: Vec<EventSpec>,
    /// Random fibre cuts.
    #[serde(default)]
    pub random_faults: Option<RandomFaults>,
    /// QBER above which key generation aborts (default 11 %, the BB84 limit for one-way
    /// post-processing).
    #[serde(default = "default_qber_abort")]
    pub qber_abort: f64,
    /// Authentication cost.
    #[serde(default)]
    pub auth: Authentication,
    /// Seed for random faults (a scenario mixes in its own seed and the link id).
    #[serde(default)]
    pub seed: u64,
}

impl Default for LinkOps {
    fn default() -> Self {
        Self {
            events: Vec::new(),
            random_faults: None,
            qber_abort: default_qber_abort(),
            auth: Authentication::default(),
            seed: 0,
        }
    }
}

fn default_qber_abort() -> f64 {
    0.11
}

/// `kind = "decoy-bb84"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecoyBb84Spec {
    /// Fibre length, km.
    pub length_km: f64,
    /// Hardware (default preset `metro-ghz`).
    #[serde(default)]
    pub hardware: HardwareSpec,
    /// Decoy method (default infinite decoys).
    #[serde(default = "default_decoy")]
    pub decoy: DecoyMethod,
    /// Signal intensity; optimised for the link when absent.
    #[serde(default)]
    pub mu: Option<f64>,
    /// Basis-Z probability (0.5 = standard BB84; efficient BB84 uses ~0.9).
    #[serde(default = "half")]
    pub p_z: f64,
    /// EC inefficiency.
    #[serde(default = "default_f")]
    pub f_ec: f64,
    /// Sifted bits per post-processing block.
    #[serde(default = "default_block")]
    pub block_bits: f64,
    /// Events, faults, abort threshold, authentication.
    #[serde(default, flatten)]
    pub ops: LinkOps,
}

fn default_decoy() -> DecoyMethod {
    DecoyMethod::Infinite
}
fn half() -> f64 {
    0.5
}
fn default_f() -> f64 {
    1.16
}
fn default_block() -> f64 {
    1e6
}

/// `kind = "finite-key-bb84"` and `kind = "one-decoy-bb84"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FiniteKeySpec {
    /// Fibre length, km.
    pub length_km: f64,
    /// Hardware (default `lim2014` for three intensities, `metro-ghz` for one decoy).
    #[serde(default)]
    pub hardware: HardwareSpec,
    /// Key-basis bits per block (n_X for Lim, n_Z for Rusca).
    #[serde(default = "default_block")]
    pub block_bits: f64,
    /// Error-correction model.
    #[serde(default)]
    pub ec: EcModel,
    /// Correctness parameter.
    #[serde(default = "default_eps_cor")]
    pub eps_cor: f64,
    /// Fixed secrecy parameter; when absent Lim uses ε_sec = 10⁻¹⁵·ℓ and Rusca 10⁻⁹.
    #[serde(default)]
    pub eps_sec: Option<f64>,
    /// Events, faults, abort threshold, authentication.
    #[serde(default, flatten)]
    pub ops: LinkOps,
}

fn default_eps_cor() -> f64 {
    1e-15
}

/// `kind = "cv-gg02"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CvSpec {
    /// Fibre length, km.
    pub length_km: f64,
    /// Model parameters (default: the test-vector setting of simulator/docs/models.md §2.5 at 100 MBaud).
    #[serde(default)]
    pub params: Option<Gg02>,
    /// Symbols per block.
    #[serde(default = "default_block_cv")]
    pub block_symbols: f64,
    /// Events, faults, authentication (`qber_abort` is unused: CV aborts on zero key).
    #[serde(default, flatten)]
    pub ops: LinkOps,
}

fn default_block_cv() -> f64 {
    1e8
}

/// `kind = "twin-field"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TwinFieldSpec {
    /// Total Alice–Bob fibre length, km (Charlie in the middle).
    pub length_km: f64,
    /// Model parameters (default [`TwinField::LONG_HAUL`]).
    #[serde(default)]
    pub params: Option<TwinField>,
    /// Detections per block.
    #[serde(default = "default_block")]
    pub block_bits: f64,
    /// Events, faults, abort threshold, authentication.
    #[serde(default, flatten)]
    pub ops: LinkOps,
}

/// `kind = "satellite-downlink"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SatelliteSpec {
    /// The orbit (circular model). With `tle`, only its altitude is used: it sets the
    /// mid-elevation point the protocol is configured for.
    pub orbit: Orbit,
    /// A real orbit: the two element lines of a TLE, propagated with SGP4 instead of the
    /// circular model (needs the crate's `tle` feature, on with `cli`).
    #[serde(default)]
    pub tle: Option<Vec<String>>,
    /// The ground station.
    pub station: GroundStation,
    /// Link budget (default Micius-like).
    #[serde(default)]
    pub budget: Option<LinkBudget>,
    /// Source and detector (default `lim2014` at 100 MHz; `eta_bob` and the fibre fields are
    /// ignored, the budget gives the transmittance).
    #[serde(default)]
    pub hardware: HardwareSpec,
    /// Unix time of the link start, s (sets the Sun and the Earth's orientation).
    pub start_unix_s: f64,
    /// Span over which passes are computed, s (default 7 days).
    #[serde(default = "default_sat_horizon")]
    pub horizon_s: f64,
    /// Operate only at night (default true).
    #[serde(default = "yes")]
    pub night_only: bool,
    /// Sun elevation below which it is night, degrees (default −12).
    #[serde(default = "default_sun")]
    pub max_sun_elevation_deg: f64,
    /// Background click probability per detector per pulse in daylight, used when
    /// `night_only` is false (default 5×10⁻⁵: an 850 nm receiver with ~1 nm, 100 µrad and 1 ns
    /// filtering under a bright sky is in the 10⁻⁵–10⁻⁴ range \[M\]).
    #[serde(default = "default_day_background")]
    pub day_background_prob: f64,
    /// Events (ground-station outages, maintenance), authentication, seed for cloud cover.
    #[serde(default, flatten)]
    pub ops: LinkOps,
}

fn default_sat_horizon() -> f64 {
    7.0 * 86_400.0
}
fn yes() -> bool {
    true
}
fn default_sun() -> f64 {
    -12.0
}
fn default_day_background() -> f64 {
    5e-5
}

/// A link specification that makes no physical sense. The operator who wrote the configuration
/// causes it; the message names the field and says what is wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    /// A parameter is out of its physical range.
    #[error("{kind} link: {source}")]
    Param {
        /// The `kind` of the link.
        kind: &'static str,
        /// What is wrong.
        source: ParamError,
    },
    /// An event is malformed.
    #[error("{kind} link: events[{index}]: {source}")]
    Event {
        /// The `kind` of the link.
        kind: &'static str,
        /// Position in `events`.
        index: usize,
        /// What is wrong.
        source: ParamError,
    },
}

impl LinkModelSpec {
    /// The `kind` tag of this spec.
    pub fn kind(&self) -> &'static str {
        match self {
            LinkModelSpec::ConstantRate(_) => "constant-rate",
            LinkModelSpec::DecoyBb84(_) => "decoy-bb84",
            LinkModelSpec::FiniteKeyBb84(_) => "finite-key-bb84",
            LinkModelSpec::OneDecoyBb84(_) => "one-decoy-bb84",
            LinkModelSpec::CvGg02(_) => "cv-gg02",
            LinkModelSpec::TwinField(_) => "twin-field",
            LinkModelSpec::SatelliteDownlink(_) => "satellite-downlink",
            LinkModelSpec::MdiQkd(_) => "mdi-qkd",
            LinkModelSpec::Bbm92(_) => "bbm92",
            LinkModelSpec::SnsTf(_) => "sns-tf",
            LinkModelSpec::CvQkd(_) => "cv-qkd",
        }
    }

    /// Fibre length, if a fibre link.
    pub fn length_km(&self) -> Option<f64> {
        match self {
            LinkModelSpec::DecoyBb84(s) => Some(s.length_km),
            LinkModelSpec::FiniteKeyBb84(s) | LinkModelSpec::OneDecoyBb84(s) => Some(s.length_km),
            LinkModelSpec::CvGg02(s) => Some(s.length_km),
            LinkModelSpec::TwinField(s) => Some(s.length_km),
            LinkModelSpec::MdiQkd(s) => Some(s.length_km),
            LinkModelSpec::Bbm92(s) => Some(s.length_km),
            LinkModelSpec::SnsTf(s) => Some(s.length_km),
            LinkModelSpec::CvQkd(s) => Some(s.length_km),
            _ => None,
        }
    }

    /// Mutable access to the operational settings (events, faults, seed), if any.
    pub fn ops_mut(&mut self) -> Option<&mut LinkOps> {
        match self {
            LinkModelSpec::ConstantRate(_) => None,
            LinkModelSpec::DecoyBb84(s) => Some(&mut s.ops),
            LinkModelSpec::FiniteKeyBb84(s) | LinkModelSpec::OneDecoyBb84(s) => Some(&mut s.ops),
            LinkModelSpec::CvGg02(s) => Some(&mut s.ops),
            LinkModelSpec::TwinField(s) => Some(&mut s.ops),
            LinkModelSpec::SatelliteDownlink(s) => Some(&mut s.ops),
            LinkModelSpec::MdiQkd(s) => Some(&mut s.ops),
            LinkModelSpec::Bbm92(s) => Some(&mut s.ops),
            LinkModelSpec::SnsTf(s) => Some(&mut s.ops),
            LinkModelSpec::CvQkd(s) => Some(&mut s.ops),
        }
    }

    /// Checks the spec and builds the model. Physics is evaluated here once (including any
    /// parameter optimisation), so this may take milliseconds.
    pub fn build(&self) -> Result<Box<dyn LinkModel>, SpecError> {
        Ok(match self.build_fibre()? {
            Built::Timeline(t) => Box::new(t),
            Built::Pass(p) => Box::new(p),
            Built::Constant(c) => Box::new(c),
        })
    }

    /// Like [`Self::build`], but keeps the concrete type (for the network simulator and for
    /// reports that need the block plan or the passes).
    pub fn build_concrete(&self) -> Result<Built, SpecError> {
        self.build_fibre()
    }

    fn build_fibre(&self) -> Result<Built, SpecError> {
        let kind = self.kind();
        let param = |source: ParamError| SpecError::Param { kind, source };
        match self {
            LinkModelSpec::ConstantRate(c) => {
                let qber = c.qber.unwrap_or(0.015);
                if !(0.0..=0.5).contains(&qber) {
                    return Err(param(ParamError::new("qber", qber, "must lie in [0, 0.5]")));
                }
                let intervals = expand_events(kind, &c.events)?;
                if intervals.is_empty() {
                    return Ok(Built::Constant(ConstantRate {
                        bits_per_second: c.bits_per_second,
                        qber,
                    }));
                }
                let plan = BlockPlan {
                    block_s: 1.0,
                    key_bits: c.bits_per_second,
                    qber: Some(qber),
                    abort: None,
                };
                Ok(Built::Timeline(TimelineLink::new(&intervals, |_| {
                    plan.clone()
                })))
            }
            LinkModelSpec::SatelliteDownlink(s) => {
                s.orbit.validate().map_err(param)?;
                let budget = s.budget.unwrap_or(LinkBudget::MICIUS_LIKE);
                budget.validate().map_err(param)?;
                check_station(&s.station).map_err(param)?;
                let mut hw = s.hardware.resolve(HardwarePreset::Lim2014);
                if s.hardware.rep_rate_hz.is_none() {
                    hw.rep_rate_hz = 1e8;
                }
                hw.eta_bob = 1.0;
                hw.validate().map_err(param)?;
                if !(s.horizon_s > 0.0 && s.horizon_s <= 366.0 * 86_400.0) {
                    return Err(param(ParamError::new(
                        "horizon_s",
                        s.horizon_s,
                        "must lie in (0, 1 year]",
                    )));
                }
                crate::physics::channel::probability("day_background_prob", s.day_background_prob)
                    .map_err(param)?;
                if !s.start_unix_s.is_finite() {
                    return Err(param(ParamError::new(
                        "start_unix_s",
                        s.start_unix_s,
                        "must be a Unix time in seconds",
                    )));
                }
                let intervals = expand_ops(kind, &s.ops, 0.0)?;
                #[cfg(feature = "tle")]
                let tle = s
                    .tle
                    .as_ref()
                    .map(|l| parse_tle(l))
                    .transpose()
                    .map_err(param)?;
                #[cfg(not(feature = "tle"))]
                if s.tle.is_some() {
                    return Err(param(ParamError::new(
                        "tle",
                        f64::NAN,
                        "TLE orbits need the `tle` feature of qkd-simulator",
                    )));
                }
                let d = SatelliteDownlink {
                    orbit: s.orbit,
                    #[cfg(feature = "tle")]
                    tle,
                    station: s.station,
                    budget,
                    protocol: Lim2014 {
                        hw,
                        ..Lim2014::paper(1e6)
                    },
                    epoch_unix_s: s.start_unix_s,
                    horizon_s: s.horizon_s,
                    max_sun_elevation_deg: s.max_sun_elevation_deg,
                    night_only: s.night_only,
                    day_background_prob: s.day_background_prob,
                    seed: s.ops.seed,
                    auth: s.ops.auth,
                };
                Ok(Built::Pass(PassLink::new(&d, &intervals)))
            }
            _ => {
                let (protocol, length, ops) = self.fibre_protocol()?;
                let intervals = expand_ops(kind, ops, length)?;
                let (abort, auth) = (ops.qber_abort, ops.auth);
                let link =
                    TimelineLink::new(&intervals, |eve| protocol.plan(length, eve, abort, &auth));
                let bound = protocol.bound_check(length, link.plans());
                Ok(Built::Timeline(link.with_bound(bound)))
            }
        }
    }

    /// The protocol of a fibre link with its length and operations, parameters checked and
    /// optimised.
    pub fn fibre_protocol(&self) -> Result<(FibreProtocol, f64, &LinkOps), SpecError> {
        let kind = self.kind();
        let param = |source: ParamError| SpecError::Param { kind, source };
        let length = self.length_km().unwrap_or(0.0);
        if !(length.is_finite() && (0.0..=20_000.0).contains(&length)) {
            return Err(param(ParamError::new(
                "length_km",
                length,
                "a fibre length lies in [0, 20000] km",
            )));
        }
        let check_block = |field: &'static str, v: f64| {
            if v.is_finite() && (1e3..=1e13).contains(&v) {
                Ok(())
            } else {
                Err(param(ParamError::new(
                    field,
                    v,
                    "a block holds between 10³ and 10¹³ bits",
                )))
            }
        };
        let check_ops = |ops: &LinkOps| {
            if !(ops.qber_abort > 0.0 && ops.qber_abort <= 0.5) {
                return Err(param(ParamError::new(
                    "qber_abort",
                    ops.qber_abort,
                    "must lie in (0, 0.5]",
                )));
            }
            Ok(())
        };
        match self {
            LinkModelSpec::DecoyBb84(s) => {
                let hw = s.hardware.resolve(HardwarePreset::MetroGhz);
                hw.validate().map_err(param)?;
                check_block("block_bits", s.block_bits)?;
                check_ops(&s.ops)?;
                if !(s.p_z > 0.0 && s.p_z < 1.0) {
                    return Err(param(ParamError::new("p_z", s.p_z, "must lie in (0, 1)")));
                }
                EcModel::Efficiency { f: s.f_ec }.validate().map_err(|_| {
                    param(ParamError::new(
                        "f_ec",
                        s.f_ec,
                        "an EC inefficiency lies in [1, 3]",
                    ))
                })?;
                if let DecoyMethod::VacuumWeak { nu } = s.decoy
                    && !(nu > 0.0 && nu < 1.0)
                {
                    return Err(param(ParamError::new(
                        "decoy.nu",
                        nu,
                        "a weak decoy intensity lies in (0, 1)",
                    )));
                }
                let model = AsymptoticBb84 {
                    hw,
                    f_ec: s.f_ec,
                    p_z: s.p_z,
                    method: s.decoy,
                };
                let mu = match s.mu {
                    Some(mu) => {
                        let nu = if let DecoyMethod::VacuumWeak { nu } = s.decoy {
                            nu
                        } else {
                            0.0
                        };
                        if !(mu > nu && mu <= 2.0) {
                            return Err(param(ParamError::new(
                                "mu",
                                mu,
                                "the signal intensity lies above the decoy and ≤ 2",
                            )));
                        }
                        mu
                    }
                    None => model.optimal_mu(hw.eta_sys(length)).0,
                };
                Ok((
                    FibreProtocol::DecoyAsymptotic {
                        model,
                        mu,
                        block_bits: s.block_bits,
                    },
                    length,
                    &s.ops,
                ))
            }
            LinkModelSpec::FiniteKeyBb84(s) | LinkModelSpec::OneDecoyBb84(s) => {
                let three = matches!(self, LinkModelSpec::FiniteKeyBb84(_));
                let hw = s.hardware.resolve(if three {
                    HardwarePreset::Lim2014
                } else {
                    HardwarePreset::MetroGhz
                });
                hw.validate().map_err(param)?;
                check_block("block_bits", s.block_bits)?;
                check_ops(&s.ops)?;
                s.ec.validate().map_err(param)?;
                if !(s.eps_cor > 0.0 && s.eps_cor < 1e-3) {
                    return Err(param(ParamError::new(
                        "eps_cor",
                        s.eps_cor,
                        "must lie in (0, 10⁻³)",
                    )));
                }
                if let Some(e) = s.eps_sec
                    && !(e > 0.0 && e < 1e-3)
                {
                    return Err(param(ParamError::new(
                        "eps_sec",
                        e,
                        "must lie in (0, 10⁻³)",
                    )));
                }
                let eta = hw.eta_sys(length);
                if three {
                    let model = Lim2014 {
                        hw,
                        ec: s.ec,
                        eps_cor: s.eps_cor,
                        secrecy: s.eps_sec.map_or(Secrecy::PerBit(1e-15), Secrecy::Fixed),
                        block_bits: s.block_bits,
                        mu3: 2e-4,
                    };
                    let (settings, _) = model.optimise(eta);
                    Ok((FibreProtocol::Lim { model, settings }, length, &s.ops))
                } else {
                    let mut model = Rusca2018::new(hw, s.block_bits);
                    model.ec = s.ec;
                    model.eps_cor = s.eps_cor;
                    if let Some(e) = s.eps_sec {
                        model.eps_sec = e;
                    }
                    let (settings, _) = model.optimise(eta);
                    Ok((FibreProtocol::Rusca { model, settings }, length, &s.ops))
                }
            }
            LinkModelSpec::CvGg02(s) => {
                let model = s.params.unwrap_or(Gg02::REFERENCE);
                model.validate().map_err(param)?;
                check_block("block_symbols", s.block_symbols)?;
                Ok((
                    FibreProtocol::Cv {
                        model,
                        block_symbols: s.block_symbols,
                    },
                    length,
                    &s.ops,
                ))
            }
            LinkModelSpec::TwinField(s) => {
                let model = s.params.unwrap_or(TwinField::LONG_HAUL);
                crate::curve::CurveProtocol::TwinField(model)
                    .validate()
                    .map_err(param)?;
                check_block("block_bits", s.block_bits)?;
                check_ops(&s.ops)?;
                Ok((
                    FibreProtocol::TwinField {
                        model,
                        block_bits: s.block_bits,
                    },
                    length,
                    &s.ops,
                ))
            }
            LinkModelSpec::MdiQkd(s) => {
                let model = s.params.unwrap_or(MdiQkd::SNSPD);
                model.validate().map_err(param)?;
                check_block("block_bits", s.block_bits)?;
                check_ops(&s.ops)?;
                let mu = model.optimal(length).mu;
                Ok((
                    FibreProtocol::Mdi {
                        model,
                        mu,
                        block_bits: s.block_bits,
                    },
                    length,
                    &s.ops,
                ))
            }
            LinkModelSpec::Bbm92(s) => {
                let model = s.params.unwrap_or(Bbm92::SNSPD);
                model.validate().map_err(param)?;
                check_block("block_bits", s.block_bits)?;
                check_ops(&s.ops)?;
                let lambda = model.optimal(length).lambda;
                Ok((
                    FibreProtocol::Bbm92 {
                        model,
                        lambda,
                        block_bits: s.block_bits,
                    },
                    length,
                    &s.ops,
                ))
            }
            LinkModelSpec::SnsTf(s) => {
                let model = s.params.unwrap_or(sns::Sns {
                    misalignment: 0.03,
                    ..sns::Sns::WYH2018
                });
                crate::curve::CurveProtocol::SnsTf {
                    model,
                    pulses: Some(s.pulses),
                    delta_rad: s.delta_rad,
                }
                .validate()
                .map_err(param)?;
                check_ops(&s.ops)?;
                for (f, v) in [("eps_cor", s.eps_cor), ("eps_sec", s.eps_sec)] {
                    if !(v > 0.0 && v < 1e-3) {
                        return Err(param(ParamError::new(f, v, "must lie in (0, 10⁻³)")));
                    }
                }
                let (settings, _) =
                    model.finite_optimal(length, s.pulses, s.delta_rad, s.eps_cor, s.eps_sec);
                Ok((
                    FibreProtocol::SnsTf {
                        model,
                        settings,
                        pulses: s.pulses,
                        delta_rad: s.delta_rad,
                        eps_cor: s.eps_cor,
                        eps_sec: s.eps_sec,
                    },
                    length,
                    &s.ops,
                ))
            }
            LinkModelSpec::CvQkd(s) => {
                let model = s.params.unwrap_or(Gg02::REFERENCE);
                model.validate().map_err(param)?;
                s.finite.validate().map_err(param)?;
                Ok((
                    FibreProtocol::CvFinite {
                        model,
                        detection: s.detection,
                        finite: s.finite,
                    },
                    length,
                    &s.ops,
                ))
            }
            LinkModelSpec::ConstantRate(_) | LinkModelSpec::SatelliteDownlink(_) => Err(param(
                ParamError::new("kind", f64::NAN, "not a fibre protocol"),
            )),
        }
    }
}

/// A built model with its concrete type.
#[derive(Debug)]
pub enum Built {
    /// Fibre link (or constant rate with events).
    Timeline(TimelineLink),
    /// Satellite downlink.
    Pass(PassLink),
    /// Constant rate without events.
    Constant(ConstantRate),
}

impl Built {
    /// Cumulative key, phase and QBER at `t` ms, in one lookup.
    pub fn sample(&self, t: qkd_types::UnixMillis) -> (u64, crate::physical::Phase, Option<f64>) {
        match self {
            Built::Timeline(l) => l.sample(t),
            Built::Pass(p) => p.sample(t),
            Built::Constant(c) => (
                c.cumulative_secret_bits(t),
                crate::physical::Phase::Up,
                Some(c.qber),
            ),
        }
    }

    /// The fundamental bound the link is held against and how close it comes (None for a
    /// constant-rate link, which has no physical channel).
    pub fn bound(&self) -> Option<&crate::physical::BoundCheck> {
        match self {
            Built::Timeline(l) => l.bound(),
            Built::Pass(p) => Some(p.bound()),
            Built::Constant(_) => None,
        }
    }

    /// As a trait object reference.
    pub fn as_model(&self) -> &dyn LinkModel {
        match self {
            Built::Timeline(t) => t,
            Built::Pass(p) => p,
            Built::Constant(c) => c,
        }
    }
}

/// One TLE from its two element lines.
#[cfg(feature = "tle")]
pub fn parse_tle(lines: &[String]) -> Result<crate::tle::Tle, ParamError> {
    let bad = || {
        ParamError::new(
            "tle",
            f64::NAN,
            "two element lines (1 … and 2 …) with valid checksums that SGP4 accepts",
        )
    };
    if lines.len() != 2 {
        return Err(bad());
    }
    crate::tle::Tle::parse(&lines.join("\n"), "tle")
        .ok()
        .and_then(|mut v| v.pop())
        .ok_or_else(bad)
}

fn check_station(s: &GroundStation) -> Result<(), ParamError> {
    if !(-90.0..=90.0).contains(&s.lat_deg) {
        return Err(ParamError::new(
            "station.lat_deg",
            s.lat_deg,
            "a latitude lies in [−90, 90]",
        ));
    }
    if !(-180.0..=360.0).contains(&s.lon_deg) {
        return Err(ParamError::new(
            "station.lon_deg",
            s.lon_deg,
            "a longitude lies in [−180, 360]",
        ));
    }
    if !(0.0..90.0).contains(&s.min_elevation_deg) {
        return Err(ParamError::new(
            "station.min_elevation_deg",
            s.min_elevation_deg,
            "must lie in [0, 90)",
        ));
    }
    crate::physics::channel::probability("station.clear_sky_prob", s.clear_sky_prob)
}

fn expand_events(kind: &'static str, events: &[EventSpec]) -> Result<Vec<Interval>, SpecError> {
    let mut out = Vec::new();
    for (index, e) in events.iter().enumerate() {
        e.validate().map_err(|source| SpecError::Event {
            kind,
            index,
            source,
        })?;
        out.extend(e.intervals());
    }
    Ok(out)
}

fn expand_ops(
    kind: &'static str,
    ops: &LinkOps,
    length_km: f64,
) -> Result<Vec<Interval>, SpecError> {
    let mut out = expand_events(kind, &ops.events)?;
    if let Some(rf) = &ops.random_faults {
        rf.validate()
            .map_err(|source| SpecError::Param { kind, source })?;
        out.extend(rf.draw(length_km, ops.seed));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use qkd_hardware::LinkState;

    fn parse(s: &str) -> Result<LinkModelSpec, toml::de::Error> {
        toml::from_str(s)
    }

    #[test]
    fn constant_rate_round_trip_and_defaults() {
        let spec = parse("kind = \"constant-rate\"\nbits_per_second = 2000\n").unwrap();
        let m = spec.build().unwrap();
        assert_eq!(m.cumulative_secret_bits(1500), 3000);
        let spec = parse("kind = \"decoy-bb84\"\nlength_km = 30.0\n").unwrap();
        let m = spec.build().unwrap();
        let st = m.status(0);
        assert_eq!(st.state, LinkState::Up);
        assert!(st.secret_key_rate_bps.unwrap() > 1e4);
        assert!(m.cumulative_secret_bits(3_600_000) > 0);
    }

    #[test]
    fn errors_name_the_field() {
        let e = parse("kind = \"decoy-bb84\"\nlenght_km = 30.0\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("length_km"), "{e}");
        let e = parse("kind = \"decoy-bb84\"\nlength_km = 30.0\nblok_bits = 5\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("blok_bits"), "{e}");
        let spec = parse("kind = \"decoy-bb84\"\nlength_km = -3\n").unwrap();
        let e = spec.build().unwrap_err().to_string();
        assert!(e.contains("length_km") && e.contains("decoy-bb84"), "{e}");
        let spec =
            parse("kind = \"finite-key-bb84\"\nlength_km = 3\nhardware = { eta_bob = 1.5 }\n")
                .unwrap();
        assert!(spec.build().unwrap_err().to_string().contains("eta_bob"));
        let spec = parse(
            "kind = \"decoy-bb84\"\nlength_km = 3\nevents = [{ kind = \"intercept-resend\", at_s = 1, duration_s = 2, fraction = 2 }]\n",
        )
        .unwrap();
        let e = spec.build().unwrap_err().to_string();
        assert!(e.contains("events[0]") && e.contains("fraction"), "{e}");
    }

    #[test]
    fn eavesdropping_event_aborts_with_reason() {
        let spec = parse(
            "kind = \"finite-key-bb84\"\nlength_km = 20\nblock_bits = 1e5\nevents = [{ kind = \"intercept-resend\", at_s = 60, duration_s = 60, fraction = 0.8 }]\n",
        )
        .unwrap();
        let m = spec.build().unwrap();
        assert_eq!(m.status(30_000).state, LinkState::Up);
        match m.status(90_000).state {
            LinkState::Aborted { reason } => assert!(
                reason.contains("QBER") && reason.contains("eavesdropping"),
                "{reason}"
            ),
            s => panic!("{s:?}"),
        }
    }

    #[test]
    fn documented_variants_parse_and_build() {
        for text in [
            "kind = \"decoy-bb84\"\nlength_km = 20\ndecoy = { kind = \"vacuum-weak\", nu = 0.05 }\nmu = 0.5",
            "kind = \"decoy-bb84\"\nlength_km = 5\ndecoy = { kind = \"no-decoy\" }\np_z = 0.9",
            "kind = \"finite-key-bb84\"\nlength_km = 20\nec = { kind = \"ldpc\", f_crit = 1.22, frame_bits = 4096 }",
            "kind = \"one-decoy-bb84\"\nlength_km = 20\nec = { kind = \"cascade\", f = 1.1 }\neps_sec = 1e-10",
            "kind = \"cv-gg02\"\nlength_km = 20\nblock_symbols = 1e7",
            "kind = \"twin-field\"\nlength_km = 300\nauth = { tag_bits = 40, messages_per_block = 4 }",
            "kind = \"decoy-bb84\"\nlength_km = 20\nrandom_faults = { cuts_per_year_per_100km = 2, mean_repair_h = 6 }\nseed = 9",
            "kind = \"mdi-qkd\"\nlength_km = 100",
            "kind = \"bbm92\"\nlength_km = 50\nblock_bits = 1e5",
            "kind = \"sns-tf\"\nlength_km = 300\npulses = 1e12",
            "kind = \"cv-qkd\"\nlength_km = 20\ndetection = \"homodyne\"\nfinite = { symbols = 1e10, pe_fraction = 0.2 }",
            "kind = \"cv-qkd\"\nlength_km = 20",
        ] {
            let spec = parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            let m = spec.build().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(m.status(0).state, LinkState::Up, "{text}");
        }
    }

    #[test]
    fn slow_link_delivers_nothing_until_a_block_fills() {
        // GYS at 130 km sifts ~40 bit/s: a 10⁶-bit block takes hours.
        let spec = parse("kind = \"decoy-bb84\"\nlength_km = 130\nhardware = { preset = \"gys\" }\nblock_bits = 1e6").unwrap();
        let Built::Timeline(link) = spec.build_concrete().unwrap() else {
            panic!("not a timeline")
        };
        let plan = link.baseline().unwrap().clone();
        assert!(
            plan.block_s > 3.0 * 3600.0 && plan.block_s < 48.0 * 3600.0,
            "{}",
            plan.block_s
        );
        let first = (plan.block_s * 1000.0).ceil() as u64;
        assert_eq!(link.cumulative_secret_bits(first - 1000), 0);
        assert_eq!(link.status(first - 1000).state, LinkState::Up);
        assert_eq!(link.cumulative_secret_bits(first), plan.key_bits);
        assert!(plan.key_bits > 1000);
    }
}
