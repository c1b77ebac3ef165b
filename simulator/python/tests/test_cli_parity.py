"""The bindings give the numbers of `qkd-sim` to the last digit (bit for bit)."""

import csv
import json
import subprocess

import numpy as np
import pytest

import qkd_sim

# (CLI arguments, the same call through the bindings)
CASES = [
    (
        ["--protocol", "decoy-vacuum-weak", "--hardware", "gys", "--to", "150", "--points", "151"],
        dict(protocol="decoy-vacuum-weak", start=0, stop=150, points=151, hardware="gys"),
    ),
    (
        ["--protocol", "decoy-infinite", "--hardware", "kth", "--to", "180", "--points", "91", "--f-ec", "1.16"],
        dict(protocol="decoy-infinite", start=0, stop=180, points=91, hardware="kth", f_ec=1.16),
    ),
    (
        ["--protocol", "no-decoy", "--axis", "loss", "--from", "1", "--to", "20", "--points", "20"],
        dict(protocol="no-decoy", start=1, stop=20, points=20, axis="loss"),
    ),
    (
        ["--protocol", "efficient-bb84", "--p-z", "0.8", "--mu", "0.45", "--to", "120", "--points", "13"],
        dict(protocol="efficient-bb84", start=0, stop=120, points=13, p_z=0.8, mu=0.45),
    ),
    (
        ["--protocol", "finite-key", "--hardware", "lim2014", "--block", "1e6", "--to", "180", "--points", "10", "--eta-bob", "0.12"],
        dict(protocol="finite-key", start=0, stop=180, points=10, block_bits=1e6,
             hardware={"preset": "lim2014", "eta_bob": 0.12}),
    ),
    (
        ["--protocol", "one-decoy", "--hardware", "metro-ghz", "--block", "1e5", "--p-basis", "0.85", "--to", "200", "--points", "9"],
        dict(protocol="one-decoy", start=0, stop=200, points=9, block_bits=1e5, hardware="metro-ghz",
             p_basis=0.85),
    ),
    (
        ["--protocol", "cv-gg02", "--axis", "loss", "--to", "30", "--points", "31", "--alpha", "0.18"],
        dict(protocol="cv-gg02", start=0, stop=30, points=31, axis="loss", alpha_db_per_km=0.18),
    ),
    (
        ["--protocol", "twin-field", "--to", "600", "--points", "25"],
        dict(protocol="twin-field", start=0, stop=600, points=25),
    ),
]


def run_cli(binary, args, out):
    subprocess.run([str(binary), "rate", *args, "--out", str(out), "--no-plot"], check=True,
                   capture_output=True)
    with open(out / "rate.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    with open(out / "rate.json") as f:
        return rows, json.load(f)


@pytest.mark.parametrize("args,kwargs", CASES, ids=[c[1]["protocol"] for c in CASES])
def test_same_numbers_as_the_cli(qkd_sim_bin, tmp_path, args, kwargs):
    rows, js = run_cli(qkd_sim_bin, args, tmp_path)
    py = qkd_sim.rate_curve(**kwargs)
    assert len(rows) == len(py["x"]) == len(js)
    numeric = [k for k in rows[0] if k not in ("bound", "exceeds_bound")]
    assert set(numeric) <= set(py), set(numeric) - set(py)
    compared = 0
    for name in numeric:
        cli = np.array([float(r[name]) if r[name] != "" else np.nan for r in rows])
        # Bit for bit: equal values, or NaN (no such value) on both sides.
        same = (cli == py[name]) | (np.isnan(cli) & np.isnan(py[name]))
        assert same.all(), (name, cli[~same], py[name][~same])
        # The JSON holds the same numbers (null where JSON has no number: NaN, infinity).
        j = np.array([np.nan if p[name] is None else p[name] for p in js], dtype=float)
        assert ((j == cli) | (np.isnan(j) & ~np.isfinite(cli))).all(), name
        compared += int((~np.isnan(cli)).sum())
    assert compared > len(rows) * 9
    assert [r["bound"] for r in rows] == [py["bound"]] * len(rows)
    assert [r["exceeds_bound"] == "true" for r in rows] == list(py["exceeds_bound"])
    # Something was computed: some key somewhere.
    assert (py["key_per_pulse"] > 0).any()


def test_same_network_run_as_the_cli(qkd_sim_bin, tmp_path, repo):
    scenario = repo / "simulator/scenarios/metro-2node.toml"
    subprocess.run([str(qkd_sim_bin), "run", str(scenario), "--quiet", "--no-plot", "--out",
                    str(tmp_path)], check=True, capture_output=True)
    with open(tmp_path / "summary.json") as f:
        cli = json.load(f)
    py = qkd_sim.run_scenario(str(scenario))
    for c, p in zip(cli["links"], py["links"]):
        assert (c["id"], c["total_bits"], c["mean_rate_bps"]) == (p["id"], p["total_bits"], p["mean_rate_bps"])
        assert int(p["cumulative_bits"][-1]) - int(p["cumulative_bits"][0]) <= p["total_bits"]
    assert [p["total_bits"] for p in cli["pairs"]] == [p["total_bits"] for p in py["pairs"]]
    with open(tmp_path / "links.csv", newline="") as f:
        cum = [int(r["cumulative_bits"]) for r in csv.DictReader(f)]
    assert cum == [int(x) for x in py["links"][0]["cumulative_bits"]]
