"""Guidance and inpainting of a trained 8gaussians model against the exact answers.

8gaussians is a Gaussian mixture (diffusion.data.toy2d), so with class = component every
quantity has an exact value: the class-conditional densities, the Bayes classifier, and the
posterior of one coordinate given the other (diffusion.analytic.linear_gaussian_posterior).
This script samples a trained class-conditional model (configs/toy/8gaussians_vp_cond.py) and
its noise-conditional classifier (configs/toy/8gaussians_vp_classifier.py) through the sampling
driver's own code path (experiments.conditioning plans, experiments.generate.generate_as) and
reports:

* per guidance setting: the class accuracy of the samples by the exact Bayes classifier, and the
  sliced Wasserstein distance of each class's samples to exact samples of that class (mean over
  the 8 classes), with the exact-vs-exact value as the noise floor;
* inpainting (the first coordinate observed, noiseless): per method, the 1-D Wasserstein-2
  distance of the completions' second coordinate to the exact posterior's, averaged over the
  observations, with its floor.

  python benchmarks/guidance_toy.py --workdir=workdirs/8gaussians_vp_cond \
      --classifier_workdir=workdirs/8gaussians_vp_classifier

Writes benchmarks/results/guidance_toy.md and the figures docs/img/guidance_toy.png,
docs/img/inpainting_toy.png.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from diffusion import analytic  # noqa: E402
from diffusion.data import toy2d  # noqa: E402
from diffusion.metrics import sliced_wasserstein  # noqa: E402
from diffusion.metrics.class_accuracy import class_accuracy  # noqa: E402
from experiments import conditioning, generate, setup  # noqa: E402
from experiments.cli import overridden  # noqa: E402
from experiments.config_files import load_config_file  # noqa: E402


def exact_mixture() -> analytic.GaussianMixture:
  w, means, covs = toy2d.gaussian_mixture_params("8gaussians")
  return analytic.GaussianMixture.create(w, means, covs, classes=np.arange(len(w)))


def class_sw(gm, x, labels, key_seed: int, per_class: int) -> float:
  """Mean over classes of SW(samples of class y, exact samples of class y)."""
  out = []
  for y in range(gm.num_classes):
    exact = np.asarray(gm.conditional(y).sample0(jax.random.PRNGKey(1000 + y), per_class,
                                                 np.float64))
    out.append(sliced_wasserstein(x[labels == y], exact, key_seed))
  return float(np.mean(out))


def w2_1d(a: np.ndarray, b: np.ndarray) -> float:
  """Wasserstein-2 distance of two 1-D samples of equal size (sorted coupling)."""
  return float(np.sqrt(np.mean((np.sort(a) - np.sort(b))**2)))


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--config", default=os.path.join(ROOT, "configs/toy/8gaussians_vp_cond.py"))
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--classifier_config",
                  default=os.path.join(ROOT, "configs/toy/8gaussians_vp_classifier.py"))
  ap.add_argument("--classifier_workdir", default=None)
  ap.add_argument("--per_class", type=int, default=1000, help="samples per class")
  ap.add_argument("--num_observations", type=int, default=8)
  ap.add_argument("--per_observation", type=int, default=1000)
  ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks/results/guidance_toy.md"))
  ap.add_argument("--figures", default=os.path.join(ROOT, "docs/img"))
  args = ap.parse_args(argv)

  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  base = load_config_file(args.config)
  s, params, step = setup.restore_params(base, args.workdir)
  gm = exact_mixture()
  ref = conditioning.reference_classifier(base)[0]
  n = 8 * args.per_class
  floor = class_sw(gm, *gm.sample0_labelled(jax.random.PRNGKey(7), n, np.float64),
                   key_seed=0, per_class=args.per_class)
  settings = [
      ("conditional (no guidance)", {}),
      ("cfg w = 0 (unconditional)", {"guidance.kind": "cfg", "guidance.weight": 0.0}),
      ("cfg w = 1", {"guidance.kind": "cfg", "guidance.weight": 1.0}),
      ("cfg w = 3", {"guidance.kind": "cfg", "guidance.weight": 3.0}),
      ("cfg w = 3, t in [0.1, 0.6]", {"guidance.kind": "cfg", "guidance.weight": 3.0,
                                      "guidance.t_lo": 0.1, "guidance.t_hi": 0.6}),
  ]
  if args.classifier_workdir:
    clf = {"guidance.kind": "classifier", "guidance.classifier_config": args.classifier_config,
           "guidance.classifier_workdir": args.classifier_workdir}
    settings += [("classifier, scale 1", dict(clf, **{"guidance.classifier_scale": 1.0})),
                 ("classifier, scale 3", dict(clf, **{"guidance.classifier_scale": 3.0}))]
  rows, shown = [], {}
  for name, over in settings:
    cfg = overridden(base, over)
    x, labels, info, secs = generate.generate_as(s, params, cfg, n)
    rows.append((name, class_accuracy(ref, x, labels), class_sw(gm, x, labels, 0, args.per_class),
                 int(info["nfe"]), int(info["batch_multiplier"]), secs))
    shown[name] = (x, labels)
    print(f"{name}: accuracy {rows[-1][1]:.4f}, SW {rows[-1][2]:.4f}, {secs:.1f} s", flush=True)

  # Inpainting: observe the first coordinate of held-out points.
  heldout = toy2d.heldout("8gaussians", args.num_observations, 123)
  inp_rows, inp_shown = [], {}
  with tempfile.TemporaryDirectory() as tmp:
    obs = os.path.join(tmp, "obs.npz")
    np.savez(obs, images=heldout, mask=np.tile([1.0, 0.0], (len(heldout), 1)))
    k = args.per_observation
    exact = []
    for j, y in enumerate(heldout[:, :1]):
      post = analytic.linear_gaussian_posterior(gm, np.array([[1.0, 0.0]]), y)
      exact.append(np.asarray(post.sample0(jax.random.PRNGKey(j), k, np.float64))[:, 1])
    floor_inp = np.mean([w2_1d(e, np.asarray(analytic.linear_gaussian_posterior(
        gm, np.array([[1.0, 0.0]]), y).sample0(jax.random.PRNGKey(500 + j), k, np.float64))[:, 1])
        for j, (e, y) in enumerate(zip(exact, heldout[:, :1]))])
    methods = [("replacement", {})] + [
        (f"pigdm, t <= {t_hi if t_hi else 'max (the paper)'}",
         {"inverse.method": "pigdm", "inverse.sigma_data": 2.0, "inverse.pigdm_t_hi": t_hi})
        for t_hi in (None, 0.9, 0.7)]
    for method, extra in methods:
      cfg = overridden(base, {"inverse.task": "inpaint", "inverse.observations": obs,
                              "inverse.method": "replacement", "guidance.label": 8, **extra})
      x, _, info, secs = generate.generate_as(s, params, cfg, len(heldout) * k)
      comp = [x[j::len(heldout)] for j in range(len(heldout))]
      obs_err = max(float(np.max(np.abs(c[:, 0] - y))) for c, y in zip(comp, heldout[:, 0]))
      obs_err = obs_err if np.all(np.isfinite(x)) else float("nan")
      dist = float(np.mean([w2_1d(c[:, 1], e) for c, e in zip(comp, exact)]))
      inp_rows.append((method, dist, obs_err, int(info["nfe"]), bool(info["network_vjp"]), secs))
      inp_shown[method] = comp
      print(f"inpainting {method}: W2 {dist:.4f}, max |x1 - y| {obs_err:.2e}, {secs:.1f} s",
            flush=True)

  sampler = f"{base.sampling.sampler}, {base.sampling.num_steps} steps"
  lines = [
      f"# Guidance and inpainting on 8gaussians (trained model, step {step}) vs exact answers",
      "", f"Command: `python benchmarks/guidance_toy.py --workdir={args.workdir}"
      + (f" --classifier_workdir={args.classifier_workdir}" if args.classifier_workdir else "")
      + "`", "", f"Sampler: {sampler}; {args.per_class} samples per class. Accuracy: the exact "
      "Bayes classifier of the mixture (its own accuracy on exact samples: "
      f"{class_accuracy(ref, *gm.sample0_labelled(jax.random.PRNGKey(3), n, np.float64)):.4f})."
      f" SW: sliced Wasserstein of each class's samples to exact samples of the class, mean "
      f"over classes; exact vs exact: {floor:.4f}.", "",
      "| setting | class accuracy | SW to exact class | NFE | network batch | seconds |",
      "|---|---|---|---|---|---|"]
  lines += [f"| {r[0]} | {r[1]:.4f} | {r[2]:.4f} | {r[3]} | x{r[4]} | {r[5]:.1f} |"
            for r in rows]
  lines += ["", f"Inpainting: x1 observed (noiseless) at {len(heldout)} held-out points, "
            f"{args.per_observation} completions each; W2 of the completions' x2 to the exact "
            f"posterior's, mean over observations; exact vs exact: {floor_inp:.4f}.", "",
            "| method | W2 to exact posterior | max abs(x1 - y) | NFE | backprop per call | "
            "seconds |",
            "|---|---|---|---|---|---|"]
  lines += [f"| {r[0]} | {r[1]:.4f} | {r[2]:.1e} | {r[3]} | {'yes' if r[4] else 'no'} | "
            f"{r[5]:.1f} |" for r in inp_rows]
  text = "\n".join(lines) + "\n"
  print(text)
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  from benchmarks.hardware import with_machine_line
  with open(args.out, "w") as f:
    f.write(with_machine_line(text))

  os.makedirs(args.figures, exist_ok=True)
  names = [r[0] for r in rows if not r[0].startswith("conditional")]
  fig, axes = plt.subplots(1, len(names), figsize=(3 * len(names), 3.2), sharex=True, sharey=True)
  for ax, name in zip(axes, names):
    x, labels = shown[name]
    ax.scatter(x[:2000, 0], x[:2000, 1], s=1, c=labels[:2000], cmap="tab10", alpha=0.6)
    ax.set_title(name, fontsize=8)
    ax.set_aspect("equal")
    ax.set_xlim(-4.5, 4.5)
    ax.set_ylim(-4.5, 4.5)
  fig.tight_layout()
  fig.savefig(os.path.join(args.figures, "guidance_toy.png"), dpi=90)
  plt.close(fig)
  fig, axes = plt.subplots(1, 4, figsize=(12, 3))
  for j, ax in enumerate(axes):
    bins = np.linspace(-4.5, 4.5, 60)
    ax.hist(exact[j], bins, density=True, histtype="step", color="k", label="exact posterior")
    for method, comp in inp_shown.items():
      if np.all(np.isfinite(comp[j])):
        ax.hist(comp[j][:, 1], bins, density=True, histtype="step", label=method)
    ax.set_title(f"x1 = {heldout[j, 0]:.2f}: x2 | x1", fontsize=9)
  axes[0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(os.path.join(args.figures, "inpainting_toy.png"), dpi=90)
  plt.close(fig)
  return 0


if __name__ == "__main__":
  sys.exit(main())
