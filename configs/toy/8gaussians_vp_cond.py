"""Class-conditional 8gaussians under the VP SDE, trained for classifier-free guidance.

Question: does the residual MLP of configs/toy/8gaussians_vp.py learn the 8 conditional
densities p(x | k) (k = the mixture component, diffusion.data.toy2d) and the unconditional one
in one network, with labels dropped to the NULL label at rate 0.1 (Ho & Salimans 2022; their
paper uses 0.1-0.2)? Same data, process, network and optimizer as 8gaussians_vp.py, plus an
8-class embedding (model.net.num_classes = 8, label_dropout = 0.1). --mode=eval evaluates the
unconditional model (NULL label): held-out PF-ODE NLL, sliced Wasserstein, MMD.

Run (train, then evaluate):
  python -m experiments.main --config=configs/toy/8gaussians_vp_cond.py --workdir=workdirs/8gaussians_vp_cond --mode=train
  python -m experiments.main --config=configs/toy/8gaussians_vp_cond.py --workdir=workdirs/8gaussians_vp_cond --mode=eval

Measured (2 CPU cores shared with other jobs, load about 4; training 10,000 steps in 216 s wall,
evaluation 40 s): the unconditional (NULL-label) model has excess NLL 0.041 nats (NLL 2.872 +-
0.021 vs 2.830; 2,000 held-out points, PF-ODE, exact divergence), sliced Wasserstein 0.110, MMD
0.0023 (Heun, NFE 37); the unconditional-only 8gaussians_vp.py reaches 0.001 / 0.073 / 0.0006:
the NULL label sees 10% of the batches. Class-conditional samples (Heun, NFE 37, 4,000 samples,
label i mod 8): 99.75% fall in the requested component (argmax of the exact posterior), with
per-coordinate std 0.377 / 0.374 around its mean (data: 0.354).
Guidance against exact answers (classifier-free w = 0 / 1 / 3, an interval, classifier guidance
with configs/toy/8gaussians_vp_classifier.py; inpainting x2 given x1 by replacement and Pi-GDM;
figures docs/img/guidance_toy.png, docs/img/inpainting_toy.png):
  python benchmarks/guidance_toy.py --workdir=workdirs/8gaussians_vp_cond --classifier_workdir=workdirs/8gaussians_vp_classifier
Measured (benchmarks/results/guidance_toy.md): class accuracy by the exact Bayes classifier
0.123 / 0.996 / 1.000 at w = 0 / 1 / 3; sliced Wasserstein to the exact class densities 0.037 at
w = 1 (exact vs exact 0.028); classifier guidance 0.992 / 1.000 at scale 1 / 3; inpainting W2 to
the exact posterior 0.732 (replacement), 0.664 (Pi-GDM, t <= 0.7; NaN at every t), floor 0.198.
"""
from configs.toy.common import toy_config


def get_config():
  c = toy_config("8gaussians", "vp")
  c.experiment = "toy/8gaussians_vp_cond"
  c.model.conditional = True
  c.model.net.num_classes = 8
  c.model.net.label_dropout = 0.1
  return c
