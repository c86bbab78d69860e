"""Noise-conditional classifier p(k | x_t, t) of 8gaussians under the VP SDE (classifier guidance).

Question: how accurately does a residual-MLP classifier of noisy points x_t = alpha x0 + sigma
eps recover the mixture component k of 8gaussians at each noise level (Song et al. 2021, App. I;
Dhariwal & Nichol 2021)? The Bayes classifier's accuracy falls from about 1 at t_min to chance
(1/8) at t_max. The process (sde.*), the time input (model.time_input, scale_input, the
sinusoidal embedding) and the training times (training.t_min) are exactly those of
configs/toy/8gaussians_vp.py and 8gaussians_vp_cond.py, so its gradient can guide their
samplers. The trunk is theirs (mlp_classifier: the mlp's trunk, 8 logits).

Run (train, then held-out accuracy at 5 noise levels evenly spaced in logSNR):
  python -m experiments.main --config=configs/toy/8gaussians_vp_classifier.py --workdir=workdirs/8gaussians_vp_classifier --mode=train
  python -m experiments.main --config=configs/toy/8gaussians_vp_classifier.py --workdir=workdirs/8gaussians_vp_classifier --mode=eval

Measured (2 CPU cores shared with other jobs; training 5,000 steps in 88 s wall, evaluation
6 s; 10,000 held-out points, one x_t draw each): held-out accuracy / cross-entropy (nats) of the
EMA classifier, and of the exact Bayes posterior of the mixture on the same draws,
  t = 0.001   0.9982 / 0.0079   (Bayes 0.9978 / 0.0062)
  t = 0.0317  0.9963 / 0.0123   (Bayes 0.9962 / 0.0108)
  t = 0.305   0.5868 / 0.9605   (Bayes 0.5864 / 0.9592)
  t = 0.722   0.1553 / 2.0568   (Bayes 0.1575 / 2.0566)
  t = 1       0.1294 / 2.0797   (Bayes 0.1282 / 2.0793)
Final training loss 1.389 nats against the Bayes minimum E_t H(K | X_t) = 1.3894 (quadrature).
"""
import ml_collections

from configs.toy.common import toy_config


def get_config():
  c = toy_config("8gaussians", "vp")
  c.experiment = "toy/8gaussians_vp_classifier"
  c.model.name = "mlp_classifier"
  net = c.model.net.to_dict()  # the score model's trunk: width, num_blocks, embed_dim
  c.model.net = ml_collections.ConfigDict(dict(net, num_classes=8))
  c.training.objective = "classifier"
  c.training.num_steps = 5_000  # half the score model's: the classifier's loss flattens earlier
  return c
