"""Training objectives as registered objects, one file per family (``base`` says what an
objective carries). Importing this package registers the built-in ones:

  dsm                        denoising.py    denoising score matching (weightings, EDM2's
                                             uncertainty, VDM's learned schedule)
  classifier                 classifier.py   a noise-conditional classifier (guidance)
  progressive_distillation   progressive.py  Salimans & Ho 2022
  consistency_distillation   consistency.py  Song et al. 2023
  consistency_training       consistency.py  Song et al. 2023; Song & Dhariwal 2023
  scm_distillation           scm.py          Lu & Song 2024 (sCM on TrigFlow)
  scm_training               scm.py          Lu & Song 2024
  reflow                     reflow.py       Liu et al. 2023
  autoencoder                autoencoder.py  a KL-regularised autoencoder (LDM's first stage)
  mean_flow                  mean_flow.py    MeanFlow, Geng et al. 2025 (a two-time flow map)
  shortcut                   mean_flow.py    shortcut models, Frans et al. 2024 (a flow map)

A new objective is a file with a registered ``Objective`` subclass; a config names the module in
``config.imports`` to have it imported at start-up (docs/architecture.md).
"""
from diffusion.objectives.base import (  # noqa: F401 (the package's interface)
    BATCH_SOURCES, DEFAULT, NETWORKS, LossContext, Objective, TeacherModel, get, names,
    of_config, register)
from diffusion.objectives import (  # noqa: F401 (registers the built-in objectives)
    denoising, classifier, reflow, progressive, consistency, autoencoder, scm, mean_flow)
