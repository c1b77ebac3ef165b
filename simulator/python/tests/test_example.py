"""The example script reproduces the published curve and plots it."""

import pathlib
import subprocess
import sys

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "gys_decoy_curve.py"


def test_example_reproduces_ma_2005_and_plots(tmp_path):
    out = tmp_path / "gys.png"
    r = subprocess.run([sys.executable, str(EXAMPLE), "--out", str(out)], capture_output=True,
                       text=True, check=True)
    assert "140." in r.stdout and "published 140.55 km" in r.stdout, r.stdout
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 20_000


def test_benchmark_runs_small():
    bench = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "bench.py"
    r = subprocess.run([sys.executable, str(bench), "--quick"], capture_output=True, text=True,
                       check=True)
    assert "50-point infinite-decoy curve" in r.stdout and "with key" in r.stdout, r.stdout
