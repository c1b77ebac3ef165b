//! Classical post-processing: sifting, error correction (EC) leakage, error verification, privacy
//! amplification (PA) and the key spent on authenticating the classical channel.
//!
//! Numbers and models from simulator/docs/models.md §4: leakage λ_EC = f·h(E)·n with f = 1.16 (Lim, Rusca)
//! or 1.22 (GYS); LDPC rate selection with shortening after Kiktenko et al., J. Phys. Conf. Ser.
//! 741, 012081 (2016) (n = 4096, code rates 0.5 … 0.9 step 0.05, f_crit = 1.22); verification by
//! a hash of ⌈log₂(1/ε_cor)⌉ bits (Lim: log₂(2/ε_cor)); Wegman–Carter authentication with
//! l_h = 40 fresh key bits per tag and two authenticated exchanges per block (Kiktenko).
//!
//! Keys emerge per PA block: a block closes when enough key-basis bits have been sifted, so a
//! slow link delivers nothing until its first block fills ([`block_accumulation_s`]).

use serde::{Deserialize, Serialize};

use super::channel::{ParamError, h2};

/// Sifting factor of standard BB84: half the detections survive basis reconciliation.
pub const SIFT_BB84: f64 = 0.5;

/// Sifting factor of efficient BB84 with basis-Z probability `p_z` on both sides: p_Z² + p_X².
pub fn sift_efficient(p_z: f64) -> f64 {
    p_z * p_z + (1.0 - p_z) * (1.0 - p_z)
}

/// Error-correction leakage model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum EcModel {
    /// λ = f·h(E)·n with a fixed inefficiency `f` ≥ 1.
    Efficiency {
        /// EC inefficiency f.
        f: f64,
    },
    /// Syndrome-coded LDPC with a finite set of code rates and shortening (Kiktenko 2016): the
    /// lowest code rate R with (1 − R)/h(E) < f_crit is used, then shortened, so the efficiency
    /// is ≤ f_crit at moderate QBER; below ~1 % even the highest rate (0.9) leaks more.
    Ldpc {
        /// Target efficiency f_crit (1.22 in Kiktenko 2016).
        f_crit: f64,
        /// Frame length in bits (4096 in Kiktenko 2016).
        frame_bits: u32,
    },
    /// Interactive Cascade, with the literature efficiency (each parity reply counted as one
    /// bit); `f` is typically 1.05–1.2 \[M\]. Its many round trips are charged to
    /// authentication ([`EcModel::round_trips`], [`Authentication::with_ec`]).
    Cascade {
        /// Cascade efficiency.
        f: f64,
    },
}

impl Default for EcModel {
    fn default() -> Self {
        EcModel::Efficiency { f: 1.16 }
    }
}

/// LDPC code rates of Kiktenko 2016: 0.5 to 0.9 in steps of 0.05.
const LDPC_RATES: [f64; 9] = [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9];

impl EcModel {
    /// Bits disclosed to correct `n` bits at QBER `e`, or `None` if this EC cannot correct
    /// that QBER at all.
    pub fn leakage(&self, n: f64, e: f64) -> Option<f64> {
        match *self {
            EcModel::Efficiency { f } | EcModel::Cascade { f } => Some(f * h2(e) * n),
            EcModel::Ldpc { f_crit, frame_bits } => {
                let h = h2(e);
                if h <= 0.0 {
                    return Some(0.0);
                }
                // Kiktenko's rule: the lowest code rate whose leakage ratio is still below f_crit,
                // shortened up to f_crit. At low QBER every code leaks more than f_crit·h: the
                // highest rate is used as is, with a worse efficiency.
                let Some(rate) = LDPC_RATES.iter().copied().find(|r| (1.0 - r) / h < f_crit) else {
                    return Some(n * (1.0 - LDPC_RATES[LDPC_RATES.len() - 1]));
                };
                let n_frame = f64::from(frame_bits);
                let m = (1.0 - rate) * n_frame;
                let shortened = (n_frame - m / (f_crit * h)).floor().max(0.0);
                let payload = n_frame - shortened;
                if payload <= 0.0 {
                    return None;
                }
                // m syndrome bits reveal information on `payload` key bits.
                Some(n * m / payload)
            }
        }
    }

    /// Round trips over the classical channel to correct one block at QBER `e`. One-way codes
    /// (LDPC, a fixed-efficiency model) need one. Cascade runs 4 passes with blocks of
    /// k₁ = ⌈0.73/e⌉ bits, doubling each pass. Each pass exchanges the block parities and then
    /// bisects the blocks with odd parity, about ⌈log₂ kᵢ⌉ round trips (Brassard–Salvail 1994).
    pub fn round_trips(&self, e: f64) -> u32 {
        match *self {
            EcModel::Cascade { .. } => {
                let k1 = (0.73 / e.max(1e-4)).ceil().max(2.0);
                (0..4)
                    .map(|i| 1 + (k1 * 2f64.powi(i)).log2().ceil() as u32)
                    .sum()
            }
            _ => 1,
        }
    }

    /// Efficiency actually achieved at QBER `e` (leakage per bit / h(e)).
    pub fn efficiency(&self, e: f64) -> Option<f64> {
        let h = h2(e);
        self.leakage(1.0, e)
            .map(|l| if h > 0.0 { l / h } else { 1.0 })
    }

    /// Checks the parameters.
    pub fn validate(&self) -> Result<(), ParamError> {
        match *self {
            EcModel::Efficiency { f } | EcModel::Cascade { f } if !(1.0..=3.0).contains(&f) => Err(
                ParamError::new("ec.f", f, "an EC inefficiency lies in [1, 3]"),
            ),
            EcModel::Ldpc { f_crit, .. } if !(1.0..=3.0).contains(&f_crit) => Err(ParamError::new(
                "ec.f_crit",
                f_crit,
                "an EC inefficiency lies in [1, 3]",
            )),
            EcModel::Ldpc { frame_bits, .. } if frame_bits < 64 => Err(ParamError::new(
                "ec.frame_bits",
                f64::from(frame_bits),
                "an LDPC frame needs at least 64 bits",
            )),
            _ => Ok(()),
        }
    }
}

/// Authentication of the classical channel, charged from the link's own key.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Authentication {
    /// Fresh key bits per tag (40 for ε_aut = 10⁻¹², Kiktenko 2016).
    pub tag_bits: u32,
    /// Authenticated messages per post-processing block (2 in Kiktenko 2016; more with
    /// interactive EC such as Cascade).
    pub messages_per_block: u32,
}

impl Default for Authentication {
    fn default() -> Self {
        Self {
            tag_bits: 40,
            messages_per_block: 2,
        }
    }
}

impl Authentication {
    /// Key bits consumed per block.
    pub fn cost_per_block(&self) -> u64 {
        u64::from(self.tag_bits) * u64::from(self.messages_per_block)
    }

    /// The same with the extra messages of an interactive EC. Each round trip beyond the first
    /// adds two authenticated messages (question and answer).
    pub fn with_ec(&self, ec: &EcModel, qber: f64) -> Self {
        Self {
            messages_per_block: self.messages_per_block + 2 * (ec.round_trips(qber) - 1),
            ..*self
        }
    }
}

/// Verification hash length for correctness ε_cor: ⌈log₂(1/ε_cor)⌉ bits.
pub fn verification_bits(eps_cor: f64) -> u32 {
    (1.0 / eps_cor).log2().ceil().max(0.0) as u32
}

/// Net key of one block after privacy amplification to `pa_output_bits` and the authentication
/// cost; 0 if authentication eats the block.
pub fn net_block_key(pa_output_bits: f64, auth: &Authentication) -> u64 {
    let pa = pa_output_bits.max(0.0).floor() as u64;
    pa.saturating_sub(auth.cost_per_block())
}

/// Time in seconds to sift `block_bits` key-basis bits at `sifted_bits_per_s`; infinite if the
/// link sifts nothing.
pub fn block_accumulation_s(block_bits: f64, sifted_bits_per_s: f64) -> f64 {
    if sifted_bits_per_s > 0.0 {
        block_bits / sifted_bits_per_s
    } else {
        f64::INFINITY
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldpc_efficiency_is_f_crit_except_at_low_qber() {
        let ldpc = EcModel::Ldpc {
            f_crit: 1.22,
            frame_bits: 4096,
        };
        for e in [0.015, 0.02, 0.03, 0.05, 0.07, 0.1] {
            let f = ldpc.efficiency(e).unwrap();
            assert!(f <= 1.22 + 1e-9 && f > 1.2, "e = {e}: f = {f}");
        }
        // At 0.5 % QBER the rate-0.9 code leaks 0.1 bit per bit: f = 0.1/h(0.005) ≈ 2.2.
        let f = ldpc.efficiency(0.005).unwrap();
        assert!((f - 0.1 / h2(0.005)).abs() < 1e-9);
        let ideal = EcModel::Efficiency { f: 1.0 };
        assert!((ideal.leakage(1000.0, 0.11).unwrap() - 1000.0 * h2(0.11)).abs() < 1e-9);
    }

    #[test]
    fn cascade_is_interactive_and_costs_authentication() {
        let cascade = EcModel::Cascade { f: 1.1 };
        // 2 % QBER: k1 = 37, passes of 37, 74, 148, 296 bits: 4 + 6 + 7 + 8 + 9 round trips.
        assert_eq!(cascade.round_trips(0.02), 34);
        assert!(cascade.round_trips(0.005) > cascade.round_trips(0.05));
        let ldpc = EcModel::Ldpc {
            f_crit: 1.22,
            frame_bits: 4096,
        };
        assert_eq!(ldpc.round_trips(0.02), 1);
        let auth = Authentication::default();
        assert_eq!(auth.with_ec(&ldpc, 0.02), auth);
        assert_eq!(
            auth.with_ec(&cascade, 0.02).cost_per_block(),
            40 * (2 + 2 * 33)
        );
    }

    #[test]
    fn sifting_verification_and_authentication() {
        assert_eq!(sift_efficient(0.5), SIFT_BB84);
        assert!((sift_efficient(0.9) - 0.82).abs() < 1e-12);
        assert_eq!(verification_bits(1e-15), 50);
        let auth = Authentication::default();
        assert_eq!(net_block_key(1000.7, &auth), 920);
        assert_eq!(net_block_key(50.0, &auth), 0);
        assert_eq!(block_accumulation_s(1e6, 1e3), 1e3);
        assert!(block_accumulation_s(1.0, 0.0).is_infinite());
    }
}
