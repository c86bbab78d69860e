"""Shared base of every experiment config: all fields a run reads, with defaults.

Experiment files (``configs/<family>/<name>.py``) call ``get_base_config()`` and change what
differs. Every field can be overridden on the command line, e.g.
``--config.training.num_steps=2000``; an unknown key is an error listing the valid keys.
Optional values use ``placeholder`` types so they too can be set from the command line.
"""
import ml_collections
from ml_collections import config_dict

from configs import sampling as sampling_config


def get_base_config() -> ml_collections.ConfigDict:
  """Defaults: checkerboard, VP, 2-D MLP, eps-parameterization, Adam with warm-up."""
  c = ml_collections.ConfigDict()
  c.experiment = "base"
  c.seed = 0
  # Modules imported at start-up, before the config is checked: a researcher's own objective,
  # sampler, network or schedule, registered in a file of its own (docs/architecture.md), e.g.
  # ('my_project.objectives',). Module names, importable from the working directory.
  c.imports = ()

  # Data: a toy 2-D density (diffusion.data.toy2d) or an image dataset (diffusion.data.images).
  c.data = ml_collections.ConfigDict()
  c.data.name = "checkerboard"
  c.data.batch_size = 512  # global batch (all processes and devices)
  c.data.num_heldout = 10_000  # held-out points for evaluation (toy data)
  c.data.heldout_seed = 0
  c.data.split = "train"  # image datasets: the training split
  c.data.eval_split = "test"  # image datasets: held-out data for evaluation
  c.data.image_size = config_dict.placeholder(int)  # image datasets: None = native size
  # data.name='folder' (docs/images.md#imagenet): the folder holding one sub-folder per split
  # (data.split, data.eval_split), each holding one sub-folder of images per class, labels in
  # sorted class-name order (ImageNet's layout: <folder>/train/n01440764/*.JPEG). Read only then.
  c.data.folder = config_dict.placeholder(str)
  # Image datasets: the crop, 'center' (center crop, bilinear resize: every dataset's default
  # but ImageNet's) or 'adm' (ADM's center crop, as ADM, DiT, SiT and EDM2 prepare ImageNet;
  # the default of imagenet2012 and folder, accepted for lsun/*); None: the dataset's default.
  c.data.crop = config_dict.placeholder(str)
  c.data.random_flip = False  # image datasets: random horizontal flips
  # Image datasets: threads computing training batches ahead of the step (0: none, synchronous)
  # and batches ahead per thread. The batches are identical for every value (docs/images.md).
  c.data.workers = 2
  c.data.prefetch = 2
  # 'thread' | 'process' (spawned processes, for decoding that holds the GIL on big datasets).
  c.data.worker_type = "thread"
  # Image datasets: keep the decoded training split in memory ('auto': when it fits in 4 GiB,
  # e.g. CIFAR-10's 154 MB; 'true' / 'false' to force; a str field, so the command line's
  # `--config.data.cache_decoded=False` gives 'False', accepted too). Batches are identical.
  c.data.cache_decoded = "auto"

  # The forward process: a diffusion.schedules name and its fields.
  c.sde = ml_collections.ConfigDict()
  c.sde.name = "vp"
  c.sde.fields = ml_collections.ConfigDict()  # e.g. beta_min, beta_max, t_min, t_max

  # The network and how its output maps to x0_hat (diffusion.parameterization).
  c.model = ml_collections.ConfigDict()
  c.model.name = "mlp"
  c.model.parameterization = "eps"
  c.model.time_input = "t"
  c.model.sigma_data = 0.5
  c.model.scale_input = False
  # Feed batch labels to the network (labelled data only; model.net.num_classes = the data's
  # classes; model.net.label_dropout: the rate of NULL labels in training, for classifier-free
  # guidance).
  c.model.conditional = False
  c.model.net = ml_collections.ConfigDict(dict(width=128, num_blocks=3, embed_dim=64))

  c.training = ml_collections.ConfigDict()
  # 'dsm': a score network by denoising score matching (training.weighting, time_sampling);
  # 'classifier': a noise-conditional classifier p(y | x_t, t) of the labelled data (a model
  # named '*_classifier', model.net.num_classes = the data's classes) by cross-entropy on x_t at
  # times drawn by training.time_sampling (for classifier guidance; Song et al. 2021, App. I).
  c.training.objective = "dsm"
  c.training.num_steps = 20_000
  c.training.log_every = 500
  c.training.ckpt_every = 5_000
  c.training.sample_every = 10_000  # 0: only at the end
  c.training.max_to_keep = 3
  c.training.async_checkpoints = True
  c.training.weighting = "eps"
  c.training.time_sampling = "uniform"
  c.training.loss_opts = ml_collections.ConfigDict()  # extra dsm_loss options (p_mean, ...)
  c.training.ema_decay = 0.999
  c.training.ema_warmup = False
  # EDM2's power-function EMAs (docs/posthoc_ema.md): the sigma_rel of each EMA kept in the train
  # state, e.g. (0.05, 0.1) as EDM2; () for none. Each is written to <workdir>/ema_snapshots/
  # every ema_snapshot_every steps (>= 1 when profiles are set), for experiments.posthoc_ema.
  c.training.ema_profiles = ()
  c.training.ema_snapshot_every = 0
  c.training.nonfinite = "stop"  # 'stop' | 'skip'
  c.training.max_consecutive_skips = 20  # 'skip': stop after more skipped in a row; 0: no limit
  c.training.grad_accum_steps = 1
  c.training.steps_per_call = 1  # train steps per jit call (lax.scan)
  c.training.compute_dtype = "float32"  # 'float32' | 'bfloat16'
  # Smallest training time of the loss (t ~ [training.t_min, t_max]); None: the schedule's
  # sde.fields.t_min. Score SDE trains its continuous models from 1e-5.
  c.training.t_min = config_dict.placeholder(float)

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "adam"  # 'adam' | 'adamw'
  c.optim.lr = 1e-3
  c.optim.warmup_steps = 500
  c.optim.grad_clip = 1.0  # global norm; 0 disables
  c.optim.weight_decay = 0.0
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.eps = 1e-8
  c.optim.decay = "none"  # 'none' | 'cosine' (over training.num_steps) | 'rsqrt' (EDM2)
  c.optim.rsqrt_ref_steps = 0  # 'rsqrt': lr / sqrt(max(step / rsqrt_ref_steps, 1))
  c.optim.end_lr_factor = 0.0

  c.sampling = sampling_config.get_config()

  # Conditional sampling (diffusion.guidance; docs/guidance.md). Read by sample, eval and sweep.
  c.guidance = ml_collections.ConfigDict()
  # Class of every sample of a conditional model: -1 cycles through the classes (sample i gets
  # class i mod num_classes), 0..num_classes-1 one class, num_classes the NULL (unconditional)
  # label. Unconditional models: -1 only.
  c.guidance.label = -1
  # 'none' | 'cfg' (classifier-free) | 'classifier' | 'autoguidance' (a weaker model guides) |
  # the CFG family (docs/guidance.md): 'apg' | 'cfg_rescale' | 'cfg_zero_star' | 'cfgpp' (CFG++:
  # its own DDIM loop, sampling.sampler='ddim' with eta 0; weight = lambda in [0, 1])
  c.guidance.kind = "none"
  # cfg: x0 = x0_u + w (x0_c - x0_u) ('scale': w = 1 the plain conditional) or
  # (1 + w) x0_c - w x0_u ('ho_salimans': w = 0 the plain conditional).
  c.guidance.weight = 1.0
  c.guidance.convention = "scale"
  # apg (Sadat et al. 2025): eta scales the guidance parallel to the conditional prediction (0: the
  # paper's recommendation; 1 with no threshold is cfg), norm_threshold r > 0 caps its norm (0:
  # none; the paper's r depends on the data's scale).
  c.guidance.apg_eta = 0.0
  c.guidance.apg_norm_threshold = 0.0
  # cfg_rescale (Lin et al. 2024): the guided prediction's per-sample std rescaled to the
  # conditional's, mixed by phi, in the prediction space 'v' (the paper) | 'eps' | 'x0' | 'velocity'.
  c.guidance.rescale_phi = 0.7
  c.guidance.rescale_space = "v"
  # cfg_zero_star (Fan et al. 2025): the optimised scale s* on the unconditional branch (in
  # zero_star_space), and zero velocity for t > zero_star_init_t (None: no zero-init).
  c.guidance.zero_star_optimized = True
  c.guidance.zero_star_space = "velocity"
  c.guidance.zero_star_init_t = config_dict.placeholder(float)
  # Guidance only for t in [t_lo, t_hi] (Kynkaanniemi et al. 2024), the plain conditional
  # elsewhere; None: the schedule's end.
  c.guidance.t_lo = config_dict.placeholder(float)
  c.guidance.t_hi = config_dict.placeholder(float)
  # classifier: a noise-conditional classifier trained by this codebase (its config file and
  # workdir); its log p(y | x_t) gradient, times classifier_scale, is added to the score.
  c.guidance.classifier_config = config_dict.placeholder(str)
  c.guidance.classifier_workdir = config_dict.placeholder(str)
  c.guidance.classifier_scale = 1.0
  # autoguidance (Karras et al. 2024): x0 = x0_guide + w (x0 - x0_guide), w = guidance.weight (1:
  # this model alone), the guide a weaker model of the same data and forward process: a trained
  # run's workdir (an earlier checkpoint of this run: guide_workdir = this workdir and guide_step;
  # a smaller or shorter-trained run: its workdir and its config file, guide_config; None: this
  # run's config). guide_step None: the guide's newest checkpoint.
  c.guidance.guide_config = config_dict.placeholder(str)
  c.guidance.guide_workdir = config_dict.placeholder(str)
  c.guidance.guide_step = config_dict.placeholder(int)

  # Linear inverse problems, --mode=sample only (diffusion.inverse; docs/inverse.md).
  c.inverse = ml_collections.ConfigDict()
  c.inverse.task = "none"  # 'none' | 'inpaint' | 'colorize' | 'super_resolution'
  # An .npz written by `python -m experiments.observations` (or by hand: 'images' (N, ...) in
  # [-1, 1], and 'mask' (N, ...) of 0/1 for inpaint; or the observation 'y' directly).
  c.inverse.observations = config_dict.placeholder(str)
  # 'replacement' (score SDE) | 'pigdm' (Song et al. 2023), transformers of the configured sampler;
  # 'dps' | 'daps' | 'ddrm' | 'tds': samplers of their own on the configured grid (sampling.num_steps,
  # grid): their folders are named by the method, not sampling.sampler (docs/inverse.md)
  c.inverse.method = "replacement"
  c.inverse.noise_std = 0.0  # std of the observation noise (pigdm; replacement needs 0)
  c.inverse.factor = 2  # super_resolution: average-pooling factor
  c.inverse.samples_per_observation = 4
  # Condition each completion of a class-conditional model on its observation's own class (the
  # observation file's 'labels', written by experiments.observations for labelled data) instead
  # of guidance.label; classifier-free guidance then guides towards that class.
  c.inverse.observation_labels = False
  c.inverse.pigdm_scale = 1.0  # multiplies Pi-GDM's guidance term
  c.inverse.sigma_data = 1.0  # Pi-GDM's r_t^2 = sd^2 s^2 / (sd^2 + s^2), s = sigma / alpha
  # Pi-GDM guides only for t <= pigdm_t_hi (None: every t, the paper). Near alpha = 0 a trained
  # network's Jacobian error is amplified about 1/alpha^2 (diffusion.inverse.pigdm).
  c.inverse.pigdm_t_hi = config_dict.placeholder(float)
  # DPS (Chung et al. 2023): the step zeta' of zeta_i = zeta' / ||y - A x0_hat|| (tuned per task
  # and step count; the observation noise is absorbed into it).
  c.inverse.dps_zeta = 0.5
  # DAPS (Zhang et al. 2025): per annealing level an ODE solve (daps_ode_steps of
  # daps_ode_solver 'euler' | 'heun') and daps_langevin_steps Langevin steps of size daps_lr
  # (decayed to daps_lr * daps_lr_min_ratio); the likelihood's std daps_tau (None: noise_std; a
  # noiseless problem needs one > 0); r_t 'sigma' (the reference) | 'posterior' (sigma_data).
  c.inverse.daps_tau = config_dict.placeholder(float)
  c.inverse.daps_ode_steps = 5
  c.inverse.daps_ode_solver = "euler"
  c.inverse.daps_langevin_steps = 100
  c.inverse.daps_lr = 1e-4
  c.inverse.daps_lr_min_ratio = 0.01
  c.inverse.daps_r_schedule = "sigma"
  # DDRM (Kawar et al. 2022, eq. 7-8): eta, eta_b (the reference's defaults).
  c.inverse.ddrm_eta = 0.85
  c.inverse.ddrm_eta_b = 1.0
  # TDS (Wu et al. 2023; diffusion.smc, docs/smc.md): each completion one SMC group of
  # tds_particles particles (the network batch per completion), drawn from its final weights;
  # the twisted proposal 'tds' | 'bootstrap' | 'none', the twist variance 'pigdm' (sigma_data) |
  # 'tds', the reverse step 'ddpm' | 'euler_maruyama', resampling 'systematic' | 'multinomial'
  # when the ESS falls below tds_ess_threshold * K (1.0: at nearly every step).
  c.inverse.tds_particles = 16
  c.inverse.tds_proposal = "tds"
  c.inverse.tds_variance = "pigdm"
  c.inverse.tds_transition = "ddpm"
  c.inverse.tds_resample = "systematic"
  c.inverse.tds_ess_threshold = 0.5

  # Few-step training (training.objective 'progressive_distillation', 'consistency_distillation',
  # 'consistency_training', 'reflow'; experiments/distill.py, docs/few_step.md).
  c.distill = ml_collections.ConfigDict()
  # The teacher: a trained run's config file and workdir (its newest checkpoint, or teacher_step),
  # EMA parameters. Progressive and consistency distillation need it; reflow reads it to start
  # the new flow from the old one's parameters.
  c.distill.teacher_config = config_dict.placeholder(str)
  c.distill.teacher_workdir = config_dict.placeholder(str)
  c.distill.teacher_step = config_dict.placeholder(int)
  c.distill.init_from_teacher = True  # CD / reflow: start from the teacher's parameters (PD: always)
  # Progressive distillation: the first student's DDIM steps (its teacher takes twice as many)
  # and the rounds (each halves the steps; training.num_steps is split evenly among them).
  c.distill.student_steps = 8
  c.distill.rounds = 1
  # Loss options; None: the objective's default (PD 'truncated_snr'; CD CM's 'uniform', 'l2',
  # 'uniform'; CT iCT's 'ict', 'pseudo_huber', 'lognormal'). PD: 'truncated_snr' | 'snr' | 'v'.
  c.distill.weighting = config_dict.placeholder(str)
  c.distill.metric = config_dict.placeholder(str)  # 'l2' | 'pseudo_huber' | 'lpips'
  # CD / CT with metric 'lpips' (diffusion/metrics/lpips.py, Zhang et al. 2018 v0.1): the trunk
  # ('alex' | 'vgg'), torchvision's ImageNet weights of that trunk (a file the user passes:
  # alexnet-owt-7be5be79.pth / vgg16-397923af.pth; nothing is downloaded), LPIPS's channel
  # weights (None: the lpips wheel's v0.1 file) and CM's bilinear upsampling before LPIPS
  # (224; None: none). The run's identity holds the net, the resize and the files' SHA-256.
  c.distill.lpips = ml_collections.ConfigDict()
  c.distill.lpips.net = "alex"
  c.distill.lpips.trunk = config_dict.placeholder(str)
  c.distill.lpips.channel_weights = config_dict.placeholder(str)
  c.distill.lpips.resize = config_dict.placeholder(int)
  c.distill.index_distribution = config_dict.placeholder(str)  # 'uniform' | 'lognormal'
  c.distill.teacher_solver = "heun"  # CD: one 'euler' or 'heun' PF-ODE step of the teacher
  # CD's target network: None (or 0): the student itself under stop-gradient (iCT sec. 3.2);
  # mu in (0, 1): CM's EMA target theta^- <- mu theta^- + (1 - mu) theta after every step (CM
  # Alg. 2; CM Table 3: mu = 0.95 on CIFAR-10 with N = 18), held in the train state.
  c.distill.target_ema = config_dict.placeholder(float)
  c.distill.num_scales = 18  # CD, and CT with curriculum 'none': Karras grid points N
  c.distill.rho = 7.0
  c.distill.curriculum = "ict"  # CT: 'ict' (iCT sec. 3.4) | 'cm' (CM App. C) | 'none'
  c.distill.s0 = config_dict.placeholder(int)  # None: ict 10, cm 2
  c.distill.s1 = config_dict.placeholder(int)  # None: ict 1280, cm 150
  # Reflow: --mode=pairs writes (noise, sample) pairs of this run's sampler (a deterministic one)
  # to <workdir>/pairs; a reflow run reads the folder named by distill.pairs.
  c.distill.pairs = config_dict.placeholder(str)
  c.distill.num_pairs = 50_000
  c.distill.pairs_shard_size = 5_000

  # sCM (training.objective 'scm_distillation' / 'scm_training'; Lu & Song 2024, docs/scm.md):
  # the paper's CIFAR-10 defaults. Read only by those objectives (part of their runs' identity).
  c.scm = ml_collections.ConfigDict()
  c.scm.tangent_warmup_steps = 10_000  # H: tangent warm-up r = min(1, step / H); 0: none
  c.scm.tangent_c = 0.1  # tangent normalisation g / (||g|| + c)
  c.scm.p_mean = -1.0  # log(sigma_d tan t) ~ N(p_mean, p_std^2)
  c.scm.p_std = 1.4
  c.scm.weighting = "adaptive"  # 'adaptive' (the network's log-variance head) | 'uniform'
  c.scm.prior_weighting = False  # multiply the loss by 1 / (sigma_d tan t)

  # Latent diffusion (docs/latent.md): with latent.dataset set, the run trains on the latents of
  # an image dataset written by `python -m experiments.encode` (an autoencoder's posterior mean
  # and std per image; the folder names the autoencoder), and sample / eval decode to pixels.
  # data.name stays the image dataset (labels, FID reference); the data shape is the latents'.
  c.latent = ml_collections.ConfigDict()
  c.latent.dataset = config_dict.placeholder(str)  # None: the run is in pixel space
  # The autoencoder that decodes samples: its config file and workdir (and checkpoint step; None:
  # the newest). None: the one that encoded latent.dataset. Set alone (no dataset), a run
  # samples and evaluates in latent space without encoded data (a converted DiT, docs/latent.md).
  c.latent.autoencoder_config = config_dict.placeholder(str)
  c.latent.autoencoder = config_dict.placeholder(str)
  c.latent.autoencoder_step = config_dict.placeholder(int)
  # 'scale': z * scale_factor (LDM, DiT, SiT: 0.18215 for Stable Diffusion's VAE); 'channel':
  # (z - channel_mean) / channel_std * final_std per channel (EDM2: its SD-VAE statistics, 0.5).
  c.latent.normalization = "scale"
  c.latent.scale_factor = 0.18215
  c.latent.channel_mean = ()  # 'channel': () = the encoded dataset's own per-channel statistics
  c.latent.channel_std = ()
  c.latent.final_std = 0.5
  # 'sample': z = mean + std * eps with fresh eps every batch (DiT, SiT, EDM2); 'mean': z = mean.
  c.latent.posterior = "sample"

  c.eval = ml_collections.ConfigDict()
  # Which checkpoints --mode=eval evaluates: eval.step (None: the newest), or with
  # all_checkpoints=True every one in turn; a step evaluated with the same settings (its
  # eval/step_<step>/<name>/metrics.json, experiments/results.py) is skipped.
  c.eval.step = config_dict.placeholder(int)
  c.eval.all_checkpoints = False
  c.eval.num_samples = 10_000  # samples compared with held-out data (SW, MMD)
  c.eval.shard_size = 1_000  # samples per file eval/step_<step>/<name>/samples/shard_<k>.npz
  c.eval.nll_points = 2_000  # held-out points whose NLL is computed with the PF-ODE
  c.eval.nll_batch_size = 1_000
  c.eval.divergence = "exact"  # 'exact' | 'hutchinson'
  c.eval.rtol = 1e-5
  c.eval.atol = 1e-5
  # Adaptive solver of the likelihood ODE: 'tsit5' | 'dopri5' (Dormand-Prince 5(4), scipy's
  # RK45 that score SDE's code uses) | 'dopri8'.
  c.eval.solver = "tsit5"
  c.eval.probe = "rademacher"  # Hutchinson probe: 'rademacher' | 'gaussian' (one per solve)
  # Lower end of the likelihood's (and ELBO's) time range; None: the schedule's t_min.
  c.eval.t_min = config_dict.placeholder(float)
  # Images: uniform dequantization draws per test image for the PF-ODE bits/dim (score SDE: 5
  # passes over the test set), averaged per image.
  c.eval.dequantization_draws = 1
  c.eval.elbo = True  # images: also VDM's continuous-time ELBO in bits/dim
  c.eval.elbo_time_samples = 1  # Monte Carlo (t, eps) draws per image of its diffusion term
  c.eval.elbo_time_sampling = "stratified"  # 'uniform' | 'stratified' | 'antithetic'
  # FID / KID (images; diffusion.metrics.fid) against reference statistics written by
  # `python -m experiments.reference_stats`; None: not computed.
  c.eval.fid_stats = config_dict.placeholder(str)
  c.eval.fid_num_samples = 50_000  # samples scored (the set: the larger of this and num_samples)
  c.eval.fid_rounding = "levels"  # samples -> pixels: 'levels' | 'nearest' (EDM) | 'floor' (SDE)
  c.eval.kid_subsets = 100  # TF-GAN / clean-fid
  c.eval.kid_subset_size = 1_000
  c.eval.inception_batch_size = 64
  # --mode=sweep: FID / KID (images) or sliced Wasserstein / MMD (toy data, against
  # data.num_heldout held-out points) against NFE on one checkpoint (experiments/sweep.py).
  c.eval.sweep_samplers = "euler,heun,dpmpp_2m,unipc"  # comma-separated sampler names
  c.eval.sweep_nfe = "5,10,20"  # comma-separated NFE budgets
  c.eval.sweep_num_samples = 1_000
  c.eval.mmd_points = 2_000  # MMD is O(n^2): computed on the first points only
  c.eval.sw_projections = 256
  c.eval.plot_samples = 5_000  # points in scatter plots
  c.eval.density_grid = 48  # heat map resolution (points per side); 0 disables
  c.eval.density_extent = 4.5  # heat map over [-extent, extent]^2
  c.eval.density_rtol = 1e-3  # ODE tolerances of the heat map (a picture, not a number)
  c.eval.density_atol = 1e-3

  c.parallel = ml_collections.ConfigDict()
  c.parallel.distributed = False  # call jax.distributed.initialize()
  c.parallel.coordinator_address = config_dict.placeholder(str)
  c.parallel.num_processes = config_dict.placeholder(int)
  c.parallel.process_id = config_dict.placeholder(int)
  c.parallel.model_axis = 1  # devices on the 'model' axis of the mesh
  c.parallel.fsdp = False  # shard params / optimizer state over the 'model' axis
  c.parallel.fsdp_min_size = 2**14  # arrays with fewer elements stay replicated

  # Fault injection for tests; never part of an experiment's identity.
  c.debug = ml_collections.ConfigDict()
  c.debug.nan_at_step = -1  # put NaN in the batch of this step
  c.debug.nan_num_steps = 1  # ... and of the following ones, this many steps in all
  c.debug.setup_delay_s = 0.0  # sleep this long during set-up (signal tests)
  c.debug.hang_at_step = -1  # after this step's checkpoint, sleep until killed
  return c

