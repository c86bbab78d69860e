"""The sweep driver: FID (and KID) against NFE for several samplers on one checkpoint.

A CPU-sized version of the tables of the DPM-Solver and UniPC papers (Lu et al. 2022, Table 3;
Zhao et al. 2023, Table 1): for each sampler in ``eval.sweep_samplers`` and each NFE budget in
``eval.sweep_nfe``, the largest ``num_steps`` whose exact NFE (the registry's formula) fits the
budget, ``eval.sweep_num_samples`` samples from the EMA parameters (sample i's noise depends on
(seed, i) only, so every cell sees the same starting points), and their FID / KID against
``eval.fid_stats``.

  python -m experiments.main --config=configs/digits/vp.py --workdir=W --mode=sweep \\
      --config.eval.fid_stats=STATS.npz --config.eval.sweep_samplers=euler,dpmpp_2m,unipc \\
      --config.eval.sweep_nfe=5,10,20

Writes ``eval/sweep_step_<step>_<name>.json`` (every finished cell and the settings, rewritten
atomically after each, so an interrupted sweep resumes from the finished cells) and
``eval/sweep_step_<step>_<name>.md`` (the tables). ``<name>`` is ``experiments.results.output``'s:
the grid, the conditioning's tag and a hash of every setting that changes a cell (the grid and
hyper-parameters, guidance, dtype, seed, checkpoint, sweep_num_samples, the FID statistics and
KID settings), so sweeps with other settings never share a file. Cells are keyed by (sampler,
NFE budget) inside it: a sweep with the same settings and other lists reuses the cells it has
and adds the others, and the tables show every cell of the file. Non-finite samples in a cell
are an error (``results.NonFiniteSamplesError``), that cell not written.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Dict, List, Mapping, Tuple

import jax
import ml_collections
import numpy as np

from diffusion import checkpoint
from diffusion.io_utils import atomic_write
from diffusion.metrics import fid, inception
from experiments import conditioning, eval_common, generate, results, signals, writers
from experiments.setup import Setup, restore_params
from experiments.sweep_grid import (cell_config, markdown_table, parse_list, sampler_hparams_for,
                                    steps_for_nfe)
from experiments.validate import validate
from experiments.writers import say

Config = ml_collections.ConfigDict


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
  stats = eval_common.load_fid_stats(config)
  where = os.path.join(workdir, checkpoint.CKPT_DIR)
  step = eval_common.steps_to_evaluate(config.eval, eval_common.checkpoint_steps(workdir),
                                       where)[-1]
  setup, params, step = restore_params(config, workdir, step=step)  # None: newest intact
  cond_plan = conditioning.plan(config, setup, "eval")  # labels, guidance: as in eval
  res = results.output(config, "sweep", step, cond_plan.classifier_step)
  out_dir = os.path.join(workdir, eval_common.EVAL_DIR)
  json_path, md_path = results.sweep_path(workdir, res, "json"), results.sweep_path(workdir, res,
                                                                                     "md")
  cells: List[Dict[str, Any]] = []
  if os.path.exists(json_path):
    with open(json_path) as f:
      saved = json.load(f)
    results.check_same(saved.get("settings", {}), res, json_path)
    cells = saved["cells"]
  done = {_cell_key(c) for c in cells}
  inception_params = inception.load_params()
  for name, budget, steps, used in plan:
    if (name, budget, n) in done:
      say(f"sweep: {name} at NFE {budget} already in {json_path}; skipped")
      continue
    sig.phase = f"the sweep cell {name} at NFE {budget}"
    sig.nothing_saved = f"the finished cells are in {json_path}; --mode=sweep resumes from them"
    cells.append(_cell(setup, params, cond_plan, name, budget, steps, used, n, stats,
                       inception_params, json_path))
    if writers.is_main():
      with sig.deferred():
        os.makedirs(out_dir, exist_ok=True)
        writers.write_json(json_path, {"step": step, "fid_stats": e.fid_stats,
                                       "settings": res.settings(), "cells": cells})
    m = cells[-1]
    say(f"sweep: {name} NFE {m['nfe']} ({steps} steps): FID {m['fid']:.3f}"
        + (f", KID {m['kid']:.5f}" if "kid" in m else ""))
  mine = [c for c in cells if c["num_samples"] == n]
  # Every cell of the file (this run's lists first): another run's cells are never dropped.
  samplers += [c["sampler"] for c in mine if c["sampler"] not in samplers]
  samplers = list(dict.fromkeys(samplers))
  budgets = sorted(set(budgets) | {int(c["nfe_budget"]) for c in mine})
  table = markdown_table(mine, budgets, samplers)
  if writers.is_main():
    with sig.deferred():
      _write_tables(config, md_path, step, n, mine, budgets, samplers, table)
  say(table)
  say(f"sweep: {len(mine)} cells of the checkpoint at step {step} in {json_path} and {md_path}")
  return {"step": step, "cells": cells, "json": json_path, "table": md_path}


def _cell(setup: Setup, params, cond_plan: conditioning.Plan, name: str, budget: int,
          steps: int, used: int, n: int, stats: fid.Stats, inception_params,
          json_path: str) -> Dict[str, Any]:
  """One cell: n samples of sampler ``name`` with ``steps`` steps (``used`` NFE, checked), and
  their FID / KID with the timings. Non-finite samples raise ``results.NonFiniteSamplesError``
  (the cell is not written to ``json_path``)."""
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
  m = eval_common.fid_metrics(config, x, stats, inception_params)
  return {"sampler": name, "nfe_budget": budget, "nfe": nfe, "num_steps": steps,
          "num_samples": n, "sample_seconds": t_sample,
          "score_seconds": time.time() - t0 - t_sample, **m}


def _write_tables(config: Config, path: str, step: int, n: int, cells: List[Dict[str, Any]],
                  budgets: List[int], samplers: List[str], table: str) -> None:
  """eval/sweep_step_<step>_<name>.md: the FID table and the KID one (written atomically)."""
  header = (f"Checkpoint step {step}, {n} samples per cell, grid {config.sampling.grid}, "
            f"reference statistics {os.path.basename(config.eval.fid_stats)}; entries: metric "
            f"(exact NFE). Settings: {os.path.basename(path)[:-len('.md')]}.json ('settings')."
            f"\n\nFID:\n\n")
  kid = markdown_table(cells, budgets, samplers, "kid", 1e3)
  with atomic_write(path) as f:
    f.write(header + table + "\n\nKID x 1000:\n\n" + kid + "\n")
