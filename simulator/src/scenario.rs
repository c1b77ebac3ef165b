//! Scenario files: nodes with coordinates, links with their models, events over time, node pairs
//! of interest. TOML or JSON (by extension). [`Scenario::load`] parses and checks a file;
//! every error names the file, the field (as a path such as `links[12].model.length_km`) and what
//! is wrong.
//!
//! ```toml
//! [scenario]
//! name = "metro"
//! start_utc = "2026-06-21T00:00:00Z"
//! duration_s = 86400
//! step_s = 1
//! seed = 7
//!
//! [[nodes]]
//! id = "alice"
//! lat = 48.85
//! lon = 2.35
//!
//! [[nodes]]
//! id = "bob"
//! lat = 48.71
//! lon = 2.21
//!
//! [[links]]
//! a = "alice"
//! b = "bob"
//! model = { kind = "finite-key-bb84", length_km = 25.0 }
//!
//! [[events]]
//! link = "alice-bob"
//! kind = "fibre-cut"
//! at_s = 3600
//! repair_s = 7200
//! ```
//!
//! A link between a `satellite` node (with an `orbit`) and a `ground-station` node needs no
//! model: it becomes a `satellite-downlink` with the orbit, the station's coordinates and the
//! scenario's start time. Two ground stations served by the same trusted satellite are connected
//! through it, which is the XOR relay (simulator/docs/models.md §5.5).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::faults::{EventSpec, RandomFaults};
use crate::satellite::{EARTH_RADIUS_KM, GroundStation, Orbit};
use crate::spec::{Built, LinkModelSpec, LinkOps, SatelliteSpec, SpecError};

/// A parsed scenario file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Run settings.
    pub scenario: RunSpec,
    /// Random fibre cuts applied to every fibre link that has none of its own.
    #[serde(default)]
    pub faults: Option<RandomFaults>,
    /// Nodes.
    pub nodes: Vec<NodeSpec>,
    /// Links.
    pub links: Vec<LinkEntry>,
    /// Events on links.
    #[serde(default)]
    pub events: Vec<ScenarioEvent>,
    /// Node pairs whose end-to-end key availability is reported.
    #[serde(default)]
    pub pairs: Vec<PairSpec>,
}

/// `[scenario]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    /// Name, for reports.
    pub name: String,
    /// What the scenario shows.
    #[serde(default)]
    pub description: String,
    /// Start of the simulated span, UTC, as `YYYY-MM-DDTHH:MM:SSZ`.
    pub start_utc: String,
    /// Simulated span, s.
    pub duration_s: u64,
    /// Time step, s (default 1).
    #[serde(default = "one_s")]
    pub step_s: u64,
    /// Seed for everything random (faults, cloud cover).
    #[serde(default)]
    pub seed: u64,
}

fn one_s() -> u64 {
    1
}

/// What a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeKind {
    /// A trusted node of a fibre backbone (also the end points).
    Trusted,
    /// An optical ground station.
    GroundStation,
    /// A trusted satellite.
    Satellite,
}

/// `[[nodes]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// Unique identifier.
    pub id: String,
    /// Latitude, degrees north (ignored for satellites).
    #[serde(default)]
    pub lat: f64,
    /// Longitude, degrees east (ignored for satellites).
    #[serde(default)]
    pub lon: f64,
    /// Kind (default trusted).
    #[serde(default = "trusted")]
    pub kind: NodeKind,
    /// Country code, for reports.
    #[serde(default)]
    pub country: String,
    /// Orbit of a satellite node (circular model).
    #[serde(default)]
    pub orbit: Option<Orbit>,
    /// Real orbit of a satellite node: the two element lines of a TLE, propagated with SGP4
    /// (feature `tle`). Without `orbit`, the circular orbit of the TLE's mean motion and
    /// inclination stands in where a single altitude is needed.
    #[serde(default)]
    pub tle: Option<Vec<String>>,
    /// Lowest usable elevation of a ground station, degrees (default 15).
    #[serde(default)]
    pub min_elevation_deg: Option<f64>,
    /// Probability that a pass over a ground station is cloud-free (default 0.6).
    #[serde(default)]
    pub clear_sky_prob: Option<f64>,
}

fn trusted() -> NodeKind {
    NodeKind::Trusted
}

/// `[[links]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkEntry {
    /// Identifier (default `a-b`).
    #[serde(default)]
    pub id: Option<String>,
    /// One end.
    pub a: String,
    /// The other end.
    pub b: String,
    /// The model (optional for satellite links).
    #[serde(default)]
    pub model: Option<LinkModelSpec>,
}

/// `[[events]]`: an event on one link.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScenarioEvent {
    /// The link.
    pub link: String,
    /// The event.
    #[serde(flatten)]
    pub event: EventSpec,
}

/// `[[pairs]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairSpec {
    /// One end.
    pub a: String,
    /// The other end.
    pub b: String,
}

/// An invalid scenario: the file, the field and what is wrong. Caused by whoever wrote the file.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file cannot be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The file.
        file: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML/JSON or does not match the format (unknown or missing field,
    /// wrong type); the parser's message gives the position.
    #[error("{file}: {message}")]
    Syntax {
        /// The file.
        file: PathBuf,
        /// Parser message.
        message: String,
    },
    /// A field has a value that makes no sense.
    #[error("{file}: {field}: {problem}")]
    Invalid {
        /// The file.
        file: PathBuf,
        /// Path of the field, e.g. `links[3].model.length_km`.
        field: String,
        /// What is wrong.
        problem: String,
    },
}

/// A link ready to simulate.
#[derive(Debug)]
pub struct BuiltLink {
    /// Identifier.
    pub id: String,
    /// Index of one end in the scenario's nodes.
    pub a: usize,
    /// Index of the other end.
    pub b: usize,
    /// Protocol kind (`kind` tag of the model).
    pub kind: &'static str,
    /// Fibre length, km (None for satellite links).
    pub length_km: Option<f64>,
    /// The model.
    pub model: Built,
}

impl Scenario {
    /// Reads, parses and checks a TOML (`.toml`) or JSON (`.json`) scenario file.
    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            file: path.to_path_buf(),
            source,
        })?;
        let is_json = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"));
        let sc = Self::parse(&text, is_json).map_err(|message| ScenarioError::Syntax {
            file: path.to_path_buf(),
            message,
        })?;
        sc.check()
            .map_err(|(field, problem)| ScenarioError::Invalid {
                file: path.to_path_buf(),
                field,
                problem,
            })?;
        Ok(sc)
    }

    /// Parses text (no checks beyond the format).
    pub fn parse(text: &str, json: bool) -> Result<Self, String> {
        if json {
            serde_json::from_str(text).map_err(|e| e.to_string())
        } else {
            toml::from_str(text).map_err(|e| e.to_string())
        }
    }

    /// Start of the run as a Unix time, s.
    pub fn start_unix_s(&self) -> Result<i64, String> {
        parse_utc(&self.scenario.start_utc)
    }

    /// Checks everything but the link physics; returns (field path, problem).
    pub fn check(&self) -> Result<(), (String, String)> {
        let bad = |f: &str, p: String| Err((f.to_string(), p));
        let run = &self.scenario;
        if let Err(e) = self.start_unix_s() {
            return bad("scenario.start_utc", e);
        }
        if run.step_s == 0 {
            return bad("scenario.step_s", "must be at least 1 s".into());
        }
        if run.duration_s < run.step_s || run.duration_s > 366 * 86_400 {
            return bad(
                "scenario.duration_s",
                format!("{} s: must lie between step_s and one year", run.duration_s),
            );
        }
        let mut ids = HashSet::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let f = |x: &str| format!("nodes[{i}].{x}");
            if n.id.is_empty() || !ids.insert(n.id.as_str()) {
                return bad(&f("id"), format!("`{}` is empty or used twice", n.id));
            }
            if !(-90.0..=90.0).contains(&n.lat) {
                return bad(
                    &f("lat"),
                    format!("{}: a latitude lies in [−90, 90]", n.lat),
                );
            }
            if !(-180.0..=180.0).contains(&n.lon) {
                return bad(
                    &f("lon"),
                    format!("{}: a longitude lies in [−180, 180]", n.lon),
                );
            }
            if let Some(lines) = &n.tle {
                if n.kind != NodeKind::Satellite {
                    return bad(&f("tle"), "only satellite nodes have an orbit".into());
                }
                if let Err(p) = tle_orbit(lines) {
                    return bad(&f("tle"), p);
                }
            }
            match (n.kind, &n.orbit) {
                (NodeKind::Satellite, None) if n.tle.is_some() => {}
                (NodeKind::Satellite, None) => {
                    return bad(
                        &f("orbit"),
                        "a satellite node needs an orbit (or a tle)".into(),
                    );
                }
                (NodeKind::Satellite, Some(o)) => {
                    if let Err(e) = o.validate() {
                        return bad(
                            &f(&format!("orbit.{}", e.field)),
                            format!("{}: {}", e.value, e.problem),
                        );
                    }
                }
                (_, Some(_)) => {
                    return bad(&f("orbit"), "only satellite nodes have an orbit".into());
                }
                _ => {}
            }
        }
        let index: HashMap<&str, &NodeSpec> =
            self.nodes.iter().map(|n| (n.id.as_str(), n)).collect();
        let mut link_ids = HashSet::new();
        for (i, l) in self.links.iter().enumerate() {
            let f = |x: &str| format!("links[{i}].{x}");
            let (Some(a), Some(b)) = (index.get(l.a.as_str()), index.get(l.b.as_str())) else {
                let which = if index.contains_key(l.a.as_str()) {
                    ("b", &l.b)
                } else {
                    ("a", &l.a)
                };
                return bad(&f(which.0), format!("no node `{}`", which.1));
            };
            if l.a == l.b {
                return bad(&f("b"), "a link joins two different nodes".into());
            }
            let id = self.link_id(i);
            if !link_ids.insert(id.clone()) {
                return bad(&f("id"), format!("`{id}` is used twice"));
            }
            let sat = a.kind == NodeKind::Satellite || b.kind == NodeKind::Satellite;
            match (&l.model, sat) {
                (None, false) => return bad(&f("model"), "a fibre link needs a model".into()),
                (Some(m), true) if !matches!(m, LinkModelSpec::SatelliteDownlink(_)) => {
                    return bad(
                        &f("model.kind"),
                        format!("`{}` cannot serve a satellite link", m.kind()),
                    );
                }
                (_, true) => {
                    let ground = if a.kind == NodeKind::Satellite { b } else { a };
                    if ground.kind != NodeKind::GroundStation {
                        return bad(
                            &f("a"),
                            format!(
                                "a satellite links to a ground station, not to `{}`",
                                ground.id
                            ),
                        );
                    }
                }
                _ => {}
            }
            if let Some(len) = l.model.as_ref().and_then(|m| m.length_km()) {
                let gc = great_circle_km(a.lat, a.lon, b.lat, b.lon);
                if len < 0.9 * gc {
                    return bad(
                        &f("model.length_km"),
                        format!(
                            "{len} km is shorter than the {gc:.1} km great-circle distance between `{}` and `{}`",
                            a.id, b.id
                        ),
                    );
                }
            }
        }
        for (i, e) in self.events.iter().enumerate() {
            if !link_ids.contains(&e.link) {
                return bad(
                    &format!("events[{i}].link"),
                    format!("no link `{}`", e.link),
                );
            }
            if let Err(p) = e.event.validate() {
                return bad(
                    &format!("events[{i}].{}", p.field),
                    format!("{}: {}", p.value, p.problem),
                );
            }
        }
        for (i, p) in self.pairs.iter().enumerate() {
            for (name, id) in [("a", &p.a), ("b", &p.b)] {
                if !index.contains_key(id.as_str()) {
                    return bad(&format!("pairs[{i}].{name}"), format!("no node `{id}`"));
                }
            }
        }
        if let Some(rf) = &self.faults
            && let Err(p) = rf.validate()
        {
            return bad(
                &format!("faults.{}", p.field),
                format!("{}: {}", p.value, p.problem),
            );
        }
        Ok(())
    }

    /// Identifier of link `i`.
    pub fn link_id(&self, i: usize) -> String {
        let l = &self.links[i];
        l.id.clone().unwrap_or_else(|| format!("{}-{}", l.a, l.b))
    }

    /// The effective model spec of link `i`: scenario events, faults and seed merged in,
    /// satellite links completed from their nodes.
    pub fn link_spec(&self, i: usize) -> Result<LinkModelSpec, String> {
        let l = &self.links[i];
        let id = self.link_id(i);
        let node = |id: &str| self.nodes.iter().find(|n| n.id == id);
        let (Some(a), Some(b)) = (node(&l.a), node(&l.b)) else {
            return Err("link end not found".into());
        };
        let start = self.start_unix_s()? as f64;
        let mut spec = match &l.model {
            Some(m) => m.clone(),
            None => {
                let (sat, gs) = if a.kind == NodeKind::Satellite {
                    (a, b)
                } else {
                    (b, a)
                };
                let orbit = match (sat.orbit, &sat.tle) {
                    (Some(o), _) => o,
                    (None, Some(lines)) => tle_orbit(lines)?,
                    (None, None) => return Err("satellite without orbit".into()),
                };
                LinkModelSpec::SatelliteDownlink(SatelliteSpec {
                    orbit,
                    tle: sat.tle.clone(),
                    station: GroundStation {
                        lat_deg: gs.lat,
                        lon_deg: gs.lon,
                        min_elevation_deg: gs.min_elevation_deg.unwrap_or(15.0),
                        clear_sky_prob: gs.clear_sky_prob.unwrap_or(0.6),
                    },
                    budget: None,
                    hardware: Default::default(),
                    start_unix_s: start,
                    horizon_s: self.scenario.duration_s as f64,
                    night_only: true,
                    max_sun_elevation_deg: -12.0,
                    day_background_prob: 5e-5,
                    ops: LinkOps::default(),
                })
            }
        };
        if let LinkModelSpec::SatelliteDownlink(s) = &mut spec {
            s.start_unix_s = start;
            s.horizon_s = self.scenario.duration_s as f64;
        }
        let seed = mix(self.scenario.seed, &id);
        let is_fibre = spec.length_km().is_some();
        let events: Vec<EventSpec> = self
            .events
            .iter()
            .filter(|e| e.link == id)
            .map(|e| e.event)
            .collect();
        match spec.ops_mut() {
            Some(ops) => {
                ops.seed ^= seed;
                ops.events.extend(events);
                if is_fibre && ops.random_faults.is_none() {
                    ops.random_faults = self.faults;
                }
                if let Some(rf) = &mut ops.random_faults {
                    rf.horizon_s = self.scenario.duration_s as f64;
                }
            }
            None => {
                if let LinkModelSpec::ConstantRate(c) = &mut spec {
                    c.events.extend(events);
                }
            }
        }
        Ok(spec)
    }

    /// Builds every link (evaluating its physics). `progress` is called after each link.
    pub fn build_links(
        &self,
        file: &Path,
        progress: &(dyn Fn(usize) + Sync),
    ) -> Result<Vec<BuiltLink>, ScenarioError> {
        let index: HashMap<&str, usize> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.id.as_str(), i))
            .collect();
        let invalid = |i: usize, problem: String| ScenarioError::Invalid {
            file: file.to_path_buf(),
            field: format!("links[{i}] (`{}`).model", self.link_id(i)),
            problem,
        };
        let build_one = |i: usize| -> Result<BuiltLink, ScenarioError> {
            let spec = self.link_spec(i).map_err(|p| invalid(i, p))?;
            let model = spec.build_concrete().map_err(|e| {
                let (field, source) = match &e {
                    SpecError::Param { source, .. } => {
                        (format!("links[{i}].model.{}", source.field), source)
                    }
                    SpecError::Event { index, source, .. } => (
                        format!("links[{i}].model.events[{index}].{}", source.field),
                        source,
                    ),
                };
                ScenarioError::Invalid {
                    file: file.to_path_buf(),
                    field,
                    problem: format!(
                        "{}: {} ({} link `{}`)",
                        source.value,
                        source.problem,
                        spec.kind(),
                        self.link_id(i)
                    ),
                }
            })?;
            let l = &self.links[i];
            progress(i);
            Ok(BuiltLink {
                id: self.link_id(i),
                a: index.get(l.a.as_str()).copied().unwrap_or(0),
                b: index.get(l.b.as_str()).copied().unwrap_or(0),
                kind: spec.kind(),
                length_km: spec.length_km(),
                model,
            })
        };
        // Building (finite-key optimisation, pass computation) dominates set-up: split it over
        // the available cores. The result order is the scenario order whatever the split.
        let n = self.links.len();
        let threads = std::thread::available_parallelism()
            .map_or(1, |p| p.get())
            .min(n.max(1));
        let chunk = n.div_ceil(threads.max(1)).max(1);
        let results: Vec<Result<BuiltLink, ScenarioError>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..n)
                .step_by(chunk)
                .map(|start| {
                    s.spawn(move || {
                        (start..(start + chunk).min(n))
                            .map(build_one)
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            // A panicking builder is a bug: pass its panic on.
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        });
        results.into_iter().collect()
    }
}

/// The circular orbit standing in for a TLE where one altitude is needed: the altitude of the
/// mean motion's semi-major axis and the TLE's inclination. Checks the TLE.
fn tle_orbit(lines: &[String]) -> Result<Orbit, String> {
    #[cfg(feature = "tle")]
    {
        let t = crate::spec::parse_tle(lines).map_err(|e| e.problem.to_string())?;
        let n = t.revs_per_day * 2.0 * std::f64::consts::PI / 86_400.0;
        let a = (crate::satellite::MU_EARTH / (n * n)).cbrt();
        let orbit = Orbit {
            altitude_km: a - EARTH_RADIUS_KM,
            inclination_deg: t.inclination_deg,
            raan_deg: 0.0,
            phase_deg: 0.0,
        };
        orbit
            .validate()
            .map_err(|e| format!("the TLE's orbit: {}: {}", e.field, e.problem))?;
        Ok(orbit)
    }
    #[cfg(not(feature = "tle"))]
    {
        let _ = lines;
        Err("TLE orbits need the `tle` feature of qkd-simulator".into())
    }
}

/// Great-circle distance on the spherical Earth, km (haversine).
pub fn great_circle_km(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = p2 - p1;
    let dl = (lon2 - lon1).to_radians();
    let h = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * h.sqrt().min(1.0).asin()
}

/// A per-link seed from the scenario seed and the link id (FNV-1a over the id).
fn mix(seed: u64, id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for b in id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Parses `YYYY-MM-DDTHH:MM:SSZ` into Unix seconds.
pub fn parse_utc(s: &str) -> Result<i64, String> {
    let err = || format!("`{s}` is not a UTC time written YYYY-MM-DDTHH:MM:SSZ");
    let b = s.as_bytes();
    if b.len() != 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b'Z'
    {
        return Err(err());
    }
    let num =
        |r: std::ops::Range<usize>| s.get(r).and_then(|x| x.parse::<i64>().ok()).ok_or_else(err);
    let (y, m, d, hh, mm, ss) = (
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
    );
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return Err(err());
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Ok(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_and_distance() {
        assert_eq!(parse_utc("1970-01-01T00:00:00Z").unwrap(), 0);
        assert_eq!(parse_utc("2026-06-21T12:00:00Z").unwrap(), 1_782_043_200);
        assert!(parse_utc("2026-13-21T12:00:00Z").is_err());
        // Paris–Berlin ≈ 878 km.
        assert!((great_circle_km(48.8566, 2.3522, 52.52, 13.405) - 878.0).abs() < 5.0);
    }

    #[test]
    fn errors_name_field_and_problem() {
        let base = r#"
[scenario]
name = "t"
start_utc = "2026-06-21T00:00:00Z"
duration_s = 100
[[nodes]]
id = "a"
lat = 48.85
lon = 2.35
[[nodes]]
id = "b"
lat = 48.71
lon = 2.21
[[links]]
a = "a"
b = "b"
model = { kind = "decoy-bb84", length_km = LEN }
"#;
        let sc = Scenario::parse(&base.replace("LEN", "25.0"), false).unwrap();
        sc.check().unwrap();
        let sc = Scenario::parse(&base.replace("LEN", "2.0"), false).unwrap();
        let (field, problem) = sc.check().unwrap_err();
        assert_eq!(field, "links[0].model.length_km");
        assert!(problem.contains("great-circle"), "{problem}");
        let sc = Scenario::parse(
            &base
                .replace("LEN", "25.0")
                .replace("b = \"b\"", "b = \"c\""),
            false,
        )
        .unwrap();
        assert_eq!(sc.check().unwrap_err().0, "links[0].b");
    }
}
