"""Golden regression fingerprints of short driver runs: every training objective and variant, a
few samplers, reflow's pairs, and each run's saved identity (<workdir>/config.json).

A *case* trains (or samples, or writes pairs) in-process through the driver on a tiny
configuration, reads what the run left on disk (the full train state of its checkpoint(s),
samples.npz, the pair shards, EDM2's EMA snapshots, config.json) and reduces every array to a
fingerprint: sha256 of its raw bytes, dtype, shape, and float64 sum / sum of |x| / L2 norm.
tests/data/golden/<case>.json holds the recorded fingerprints and the platform they were recorded
on; tests/test_golden.py compares:

  * same platform (``platform_fingerprint``: jax, jaxlib, flax, optax, orbax, numpy and python
    versions, the CPU model, a hash of its ISA flags, the CPU count, XLA_FLAGS, the backend and
    device count): every sha256 must match, bit for bit;
  * another platform: integer leaves (steps, keys, counts, labels, NFE) must still match bit for
    bit; float leaves' sum, sum |x| and L2 norm must agree to rtol 1e-4 (the sum's difference
    relative to sum |x|), and the largest relative difference is reported either way, so e.g.
    a JAX upgrade shows the size of its change (a tolerance check is weaker: a 1e-4 change of
    one Heun coefficient moves its samples by 2e-5 only; bitwise is the real guard);
  * always: the same leaves (key paths), dtypes and shapes, and the same identity (config.json,
    with the case's temporary root replaced by <ROOT>; ``resolved.jax_version`` is ignored when
    the jax version differs).

The driver is called in ONE place, ``run_mode`` (train / sample / pairs), and a workdir's state
is read in ONE place, ``read_state`` (orbax directly, no driver code); ``driver_objectives``
and ``driver_samplers`` name the objectives and samplers that need a case: a refactor that moves
the driver's modules changes those four functions only. Everything else reads files in the documented workdir layout (config.json, checkpoints/<step>/state, samples/<name>/samples.npz,
pairs/shard_*.npz and pairs.json, ema_snapshots/*.npz), which existing workdirs rely on.

Record (or re-record) the golden files:

  python -m tests.golden --record                 # the fast cases
  python -m tests.golden --record --all           # fast and slow
  python -m tests.golden --record --cases dsm_vp,sample_vp_euler
  python -m tests.golden --check [--all]          # compare without pytest, one line per case
  python -m tests.golden --record --out DIR       # write elsewhere (e.g. a determinism check)

Every case was reproducible bit for bit run to run on the recording machine, with a warm and
with a cold (empty) compilation cache, and under pytest as under this command line.

Configs are each file's ``get_config()`` with ``TINY`` and the case's overrides set, pinned
here (not conftest's TINY), so editing other tests' settings never changes a golden run.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import importlib.util
import json
import os
import platform as _platform
import re
import shutil
import sys
import tempfile
import time
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN_DIR = os.path.join(REPO, "tests", "data", "golden")
RTOL = 1e-4  # across platforms: float leaves' sum, sum |x| and L2 norm
ROOT_TOKEN = "<ROOT>"  # the temporary root of a recording, in identities and pairs.json


# == the adapter: the only code that knows where the driver lives =================================


def run_mode(config, workdir: str, mode: str) -> None:
  """Runs the driver's ``mode`` ('train', 'sample' or 'pairs') on ``config`` in ``workdir``,
  in-process, as ``python -m experiments.main --mode=<mode>`` would (from the repository root,
  where config files name their teachers' config files relative to it)."""
  with contextlib.chdir(REPO):
    if mode == "train":
      from experiments import train
      train.train(config, workdir)
    elif mode == "sample":
      from experiments import sample
      sample.run(config, workdir)
    elif mode == "pairs":
      from experiments import reflow
      reflow.run(config, workdir)
    else:
      raise ValueError(f"run_mode: unknown mode {mode!r}")


def read_state(workdir: str, step: Optional[int] = None) -> Dict[str, Any]:
  """The full train state saved in <workdir>/checkpoints/<step>/state (default: the newest step)
  as a nested dict of arrays, exactly as stored (step, params, ema_params, opt_state, key,
  num_skipped, bad_step, and power_ema / teacher where the run has them). Read with orbax
  directly, without a target structure: what is recorded is what a resume would read."""
  import orbax.checkpoint as ocp
  step = latest_step(workdir) if step is None else int(step)
  path = os.path.join(os.path.abspath(workdir), "checkpoints", str(step), "state")
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # "Sharding info not provided when restoring"
    tree = ocp.PyTreeCheckpointer().restore(path)
  return tree


def driver_objectives() -> Tuple[str, ...]:
  """The driver's training objectives (config.training.objective values): each needs a case."""
  from diffusion import objectives
  return objectives.names()


def driver_samplers() -> Tuple[str, ...]:
  """The registered samplers (config.sampling.sampler values): each needs a sample case."""
  from diffusion.samplers import registry
  return tuple(registry.registered_samplers())


# == reading a finished workdir (the documented layout) ==========================================


def checkpoint_steps(workdir: str) -> List[int]:
  d = os.path.join(workdir, "checkpoints")
  return sorted(int(n) for n in os.listdir(d) if n.isdigit())


def latest_step(workdir: str) -> int:
  steps = checkpoint_steps(workdir)
  if not steps:
    raise FileNotFoundError(f"no checkpoints in {workdir}")
  return steps[-1]


def read_identity(workdir: str) -> Dict[str, Any]:
  with open(os.path.join(workdir, "config.json")) as f:
    return json.load(f)


def read_npz(path: str, keys: Optional[Sequence[str]] = None) -> Dict[str, np.ndarray]:
  """The arrays of an .npz (``keys`` only, if given; string arrays are left out)."""
  with np.load(path) as z:
    names = [k for k in (keys if keys is not None else z.files) if k in z.files]
    out = {k: np.asarray(z[k]) for k in names}
  return {k: v for k, v in out.items() if v.dtype.kind not in "USO"}


# == fingerprints ==================================================================================


def flatten(tree: Any, prefix: str = "") -> Dict[str, Any]:
  """{'a/b/0/c': leaf} of nested dicts / lists / tuples; None and empty containers are leaves
  too (they are part of the stored structure)."""
  out: Dict[str, Any] = {}
  if isinstance(tree, dict) and tree:
    for k in sorted(tree, key=str):
      out.update(flatten(tree[k], f"{prefix}/{k}" if prefix else str(k)))
  elif isinstance(tree, (list, tuple)) and tree:
    for i, v in enumerate(tree):
      out.update(flatten(v, f"{prefix}/{i}" if prefix else str(i)))
  else:
    out[prefix] = tree
  return out


def leaf_record(x: Any) -> Dict[str, Any]:
  """The fingerprint of one leaf: sha256 of its raw bytes, dtype, shape, and float64 sum, sum of
  |x| and L2 norm (NaN where the array holds NaN); a non-array leaf (None, {}, []) by its
  repr."""
  if x is None or (isinstance(x, (dict, list, tuple)) and not x):
    return {"value": repr(x)}
  a = np.ascontiguousarray(np.asarray(x))
  f = a.astype(np.float64)
  return {"sha256": hashlib.sha256(a.tobytes()).hexdigest(), "dtype": str(a.dtype),
          "shape": list(a.shape), "sum": float(f.sum()), "abs_sum": float(np.abs(f).sum()),
          "l2": float(np.sqrt(np.square(f).sum()))}


def platform_fingerprint() -> Dict[str, Any]:
  """What decides whether recorded hashes must match bit for bit."""
  import flax
  import jax
  import jaxlib
  import optax
  import orbax.checkpoint as ocp
  cpu, flags = "", ""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name") and not cpu:
          cpu = line.split(":", 1)[1].strip()
        elif line.startswith("flags") and not flags:  # the ISA extensions XLA compiles for
          flags = " ".join(sorted(line.split(":", 1)[1].split()))
  except OSError:
    cpu = _platform.processor()
  return {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "flax": flax.__version__,
          "optax": optax.__version__, "orbax": ocp.__version__, "numpy": np.__version__,
          "python": ".".join(map(str, sys.version_info[:2])), "cpu": cpu,
          "cpu_flags_sha256": hashlib.sha256(flags.encode()).hexdigest()[:16],
          "cpus": len(os.sched_getaffinity(0)),  # XLA:CPU's thread pool may split work by it
          "xla_flags": os.environ.get("XLA_FLAGS", ""),
          "backend": jax.default_backend(), "device_count": jax.device_count()}


def normalize(obj: Any, root: str) -> Any:
  """``obj`` (json data) with the recording's root folder replaced by <ROOT> in strings."""
  root = os.path.abspath(root)
  if isinstance(obj, dict):
    return {k: normalize(v, root) for k, v in obj.items()}
  if isinstance(obj, list):
    return [normalize(v, root) for v in obj]
  if isinstance(obj, str):
    return obj.replace(root, ROOT_TOKEN)
  return obj


# == tiny configurations ===========================================================================

# Every toy case: the residual MLP at width 32 with one block, batch 64, 30 steps, a checkpoint
# only at the end (and at PD's round ends), the final samples small.
TINY: Dict[str, Any] = {
    "model.net.width": 32, "model.net.num_blocks": 1, "model.net.embed_dim": 16,
    "data.batch_size": 64, "data.num_heldout": 256,
    "training.num_steps": 30, "training.log_every": 10, "training.ckpt_every": 1000,
    "training.sample_every": 0, "training.async_checkpoints": False,
    "optim.warmup_steps": 5,
    "sampling.num_steps": 8, "sampling.num_samples": 64, "sampling.batch_size": 64,
    "eval.plot_samples": 64,
}

# The digits cases (slow): a 2-level U-Net with 8 base channels, batch 16, 8 steps.
DIGITS_TINY: Dict[str, Any] = {
    "data.batch_size": 16, "training.num_steps": 8, "training.log_every": 4,
    "training.ckpt_every": 1000, "training.sample_every": 0,
    "training.async_checkpoints": False, "optim.warmup_steps": 2,
    "sampling.num_steps": 3, "sampling.num_samples": 8, "sampling.batch_size": 8,
    "eval.plot_samples": 8,
}
DDPM_UNET_TINY = {"model.net.ch": 8, "model.net.ch_mult": (1, 2), "model.net.num_res_blocks": 1,
                  "model.net.attn_resolutions": (4,)}
EDM2_UNET_TINY = {"model.net.model_channels": 8, "model.net.channel_mult": (1, 2),
                  "model.net.channels_per_head": 8}
# autoencoder_kl with one level of 8 channels (f = 1: 8x8x1 -> 8x8x2), the run's 8 steps.
AUTOENCODER_TINY = {"model.net.channels": (8,), "model.net.norm_groups": 4,
                    "model.net.latent_channels": 2, "data.num_heldout": 32}


def load_config(relpath: str):
  """``get_config()`` of configs/<relpath> (a plain-data file), loaded by path."""
  path = os.path.join(REPO, "configs", relpath)
  spec = importlib.util.spec_from_file_location("_golden_config", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def with_overrides(c, overrides: Dict[str, Any]):
  """``c`` with dotted-key overrides set in place (an unknown key is an error)."""
  for key, value in overrides.items():
    node = c
    *path, last = key.split(".")
    for p in path:
      node = node[p]
    if last not in node:
      raise KeyError(f"config has no field {key!r}")
    node[last] = value
  return c


def toy(relpath: str, **overrides):
  return with_overrides(load_config(f"toy/{relpath}"), {**TINY, **overrides})


def digits(relpath: str, net: Dict[str, Any], **overrides):
  return with_overrides(load_config(f"digits/{relpath}"), {**DIGITS_TINY, **net, **overrides})


# == runs: trained workdirs, shared by the cases that need them ===================================

TOY_VDM = {"sde.name": "vdm_learned",
           "sde.fields": {"gamma_min": -10.0, "gamma_max": 6.0, "hidden": 16,
                          "learn_endpoints": False, "t_min": 0.0, "t_max": 1.0},
           "model.time_input": "logsnr", "training.weighting": "likelihood",
           "training.time_sampling": "stratified"}
PD = {"distill.rounds": 2, "distill.student_steps": 4, "training.num_steps": 40,
      "sampling.num_steps": 2}
PAIRS = {"distill.num_pairs": 256, "distill.pairs_shard_size": 128, "sampling.num_steps": 4}


class Runs:
  """Trained workdirs under ``root``, each trained once on first use (teachers before students).
  ``config(name)`` is the run's config (the one its sample cases override)."""

  def __init__(self, root: str):
    self.root = os.path.abspath(root)
    self._done: Dict[str, str] = {}

  def wd(self, name: str) -> str:
    return os.path.join(self.root, name)

  def config(self, name: str):
    return RUNS[name](self)

  def workdir(self, name: str) -> str:
    """The trained workdir of run ``name`` (training it, and its teacher, if not yet done)."""
    if name not in self._done:
      wd = self.wd(name)
      if os.path.exists(wd):
        shutil.rmtree(wd)
      run_mode(self.config(name), wd, "train")
      self._done[name] = wd
    return self._done[name]

  def pairs(self, name: str = "rf") -> str:
    """<workdir of ``name``>/pairs, written by --mode=pairs once."""
    key = f"pairs:{name}"
    if key not in self._done:
      wd = self.workdir(name)
      run_mode(with_overrides(self.config(name), PAIRS), wd, "pairs")
      self._done[key] = os.path.join(wd, "pairs")
    return self._done[key]

  def student(self, relpath: str, teacher: str, **overrides):
    return toy(relpath, **{"distill.teacher_workdir": self.workdir(teacher), **overrides})


RUNS: Dict[str, Callable[[Runs], Any]] = {
    # dsm: weightings, schedules, parameterizations
    "vp": lambda r: toy("checkerboard_vp.py"),
    "ve": lambda r: toy("checkerboard_ve.py"),
    "edm": lambda r: toy("checkerboard_edm.py"),
    "rf": lambda r: toy("checkerboard_rf.py"),
    "vcos": lambda r: toy("checkerboard_vcos.py"),
    "cond": lambda r: toy("8gaussians_vp_cond.py"),
    # dsm variants of the train step
    "grad_accum": lambda r: toy("checkerboard_vp.py", **{"training.grad_accum_steps": 2}),
    "ema_profiles": lambda r: toy("checkerboard_vp.py", **{
        "training.ema_profiles": (0.05, 0.1), "training.ema_snapshot_every": 10}),
    "skip": lambda r: toy("checkerboard_vp.py", **{
        "training.nonfinite": "skip", "debug.nan_at_step": 12, "debug.nan_num_steps": 2}),
    "vdm_toy": lambda r: toy("checkerboard_vp.py", **TOY_VDM),
    # the other objectives
    "classifier": lambda r: toy("8gaussians_vp_classifier.py"),
    "pd": lambda r: r.student("checkerboard_pd.py", "vcos", **PD),
    "cd": lambda r: r.student("checkerboard_cd.py", "edm", **{"sampling.num_steps": 2}),
    "ct": lambda r: toy("checkerboard_ct.py", **{
        "distill.s0": 2, "distill.s1": 16, "sampling.num_steps": 2}),
    "reflow": lambda r: r.student("checkerboard_reflow.py", "rf", **{
        "distill.pairs": r.pairs("rf"), "sampling.num_steps": 2}),
    "reflow_scratch": lambda r: r.student("checkerboard_reflow.py", "rf", **{
        "distill.pairs": r.pairs("rf"), "distill.init_from_teacher": False,
        "sampling.num_steps": 2}),
    "meanflow": lambda r: toy("checkerboard_meanflow.py", **{"sampling.num_steps": 2}),
    "shortcut": lambda r: toy("checkerboard_shortcut.py", **{"sampling.num_steps": 2}),
    "scm_cd": lambda r: r.student("checkerboard_scm.py", "edm", **{"sampling.num_steps": 2}),
    "scm_ct": lambda r: toy("checkerboard_scm_ct.py", **{"sampling.num_steps": 2}),
    # images (slow)
    "digits_vp": lambda r: digits("vp.py", DDPM_UNET_TINY),
    "digits_vdm": lambda r: digits("vdm.py", DDPM_UNET_TINY, **{"sde.fields.hidden": 16}),
    "digits_edm2": lambda r: digits("edm2.py", EDM2_UNET_TINY),
    "digits_autoencoder": lambda r: digits("autoencoder.py", AUTOENCODER_TINY),
}


# == cases =========================================================================================


@dataclasses.dataclass(frozen=True)
class Case:
  name: str
  what: str  # one line: what the case records
  record: Callable[[Runs], Dict[str, Any]]
  slow: bool = False


def train_record(run: str, steps: Optional[Sequence[int]] = None,
                 snapshots: bool = False) -> Callable[[Runs], Dict[str, Any]]:
  """A training case: the state of the checkpoints at ``steps`` (default: the newest) and the
  identity of run ``run`` (and its EMA snapshots)."""

  def record(runs: Runs) -> Dict[str, Any]:
    wd = runs.workdir(run)
    arrays: Dict[str, Any] = {}
    for step in (steps or [latest_step(wd)]):
      for k, v in flatten(read_state(wd, step)).items():
        arrays[f"state@{step}/{k}"] = v
    if snapshots:
      d = os.path.join(wd, "ema_snapshots")
      for name in sorted(os.listdir(d)):
        if name.endswith(".npz") and not name.startswith("."):
          for k, v in read_npz(os.path.join(d, name)).items():
            arrays[f"ema_snapshots/{name}/{k}"] = v
    return {"identity": {run: normalize(read_identity(wd), runs.root)}, "arrays": arrays}

  return record


def sample_record(run: str, overrides: Dict[str, Any],
                  extra: Optional[Callable[[Runs], Dict[str, Any]]] = None
                  ) -> Callable[[Runs], Dict[str, Any]]:
  """A sampling case: --mode=sample on run ``run``'s workdir with ``overrides`` (and
  ``extra(runs)``, overrides naming other workdirs); records samples.npz's x, nfe, labels and
  where it was written (samples/<sampler>_n<steps>_<grid>[_<tag>]_step<N>_<hash>/, part of the
  workdir layout; the hash recorded as <hash>)."""

  def record(runs: Runs) -> Dict[str, Any]:
    wd = runs.workdir(run)
    cfg = with_overrides(runs.config(run), {**overrides, **(extra(runs) if extra else {})})
    shutil.rmtree(os.path.join(wd, "samples"), ignore_errors=True)
    run_mode(cfg, wd, "sample")
    found = sorted(os.path.relpath(os.path.join(d, "samples.npz"), wd)
                   for d, _, files in os.walk(os.path.join(wd, "samples"))
                   if "samples.npz" in files)
    if len(found) != 1:
      raise AssertionError(f"--mode=sample wrote {found} under {wd}/samples, expected one "
                           f"samples.npz")
    path = os.path.join(wd, found[0])
    arrays = {f"samples/{k}": v for k, v in read_npz(path, ("x", "nfe", "labels")).items()}
    # The folder's name ends in a hash of the run's settings (experiments/results.py), some of
    # them paths of this machine (a classifier's workdir): recorded as <hash>.
    written = re.sub(r"_[0-9a-f]{8}/samples\.npz$", "_<hash>/samples.npz", found[0])
    return {"arrays": arrays, "info": {"written": {"path": written}}}

  return record


def pairs_record(runs: Runs) -> Dict[str, Any]:
  d = runs.pairs("rf")
  arrays = {}
  for name in sorted(n for n in os.listdir(d) if n.startswith("shard_") and n.endswith(".npz")):
    for k, v in read_npz(os.path.join(d, name), ("x",)).items():
      arrays[f"pairs/{name}/{k}"] = v
  with open(os.path.join(d, "pairs.json")) as f:
    info = normalize(json.load(f), runs.root)
  return {"info": {"pairs.json": info}, "arrays": arrays}


SAMPLE = {"sampling.num_samples": 64, "sampling.batch_size": 64}


def _vp_sampler(name: str, steps: int = 6, grid: Optional[str] = None, slow: bool = False,
                **hparams) -> Case:
  o = {**SAMPLE, "sampling.sampler": name, "sampling.num_steps": steps}
  if grid:
    o["sampling.grid"] = grid
  o.update({f"sampling.{k}": v for k, v in hparams.items()})
  return Case(f"sample_vp_{name}", f"--mode=sample, {name}, {steps} steps, on dsm_vp",
              sample_record("vp", o), slow=slow)


def _classifier_guidance(runs: Runs) -> Dict[str, Any]:
  return {"guidance.classifier_config": "configs/toy/8gaussians_vp_classifier.py",
          "guidance.classifier_workdir": runs.workdir("classifier")}


CASES: List[Case] = [
    # -- training: dsm on every toy schedule / parameterization / weighting --
    Case("dsm_vp", "checkerboard_vp: VP, eps, eps weighting", train_record("vp")),
    Case("dsm_ve", "checkerboard_ve: VE, eps, scaled input", train_record("ve"), slow=True),
    Case("dsm_edm", "checkerboard_edm: EDM precond., edm weighting, lognormal t",
         train_record("edm")),
    Case("dsm_rf", "checkerboard_rf: rectified flow, flow param. and weighting",
         train_record("rf")),
    Case("dsm_vcos", "checkerboard_vcos: cosine VP, v-prediction (PD's teacher)",
         train_record("vcos")),
    Case("dsm_cond", "8gaussians_vp_cond: class-conditional, label dropout",
         train_record("cond")),
    Case("dsm_grad_accum", "checkerboard_vp, training.grad_accum_steps=2",
         train_record("grad_accum"), slow=True),
    Case("dsm_ema_profiles", "checkerboard_vp, power EMAs (0.05, 0.1), snapshots every 10",
         train_record("ema_profiles", snapshots=True), slow=True),
    Case("dsm_skip_nonfinite", "checkerboard_vp, nonfinite='skip', NaN batches at steps 12-13",
         train_record("skip"), slow=True),
    Case("dsm_vdm_toy", "checkerboard, VDM's learned schedule (fixed endpoints)",
         train_record("vdm_toy"), slow=True),  # 15 s cold; VDM's loss: tests/test_vdm.py
    # -- the other objectives --
    Case("classifier", "8gaussians_vp_classifier: noise-conditional classifier",
         train_record("classifier")),
    Case("pd", "checkerboard_pd of dsm_vcos: 2 rounds (4 -> 2 DDIM steps), both round ends",
         train_record("pd", steps=(20, 40))),
    Case("cd", "checkerboard_cd of dsm_edm: consistency distillation", train_record("cd")),
    Case("ct", "checkerboard_ct: consistency training, iCT curriculum 2..16",
         train_record("ct")),
    Case("reflow_pairs", "--mode=pairs of dsm_rf: 256 (noise, sample) pairs, Heun 4 steps",
         pairs_record),
    Case("reflow", "checkerboard_reflow on reflow_pairs, from the teacher's parameters",
         train_record("reflow")),
    Case("reflow_scratch", "checkerboard_reflow, distill.init_from_teacher=False",
         train_record("reflow_scratch"), slow=True),
    Case("mean_flow", "checkerboard_meanflow: MeanFlow, two-time MLP, jvp target",
         train_record("meanflow")),
    Case("shortcut", "checkerboard_shortcut: shortcut model, self-consistency + flow matching",
         train_record("shortcut"), slow=True),
    Case("scm_distillation", "checkerboard_scm of dsm_edm: sCM distillation, jvp tangent",
         train_record("scm_cd"), slow=True),
    Case("scm_training", "checkerboard_scm_ct: sCM training", train_record("scm_ct"), slow=True),
    Case("autoencoder", "configs/digits/autoencoder.py, autoencoder_kl (8 ch, 1 level), 8 steps",
         train_record("digits_autoencoder"), slow=True),
    # -- samplers --
    _vp_sampler("euler"),
    _vp_sampler("heun", slow=True),
    _vp_sampler("dpmpp_2m", grid="logsnr", slow=True),
    _vp_sampler("ddpm", grid="uniform"),
    _vp_sampler("euler_ancestral", slow=True),
    _vp_sampler("pc", steps=4, grid="uniform", slow=True),
    Case("sample_cond_cfg", "--mode=sample of dsm_cond, classifier-free guidance w = 3",
         sample_record("cond", {**SAMPLE, "guidance.kind": "cfg", "guidance.weight": 3.0})),
    Case("sample_cd_consistency", "--mode=sample of cd, consistency sampler, 2 steps",
         sample_record("cd", SAMPLE)),
    Case("sample_ct_consistency", "--mode=sample of ct, consistency sampler, 2 steps",
         sample_record("ct", SAMPLE), slow=True),
    Case("sample_meanflow_flow_map", "--mode=sample of mean_flow, flow_map sampler, 2 steps",
         sample_record("meanflow", SAMPLE)),
    Case("sample_pd_ddim", "--mode=sample of pd's last student, DDIM 2 steps",
         sample_record("pd", SAMPLE), slow=True),
    Case("sample_reflow_euler", "--mode=sample of reflow, Euler 2 steps",
         sample_record("reflow", SAMPLE), slow=True),
    # -- slow: the other registered samplers, guidance by a classifier, the image configs (the
    # variants above marked slow keep the default suite's cold run short) --
    _vp_sampler("ddim", grid="uniform", slow=True),
    _vp_sampler("unipc", grid="logsnr", slow=True),
    _vp_sampler("dpmpp_3m", grid="logsnr", slow=True),
    _vp_sampler("dpmpp_2s", grid="logsnr", slow=True),
    _vp_sampler("dpm_solver_3", grid="logsnr", slow=True),
    _vp_sampler("deis", grid="logsnr", slow=True),
    _vp_sampler("ipndm", slow=True),
    _vp_sampler("edm_stochastic", slow=True),
    _vp_sampler("sde_dpmpp_2m", grid="logsnr", slow=True),
    _vp_sampler("euler_maruyama", grid="uniform", slow=True),
    _vp_sampler("reverse_diffusion", grid="uniform", slow=True),
    _vp_sampler("dpm_solver_1", grid="logsnr", slow=True),
    _vp_sampler("dpm_solver_2", grid="logsnr", slow=True),
    _vp_sampler("dpm_solver_12", slow=True),  # adaptive: the grid gives its ends only
    _vp_sampler("dpm_solver_23", slow=True),
    _vp_sampler("ode_adaptive", slow=True),
    _vp_sampler("dpm_solver_v3", grid="logsnr", slow=True),
    _vp_sampler("sde_dpmpp_3m", grid="logsnr", slow=True),
    _vp_sampler("sde_dpmpp_2s", grid="logsnr", slow=True),
    _vp_sampler("sa_solver", grid="logsnr", slow=True),
    Case("sample_cond_classifier_guided",
         "--mode=sample of dsm_cond, classifier guidance (scale 2) by the classifier case",
         sample_record("cond", {**SAMPLE, "guidance.kind": "classifier",
                                "guidance.classifier_scale": 2.0},
                       extra=_classifier_guidance), slow=True),
    Case("digits_vp", "configs/digits/vp.py, DDPM U-Net (8 ch, 2 levels), 8 steps",
         train_record("digits_vp"), slow=True),
    Case("sample_digits_vp_heun", "--mode=sample of digits_vp, Heun 3 steps",
         sample_record("digits_vp", {}), slow=True),
    Case("digits_vdm", "configs/digits/vdm.py: VDM learned schedule and endpoints, 8 steps",
         train_record("digits_vdm"), slow=True),
    Case("digits_edm2", "configs/digits/edm2.py: MP U-Net (8 ch), uncertainty weighting, 8 steps",
         train_record("digits_edm2"), slow=True),
]
CASE_BY_NAME = {c.name: c for c in CASES}
assert len(CASE_BY_NAME) == len(CASES), "duplicate case names"


def compute(case: Case, runs: Runs) -> Dict[str, Any]:
  """The record of ``case``: its platform, identities, info and array fingerprints."""
  raw = case.record(runs)
  return {"case": case.name, "what": case.what, "platform": platform_fingerprint(),
          "identity": raw.get("identity", {}), "info": raw.get("info", {}),
          "arrays": {k: leaf_record(v) for k, v in sorted(raw["arrays"].items())}}


# == golden files ==================================================================================


def golden_path(name: str, directory: str = GOLDEN_DIR) -> str:
  return os.path.join(directory, f"{name}.json")


def write_golden(rec: Dict[str, Any], directory: str = GOLDEN_DIR) -> str:
  """Writes ``rec`` to <directory>/<case>.json: one line per array leaf (readable diffs)."""
  os.makedirs(directory, exist_ok=True)
  lines = ["{"]
  for key in ("case", "what", "platform", "identity", "info"):
    body = json.dumps(rec[key], indent=1, sort_keys=True)
    lines.append(f' {json.dumps(key)}: {body.replace(chr(10), chr(10) + " ")},')
  lines.append(' "arrays": {')
  items = sorted(rec["arrays"].items())
  for i, (k, v) in enumerate(items):
    sep = "," if i < len(items) - 1 else ""
    lines.append(f"  {json.dumps(k)}: {json.dumps(v, sort_keys=True)}{sep}")
  lines += [" }", "}"]
  path = golden_path(rec["case"], directory)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write("\n".join(lines) + "\n")
  os.replace(tmp, path)
  return path


def read_golden(name: str, directory: str = GOLDEN_DIR) -> Optional[Dict[str, Any]]:
  path = golden_path(name, directory)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


# == comparison ====================================================================================


def _flat_json(d: Any, prefix: str = "") -> Dict[str, Any]:
  if isinstance(d, dict) and d:
    out = {}
    for k, v in d.items():
      out.update(_flat_json(v, f"{prefix}.{k}" if prefix else k))
    return out
  return {prefix: d}


def _rel(a: float, b: float, scale: float) -> float:
  if np.isnan(a) and np.isnan(b):
    return 0.0
  if np.isnan(a) or np.isnan(b) or np.isinf(a) or np.isinf(b):
    return 0.0 if a == b else float("inf")
  return abs(a - b) / max(abs(scale), 1e-30) if a != b else 0.0


@dataclasses.dataclass
class Comparison:
  case: str
  bitwise: bool  # the platform is the recorded one: hashes must match
  platform_diff: Dict[str, Tuple[Any, Any]]
  problems: List[str]  # what fails the case
  max_rel: float  # the largest relative difference of any float leaf's sum / sum|x| / norm
  max_rel_leaf: str
  hash_mismatches: List[str]

  @property
  def ok(self) -> bool:
    return not self.problems

  def summary(self) -> str:
    mode = ("bitwise (same platform)" if self.bitwise else "rtol %g (platform differs: %s)" % (
        RTOL, ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in self.platform_diff.items())))
    rel = (f"largest relative difference {self.max_rel:.3g}"
           + (f" at {self.max_rel_leaf}" if self.max_rel_leaf else ""))
    head = f"golden case {self.case!r}: {'ok' if self.ok else 'FAILED'}, {mode}; {rel}"
    if self.hash_mismatches and self.ok:
      head += f"; {len(self.hash_mismatches)} leaves not bitwise equal"
    if self.ok:
      return head
    shown = self.problems[:25]
    more = len(self.problems) - len(shown)
    return "\n".join([head] + [f"  {p}" for p in shown]
                     + ([f"  ... and {more} more"] if more > 0 else []))


def compare(golden: Dict[str, Any], got: Dict[str, Any]) -> Comparison:
  """Compares a recorded case with a fresh computation of it (see the module docstring)."""
  name = golden["case"]
  gp, cp = golden["platform"], got["platform"]
  pdiff = {k: (gp.get(k), cp.get(k)) for k in sorted(set(gp) | set(cp)) if gp.get(k) != cp.get(k)}
  bitwise = not pdiff
  problems: List[str] = []
  # identity: exact (jax_version only when the jax version is the recorded one)
  same_jax = gp.get("jax") == cp.get("jax")
  for section in ("identity", "info"):
    g, c = golden.get(section, {}), got.get(section, {})
    for label in sorted(set(g) | set(c)):
      fg, fc = _flat_json(g.get(label, {})), _flat_json(c.get(label, {}))
      if not same_jax:
        for f in (fg, fc):
          f.pop("resolved.jax_version", None)
      for k in sorted(set(fg) | set(fc)):
        if fg.get(k, "<absent>") != fc.get(k, "<absent>"):
          problems.append(f"{section}[{label}].{k}: recorded {fg.get(k, '<absent>')!r}, "
                          f"now {fc.get(k, '<absent>')!r}")
  ga, ca = golden["arrays"], got["arrays"]
  for k in sorted(set(ga) - set(ca)):
    problems.append(f"{k}: recorded leaf is missing now")
  for k in sorted(set(ca) - set(ga)):
    problems.append(f"{k}: new leaf, not in the record")
  max_rel, max_leaf, mism = 0.0, "", []
  for k in sorted(set(ga) & set(ca)):
    g, c = ga[k], ca[k]
    if "value" in g or "value" in c:
      if g != c:
        problems.append(f"{k}: recorded {g.get('value', g)!r}, now {c.get('value', c)!r}")
      continue
    if g["dtype"] != c["dtype"] or g["shape"] != c["shape"]:
      problems.append(f"{k}: recorded {g['dtype']}{g['shape']}, now {c['dtype']}{c['shape']}")
      continue
    # the sum's difference relative to sum |x| (a sum near 0 has no scale of its own)
    rel = max(_rel(g["sum"], c["sum"], g["abs_sum"]),
              _rel(g["abs_sum"], c["abs_sum"], g["abs_sum"]), _rel(g["l2"], c["l2"], g["l2"]))
    if rel > max_rel or (rel == max_rel and not max_leaf and g["sha256"] != c["sha256"]):
      max_rel, max_leaf = rel, k
    if g["sha256"] == c["sha256"]:
      continue
    mism.append(k)
    exact_kind = np.dtype(g["dtype"]).kind in "iub"  # steps, keys, counts, labels, NFE
    if bitwise or exact_kind:
      why = "integer leaf" if exact_kind and not bitwise else "bitwise"
      problems.append(f"{k}: sha256 differs ({why}); relative difference {rel:.3g} "
                      f"(sum {g['sum']!r} -> {c['sum']!r}, l2 {g['l2']!r} -> {c['l2']!r})")
    elif not rel <= RTOL:
      problems.append(f"{k}: relative difference {rel:.3g} > rtol {RTOL:g} "
                      f"(sum {g['sum']!r} -> {c['sum']!r}, l2 {g['l2']!r} -> {c['l2']!r})")
  return Comparison(name, bitwise, pdiff, problems, max_rel, max_leaf, mism)


# == command line ==================================================================================


def _setup_jax() -> None:
  """The persistent compilation cache, as tests/conftest.py sets it (a cache hit or miss does not
  change any result)."""
  import jax
  cache = os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(REPO, ".jax_cache"))
  jax.config.update("jax_compilation_cache_dir", cache)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)


def selected(names: Optional[str], include_slow: bool) -> List[Case]:
  if names:
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in CASE_BY_NAME]
    if unknown:
      raise SystemExit(f"unknown case(s) {unknown}; known: {sorted(CASE_BY_NAME)}")
    return [CASE_BY_NAME[n] for n in wanted]
  return [c for c in CASES if include_slow or not c.slow]


def main(argv: Optional[Sequence[str]] = None) -> int:
  p = argparse.ArgumentParser(prog="python -m tests.golden", description=__doc__.split("\n")[0])
  mode = p.add_mutually_exclusive_group(required=True)
  mode.add_argument("--record", action="store_true", help="(re)write the golden files")
  mode.add_argument("--check", action="store_true", help="compare with the golden files")
  mode.add_argument("--list", action="store_true", help="list the cases")
  p.add_argument("--all", action="store_true", help="include the slow cases")
  p.add_argument("--cases", default="", help="comma-separated case names (default: all fast)")
  p.add_argument("--out", default=GOLDEN_DIR, help="folder of the golden files")
  p.add_argument("--root", default="", help="folder for the runs' workdirs (default: a temp)")
  args = p.parse_args(argv)
  cases = selected(args.cases, args.all)
  if args.list:
    for c in CASES:
      print(f"{c.name:32s} {'slow' if c.slow else 'fast'}  {c.what}")
    return 0
  if REPO not in sys.path:
    sys.path.insert(0, REPO)
  _setup_jax()
  root = args.root or tempfile.mkdtemp(prefix="golden_")
  os.makedirs(root, exist_ok=True)
  runs = Runs(root)
  failed = 0
  t_all = time.time()
  try:
    for c in cases:
      t0 = time.time()
      rec = compute(c, runs)
      secs = time.time() - t0
      if args.record:
        path = write_golden(rec, args.out)
        print(f"[golden] recorded {c.name} ({len(rec['arrays'])} leaves, {secs:.1f} s) -> "
              f"{os.path.relpath(path, os.getcwd())}", flush=True)
      else:
        g = read_golden(c.name, args.out)
        if g is None:
          print(f"[golden] {c.name}: no golden file in {args.out}", flush=True)
          failed += 1
          continue
        cmp = compare(g, rec)
        failed += not cmp.ok
        print(f"[golden] {cmp.summary()} ({secs:.1f} s)", flush=True)
  finally:
    if not args.root:
      shutil.rmtree(root, ignore_errors=True)
  print(f"[golden] {len(cases)} case(s) in {time.time() - t_all:.1f} s"
        + (f"; {failed} failed" if failed else ""), flush=True)
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
