"""Consistency distillation on CIFAR-10 (Song, Dhariwal, Chen & Sutskever 2023, "Consistency
Models", CM below, sec. 6.1), from the EDM teacher of configs/cifar10/edm_ve.py.

Settings: the teacher's NCSN++ network and parameters with CM's boundary skip / out
(model.parameterization 'consistency'), one Heun step of the teacher on the Karras grid of N = 18
scales in [0.002, 80], uniform indices, lambda = 1; CM's CIFAR-10 CD run as recalled from its
hyper-parameter table (not re-checked offline): Adam lr 4e-4, batch 512, 800k iterations, EMA
0.9999 for evaluation.
Deliberate differences (docs/few_step.md): the squared L2 metric (CM's best CIFAR-10 result uses
LPIPS; it needs an ImageNet trunk file no package ships: with torchvision's VGG-16 file,
--config.distill.metric=lpips --config.distill.lpips.net=vgg
--config.distill.lpips.trunk=PATH/vgg16-397923af.pth --config.distill.lpips.resize=224 is CM's
setting up to piq's pooling variant; pseudo-Huber is --config.distill.metric=pseudo_huber) and
the student's own stop-gradient as target (CM: --config.distill.target_ema=0.95 for LPIPS runs).

THE PAPER'S RESULT (not reproduced here; CM abstract and Table 1, CD with LPIPS): FID 3.55 with
one step. Not trained here: configs/digits/cd.py and configs/toy/checkerboard_cd.py are the
measured ones.

Run (after training the teacher; needs a prepared tfds cifar10 and an accelerator):
  python -m experiments.main --config=configs/cifar10/cd.py --workdir=workdirs/cifar10_cd --mode=train
  python -m experiments.main --config=configs/cifar10/cd.py --workdir=workdirs/cifar10_cd --mode=eval --config.eval.fid_stats=<cifar10 train statistics>
"""
from configs.cifar10.common import edm


def get_config():
  c = edm("ncsnpp")
  c.experiment = "cifar10/cd"
  c.training.objective = "consistency_distillation"
  c.model.parameterization = "consistency"
  c.distill.teacher_config = "configs/cifar10/edm_ve.py"
  c.distill.teacher_workdir = "workdirs/cifar10_edm_ve"
  c.distill.num_scales = 18
  c.distill.teacher_solver = "heun"
  c.training.num_steps = 800_000
  c.training.ema_decay = 0.9999
  c.optim.lr = 4e-4
  c.optim.warmup_steps = 0
  c.sampling.sampler = "consistency"
  c.sampling.grid = "karras"
  c.sampling.num_steps = 1
  return c
