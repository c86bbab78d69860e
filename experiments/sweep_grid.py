"""The cells of ``--mode=sweep`` (experiments/sweep.py): the sampler and NFE lists of
``eval.sweep_samplers`` / ``eval.sweep_nfe``, the step count that fits each NFE budget, the config
of each cell, and the markdown table of the results. Host-side only (validate checks the lists
with them before anything is built)."""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Sequence, Tuple

import ml_collections
import numpy as np

from configs.sampling import HYPERPARAMETER_TYPES
from diffusion.samplers import sampler_info

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


def markdown_table(cells: Sequence[Dict[str, Any]], budgets: Sequence[int],
                   samplers: Sequence[str], metric: str = "fid", scale: float = 1.0,
                   fmt: str = ".2f") -> str:
  """Rows = samplers, columns = NFE budgets; each entry '<metric x scale, in format fmt> (NFE n)'
  or '-'."""
  by = {(c["sampler"], c["nfe_budget"]): c for c in cells}
  head = "| sampler | " + " | ".join(f"NFE {b}" for b in budgets) + " |"
  lines = [head, "|---|" + "---:|" * len(budgets)]
  for s in samplers:
    row = []
    for b in budgets:
      c = by.get((s, b))
      row.append("-" if c is None or metric not in c
                 else f"{c[metric] * scale:{fmt}} ({c['nfe']})")
    lines.append(f"| `{s}` | " + " | ".join(row) + " |")
  return "\n".join(lines)


def sampler_hparams_for(config: Config, sampler: str) -> Dict[str, Any]:
  """The hyper-parameters set in config.sampling (not None) that ``sampler`` accepts; the
  others belong to the config's own sampler and are dropped for this one."""
  accepted = sampler_info(sampler).defaults()
  return {k: config.sampling[k] for k in HYPERPARAMETER_TYPES
          if k in accepted and config.sampling[k] is not None}


def cell_config(config: Config, sampler: str, num_steps: int) -> Config:
  """A copy of ``config`` sampling with ``sampler`` for ``num_steps`` steps (the grid fields kept,
  hyper-parameters ``sampler`` does not accept cleared)."""
  keep = sampler_hparams_for(config, sampler)
  cfg = ml_collections.ConfigDict(config.to_dict())
  cfg.sampling.sampler, cfg.sampling.num_steps = sampler, int(num_steps)
  for k in HYPERPARAMETER_TYPES:
    if k not in keep:
      cfg.sampling[k] = None
  return cfg
