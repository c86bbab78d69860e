"""MNIST 28x28 with the DDPM recipe: VP SDE (beta 0.1..20), eps prediction, L_simple, DDPM's optimizer (Adam 2e-4, batch 128,
warm-up, clip 1), Heun 18 steps for samples.

No paper result exists for this setting (none of the three papers reports MNIST); not measured
here (the data must first be prepared with TensorFlow; a 28x28 U-Net is slow on 2 CPU cores).

Run:
  python -m experiments.main --config=configs/mnist/ddpm.py --workdir=workdirs/mnist_ddpm --mode=train
  python -m experiments.main --config=configs/mnist/ddpm.py --workdir=workdirs/mnist_ddpm --mode=sample
  python -m experiments.main --config=configs/mnist/ddpm.py --workdir=workdirs/mnist_ddpm --mode=eval
"""
from configs.mnist.common import mnist_config


def get_config():
  return mnist_config("ddpm")
