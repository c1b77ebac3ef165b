"""Type stubs of `qkd_sim`, the Python bindings of qkd-simulator (see src/lib.rs for the
docstrings, which Python's help() shows). Units: km, dB, dB/km, Hz, s, ms as named; key rates
in bit per pulse (or symbol, or pulse pair) unless the name ends in _bps (bit/s)."""

from os import PathLike
from typing import Any, Literal, Mapping, Optional, Sequence, Union

import numpy as np
import numpy.typing as npt

__version__: str

ArrayLike = npt.ArrayLike
F64 = npt.NDArray[np.float64]
Hardware = Union[Literal["gys", "kth", "lim2014", "metro-ghz"], Mapping[str, Any]]
Protocol = Literal[
    "decoy-infinite",
    "decoy-vacuum-weak",
    "no-decoy",
    "efficient-bb84",
    "finite-key",
    "one-decoy",
    "cv-gg02",
    "twin-field",
    "mdi-qkd",
    "bbm92",
    "sns-tf",
    "cv-qkd",
]

def hardware(preset: str = "gys", **overrides: float) -> dict[str, float]: ...
def plob(eta: ArrayLike) -> F64: ...
def tgw(eta: ArrayLike) -> F64: ...
def single_repeater(eta: ArrayLike) -> F64: ...
def plob_thermal(eta: ArrayLike, n_bar: float) -> F64: ...
def db_to_transmittance(loss_db: ArrayLike) -> F64: ...
def rate_curve(
    protocol: Protocol,
    start: float = 0.0,
    stop: float = 200.0,
    points: int = 201,
    *,
    x: Optional[ArrayLike] = None,
    axis: Literal["distance", "loss"] = "distance",
    hardware: Optional[Hardware] = None,
    f_ec: float = 1.22,
    block_bits: float = 1e7,
    mu: Optional[float] = None,
    nu: Optional[float] = None,
    p_z: Optional[float] = None,
    mu2: Optional[float] = None,
    mu3: Optional[float] = None,
    p_mu1: Optional[float] = None,
    p_mu2: Optional[float] = None,
    p_basis: Optional[float] = None,
    alpha_db_per_km: Optional[float] = None,
    params: Optional[Mapping[str, Any]] = None,
    pulses: Optional[float] = None,
    detection: Optional[Literal["homodyne", "heterodyne"]] = None,
    symbols: Optional[float] = None,
) -> dict[str, Any]:
    """Columns of rate.csv as arrays (float64; exceeds_bound bool), and "bound"
    ("plob" or "single-repeater")."""

def decoy_bb84(
    eta_sys: ArrayLike,
    mu: Optional[ArrayLike] = None,
    *,
    method: Literal["infinite", "vacuum-weak", "no-decoy"] = "infinite",
    nu: float = 0.05,
    p_z: float = 0.5,
    f_ec: float = 1.22,
    hardware: Optional[Hardware] = None,
) -> dict[str, F64]: ...
def decoy_max_distance(
    mu: Optional[float] = None,
    *,
    method: Literal["infinite", "vacuum-weak", "no-decoy"] = "infinite",
    nu: float = 0.05,
    p_z: float = 0.5,
    f_ec: float = 1.22,
    hardware: Optional[Hardware] = None,
) -> float: ...
def finite_key_lim(
    eta_sys: ArrayLike,
    block_bits: float = 1e7,
    *,
    hardware: Optional[Hardware] = None,
    f_ec: float = 1.16,
    eps_cor: float = 1e-15,
    eps_sec: Optional[float] = None,
    mu3: float = 2e-4,
    mu1: Optional[float] = None,
    mu2: Optional[float] = None,
    p_mu1: Optional[float] = None,
    p_mu2: Optional[float] = None,
    q_x: Optional[float] = None,
) -> dict[str, npt.NDArray[Any]]: ...
def one_decoy_rusca(
    eta_sys: ArrayLike,
    block_bits: float = 1e7,
    *,
    hardware: Optional[Hardware] = None,
    f_ec: float = 1.16,
    eps_sec: float = 1e-9,
    eps_cor: float = 1e-15,
    mu1: Optional[float] = None,
    mu2: Optional[float] = None,
    p_mu1: Optional[float] = None,
    p_z: Optional[float] = None,
) -> dict[str, npt.NDArray[Any]]: ...
def cv_gg02(transmittance: ArrayLike, params: Optional[Mapping[str, float]] = None) -> dict[str, F64]: ...
def twin_field(length_km: ArrayLike, params: Optional[Mapping[str, float]] = None) -> dict[str, F64]: ...
def satellite_passes(
    orbit: Mapping[str, float],
    station: Mapping[str, float],
    start_unix_s: float,
    horizon_s: float = 86400.0,
    step_s: float = 1.0,
    max_sun_elevation_deg: float = -12.0,
) -> list[dict[str, Any]]: ...
def run_scenario(
    path: Union[str, PathLike[str]],
    aggregate_s: int = 60,
    threads: Optional[int] = None,
    pairs: Optional[Sequence[str]] = None,
    out: Optional[Union[str, PathLike[str]]] = None,
) -> dict[str, Any]: ...

def mdi_qkd(length_km: ArrayLike, params: Optional[Mapping[str, float]] = None) -> dict[str, F64]: ...
def bbm92(length_km: ArrayLike, params: Optional[Mapping[str, float]] = None) -> dict[str, F64]: ...
def sns_tf(
    length_km: ArrayLike,
    params: Optional[Mapping[str, float]] = None,
    *,
    pulses: Optional[float] = None,
    delta_rad: float = 0.2,
    eps_cor: float = 1e-10,
    eps_sec: float = 1e-10,
) -> dict[str, F64]: ...
def cv_qkd(
    transmittance: ArrayLike,
    params: Optional[Mapping[str, float]] = None,
    *,
    detection: Literal["homodyne", "heterodyne"] = "heterodyne",
    finite: Optional[Mapping[str, float]] = None,
) -> dict[str, F64]: ...
def detector_timing(hardware: Hardware, jitter_s: float, window_s: Optional[float] = None) -> dict[str, float]: ...
def run_dynamics(
    path: Union[str, PathLike[str]],
    demand: str = "constant:1000",
    *,
    days: Optional[float] = None,
    step_s: int = 60,
    aggregate_s: int = 3600,
    block_bits: int = 256,
    capacity_bits: float = 1e9,
    initial_bits: float = 0.0,
    pairs: Optional[Sequence[str]] = None,
    baseline: bool = True,
    out: Optional[Union[str, PathLike[str]]] = None,
) -> dict[str, Any]:
    """Summary of `qkd-sim dynamics`; per pair and per link also NumPy arrays (uint64) per bucket."""
def passes_from_loss(
    t_s: ArrayLike,
    loss_db: ArrayLike,
    *,
    hardware: Optional[Mapping[str, float]] = None,
    max_gap_s: float = 30.0,
) -> list[dict[str, Any]]: ...
def tle_passes(
    tle: str,
    station: Mapping[str, float],
    *,
    norad_id: Optional[int] = None,
    start_unix_s: Optional[float] = None,
    hours: float = 24.0,
    step_s: float = 1.0,
    night_only: bool = True,
    hardware: Optional[Mapping[str, float]] = None,
) -> list[dict[str, Any]]: ...

class Link:
    """A link model built from a LinkModelSpec (dict or TOML text)."""

    def __init__(self, spec: Union[str, Mapping[str, Any]]) -> None: ...
    @property
    def kind(self) -> str: ...
    def sample(self, t_ms: ArrayLike) -> dict[str, Any]:
        """cumulative_bits (uint64), phase (list of "up"/"down"/"aborted"), qber (float64)."""
    def status(self, t_ms: float) -> dict[str, Any]: ...
    def passes(self) -> list[dict[str, Any]]: ...
