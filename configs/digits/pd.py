"""8x8 digits: progressive distillation of configs/digits/vcos.py, 16 -> 8 -> 4 -> 2 -> 1 steps.

Salimans & Ho 2022, Alg. 2: four rounds of 250 steps; round r's student (8 / 2^r DDIM steps on
the uniform grid) learns two DDIM steps of its teacher in one (round 0's teacher: the trained
v-prediction model at 16 steps), starting from the teacher's parameters, truncated-SNR weighting,
a fresh Adam with a cosine decay per round. The checkpoints at steps 250, 500, 750 and 1,000 hold
the students of 8, 4, 2 and 1 steps (sample round r's with --config.eval.step=<250 (r + 1)>
--config.sampling.num_steps=<8 / 2^r>).

Run (after training the teacher):
  python -m experiments.main --config=configs/digits/pd.py --workdir=workdirs/digits_pd --mode=train

Measured (2026-12-02, 2 shared CPU cores; docs/few_step.md): FID of 500 samples against the
training split (500 training images: 8.38) 14.50 / 15.78 / 18.35 / 25.29 at 8 / 4 / 2 / 1 steps
(the teacher: 13.94 at 16 DDIM steps, 109.9 at 1); 1,028 s for the four rounds. Measured with
training.ema_decay = 0.995; now 0.98 (below), which leaves round 1 as it was (its warm-up decay
stays under 0.98 until step 440) and rounds 2-4 not measured again.
"""
from configs.digits.few_step import student, vcos


def get_config():
  c = student("progressive_distillation", vcos(), "vcos")
  c.experiment = "digits/pd"
  c.distill.student_steps = 8
  c.distill.rounds = 4
  c.training.num_steps = 1_000
  c.training.ckpt_every = 250
  c.optim.lr = 2e-4
  c.optim.decay = "cosine"  # per round
  # Each round restarts the EMA from the previous student: 0.98 averages a fifth of a 250-step
  # round (digits' 0.995 lagged 38% of it with 8% of its weight left on the previous student).
  c.training.ema_decay = 0.98
  c.sampling.num_steps = 1  # the last round's student
  return c
