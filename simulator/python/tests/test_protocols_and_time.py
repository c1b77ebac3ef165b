"""MDI-QKD, SNS twin-field, BBM92, heterodyne and finite-size CV-QKD, key buffers over time and
satellite passes through Python: the numbers of `qkd-sim` bit for bit, and published checks."""

import csv
import json
import subprocess

import numpy as np
import pytest

import qkd_sim

CASES = [
    (["--protocol", "mdi-qkd", "--to", "250", "--points", "26"],
     dict(protocol="mdi-qkd", start=0, stop=250, points=26)),
    (["--protocol", "bbm92", "--to", "300", "--points", "16", "--misalignment", "0.02"],
     dict(protocol="bbm92", start=0, stop=300, points=16, params={"misalignment": 0.02})),
    (["--protocol", "sns-tf", "--to", "600", "--points", "13"],
     dict(protocol="sns-tf", start=0, stop=600, points=13)),
    (["--protocol", "sns-tf", "--pulses", "1e12", "--to", "400", "--points", "5"],
     dict(protocol="sns-tf", start=0, stop=400, points=5, pulses=1e12)),
    (["--protocol", "cv-qkd", "--to", "80", "--points", "17"],
     dict(protocol="cv-qkd", start=0, stop=80, points=17)),
    (["--protocol", "cv-qkd", "--detection", "homodyne", "--symbols", "1e9", "--to", "80", "--points", "17"],
     dict(protocol="cv-qkd", start=0, stop=80, points=17, detection="homodyne", symbols=1e9)),
]


@pytest.mark.parametrize("args,kwargs", CASES, ids=[" ".join(c[0][1:4]) for c in CASES])
def test_new_protocols_give_the_cli_numbers(qkd_sim_bin, tmp_path, args, kwargs):
    subprocess.run([str(qkd_sim_bin), "rate", *args, "--out", str(tmp_path), "--no-plot"],
                   check=True, capture_output=True)
    with open(tmp_path / "rate.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    py = qkd_sim.rate_curve(**kwargs)
    assert len(rows) == len(py["x"])
    for name in [k for k in rows[0] if k not in ("bound", "exceeds_bound")]:
        cli = np.array([float(r[name]) if r[name] != "" else np.nan for r in rows])
        same = (cli == py[name]) | (np.isnan(cli) & np.isnan(py[name]))
        assert same.all(), (name, cli[~same], py[name][~same])
    assert (py["key_per_pulse"] > 0).any()
    # SNS is a twin-field protocol: held to the single-repeater bound, not PLOB.
    if kwargs["protocol"] == "sns-tf":
        assert rows[0]["bound"] == "single-repeater"


def test_published_checks_through_python():
    # Heterodyne GG02 equals the independent qosst-skr implementation (Fossier et al. 2009).
    t = qkd_sim.db_to_transmittance(0.2 * np.array([0.0, 10.0, 50.0]))
    het = qkd_sim.cv_qkd(t)
    np.testing.assert_allclose(het["key_per_symbol"], [9.487386e-1, 2.727501e-1, 2.275072e-2],
                               rtol=1e-5)
    # MDI-QKD without noise: R = e^-2 eta / 2 at mu = 1 (Lo-Curty-Qi rate, Xu 2013 model).
    ideal = qkd_sim.mdi_qkd([10.0, 80.0], {"dark_count_prob": 0.0, "misalignment": 0.0,
                                           "eta_det": 1.0})
    eta = qkd_sim.db_to_transmittance(0.2 * np.array([10.0, 80.0]))
    np.testing.assert_allclose(ideal["key_per_pulse"], np.exp(-2) * eta / 2, rtol=1e-6)
    # SNS tolerates 35 % misalignment out to ~500 km (Wang, Yu, Hu 2018): key at 450 km, none
    # at 560 km.
    s = qkd_sim.sns_tf([450.0, 560.0], {"misalignment": 0.35})
    assert s["key_per_pulse"][0] > 0 and s["key_per_pulse"][1] == 0
    # Finite size: less key than the asymptote, more with more symbols.
    small = qkd_sim.cv_qkd(t, detection="homodyne", finite={"symbols": 1e8})
    large = qkd_sim.cv_qkd(t, detection="homodyne", finite={"symbols": 1e12})
    assert (small["key_per_symbol"] <= large["key_per_symbol"]).all()
    assert (large["key_per_symbol"] < large["asymptotic"]).all()
    # Jitter at 2.5 GHz: sigma 100 ps leaves 95.4 % of the detections in the slot.
    hw = qkd_sim.detector_timing("metro-ghz", 100e-12)
    assert hw["p_in"] == pytest.approx(0.9545, abs=1e-3)
    assert hw["eta_bob"] < qkd_sim.hardware("metro-ghz")["eta_bob"]


def test_errors_name_the_parameter():
    with pytest.raises(ValueError, match="misalignment"):
        qkd_sim.mdi_qkd([10.0], {"misalignment": 0.7})
    with pytest.raises(ValueError, match="detection"):
        qkd_sim.cv_qkd([0.1], detection="photon-counting")
    with pytest.raises(ValueError, match="pulses"):
        qkd_sim.rate_curve("sns-tf", 0, 10, 2, pulses=10.0)
    with pytest.raises(ValueError, match="demand"):
        qkd_sim.run_dynamics("x.toml", "poisson:3")


def test_dynamics_gives_the_cli_numbers(qkd_sim_bin, tmp_path, repo):
    scenario = repo / "simulator/scenarios/metro-2node.toml"
    args = ["--demand", "constant:400000", "--step", "10", "--aggregate", "600"]
    subprocess.run([str(qkd_sim_bin), "dynamics", str(scenario), *args, "--out", str(tmp_path)],
                   check=True, capture_output=True)
    with open(tmp_path / "dynamics_summary.json") as f:
        cli = json.load(f)
    py = qkd_sim.run_dynamics(str(scenario), "constant:400000", step_s=10, aggregate_s=600)
    for c, p in zip(cli["pairs"], py["pairs"]):
        for k in ("demanded_bits", "served_bits", "unmet_bits", "baseline_served_bits"):
            assert c[k] == p[k], k
        assert int(p["served"].sum()) == p["served_bits"]
    # The attack and the cut of the metro day cost key against the event-free run.
    pair = py["pairs"][0]
    assert pair["baseline_served_bits"] > pair["served_bits"]
    link = py["links"][0]
    assert link["generated_bits"] == int(link["generated"].sum())


def test_passes_give_the_cli_numbers(qkd_sim_bin, tmp_path, repo):
    tle_file = repo / "simulator/data/tle/iss-2020-07-12.tle"
    subprocess.run([str(qkd_sim_bin), "pass", "--tle", str(tle_file), "--station", "48.15,11.58",
                    "--hours", "24", "--day", "--out", str(tmp_path)], check=True,
                   capture_output=True)
    with open(tmp_path / "passes.json") as f:
        cli = json.load(f)
    py = qkd_sim.tle_passes(tle_file.read_text(), {"lat_deg": 48.15, "lon_deg": 11.58},
                            hours=24, night_only=False)
    assert len(cli) == len(py) > 2
    for c, p in zip(cli, py):
        assert (c["start_s"], c["secret_bits"], c["sifted_bits"]) == (p["start_s"], p["secret_bits"], p["sifted_bits"])
    # A loss table over time: the pass of the first ISS pass, as times and losses.
    first = py[1]
    again = qkd_sim.passes_from_loss(first["t_s"], first["loss_db"])
    assert len(again) == 1 and again[0]["secret_bits"] > 0
    assert again[0]["min_loss_db"] == pytest.approx(first["min_loss_db"])
