//! Properties of the node-facing link models under arbitrary event schedules: key never
//! decreases, nothing is gained while a link is down or aborted, and the status agrees.

use proptest::prelude::*;
use qkd_hardware::LinkState;
use qkd_simulator::faults::EventSpec;
use qkd_simulator::model::LinkModelSpec;
use qkd_simulator::spec::{ConstantRateSpec, DecoyBb84Spec, HardwareSpec, LinkOps};

/// Events on whole seconds, so that the state is constant over each sampled second.
fn event() -> impl Strategy<Value = EventSpec> {
    (0u8..4, 0u32..3000, 1u32..600, 0.01..1.0f64).prop_map(|(k, at, dur, f)| {
        let (at_s, d) = (f64::from(at), f64::from(dur));
        match k {
            0 => EventSpec::FibreCut { at_s, repair_s: d },
            1 => EventSpec::DeviceOutage {
                at_s,
                duration_s: d,
            },
            2 => EventSpec::Maintenance {
                at_s,
                duration_s: d,
                every_s: Some(d + 700.0),
                repeat: 2,
            },
            _ => EventSpec::InterceptResend {
                at_s,
                duration_s: d,
                fraction: f,
            },
        }
    })
}

fn check(spec: &LinkModelSpec) -> Result<(), TestCaseError> {
    let m = spec
        .build()
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let mut prev = m.cumulative_secret_bits(0);
    for t in (1..4000u64).map(|s| s * 1000) {
        let c = m.cumulative_secret_bits(t);
        prop_assert!(c >= prev, "decreased at {t} ms");
        // The state is constant over [t − 1 s, t): if it was down, nothing was gained.
        if matches!(
            m.status(t - 1000).state,
            LinkState::Down { .. } | LinkState::Aborted { .. }
        ) {
            prop_assert_eq!(c, prev, "gained key while down at {} ms", t);
        }
        prev = c;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn constant_rate_with_events(events in proptest::collection::vec(event(), 0..6), bps in 1u64..100_000) {
        // Intercept-resend does not apply to a constant-rate link: it keeps running.
        check(&LinkModelSpec::ConstantRate(ConstantRateSpec { bits_per_second: bps, qber: None, events }))?;
    }

    #[test]
    fn decoy_link_with_events(events in proptest::collection::vec(event(), 0..6), length in 1.0..120.0f64) {
        let spec = LinkModelSpec::DecoyBb84(DecoyBb84Spec {
            length_km: length,
            hardware: HardwareSpec::default(),
            decoy: qkd_simulator::physics::decoy::DecoyMethod::Infinite,
            mu: Some(0.5),
            p_z: 0.5,
            f_ec: 1.16,
            block_bits: 1e4,
            ops: LinkOps { events, ..LinkOps::default() },
        });
        check(&spec)?;
    }
}
