//! Eavesdropping and faults over time: fibre cuts, device outages, scheduled maintenance and
//! intercept-resend attacks, given explicitly or drawn at random (deterministically for a seed).
//!
//! Intercept-resend on a fraction f of the pulses (Eve measures in a random basis and resends):
//! half of the intercepted pulses are measured in the wrong basis and then give a random result
//! at Bob, so the error rate of the intercepted part rises by ¼. For DV protocols this model adds
//! f/4 to the misalignment error; for CV-QKD the attack adds 2f shot-noise units of excess noise
//! (an intercept-resend with heterodyne measurement adds 2 SNU, Grosshans & Grangier 2002).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::physics::channel::ParamError;

/// One scheduled event on a link. Times are seconds after the link (or scenario) start.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum EventSpec {
    /// The fibre is cut at `at_s` and repaired `repair_s` later.
    FibreCut {
        /// Start, s.
        at_s: f64,
        /// Time to repair, s.
        repair_s: f64,
    },
    /// A device at either end fails for `duration_s`.
    DeviceOutage {
        /// Start, s.
        at_s: f64,
        /// Duration, s.
        duration_s: f64,
    },
    /// Planned maintenance of `duration_s`, repeated `repeat` times every `every_s`.
    Maintenance {
        /// First start, s.
        at_s: f64,
        /// Duration of each window, s.
        duration_s: f64,
        /// Period between windows, s (needed when `repeat` > 1).
        #[serde(default)]
        every_s: Option<f64>,
        /// Number of windows (default 1).
        #[serde(default = "one")]
        repeat: u32,
    },
    /// Eve intercepts and resends a `fraction` of the pulses for `duration_s`.
    InterceptResend {
        /// Start, s.
        at_s: f64,
        /// Duration, s.
        duration_s: f64,
        /// Fraction of pulses intercepted, in (0, 1].
        fraction: f64,
    },
}

fn one() -> u32 {
    1
}

/// Random fibre cuts: a Poisson process per link with repair times drawn from an exponential law.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RandomFaults {
    /// Cuts per year per 100 km of fibre (terrestrial networks see ~1–4).
    pub cuts_per_year_per_100km: f64,
    /// Mean time to repair, hours.
    pub mean_repair_h: f64,
    /// Span over which cuts are drawn, s (the scenario sets it to its duration).
    #[serde(default = "default_horizon")]
    pub horizon_s: f64,
}

fn default_horizon() -> f64 {
    86_400.0 * 365.0
}

/// What an event does to the link while it lasts.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// No key at all, for the reason given.
    Down(&'static str),
    /// Eve intercepts this fraction of pulses.
    Eavesdrop(f64),
}

/// One event expanded into an interval, in milliseconds after the start.
#[derive(Debug, Clone, PartialEq)]
pub struct Interval {
    /// Start, ms.
    pub start_ms: u64,
    /// End, ms (exclusive).
    pub end_ms: u64,
    /// What happens.
    pub effect: Effect,
}

/// Reason strings, for operators.
pub const REASON_CUT: &str = "fibre cut";
/// Device outage.
pub const REASON_OUTAGE: &str = "device outage";
/// Planned maintenance.
pub const REASON_MAINTENANCE: &str = "scheduled maintenance";

fn ms(s: f64) -> u64 {
    (s * 1000.0).round().max(0.0) as u64
}

impl EventSpec {
    /// Checks times and fractions; errors name the field.
    pub fn validate(&self) -> Result<(), ParamError> {
        let check_time = |field: &'static str, v: f64| {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                Err(ParamError::new(
                    field,
                    v,
                    "a time must be a finite number of seconds ≥ 0",
                ))
            }
        };
        match *self {
            EventSpec::FibreCut { at_s, repair_s } => {
                check_time("at_s", at_s)?;
                check_time("repair_s", repair_s)
            }
            EventSpec::DeviceOutage { at_s, duration_s } => {
                check_time("at_s", at_s)?;
                check_time("duration_s", duration_s)
            }
            EventSpec::Maintenance {
                at_s,
                duration_s,
                every_s,
                repeat,
            } => {
                check_time("at_s", at_s)?;
                check_time("duration_s", duration_s)?;
                if repeat > 1 {
                    match every_s {
                        Some(e) if e.is_finite() && e > duration_s => Ok(()),
                        _ => Err(ParamError::new(
                            "every_s",
                            every_s.unwrap_or(f64::NAN),
                            "repeated maintenance needs every_s longer than duration_s",
                        )),
                    }
                } else {
                    Ok(())
                }
            }
            EventSpec::InterceptResend {
                at_s,
                duration_s,
                fraction,
            } => {
                check_time("at_s", at_s)?;
                check_time("duration_s", duration_s)?;
                if fraction > 0.0 && fraction <= 1.0 {
                    Ok(())
                } else {
                    Err(ParamError::new(
                        "fraction",
                        fraction,
                        "an intercepted fraction lies in (0, 1]",
                    ))
                }
            }
        }
    }

    /// The intervals this event stands for.
    pub fn intervals(&self) -> Vec<Interval> {
        let iv = |at: f64, dur: f64, effect| Interval {
            start_ms: ms(at),
            end_ms: ms(at + dur),
            effect,
        };
        match *self {
            EventSpec::FibreCut { at_s, repair_s } => {
                vec![iv(at_s, repair_s, Effect::Down(REASON_CUT))]
            }
            EventSpec::DeviceOutage { at_s, duration_s } => {
                vec![iv(at_s, duration_s, Effect::Down(REASON_OUTAGE))]
            }
            EventSpec::Maintenance {
                at_s,
                duration_s,
                every_s,
                repeat,
            } => (0..repeat.max(1))
                .map(|k| {
                    iv(
                        at_s + f64::from(k) * every_s.unwrap_or(0.0),
                        duration_s,
                        Effect::Down(REASON_MAINTENANCE),
                    )
                })
                .collect(),
            EventSpec::InterceptResend {
                at_s,
                duration_s,
                fraction,
            } => vec![iv(at_s, duration_s, Effect::Eavesdrop(fraction))],
        }
    }
}

impl RandomFaults {
    /// Checks the parameters.
    pub fn validate(&self) -> Result<(), ParamError> {
        if !(self.cuts_per_year_per_100km.is_finite() && self.cuts_per_year_per_100km >= 0.0) {
            return Err(ParamError::new(
                "cuts_per_year_per_100km",
                self.cuts_per_year_per_100km,
                "must be ≥ 0",
            ));
        }
        if !(self.mean_repair_h.is_finite() && self.mean_repair_h > 0.0) {
            return Err(ParamError::new(
                "mean_repair_h",
                self.mean_repair_h,
                "must be > 0",
            ));
        }
        if !(self.horizon_s.is_finite() && self.horizon_s > 0.0) {
            return Err(ParamError::new("horizon_s", self.horizon_s, "must be > 0"));
        }
        Ok(())
    }

    /// Cuts on `length_km` of fibre, drawn deterministically from `seed`.
    pub fn draw(&self, length_km: f64, seed: u64) -> Vec<Interval> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let per_s = self.cuts_per_year_per_100km * length_km / 100.0 / (365.25 * 86_400.0);
        let mut out = Vec::new();
        if per_s <= 0.0 {
            return out;
        }
        let mut t = 0.0;
        loop {
            t += -(1.0 - rng.random::<f64>()).ln() / per_s;
            if t >= self.horizon_s {
                return out;
            }
            let repair = -(1.0 - rng.random::<f64>()).ln() * self.mean_repair_h * 3600.0;
            out.push(Interval {
                start_ms: ms(t),
                end_ms: ms(t + repair),
                effect: Effect::Down(REASON_CUT),
            });
        }
    }
}

/// Extra DV error probability from intercept-resend on `fraction` of the pulses: f/4.
pub fn intercept_resend_error(fraction: f64) -> f64 {
    0.25 * fraction
}

/// Extra CV excess noise (SNU) from intercept-resend on `fraction` of the symbols: 2f.
pub fn intercept_resend_excess_noise(fraction: f64) -> f64 {
    2.0 * fraction
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maintenance_repeats_and_random_cuts_are_deterministic() {
        let m = EventSpec::Maintenance {
            at_s: 10.0,
            duration_s: 5.0,
            every_s: Some(100.0),
            repeat: 3,
        };
        m.validate().unwrap();
        let iv = m.intervals();
        assert_eq!(iv.len(), 3);
        assert_eq!((iv[2].start_ms, iv[2].end_ms), (210_000, 215_000));
        let bad = EventSpec::Maintenance {
            at_s: 10.0,
            duration_s: 5.0,
            every_s: None,
            repeat: 3,
        };
        assert_eq!(bad.validate().unwrap_err().field, "every_s");
        let rf = RandomFaults {
            cuts_per_year_per_100km: 200.0,
            mean_repair_h: 4.0,
            horizon_s: 365.0 * 86_400.0,
        };
        let a = rf.draw(100.0, 7);
        assert_eq!(a, rf.draw(100.0, 7));
        assert_ne!(a, rf.draw(100.0, 8));
        // ~200 cuts expected in a year on 100 km.
        assert!((150..250).contains(&a.len()), "{}", a.len());
    }
}
