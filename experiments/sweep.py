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

Writes ``eval/sweep_step_<step>.json`` (every finished cell, rewritten atomically after each, so
an interrupted sweep resumes from the finished cells) and ``eval/sweep_step_<step>.md`` (the
table). The other sampler settings (grid, t_min, hyper-parameters) are the config's.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import jax
import ml_collections
import numpy as np

from experiments import writers
from experiments.writers import say

Config = ml_collections.ConfigDict


def parse_list(field: str, text: str, kind: type) -> List[Any]:
  """'a,b,c' -> [kind(a), kind(b), kind(c)]; empty items or bad values raise naming ``field``."""
  items = [s.strip() for s in str(text).split(",")]
  if not text or any(not s for s in items):
    raise ValueError(f"config.{field}={text!r}: expected a comma-separated list, e.g. "
                     f"{'5,10,20' if kind is int else 'euler,dpmpp_2m'}")
  try:
    return [kind(s) for s in items]
  except ValueError:
    raise ValueError(f"config.{field}={text!r}: every item must be a {kind.__name__}") from None


def steps_for_nfe(sampler: str, nfe_budget: int, hparams: Mapping[str, Any]) -> Tuple[int, int]:
  """(num_steps, exact NFE): the most steps whose NFE (registry formula) is <= ``nfe_budget``.

  Raises ValueError for adaptive samplers (their NFE is known only at run time) and for a budget
  below the sampler's one-step NFE.
  """
  from diffusion.samplers import sampler_info
  info = sampler_info(sampler)
  if info.adaptive:
    raise ValueError(f"sampler {sampler!r} is adaptive (its NFE is set by its tolerance, not a "
                     f"step count); the sweep takes fixed-step samplers")
  if isinstance(nfe_budget, bool) or not isinstance(nfe_budget, (int, np.integer)) \
      or nfe_budget < 1:
    raise ValueError(f"NFE budget must be a positive int, got {nfe_budget!r}")
  hp = info.resolve(hparams)
  best = None
  for n in range(1, int(nfe_budget) + 1):  # NFE grows with N: at most nfe_budget steps
    used = int(info.nfe(n, hp))
    if used > nfe_budget:
      break
    best = (n, used)
  if best is None:
    raise ValueError(f"sampler {sampler!r} needs {int(info.nfe(1, hp))} NFE for one step, more "
                     f"than the budget {nfe_budget}")
  return best


def _cell_key(c: Mapping[str, Any]) -> Tuple[str, int, int]:
  return c["sampler"], int(c["nfe_budget"]), int(c["num_samples"])


def markdown_table(cells: Sequence[Dict[str, Any]], budgets: Sequence[int],
                   samplers: Sequence[str], metric: str = "fid", scale: float = 1.0) -> str:
  """Rows = samplers, columns = NFE budgets; each entry '<metric x scale> (NFE n)' or '-'."""
  by = {(c["sampler"], c["nfe_budget"]): c for c in cells}
  head = "| sampler | " + " | ".join(f"NFE {b}" for b in budgets) + " |"
  lines = [head, "|---|" + "---:|" * len(budgets)]
  for s in samplers:
    row = []
    for b in budgets:
      c = by.get((s, b))
      row.append("-" if c is None or metric not in c else f"{c[metric] * scale:.2f} ({c['nfe']})")
    lines.append(f"| `{s}` | " + " | ".join(row) + " |")
  return "\n".join(lines)


def sampler_hparams_for(config: Config, sampler: str) -> Dict[str, Any]:
  """The hyper-parameters set in config.sampling (not None) that ``sampler`` accepts; the
  others belong to the config's own sampler and are dropped for this one."""
  from diffusion.samplers import sampler_info
  from configs.sampling import HYPERPARAMETER_TYPES
  accepted = sampler_info(sampler).defaults()
  return {k: config.sampling[k] for k in HYPERPARAMETER_TYPES
          if k in accepted and config.sampling[k] is not None}


def cell_config(config: Config, sampler: str, num_steps: int) -> Config:
  """A copy of ``config`` sampling with ``sampler`` for ``num_steps`` steps (the grid fields kept,
  hyper-parameters ``sampler`` does not accept cleared)."""
  from configs.sampling import HYPERPARAMETER_TYPES
  keep = sampler_hparams_for(config, sampler)
  cfg = ml_collections.ConfigDict(config.to_dict())
  cfg.sampling.sampler, cfg.sampling.num_steps = sampler, int(num_steps)
  for k in HYPERPARAMETER_TYPES:
    if k not in keep:
      cfg.sampling[k] = None
  return cfg


def run(config: Config, workdir: str) -> Dict[str, Any]:
  """Runs (or resumes) the sweep on the checkpoint ``eval.step`` (default: the latest).

  SIGTERM/SIGINT: one line, exit 128 + signum; the finished cells are kept.
  """
  from experiments import signals
  from experiments.validate import validate
  validate(config, "sweep", workdir)
  with signals.RunSignals("set-up", "nothing written") as sig:
    return _run(config, workdir, sig)


def _run(config: Config, workdir: str, sig) -> Dict[str, Any]:
  from diffusion import checkpoint
  from diffusion.metrics import inception
  from experiments import conditioning, evaluate, sample
  e = config.eval
  samplers = parse_list("eval.sweep_samplers", e.sweep_samplers, str)
  budgets = parse_list("eval.sweep_nfe", e.sweep_nfe, int)
  n = int(e.sweep_num_samples)
  plan = [(s, b, *steps_for_nfe(s, b, sampler_hparams_for(config, s)))
          for s in samplers for b in budgets]
  stats = evaluate.load_fid_stats(config)
  where = os.path.join(workdir, checkpoint.CKPT_DIR)
  step = evaluate.steps_to_evaluate(config.eval, evaluate.checkpoint_steps(workdir), where)[-1]
  setup, params, step = sample.restore_params(config, workdir, step=step)  # None: newest intact
  cond_plan = conditioning.plan(config, setup, "eval")  # labels, guidance: as in eval
  out_dir = os.path.join(workdir, evaluate.EVAL_DIR)
  suffix = f"_{cond_plan.tag}" if cond_plan.tag else ""
  json_path = os.path.join(out_dir, f"sweep_step_{step}{suffix}.json")
  cells: List[Dict[str, Any]] = []
  if os.path.exists(json_path):
    with open(json_path) as f:
      cells = json.load(f)["cells"]
  done = {_cell_key(c) for c in cells}
  inception_params = inception.load_params()
  for name, budget, steps, used in plan:
    if (name, budget, n) in done:
      say(f"sweep: {name} at NFE {budget} already in {json_path}; skipped")
      continue
    sig.phase = f"the sweep cell {name} at NFE {budget}"
    sig.nothing_saved = f"the finished cells are in {json_path}; --mode=sweep resumes from them"
    cell_setup = dataclasses.replace(setup, config=cell_config(config, name, steps))
    t0 = time.time()
    x, info = sample.generate(cell_setup, params, n, jax.random.PRNGKey(config.seed + 2),
                              progress=writers.Progress(f"sweep {name} NFE {used}", n,
                                                        "samples"), plan=cond_plan)
    t_sample = time.time() - t0
    nfe = int(np.asarray(info.get("nfe", -1)))
    if nfe != used:
      raise RuntimeError(f"sampler {name!r} with {steps} steps ran {nfe} NFE; its registry "
                         f"formula says {used}")
    m = evaluate.fid_metrics(config, x, stats, inception_params)
    cells.append({"sampler": name, "nfe_budget": budget, "nfe": nfe, "num_steps": steps,
                  "num_samples": n, "sample_seconds": t_sample,
                  "score_seconds": time.time() - t0 - t_sample, **m})
    if writers.is_main():
      with sig.deferred():
        os.makedirs(out_dir, exist_ok=True)
        writers.write_json(json_path, {"step": step, "fid_stats": e.fid_stats, "cells": cells})
    say(f"sweep: {name} NFE {nfe} ({steps} steps): FID {m['fid']:.3f}"
        + (f", KID {m['kid']:.5f}" if "kid" in m else ""))
  mine = [c for c in cells if c["num_samples"] == n]
  table = markdown_table(mine, budgets, samplers)
  if writers.is_main():
    header = (f"Checkpoint step {step}, {n} samples per cell, grid {config.sampling.grid}, "
              f"reference statistics {os.path.basename(e.fid_stats)}; entries: metric (exact "
              f"NFE).\n\nFID:\n\n")
    kid = markdown_table(mine, budgets, samplers, "kid", 1e3)
    with open(os.path.join(out_dir, f"sweep_step_{step}{suffix}.md"), "w") as f:
      f.write(header + table + "\n\nKID x 1000:\n\n" + kid + "\n")
  say(table)
  return {"step": step, "cells": cells}
