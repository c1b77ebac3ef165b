//! Real orbits from two-line element sets (TLEs), propagated with SGP4 (the `sgp4` crate, a Rust
//! port of Vallado's reference implementation: Vallado, Crawford, Hujsak, Kelso, "Revisiting
//! Spacetrack Report #3", AIAA 2006-6753), beside the circular-orbit model of
//! [`crate::satellite`].
//!
//! SGP4 runs in its AFSPC compatibility mode (Vallado's `opsmode = 'a'`): the mode in which the
//! published element sets are fitted, and the one whose output the verification suite lists.
//! SGP4 gives positions in the TEME frame. They are turned into Earth-fixed coordinates by the
//! Greenwich mean sidereal time of IAU 1982 (Vallado's `gstime`; polar motion and UT1 − UTC,
//! under a second, are neglected: a few hundred metres at most). The ground station is placed on
//! the WGS-84 ellipsoid, and elevation and range come from the local east-north-up frame. Passes
//! and the link transmittance over them reuse the circular model's [`GroundStation`],
//! [`LinkBudget`] and [`Pass`], so a TLE satellite gives the same reports as a circular orbit,
//! including the key per pass of [`crate::passtrack`].
//!
//! TLEs age: SGP4 is accurate to about a kilometre at the epoch and degrades by a few km per day,
//! so use a set whose epoch is close to the simulated time.

use std::f64::consts::PI;
use std::path::Path;

use crate::passtrack::TrackSample;
use crate::satellite::{GroundStation, LinkBudget, Pass, finish_pass};

/// WGS-84 equatorial radius, km.
pub const WGS84_A_KM: f64 = 6378.137;
/// WGS-84 flattening.
pub const WGS84_F: f64 = 1.0 / 298.257_223_563;

/// One satellite from a TLE, ready to propagate.
#[derive(Debug, Clone)]
pub struct Tle {
    /// Object name (the title line of a three-line set), if any.
    pub name: Option<String>,
    /// NORAD catalogue number.
    pub norad_id: u64,
    /// Epoch of the elements, Unix time, s.
    pub epoch_unix_s: f64,
    /// Mean motion, revolutions per day.
    pub revs_per_day: f64,
    /// Inclination, degrees.
    pub inclination_deg: f64,
    constants: sgp4::Constants,
}

/// A TLE that cannot be used. The operator who supplied the file causes it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TleError {
    /// The file cannot be read.
    #[error("{file}: cannot read: {problem}")]
    Read {
        /// The file.
        file: String,
        /// Why.
        problem: String,
    },
    /// A set does not parse (bad checksum, length, field).
    #[error("{file}: line {line}: {problem}")]
    Parse {
        /// The file (or `<text>`).
        file: String,
        /// 1-based line of the set's first element line.
        line: usize,
        /// What the parser says.
        problem: String,
    },
    /// SGP4 cannot propagate this set to the time asked (decayed orbit, eccentricity out of
    /// range).
    #[error("SGP4 cannot propagate NORAD {norad_id} to {minutes:.1} min from its epoch: {problem}")]
    Propagate {
        /// The satellite.
        norad_id: u64,
        /// Minutes since the epoch.
        minutes: f64,
        /// What SGP4 says.
        problem: String,
    },
}

impl Tle {
    /// Parses two- or three-line sets (title lines optional, blank lines and `#` comments
    /// ignored). `file` names the source in errors.
    pub fn parse(text: &str, file: &str) -> Result<Vec<Tle>, TleError> {
        let lines: Vec<(usize, &str)> = text
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.trim_end()))
            .filter(|(_, l)| !l.trim().is_empty() && !l.starts_with('#'))
            .collect();
        let mut out = Vec::new();
        let mut i = 0;
        while i < lines.len() {
            let (n, l) = lines[i];
            let (name, first) = if l.starts_with("1 ") {
                (None, i)
            } else {
                (Some(l.trim_start_matches("0 ").trim().to_string()), i + 1)
            };
            let bad = |line: usize, problem: String| TleError::Parse {
                file: file.to_string(),
                line,
                problem,
            };
            let (Some(&(n1, l1)), Some(&(_, l2))) = (lines.get(first), lines.get(first + 1)) else {
                return Err(bad(n, "a TLE needs two element lines (1 … and 2 …)".into()));
            };
            let elements = sgp4::Elements::from_tle(name.clone(), l1.as_bytes(), l2.as_bytes())
                .map_err(|e| bad(n1, e.to_string()))?;
            let constants = sgp4::Constants::from_elements_afspc_compatibility_mode(&elements)
                .map_err(|e| bad(n1, e.to_string()))?;
            let epoch = elements.datetime.and_utc();
            out.push(Tle {
                name,
                norad_id: elements.norad_id,
                epoch_unix_s: epoch.timestamp() as f64
                    + f64::from(epoch.timestamp_subsec_nanos()) * 1e-9,
                revs_per_day: elements.mean_motion,
                inclination_deg: elements.inclination,
                constants,
            });
            i = first + 2;
        }
        if out.is_empty() {
            return Err(TleError::Parse {
                file: file.to_string(),
                line: 1,
                problem: "no TLE in the file".into(),
            });
        }
        Ok(out)
    }

    /// Reads a TLE file.
    pub fn load(path: &Path) -> Result<Vec<Tle>, TleError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| TleError::Read {
            file: file.clone(),
            problem: e.to_string(),
        })?;
        Self::parse(&text, &file)
    }

    /// Position (km) and velocity (km/s) in the TEME frame at `minutes` after the epoch.
    pub fn teme(&self, minutes: f64) -> Result<([f64; 3], [f64; 3]), TleError> {
        self.constants
            .propagate_afspc_compatibility_mode(sgp4::MinutesSinceEpoch(minutes))
            .map(|p| (p.position, p.velocity))
            .map_err(|e| TleError::Propagate {
                norad_id: self.norad_id,
                minutes,
                problem: e.to_string(),
            })
    }

    /// Earth-fixed position at a Unix time, km.
    pub fn ecef_km(&self, unix_s: f64) -> Result<[f64; 3], TleError> {
        let (r, _) = self.teme((unix_s - self.epoch_unix_s) / 60.0)?;
        Ok(teme_to_ecef(r, gmst_iau82_rad(unix_s)))
    }

    /// Elevation (rad) and slant range (km) from `station` at a Unix time.
    pub fn look(&self, station: &GroundStation, unix_s: f64) -> Result<(f64, f64), TleError> {
        let sat = self.ecef_km(unix_s)?;
        let (el, _, range) = look_angles(station.lat_deg, station.lon_deg, 0.0, sat);
        Ok((el, range))
    }

    /// Passes above the station's minimum elevation in `[start, start + horizon)` (Unix s),
    /// sampled every `step_s` and refined to 0.1 s at each crossing; times are seconds after
    /// `start_unix_s`. A pass is at night when the Sun stays below `max_sun_elevation_deg` at
    /// its start, middle and end.
    pub fn passes(
        &self,
        station: &GroundStation,
        start_unix_s: f64,
        horizon_s: f64,
        step_s: f64,
        max_sun_elevation_deg: f64,
    ) -> Result<Vec<Pass>, TleError> {
        let min_el = station.min_elevation_deg.to_radians();
        let above = |t: f64| -> Result<f64, TleError> {
            Ok(self.look(station, start_unix_s + t)?.0 - min_el)
        };
        let refine = |mut a: f64, mut b: f64| -> Result<f64, TleError> {
            // The elevation crosses the minimum between a and b: bisect to 0.1 s.
            let rising = above(a)? < 0.0;
            while b - a > 0.1 {
                let m = 0.5 * (a + b);
                if (above(m)? < 0.0) == rising {
                    a = m;
                } else {
                    b = m;
                }
            }
            Ok(0.5 * (a + b))
        };
        let mut out = Vec::new();
        let mut current: Option<(f64, f64)> = None;
        let mut prev_t = 0.0;
        let mut t = 0.0;
        let mut prev_up = above(0.0)? >= 0.0;
        if prev_up {
            current = Some((0.0, above(0.0)? + min_el));
        }
        while t < horizon_s {
            t = (t + step_s).min(horizon_s);
            let d = above(t)?;
            let up = d >= 0.0;
            match (&mut current, prev_up, up) {
                (None, false, true) => current = Some((refine(prev_t, t)?, d + min_el)),
                (Some((_, max)), _, true) => *max = max.max(d + min_el),
                (Some((start, max)), true, false) => {
                    let end = refine(prev_t, t)?;
                    out.push(finish_pass(
                        *start,
                        end,
                        *max,
                        station,
                        start_unix_s,
                        max_sun_elevation_deg,
                    ));
                    current = None;
                }
                _ => {}
            }
            prev_up = up;
            prev_t = t;
        }
        if let Some((start, max)) = current {
            out.push(finish_pass(
                start,
                horizon_s,
                max,
                station,
                start_unix_s,
                max_sun_elevation_deg,
            ));
        }
        Ok(out)
    }

    /// The channel transmittance over the usable passes, sampled every `step_s`: the input of
    /// [`crate::passtrack::evaluate_passes`]. Daylight passes are left out when `night_only`.
    #[allow(clippy::too_many_arguments)] // the pass search's arguments plus the budget
    pub fn track(
        &self,
        station: &GroundStation,
        budget: &LinkBudget,
        start_unix_s: f64,
        horizon_s: f64,
        step_s: f64,
        max_sun_elevation_deg: f64,
        night_only: bool,
    ) -> Result<Vec<TrackSample>, TleError> {
        let mut out = Vec::new();
        for p in self.passes(
            station,
            start_unix_s,
            horizon_s,
            step_s.max(1.0),
            max_sun_elevation_deg,
        )? {
            if night_only && !p.night {
                continue;
            }
            let mut t = p.start_s;
            while t < p.end_s {
                let (el, range) = self.look(station, start_unix_s + t)?;
                out.push(TrackSample {
                    t_s: t,
                    eta_channel: budget.channel(range, el.max(1e-3)),
                });
                t += step_s;
            }
            // The pass ends: a sample without link closes it.
            out.push(TrackSample {
                t_s: p.end_s.max(t - step_s + 1e-3),
                eta_channel: 0.0,
            });
        }
        Ok(out)
    }
}

/// Greenwich mean sidereal time of IAU 1982 at a Unix time (UT1 taken as UTC), rad: Vallado's
/// `gstime`, θ = 67310.54841 s + (876600 h + 8640184.812866 s)T + 0.093104 s T² − 6.2×10⁻⁶ s T³,
/// T in Julian centuries of UT1 from J2000.
pub fn gmst_iau82_rad(unix_s: f64) -> f64 {
    let jd = unix_s / 86_400.0 + 2_440_587.5;
    let t = (jd - 2_451_545.0) / 36_525.0;
    let secs = 67_310.548_41 + (876_600.0 * 3600.0 + 8_640_184.812_866) * t + 0.093_104 * t * t
        - 6.2e-6 * t * t * t;
    (secs * PI / 43_200.0).rem_euclid(2.0 * PI)
}

/// TEME position to Earth-fixed (rotation by the sidereal angle about z; polar motion neglected).
pub fn teme_to_ecef(r: [f64; 3], gmst_rad: f64) -> [f64; 3] {
    let (s, c) = gmst_rad.sin_cos();
    [c * r[0] + s * r[1], -s * r[0] + c * r[1], r[2]]
}

/// A point on the WGS-84 ellipsoid (geodetic latitude and longitude in degrees, height in km) in
/// Earth-fixed coordinates, km.
pub fn geodetic_to_ecef(lat_deg: f64, lon_deg: f64, height_km: f64) -> [f64; 3] {
    let (lat, lon) = (lat_deg.to_radians(), lon_deg.to_radians());
    let e2 = WGS84_F * (2.0 - WGS84_F);
    let n = WGS84_A_KM / (1.0 - e2 * lat.sin().powi(2)).sqrt();
    [
        (n + height_km) * lat.cos() * lon.cos(),
        (n + height_km) * lat.cos() * lon.sin(),
        (n * (1.0 - e2) + height_km) * lat.sin(),
    ]
}

/// Elevation (rad), azimuth (rad, from north through east) and range (km) of an Earth-fixed
/// point seen from a geodetic station.
pub fn look_angles(
    lat_deg: f64,
    lon_deg: f64,
    height_km: f64,
    sat_ecef: [f64; 3],
) -> (f64, f64, f64) {
    let st = geodetic_to_ecef(lat_deg, lon_deg, height_km);
    let d = [
        sat_ecef[0] - st[0],
        sat_ecef[1] - st[1],
        sat_ecef[2] - st[2],
    ];
    let (lat, lon) = (lat_deg.to_radians(), lon_deg.to_radians());
    let east = [-lon.sin(), lon.cos(), 0.0];
    let north = [-lat.sin() * lon.cos(), -lat.sin() * lon.sin(), lat.cos()];
    let up = [lat.cos() * lon.cos(), lat.cos() * lon.sin(), lat.sin()];
    let dot = |a: [f64; 3], b: [f64; 3]| a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
    let range = dot(d, d).sqrt();
    let (e, n, u) = (dot(d, east), dot(d, north), dot(d, up));
    (
        (u / range).clamp(-1.0, 1.0).asin(),
        e.atan2(n).rem_euclid(2.0 * PI),
        range,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gmst_matches_vallado_example_3_5() {
        // Vallado, Fundamentals of Astrodynamics and Applications, Example 3-5: 1992 August 20,
        // 12:14:00 UT1 → θ_GMST = 152.578 787 810°.
        let unix = 714_312_840.0; // 1992-08-20T12:14:00Z
        let deg = gmst_iau82_rad(unix).to_degrees();
        assert!((deg - 152.578_787_810).abs() < 1e-6, "{deg}");
    }

    #[test]
    fn look_angles_overhead_and_on_the_horizon() {
        // A point 500 km straight up: elevation 90°, range 500 km.
        let st = geodetic_to_ecef(45.0, 10.0, 0.0);
        let up = geodetic_to_ecef(45.0, 10.0, 500.0);
        let (el, _, range) = look_angles(45.0, 10.0, 0.0, up);
        assert!((el.to_degrees() - 90.0).abs() < 1e-6 && (range - 500.0).abs() < 1e-6);
        // Due north along the local horizontal: elevation 0, azimuth 0.
        let north = [
            -45f64.to_radians().sin() * 10f64.to_radians().cos(),
            -45f64.to_radians().sin() * 10f64.to_radians().sin(),
            45f64.to_radians().cos(),
        ];
        let p = [
            st[0] + 100.0 * north[0],
            st[1] + 100.0 * north[1],
            st[2] + 100.0 * north[2],
        ];
        let (el, az, range) = look_angles(45.0, 10.0, 0.0, p);
        assert!(el.abs() < 1e-9 && az.sin().abs() < 1e-9 && az.cos() > 0.0);
        assert!((range - 100.0).abs() < 1e-9);
        // WGS-84: the polar radius is 6356.752 km.
        assert!((geodetic_to_ecef(90.0, 0.0, 0.0)[2] - 6_356.752_314).abs() < 1e-5);
    }
}
