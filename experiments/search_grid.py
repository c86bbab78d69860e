"""The intermediate times of a few-step sampler, searched on a trained run's EMA model
(``diffusion.samplers.grid_search``: Consistency Models' greedy search, sec. 6 / App. C).

  python -m experiments.search_grid --config=FILE --workdir=W --num_steps=2 --metric=sw
      [--iterations=8] [--sweeps=0] [--num_samples=N] [--step=S]

For each candidate grid the run's sampler (config.sampling.sampler and its hyper-parameters,
with the candidate as sampling.time_grid) draws the first N samples of the same sequence
(seed + 2, as --mode=sweep: sample i's noise depends on (seed, i) only, so every candidate sees
the same starting points and re-noising draws), and eval's metric scores them:

  sw    sliced Wasserstein SW_2 against the first data.num_heldout held-out points (eval's
        ``eval_common.sample_distances``: eval.sw_projections directions from the seed);
  mmd   the unbiased MMD^2 of the first eval.mmd_points of each (the same function);
  fid   FID against eval.fid_stats (images; ``eval_common.fid_metrics``, eval's, N samples).

N defaults to eval.sweep_num_samples. The ends of the grid are sampling.t_min / t_max (None: the
schedule's); the searched grid has num_steps + 1 times. Writes
W/grids/step_<S>_<sampler>_<num_steps>steps_<metric>_<hash>.json (the hash of every setting
that changes the result: the checkpoint step, sampler and hyper-parameters, search settings,
number of samples, metric settings, seed, sampling dtype and clipping), holding the grid, the
search's trace and the settings; a file of the same name holds the same search, so it is read
back and printed, never recomputed or overwritten. Ends by printing the
``--config.sampling.num_steps=... --config.sampling.time_grid=...`` overrides that sample with
the grid (--mode=sample and --mode=eval take them as they are).

Two more methods choose grids for the run's deterministic samplers (docs/samplers.md, "Optimised
time grids"):

  --method=fit  --num_steps=5,10 [--samplers=dpmpp_2m,unipc] [--num_samples=N]
      [--reference_sampler=dpmpp_3m --reference_steps=100] [--max_evals=300]
      each sampler's grid for each step count fitted to its own error against the model's fine
      solve (``diffusion.samplers.grid_fit``) from the first N noise draws of seed + 5;
      writes W/grids/fit_step_<S>_<hash>.json (every grid in one file) and prints
      --config.sampling.grid=fitted:<file>, which sample, eval and sweep take for any sampler
      and step count the file holds;
  --method=ays  [--num_samples=N] [--num_nodes=128] [--ays_coupling=brownian|shared]
      Align Your Steps' KLUB of every step between K noise levels from the first N training
      examples (``diffusion.samplers.ays``); writes W/grids/ays_step_<S>_<hash>.npz and prints
      --config.sampling.grid=ays:<file>, the least-KLUB grid for any sampler and step count.

  --method=ems  [--num_samples=N] [--num_intervals=250]
      DPM-Solver-v3's empirical model statistics of the EMA model on the first N training
      examples (``diffusion.samplers.ems``; not a grid: what the ``dpm_solver_v3`` sampler
      reads); writes W/grids/ems_step_<S>_<hash>.npz and prints
      --config.sampling.sampler=dpm_solver_v3 --config.sampling.statistics=<file>.

All three refuse conditional models (the grid would depend on the labels drawn) and, like the greedy
search, never recompute or overwrite a file of the same name.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from absl import app, flags, logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from diffusion import checkpoint, networks
from diffusion.config_checks import ConfigError
from diffusion.io_utils import read_json
from diffusion.metrics import inception
from diffusion.samplers import ays, ems, grid_fit, grid_search, registry
from diffusion.samplers import grids as grids_lib
from experiments import (build, cli, eval_common, generate, results, runtime, validate,
                         writers)
from experiments.setup import restore_params
from experiments.writers import say

Config = ml_collections.ConfigDict
GRID_DIR = "grids"
METRICS = {"sw": "sliced_wasserstein", "mmd": "mmd", "fid": "fid"}
METHODS = ("greedy", "fit", "ays", "ems")


def check_request(config: Config, num_steps: int, metric: str, iterations: int, sweeps: int,
                  num_samples: Optional[int]) -> int:
  """ConfigError unless the search can run on ``config``: num_steps >= 1, a known metric (fid:
  images with eval.fid_stats), iterations / sweeps >= 0, at least 2 samples. Returns the number
  of samples."""
  if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
    raise ConfigError(f"--num_steps={num_steps!r} must be an int >= 1")
  if metric not in METRICS:
    raise ConfigError(f"--metric={metric!r} is not accepted; accepted: {sorted(METRICS)}")
  if metric == "fid" and (build.is_toy(config) or config.eval.fid_stats is None):
    raise ConfigError("--metric=fid needs image data and config.eval.fid_stats (reference "
                      "statistics of python -m experiments.reference_stats); toy data: sw or mmd")
  for name, v in (("iterations", iterations), ("sweeps", sweeps)):
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
      raise ConfigError(f"--{name}={v!r} must be an int >= 0")
  n = int(config.eval.sweep_num_samples if num_samples is None else num_samples)
  if n < 2:
    raise ConfigError(f"--num_samples={n} must be >= 2 (the metrics compare two sets)")
  if config.sampling.time_grid is not None:
    raise ConfigError("config.sampling.time_grid is set; the search chooses it: leave it unset")
  return n


def scorer(config: Config, metric: str) -> Callable[[np.ndarray], float]:
  """samples -> eval's metric ``metric`` (module doc), its references read once."""
  if metric == "fid":
    stats = eval_common.load_fid_stats(config)
    params = inception.load_params()
    return lambda x: float(eval_common.fid_metrics(config, x, stats, params)["fid"])
  held = build.heldout(config, int(config.data.num_heldout))
  return lambda x: float(eval_common.sample_distances(config, x, held)[METRICS[metric]])


def settings(config: Config, step: int, num_steps: int, metric: str, iterations: int,
             sweeps: int, num_samples: int, endpoint_margin: float) -> Dict[str, Any]:
  """Every setting that changes the search's result (its file name's hash)."""
  s = config.sampling
  out = {"step": int(step), "sampler": str(s.sampler),
         "hyperparameters": validate.sampler_hparams(config), "num_steps": int(num_steps),
         "t_min": s.t_min, "t_max": s.t_max, "metric": metric, "iterations": int(iterations),
         "sweeps": int(sweeps), "endpoint_margin": float(endpoint_margin),
         "num_samples": int(num_samples), "seed": int(config.seed),
         "compute_dtype": str(s.compute_dtype), "clip_denoised": bool(s.clip_denoised)}
  if metric == "fid":
    out["fid"] = results._fid(config)
  else:
    out["heldout"] = results._heldout(config)
    out["sw_projections" if metric == "sw" else "mmd_points"] = int(
        config.eval.sw_projections if metric == "sw" else config.eval.mmd_points)
  return out


def result_path(workdir: str, key: Dict[str, Any]) -> str:
  name = (f"step_{key['step']}_{key['sampler']}_{key['num_steps']}steps_{key['metric']}_"
          f"{results._hash(key)}.json")
  return os.path.join(workdir, GRID_DIR, name)


def overrides(grid: Sequence[float]) -> str:
  """The command-line overrides that sample with ``grid``."""
  times = ", ".join(repr(float(t)) for t in grid)
  return (f"--config.sampling.num_steps={len(grid) - 1} "
          f"--config.sampling.time_grid='({times})'")


def run(config: Config, workdir: str, num_steps: int, metric: str, *, iterations: int = 8,
        sweeps: int = 0, num_samples: Optional[int] = None, step: Optional[int] = None,
        endpoint_margin: float = 1e-4) -> Dict[str, Any]:
  """Searches the grid on the EMA parameters of ``workdir``'s checkpoint ``step`` (None: the
  newest) and writes it (module doc). Returns {'grid', 'trace', 'path', 'settings', 'reused'}."""
  n = check_request(config, num_steps, metric, iterations, sweeps, num_samples)
  validate.validate(config, "sample", workdir)
  validate.check_writable(os.path.join(workdir, GRID_DIR),
                          f"--workdir={workdir!r} (its {GRID_DIR}/ folder)")
  score_samples = scorer(config, metric)  # bad references are refused before any work
  s, params, step = restore_params(config, workdir, step)
  key = settings(config, step, num_steps, metric, iterations, sweeps, n, endpoint_margin)
  path = result_path(workdir, key)
  saved = read_json(path)
  if saved is not None:
    results.check_same({"key": saved.get("settings")}, results.Output(
        "search", step, "", results._hash(key), key), path)
    say(f"search_grid: {path} holds this search already (same settings); read back")
    return {"grid": np.asarray(saved["grid"]), "trace": saved["trace"], "path": path,
            "settings": key, "reused": True}
  sample_key = jax.random.PRNGKey(int(config.seed) + 2)

  def score(grid: np.ndarray) -> float:
    cfg = ml_collections.ConfigDict(config.to_dict())
    cfg.sampling.num_steps = len(grid) - 1
    cfg.sampling.time_grid = tuple(float(t) for t in grid)
    t0 = time.time()
    x, _ = generate.generate(dataclasses.replace(s, config=cfg), params, n, sample_key)
    results.check_finite(cfg, x, f"samples of the grid {list(cfg.sampling.time_grid)}",
                         "the search stopped; nothing was written")
    value = score_samples(np.asarray(x))
    say(f"search_grid: {metric} {value:.5g} on {np.array2string(grid, precision=5)} "
        f"({time.time() - t0:.1f} s)")
    return value

  grid, trace = grid_search.search_time_grid(
      score, s.schedule, num_steps, t_min=config.sampling.t_min, t_max=config.sampling.t_max,
      iterations=iterations, sweeps=sweeps, endpoint_margin=endpoint_margin)
  if writers.is_main():
    writers.write_json(path, {"grid": [float(t) for t in grid], "trace": trace,
                              "settings": key, "overrides": overrides(grid)})
  say(f"search_grid: {metric} {trace['score']:.5g} with {num_steps} steps on the searched grid "
      f"(one step: {trace['one_step_score']:.5g}; {trace['num_evaluations']} evaluations) -> "
      f"{path}")
  return {"grid": grid, "trace": trace, "path": path, "settings": key, "reused": False}


def _check_method_request(config: Config, step_counts: Sequence[int],
                          samplers: Sequence[str]) -> None:
  """ConfigError unless fit / ays can run on ``config``."""
  if config.model.conditional:
    raise ConfigError("--method=fit / ays fit one grid for an unconditional model; "
                      "config.model.conditional is True")
  if config.sampling.time_grid is not None:
    raise ConfigError("config.sampling.time_grid is set; the search chooses it: leave it unset")
  for n in step_counts:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
      raise ConfigError(f"--num_steps={n!r} must be ints >= 1")
  for name in samplers:
    info = registry.sampler_info(name)
    if info.kind != "deterministic" or info.adaptive:
      raise ConfigError(f"--samplers: {name!r} is {'adaptive' if info.adaptive else info.kind}; "
                        f"a fitted grid needs a fixed-step deterministic sampler")


def _model_denoiser(s, params, config: Config) -> Callable:
  """The EMA model's denoiser (the network's dtype of sampling.compute_dtype; clipped as
  sampling.clip_denoised), unconditional."""
  base = networks.eval_denoiser(s.net, params, s.schedule, s.param,
                                compute_dtype=str(config.sampling.compute_dtype))
  clip = bool(config.sampling.clip_denoised)

  def denoise(x, t, cond=None):
    x0 = base(x, t, None)
    return jnp.clip(x0, -1.0, 1.0) if clip else x0

  return denoise


def _method_path(workdir: str, method: str, key: Dict[str, Any]) -> str:
  ext = "json" if method == "fit" else "npz"
  return os.path.join(workdir, GRID_DIR, f"{method}_step_{key['step']}_{results._hash(key)}.{ext}")


def run_fit(config: Config, workdir: str, step_counts: Sequence[int], samplers: Sequence[str], *,
            num_samples: Optional[int] = None, step: Optional[int] = None,
            reference_sampler: str = "dpmpp_3m", reference_steps: int = 100,
            max_evals: int = 300) -> Dict[str, Any]:
  """--method=fit (module doc). Returns {'path', 'grids', 'reused'}."""
  s, params, key, path = _method_setup(
      config, workdir, "fit", num_samples, step, min_samples=1, uses_data=False,
      step_counts=step_counts, samplers=list(samplers) + [reference_sampler],
      settings={"samplers": sorted(samplers), "num_steps": sorted(int(k) for k in step_counts),
                "reference_sampler": reference_sampler,
                "reference_steps": int(reference_steps), "max_evals": int(max_evals)})
  n = key["num_samples"]
  saved = read_json(path)
  if saved is not None:
    if saved.get("settings") != json_roundtrip(key):
      raise ConfigError(f"{path} holds a fit with other settings; it is never overwritten")
    say(f"search_grid: {path} holds this fit already (same settings); read back")
    return {"path": path, "grids": saved["grids"], "reused": True}
  denoise = _model_denoiser(s, params, config)
  shape = (n,) + tuple(s.example["x"].shape[1:])
  x_T = s.schedule.prior_sample(jax.random.PRNGKey(int(config.seed) + 5), shape)
  t0 = time.time()
  ref_run = registry.build_sampler(reference_sampler, s.schedule, reference_steps,
                                   grid="logsnr_power", t_min=config.sampling.t_min,
                                   t_max=config.sampling.t_max, jit=False)
  reference, _ = ref_run(denoise, jax.random.PRNGKey(0), x_T)
  say(f"search_grid: reference {reference_sampler} x {reference_steps} steps "
      f"({time.time() - t0:.1f} s)")
  out_grids: Dict[str, Dict[str, list]] = {}
  traces: Dict[str, Dict[str, Any]] = {}
  for name in samplers:
    loss = grid_fit.trajectory_loss(name, s.schedule, denoise, x_T, reference)
    for k in sorted(step_counts):
      t0 = time.time()
      grid, trace = grid_fit.fit_grid(loss, s.schedule, k, t_min=config.sampling.t_min,
                                      t_max=config.sampling.t_max, max_evals=max_evals)
      out_grids.setdefault(name, {})[str(k)] = [float(t) for t in grid]
      traces.setdefault(name, {})[str(k)] = trace
      say(f"search_grid: {name} {k} steps: loss {trace['init_loss']:.4g} ({trace['init']}) -> "
          f"{trace['loss']:.4g} in {trace['num_evaluations']} runs ({time.time() - t0:.1f} s)")
  if writers.is_main():
    writers.write_json(path, {"format": grids_lib.FITTED_FORMAT, "schedule": s.schedule.name,
                              "grids": out_grids, "traces": traces, "settings": key})
  return {"path": path, "grids": out_grids, "reused": False}


def json_roundtrip(value: Any) -> Any:
  """``value`` as it reads back from JSON (tuples become lists)."""
  return json.loads(json.dumps(value))


def _data_samples(config: Config, n: int) -> np.ndarray:
  """The first ``n`` training examples (the run's data pipeline, batches 0, 1, ...)."""
  it = build.train_batches(config, 0, 0, 1)
  rows = []
  try:
    while sum(len(r) for r in rows) < n:
      rows.append(np.asarray(next(it)["x"]))
  finally:
    close = getattr(it, "close", None)
    if close is not None:
      close()
  return np.concatenate(rows)[:n]


def _method_setup(config: Config, workdir: str, method: str, num_samples: Optional[int],
                  step: Optional[int], *, settings: Dict[str, Any], min_samples: int = 2,
                  uses_data: bool = True, step_counts: Sequence[int] = (),
                  samplers: Sequence[str] = ()) -> Tuple[Any, Any, Dict[str, Any], str]:
  """What --method=fit, ays and ems share: the checks (an unconditional model, the step counts
  and samplers, at least ``min_samples`` samples, a writable grids/ folder; with ``uses_data`` a
  run trained on data), the restored EMA parameters and the result's key (every setting that
  changes it, ``settings`` and, with ``uses_data``, the data's name included) and path. Returns
  (setup, params, key, path)."""
  _check_method_request(config, step_counts, samplers)
  n = int(config.eval.sweep_num_samples if num_samples is None else num_samples)
  if n < min_samples:
    raise ConfigError(f"--num_samples={n} must be >= {min_samples}")
  validate.validate(config, "sample", workdir)
  validate.check_writable(os.path.join(workdir, GRID_DIR),
                          f"--workdir={workdir!r} (its {GRID_DIR}/ folder)")
  if uses_data and build.objective(config).batch_source == "pairs":
    raise ConfigError(f"--method={method} needs the data; this run trains on (noise, sample) "
                      f"pairs")
  s, params, step = restore_params(config, workdir, step)
  key = {"method": method, "step": int(step), "num_samples": n, **settings,
         "seed": int(config.seed), "t_min": config.sampling.t_min,
         "t_max": config.sampling.t_max, "compute_dtype": str(config.sampling.compute_dtype),
         "clip_denoised": bool(config.sampling.clip_denoised)}
  if uses_data:
    key["data"] = str(config.data.name)
  return s, params, key, _method_path(workdir, method, key)


def run_ays(config: Config, workdir: str, *, num_samples: Optional[int] = None,
            step: Optional[int] = None, num_nodes: int = 128,
            coupling: str = "brownian") -> Dict[str, Any]:
  """--method=ays (module doc). Returns {'path', 'costs', 'reused'}."""
  if coupling not in ays.COUPLINGS:
    raise ConfigError(f"--ays_coupling={coupling!r}; accepted: {list(ays.COUPLINGS)}")
  s, params, key, path = _method_setup(config, workdir, "ays", num_samples, step,
                                       settings={"num_nodes": int(num_nodes), "coupling": coupling})
  if os.path.exists(path):
    c = ays.load_costs(path)
    say(f"search_grid: {path} holds these AYS costs already; read back")
    return {"path": path, "costs": c, "reused": True}
  t0 = time.time()
  c = ays.klub_costs(_model_denoiser(s, params, config), s.schedule,
                     jnp.asarray(_data_samples(config, key["num_samples"])),
                     jax.random.PRNGKey(int(config.seed) + 6), num_nodes=num_nodes,
                     t_min=config.sampling.t_min, t_max=config.sampling.t_max,
                     coupling=coupling)
  say(f"search_grid: AYS costs on {num_nodes} noise levels x {key['num_samples']} examples "
      f"({time.time() - t0:.1f} s)")
  if writers.is_main():
    os.makedirs(os.path.dirname(path), exist_ok=True)
    ays.save_costs(path, c, key)
  return {"path": path, "costs": c, "reused": False}


def run_ems(config: Config, workdir: str, *, num_samples: Optional[int] = None,
            step: Optional[int] = None, num_intervals: int = 250) -> Dict[str, Any]:
  """--method=ems (module doc). Returns {'path', 'reused'}."""
  s, params, key, path = _method_setup(config, workdir, "ems", num_samples, step,
                                       settings={"num_intervals": int(num_intervals)})
  if os.path.exists(path):
    ems.load_ems(path).check_schedule(s.schedule)
    say(f"search_grid: {path} holds these statistics already; read back")
    return {"path": path, "reused": True}
  t0 = time.time()
  n = key["num_samples"]
  stats = ems.estimate_ems(_model_denoiser(s, params, config), s.schedule,
                           jnp.asarray(_data_samples(config, n)),
                           jax.random.PRNGKey(int(config.seed) + 7), num_intervals=num_intervals,
                           t_min=config.sampling.t_min, t_max=config.sampling.t_max,
                           batch_size=min(n, 256))
  say(f"search_grid: EMS on {num_intervals} lambda intervals x {n} examples "
      f"({time.time() - t0:.1f} s)")
  if writers.is_main():
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp.npz"
    stats.save(tmp)
    os.replace(tmp, path)
  return {"path": path, "reused": False}


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {list(argv[1:])}")
  f = flags.FLAGS
  if f["mode"].present:
    raise app.UsageError("--mode is not a flag of experiments.search_grid")
  if f.config is None or not f.workdir:
    raise app.UsageError("--config and --workdir are required")
  if f.method in ("greedy", "fit") and not f.num_steps:
    raise app.UsageError(f"--method={f.method} needs --num_steps")
  if not f["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  runtime.announce()
  try:
    counts = [int(v) for v in f.num_steps]
  except ValueError:
    raise app.UsageError(f"--num_steps={f.num_steps} must be ints") from None
  try:
    if f.method == "greedy":
      if len(counts) != 1:
        raise ConfigError(f"--method=greedy searches one step count; got --num_steps={counts}")
      out = run(f.config, f.workdir, counts[0], f.metric, iterations=f.iterations,
                sweeps=f.sweeps, num_samples=f.num_samples, step=f.step)
    elif f.method == "fit":
      out = run_fit(f.config, f.workdir, counts, f.samplers or [str(f.config.sampling.sampler)],
                    num_samples=f.num_samples, step=f.step,
                    reference_sampler=f.reference_sampler, reference_steps=f.reference_steps,
                    max_evals=f.max_evals)
    elif f.method == "ays":
      out = run_ays(f.config, f.workdir, num_samples=f.num_samples, step=f.step,
                    num_nodes=f.num_nodes, coupling=f.ays_coupling)
    else:
      out = run_ems(f.config, f.workdir, num_samples=f.num_samples, step=f.step,
                    num_intervals=f.num_intervals)
  except (ConfigError, ValueError, FileNotFoundError, checkpoint.WorkdirMismatchError,
          checkpoint.CheckpointError) as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(1)
  if f.method == "greedy":
    print(f"sample with the searched grid: {overrides(out['grid'])}", flush=True)
  elif f.method == "ems":
    print(f"sample with the statistics: --config.sampling.sampler=dpm_solver_v3 "
          f"--config.sampling.statistics={out['path']}", flush=True)
  else:
    kind = "fitted" if f.method == "fit" else "ays"
    print(f"sample with the {kind} grid: --config.sampling.grid={kind}:{out['path']}", flush=True)


if __name__ == "__main__":
  cli.define_flags()  # --config (with overrides) and --workdir, as experiments.main has them
  flags.DEFINE_enum("method", "greedy", list(METHODS), "greedy: CM's search on a metric; fit: "
                    "grids fitted to each sampler's error; ays: Align Your Steps' KLUB costs.")
  flags.DEFINE_list("num_steps", [], "The sampler's steps N (the grid has N + 1 times); "
                    "--method=fit takes several.")
  flags.DEFINE_list("samplers", [], "--method=fit: the samplers (default: the config's).")
  flags.DEFINE_string("reference_sampler", "dpmpp_3m", "--method=fit: the fine solve's sampler.")
  flags.DEFINE_integer("reference_steps", 100, "--method=fit: the fine solve's steps.")
  flags.DEFINE_integer("max_evals", 300, "--method=fit: sampler runs per fitted grid.")
  flags.DEFINE_integer("num_nodes", 128, "--method=ays: noise levels of the KLUB lattice.")
  flags.DEFINE_integer("num_intervals", 250, "--method=ems: lambda intervals of the EMS grid.")
  flags.DEFINE_enum("ays_coupling", "brownian", ["brownian", "shared"], "--method=ays: the noise "
                    "of the levels: one Brownian path (the exact KLUB) or one eps.")
  flags.DEFINE_enum("metric", "sw", sorted(METRICS), "What the search minimises (eval's).")
  flags.DEFINE_integer("iterations", 8, "Golden-section steps per searched time.")
  flags.DEFINE_integer("sweeps", 0, "Passes of coordinate refinement after CM's greedy stages.")
  flags.DEFINE_integer("num_samples", None, "Samples per candidate grid (default: "
                       "eval.sweep_num_samples).")
  flags.DEFINE_integer("step", None, "The checkpoint (default: the newest).")
  app.run(main, flags_parser=cli.parse_flags)
