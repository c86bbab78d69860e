"""The floor of latent diffusion on digits: FID / KID of the autoencoder's own reconstructions.

A latent model's decoded samples are at best the decoder's reconstructions; this scores the
reconstructions (posterior means decoded) of the first N training digits with the same FID / KID
code, pixel rounding and reference statistics as ``--mode=eval``, so that a latent model's FID
can be read against it (README, "Latent diffusion on digits").

  python benchmarks/latent_digits.py --autoencoder_config=configs/digits/autoencoder.py \\
      --autoencoder=workdirs/digits_ae --fid_stats=stats/digits_train_8px_1500.npz [--num=1000]

Prints one markdown line and writes it to benchmarks/results/latent_digits_floor.md.
"""
from __future__ import annotations

import argparse
import os
import sys

import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from hardware import with_machine_line  # noqa: E402

from diffusion.data import images  # noqa: E402
from diffusion.metrics import fid, inception  # noqa: E402
from experiments import latents  # noqa: E402
from experiments.eval_common import fid_pixels  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--autoencoder_config", required=True)
  p.add_argument("--autoencoder", required=True)
  p.add_argument("--fid_stats", required=True)
  p.add_argument("--num", type=int, default=1000)
  p.add_argument("--out", default=os.path.join(RESULTS, "latent_digits_floor.md"))
  a = p.parse_args(argv)
  ae = latents.load_autoencoder(a.autoencoder_config, a.autoencoder)
  it = images.make_image_dataset("digits", "train", batch_size=a.num, seed=0, dequantize=False,
                                 shuffle=False, num_epochs=1, drop_remainder=False)
  x = np.asarray(next(iter(it))["image"])[:a.num]
  mean, _ = ae.encode(jnp.asarray(x))
  rec = np.asarray(ae.decode(mean))
  stats = fid.load_stats(a.fid_stats)
  out = fid.image_metrics(fid_pixels(rec, "digits", "levels"), stats, dataset="digits",
                          resolution=8, params=inception.load_params(), batch_size=64,
                          kid_subsets=100, kid_subset_size=1000, seed=0)
  line = (f"| reconstructions of the first {len(x):,} training digits (posterior means decoded) "
          f"| {out['fid']:.2f} | {1000 * out['kid']:.2f} |")
  md = ("| digits, autoencoder step " + str(ae.step) + " | FID | KID x 1000 |\n|---|---|---|\n"
        + line + "\n")
  print(md)
  with open(a.out, "w") as f:
    f.write(with_machine_line(md))
  return 0


if __name__ == "__main__":
  sys.exit(main())
