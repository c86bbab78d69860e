"""Time grids for samplers: those of ``schedules.time_grid``, a power-warped logSNR grid and the
timestep spacings of discrete-time schedules.

  logsnr_power[:kappa]  lambda_i = lambda(t_max) + (i/N)^kappa (lambda(t_min) - lambda(t_max)),
                        lambda = logSNR; kappa = 0.8 by default. kappa = 1 is the uniform-logSNR
                        grid; kappa < 1 takes larger logSNR steps at high noise and smaller ones
                        near the data. Measured on the analytic mixtures (benchmarks/samplers.py):
                        at 10 NFE it lowers the error of DPM-Solver++(2M) by about 20% and of UniPC
                        by about 20% relative to kappa = 1 (kappa in 0.7..0.85 is about equally good).
  linspace | leading[:offset] | trailing
                        a discrete schedule's (``vp_discrete``, N steps) S = num_steps timesteps as
                        released samplers pick them (Lin et al. 2024, Table 2; diffusers'
                        ``timestep_spacing``), n -> t = (n + 1) / N, then t_min:
                          linspace  round(linspace(0, N - 1, S)), decreasing;
                          leading   (S - 1 - i) floor(N / S) + offset, i = 0..S-1 (SD: offset 1);
                          trailing  round(N - i N / S) - 1: starts at the last step, n = N - 1.
                        'leading' and 'linspace' (S < N) never start at the last step: the flaw
                        Lin et al. fix with 'trailing'. S evaluations end at t_min (diffusers'
                        DDIM with set_alpha_to_one=False; S - 1 when the last timestep is 0, as on
                        linspace: its released step is the identity); with final_denoise one more.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from diffusion import schedules as schedules_lib
from diffusion.io_utils import read_json
from diffusion.samplers import ays

DEFAULT_KAPPA = 0.8
SPACINGS = ("linspace", "leading", "trailing")
PUBLISHED = tuple(f"ays_{name}" for name in ays.PUBLISHED)
FILE_KINDS = ("ays", "fitted")  # 'ays:<file>', 'fitted:<file>'
GRIDS = schedules_lib.GRIDS + ("logsnr_power",) + SPACINGS + PUBLISHED
FITTED_FORMAT = "fitted_grids_v1"


def discrete_timesteps(num_timesteps: int, num_steps: int, spacing: str,
                       offset: int = 0) -> np.ndarray:
  """The S = num_steps decreasing integer timesteps of N = num_timesteps by ``spacing`` (module
  doc), each in [0, N - 1]."""
  n = schedules_lib.check_int("num_timesteps", num_timesteps, 2)
  k = schedules_lib.check_int("num_steps", num_steps)
  if k > n:
    raise ValueError(f"num_steps={k} exceeds the schedule's {n} timesteps")
  if spacing == "linspace":
    ts = np.round(np.linspace(0, n - 1, k))[::-1]
  elif spacing == "leading":
    ts = (np.arange(k) * (n // k))[::-1] + offset
  elif spacing == "trailing":
    ts = np.round(np.arange(n, 0, -n / k)) - 1
  else:
    raise ValueError(f"spacing={spacing!r}; accepted: {list(SPACINGS)}")
  ts = ts.astype(np.int64)
  if ts.min() < 0 or ts.max() > n - 1:
    raise ValueError(f"{spacing} with offset {offset} gives timesteps outside [0, {n - 1}]: "
                     f"{ts.min()}..{ts.max()}")
  return ts


def parse_spacing(kind: str) -> Optional[Tuple[str, int]]:
  """(spacing, offset) of a 'linspace' / 'leading[:offset]' / 'trailing' kind, None otherwise."""
  name, _, rest = kind.partition(":")
  if name not in SPACINGS:
    return None
  if rest and name != "leading":
    raise ValueError(f"bad grid {kind!r}: only 'leading' takes an offset ('leading:1')")
  try:
    offset = int(rest) if rest else 0
  except ValueError:
    offset = -1
  if offset < 0:
    raise ValueError(f"bad grid {kind!r}: the offset of 'leading:<offset>' is an int >= 0")
  return name, offset


def parse_power(kind: str) -> Optional[float]:
  """kappa of a 'logsnr_power[:kappa]' kind, None for other kinds."""
  if not kind.startswith("logsnr_power"):
    return None
  rest = kind[len("logsnr_power"):]
  if rest == "":
    return DEFAULT_KAPPA
  try:
    kappa = float(rest[1:]) if rest.startswith(":") else None
  except ValueError:
    kappa = None
  if kappa is None or not 0 < kappa < float("inf"):
    raise ValueError(f"bad grid {kind!r}: use 'logsnr_power' or 'logsnr_power:<kappa>' with a "
                     f"finite kappa > 0")
  return kappa


def time_grid(schedule: schedules_lib.Schedule, num_steps: int, kind: str = "karras", *,
              t_min: Optional[float] = None, t_max: Optional[float] = None,
              rho: float = 7.0, sampler: Optional[str] = None) -> np.ndarray:
  """Decreasing float64 times (N+1,) from t_max to t_min; kinds: ``GRIDS``, 'ays:<file>' and
  'fitted:<file>' (see module doc; 'fitted' needs the ``sampler``'s name). Arguments are checked
  as in ``schedules.time_grid`` (num_steps an int >= 1, rho > 0, schedule.t_min <= t_min < t_max
  <= schedule.t_max)."""
  if not isinstance(kind, str):
    raise TypeError(f"grid must be a str, one of {GRIDS}, got {kind!r}")
  prefix, sep, path = kind.partition(":")
  if sep and prefix in FILE_KINDS:
    if prefix == "ays":
      return ays.grid_from_costs(ays.load_costs(path), schedule, num_steps, t_min, t_max)
    return fitted_grid(path, schedule, sampler, num_steps, t_min, t_max)
  if kind in PUBLISHED:
    _check_full_range(schedule, kind, t_min, t_max)
    return ays.published_grid(schedule, kind[len("ays_"):], num_steps)
  spacing = parse_spacing(kind)
  if spacing is not None:
    return _spaced_grid(schedule, num_steps, *spacing, t_min=t_min, t_max=t_max)
  kappa = parse_power(kind)
  if kappa is None:
    if kind not in schedules_lib.GRIDS:
      raise ValueError(f"unknown time grid {kind!r}; available: {GRIDS} "
                       "('logsnr_power:<kappa>' sets the exponent, 'leading:<offset>' the "
                       "offset; 'ays:<file>' / 'fitted:<file>' read a run's optimised grids)")
    return schedules_lib.time_grid(schedule, num_steps, kind, t_min=t_min, t_max=t_max, rho=rho)
  base = schedules_lib.time_grid(schedule, num_steps, "uniform", t_min=t_min, t_max=t_max)
  t_max, t_min = base[0], base[-1]
  u = np.linspace(0.0, 1.0, num_steps + 1, dtype=np.float64)**kappa
  lo, hi = schedule.logsnr(np.float64(t_max)), schedule.logsnr(np.float64(t_min))
  t = np.asarray(schedule.t_from_logsnr(lo + u * (hi - lo)), np.float64)
  t[0], t[-1] = t_max, t_min
  return t


def _spaced_grid(schedule, num_steps, spacing, offset, t_min=None, t_max=None) -> np.ndarray:
  """The times (n + 1) / N of ``discrete_timesteps`` then the schedule's t_min (module doc)."""
  if not hasattr(schedule, "num_timesteps"):
    raise ValueError(f"grid {spacing!r} picks the timesteps of a discrete schedule "
                     f"(vp_discrete); the {schedule.name!r} schedule has none")
  _check_full_range(schedule, spacing, t_min, t_max, "is fixed by the schedule's timesteps")
  n = schedule.num_timesteps
  t = (discrete_timesteps(n, num_steps, spacing, offset).astype(np.float64) + 1.0) / n
  end = float(schedule.t_min)
  if t[-1] > end:
    t = np.append(t, end)
  return t


def _check_full_range(schedule, kind, t_min, t_max, why="fixes its own noise levels") -> None:
  """ValueError unless t_min / t_max are None or the schedule's: grid ``kind`` ``why``."""
  if ((t_min is not None and t_min != schedule.t_min)
      or (t_max is not None and t_max != schedule.t_max)):
    raise ValueError(f"grid {kind!r} {why}: t_min / t_max (or logsnr_min / logsnr_max) cannot "
                     f"be set with it")


def fitted_grid(path: str, schedule: schedules_lib.Schedule, sampler: Optional[str],
                num_steps: int, t_min: Optional[float] = None,
                t_max: Optional[float] = None) -> np.ndarray:
  """The grid of ``sampler`` with ``num_steps`` steps in the fitted-grids file ``path``
  ({'format': FITTED_FORMAT, 'schedule', 'grids': {sampler: {str(N): [times]}}}), checked to
  belong to ``schedule`` and to the requested ends (None: the grid's own)."""
  n = schedules_lib.check_int("num_steps", num_steps)
  doc = read_json(path)
  if doc is None:
    raise ValueError(f"no fitted-grids file {path!r} (python -m experiments.search_grid "
                     f"--method=fit writes one)")
  if not isinstance(doc, dict) or doc.get("format") != FITTED_FORMAT:
    raise ValueError(f"{path} is not a fitted-grids file (format {FITTED_FORMAT!r})")
  if doc.get("schedule") != schedule.name:
    raise ValueError(f"{path} holds grids fitted for the {doc.get('schedule')!r} schedule, not "
                     f"{schedule.name!r}")
  held = {s: sorted(int(k) for k in g) for s, g in doc.get("grids", {}).items()}
  grid = doc.get("grids", {}).get(sampler or "", {}).get(str(n))
  if grid is None:
    raise ValueError(f"{path} holds no grid fitted for sampler {sampler!r} with {n} steps; it "
                     f"holds {held} (sampler: step counts)")
  grid = np.asarray(grid, np.float64)
  ays.check_ends(t_min, t_max, grid[-1], grid[0], "the fitted grid's end", f" ({path})")
  return grid
