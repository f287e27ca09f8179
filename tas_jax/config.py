"""The configuration every stage reads: defaults, the model it describes, and validation.

`configs/*.py` start from `base_config()` and change a few fields; users override any field on the
command line (`--config.teacher.lr=0.05`) or edit the returned `ConfigDict` in a notebook.
`validate()` runs before anything heavy and turns a wrong value into one line naming the field and
what is allowed.
"""

from __future__ import annotations

import re

import ml_collections

from tas_jax import errors
from tas_jax.data import datasets
from tas_jax.models import arch as arch_lib, networks, repvgg

STAGES = ("teacher", "search", "extract", "distill", "results", "all")
STUDENTS = ("tas", "pas", "uniform", "random")  # or the path of an architecture JSON / a named network
STUDENT_INITS = ("scratch", "teacher", "searched")
WEIGHT_KEEPING_METHODS = ("pas",)  # their extraction writes the kept channels' weights
SEARCH_VARIANTS = ("tas", "width", "depth")
SEARCH_INITS = ("scratch", "teacher")
TAU_SCHEDULES = ("cosine", "linear")
PARALLEL_MODES = ("jit", "pmap")
DTYPES = ("float32", "bfloat16")


ConfigError = errors.ConfigError


def base_config() -> ml_collections.ConfigDict:
  """Defaults: CIFAR-10 ResNet-20 teacher with the spec's recipe (§6)."""
  c = ml_collections.ConfigDict()
  c.stage = "teacher"              # teacher | search | extract | distill | results | all
  c.method = "tas"                 # the pruning method of search/extract (tas_jax.methods registry)
  c.seed = 0                       # weights, data order, augmentation and Gumbel draws

  c.data = ml_collections.ConfigDict()
  c.data.name = "cifar10"          # in memory: tas_jax.data.datasets.NAMES; streamed: imagenet
  c.data.dir = ""                  # where archives / IDX files / TFDS data live ("" = defaults only)
  c.data.train_examples = -1       # -1 = all; N = only the first N training images (quick runs)
  c.data.image_size = -1           # -1 = native; larger zero-pads (Fashion-MNIST 28 -> 32)
  c.data.crop_padding = 4          # random crop with this much zero padding (0 = no crop)
  c.data.flip = True               # random horizontal flip
  c.data.workers = 0               # streamed data: grain worker processes decoding (0: in process)
  c.data.prefetch = 2              # streamed data: global batches put on the devices ahead
  c.data.bad_images = "skip"       # streamed data: an image that cannot be decoded is skipped with
                                   # a warning naming it (counted in the summary) | fail: stop

  c.model = ml_collections.ConfigDict()
  c.model.family = "cifar"         # cifar | imagenet | repvgg (PaS only)
  c.model.depth = 20               # CIFAR: 6n+2 (basic) or 9n+2 (bottleneck); ImageNet: 18 | 50
  c.model.block = "basic"          # basic | bottleneck (CIFAR); ImageNet depth decides
  c.model.repvgg = "a0"            # family=repvgg: a0 | b1 (widths and blocks of the paper)
  c.model.arch = ""                # a named architecture or an architecture JSON; overrides the above
  c.model.dtype = "float32"        # float32 | bfloat16 (activations; weights stay float32)

  c.teacher = sgd_recipe()

  c.search = ml_collections.ConfigDict()
  c.search.variant = "tas"         # tas (width + depth) | width | depth
  c.search.flop_ratio = 0.5        # target F(A) / F_max
  c.search.tolerance = 0.05        # t of the cost band (fraction of F_max)
  c.search.band = "released"       # released: [R - t·F_max, R]; symmetric: [(1-t)R, (1+t)R]
  c.search.in_band = "free"         # free (released): no cost while F(A) is in the band;
                                   # expected: E[F] is held to the band too; capped / centred:
                                   # E[F] above the band / its centre is pushed down (deviations)
  c.search.cost_weight = 2.0       # λ
  c.search.expected_flops = "released"  # released: the official chain form (spec §4); exact: the
                                       # expectation of F(A) over independent choices (a deviation)
  c.search.epochs = 600            # search epochs (each iteration: a weight and an arch step)
  c.search.batch_size = 256        # per step; each iteration takes one batch of each half
  c.search.tau_schedule = "cosine"   # cosine (released) | linear (paper: tau_max = 10)
  c.search.tau_max = 5.0           # Gumbel-softmax temperature at the first epoch
  c.search.tau_min = 0.1           # ... and at the last
  c.search.lr = 0.1                # weights: SGD Nesterov, cosine per epoch
  c.search.warmup_epochs = 0       # the first epochs of search.epochs: linear warm-up per iteration
  c.search.momentum = 0.9          # of the weights' SGD
  c.search.nesterov = True         # of the weights' SGD
  c.search.weight_decay = 5e-4     # of the weights (coupled L2)
  c.search.arch_lr = 1e-3          # architecture: Adam, coupled L2
  c.search.arch_lr_schedule = "constant"  # constant (released) | cosine: to 0 over the search
  c.search.arch_cooldown_epochs = 0  # with "constant": cosine to 0 over these last epochs (a
                                     # deviation: the argmax settles at the end of a short search)
  c.search.arch_beta1 = 0.5        # Adam of the architecture logits
  c.search.arch_beta2 = 0.999      # Adam of the architecture logits
  c.search.arch_weight_decay = 1e-3  # coupled L2 on the architecture logits (released)
  c.search.init = "scratch"        # scratch (released) | teacher: supernet weights from WORKDIR/teacher
  c.search.evaluate_every_epoch = True   # test accuracy of the argmax network (batch statistics)
  c.search.eval_batch_size = 500   # evaluation only: does not change a result

  c.pas = ml_collections.ConfigDict()   # method=pas (spec PAS.md); its target: search.flop_ratio
  c.pas.epochs = 9                 # joint SGD on weights and mask scalars, from the teacher
  c.pas.batch_size = 256           # global batch of the search
  c.pas.lr = 0.02                  # constant
  c.pas.momentum = 0.9             # SGD of weights and mask scalars
  c.pas.nesterov = False           # SGD of weights and mask scalars
  c.pas.weight_decay = 1e-4        # coupled L2, on the mask scalars too (as released)
  c.pas.cost_weight = 5.0          # α of α·(MACs − target)² (ResNet-50: 5; RepVGG: 0.1)
  c.pas.macs_unit = 1e9            # MACs are counted in this unit in the penalty (spec: G);
                                   # 0 = in units of the unpruned network's MACs
  c.pas.eval_batch_size = 500      # evaluation only: does not change a result
  c.pas.finetune_lr = 0.0          # > 0: the peak lr of fine-tuning the extracted weights (pas-kd,
                                   # pas-ce) instead of distill.lr; a deployed RepVGG has no BN
                                   # and needs a small one (e.g. 0.001)

  c.distill = sgd_recipe()         # training of the pruned network (spec §6: the teacher's recipe)
  c.distill.student = "tas"        # tas: WORKDIR/extract/arch.json; uniform | random: baselines at
                                   # its FLOPs; or an architecture JSON path / named network
  c.distill.kd = True              # knowledge distillation from WORKDIR/teacher
  c.distill.kd_alpha = 0.9         # (1-a)·CE + a·T²·KL(teacher ‖ student)
  c.distill.kd_temperature = 4.0   # T of the KD loss
  c.distill.init = "scratch"       # scratch (released code) | teacher (w/ Init: first-k channels)
  c.distill.baseline_seed = 0      # the random baseline's architecture draw
  c.distill.flops_tolerance = 0.02  # baselines: |F - F(TAS)| <= this fraction of F(TAS)

  c.pipeline = ml_collections.ConfigDict()
  c.pipeline.runs = "tas-kd"       # stage=all: the distill runs, comma-separated STUDENT-{kd|ce}[-init]
  c.pipeline.throughput_batch = 256   # results: inference images/s of every network on one batch
  c.pipeline.throughput_repeats = 10  # results: the median of this many timed calls

  c.parallel = "jit"               # jit: global view, NamedSharding; pmap: per-device code
  c.num_devices = -1               # -1 = all local devices
  c.log_every_steps = 20           # a progress line every N steps (and at least once a minute)
  c.checkpoint_every_steps = 0     # 0 = at the end of every epoch only
  c.keep_checkpoints = 2           # the newest N checkpoints of a stage are kept
  c.max_steps_per_run = 0          # > 0: checkpoint and stop after this many steps (rerun resumes)
  c.profile_steps = 0              # > 0: a profiler trace of that many steps into the stage's folder
  c.overwrite = ""                 # stages to run again although their folder holds a result made
                                   # with other settings (comma-separated: teacher, search, extract,
                                   # search-pas, distill/tas-kd, distill = every run); deletes them
                                   # and the stages that read them. A matching result is kept.
  return c


def sgd_recipe() -> ml_collections.ConfigDict:
  """The spec's CIFAR training recipe (§6), shared by the teacher and the pruned network."""
  t = ml_collections.ConfigDict()
  t.warmup_epochs = 5              # linear warm-up, per iteration
  t.cosine_epochs = 300            # then cosine to 0, per iteration
  t.batch_size = 256               # global batch, split over devices
  t.eval_batch_size = 500          # evaluation only: does not change a result
  t.lr = 0.1                       # the peak learning rate
  t.momentum = 0.9                 # SGD momentum
  t.nesterov = True                # Nesterov momentum
  t.weight_decay = 5e-4            # coupled L2 on every weight, as PyTorch's SGD
  return t


def parse_run(name: str) -> dict:
  """'uniform-kd' / 'tas-ce-init' -> distill fields {student, kd, init}; ConfigError otherwise.

  A run of a method that keeps weights ('pas-kd') fine-tunes the extracted weights: init 'searched'.
  """
  parts = name.strip().split("-")
  ok = (len(parts) in (2, 3) and parts[0] in STUDENTS and parts[1] in ("kd", "ce")
        and (len(parts) == 2 or (parts[2] == "init" and parts[0] not in WEIGHT_KEEPING_METHODS)))
  if not ok:
    _fail("pipeline.runs", name, "each run is STUDENT-kd or STUDENT-ce, optionally -init "
          f"(STUDENT: {', '.join(STUDENTS)}; pas runs fine-tune the extracted weights, no -init), "
          "e.g. 'tas-kd,pas-kd,uniform-kd,tas-kd-init'")
  init = ("searched" if parts[0] in WEIGHT_KEEPING_METHODS else
          "teacher" if len(parts) == 3 else "scratch")
  return {"student": parts[0], "kd": parts[1] == "kd", "init": init}


def run_methods(runs: str, method: str) -> list[str]:
  """The pruning methods a pipeline needs: `method` (the baselines match its FLOPs) and every
  method whose pruned network is one of the runs."""
  students = [parse_run(r)["student"] for r in runs.split(",")]
  needed = [method] if any(s in ("uniform", "random", method) for s in students) else []
  return needed + [s for s in dict.fromkeys(students) if s in ("tas", "pas") and s not in needed]


def run_name(d: ml_collections.ConfigDict) -> str:
  """The folder of a distill run under WORKDIR/distill/, e.g. 'tas-kd', 'uniform-ce-init', 'pas-kd'
  (PaS fine-tuned from its extracted weights) or 'pas-kd-scratch' (its architecture from scratch)."""
  student = d.student if d.student in STUDENTS else (
      d.student.rsplit("/", 1)[-1].removesuffix(".json"))
  suffix = {"teacher": "-init", "searched": "",
            "scratch": "-scratch" if d.student in WEIGHT_KEEPING_METHODS else ""}[d.init]
  return f"{student}-{'kd' if d.kd else 'ce'}{suffix}"


def cifar_recipe(dataset: str, depth: int) -> ml_collections.ConfigDict:
  """The spec's CIFAR recipe (§6) for a CIFAR ResNet of `depth` (164: bottleneck) on `dataset`."""
  c = base_config()
  c.data.name = dataset
  c.model.depth = depth
  c.model.block = "bottleneck" if depth in arch_lib.CIFAR_DEPTHS_BOTTLENECK else "basic"
  return c


def imagenet_recipe(depth: int) -> ml_collections.ConfigDict:
  """The spec's ImageNet recipe (§5, §6) for ResNet-18/50: 120 epochs (5 of linear warm-up) of
  SGD Nesterov, lr 0.1 cosine, weight decay 1e-4, batch 256, for the teacher, the search's weights
  and the pruned network; bf16 convolutions and activations (float32 weights, BN statistics, loss)."""
  c = base_config()
  c.data.name = "imagenet"
  c.data.dir = ""                  # a train/ + val/ JPEG folder, or TFDS imagenet2012 (ArrayRecord)
  c.data.image_size = 224
  c.data.workers = 16              # decoding processes per host
  c.model.family = "imagenet"
  c.model.depth = depth
  c.model.dtype = "bfloat16"
  for recipe in (c.teacher, c.distill):
    recipe.warmup_epochs, recipe.cosine_epochs = 5, 115
    recipe.weight_decay = 1e-4
    recipe.eval_batch_size = 250
  c.search.epochs, c.search.warmup_epochs = 120, 5
  c.search.weight_decay = 1e-4
  c.search.eval_batch_size = 250
  c.log_every_steps = 100
  c.checkpoint_every_steps = 1000  # an ImageNet epoch is 5,004 steps at batch 256
  return c


def _fail(field: str, value, allowed: str):
  raise ConfigError(f"config.{field}={value!r}: {allowed}")


def _positive(c, field: str, integer: bool = False, zero_ok: bool = False):
  value = c
  for part in field.split("."):
    value = value[part]
  ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
  if isinstance(value, bool) or not ok_type or value < 0 or (value == 0 and not zero_ok):
    kind = "an integer" if integer else "a number"
    _fail(field, value, f"must be {kind} {'>= 0' if zero_ok else '> 0'}")


def validate(c: ml_collections.ConfigDict) -> None:
  """Raises ConfigError on the first field that cannot work."""
  if c.stage not in STAGES:
    _fail("stage", c.stage, f"allowed: {', '.join(STAGES)}")
  if c.data.name not in datasets.NAMES + datasets.STREAMED:
    _fail("data.name", c.data.name, f"allowed: {', '.join(datasets.NAMES + datasets.STREAMED)}")
  _positive(c, "data.workers", integer=True, zero_ok=True)
  _positive(c, "data.prefetch", integer=True)
  if c.data.bad_images not in ("skip", "fail"):
    _fail("data.bad_images", c.data.bad_images, "allowed: skip, fail")
  if not (c.data.image_size == -1 or (isinstance(c.data.image_size, int) and c.data.image_size > 0)):
    _fail("data.image_size", c.data.image_size, "must be -1 (native size) or a positive integer")
  _positive(c, "data.crop_padding", integer=True, zero_ok=True)
  if not (c.data.train_examples == -1 or (isinstance(c.data.train_examples, int)
                                          and c.data.train_examples > 0)):
    _fail("data.train_examples", c.data.train_examples, "must be -1 (all) or a positive integer")
  if c.model.dtype not in DTYPES:
    _fail("model.dtype", c.model.dtype, f"allowed: {', '.join(DTYPES)}")
  if c.model.arch:
    try:
      networks.resolve(c.model.arch)
    except arch_lib.ArchError as e:
      raise ConfigError(f"config.model.arch: {e}") from None
  elif c.model.family == "cifar":
    if c.model.block not in ("basic", "bottleneck"):
      _fail("model.block", c.model.block, "allowed: basic, bottleneck")
    try:
      arch_lib.cifar_resnet(c.model.depth, c.model.block)
    except arch_lib.ArchError as e:
      raise ConfigError(f"config.model.{e}") from None
  elif c.model.family == "repvgg":
    if c.model.repvgg not in repvgg.VARIANTS:
      _fail("model.repvgg", c.model.repvgg, f"allowed: {', '.join(repvgg.VARIANTS)}")
  elif c.model.family == "imagenet":
    if c.model.depth not in arch_lib.IMAGENET_DEPTHS:
      _fail("model.depth", c.model.depth,
            f"ImageNet ResNets allow {', '.join(map(str, arch_lib.IMAGENET_DEPTHS))}")
  else:
    _fail("model.family", c.model.family, "allowed: cifar, imagenet, repvgg")
  for section in ("teacher", "distill"):
    _validate_recipe(c, section)
  _validate_search(c)
  _validate_pas(c)
  is_repvgg = (isinstance(networks.resolve(c.model.arch), repvgg.RepVGGArch) if c.model.arch
               else c.model.family == "repvgg")
  if is_repvgg:
    # TAS's space and the uniform / random baselines are ResNet-shaped (blocks of 2-3 convs)
    if c.method == "tas" and c.stage in ("search", "extract"):
      _fail("method", c.method, "TAS searches ResNets; a RepVGG (model.family=repvgg) is pruned "
            "with --config.method=pas")
    if c.stage in ("all", "distill"):
      runs = ([parse_run(r)["student"] for r in c.pipeline.runs.split(",")] if c.stage == "all"
              else [c.distill.student])
      bad = [s for s in runs if s in ("tas", "uniform", "random")]
      if bad:
        _fail("pipeline.runs" if c.stage == "all" else "distill.student",
              c.pipeline.runs if c.stage == "all" else c.distill.student,
              f"{bad[0]} needs a ResNet; a RepVGG's runs are pas-kd / pas-ce")
  _validate_distill(c)
  if c.parallel not in PARALLEL_MODES:
    _fail("parallel", c.parallel, f"allowed: {', '.join(PARALLEL_MODES)}")
  if not (c.num_devices == -1 or (isinstance(c.num_devices, int) and c.num_devices > 0)):
    _fail("num_devices", c.num_devices, "must be -1 (all) or a positive integer")
  _positive(c, "log_every_steps", integer=True)
  _positive(c, "checkpoint_every_steps", integer=True, zero_ok=True)
  _positive(c, "keep_checkpoints", integer=True)
  _positive(c, "max_steps_per_run", integer=True, zero_ok=True)
  _positive(c, "profile_steps", integer=True, zero_ok=True)
  for stage in filter(None, (s.strip() for s in str(c.overwrite).split(","))):
    if not re.fullmatch(r"teacher|distill(/[\w.-]+)?|(search|extract)(-\w+)?", stage):
      _fail("overwrite", c.overwrite, "comma-separated stage folders: teacher, search, extract, "
            "search-pas, extract-pas, distill/RUN (e.g. distill/tas-kd), distill (every run)")


def _validate_recipe(c: ml_collections.ConfigDict, section: str) -> None:
  for field in ("lr", "batch_size", "eval_batch_size", "cosine_epochs"):
    _positive(c, f"{section}.{field}", integer=field != "lr")
  _positive(c, f"{section}.warmup_epochs", integer=True, zero_ok=True)
  _positive(c, f"{section}.weight_decay", zero_ok=True)
  momentum = c[section].momentum
  if not (isinstance(momentum, (int, float)) and 0 <= momentum < 1):
    _fail(f"{section}.momentum", momentum, "must be in [0, 1)")


def _validate_pas(c: ml_collections.ConfigDict) -> None:
  for field in ("epochs", "batch_size", "eval_batch_size"):
    _positive(c, f"pas.{field}", integer=True)
  for field in ("lr", "cost_weight"):
    _positive(c, f"pas.{field}")
  for field in ("weight_decay", "macs_unit", "finetune_lr"):
    _positive(c, f"pas.{field}", zero_ok=True)
  if not (isinstance(c.pas.momentum, (int, float)) and 0 <= c.pas.momentum < 1):
    _fail("pas.momentum", c.pas.momentum, "must be in [0, 1)")


def _validate_distill(c: ml_collections.ConfigDict) -> None:
  d = c.distill
  if d.student not in STUDENTS:
    try:
      networks.resolve(d.student)
    except arch_lib.ArchError as e:
      raise ConfigError(f"config.distill.student={d.student!r}: not one of {', '.join(STUDENTS)}, "
                        f"and not an architecture: {e}") from None
  if d.init not in STUDENT_INITS:
    _fail("distill.init", d.init, f"allowed: {', '.join(STUDENT_INITS)}")
  if d.init == "searched" and d.student not in WEIGHT_KEEPING_METHODS:
    _fail("distill.init", d.init, "'searched' fine-tunes the weights a method extracted: only "
          f"for distill.student in {', '.join(WEIGHT_KEEPING_METHODS)}")
  if not (isinstance(d.kd_alpha, (int, float)) and 0 <= d.kd_alpha <= 1):
    _fail("distill.kd_alpha", d.kd_alpha, "must be in [0, 1]")
  _positive(c, "distill.kd_temperature")
  if not (isinstance(d.flops_tolerance, (int, float)) and 0 < d.flops_tolerance < 1):
    _fail("distill.flops_tolerance", d.flops_tolerance, "must be in (0, 1)")
  for run in c.pipeline.runs.split(","):
    parse_run(run)
  for field in ("throughput_batch", "throughput_repeats"):
    _positive(c, f"pipeline.{field}", integer=True)


def _validate_search(c: ml_collections.ConfigDict) -> None:
  s = c.search
  if s.variant not in SEARCH_VARIANTS:
    _fail("search.variant", s.variant, f"allowed: {', '.join(SEARCH_VARIANTS)}")
  if not (isinstance(s.flop_ratio, (int, float)) and 0 < s.flop_ratio <= 1):
    _fail("search.flop_ratio", s.flop_ratio, "must be in (0, 1]: the target fraction of the "
          "unpruned network's FLOPs")
  if not (isinstance(s.tolerance, (int, float)) and 0 <= s.tolerance < s.flop_ratio):
    _fail("search.tolerance", s.tolerance, "must be in [0, search.flop_ratio)")
  if s.band not in ("released", "symmetric"):
    _fail("search.band", s.band, "allowed: released, symmetric")
  if s.in_band not in ("free", "expected", "capped", "centred"):
    _fail("search.in_band", s.in_band, "allowed: free, expected, capped, centred")
  if s.expected_flops not in ("released", "exact"):
    _fail("search.expected_flops", s.expected_flops, "allowed: released, exact")
  if s.arch_lr_schedule not in ("constant", "cosine"):
    _fail("search.arch_lr_schedule", s.arch_lr_schedule, "allowed: constant, cosine")
  if not isinstance(s.arch_cooldown_epochs, int) or not 0 <= s.arch_cooldown_epochs < s.epochs:
    _fail("search.arch_cooldown_epochs", s.arch_cooldown_epochs,
          f"must be an integer in [0, search.epochs={s.epochs})")
  if s.arch_cooldown_epochs and s.arch_lr_schedule != "constant":
    _fail("search.arch_cooldown_epochs", s.arch_cooldown_epochs,
          "applies to search.arch_lr_schedule=constant only (cosine already decays to 0)")
  if s.init not in SEARCH_INITS:
    _fail("search.init", s.init, f"allowed: {', '.join(SEARCH_INITS)}")
  if s.tau_schedule not in TAU_SCHEDULES:
    _fail("search.tau_schedule", s.tau_schedule, f"allowed: {', '.join(TAU_SCHEDULES)}")
  for field in ("tau_max", "tau_min", "lr", "arch_lr"):
    _positive(c, f"search.{field}")
  if s.tau_min > s.tau_max:
    _fail("search.tau_min", s.tau_min, f"must not exceed search.tau_max={s.tau_max}")
  for field in ("cost_weight", "weight_decay", "arch_weight_decay"):
    _positive(c, f"search.{field}", zero_ok=True)
  for field in ("epochs", "batch_size", "eval_batch_size"):
    _positive(c, f"search.{field}", integer=True)
  _positive(c, "search.warmup_epochs", integer=True, zero_ok=True)
  if s.warmup_epochs >= s.epochs:
    _fail("search.warmup_epochs", s.warmup_epochs, f"must be below search.epochs={s.epochs}")
  for field in ("momentum", "arch_beta1", "arch_beta2"):
    if not (isinstance(s[field], (int, float)) and 0 <= s[field] < 1):
      _fail(f"search.{field}", s[field], "must be in [0, 1)")


def architecture(c: ml_collections.ConfigDict, num_classes: int, image_size: int,
                 channels: int) -> arch_lib.Architecture:
  """The network the config describes, fitted to a dataset's classes, image size and channels."""
  if c.model.arch:
    a = networks.resolve(c.model.arch)
    if (a.num_classes, a.input_size, a.input_channels) != (num_classes, image_size, channels):
      raise ConfigError(
          f"config.model.arch={c.model.arch!r} expects {a.num_classes} classes and "
          f"{a.input_size}x{a.input_size}x{a.input_channels} inputs, but config.data.name="
          f"{c.data.name!r} gives {num_classes} classes and {image_size}x{image_size}x{channels}")
    return a
  try:
    if c.model.family == "cifar":
      return arch_lib.cifar_resnet(c.model.depth, c.model.block, num_classes, image_size, channels)
    if c.model.family == "repvgg":
      return repvgg.named_repvgg(c.model.repvgg, num_classes, image_size, channels)
    return arch_lib.imagenet_resnet(c.model.depth, num_classes, image_size, channels)
  except arch_lib.ArchError as e:
    hint = ""
    if "multiple of" in str(e):   # e.g. RepVGG (5 stride-2 stages) on 28x28 Fashion-MNIST
      multiple = int(str(e).split("multiple of ")[1].split()[0])
      hint = (f"; pad the images with --config.data.image_size="
              f"{-(-image_size // multiple) * multiple}")
    raise ConfigError(f"model for {c.data.name}: {e}{hint}") from None


# ------------------------------------------------------------------------------------------
# `python -m tas_jax.config [--config=configs/NAME.py] [--config.FIELD=VALUE ...]`: every field,
# its value and its meaning (the comment beside it above), for the command line
# ------------------------------------------------------------------------------------------

def field_help() -> dict[str, str]:
  """field -> its meaning, read from the comments of `base_config` and `sgd_recipe` (one source:
  the comment a reader of this file sees). Recipe fields are keyed 'recipe.NAME'."""
  import inspect
  meaning: dict[str, str] = {}
  last = None
  source = inspect.getsource(base_config) + inspect.getsource(sgd_recipe)
  for line in source.splitlines():
    assignment = re.match(r"\s+([ct])\.([\w.]+) = [^#]*(?:#\s?(.*))?$", line)
    if assignment:
      prefix, name, comment = assignment.groups()
      last = name if prefix == "c" else f"recipe.{name}"
      if comment:
        meaning[last] = comment.strip()
      else:
        last = None
      continue
    continuation = re.match(r"\s+#\s?(.*)$", line)
    if continuation and last:
      meaning[last] += " " + continuation.group(1).strip()
    else:
      last = None
  return meaning


def describe(c: ml_collections.ConfigDict) -> list[tuple[str, object, str]]:
  """(field, value, meaning) of every field of `c`, in its order."""
  meaning = field_help()
  out = []

  def walk(node, prefix):
    for key, value in node.items():
      name = f"{prefix}{key}"
      if isinstance(value, ml_collections.ConfigDict):
        walk(value, name + ".")
        continue
      section = name.split(".")[0]
      text = meaning.get(name) or (meaning.get(f"recipe.{key}", "")
                                   if section in ("teacher", "distill") else "")
      out.append((name, value, text))

  walk(c, "")
  return out


if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags

  config_flags.DEFINE_config_file("config", None, "A config file (default: the base config).")

  def _main(argv):
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    c = flags.FLAGS.config if flags.FLAGS.config is not None else base_config()
    rows = describe(c)
    width = max(len(f"{name} = {value!r}") for name, value, _ in rows)
    for name, value, text in rows:
      print(f"{f'{name} = {value!r}':<{width}}  {text}".rstrip())

  app.run(_main)
