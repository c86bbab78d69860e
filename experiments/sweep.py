"""The sweep driver: sample quality against NFE for several samplers on one checkpoint.

A CPU-sized version of the tables of the DPM-Solver and UniPC papers (Lu et al. 2022, Table 3;
Zhao et al. 2023, Table 1): for each sampler in ``eval.sweep_samplers`` and each NFE budget in
``eval.sweep_nfe``, the largest ``num_steps`` whose exact NFE (the registry's formula) fits the
budget, ``eval.sweep_num_samples`` samples from the EMA parameters (sample i's noise depends on
(seed, i) only, so every cell sees the same starting points, and a cell draws the first samples
--mode=eval draws with its sampler and steps), scored by what the data kind allows (``scorer``):

  images    FID and KID against ``eval.fid_stats`` (``eval_common.fid_metrics``, eval's).
  toy 2-D   sliced Wasserstein SW_2 and the unbiased MMD^2 against the first
            ``data.num_heldout`` held-out points (``eval_common.sample_distances``, eval's:
            ``eval.sw_projections`` directions from the seed, the first ``eval.mmd_points``).

  python -m experiments.main --config=configs/digits/vp.py --workdir=W --mode=sweep \\
      --config.eval.fid_stats=STATS.npz --config.eval.sweep_samplers=euler,dpmpp_2m,unipc \\
      --config.eval.sweep_nfe=5,10,20
  python -m experiments.main --config=configs/toy/checkerboard_vp.py --workdir=W --mode=sweep \\
      --config.eval.sweep_samplers=euler,heun,dpmpp_2m --config.eval.sweep_nfe=4,8,16

What a toy sweep does not report, and why. The model's NLL (--mode=eval's PF-ODE likelihood of
held-out points) is a property of the checkpoint, the same number in every cell, not of a
sampler: --mode=eval reports it, and it would cost more than the sweep itself (the demo
checkpoint's 2,000-point NLL took 42 s, the whole toy sweep above 25 s with a warm compile
cache, on 2 shared CPU cores; README.md). The mean exact data
log-density of a cell's samples (8gaussians, checkerboard and rings have one) is not a score of
sample quality: samples collapsed onto the modes score higher than the data themselves, and on
checkerboard one sample off the support makes it -inf; eval does not report it either.

Writes, beside each other (``<name>`` is ``experiments.results.output``'s: the grid, the
conditioning's tag and a hash of every setting that changes a cell, so sweeps with other
settings never share a file):
  eval/sweep_step_<step>_<name>.json  every finished cell and the settings, rewritten atomically
                                      after each, so an interrupted sweep resumes from the
                                      finished cells
  eval/sweep_step_<step>_<name>.md    the tables (FID and KID x 1000; toy: SW_2 and MMD^2 x 1000)
  eval/sweep_step_<step>_<name>.png   the same metrics against exact NFE, one line per sampler,
                                      log x (``plots.metric_vs_nfe``)
Cells are keyed by (sampler, NFE budget) inside the .json: a sweep with the same settings and
other lists reuses the cells it has and adds the others, and the tables and the plot show every
cell of the file. Non-finite samples in a cell are an error (``results.NonFiniteSamplesError``),
that cell not written.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Dict, List, Mapping, Sequence, Tuple

import jax
import ml_collections
import numpy as np

from diffusion import checkpoint
from diffusion.io_utils import atomic_write, read_json
from diffusion.metrics import inception
from experiments import (build, conditioning, eval_common, generate, plots, results, signals,
                         writers)
from experiments.setup import Setup, restore_params
from experiments.sweep_grid import (cell_config, markdown_table, parse_list, sampler_hparams_for,
                                    steps_for_nfe)
from experiments.validate import validate
from experiments.writers import say

Config = ml_collections.ConfigDict


@dataclasses.dataclass(frozen=True)
class Scorer:
  """How the cells' samples are scored (``scorer``). ``score(x (n, ...))`` -> the cell's metrics;
  ``tables``: (metric, title, scale, format) of each table and plot panel; ``against``: what the
  samples are compared with (the tables' header); ``extra``: fields written into the .json."""
  score: Callable[[np.ndarray], Dict[str, Any]]
  tables: Tuple[Tuple[str, str, float, str], ...]
  against: str
  extra: Dict[str, Any]


def scorer(config: Config) -> Scorer:
  """Toy data: SW_2 and MMD^2 against held-out points; images: FID and KID against
  eval.fid_stats (refused in one line if they do not fit the data)."""
  e, m = config.eval, int(config.eval.mmd_points)
  if build.is_toy(config):
    held = build.heldout(config, int(config.data.num_heldout))
    return Scorer(
        score=lambda x: eval_common.sample_distances(config, x, held),
        tables=(("sliced_wasserstein", "sliced Wasserstein SW_2", 1.0, ".3f"),
                ("mmd", "MMD^2 x 1000", 1e3, ".3f")),
        against=(f"{len(held)} held-out points (data.heldout_seed {config.data.heldout_seed}), "
                 f"SW_2 over {e.sw_projections} directions, unbiased MMD^2 of the first "
                 f"{min(m, int(e.sweep_num_samples))} samples and {min(m, len(held))} held-out "
                 f"points; the model's NLL (the same in every cell) is --mode=eval's"),
        extra={})
  stats = eval_common.load_fid_stats(config)
  inception_params = inception.load_params()
  return Scorer(score=lambda x: eval_common.fid_metrics(config, x, stats, inception_params),
                tables=(("fid", "FID", 1.0, ".2f"), ("kid", "KID x 1000", 1e3, ".2f")),
                against=f"reference statistics {os.path.basename(e.fid_stats)}",
                extra={"fid_stats": e.fid_stats})


def _cell_key(c: Mapping[str, Any]) -> Tuple[str, int, int]:
  return c["sampler"], int(c["nfe_budget"]), int(c["num_samples"])


def run(config: Config, workdir: str) -> Dict[str, Any]:
  """Runs (or resumes) the sweep on the checkpoint ``eval.step`` (default: the latest).

  SIGTERM/SIGINT: one line, exit 128 + signum; the finished cells are kept.
  """
  validate(config, "sweep", workdir)
  with signals.RunSignals("set-up", "nothing written") as sig:
    return _run(config, workdir, sig)


def _run(config: Config, workdir: str, sig: signals.RunSignals) -> Dict[str, Any]:
  e = config.eval
  samplers = parse_list("eval.sweep_samplers", e.sweep_samplers, str)
  budgets = parse_list("eval.sweep_nfe", e.sweep_nfe, int)
  n = int(e.sweep_num_samples)
  plan = [(s, b, *steps_for_nfe(s, b, sampler_hparams_for(config, s)))
          for s in samplers for b in budgets]
  score = scorer(config)  # before the restore: bad FID statistics are refused before any work
  where = os.path.join(workdir, checkpoint.CKPT_DIR)
  step = eval_common.steps_to_evaluate(config.eval, eval_common.checkpoint_steps(workdir),
                                       where)[-1]
  setup, params, step = restore_params(config, workdir, step=step)  # None: newest intact
  cond_plan = conditioning.plan(config, setup, "eval")  # labels, guidance: as in eval
  res = results.output(config, "sweep", step, cond_plan.guide_step)
  json_path = results.sweep_path(workdir, res, "json")
  cells = _saved_cells(json_path, res)
  done = {_cell_key(c) for c in cells}
  for name, budget, steps, used in plan:
    if (name, budget, n) in done:
      say(f"sweep: {name} at NFE {budget} already in {json_path}; skipped")
      continue
    sig.phase = f"the sweep cell {name} at NFE {budget}"
    sig.nothing_saved = f"the finished cells are in {json_path}; --mode=sweep resumes from them"
    cells.append(_cell(setup, params, cond_plan, name, budget, steps, used, n, score.score,
                       json_path))
    if writers.is_main():
      with sig.deferred():
        os.makedirs(os.path.dirname(json_path), exist_ok=True)
        writers.write_json(json_path, {"step": step, **score.extra,
                                       "settings": res.settings(), "cells": cells})
    m = cells[-1]
    say(f"sweep: {name} NFE {m['nfe']} ({steps} steps): "
        + ", ".join(f"{title} {m[k] * scale:{fmt}}" for k, title, scale, fmt in score.tables
                    if k in m))
  mine = [c for c in cells if c["num_samples"] == n]
  # Every cell of the file (this run's lists first): another run's cells are never dropped.
  samplers = list(dict.fromkeys(samplers + [c["sampler"] for c in mine]))
  budgets = sorted(set(budgets) | {int(c["nfe_budget"]) for c in mine})
  tables = _tables(score, mine, budgets, samplers)
  md_path, png_path = (results.sweep_path(workdir, res, ext) for ext in ("md", "png"))
  if writers.is_main():
    with sig.deferred():
      _write_outputs(config, score, md_path, png_path, step, n, mine, samplers, tables)
  say(tables)
  say(f"sweep: {len(mine)} cells of the checkpoint at step {step} in {json_path}, {md_path} "
      f"and {png_path}")
  return {"step": step, "cells": cells, "json": json_path, "table": md_path, "plot": png_path}


def _saved_cells(json_path: str, res: results.Output) -> List[Dict[str, Any]]:
  """The cells of the sweep file ``json_path`` ([] if there is none); a file of other settings
  is refused (``results.OutputConflictError``)."""
  saved = read_json(json_path)
  if saved is None:
    return []
  results.check_same(saved.get("settings", {}), res, json_path)
  return saved["cells"]


def _cell(setup: Setup, params, cond_plan: conditioning.Plan, name: str, budget: int,
          steps: int, used: int, n: int, score: Callable[[np.ndarray], Dict[str, Any]],
          json_path: str) -> Dict[str, Any]:
  """One cell: n samples of sampler ``name`` with ``steps`` steps (``used`` NFE, checked), their
  ``score`` and the timings. Non-finite samples raise ``results.NonFiniteSamplesError`` (the
  cell is not written to ``json_path``)."""
  config = setup.config
  cell_setup = dataclasses.replace(setup, config=cell_config(config, name, steps))
  t0 = time.time()
  x, info = generate.generate(cell_setup, params, n, jax.random.PRNGKey(config.seed + 2),
                              progress=writers.Progress(f"sweep {name} NFE {used}", n,
                                                        "samples"), plan=cond_plan)
  t_sample = time.time() - t0
  nfe = int(np.asarray(info.get("nfe", -1)))
  if nfe != used:
    raise RuntimeError(f"sampler {name!r} with {steps} steps ran {nfe} NFE; its registry "
                       f"formula says {used}")
  results.check_finite(cell_setup.config, x, f"samples of the sweep cell {name} at NFE {budget}",
                       f"that cell was not written to {json_path} (the finished cells are kept)")
  m = score(np.asarray(x))
  return {"sampler": name, "nfe_budget": budget, "nfe": nfe, "num_steps": steps,
          "num_samples": n, "sample_seconds": t_sample,
          "score_seconds": time.time() - t0 - t_sample, **m}


def _tables(score: Scorer, cells: Sequence[Dict[str, Any]], budgets: Sequence[int],
            samplers: Sequence[str]) -> str:
  """The markdown tables of ``score.tables``, each under its title."""
  return "\n\n".join(f"{title}:\n\n" + markdown_table(cells, budgets, samplers, k, scale, fmt)
                     for k, title, scale, fmt in score.tables)


def _write_outputs(config: Config, score: Scorer, md_path: str, png_path: str, step: int,
                   n: int, cells: Sequence[Dict[str, Any]], samplers: Sequence[str],
                   tables: str) -> None:
  """eval/sweep_step_<step>_<name>.md (the tables, written atomically) and .png (the metrics
  against NFE)."""
  stem = os.path.basename(md_path)[:-len(".md")]
  header = (f"Checkpoint step {step}, {n} samples per cell, grid {config.sampling.grid}, "
            f"{score.against}; entries: metric (exact NFE); plot: {stem}.png. Settings: "
            f"{stem}.json ('settings').\n\n")
  with atomic_write(md_path) as f:
    f.write(header + tables + "\n")
  panels = [(k, title, scale) for k, title, scale, _ in score.tables]
  plots.close(plots.metric_vs_nfe(cells, samplers, panels, png_path,
                                  f"step {step}, {n} samples per cell"))
