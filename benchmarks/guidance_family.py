"""Guidance family benchmark: CFG, APG, CFG rescale, CFG-Zero*, CFG++ and autoguidance on an
exact labelled 2-D mixture.

  .venv/bin/python -m benchmarks.guidance_family            # a few minutes on 2 CPU cores

Writes benchmarks/results/guidance_family.md.

Problem: 8 Gaussian components (std 0.15) on the circle of radius 2 ("8gaussians"), 4 classes
of 2 adjacent components, equal weights; VP schedule, the exact mixture denoiser as the network
(conditional for labels, unconditional for the NULL label), float32, 1,000 samples per class.
Each method samples with dpmpp_2m (30 steps, karras grid, final denoise) except CFG++, which
exists only as DDIM (``guidance.cfgpp_ddim``), so CFG with the same DDIM grid is listed beside
it. Measures:
  * acc: the fraction of samples whose argmax_y p(y | x) (exact, at t_min) is their label;
  * SW: sliced 2-Wasserstein distance (256 projections) between a class's samples and as many
    exact samples of p(x | y), averaged over classes (the 'exact' row: two exact sample sets);
  * NFE (denoiser calls) and the network batch multiplier (x2 for the two-branch methods), plus
    the guide network's (autoguidance's bad model: the same classes, covariances x4).
Guidance pushes samples away from the unconditional / bad model, so SW to p(x | y) grows with
the weight while the accuracy rises; neither alone is 'quality'. On 2-D data the per-sample std
(CFG rescale) and the per-sample projections (APG, CFG-Zero*) act on 2 numbers: the methods are
built for images, this measures their mechanics, not their image-quality claims.

Second table: autoguidance on an unlabelled 2-D mixture (good) and its degraded version (bad:
covariances x2.5, weights perturbed; as in tests/test_guidance_family.py), w = 2. The density
the guided score is the score of, p_good,t^w p_bad,t^(1-w) / Z, is computed by quadrature on a
grid at t_min; annealed Langevin with the guided score converges to it (tested), while the
guided PF-ODE need not (the tilted family is not a diffusion of one distribution): reported,
as moment error (max |mean err| + max |cov err|) and total variation between 2-D histograms.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "benchmarks", "results")
NULL = 4
STEPS = 30
T_MIN = 2e-3


def mixture():
  from diffusion import analytic
  ang = 2 * np.pi * np.arange(8) / 8
  means = 2.0 * np.stack([np.cos(ang), np.sin(ang)], -1)
  return analytic.GaussianMixture.create(np.full(8, 1 / 8), means, np.full(8, 0.15**2),
                                         classes=np.arange(8) // 2)


def bad_mixture():
  gm = mixture()
  from diffusion import analytic
  return analytic.GaussianMixture.create(gm.weights, gm.means, np.full(8, 4 * 0.15**2),
                                         classes=gm.classes)


def methods(schedule):
  """(name, weight, kind, make(den) -> guided denoiser or None for CFG++)."""
  from diffusion import guidance as g
  bad = bad_mixture().denoiser(schedule)
  out = [("conditional (no guidance)", 1.0, "dpmpp_2m",
          lambda d, w: g.classifier_free(d, w, null_label=NULL))]
  for w in (2.0, 4.0):
    out += [
        ("cfg", w, "dpmpp_2m", lambda d, w: g.classifier_free(d, w, null_label=NULL)),
        ("apg eta=0", w, "dpmpp_2m",
         lambda d, w: g.adaptive_projected_guidance(d, w, null_label=NULL, eta=0.0)),
        ("apg eta=0 r=1", w, "dpmpp_2m",
         lambda d, w: g.adaptive_projected_guidance(d, w, null_label=NULL, eta=0.0,
                                                     norm_threshold=1.0)),
        ("cfg_rescale phi=0.7 v", w, "dpmpp_2m",
         lambda d, w: g.rescaled_classifier_free(d, w, null_label=NULL, schedule=schedule)),
        ("cfg_rescale phi=0.7 eps", w, "dpmpp_2m",
         lambda d, w: g.rescaled_classifier_free(d, w, null_label=NULL, space="eps",
                                                  schedule=schedule)),
        ("cfg_rescale phi=0.7 x0", w, "dpmpp_2m",
         lambda d, w: g.rescaled_classifier_free(d, w, null_label=NULL, space="x0")),
        ("cfg_zero_star velocity", w, "dpmpp_2m",
         lambda d, w: g.classifier_free_zero_star(d, w, null_label=NULL, schedule=schedule)),
        ("autoguidance (bad: cov x4)", w, "dpmpp_2m", lambda d, w: g.autoguidance(d, bad, w)),
        ("cfg (DDIM)", w, "ddim", lambda d, w: g.classifier_free(d, w, null_label=NULL)),
    ]
  for lam in (0.2, 0.6):
    out.append(("cfgpp (DDIM)", lam, "cfgpp", None))
  return out


def run(n_per_class: int):
  import jax
  import jax.numpy as jnp
  from diffusion import guidance as g
  from diffusion import schedules
  from diffusion.metrics.sliced_wasserstein import sliced_wasserstein
  from diffusion.samplers import build_sampler, grids
  sched = schedules.VP()
  gm = mixture()
  den = gm.denoiser(sched)
  c = gm.num_classes
  labels = jnp.asarray(np.repeat(np.arange(c), n_per_class))
  x_T = sched.prior_sample(jax.random.PRNGKey(0), (len(labels), 2)).astype(jnp.float32)
  exact = [np.asarray(gm.conditional(y).sample0(jax.random.PRNGKey(10 + y), n_per_class))
           for y in range(c)]
  exact2 = [np.asarray(gm.conditional(y).sample0(jax.random.PRNGKey(20 + y), n_per_class))
            for y in range(c)]

  def measure(x):
    x = np.asarray(x)
    logp = np.asarray(gm.class_log_probs(jnp.asarray(x), T_MIN, sched))
    acc = float(np.mean(np.argmax(logp, -1) == np.asarray(labels)))
    sw = np.mean([sliced_wasserstein(x[np.asarray(labels) == y], exact[y], 0) for y in range(c)])
    return acc, float(sw)

  rows = [dict(method="exact samples of p(x | y)", weight="-", sampler="-", nfe="-", mult="-",
               guide="-", acc=measure(np.concatenate(exact2))[0],
               sw=float(np.mean([sliced_wasserstein(exact2[y], exact[y], 0) for y in range(c)])),
               secs=0.0)]
  samplers = {
      "dpmpp_2m": build_sampler("dpmpp_2m", sched, STEPS, t_min=T_MIN, final_denoise=True),
      "ddim": build_sampler("ddim", sched, STEPS, t_min=T_MIN, final_denoise=True)}
  ddim_grid = grids.time_grid(sched, STEPS, "karras", t_min=T_MIN, t_max=sched.t_max, rho=7.0,
                              sampler="ddim")
  for name, w, kind, make in methods(sched):
    t0 = time.time()
    if kind == "cfgpp":
      run_fn = lambda x, lab, w=w: g.cfgpp_ddim(den, sched, None, x, ddim_grid, weight=w,
                                                null_label=NULL, cond=lab, final_denoise=True)
      x = jax.jit(lambda x, lab: run_fn(x, lab)[0])(x_T, labels)
      info = run_fn(x_T[:1], labels[:1])[1]  # the info dict (host values) of the same call
      sampler = "ddim (CFG++)"
    else:
      x, info = samplers[kind](make(den, w), jax.random.PRNGKey(1), x_T, labels)
      sampler = kind
    x = np.asarray(jax.block_until_ready(x))
    acc, sw = measure(x)
    rows.append(dict(method=name, weight=f"{w:g}", sampler=sampler, nfe=int(info["nfe"]),
                     mult=int(info.get("batch_multiplier", 1)),
                     guide=int(info.get("guide_batch_multiplier", 0)), acc=acc, sw=sw,
                     secs=time.time() - t0))
    print(fmt(rows[-1]), flush=True)
  return rows


HEADER = ("| method | weight | sampler | NFE | batch x | guide batch x | class acc | SW to p(x|y) "
          "| time (s) |")


def fmt(r) -> str:
  return (f"| {r['method']} | {r['weight']} | {r['sampler']} | {r['nfe']} | {r['mult']} | "
          f"{r['guide']} | {r['acc']:.3f} | {r['sw']:.3f} | {r['secs']:.1f} |")


# -- autoguidance vs the tilted density ----------------------------------------------------------


def good_bad():
  from diffusion import analytic
  means = np.array([[-1.0, 0.0], [1.0, 0.4], [0.0, 1.3]])
  covs = np.array([np.diag([0.15, 0.1]), [[0.12, 0.05], [0.05, 0.1]], np.diag([0.08, 0.2])])
  good = analytic.GaussianMixture.create([0.3, 0.45, 0.25], means, covs)
  bad = analytic.GaussianMixture.create([0.4, 0.3, 0.3], means, 2.5 * covs)
  return good, bad


def tilted_grid(t, w, sched, n=241, half=3.5):
  import jax.numpy as jnp
  good, bad = good_bad()
  gl = np.linspace(-half, half, n)
  xx = np.stack(np.meshgrid(gl, gl, indexing="ij"), -1).reshape(-1, 2)
  tt = jnp.full((len(xx),), t)
  lp = np.asarray(w * good.log_prob(jnp.asarray(xx), tt, sched)
                  + (1 - w) * bad.log_prob(jnp.asarray(xx), tt, sched))
  p = np.exp(lp - lp.max())
  p /= p.sum()
  return xx, p


def tilted_distances(x, xx, p, half=3.5, bins=35):
  m = p @ xx
  cov = (xx - m).T @ ((xx - m) * p[:, None])
  x = np.asarray(x, np.float64)
  mom = np.abs(x.mean(0) - m).max() + np.abs(np.cov(x.T) - cov).max()
  edges = np.linspace(-half, half, bins + 1)
  hp, _, _ = np.histogram2d(xx[:, 0], xx[:, 1], [edges, edges], weights=p)
  hx, _, _ = np.histogram2d(x[:, 0], x[:, 1], [edges, edges])
  tv = 0.5 * np.abs(hx / len(x) - hp).sum()
  return float(mom), float(tv)


def autoguidance_rows(n: int, w: float = 2.0):
  import jax
  import jax.numpy as jnp
  from diffusion import guidance as g
  from diffusion import schedules
  from diffusion.samplers import build_sampler
  sched = schedules.VP()
  good, bad = good_bad()
  t_end = 0.02
  xx, p = tilted_grid(t_end, w, sched)
  ag = g.autoguidance(good.denoiser(sched), bad.denoiser(sched), w)

  def score(x, t):
    a, s = sched.alpha(t)[:, None], sched.sigma(t)[:, None]
    return (a * ag(x, t) - x) / s**2

  def langevin(per_level, final, levels=10, eps=0.2):
    ts = np.concatenate([np.repeat(np.geomspace(0.4, t_end, levels), per_level),
                         np.full(final, t_end)])
    hs = eps * np.asarray(sched.sigma(ts))**2
    x = jax.random.normal(jax.random.PRNGKey(1), (n, 2), jnp.float64)
    key = jax.random.PRNGKey(2)

    def body(x, s):
      t, h, j = s
      z = jax.random.normal(jax.random.fold_in(key, j), x.shape, x.dtype)
      return x + h * score(x, jnp.full((n,), t)) + jnp.sqrt(2 * h) * z, None

    return jax.lax.scan(body, x, (jnp.asarray(ts), jnp.asarray(hs), jnp.arange(len(ts))))[0]

  rows = []
  rng = np.random.default_rng(0)  # the floor: exact draws from the grid density (cell-jittered)
  cell = xx[1, 1] - xx[0, 1]
  xq = xx[rng.choice(len(xx), n, p=p)] + cell * (rng.random((n, 2)) - 0.5)
  rows.append(("tilted density itself (grid draws: the Monte Carlo floor)", "-",
               *tilted_distances(xq, xx, p)))
  xe = np.asarray(good.sample(jax.random.PRNGKey(3), n, t_end, sched, jnp.float64))
  rows.append(("good model's own p_t (exact samples)", "-", *tilted_distances(xe, xx, p)))
  for k, f in ((2, 10), (10, 50), (40, 200), (100, 300)):
    x = jax.jit(lambda: langevin(k, f))()
    rows.append((f"annealed Langevin, 10 levels x {k} + {f} steps", 10 * k + f,
                 *tilted_distances(x, xx, p)))
  x_T = sched.prior_sample(jax.random.PRNGKey(4), (n, 2)).astype(jnp.float64)
  for name, steps in (("dpmpp_2m", 30), ("heun", 30), ("heun", 100)):
    f = build_sampler(name, sched, steps, t_min=t_end)
    x, info = f(ag, jax.random.PRNGKey(5), x_T)
    rows.append((f"guided PF-ODE, {name} {steps} steps to t = {t_end}", int(info["nfe"]),
                 *tilted_distances(x, xx, p)))
  for r in rows:
    print(r, flush=True)
  return rows


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--n", type=int, default=1000, help="samples per class")
  p.add_argument("--out", default=os.path.join(RESULTS, "guidance_family.md"))
  args = p.parse_args(argv)
  import jax
  jax.config.update("jax_compilation_cache_dir", os.environ.get(
      "JAX_COMPILATION_CACHE_DIR", os.path.join(REPO, ".jax_cache")))
  t0 = time.time()
  print(HEADER)
  rows = run(args.n)
  with jax.enable_x64(True):
    arows = autoguidance_rows(4000)
  total = time.time() - t0
  lines = [
      "# Guidance family on an exact labelled 8-Gaussians mixture",
      "",
      f"Generated by `python -m benchmarks.guidance_family` (see its docstring); {args.n} "
      f"samples per class, 4 classes (2 adjacent components of 8 on the circle of radius 2, std "
      f"0.15), VP schedule, exact denoiser, float32, {STEPS} steps (karras grid, t_min = {T_MIN}, "
      f"final denoise). class acc: argmax of the exact p(y | x) at t_min; SW: sliced "
      f"2-Wasserstein to exact samples of p(x | y), mean over classes. CFG++'s weight is its "
      f"lambda in [0, 1]. Time: wall seconds, compilation included; total {total:.0f} s.",
      "",
      HEADER,
      "|" + "---|" * 9,
  ] + [fmt(r) for r in rows] + [
      "",
      "## Autoguidance: the tilted density p_good,t^w p_bad,t^(1-w) / Z (w = 2, t = 0.02)",
      "",
      "Grid quadrature (241 x 241 on [-3.5, 3.5]^2) vs 4,000 samples (float64). Langevin is "
      "tested to converge (tests/test_guidance_family.py); the guided PF-ODE is not expected to "
      "reach the tilted density (reported only).",
      "",
      "| samples | NFE | moment err | histogram TV (35 x 35 bins) |",
      "|---|---|---|---|",
  ] + [f"| {a} | {b} | {m:.3f} | {tv:.3f} |" for a, b, m, tv in arows]
  from benchmarks.train_throughput import write_table
  write_table("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
  main()
