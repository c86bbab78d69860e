"""checkerboard: progressive distillation of configs/toy/checkerboard_vcos.py, 16 -> 1 DDIM steps.

Salimans & Ho 2022, Alg. 2: four rounds; round r trains a student of 8 / 2^r DDIM steps to match
two DDIM steps of its teacher (round 0: the v-prediction teacher at 16 steps; then the previous
student), starting from the teacher's parameters, with the truncated-SNR weighting and
v-prediction. 2,500 steps per round; the checkpoints at steps 2,500, 5,000, 7,500 and 10,000 hold
the students of 8, 4, 2 and 1 steps (sample round r's with --config.eval.step=<2500 (r + 1)>
--config.sampling.num_steps=<8 / 2^r>).

Run (after training the teacher):
  python -m experiments.main --config=configs/toy/checkerboard_pd.py --workdir=workdirs/checkerboard_pd --mode=train

Measured (2026-12-07, 2 CPU cores shared at load 10; docs/few_step.md): sliced Wasserstein of
10,000 samples to held-out data (floor 0.059) 0.186 / 0.189 / 0.192 / 0.197 at 8 / 4 / 2 / 1
steps (the teacher at 16: 0.186, at 1: 2.218); 338 s for the four rounds. With the earlier
ema_decay 0.999 (2026-12-02): 0.197 / 0.218 / 0.259 / 0.312, 272 s.
"""
from configs.toy.few_step import student


def get_config():
  c = student("progressive_distillation", "vcos")
  c.experiment = "toy/checkerboard_pd"
  c.distill.student_steps = 8
  c.distill.rounds = 4
  c.training.num_steps = 10_000
  c.training.ckpt_every = 2_500
  c.training.sample_every = 0
  c.optim.lr = 1e-3
  c.optim.warmup_steps = 0
  c.optim.decay = "cosine"  # per round (each round starts a fresh optimizer)
  # Each round restarts the EMA from the previous student: 0.998 averages a fifth of a 2,500-step
  # round (0.999 lagged 37% of it with 8% of its weight left on the previous student).
  c.training.ema_decay = 0.998
  c.sampling.sampler = "ddim"
  c.sampling.grid = "uniform"
  c.sampling.num_steps = 1  # the last round's student
  return c
