"""Makes tests/data/guidance_family/diffusers_guiders.npz: reference outputs of diffusers'
guidance combinations on fixed random predictions (read by tests/test_guidance_family.py).

  /work/torch_env/bin/python tests/data/guidance_family/make_diffusers_fixtures.py

Versions: torch 2.14 (CPU), diffusers 0.42.1 (``diffusers.guiders``). Arrays (float64 unless
said):
  cond, uncond            (3, 2, 3, 4) random predictions (3 samples), seed 0;
  apg_{i}                 ``normalized_guidance(cond, uncond, scale, None, eta, threshold,
                          original)`` for the settings APG_CASES[i] = (scale, eta, threshold,
                          original) stored as apg_cases (n, 4);
  apg_momentum            (3, 3, 2, 3, 4): three successive calls with one MomentumBuffer(-0.5)
                          on (cond + k/2, uncond - k/3), k = 0, 1, 2, scale 3, eta 0, threshold 2,
                          original formulation False;
  rescale_{phi}           ``rescale_noise_cfg(uncond + 4 (cond - uncond), cond, phi)``,
                          phi in RESCALE_PHIS;
  zero_star               ``ClassifierFreeZeroStarGuidance(guidance_scale=4).forward(cond,
                          uncond)`` at step 1 of 10 (past zero-init), computed in float32 by the
                          reference's ``cfg_zero_star_scale``; float32.
"""
import os

import numpy as np
import torch
from diffusers.guiders import adaptive_projected_guidance as apg_lib
from diffusers.guiders.classifier_free_zero_star_guidance import ClassifierFreeZeroStarGuidance
from diffusers.guiders.guider_utils import rescale_noise_cfg

APG_CASES = ((3.0, 0.0, 0.0, 0.0), (3.0, 1.0, 0.0, 0.0), (5.0, 0.3, 2.5, 0.0),
             (2.0, 0.0, 1.0, 1.0), (4.0, 0.5, 0.0, 1.0))
RESCALE_PHIS = (0.0, 0.7, 1.0)


def main():
  rng = np.random.default_rng(0)
  cond = rng.standard_normal((3, 2, 3, 4))
  uncond = cond + 0.8 * rng.standard_normal((3, 2, 3, 4))
  c, u = torch.from_numpy(cond), torch.from_numpy(uncond)
  out = {"cond": cond, "uncond": uncond, "apg_cases": np.asarray(APG_CASES)}
  for i, (scale, eta, thr, orig) in enumerate(APG_CASES):
    out[f"apg_{i}"] = apg_lib.normalized_guidance(c, u, scale, None, eta, thr,
                                                  bool(orig)).numpy()
  buf = apg_lib.MomentumBuffer(-0.5)
  seq = []
  for k in range(3):
    seq.append(apg_lib.normalized_guidance(c + k / 2, u - k / 3, 3.0, buf, 0.0, 2.0,
                                           False).numpy())
  out["apg_momentum"] = np.stack(seq)
  for phi in RESCALE_PHIS:
    out[f"rescale_{phi}"] = rescale_noise_cfg(u + 4 * (c - u), c, phi).numpy()
  g = ClassifierFreeZeroStarGuidance(guidance_scale=4.0, zero_init_steps=1)
  g.set_state(step=1, num_inference_steps=10, timestep=torch.tensor(900))
  out["zero_star"] = g.forward(c.float(), u.float()).pred.numpy()
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "diffusers_guiders.npz")
  np.savez(path, **out)
  print(path, {k: v.shape for k, v in out.items()})


if __name__ == "__main__":
  main()
