"""Few-step generation end to end: teachers, students, and quality against NFE (docs/few_step.md).

One command runs every stage that is not done yet (each a plain ``python -m experiments.main``
call, so each is resumable, and its wall time is recorded in <root>/times.json), then samples
every model at its step counts through the driver's own code (``experiments.generate.generate``)
and writes a table of quality against NFE:

  python benchmarks/few_step.py --suite=toy --root=workdirs/few_step_toy
  python benchmarks/few_step.py --suite=digits --root=workdirs/few_step_digits \
      --fid_stats=workdirs/fid_stats/digits_train_8px_1500.npz

Stages (suite 'toy': configs/toy/checkerboard_*.py; 'digits': configs/digits/*.py):
  teachers   EDM (consistency distillation's), v-prediction on the cosine schedule
             (progressive distillation's), rectified flow (reflow's);
  pairs      --mode=pairs on the rectified flow; reflow: the 2-rectified flow on them;
  pd         progressive distillation, 4 rounds (students of 8, 4, 2, 1 DDIM steps);
  cd / ct    consistency distillation of the EDM teacher / consistency training (iCT);
  scm_cd / scm_ct   continuous-time consistency (sCM) distillation of the EDM teacher / training;
  meanflow / shortcut   two-time flow maps from scratch (MeanFlow; shortcut models).
--only=a,b runs those stages; --tag=NAME writes the table of this --root's finished stages to
few_step_<suite>_<NAME>.md beside the full table.

Rows already measured (<root>/rows_<num_samples>.json) are read back, not measured again: delete
the file to measure anew. Quality: sliced Wasserstein and MMD to held-out data (toy: 10,000 samples against 10,000 held-out
points; digits: against the 297 test images, in pixel space), and on digits FID / KID of the first
--fid_samples samples against the train split's statistics (``experiments.reference_stats``; in
the rows that ask for it, since Inception takes about 0.3 s per image on 2 CPU cores); each row with its exact NFE and the
sampling time. For the rectified flows, also Liu et al.'s straightness of the learned ODE
(``diffusion.flow.straightness``, 100 Euler steps, 2,000 paths). Writes
benchmarks/results/few_step_<suite>.md and .json.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

import ml_collections
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from diffusion import networks  # noqa: E402
from diffusion.objectives.progressive import round_student_steps, steps_per_round  # noqa: E402
from diffusion.io_utils import atomic_write  # noqa: E402

TOY = "configs/toy/checkerboard_{}.py"
DIGITS = "configs/digits/{}.py"


@dataclasses.dataclass
class Stage:
  name: str  # also the workdir's name under --root
  config: str
  mode: str = "train"
  workdir: str = ""  # default: the stage's name
  needs: tuple = ()  # stages that must be done first

  def wd(self, root: str) -> str:
    return os.path.join(root, self.workdir or self.name)


def stages(suite: str) -> List[Stage]:
  c = TOY if suite == "toy" else DIGITS
  return [Stage("edm", c.format("edm")), Stage("vcos", c.format("vcos")),
          Stage("rf", c.format("rf")),
          Stage("pairs", c.format("rf"), mode="pairs", workdir="rf", needs=("rf",)),
          Stage("reflow", c.format("reflow"), needs=("pairs",)),
          Stage("pd", c.format("pd"), needs=("vcos",)),
          Stage("cd", c.format("cd"), needs=("edm",)),
          Stage("ct", c.format("ct")),
          Stage("scm_cd", c.format("scm_cd"), needs=("edm",)),
          Stage("scm_ct", c.format("scm_ct")),
          Stage("meanflow", c.format("meanflow")),
          Stage("shortcut", c.format("shortcut"))]


def overrides(stage: Stage, root: str) -> List[str]:
  """Students read their teachers (and reflow its pairs) from --root."""
  teacher = {"reflow": "rf", "pd": "vcos", "cd": "edm", "scm_cd": "edm"}.get(stage.name)
  out = []
  if teacher:
    out.append(f"--config.distill.teacher_workdir={os.path.join(root, teacher)}")
  if stage.name == "reflow":
    out.append(f"--config.distill.pairs={os.path.join(root, 'rf', 'pairs')}")
  return out


def run_stages(suite: str, root: str, only: Optional[List[str]] = None) -> Dict[str, float]:
  """Runs the stages not done yet (a stage is done when times.json has its wall time)."""
  os.makedirs(root, exist_ok=True)
  path = os.path.join(root, "times.json")
  times = json.load(open(path)) if os.path.exists(path) else {}
  for st in stages(suite):
    if st.name in times or (only and st.name not in only):
      continue
    cmd = [sys.executable, "-m", "experiments.main", f"--config={st.config}",
           f"--workdir={st.wd(root)}", f"--mode={st.mode}"] + overrides(st, root)
    print("$", " ".join(cmd[1:]), flush=True)
    t0 = time.time()
    with open(os.path.join(root, f"{st.name}.log"), "a") as log:
      rc = subprocess.call(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    if rc:
      raise SystemExit(f"stage {st.name} failed (exit {rc}); see {root}/{st.name}.log")
    times[st.name] = time.time() - t0
    with open(path, "w") as f:
      json.dump(times, f, indent=2)
    print(f"  {st.name}: {times[st.name]:.0f} s", flush=True)
  return times


# -- evaluation ------------------------------------------------------------------------------------

# (workdir, what, sampler, steps, checkpoint step or None, round label)
def rows(suite: str, root: str) -> List[Dict[str, Any]]:
  from experiments import config_files
  out = []

  def add(stage, label, sampler, steps_list, step=None, fid=()):
    for n in steps_list:
      out.append(dict(stage=stage, model=label, sampler=sampler, steps=n, step=step,
                      with_fid=n in fid))

  # fid: the rows whose FID is computed (Inception costs about 0.3 s per image on 2 CPU cores)
  add("edm", "EDM teacher", "heun", [3, 5, 10, 25], fid=(10,))
  add("edm", "EDM teacher", "euler", [1, 2, 4, 8])
  add("vcos", "v-pred. cosine teacher (PD's)", "ddim", [1, 2, 4, 8, 16, 32], fid=(1, 16))
  add("rf", "rectified flow (1-RF)", "euler", [1, 2, 4, 8, 16], fid=(1,))
  add("rf", "rectified flow (1-RF)", "heun", [5, 10, 25], fid=(10,))
  add("reflow", "2-rectified flow (1 reflow)", "euler", [1, 2, 4, 8], fid=(1, 2))
  pd_file = (TOY if suite == "toy" else DIGITS).format("pd")
  pd_cfg = config_files.load_config_file(os.path.join(ROOT, pd_file))
  k = steps_per_round(pd_cfg)
  for r in range(int(pd_cfg.distill.rounds)):
    n = round_student_steps(pd_cfg, r)
    add("pd", f"PD round {r + 1}", "ddim", [n], step=(r + 1) * k, fid=(n,))
  add("cd", "consistency distillation", "consistency", [1, 2], fid=(1, 2))
  add("ct", "consistency training (iCT)", "consistency", [1, 2], fid=(1, 2))
  add("scm_cd", "sCM distillation (sCD)", "consistency", [1, 2, 4], fid=(1, 2))
  add("scm_ct", "sCM training (sCT)", "consistency", [1, 2, 4], fid=(1, 2))
  add("meanflow", "MeanFlow", "flow_map", [1, 2, 4], fid=(1, 2))
  add("shortcut", "shortcut model", "flow_map", [1, 2, 4], fid=(1, 2))
  return out


def evaluate(suite: str, root: str, num_samples: int, fid_stats: Optional[str],
             finished=(), fid_samples: int = 500) -> List[Dict]:
  """The rows of ``rows`` whose stage is in ``finished`` (see the module docstring)."""
  import jax
  from diffusion.metrics import mmd, sliced_wasserstein
  from experiments import config_files, eval_common, generate, setup, sweep_grid
  st_by = {s.name: s for s in stages(suite)}
  stats = inception_params = None
  results, cache = [], {}
  if suite == "toy":  # the floor: two independent held-out sets of the same size
    from diffusion.data import toy2d
    from experiments import config_files as cf
    cfg0 = cf.load_config_file(os.path.join(ROOT, TOY.format("rf")))
    a = _heldout(cfg0, num_samples)[:num_samples]
    b = toy2d.heldout(cfg0.data.name, num_samples, cfg0.data.heldout_seed + 1)
    m = min(2000, num_samples)
    results.append(dict(stage="", model="data vs data (the floor)", sampler="", steps=0,
                        step=None, nfe=0, sample_seconds=0.0, num_samples=num_samples,
                        sliced_wasserstein=float(sliced_wasserstein(a, b, 0)),
                        mmd=float(mmd(a[:m], b[:m]))))
  done_path = os.path.join(root, f"rows_{num_samples}.json")  # finished rows: a rerun skips them
  done = json.load(open(done_path)) if os.path.exists(done_path) else {}
  if suite == "digits" and os.path.isdir(os.path.join(root, "rf", "checkpoints")):
    # the floor: training images scored like samples (SW / MMD to the test split; FID)
    cfg0 = setup.saved_config(config_files.load_config_file(
        os.path.join(ROOT, DIGITS.format("rf"))), os.path.join(root, "rf"))
    cfg0.eval.fid_stats = fid_stats
    train_cfg = ml_collections.ConfigDict(cfg0.to_dict())
    train_cfg.data.eval_split = train_cfg.data.split
    x = _heldout(train_cfg, num_samples)
    held = _heldout(cfg0, num_samples)
    flat = lambda a: np.asarray(a, np.float32).reshape(len(a), -1)
    m = min(2000, len(held), len(x))
    res = dict(stage="", model="training images (the floor)", sampler="", steps=0, step=None,
               nfe=0, sample_seconds=0.0, num_samples=len(x),
               sliced_wasserstein=float(sliced_wasserstein(flat(x), flat(held), 0)),
               mmd=float(mmd(flat(x[:m]), flat(held[:m]))))
    if fid_stats:
      from diffusion.metrics import inception
      stats, inception_params = eval_common.load_fid_stats(cfg0), inception.load_params()
      key = f"floor/{fid_samples}"
      if key not in done:
        done[key] = {k: v for k, v in eval_common.fid_metrics(cfg0, x[:fid_samples], stats,
                                                              inception_params).items()
                     if k in ("fid", "kid")}
      res.update(done[key])
    results.append(res)
  for row in rows(suite, root):
    st = st_by[row["stage"]]
    wd = st.wd(root)
    if not os.path.isdir(os.path.join(wd, "checkpoints")):
      print(f"skipping {row['model']}: no checkpoints in {wd}")
      continue
    if row["stage"] not in finished:
      print(f"skipping {row['model']}: its stage has not finished")
      continue
    ckpts = [int(n) for n in os.listdir(os.path.join(wd, "checkpoints")) if n.isdigit()]
    row_key = f"{row['stage']}/{row['sampler']}/{row['steps']}/{row['step'] or max(ckpts)}"
    if row_key in done:
      results.append(done[row_key])
      continue
    key = (wd, row["step"])
    if key not in cache:
      cfg = setup.saved_config(config_files.load_config_file(os.path.join(ROOT, st.config)), wd)
      cfg.eval.fid_stats = fid_stats
      s, params, step = setup.restore_params(cfg, wd, step=row["step"])
      if fid_stats and stats is None:
        from diffusion.metrics import inception
        stats, inception_params = eval_common.load_fid_stats(cfg), inception.load_params()
      cache[key] = (cfg, s, params, step)
    cfg, s, params, step = cache[key]
    cell = dataclasses.replace(s, config=sweep_grid.cell_config(cfg, row["sampler"],
                                                                row["steps"]))
    cell.config.sampling.batch_size = min(num_samples, 5000)
    t0 = time.time()
    x, info = generate.generate(cell, params, num_samples, jax.random.PRNGKey(cfg.seed + 2))
    secs = time.time() - t0
    held = _heldout(cfg, num_samples)
    flat = lambda a: np.asarray(a, np.float32).reshape(len(a), -1)
    m = min(2000, len(held), len(x))
    res = dict(row, checkpoint=int(step), nfe=int(np.asarray(info["nfe"])),
               sample_seconds=secs, num_samples=num_samples,
               finite=float(np.mean(np.all(np.isfinite(flat(x)), axis=1))),
               sliced_wasserstein=float(sliced_wasserstein(flat(x), flat(held), 0)),
               mmd=float(mmd(flat(x[:m]), flat(held[:m]))))
    if stats is not None and row["with_fid"]:
      res.update({k: v for k, v in eval_common.fid_metrics(cfg, x[:fid_samples], stats,
                                                           inception_params).items()
                  if k in ("fid", "kid")})
    if cfg.model.parameterization == "flow" and row["steps"] == 1:
      res["straightness"] = _straightness(s, params)
    results.append(res)
    done[row_key] = res
    with atomic_write(done_path, tmp=done_path + ".tmp") as f:
      json.dump(done, f, indent=1)
    print(json.dumps({k: v for k, v in res.items() if k != "stage"}), flush=True)
  return results


def _heldout(cfg, n: int) -> np.ndarray:
  from experiments import build
  if build.is_toy(cfg):
    return build.heldout(cfg, max(n, int(cfg.data.num_heldout)))
  from diffusion.data.images import num_levels
  from diffusion.metrics.bits_per_dim import dequantize
  import jax
  levels = build.heldout(cfg, n, levels=True)
  return dequantize(levels, num_levels(cfg.data.name), jax.random.PRNGKey(cfg.data.heldout_seed),
                    0)


def _straightness(s, params, n: int = 2000, steps: int = 100) -> float:
  import jax
  from diffusion import flow, parallel
  shape = tuple(s.example["x"].shape[1:])
  x_T = parallel.per_sample_prior(s.schedule, jax.random.PRNGKey(7), 0, n, shape)
  denoise = networks.eval_denoiser(s.net, params, s.schedule, s.param)
  value, _ = jax.jit(lambda x: flow.straightness(denoise, s.schedule, x, steps))(x_T)
  return float(value)


def table(results: List[Dict], times: Dict[str, float], suite: str) -> str:
  has = lambda r, k: isinstance(r.get(k), float)
  fid = any(has(r, "fid") for r in results)
  head = "| model | sampler | steps | NFE | SW | MMD |" + (" FID | KID x 1e3 |" if fid else "") \
         + " straightness | sampling s |"
  lines = [head, "|" + "---|" * (head.count("|") - 1)]
  for r in results:
    cells = [r["model"], r["sampler"], str(r["steps"] or ""), str(r["nfe"] or ""),
             f"{r['sliced_wasserstein']:.4f}", f"{r['mmd']:.4f}"]
    if fid:
      cells += [f"{r['fid']:.2f}" if has(r, "fid") else "",
                f"{1e3 * r['kid']:.2f}" if has(r, "kid") else ""]
    cells += [f"{r['straightness']:.4f}" if "straightness" in r else "",
              f"{r['sample_seconds']:.2f}"]
    if r.get("finite", 1.0) < 1.0:
      cells[0] += f" ({100 * (1 - r['finite']):.1f}% non-finite)"
    lines.append("| " + " | ".join(cells) + " |")
  stage_lines = ["| stage | wall s |", "|---|---|"] + [f"| {k} | {v:.0f} |"
                                                        for k, v in times.items()]
  return ("Quality against NFE (" + suite + "):\n\n" + "\n".join(lines)
          + "\n\nWall time of each stage (2-core CPU, shared):\n\n" + "\n".join(stage_lines)
          + "\n")


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--suite", choices=("toy", "digits"), default="toy")
  p.add_argument("--root", required=True, help="folder of the stages' workdirs")
  p.add_argument("--num_samples", type=int, default=None,
                 help="samples per row (default: toy 10,000, digits 1,000)")
  p.add_argument("--fid_stats", default=None, help="digits: FID reference statistics (.npz)")
  p.add_argument("--fid_samples", type=int, default=500,
                 help="samples scored by FID / KID in the rows that have it (default 500)")
  p.add_argument("--only", default="", help="comma-separated stages to run (default: all)")
  p.add_argument("--skip_eval", action="store_true")
  p.add_argument("--tag", default="",
                 help="write few_step_<suite>_<tag>.md / .json (a table of the stages run under "
                      "this --root only, beside earlier tables)")
  a = p.parse_args()
  times = run_stages(a.suite, a.root, [s for s in a.only.split(",") if s] or None)
  if a.skip_eval:
    return
  n = a.num_samples or (10_000 if a.suite == "toy" else 1_000)
  results = evaluate(a.suite, a.root, n, a.fid_stats, finished=set(times),
                     fid_samples=a.fid_samples)
  text = table(results, times, a.suite)
  print(text)
  out = os.path.join(ROOT, "benchmarks", "results",
                     f"few_step_{a.suite}" + (f"_{a.tag}" if a.tag else ""))
  with open(out + ".md", "w") as f:
    fid = (f"; FID / KID of the first {a.fid_samples} in the rows that show them, against the "
           f"train split's statistics (biased upwards at this size: compare rows, not papers)"
           if a.fid_stats else "")
    from benchmarks.hardware import with_machine_line
    tag = f" --only={a.only} --tag={a.tag}" if a.tag else ""
    f.write(with_machine_line(f"Written by `python benchmarks/few_step.py --suite={a.suite}{tag}` "
                              f"({n} samples per row{fid}).\n\n" + text))
  with open(out + ".json", "w") as f:
    json.dump({"results": results, "times": times}, f, indent=2)


if __name__ == "__main__":
  main()
