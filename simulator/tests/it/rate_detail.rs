//! What `rate` reports behind each point: parameters (optimised or fixed), estimator values and
//! the bound of the protocol's family, through the library and the `qkd-sim` binary.

use std::process::Command;

use qkd_simulator::curve::{Axis, CurveProtocol, rate_curve, rate_curve_detailed};
use qkd_simulator::detail::{BoundFamily, DetailedPoint, FixedParams};
use qkd_simulator::physics::channel::DvHardware;
use qkd_simulator::physics::cv::Gg02;
use qkd_simulator::physics::decoy::vacuum_weak_bounds;
use qkd_simulator::physics::finite::{Lim2014, LimFixed, LimSettings};
use qkd_simulator::physics::twinfield::TwinField;

fn qkd_sim(args: &[&str], out: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_qkd-sim"))
        .arg("rate")
        .args(args)
        .arg("--out")
        .arg(out)
        .arg("--no-plot")
        .output()
        .expect("qkd-sim runs")
}

fn curve(p: &CurveProtocol, hw: &DvHardware, fixed: &FixedParams, to: f64) -> Vec<DetailedPoint> {
    rate_curve_detailed(p, hw, 1.22, fixed, Axis::Distance, 0.0, to, 5).expect("valid sweep")
}

#[test]
fn vacuum_weak_estimates_are_the_bounds_of_ma_2005() {
    let hw = DvHardware::GYS;
    let p = CurveProtocol::DecoyVacuumWeak { mu: 0.48, nu: 0.05 };
    let c = rate_curve_detailed(
        &p,
        &hw,
        1.22,
        &FixedParams::NONE,
        Axis::Distance,
        0.0,
        50.0,
        2,
    )
    .unwrap();
    let at50 = &c[1];
    let (y1, e1) = vacuum_weak_bounds(hw.eta_sys(50.0), hw.y0(), hw.misalignment, 0.48, 0.05);
    assert_eq!(at50.estimates.y1_lower, Some(y1));
    assert_eq!(at50.estimates.e1_upper, Some(e1));
    // simulator/docs/models.md §2.1 at 50 km: Y₁ᴸ = 3.955e-3, e₁ᵁ = 3.54 %.
    assert!((y1 / 3.955e-3 - 1.0).abs() < 2e-3 && (e1 / 0.0354 - 1.0).abs() < 5e-3);
    assert_eq!(at50.params.mu1, Some(0.48));
    assert_eq!(at50.params.mu2, Some(0.05));
    assert_eq!(at50.estimates.y0, Some(hw.y0()));
    assert!(at50.estimates.gain_mu2.unwrap() < at50.estimates.gain_mu1.unwrap());
    // The plain curve gives the same numbers.
    let plain = rate_curve(&p, &hw, 1.22, Axis::Distance, 0.0, 50.0, 2).unwrap();
    assert_eq!(plain[1], at50.point);
}

#[test]
fn finite_key_estimates_are_consistent() {
    let hw = DvHardware::LIM2014;
    for p in [
        CurveProtocol::FiniteKey { block_bits: 1e7 },
        CurveProtocol::OneDecoy { block_bits: 1e7 },
    ] {
        let c = curve(&p, &hw, &FixedParams::NONE, 100.0);
        for d in c.iter().filter(|d| d.point.key_per_pulse > 0.0) {
            let e = &d.estimates;
            let q = &d.params;
            // Probabilities sum to one, intensities are ordered.
            let psum = q.p_mu1.unwrap() + q.p_mu2.unwrap() + q.p_mu3.unwrap_or(0.0);
            assert!((psum - 1.0).abs() < 1e-9, "{p:?}: {q:?}");
            assert!(q.mu1.unwrap() > q.mu2.unwrap());
            // Key per pulse is key per block over pulses per block.
            let k = e.key_bits_per_block.unwrap() / e.pulses_per_block.unwrap();
            assert_eq!(k, d.point.key_per_pulse);
            // Single-photon yield below the true one (η_sys + Y₀ bounds it from above).
            let y1 = e.y1_lower.unwrap();
            assert!(
                y1 > 0.0 && y1 < hw.eta_sys(d.point.length_km) + 1e-5,
                "{y1}"
            );
            let ph = e.phase_error_upper.unwrap();
            assert!(ph >= hw.misalignment && ph < 0.5, "{ph}");
            // Gains fall with intensity; error rates above the misalignment.
            assert!(e.gain_mu1.unwrap() > e.gain_mu2.unwrap());
            assert!(e.error_rate_mu1.unwrap() >= hw.misalignment);
            assert!(!d.exceeds_bound && d.bound == BoundFamily::Plob);
        }
    }
}

#[test]
fn fixed_parameters_are_held_and_cost_key() {
    let hw = DvHardware::LIM2014;
    let p = CurveProtocol::FiniteKey { block_bits: 1e6 };
    let free = curve(&p, &hw, &FixedParams::NONE, 60.0);
    let fixed = FixedParams {
        mu: Some(0.5),
        mu2: Some(0.1),
        p_mu1: Some(0.6),
        p_basis: Some(0.8),
        ..FixedParams::NONE
    };
    let held = curve(&p, &hw, &fixed, 60.0);
    for (f, h) in free.iter().zip(&held) {
        assert_eq!(h.params.mu1, Some(0.5));
        assert_eq!(h.params.mu2, Some(0.1));
        assert_eq!(h.params.p_mu1, Some(0.6));
        assert_eq!(h.params.p_basis, Some(0.8));
        assert!(h.point.key_per_pulse <= f.point.key_per_pulse * (1.0 + 1e-9));
    }
    // Everything fixed: exactly the block key at those settings.
    let all = FixedParams {
        p_mu2: Some(0.3),
        ..fixed
    };
    let c = curve(&p, &hw, &all, 60.0);
    let lim = Lim2014 {
        hw,
        ec: qkd_simulator::physics::postproc::EcModel::Efficiency { f: 1.22 },
        ..Lim2014::paper(1e6)
    };
    let s = LimSettings {
        mu: [0.5, 0.1, 2e-4],
        p: [0.6, 0.3, 1.0 - 0.6 - 0.3],
        q_x: 0.8,
    };
    assert_eq!(
        c[2].point.key_per_pulse,
        lim.block_key(&s, hw.eta_sys(30.0)).key_per_pulse
    );
    assert!(all.lim().validate(2e-4).is_ok() && LimFixed::default().validate(2e-4).is_ok());
    // Asymptotic: a fixed μ.
    let c = curve(
        &CurveProtocol::DecoyInfinite,
        &DvHardware::GYS,
        &FixedParams {
            mu: Some(0.48),
            ..FixedParams::NONE
        },
        100.0,
    );
    assert!(c.iter().all(|d| d.params.mu1 == Some(0.48)));
}

#[test]
fn fixed_parameters_a_protocol_lacks_or_cannot_take_are_refused() {
    let hw = DvHardware::GYS;
    let err = |p: &CurveProtocol, f: FixedParams| {
        rate_curve_detailed(p, &hw, 1.22, &f, Axis::Distance, 0.0, 10.0, 2)
            .unwrap_err()
            .to_string()
    };
    let e = err(
        &CurveProtocol::DecoyInfinite,
        FixedParams {
            mu2: Some(0.1),
            ..FixedParams::NONE
        },
    );
    assert!(e.contains("mu2") && e.contains("not a parameter"), "{e}");
    let e = err(
        &CurveProtocol::FiniteKey { block_bits: 1e6 },
        FixedParams {
            mu: Some(0.2),
            mu2: Some(0.3),
            ..FixedParams::NONE
        },
    );
    assert!(e.starts_with("mu = 0.2") && e.contains("mu2 + mu3"), "{e}");
    let e = err(
        &CurveProtocol::OneDecoy { block_bits: 1e6 },
        FixedParams {
            p_basis: Some(1.5),
            ..FixedParams::NONE
        },
    );
    assert!(e.contains("p_basis") && e.contains("(0, 1)"), "{e}");
    let e = err(
        &CurveProtocol::CvGg02(Gg02::REFERENCE),
        FixedParams {
            mu: Some(0.3),
            ..FixedParams::NONE
        },
    );
    assert!(e.contains("mu") && e.contains("not a parameter"), "{e}");
}

#[test]
fn twin_field_is_held_to_the_single_repeater_bound() {
    let tf = CurveProtocol::TwinField(TwinField::LONG_HAUL);
    let c = rate_curve_detailed(
        &tf,
        &DvHardware::GYS,
        1.22,
        &FixedParams::NONE,
        Axis::Distance,
        0.0,
        700.0,
        71,
    )
    .unwrap();
    assert!(c.iter().all(|d| d.bound == BoundFamily::SingleRepeater));
    // It beats PLOB far away, never the single-repeater bound.
    assert!(
        c.iter()
            .any(|d| d.point.key_per_pulse > d.point.plob_per_use)
    );
    assert!(c.iter().all(|d| !d.exceeds_bound));
    assert!(c.iter().all(|d| d.bound_per_use >= d.point.plob_per_use));
    let dv = curve(
        &CurveProtocol::DecoyInfinite,
        &DvHardware::GYS,
        &FixedParams::NONE,
        100.0,
    );
    assert!(
        dv.iter()
            .all(|d| d.bound == BoundFamily::Plob && d.bound_per_use == d.point.plob_per_use)
    );
}

#[test]
fn cli_writes_estimates_and_fixed_parameters_to_csv_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let o = qkd_sim(
        &[
            "--protocol",
            "one-decoy",
            "--hardware",
            "metro-ghz",
            "--block",
            "1e6",
            "--p-basis",
            "0.9",
            "--mu",
            "0.4",
            "--to",
            "100",
            "--points",
            "11",
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("fixed: mu, p_basis") && stdout.contains("bound: PLOB"),
        "{stdout}"
    );
    let mut rdr = csv::Reader::from_path(dir.path().join("rate.csv")).unwrap();
    let header: Vec<String> = rdr.headers().unwrap().iter().map(String::from).collect();
    assert_eq!(header, DetailedPoint::CSV_HEADER);
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("rate.json")).unwrap()).unwrap();
    for (row, j) in rdr
        .records()
        .map(Result::unwrap)
        .zip(json.as_array().unwrap())
    {
        assert_eq!(&row[col("p_basis")], "0.9");
        assert_eq!(&row[col("mu1")], "0.4");
        for name in [
            "key_per_pulse",
            "y1_lower",
            "phase_error_upper",
            "gain_mu1",
            "error_rate_mu2",
            "mu2",
            "p_mu1",
        ] {
            let v: f64 = row[col(name)].parse().unwrap();
            assert_eq!(Some(v), j[name].as_f64(), "{name}");
        }
        assert_eq!(&row[col("bound")], "plob");
        assert_eq!(&row[col("exceeds_bound")], "false");
    }
}

#[test]
fn cli_says_which_bound_applies() {
    let dir = tempfile::tempdir().unwrap();
    let o = qkd_sim(
        &["--protocol", "twin-field", "--to", "600", "--points", "13"],
        dir.path(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("bound: single-repeater") && stdout.contains("no point exceeds it"),
        "{stdout}"
    );
}
