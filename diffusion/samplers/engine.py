"""One engine for every sampler that is linear in its history of model outputs.

Most samplers (Euler, Heun, DDIM, DDPM, Euler-Maruyama, DPM-Solver(++), UniPC, DEIS, iPNDM, EDM's
stochastic sampler, ...) are, per denoiser evaluation ("row" r), a fixed linear map

  y_r   = a_r x + sum_j b_rj H_j + c_r z_r                  (evaluation point)
  m_r   = denoise(y_r, t_r)                                  (the one NFE of the row)
  o_r   = p_r y_r + q_r m_r  -> pushed into the history H   (x0, eps, a velocity: any linear form)
  x     <- A_r x + E_r y_r + D_r m_r + sum_j B_rj H_j + C_r z'_r

(plus, opt-in, a constant array c of the data's shape in y_r or in the update: the affine offsets
of DPM-Solver-v3's b_lambda statistic; and per-coordinate coefficients: a_r, b_rj, p_r, A_r, B_rj
given as arrays of the data's shape, multiplying elementwise, for its per-coordinate statistics;
a program without either runs exactly as before)

with coefficients that depend only on the time grid. A family module builds a ``Program`` on the
host in float64 (rows referring to earlier outputs by row index), ``Program.compile`` turns it
into arrays over rows with a ring buffer of the K most recent outputs, and ``run_program`` runs
all rows in one ``lax.scan``. The number of rows is the exact NFE.

Noise: sample b of the batch draws z_r from ``fold_in(fold_in(key, sample_offset + b), 2 r)``
(and z'_r from ``2 r + 1``), so samples do not depend on batch composition. With
``noise='brownian_tree'`` (opt-in, ``run_program``'s argument) z_r and z'_r are instead the
standardised increments of two independent Brownian paths of sample b (keys fold_in(., 0) and
fold_in(., 1) of the same per-sample key) over the row's ``noise_interval`` (``brownian.py``).
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
from typing import Any, Dict, List, Optional, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from diffusion.samplers import brownian as brownian_lib
from diffusion.schedules import Schedule

Array = Any
Lin = Dict[Union[str, int], Any]  # a linear form over symbols 'x', 'y', 'm', 'z' and rows j (floats),
# plus an optional constant 'c': a float64 array of the data's shape (an affine offset); the
# coefficients of 'x' and of rows may be arrays of the data's shape (elementwise, per coordinate)


# ------------------------------------------------------------------------------------------------
# Host-side helpers (float64)
# ------------------------------------------------------------------------------------------------


def f64(x) -> np.ndarray:
  return np.asarray(x, np.float64)


def alpha_sigma(schedule: Schedule, t) -> Tuple[np.ndarray, np.ndarray]:
  """(alpha(t), sigma(t)) in float64 on the host."""
  t = f64(t)
  return f64(schedule.alpha(t)), f64(schedule.sigma(t))


def half_logsnr(schedule: Schedule, t) -> np.ndarray:
  """DPM-Solver's lambda(t) = log(alpha / sigma) = logsnr / 2 (Lu et al. 2022, sec. 3.1)."""
  return 0.5 * f64(schedule.logsnr(f64(t)))


def t_from_half_logsnr(schedule: Schedule, lam) -> np.ndarray:
  return f64(schedule.t_from_logsnr(2.0 * f64(lam)))


_INVERTING = contextvars.ContextVar("inverting", default=False)


@contextlib.contextmanager
def inverting():
  """Inside it ``check_grid`` takes strictly *increasing* grids instead of decreasing ones, so a
  deterministic sampler's program integrates the PF-ODE toward the noise: inversion
  (``registry.build_inverter`` is what enters it; the programs are built while tracing)."""
  token = _INVERTING.set(True)
  try:
    yield
  finally:
    _INVERTING.reset(token)


def check_grid(time_grid, schedule: Schedule, min_len: int = 2,
               closed: bool = False, pure_noise_start: bool = False) -> np.ndarray:
  """A host time grid (N+1,), N >= min_len - 1, as float64, checked: concrete, 1-D, finite,
  strictly decreasing (strictly increasing inside ``inverting()``), inside the schedule's
  [t_min, t_max], alpha and sigma > 0 on it (with ``closed``, the flow-map samplers' grids, >= 0:
  the ends sigma = 0 (data) and alpha = 0 (pure noise) are allowed; with ``pure_noise_start``,
  alpha = 0 at the grid's first time, a zero-terminal-SNR start). Anything else raises a
  ValueError naming the problem."""
  if isinstance(time_grid, jax.core.Tracer):
    raise ValueError("time_grid must be a concrete numpy array (coefficients are computed on the "
                     "host), got a traced value")
  try:
    t = f64(time_grid)
  except (TypeError, ValueError) as e:
    raise ValueError(f"time_grid must be a 1-D array of floats, got {time_grid!r}") from e
  if t.ndim != 1 or t.shape[0] < min_len:
    raise ValueError(f"time_grid must be 1-D with at least {min_len} entries, got shape {t.shape}")
  if not np.all(np.isfinite(t)):
    raise ValueError(f"time_grid must be finite, got {t}")
  if _INVERTING.get():
    if not np.all(np.diff(t) > 0):
      raise ValueError(f"an inversion's time_grid must be strictly increasing (from t_min to "
                       f"t_max), got {t}")
  elif not np.all(np.diff(t) < 0):
    raise ValueError(f"time_grid must be strictly decreasing (from t_max to t_min), got {t}")
  lo, hi = float(schedule.t_min), float(schedule.t_max)
  if t.min() < lo or t.max() > hi:
    raise ValueError(f"time_grid must lie in the {schedule.name} schedule's range [t_min, t_max] "
                     f"= [{lo}, {hi}], got [{t.min()}, {t.max()}] (for the step to sigma = 0 use "
                     f"final_denoise=True)")
  s = f64(schedule.sigma(t))
  a = f64(schedule.alpha(t))
  if closed and np.all(np.isfinite(s)) and np.all(np.isfinite(a)) and np.all(s >= 0) and np.all(
      a >= 0):
    return t
  a_check = a[1:] if pure_noise_start and not _INVERTING.get() and a[0] == 0 else a
  if not (np.all(np.isfinite(s)) and np.all(s > 0) and np.all(np.isfinite(a))
          and np.all(a_check > 0)):
    start = (" (alpha = 0 at the first time, zero terminal SNR: only samplers that start from "
             "pure noise, e.g. 'ddim', or t_max < 1)" if a[0] == 0 else "")
    raise ValueError(f"alpha(t) and sigma(t) must be positive and finite on the whole grid, got "
                     f"t={t}: use t_min > 0 (and final_denoise=True for the step to sigma = 0) "
                     f"and t_max < the schedule's end{start}")
  return t


def subst(outer: Lin, inner: Lin) -> Lin:
  """Substitutes x := inner into the linear form ``outer`` (composition of two updates)."""
  out = {k: v for k, v in outer.items() if k != "x"}
  ax = outer.get("x", 0.0)
  for k, v in inner.items():
    out[k] = out.get(k, 0.0) + ax * v
  return out


def add(*forms: Lin, scale: Optional[List[float]] = None) -> Lin:
  """Linear combination of linear forms."""
  scale = scale or [1.0] * len(forms)
  out: Lin = {}
  for w, f in zip(scale, forms):
    for k, v in f.items():
      out[k] = out.get(k, 0.0) + w * v
  return out


# ------------------------------------------------------------------------------------------------
# Programs
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Row:
  t: float
  y: Lin
  p: float
  q: float
  x: Lin
  noise_interval: Optional[Tuple[float, float]] = None


class Program:
  """Host-side list of rows; each ``eval`` call is one denoiser evaluation and returns its index.

  Args of ``eval``:
    t: time of the evaluation.
    y: evaluation point, linear form over 'x' (current state), 'z' (fresh noise) and earlier rows;
      'c' (optional) a constant array of the data's shape added to it.
    out: (p, q): the stored output is p y + q m (x0: (0, 1); eps: (1/sigma, -alpha/sigma)).
    x: state update, a linear form over 'x', 'y', 'm', 'z' and rows <= this one (and a constant
      'c' as in y). Default: x kept.
    noise_interval: (t_a, t_b), t_a != t_b (stored as (max, min)): the interval of the Brownian clock (the schedule's
      time t) whose standardised increment is this row's z and z' under
      ``noise='brownian_tree'``; usually the step t_s -> t_t the row's noise belongs to. Rows of
      different steps must own disjoint intervals (their increments are then independent).
      Unused by the default noise.
  """

  def __init__(self):
    self.rows: List[Row] = []

  def eval(self, t, y: Optional[Lin] = None, out=(0.0, 1.0), x: Optional[Lin] = None,
           noise_interval: Optional[Tuple[float, float]] = None) -> int:
    r = len(self.rows)
    y = {"x": 1.0} if y is None else dict(y)
    x = {"x": 1.0} if x is None else dict(x)
    for k in y:
      if not (k in ("x", "z", "c") or (isinstance(k, (int, np.integer)) and 0 <= k < r)):
        raise ValueError(f"row {r}: evaluation point may use 'x', 'z', 'c' or rows < {r}, got "
                         f"{k!r}")
    for k in x:
      if not (k in ("x", "y", "m", "z", "c") or (isinstance(k, (int, np.integer))
                                                  and 0 <= k <= r)):
        raise ValueError(f"row {r}: update may use 'x', 'y', 'm', 'z', 'c' or rows <= {r}, got "
                         f"{k!r}")
    if noise_interval is not None:
      a, b = (float(v) for v in noise_interval)
      if not (np.isfinite(a) and np.isfinite(b) and a != b):
        raise ValueError(f"row {r}: noise_interval must be two distinct finite times, got "
                         f"{noise_interval!r}")
      noise_interval = (max(a, b), min(a, b))
    p = f64(out[0]) if np.ndim(out[0]) else float(out[0])  # per-coordinate p: an array
    self.rows.append(Row(float(t), y, p, float(out[1]), x, noise_interval))
    return r

  def set_update(self, r: int, x: Lin):
    """Replaces the state update of row r (e.g. to compose the final step into it)."""
    self.rows[r].x = dict(x)

  def final_denoise(self, t) -> int:
    """The last step to sigma = 0: x <- denoise(x, t) (EDM's Euler step to sigma = 0)."""
    return self.eval(t, y={"x": 1.0}, x={"m": 1.0})

  def __len__(self):
    return len(self.rows)

  def compile(self) -> "Compiled":
    rows = self.rows
    n = len(rows)
    if n == 0:
      raise ValueError("empty program")
    look = 0  # history length K needed
    for r, row in enumerate(rows):
      for j in row.y:
        if isinstance(j, (int, np.integer)):
          look = max(look, r - j)
      for j in row.x:
        if isinstance(j, (int, np.integer)):
          look = max(look, r - j + 1)
    k = look
    arr = lambda: np.zeros((n,), np.float64)
    diag = _diagonal_shape(rows)  # None, or the data shape of per-coordinate coefficients
    c = {name: arr() for name in ("t", "ya", "yc", "p", "q", "xa", "xe", "xd", "xc")}
    yb = np.zeros((n, max(k, 1)), np.float64)
    xb = np.zeros((n, max(k, 1)), np.float64)
    if diag is not None:
      for name in ("ya", "p", "xa"):
        c[name] = np.zeros((n,) + diag)
      yb, xb = (np.zeros((n, max(k, 1)) + diag) for _ in range(2))
    offsets = {}  # 'yo' / 'xo': (n, *data shape) constants, only when some row has one
    for ch, attr in (("yo", "y"), ("xo", "x")):
      cs = [getattr(row, attr).get("c") for row in rows]
      if any(c is not None for c in cs):
        shape = next(np.shape(c) for c in cs if c is not None)
        if any(c is not None and np.shape(c) != shape for c in cs):
          raise ValueError(f"the constants 'c' of a program's rows must share one shape, got "
                           f"{sorted({np.shape(c) for c in cs if c is not None})}")
        offsets[ch] = np.stack([np.zeros(shape) if c is None else f64(c) for c in cs])
    for r, row in enumerate(rows):
      c["t"][r] = row.t
      c["p"][r], c["q"][r] = row.p, row.q
      for key, v in row.y.items():
        if key == "c":
          continue
        if key == "x":
          c["ya"][r] += v
        elif key == "z":
          c["yc"][r] += v
        else:
          yb[r, key % k] += v
      for key, v in row.x.items():
        if key == "c":
          continue
        if key in ("x", "y", "m", "z"):
          c[{"x": "xa", "y": "xe", "m": "xd", "z": "xc"}[key]][r] += v
        else:
          xb[r, key % k] += v
    return Compiled(coef=c, yb=yb, xb=xb, k=k,
                    noise_intervals=tuple(row.noise_interval for row in rows), offsets=offsets,
                    diagonal=diag is not None)


def _diagonal_shape(rows: List[Row]) -> Optional[Tuple[int, ...]]:
  """The one data shape of the rows' array-valued coefficients ('x' and rows in y and x, and p),
  or None when all are floats; ValueError for arrays elsewhere or of different shapes."""
  shapes = set()
  for r, row in enumerate(rows):
    for form, name in ((row.y, "evaluation point"), (row.x, "update")):
      for key, v in form.items():
        if key != "c" and np.ndim(v):
          if key in ("y", "m", "z"):
            raise ValueError(f"row {r}: the {name}'s coefficient of {key!r} must be a float; "
                             f"only 'x' and rows take per-coordinate arrays")
          shapes.add(np.shape(v))
    if np.ndim(row.p):
      shapes.add(np.shape(row.p))
  if len(shapes) > 1:
    raise ValueError(f"per-coordinate coefficients must share one shape, got {sorted(shapes)}")
  return shapes.pop() if shapes else None


@dataclasses.dataclass
class Compiled:
  coef: Dict[str, np.ndarray]
  yb: np.ndarray
  xb: np.ndarray
  k: int
  noise_intervals: Tuple[Optional[Tuple[float, float]], ...] = ()
  offsets: Dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  diagonal: bool = False  # per-coordinate coefficients (ya, p, xa: (n, *S); yb, xb: (n, K, *S))

  @property
  def nfe(self) -> int:
    return int(self.coef["t"].shape[0])


def sample_keys(key, batch: int, sample_offset=0) -> Array:
  """Per-sample keys fold_in(key, sample_offset + b), b < batch; a (B,) batch of keys passes."""
  key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    if key.ndim == 1:
      return key
    idx = sample_offset + jnp.arange(batch)
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(idx)
  if key.ndim == 2:  # raw uint32 keys, one per sample
    return key
  idx = sample_offset + jnp.arange(batch)
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(idx)


def per_sample_normal(keys: Array, counter, shape, dtype) -> Array:
  """z (B, *shape): sample b is normal(fold_in(keys[b], counter))."""
  return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, counter), shape, dtype))(keys)


def bt(t: Array, x: Array) -> Array:
  """A scalar time broadcast to (B,) in x's dtype."""
  return jnp.broadcast_to(jnp.asarray(t, x.dtype), (x.shape[0],))


def stepwise_program(step, schedule: Schedule, time_grid, final_denoise: bool,
                     pure_noise_start: bool = False) -> "Program":
  """The program of a one-step method: ``step(prog, t_s, t_t)`` appends the rows of the step
  t_s -> t_t for each interval of the (checked) grid, then the optional final denoise at t_N."""
  t = check_grid(time_grid, schedule, pure_noise_start=pure_noise_start)
  prog = Program()
  for i in range(len(t) - 1):
    step(prog, t[i], t[i + 1])
  if final_denoise:
    prog.final_denoise(t[-1])
  return prog


def brownian_tables(comp: "Compiled", t_max: float, dtype) -> Dict[str, np.ndarray]:
  """The per-row tables of ``noise='brownian_tree'`` (``brownian.row_tables``) for the rows that
  draw z ('y' channel, path 0) and z' ('x' channel, path 1); ValueError naming a noisy row that
  declares no ``noise_interval``."""
  c = comp.coef
  out = {}
  for ch, col in (("y", "yc"), ("x", "xc")):
    ivs = []
    for r, iv in enumerate(comp.noise_intervals):
      if c[col][r] == 0:
        ivs.append(None)
      elif iv is None:
        raise ValueError(f"noise='brownian_tree': row {r} (t={c['t'][r]}) draws noise but its "
                         f"program gives it no noise_interval (Program.eval(noise_interval=...))")
      else:
        ivs.append(iv)
    ids, wts = brownian_lib.row_tables(ivs, t_max)
    out[f"{ch}_ids"], out[f"{ch}_w"] = ids, wts.astype(np.dtype(dtype))
  return out


def run_program(prog: Union[Program, Compiled], denoise, key, x: Array, cond=None,
                sample_offset=0, noise: str = "independent",
                t_max: Optional[float] = None) -> Tuple[Array, Dict[str, Any]]:
  """Runs a compiled program in one ``lax.scan`` over its rows. Returns (x, {'nfe': rows}).

  ``noise``: 'independent' (default: a fresh normal per draw) or 'brownian_tree' (each row's z
  and z' the standardised increments of the sample's Brownian paths over the row's
  ``noise_interval``, on the clock t in [0, t_max]; ``t_max`` the schedule's, required then).

  The coefficients are arguments of a jitted scan whose static part is only (denoise, number of
  rows, history length, which terms are non-zero), so the same sampler on another time grid (or
  another sampler with the same structure) reuses the compilation; inside an outer ``jit`` it is
  simply inlined.
  """
  comp = prog.compile() if isinstance(prog, Program) else prog
  c = comp.coef
  nz = lambda a: bool(np.any(a != 0))
  use = dict(yb=comp.k > 0 and nz(comp.yb), xb=comp.k > 0 and nz(comp.xb), yc=nz(c["yc"]),
             xc=nz(c["xc"]), xe=nz(c["xe"]), xd=nz(c["xd"]), p=nz(c["p"]),
             ya=nz(c["ya"] != 1.0))
  if comp.diagonal:  # only then: other programs trace exactly as before
    use["diag"] = True
    if comp.coef["xa"].shape[1:] != x.shape[1:]:
      raise ValueError(f"the program's per-coordinate coefficients have the data shape "
                       f"{comp.coef['xa'].shape[1:]}, but x has {x.shape[1:]}")
  for ch in ("yo", "xo"):
    if ch in comp.offsets:  # only then: other programs trace exactly as before
      use[ch] = True
      if comp.offsets[ch].shape[1:] != x.shape[1:]:
        raise ValueError(f"the program's constant offsets have the data shape "
                         f"{comp.offsets[ch].shape[1:]}, but x has {x.shape[1:]}")
  stoch = use["yc"] or use["xc"]
  brownian_lib.check_noise(noise)
  tables = None
  if noise == "brownian_tree" and stoch:
    if t_max is None:
      raise ValueError("noise='brownian_tree' needs t_max, the end of the path's clock (the "
                       "schedule's t_max)")
    tables = brownian_tables(comp, t_max, x.dtype)
  keys = sample_keys(key, x.shape[0], sample_offset) if stoch else None
  coefs = dict(c)
  coefs["yb"], coefs["xb"] = comp.yb, comp.xb
  coefs.update(comp.offsets)
  coefs = {n: np.asarray(v, np.dtype(x.dtype)) for n, v in coefs.items()}
  if tables is None:
    out = _scan(denoise, comp.k, tuple(sorted(use.items())), coefs, x, keys, cond)
  else:
    out = _scan(denoise, comp.k, tuple(sorted(use.items())), coefs, x, keys, cond, tables)
  return out, {"nfe": comp.nfe}


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _scan(denoise, k: int, use_items, coefs, x, keys, cond, tables=None):
  use = dict(use_items)
  dt = x.dtype
  need_h = use["yb"] or use["xb"]
  xs = {n: jnp.asarray(v, dt) for n, v in coefs.items()}
  xs["r"] = jnp.arange(xs["t"].shape[0])
  if tables is not None:
    xs.update(tables)
  shape = x.shape[1:]

  def noise(s, ch, counter):
    if tables is None:
      return per_sample_normal(keys, counter, shape, dt)
    return brownian_lib.per_sample_path_normal(keys, {"y": 0, "x": 1}[ch], s[f"{ch}_ids"],
                                               s[f"{ch}_w"], shape, dt)

  def comb(w, h):
    if use.get("diag"):  # w (K, *S), h (K, B, *S)
      return jnp.sum(w[:, None] * h, axis=0)
    return jnp.tensordot(w, h, axes=1)

  def body(carry, s):
    x, h = carry
    y = s["ya"] * x if use["ya"] else x
    if use["yb"]:
      y = y + comb(s["yb"], h)
    if use["yc"]:
      y = y + s["yc"] * noise(s, "y", 2 * s["r"])
    if use.get("yo"):
      y = y + s["yo"]
    m = denoise(y, bt(s["t"], y), cond).astype(dt)
    if need_h:
      o = s["q"] * m
      if use["p"]:
        o = o + s["p"] * y
      h = jax.lax.dynamic_update_index_in_dim(h, o, s["r"] % k, 0)
    xn = s["xa"] * x
    if use["xe"]:
      xn = xn + s["xe"] * y
    if use["xd"]:
      xn = xn + s["xd"] * m
    if use["xb"]:
      xn = xn + comb(s["xb"], h)
    if use["xc"]:
      xn = xn + s["xc"] * noise(s, "x", 2 * s["r"] + 1)
    if use.get("xo"):
      xn = xn + s["xo"]
    return (xn, h), None

  h0 = jnp.zeros((k,) + x.shape, dt) if need_h else jnp.zeros((0,), dt)
  (x, _), _ = jax.lax.scan(body, (x, h0), xs)
  return x
