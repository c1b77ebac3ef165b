//! Single-photon detector imperfections beyond efficiency and dark counts, applied to a
//! [`DvHardware`]: dead time and afterpulsing are fields of the hardware already (used by every
//! DV model: Rusca's dead-time factor c_dt; Lim's afterpulse model R_k = D_k(1 + p_ap) and
//! e_k += p_ap D_k/2, simulator/docs/models.md §1); this module adds **timing jitter**.
//!
//! Timing jitter (Gaussian, standard deviation σ_j, e.g. the FWHM/2.355 of a datasheet) makes a
//! detection land outside its acceptance window of width w (the gate, at most the slot 1/f_rep),
//! centred on the expected arrival time. Counted detections fall by
//! p_in = erf(w/(2√2 σ_j)), which lowers Bob's efficiency. A detection that spills into the
//! *neighbouring* slot is recorded in the wrong time bin: with time-bin or phase encoding it
//! gives a random bit, which adds ½·p_spill/p_in to the error rate, with
//! p_spill = ½[erf(3w/(2√2 σ_j)) − erf(w/(2√2 σ_j))] (the adjacent window on one side, the
//! symbol of either neighbour counted once). See Boaron et al., PRL 121, 190502 (2018) and Rusca
//! et al. 2018 for jitter-limited GHz systems, where the gate is ~100–300 ps.
//!
//! Check values (simulator/docs/models.md §1.1): afterpulsing is held, with Lim's decoy bounds, to
//! the reach and block-size gain Lim et al. 2014 publish for p_ap = 4 %; dead time to a direct
//! simulation of a non-paralysable detector (no paper value could be read); the jitter model is
//! ours, and its Gaussian arithmetic is checked against tables (erf, the ±2σ fraction) and the
//! direction of every effect.

use serde::{Deserialize, Serialize};

use super::channel::{DvHardware, ParamError};

/// Detector timing.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timing {
    /// Timing jitter, standard deviation, s.
    pub jitter_s: f64,
    /// Acceptance window, s (None: the whole slot 1/f_rep).
    pub window_s: Option<f64>,
}

impl Timing {
    /// Checks the values against the repetition rate.
    pub fn validate(&self, rep_rate_hz: f64) -> Result<(), ParamError> {
        if !(self.jitter_s.is_finite() && self.jitter_s >= 0.0) {
            return Err(ParamError::new(
                "jitter_s",
                self.jitter_s,
                "a jitter is a finite number of seconds ≥ 0",
            ));
        }
        if let Some(w) = self.window_s
            && !(w > 0.0 && w <= 1.0 / rep_rate_hz * (1.0 + 1e-9))
        {
            return Err(ParamError::new(
                "window_s",
                w,
                "the acceptance window lies in (0, 1/rep_rate]",
            ));
        }
        Ok(())
    }

    /// (fraction of detections inside the window, fraction in a neighbouring window).
    pub fn fractions(&self, rep_rate_hz: f64) -> (f64, f64) {
        let w = self.window_s.unwrap_or(1.0 / rep_rate_hz);
        if self.jitter_s <= 0.0 {
            return (1.0, 0.0);
        }
        let z = w / (2.0 * std::f64::consts::SQRT_2 * self.jitter_s);
        let p_in = erf(z);
        // The neighbouring slot starts one period away; its window covers [T − w/2, T + w/2].
        let period = 1.0 / rep_rate_hz;
        let k = std::f64::consts::SQRT_2 * self.jitter_s;
        let spill = 0.5 * (erf((period + w / 2.0) / k) - erf((period - w / 2.0) / k));
        (p_in, spill)
    }

    /// The hardware with the jitter folded in: η_Bob scaled by p_in and the misalignment raised
    /// by ½·p_spill/p_in.
    pub fn apply(&self, hw: &DvHardware) -> DvHardware {
        let (p_in, spill) = self.fractions(hw.rep_rate_hz);
        DvHardware {
            eta_bob: hw.eta_bob * p_in,
            misalignment: (hw.misalignment + 0.5 * spill / p_in.max(1e-300)).min(0.5),
            ..*hw
        }
    }
}

/// The error function, erf(x), to 1.2×10⁻⁷ relative (Numerical Recipes' erfc Chebyshev fit).
pub fn erf(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let erfc = t * poly.exp();
    if x >= 0.0 { 1.0 - erfc } else { erfc - 1.0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::physics::decoy::{AsymptoticBb84, DecoyMethod};

    #[test]
    fn erf_matches_tables() {
        // Abramowitz & Stegun Table 7.1: erf(0.5) = 0.5204998778, erf(1) = 0.8427007929,
        // erf(2) = 0.9953222650.
        assert!((erf(0.5) - 0.520_499_877_8).abs() < 2e-7);
        assert!((erf(1.0) - 0.842_700_792_9).abs() < 2e-7);
        assert!((erf(2.0) - 0.995_322_265_0).abs() < 2e-7);
        assert!((erf(-1.0) + 0.842_700_792_9).abs() < 2e-7);
    }

    #[test]
    fn jitter_costs_efficiency_and_adds_errors_at_ghz() {
        let hw = DvHardware::METRO_GHZ; // 2.5 GHz: 400 ps slots
        let none = Timing {
            jitter_s: 0.0,
            window_s: None,
        };
        assert_eq!(none.apply(&hw), hw);
        // σ = 100 ps in a 400 ps slot: ±2σ window → 95.4 % inside, ~2.3 % in the next slot.
        let t = Timing {
            jitter_s: 100e-12,
            window_s: None,
        };
        let (p_in, spill) = t.fractions(hw.rep_rate_hz);
        assert!((p_in - 0.9545).abs() < 1e-3, "{p_in}");
        assert!(spill > 0.02 && spill < 0.025, "{spill}");
        let j = t.apply(&hw);
        assert!(j.eta_bob < hw.eta_bob && j.misalignment > hw.misalignment + 0.01);
        // The key rate falls, at 2 MHz the same jitter is harmless.
        let rate = |h: DvHardware| {
            AsymptoticBb84 {
                hw: h,
                f_ec: 1.16,
                p_z: 0.5,
                method: DecoyMethod::Infinite,
            }
            .optimal_mu(h.eta_sys(50.0))
            .1
            .key_per_pulse
        };
        assert!(rate(j) < 0.8 * rate(hw));
        let slow = DvHardware::GYS;
        let r = rate(t.apply(&slow)) / rate(slow);
        assert!((r - 1.0).abs() < 1e-6, "{r}");
        assert!(t.validate(hw.rep_rate_hz).is_ok());
        let wide = Timing {
            jitter_s: 1e-12,
            window_s: Some(1e-9),
        };
        assert_eq!(wide.validate(hw.rep_rate_hz).unwrap_err().field, "window_s");
    }
}
