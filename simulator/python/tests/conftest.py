"""Shared fixtures: the `qkd-sim` binary the bindings are compared with."""

import json
import os
import pathlib
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def qkd_sim_bin():
    """Path of the `qkd-sim` binary: $QKD_SIM_BIN, or built with cargo (debug profile)."""
    given = os.environ.get("QKD_SIM_BIN")
    if given:
        return pathlib.Path(given)
    out = subprocess.run(
        ["cargo", "build", "-p", "qkd-simulator", "--bin", "qkd-sim", "--message-format=json"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    for line in out.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg.get("executable"):
            return pathlib.Path(msg["executable"])
    raise RuntimeError("cargo built no qkd-sim executable")


@pytest.fixture(scope="session")
def repo():
    return REPO
