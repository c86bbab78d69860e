"""MNIST 28x28 with the EDM recipe: EDM preconditioning, lognormal sigmas and edm weighting (Karras et al. 2022), Heun 18 steps
(35 NFE).

No paper result exists for this setting (none of the three papers reports MNIST); not measured
here (the data must first be prepared with TensorFlow; a 28x28 U-Net is slow on 2 CPU cores).

Run:
  python -m experiments.main --config=configs/mnist/edm.py --workdir=workdirs/mnist_edm --mode=train
  python -m experiments.main --config=configs/mnist/edm.py --workdir=workdirs/mnist_edm --mode=sample
  python -m experiments.main --config=configs/mnist/edm.py --workdir=workdirs/mnist_edm --mode=eval
"""
from configs.mnist.common import mnist_config


def get_config():
  return mnist_config("edm")
