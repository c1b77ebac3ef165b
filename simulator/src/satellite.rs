//! Satellite QKD downlinks: circular-orbit pass geometry, a link budget, night-only operation,
//! finite-key per pass, and the trusted-satellite XOR relay.
//!
//! Geometry (simulator/docs/models.md §5.1): spherical Earth of radius R_E = 6371 km, μ_E = 398600.44
//! km³/s², circular orbit of radius r = R_E + h, period T = 2π√(r³/μ_E). Slant range at elevation
//! ε: d(ε) = √(r² − R_E² cos²ε) − R_E sin ε. The propagator rotates the orbit plane (inclination,
//! right ascension of the ascending node) and the Earth under it (sidereal rate), which is enough
//! for pass statistics; SGP4 with TLEs would be needed to predict a real satellite.
//!
//! Link budget (§7.2): η = η_T · η_geo(d) · η_atm(ε) · η_point · η_R · η_extra · η_det with a Gaussian
//! beam (w(d) = w₀√(1 + (d/z_R)²), z_R = πw₀²/λ, η_geo = 1 − exp(−2a²/w²)), the Kasten–Young air
//! mass for the atmosphere, and a static pointing error exp(−2θ_e²/θ_half²).
//!
//! Passes are used only at night by default (Sun below −12°, the Micius practice, §7.4), and each
//! pass is one finite-key block (Lim 2014), since a pass gives at most ~10⁷ sifted bits.

use std::f64::consts::PI;

use qkd_types::Secret;
use serde::{Deserialize, Serialize};

use crate::physics::channel::{ParamError, positive, probability_open};

/// Mean Earth radius used throughout, km.
pub const EARTH_RADIUS_KM: f64 = 6371.0;
/// Standard gravitational parameter of the Earth, km³/s².
pub const MU_EARTH: f64 = 398_600.44;
/// Sidereal rotation rate of the Earth, rad/s.
pub const EARTH_RATE: f64 = 7.292_115e-5;

/// Orbital period of a circular orbit at altitude `h_km`, seconds.
pub fn orbit_period_s(h_km: f64) -> f64 {
    let r = EARTH_RADIUS_KM + h_km;
    2.0 * PI * (r * r * r / MU_EARTH).sqrt()
}

/// Slant range at elevation `elev_rad` for altitude `h_km`, km (closed form).
pub fn slant_range_km(h_km: f64, elev_rad: f64) -> f64 {
    let r = EARTH_RADIUS_KM + h_km;
    let re = EARTH_RADIUS_KM;
    (r * r - re * re * elev_rad.cos().powi(2)).sqrt() - re * elev_rad.sin()
}

/// Time spent above `min_elev_rad` during an overhead pass, Earth rotation ignored, seconds:
/// 2·[arccos(R_E cos ε_min / r) − ε_min]/(2π) × T.
pub fn overhead_pass_duration_s(h_km: f64, min_elev_rad: f64) -> f64 {
    let r = EARTH_RADIUS_KM + h_km;
    let half_angle = (EARTH_RADIUS_KM * min_elev_rad.cos() / r).acos() - min_elev_rad;
    2.0 * half_angle / (2.0 * PI) * orbit_period_s(h_km)
}

/// A circular orbit.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Orbit {
    /// Altitude above the mean Earth radius, km.
    pub altitude_km: f64,
    /// Inclination, degrees (97.4 ≈ sun-synchronous at 500 km).
    pub inclination_deg: f64,
    /// Right ascension of the ascending node at the epoch, degrees.
    #[serde(default)]
    pub raan_deg: f64,
    /// Argument of latitude at the epoch, degrees.
    #[serde(default)]
    pub phase_deg: f64,
}

impl Orbit {
    /// Checks the parameters.
    pub fn validate(&self) -> Result<(), ParamError> {
        if !(150.0..=40_000.0).contains(&self.altitude_km) {
            return Err(ParamError::new(
                "altitude_km",
                self.altitude_km,
                "a circular orbit lies between 150 and 40000 km",
            ));
        }
        if !(0.0..=180.0).contains(&self.inclination_deg) {
            return Err(ParamError::new(
                "inclination_deg",
                self.inclination_deg,
                "must lie in [0, 180]",
            ));
        }
        Ok(())
    }

    /// Position in an Earth-centred inertial frame `t_s` seconds after the epoch, km.
    pub fn eci(&self, t_s: f64) -> [f64; 3] {
        let r = EARTH_RADIUS_KM + self.altitude_km;
        let n = 2.0 * PI / orbit_period_s(self.altitude_km);
        let u = self.phase_deg.to_radians() + n * t_s;
        let (i, o) = (
            self.inclination_deg.to_radians(),
            self.raan_deg.to_radians(),
        );
        [
            r * (u.cos() * o.cos() - u.sin() * i.cos() * o.sin()),
            r * (u.cos() * o.sin() + u.sin() * i.cos() * o.cos()),
            r * u.sin() * i.sin(),
        ]
    }
}

/// A ground station.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroundStation {
    /// Latitude, degrees north.
    pub lat_deg: f64,
    /// Longitude, degrees east.
    pub lon_deg: f64,
    /// Lowest usable elevation, degrees (Micius: 10–15).
    #[serde(default = "default_min_elev")]
    pub min_elevation_deg: f64,
    /// Probability that a pass is not blocked by clouds (site statistics).
    #[serde(default = "default_clear_sky")]
    pub clear_sky_prob: f64,
}

fn default_min_elev() -> f64 {
    15.0
}
fn default_clear_sky() -> f64 {
    0.6
}

/// Elevation (rad) and slant range (km) of the satellite seen from `station`, `t_s` seconds after
/// an epoch at which the Greenwich meridian had angle `gmst0_rad` in the inertial frame.
/// `earth_rotates` = false freezes the Earth (for the closed-form overhead-pass checks).
pub fn look(
    orbit: &Orbit,
    station: &GroundStation,
    t_s: f64,
    gmst0_rad: f64,
    earth_rotates: bool,
) -> (f64, f64) {
    let sat = orbit.eci(t_s);
    let theta = gmst0_rad + if earth_rotates { EARTH_RATE * t_s } else { 0.0 };
    let (lat, lon) = (
        station.lat_deg.to_radians(),
        station.lon_deg.to_radians() + theta,
    );
    let up = [lat.cos() * lon.cos(), lat.cos() * lon.sin(), lat.sin()];
    let st = up.map(|c| c * EARTH_RADIUS_KM);
    let d = [sat[0] - st[0], sat[1] - st[1], sat[2] - st[2]];
    let range = (d[0] * d[0] + d[1] * d[1] + d[2] * d[2]).sqrt();
    let sin_el = (d[0] * up[0] + d[1] * up[1] + d[2] * up[2]) / range;
    (sin_el.clamp(-1.0, 1.0).asin(), range)
}

/// Greenwich mean sidereal angle at a Unix time, rad (IAU 1982 linear term; good to ~0.1°).
pub fn gmst_rad(unix_s: f64) -> f64 {
    let d = (unix_s - 946_728_000.0) / 86_400.0; // days since J2000.0
    (280.460_618_37 + 360.985_647_366_29 * d)
        .rem_euclid(360.0)
        .to_radians()
}

/// Elevation of the Sun at a place and Unix time, degrees (low-precision solar position, good to
/// ~1°: enough to tell night from day).
pub fn sun_elevation_deg(lat_deg: f64, lon_deg: f64, unix_s: f64) -> f64 {
    let d = (unix_s - 946_728_000.0) / 86_400.0;
    let g = (357.529 + 0.985_600_28 * d).to_radians();
    let q = 280.459 + 0.985_647_36 * d;
    let l = (q + 1.915 * g.sin() + 0.020 * (2.0 * g).sin()).to_radians();
    let e = (23.439 - 0.000_000_36 * d).to_radians();
    let ra = (e.cos() * l.sin()).atan2(l.cos());
    let dec = (e.sin() * l.sin()).asin();
    let ha = gmst_rad(unix_s) + lon_deg.to_radians() - ra;
    let lat = lat_deg.to_radians();
    (lat.sin() * dec.sin() + lat.cos() * dec.cos() * ha.cos())
        .asin()
        .to_degrees()
}

/// Optical downlink budget.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkBudget {
    /// Wavelength, nm.
    pub wavelength_nm: f64,
    /// Beam waist at the transmitter, m (θ_half = λ/(π w₀)).
    pub tx_waist_m: f64,
    /// Receiver telescope radius a, m.
    pub rx_radius_m: f64,
    /// Clear-sky zenith transmittance of the atmosphere.
    pub zenith_transmittance: f64,
    /// Static pointing error, µrad.
    pub pointing_error_urad: f64,
    /// Transmitter optics transmittance η_T.
    pub tx_optics: f64,
    /// Receiver optics transmittance η_R.
    pub rx_optics: f64,
    /// Further losses (turbulence, coupling), dB.
    pub extra_loss_db: f64,
    /// Detector efficiency.
    pub eta_det: f64,
}

impl LinkBudget {
    /// Micius-like: 850 nm, θ_half ≈ 10 µrad, 1 m receiver, zenith transmittance 0.8, 2 µrad
    /// pointing, optics 0.8/0.5, 5 dB turbulence and coupling, detector 50 %. Gives ~30 dB at
    /// 645 km and ~37 dB at 1200 km without the detector (Micius measured 29.8 and 40.3 dB).
    pub const MICIUS_LIKE: LinkBudget = LinkBudget {
        wavelength_nm: 850.0,
        tx_waist_m: 0.027,
        rx_radius_m: 0.5,
        zenith_transmittance: 0.8,
        pointing_error_urad: 2.0,
        tx_optics: 0.8,
        rx_optics: 0.5,
        extra_loss_db: 5.0,
        eta_det: 0.5,
    };

    /// Far-field half divergence θ_half = λ/(π w₀), rad.
    pub fn divergence_rad(&self) -> f64 {
        self.wavelength_nm * 1e-9 / (PI * self.tx_waist_m)
    }

    /// Geometric (diffraction) transmittance at range `d_km`.
    pub fn geometric(&self, d_km: f64) -> f64 {
        let lambda = self.wavelength_nm * 1e-9;
        let z_r = PI * self.tx_waist_m.powi(2) / lambda;
        let d = d_km * 1e3;
        let w2 = self.tx_waist_m.powi(2) * (1.0 + (d / z_r).powi(2));
        -(-2.0 * self.rx_radius_m.powi(2) / w2).exp_m1()
    }

    /// Atmospheric transmittance at elevation `elev_rad` (Kasten–Young air mass).
    pub fn atmosphere(&self, elev_rad: f64) -> f64 {
        let deg = elev_rad.to_degrees().max(0.0);
        let airmass = 1.0 / (elev_rad.sin().max(0.0) + 0.50572 * (deg + 6.07995).powf(-1.6364));
        self.zenith_transmittance.powf(airmass)
    }

    /// Total transmittance without the detector (what Micius tables quote as link loss).
    pub fn channel(&self, d_km: f64, elev_rad: f64) -> f64 {
        let th = self.divergence_rad();
        let e = self.pointing_error_urad * 1e-6;
        let point = (-2.0 * e * e / (th * th)).exp();
        self.tx_optics
            * self.geometric(d_km)
            * self.atmosphere(elev_rad)
            * point
            * self.rx_optics
            * 10f64.powf(-self.extra_loss_db / 10.0)
    }

    /// System transmittance including the detector.
    pub fn system(&self, d_km: f64, elev_rad: f64) -> f64 {
        self.channel(d_km, elev_rad) * self.eta_det
    }

    /// Checks the parameters.
    pub fn validate(&self) -> Result<(), ParamError> {
        positive("wavelength_nm", self.wavelength_nm)?;
        positive("tx_waist_m", self.tx_waist_m)?;
        positive("rx_radius_m", self.rx_radius_m)?;
        probability_open("zenith_transmittance", self.zenith_transmittance)?;
        probability_open("tx_optics", self.tx_optics)?;
        probability_open("rx_optics", self.rx_optics)?;
        probability_open("eta_det", self.eta_det)?;
        if !(self.pointing_error_urad >= 0.0 && self.extra_loss_db >= 0.0) {
            return Err(ParamError::new(
                "pointing_error_urad",
                self.pointing_error_urad,
                "pointing error and extra loss must be ≥ 0",
            ));
        }
        Ok(())
    }
}

/// One visibility window of a satellite over a station.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Pass {
    /// Start, seconds after the epoch.
    pub start_s: f64,
    /// End, seconds after the epoch.
    pub end_s: f64,
    /// Highest elevation reached, degrees.
    pub max_elevation_deg: f64,
    /// Whether the Sun was below the night threshold during the whole pass.
    pub night: bool,
}

/// All passes above the station's minimum elevation in `[0, horizon_s)` after the Unix time
/// `epoch_unix_s`, sampled every `step_s` seconds. A pass is at night if the Sun stays below
/// `max_sun_elevation_deg` at its start, middle and end.
pub fn passes(
    orbit: &Orbit,
    station: &GroundStation,
    epoch_unix_s: f64,
    horizon_s: f64,
    step_s: f64,
    max_sun_elevation_deg: f64,
) -> Vec<Pass> {
    let gmst0 = gmst_rad(epoch_unix_s);
    let min_el = station.min_elevation_deg.to_radians();
    let mut out = Vec::new();
    let mut current: Option<(f64, f64)> = None;
    let mut t = 0.0;
    while t < horizon_s {
        let (el, _) = look(orbit, station, t, gmst0, true);
        match (&mut current, el >= min_el) {
            (None, true) => current = Some((t, el)),
            (Some((_, max)), true) => *max = max.max(el),
            (Some((start, max)), false) => {
                out.push(finish_pass(
                    *start,
                    t,
                    *max,
                    station,
                    epoch_unix_s,
                    max_sun_elevation_deg,
                ));
                current = None;
            }
            (None, false) => {}
        }
        t += step_s;
    }
    if let Some((start, max)) = current {
        out.push(finish_pass(
            start,
            t,
            max,
            station,
            epoch_unix_s,
            max_sun_elevation_deg,
        ));
    }
    out
}

/// A pass from its bounds, with its night flag (the Sun below `sun_max` at start, middle, end).
pub(crate) fn finish_pass(
    start: f64,
    end: f64,
    max_el: f64,
    st: &GroundStation,
    epoch: f64,
    sun_max: f64,
) -> Pass {
    let night = [start, 0.5 * (start + end), end]
        .iter()
        .all(|t| sun_elevation_deg(st.lat_deg, st.lon_deg, epoch + t) < sun_max);
    Pass {
        start_s: start,
        end_s: end,
        max_elevation_deg: max_el.to_degrees(),
        night,
    }
}

/// Trusted-satellite relay (Liao et al., PRL 120, 030501 (2018)): the satellite holds K_A (shared
/// with station A) and K_B (with station B) and broadcasts K_A ⊕ K_B over an authenticated
/// channel. The broadcast is as long as the shorter key, min(|K_A|, |K_B|).
pub fn relay_broadcast(k_a: &Secret, k_b: &Secret) -> Secret {
    let n = k_a.len().min(k_b.len());
    let mut out = Secret::zeroed(n);
    // Exposed to form the one-time-pad broadcast; the result is public by design, but it stays a
    // Secret so that it is zeroized and never logged by accident.
    for ((o, a), b) in out
        .expose_mut()
        .iter_mut()
        .zip(k_a.expose())
        .zip(k_b.expose())
    {
        *o = a ^ b;
    }
    out
}

/// Station B recovers K_A from the broadcast and its own K_B: (K_A ⊕ K_B) ⊕ K_B.
pub fn relay_recover(broadcast: &Secret, k_b: &Secret) -> Secret {
    relay_broadcast(broadcast, k_b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slant_range_table_of_section_5_1() {
        let elev = [10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0];
        let d500 = [1695.0, 1407.0, 1193.0, 909.0, 683.0, 571.0, 500.0];
        let d550 = [1815.0, 1518.0, 1294.0, 993.0, 749.0, 627.0, 550.0];
        for i in 0..elev.len() {
            let e = f64::to_radians(elev[i]);
            assert!(
                (slant_range_km(500.0, e) - d500[i]).abs() < 1.0,
                "{}",
                elev[i]
            );
            assert!(
                (slant_range_km(550.0, e) - d550[i]).abs() < 1.0,
                "{}",
                elev[i]
            );
        }
        assert!((orbit_period_s(500.0) / 60.0 - 94.47).abs() < 0.01);
        assert!((overhead_pass_duration_s(500.0, 10f64.to_radians()) / 60.0 - 7.4).abs() < 0.05);
        assert!((overhead_pass_duration_s(500.0, 15f64.to_radians()) / 60.0 - 6.0).abs() < 0.05);
    }

    #[test]
    fn relay_recovers_the_key() {
        let ka = Secret::copy_from(&[1, 2, 3, 4, 5]);
        let kb = Secret::copy_from(&[9, 8, 7, 6]);
        let bc = relay_broadcast(&ka, &kb);
        assert_eq!(bc.len(), 4);
        assert_eq!(relay_recover(&bc, &kb), ka.slice(0, 4).unwrap());
    }

    #[test]
    fn sun_is_up_at_noon_and_down_at_midnight() {
        // 2026-06-21 12:00 UTC at Greenwich: high Sun; 00:00 UTC: below the horizon.
        let noon = 1_782_043_200.0;
        assert!(sun_elevation_deg(51.5, 0.0, noon) > 55.0);
        assert!(sun_elevation_deg(51.5, 0.0, noon - 43_200.0) < -10.0);
    }

    #[test]
    fn micius_like_budget_is_in_the_measured_range() {
        // Micius 2017 (simulator/docs/models.md §5.3): 29.75 dB at 645 km, 40.34 dB at 1200 km (no detector).
        let b = LinkBudget::MICIUS_LIKE;
        let h = 500.0;
        let el_at = |d: f64| {
            ((h * (2.0 * EARTH_RADIUS_KM + h) - d * d) / (2.0 * EARTH_RADIUS_KM * d)).asin()
        };
        let db = |d: f64| -10.0 * b.channel(d, el_at(d)).log10();
        assert!((db(645.0) - 29.75).abs() < 3.0, "{}", db(645.0));
        assert!((db(1200.0) - 40.34).abs() < 5.0, "{}", db(1200.0));
        // Diffraction alone: 20·log10 scaling, 645 → 1200 km adds 5.4 dB.
        let g = 10.0 * (b.geometric(645.0) / b.geometric(1200.0)).log10();
        assert!((g - 5.4).abs() < 0.1, "{g}");
    }
}
