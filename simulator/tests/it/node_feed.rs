//! A node's view: a `SimulatedLink` driven by a physics model from a `LinkModelSpec`, through the
//! device interface (`qkd_hardware::KeySource`).

use std::sync::Arc;

use qkd_hardware::{DeviceError, KeySource, LinkRole, LinkState};
use qkd_simulator::link::{SimLinkConfig, SimulatedLink};
use qkd_simulator::model::LinkModelSpec;
use qkd_types::{LinkId, ManualClock};

const SPEC: &str = r#"
kind = "finite-key-bb84"
length_km = 40.0
block_bits = 1e5
events = [
  { kind = "intercept-resend", at_s = 100, duration_s = 50, fraction = 0.9 },
  { kind = "device-outage", at_s = 200, duration_s = 20 },
]
"#;

#[tokio::test]
async fn node_gets_blocks_at_the_physical_rate_with_aborts_and_outages() {
    let spec: LinkModelSpec = toml::from_str(SPEC).unwrap();
    let clock = ManualClock::new(0);
    let seed = SimulatedLink::parse_seed(&"5a".repeat(32)).unwrap();
    let end = |role| {
        SimulatedLink::new(
            SimLinkConfig {
                link: LinkId::parse("A-B").unwrap(),
                role,
                block_bits: 8192,
                start: 0,
            },
            &seed,
            spec.build().unwrap(),
            Arc::new(clock.clone()),
        )
        .unwrap()
    };
    let (master, slave) = (end(LinkRole::Master), end(LinkRole::Slave));
    let st = master.status().await;
    assert_eq!(st.state, LinkState::Up);
    let rate = st.secret_key_rate_bps.unwrap();
    assert!(rate > 1e3, "{rate}");
    let qber = st.qber.unwrap();
    assert!(qber > 0.005 && qber < 0.05, "{qber}");

    clock.set(50_000);
    let blocks = master.next_blocks(1_000_000).await.unwrap();
    // Finite PA blocks make the count step-wise; it follows the rate within one PA block.
    let expected = rate * 50.0 / 8192.0;
    assert!(
        (blocks.len() as f64 - expected).abs() <= expected * 0.05 + 20.0,
        "{} vs {expected}",
        blocks.len()
    );
    let ids: Vec<_> = blocks.iter().take(3).map(|b| b.id).collect();
    let mirrored = slave.blocks_by_id(&ids).await.unwrap();
    assert_eq!(mirrored[0].key, blocks[0].key);

    // During the attack: aborted, with the reason, and no new key.
    clock.set(120_000);
    let before = master.next_blocks(1_000_000).await.unwrap().len();
    assert!(before > 0);
    match master.ensure_up() {
        Err(DeviceError::Unavailable(reason)) => assert!(reason.contains("QBER"), "{reason}"),
        other => panic!("{other:?}"),
    }
    clock.set(149_000);
    assert!(master.next_blocks(1_000_000).await.unwrap().is_empty());
    // Outage.
    clock.set(210_000);
    assert!(matches!(
        master.status().await.state,
        LinkState::Down { .. }
    ));
    // Back up afterwards.
    clock.set(300_000);
    assert_eq!(master.status().await.state, LinkState::Up);
    assert!(!master.next_blocks(1_000_000).await.unwrap().is_empty());
}
