"""Class-conditional digits: guidance methods against class accuracy and FID, and inpainting.

Samples a trained class-conditional digits model (configs/digits/cond.py) through the sampling
driver's code path (experiments.conditioning plans, experiments.generate.generate_as): plain
conditional sampling, classifier-free guidance and its variants (APG, CFG rescale, CFG-Zero*,
CFG++), autoguidance by a weaker model (an earlier checkpoint of the same run, and, if given, a
smaller network trained for fewer steps) at two weights each, and, if a noise-conditional
classifier (configs/digits/classifier.py) is given, classifier guidance. For each: the class
accuracy of the samples by an SVC trained on the digits' training split
(diffusion.metrics.class_accuracy; its test-split accuracy is the ceiling), optionally FID / KID
against reference statistics, NFE, the network batch per sample and call, and the wall time.
Then inpaints the right half of the first test digits with every posterior method (replacement,
Pi-GDM, DPS, DAPS, DDRM, TDS), by the unconditional model (NULL label) and by the class-conditional
model given each observation's own class (config.inverse.observation_labels), and reports the
error of the completed half against the truth and the SVC's accuracy on the completions.

  python benchmarks/guidance_digits.py --workdir=workdirs/digits_cond \
      --classifier_workdir=workdirs/digits_clf --weak_workdir=workdirs/digits_cond_weak \
      --fid_stats=stats/digits_train_8px_1500.npz

Writes benchmarks/results/guidance_digits.md and docs/img/guidance_digits.png (one row per
class, one panel per setting) and docs/img/inpainting_digits.png.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from diffusion.metrics.class_accuracy import class_accuracy, digits_classifier  # noqa: E402
from experiments import build, generate, observations, setup  # noqa: E402
from experiments.cli import overridden  # noqa: E402
from experiments.config_files import load_config_file  # noqa: E402


def class_rows(x, labels, per_row: int = 10):
  """(10 * per_row, H, W, C): per_row samples of each class 0..9, one class per row."""
  return np.concatenate([x[labels == c][:per_row] for c in range(10)])


def grid(images, ncols):
  n, h, w, _ = images.shape
  nrows = n // ncols
  g = np.ones((nrows * (h + 1) + 1, ncols * (w + 1) + 1))
  for i in range(n):
    r, q = divmod(i, ncols)
    g[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + q * (w + 1):1 + q * (w + 1) + w] = (
        np.clip(images[i, ..., 0], -1, 1) + 1) / 2
  return g


def _batch(info) -> int:
  return int(info["batch_multiplier"]) + int(info.get("guide_batch_multiplier", 0))


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--config", default=os.path.join(ROOT, "configs/digits/cond.py"))
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--classifier_config",
                  default=os.path.join(ROOT, "configs/digits/classifier.py"))
  ap.add_argument("--classifier_workdir", default=None)
  ap.add_argument("--weights", default="2,4", help="weights of every guidance method")
  ap.add_argument("--cfgpp_weights", default="0.4,0.8", help="CFG++'s lambda in [0, 1]")
  ap.add_argument("--guide_step", type=int, default=500,
                  help="autoguidance by this earlier checkpoint of --workdir")
  ap.add_argument("--weak_workdir", default=None,
                  help="autoguidance by this weaker run of configs/digits/cond.py")
  ap.add_argument("--methods", default="replacement,pigdm,dps,daps,ddrm,tds")
  ap.add_argument("--short", action="store_true",
                  help="leave out the reference rows (cfg w = 0, cfg on CFG++'s DDIM grid)")
  ap.add_argument("--classifier_scales", default="1,3")
  ap.add_argument("--num_samples", type=int, default=1000)
  ap.add_argument("--fid_stats", default=None)
  ap.add_argument("--num_observations", type=int, default=10)
  ap.add_argument("--per_observation", type=int, default=4)
  ap.add_argument("--pigdm_t_hi", type=float, default=0.7)
  ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks/results/guidance_digits.md"))
  ap.add_argument("--figures", default=os.path.join(ROOT, "docs/img"))
  args = ap.parse_args(argv)

  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  base = load_config_file(args.config)
  s, params, step = setup.restore_params(base, args.workdir)
  predict, ceiling = digits_classifier()
  n = args.num_samples
  settings = [("conditional, no guidance", {})]
  if not args.short:
    settings.append(("cfg w = 0 (unconditional)", {"guidance.kind": "cfg", "guidance.weight": 0.0}))
  weights = [float(w) for w in args.weights.split(",")]
  guides = [(f"step {args.guide_step}", {"guidance.guide_workdir": args.workdir,
                                         "guidance.guide_step": args.guide_step})]
  if args.weak_workdir:
    guides.append(("ch 16, 500 steps", {"guidance.guide_workdir": args.weak_workdir,
                                        "guidance.guide_config": args.config}))
  for w in weights:
    g = {"guidance.weight": w}
    settings += [(f"cfg w = {w:g}", {**g, "guidance.kind": "cfg"}),
                 (f"apg (eta 0) w = {w:g}", {**g, "guidance.kind": "apg"}),
                 (f"cfg rescale (phi 0.7, v) w = {w:g}", {**g, "guidance.kind": "cfg_rescale"}),
                 (f"cfg-zero* w = {w:g}", {**g, "guidance.kind": "cfg_zero_star"})]
    settings += [(f"autoguidance ({name}) w = {w:g}", {**g, "guidance.kind": "autoguidance",
                                                        **over})
                 for name, over in guides]
  # CFG++ is a DDIM loop: DDIM with as many steps as the Heun runs' NFE, and CFG on it.
  ddim = {"sampling.sampler": "ddim", "sampling.num_steps": 2 * int(base.sampling.num_steps) + 1}
  for lam in map(float, args.cfgpp_weights.split(",")):
    settings.append((f"cfg++ (ddim) lambda = {lam:g}",
                     {**ddim, "guidance.kind": "cfgpp", "guidance.weight": lam}))
  if not args.short:
    settings += [(f"cfg (ddim) w = {w:g}", {**ddim, "guidance.kind": "cfg", "guidance.weight": w})
                 for w in weights]
  if args.classifier_workdir:
    settings += [(f"classifier, scale {c:g}",
                  {"guidance.kind": "classifier", "guidance.classifier_scale": float(c),
                   "guidance.classifier_config": args.classifier_config,
                   "guidance.classifier_workdir": args.classifier_workdir})
                 for c in map(float, args.classifier_scales.split(","))]
  stats = inception_params = None
  if args.fid_stats:
    from diffusion.metrics import inception
    from experiments import eval_common
    stats = eval_common.load_fid_stats(overridden(base, {"eval.fid_stats": args.fid_stats}))
    inception_params = inception.load_params()
  rows, panels = [], []
  for name, over in settings:
    cfg = overridden(base, over)
    x, labels, info, secs = generate.generate_as(s, params, cfg, n)
    row = [name, class_accuracy(predict, x, labels), int(info["nfe"]),
           _batch(info), secs]
    if stats is not None:
      from experiments import eval_common
      m = eval_common.fid_metrics(overridden(cfg, {"eval.fid_stats": args.fid_stats}), x, stats,
                               inception_params)
      row += [m["fid"], m["kid"]]
    rows.append(row)
    panels.append((name, class_rows(x, labels)))
    print(f"{name}: accuracy {row[1]:.3f}, {secs:.1f} s", flush=True)

  # Inpainting: the right half of the first test digits is missing.
  truth, true_labels = build.heldout_labelled(base, args.num_observations)
  inp_rows, inp_panels = [], []
  with tempfile.TemporaryDirectory() as tmp:
    obs = observations.write(base, "inpaint", args.num_observations,
                             os.path.join(tmp, "obs.npz"), mask="right_half")
    with np.load(obs) as f:
      mask = f["mask"]
    known = {
        "replacement": [("replacement", {})],
        "pigdm": [(f"pigdm, t <= {t_hi if t_hi else 'max (the paper)'}",
                   {"inverse.method": "pigdm", "inverse.sigma_data": 0.75,
                    "inverse.pigdm_t_hi": t_hi}) for t_hi in (None, args.pigdm_t_hi)],
        "dps": [(f"dps, zeta {z:g}", {"inverse.method": "dps", "inverse.dps_zeta": z})
                for z in (0.5, 1.0)],
        "daps": [("daps, tau 0.05", {"inverse.method": "daps", "inverse.daps_tau": 0.05})],
        "ddrm": [("ddrm", {"inverse.method": "ddrm"})],
        "tds": [("tds, K 16", {"inverse.method": "tds", "inverse.tds_particles": 16})],
    }
    methods = []
    for m in args.methods.split(","):
      if m not in known:
        raise SystemExit(f"--methods: unknown {m!r}; accepted: {sorted(known)}")
      for name, over in known[m]:
        methods += [(f"{name}, NULL label", {**over, "guidance.label": 10}),
                    (f"{name}, the observation's class",
                     {**over, "inverse.observation_labels": True})]
    k = args.per_observation
    for name, over in methods:
      cfg = overridden(base, {"inverse.task": "inpaint", "inverse.observations": obs,
                              "inverse.samples_per_observation": k, **over})
      x, _, info, secs = generate.generate_as(s, params, cfg, args.num_observations * k)
      j = np.arange(len(x)) % args.num_observations
      missing = 1 - mask[j]
      rmse = float(np.sqrt(np.sum(missing * (x - truth[j])**2) / np.sum(missing)))
      if not np.all(np.isfinite(x)):
        rmse = float("nan")
      acc = class_accuracy(predict, x, true_labels[j])
      inp_rows.append((name, rmse, acc, int(info["nfe"]) * _batch(info),
                       bool(info["network_vjp"]), secs))
      inp_panels.append((name, x))
      print(f"inpainting {name}: RMSE {rmse:.3f}, accuracy {acc:.3f}, {secs:.1f} s", flush=True)

  fid_head = " FID | KID |" if stats is not None else ""
  lines = [f"# Class-conditional digits (step {step}): guidance and inpainting", "",
           f"Command: `python benchmarks/guidance_digits.py --workdir={args.workdir}"
           + (f" --classifier_workdir={args.classifier_workdir}" if args.classifier_workdir
              else "") + (f" --weak_workdir={args.weak_workdir}" if args.weak_workdir else "")
           + (f" --fid_stats={args.fid_stats}" if args.fid_stats else "")
           + (f" --num_samples={n}" if n != 1000 else "") + (" --short" if args.short else "")
           + "`", "",
           f"Sampler: {base.sampling.sampler}, {base.sampling.num_steps} steps; {n} samples, "
           f"classes in turn. Class accuracy by {ceiling:.1%}-accurate SVC (its accuracy on the "
           f"test split: the ceiling); cfg in the 'scale' convention (w = 0 unconditional, "
           f"w = 1 the plain conditional).", "",
           "| setting | class accuracy | NFE | network passes per call | seconds |" + fid_head,
           "|---|---|---|---|---|" + ("---|---|" if stats is not None else "")]
  for r in rows:
    lines.append(f"| {r[0]} | {r[1]:.3f} | {r[2]} | {r[3]} | {r[4]:.1f} |"
                 + (f" {r[5]:.2f} | {r[6]:.2e} |" if stats is not None else ""))
  lines += ["", "network passes per call: per sample and denoiser call (2: conditional "
            "and unconditional in one call, or autoguidance's model and its guide).", "",
            f"Inpainting: the right half of the first {args.num_observations} test digits "
            f"missing, {args.per_observation} completions each, by the unconditional model (NULL "
            f"label) or the class-conditional one given the observation's own class "
            f"(inverse.observation_labels). RMSE over the missing pixels (in [-1, 1]); "
            f"accuracy: the SVC's on the completions against the true digit; network passes: "
            f"denoiser calls per completion times the network batch (DPS back-propagates "
            f"through each: about 3 passes' cost).", "",
            "| method | RMSE of the missing half | class accuracy | network passes | "
            "backprop per call | seconds |", "|---|---|---|---|---|---|"]
  lines += [f"| {r[0]} | {r[1]:.3f} | {r[2]:.3f} | {r[3]} | {'yes' if r[4] else 'no'} | "
            f"{r[5]:.1f} |" for r in inp_rows]
  text = "\n".join(lines) + "\n"
  print(text)
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  from benchmarks.hardware import with_machine_line
  with open(args.out, "w") as f:
    f.write(with_machine_line(text))

  os.makedirs(args.figures, exist_ok=True)
  panels = [p for p in panels if not p[0].startswith("conditional")]  # = cfg w = 1
  fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4))
  for ax, (name, imgs) in zip(np.atleast_1d(axes), panels):
    ax.imshow(grid(imgs, 10), cmap="gray")
    ax.set_title(name, fontsize=9)
    ax.axis("off")
  fig.tight_layout()
  fig.savefig(os.path.join(args.figures, "guidance_digits.png"), dpi=90)
  plt.close(fig)
  m = min(args.num_observations, 8)
  cols = [truth[:m], truth[:m] * mask[:m]]
  for _, x in [p for p in inp_panels if np.all(np.isfinite(p[1]))]:
    cols += [x[j * args.num_observations:(j * args.num_observations) + m] for j in range(min(k, 3))]
  img = np.stack(cols, axis=1).reshape((-1,) + truth.shape[1:])
  fig, ax = plt.subplots(figsize=(len(cols) * 0.6, m * 0.65))
  ax.imshow(grid(img, len(cols)), cmap="gray")
  ax.set_title("truth | observed | " + " | ".join(f"{n_} x{min(k, 3)}" for n_, x_ in inp_panels
                                                 if np.all(np.isfinite(x_))),
               fontsize=7)
  ax.axis("off")
  fig.tight_layout()
  fig.savefig(os.path.join(args.figures, "inpainting_digits.png"), dpi=110)
  plt.close(fig)
  return 0


if __name__ == "__main__":
  sys.exit(main())
