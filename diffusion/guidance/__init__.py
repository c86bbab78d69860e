"""Guidance and conditioning as denoiser transformers.

A transformer takes a denoiser ``denoise(x_t (B, ...), t (B,), cond) -> x0_hat`` and returns a
new one with the same interface, so every registered sampler samples it unchanged.

The conditioning ``cond`` a denoiser receives is one of:
  * None: unconditional;
  * an int array (B,) of class labels in [0, num_classes], where ``num_classes`` is the NULL label
    (the unconditional model of classifier-free guidance);
  * a dict with an optional 'label' entry as above and per-sample entries that transformers
    consume, e.g. the observation 'y' (B, ...) of an inverse problem (``diffusion.inverse``).
Every array in ``cond`` has the batch as its leading axis, so the sampling drivers shard it with
x_T and a sample never depends on the batch it is drawn in.

Honest cost accounting: the sampler's ``info['nfe']`` counts calls of the denoiser it is given.
A transformer that changes what one call costs says so in an ``info`` attribute of the returned
denoiser (``denoiser_info``); ``build_sampler`` merges it into the sampler's info:
  'batch_multiplier': network batch per sample and call (2 for classifier-free guidance, whose
                      conditional and unconditional outputs come from one batched call);
  'network_vjp':      True when every call also back-propagates through the network (the cost of
                      a call is then about 3 forward passes);
  'transforms':       the names of the transformers applied, innermost first.

Transformers (docs/guidance.md):
  ``classifier_free``      x0 = x0_u + w (x0_c - x0_u)  (Ho & Salimans 2021; both weight
                           conventions, optionally only for t in an interval, Kynkaanniemi et al.
                           2024), conditional and unconditional from one batched call;
  ``classifier_guidance``  score + scale * grad_x log p(y | x_t)  (Song et al. 2021, sec. 5,
                           eq. 14; Dhariwal & Nichol 2021, sec. 4), with ``network_log_prob`` for a
                           trained noise-conditional classifier;
  ``adaptive_projected_guidance``  APG (Sadat et al. 2025), momentum 0 (``apg.py``);
  ``rescaled_classifier_free``     CFG with the std rescale of Lin et al. 2024 (eq. 15-16), in a
                                   chosen prediction space (``cfg_rescale.py``);
  ``classifier_free_zero_star``    CFG-Zero* (Fan et al. 2025): optimized scale s* and zero-init
                                   (``cfg_zero_star.py``);
  ``autoguidance``         D_bad + w (D_good - D_bad) (Karras et al. 2024), a second network
                           (``auto.py``)
                           ('guide_batch_multiplier' in the info);
  ``cfgpp_ddim``           CFG++ (Chung et al. 2025): a DDIM sampler, not a transformer (its
                           renoising uses the unconditional eps; see ``guidance.cfgpp``).
"""
from diffusion.guidance.apg import adaptive_projected_guidance, apg_combine
from diffusion.guidance.auto import autoguidance
from diffusion.guidance.base import (SPACES, Array, Denoiser, LogProbFn, check_interval,
                                     check_labels, denoiser_info, from_space, in_interval,
                                     label_of, to_space, with_info, with_label)
from diffusion.guidance.cfg import CONVENTIONS, classifier_free
from diffusion.guidance.cfg_rescale import rescaled_classifier_free
from diffusion.guidance.cfg_zero_star import classifier_free_zero_star
from diffusion.guidance.cfgpp import cfgpp_ddim, cfgpp_pair, check_cfgpp_sampler
from diffusion.guidance.classifier import classifier_guidance, network_log_prob

__all__ = ["Array", "CONVENTIONS", "Denoiser", "LogProbFn", "SPACES",
           "adaptive_projected_guidance", "apg_combine", "autoguidance", "cfgpp_ddim",
           "cfgpp_pair", "check_cfgpp_sampler", "check_interval", "check_labels",
           "classifier_free", "classifier_free_zero_star", "classifier_guidance",
           "denoiser_info", "from_space", "in_interval", "label_of", "network_log_prob",
           "rescaled_classifier_free", "to_space", "with_info", "with_label"]
