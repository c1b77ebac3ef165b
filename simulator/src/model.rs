//! The seam between link physics and the key source: a [`LinkModel`] says how much finished secret
//! key a link has produced by a given time, and in what state it is. [`ConstantRate`] is the
//! simplest model; physics-grade models implement the same trait, so they plug into
//! [`crate::link::SimulatedLink`] (and from there into the node) without touching anything else.

use qkd_hardware::{LinkState, LinkStatus};
use qkd_types::UnixMillis;

pub use crate::spec::{LinkModelSpec, SpecError};

/// Time-dependent behaviour of one simulated link. Implementations are pure: the same `t` always
/// gives the same answer, which keeps simulations deterministic for a seed.
pub trait LinkModel: Send + Sync + std::fmt::Debug {
    /// Total finished secret key, in bits, the link has produced from its start up to `t`
    /// milliseconds after the start. Must never decrease as `t` grows. Finite-size effects (no
    /// key until a post-processing block fills), outages and aborts are the model's business.
    fn cumulative_secret_bits(&self, t: UnixMillis) -> u64;

    /// State, QBER and secret key rate at `t` milliseconds after the start.
    fn status(&self, t: UnixMillis) -> LinkStatus;
}

/// A link that always runs at one secret key rate with one QBER. Good for demos and tests.
#[derive(Debug, Clone)]
pub struct ConstantRate {
    /// Secret key rate in bit/s.
    pub bits_per_second: u64,
    /// Reported quantum bit error rate.
    pub qber: f64,
}

impl ConstantRate {
    /// A link running at `bits_per_second` with a typical QBER of 1.5 %.
    pub fn new(bits_per_second: u64) -> Self {
        Self {
            bits_per_second,
            qber: 0.015,
        }
    }
}

impl LinkModel for ConstantRate {
    fn cumulative_secret_bits(&self, t: UnixMillis) -> u64 {
        // u128 keeps years at Gbit/s free of overflow.
        ((self.bits_per_second as u128 * t as u128) / 1000).min(u64::MAX as u128) as u64
    }

    fn status(&self, _t: UnixMillis) -> LinkStatus {
        LinkStatus {
            state: LinkState::Up,
            qber: Some(self.qber),
            secret_key_rate_bps: Some(self.bits_per_second as f64),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_rate_is_linear_and_monotone() {
        let m = ConstantRate::new(1_000_000);
        assert_eq!(m.cumulative_secret_bits(0), 0);
        assert_eq!(m.cumulative_secret_bits(1000), 1_000_000);
        assert_eq!(m.cumulative_secret_bits(1500), 1_500_000);
        assert!(m.cumulative_secret_bits(u64::MAX) >= m.cumulative_secret_bits(u64::MAX - 1));
    }
}
