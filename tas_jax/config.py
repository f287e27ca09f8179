"""The configuration every stage reads: defaults, the model it describes, and validation.

`configs/*.py` start from `base_config()` and change a few fields; users override any field on the
command line (`--config.teacher.lr=0.05`) or edit the returned `ConfigDict` in a notebook.
`validate()` runs before anything heavy and turns a wrong value into one line naming the field and
what is allowed.
"""

from __future__ import annotations

import json
import re

import ml_collections
from absl import logging

from tas_jax import errors, methods, target as target_lib, workdir as layout
from tas_jax.data import datasets
from tas_jax.models import arch as arch_lib, networks, repvgg, user
from tas_jax.validation import fail, fraction, positive

STAGES = ("teacher", "search", "extract", "distill", "results", "all")
BASELINES = ("uniform", "random")   # distill students at a method's FLOPs (stages.baselines)
STUDENT_INITS = ("scratch", "teacher", "searched")
PARALLEL_MODES = ("jit", "pmap")
DTYPES = ("float32", "bfloat16")
# old field -> its new name: still accepted (on the command line too), with a one-line notice
RENAMED = {"search.flop_ratio": "target.flop_ratio", "search.tolerance": "target.tolerance",
           "search.cost": "target.cost"}
COSTS = target_lib.MEASURES


ConfigError = errors.ConfigError


def students() -> tuple[str, ...]:
  """What distill.student and a run's STUDENT may name, besides an architecture JSON or a named
  network: a registered method's pruned network, or a baseline at its FLOPs."""
  return methods.names() + BASELINES


def base_config() -> ml_collections.ConfigDict:
  """Defaults: CIFAR-10 ResNet-20 teacher with the released TAS recipe."""
  c = ml_collections.ConfigDict()
  c.stage = "teacher"              # teacher | search | extract | distill | results | all
  c.method = layout.DEFAULT_METHOD # the pruning method of search/extract: tas | pas | l1 | fpgm
                                   # (the tas_jax.methods registry)
  c.seed = 0                       # weights, data order, augmentation and Gumbel draws

  c.data = ml_collections.ConfigDict()
  c.data.name = "cifar10"          # in memory: tas_jax.data.datasets.NAMES; streamed: imagenet
  c.data.dir = ""                  # where archives / IDX files / TFDS data are ("" = defaults)
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
  c.model.arch = ""                # a named network or an architecture JSON; overrides the above
  c.model.module = ""              # your own flax.linen model, 'package.module:Class' (importable
                                   # from the working directory): overrides the above; pruned on
                                   # its traced channel groups by tas (widths) | pas | l1 | fpgm
                                   # (docs/guides/own-model.md)
  c.model.kwargs = "{}"            # model.module's keyword arguments, a JSON object
  c.model.dtype = "float32"        # float32 | bfloat16 (activations; weights stay float32)
  c.model.scan_blocks = False      # True: the blocks of a stage that share shapes run as one
                                   # lax.scan, recomputed in the backward pass: one compiled block
                                   # per stage and far less memory, but slower steps on the CPU
                                   # (BENCHMARKS.md); for deep networks and long compiles

  c.teacher = sgd_recipe()
  c.teacher.finetune_imported = False  # a teacher imported by tas_jax.convert: False = evaluate it
                                   # as it is; True = a fresh classifier for the data's classes
                                   # (kept when they match) and every weight fine-tuned with
                                   # config.finetune's recipe, as the teacher stage
  c.finetune = sgd_recipe()        # the recipe of teacher.finetune_imported (transfer learning)
  c.finetune.warmup_epochs = 0
  c.finetune.cosine_epochs = 10
  c.finetune.lr = 0.01
  c.finetune.weight_decay = 1e-4

  c.target = ml_collections.ConfigDict()   # what every pruning method aims at
  c.target.cost = "flops"          # flops | latency: every method prices networks by a latency
                                   # table measured on this backend (tas_jax.latency) instead
  c.target.flop_ratio = 0.5        # the pruned network's FLOPs / the unpruned network's (its
                                   # table latency / the unpruned one's with cost=latency)
  c.target.tolerance = 0.05        # t: a result within t·F_max of the target is on target (TAS's
                                   # band: [R - t, R] of F_max, or ±t·R with search.band=symmetric)

  c.latency = ml_collections.ConfigDict()  # the table of target.cost=latency (tas_jax.latency)
  c.latency.batch_size = 0         # the batch its convs are timed at; 0 = pipeline.throughput_batch
                                   # (the batch the results table measures networks at)
  c.latency.repeats = 5            # each entry: the median of this many timed calls
  c.latency.report = False         # extraction reports the predicted and measured latency of the
                                   # pruned network for a FLOPs search too (always with latency)

  for method in methods.REGISTRY.values():   # each method's own section, e.g. c.search, c.pas
    if method.section:
      c[method.section] = method.defaults()
  for old in RENAMED:
    section, _, name = old.partition(".")
    if section in c:
      c[section][name] = ml_collections.config_dict.placeholder(   # None: not given
          str if name == "cost" else float)

  c.distill = sgd_recipe()         # the pruned network's training (released TAS: the teacher's)
  c.distill.student = layout.DEFAULT_METHOD  # a method (tas, pas, l1, fpgm): its extracted network;
                                   # uniform | random: baselines at config.method's FLOPs; or an
                                   # architecture JSON path / named network
  c.distill.kd = True              # knowledge distillation from WORKDIR/teacher
  c.distill.kd_alpha = 0.9         # (1-a)·CE + a·T²·KL(teacher ‖ student)
  c.distill.kd_temperature = 4.0   # T of the KD loss
  c.distill.init = "scratch"       # scratch (released code) | teacher (w/ Init: first-k channels)
  c.distill.baseline_seed = 0      # the random baseline's architecture draw
  c.distill.flops_tolerance = 0.02  # baselines: |F - F(TAS)| <= this fraction of F(TAS)

  c.pipeline = ml_collections.ConfigDict()
  c.pipeline.runs = "tas-kd"       # stage=all: distill runs, comma-separated STUDENT-{kd|ce}[-init]
  c.pipeline.throughput_batch = 256   # results: inference images/s of every network on one batch
  c.pipeline.throughput_repeats = 10  # results: the median of this many timed calls

  c.parallel = "jit"               # jit: global view, NamedSharding; pmap: per-device code
  c.num_devices = -1               # -1 = all local devices
  c.log_every_steps = 20           # a progress line every N steps (and at least once a minute)
  c.checkpoint_every_steps = 0     # 0 = at the end of every epoch only
  c.keep_checkpoints = 2           # the newest N checkpoints of a stage are kept
  c.max_steps_per_run = 0          # > 0: checkpoint and stop after this many steps (rerun resumes)
  c.profile_steps = 0              # > 0: a profiler trace of N steps into the stage's folder
  c.compilation_cache = "auto"     # JAX's persistent compilation cache: a folder (gs:// for a
                                   # pod), auto = $JAX_COMPILATION_CACHE_DIR or
                                   # ~/.cache/tas_jax/xla, "" = off; a rerun, a resume and every
                                   # stage after the first load their compiled steps from it
  c.overwrite = ""                 # stages to run again although their folder holds a result made
                                   # with other settings (comma-separated: teacher, search, extract,
                                   # search-pas, extract-l1, distill/tas-kd, distill = every run);
                                   # deletes them and the stages that read them. A matching
                                   # result is kept.
  return c


def sgd_recipe() -> ml_collections.ConfigDict:
  """The released TAS CIFAR training recipe (Dong & Yang 2019), shared by the teacher and the pruned
  network."""
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


def keeps_weights(student: str) -> bool:
  return methods.is_method(student) and methods.get(student).keeps_weights


def parse_run(name: str) -> dict:
  """'uniform-kd' / 'tas-ce-init' -> distill fields {student, kd, init}; ConfigError otherwise.

  A run of a method that keeps weights ('pas-kd') fine-tunes the extracted weights: init 'searched'.
  """
  parts = name.strip().split("-")
  ok = (len(parts) in (2, 3) and parts[0] in students() and parts[1] in ("kd", "ce")
        and (len(parts) == 2 or (parts[2] == "init" and not keeps_weights(parts[0]))))
  if not ok:
    keeping = [m for m in methods.names() if keeps_weights(m)]
    fail("pipeline.runs", name, "each run is STUDENT-kd or STUDENT-ce, optionally -init "
         f"(STUDENT: {', '.join(students())}; {', '.join(keeping)} runs fine-tune the extracted "
         "weights, no -init), e.g. 'tas-kd,pas-kd,uniform-kd,tas-kd-init'")
  init = ("searched" if keeps_weights(parts[0]) else
          "teacher" if len(parts) == 3 else "scratch")
  return {"student": parts[0], "kd": parts[1] == "kd", "init": init}


def run_methods(runs: str, method: str) -> list[str]:
  """The pruning methods a pipeline needs: `method` (the baselines match its FLOPs) and every
  method whose pruned network is one of the runs."""
  run_students = [parse_run(r)["student"] for r in runs.split(",")]
  needed = [method] if any(s in BASELINES + (method,) for s in run_students) else []
  return needed + [s for s in dict.fromkeys(run_students)
                   if methods.is_method(s) and s not in needed]


def run_name(d: ml_collections.ConfigDict) -> str:
  """The folder of a distill run under WORKDIR/distill/, e.g. 'tas-kd', 'uniform-ce-init',
  'pas-kd' (PaS fine-tuned from its extracted weights) or 'pas-kd-scratch' (its architecture from
  scratch)."""
  student = d.student if d.student in students() else (
      d.student.rsplit("/", 1)[-1].removesuffix(".json"))
  suffix = {"teacher": "-init", "searched": "",
            "scratch": "-scratch" if keeps_weights(d.student) else ""}[d.init]
  return f"{student}-{'kd' if d.kd else 'ce'}{suffix}"


def cifar_recipe(dataset: str, depth: int) -> ml_collections.ConfigDict:
  """The released TAS CIFAR recipe for a CIFAR ResNet of `depth` (164: bottleneck) on `dataset`."""
  c = base_config()
  c.data.name = dataset
  c.model.depth = depth
  c.model.block = "bottleneck" if depth in arch_lib.CIFAR_DEPTHS_BOTTLENECK else "basic"
  return c


def imagenet_recipe(depth: int) -> ml_collections.ConfigDict:
  """The released TAS ImageNet recipe (Dong & Yang 2019) for ResNet-18/50: 120 epochs (5 of linear
  warm-up) of SGD Nesterov, lr 0.1 cosine, weight decay 1e-4, batch 256, for the teacher, the
  search's weights and the pruned network; bf16 convolutions and activations (float32 weights, BN
  statistics, loss)."""
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
  for method in methods.REGISTRY.values():   # e.g. TAS's search epochs and weight decay
    method.imagenet(c)
  c.log_every_steps = 100
  c.checkpoint_every_steps = 1000  # an ImageNet epoch is 5,004 steps at batch 256
  return c


def apply_renamed(c: ml_collections.ConfigDict) -> None:
  """Moves a value given under an old field name (RENAMED) to its new field, with a notice."""
  for old, new in RENAMED.items():
    section, _, name = old.partition(".")
    if section not in c or c[section][name] is None:
      continue
    value = c[section][name]
    logging.warning("config.%s is now config.%s: using %s=%r (the old name will go)", old, new,
                    new, value)
    new_section, _, new_name = new.partition(".")
    c[new_section][new_name] = value
    c[section][name] = None


def network_family(c: ml_collections.ConfigDict) -> str:
  """"resnet" or "repvgg": what the config's network is, for the methods' `families`."""
  return networks.family_of(c.model)


def validate(c: ml_collections.ConfigDict) -> None:
  """Raises ConfigError on the first field that cannot work; runs once per run, before anything
  heavy (`tas_jax.main.run`). A value under a renamed field moves to its new name first."""
  apply_renamed(c)
  if c.stage not in STAGES:
    fail("stage", c.stage, f"allowed: {', '.join(STAGES)}")
  if c.data.name not in datasets.NAMES + datasets.STREAMED:
    fail("data.name", c.data.name, f"allowed: {', '.join(datasets.NAMES + datasets.STREAMED)}")
  positive(c, "data.workers", integer=True, zero_ok=True)
  positive(c, "data.prefetch", integer=True)
  if c.data.bad_images not in ("skip", "fail"):
    fail("data.bad_images", c.data.bad_images, "allowed: skip, fail")
  size = c.data.image_size
  if not (size == -1 or (isinstance(size, int) and size > 0)):
    fail("data.image_size", c.data.image_size, "must be -1 (native size) or a positive integer")
  positive(c, "data.crop_padding", integer=True, zero_ok=True)
  if not (c.data.train_examples == -1 or (isinstance(c.data.train_examples, int)
                                          and c.data.train_examples > 0)):
    fail("data.train_examples", c.data.train_examples, "must be -1 (all) or a positive integer")
  if c.model.dtype not in DTYPES:
    fail("model.dtype", c.model.dtype, f"allowed: {', '.join(DTYPES)}")
  if c.model.module:
    user.load_class(c.model.module)
    try:
      kwargs = json.loads(c.model.kwargs)
    except json.JSONDecodeError as e:
      raise ConfigError(f"config.model.kwargs={c.model.kwargs!r}: not JSON ({e})") from None
    if not isinstance(kwargs, dict):
      fail("model.kwargs", c.model.kwargs, "a JSON object, e.g. '{\"num_classes\": 10}'")
  elif c.model.arch:
    try:
      networks.resolve(c.model.arch)
    except arch_lib.ArchError as e:
      raise ConfigError(f"config.model.arch: {e}") from None
  elif c.model.family == "cifar":
    if c.model.block not in ("basic", "bottleneck"):
      fail("model.block", c.model.block, "allowed: basic, bottleneck")
    try:
      arch_lib.cifar_resnet(c.model.depth, c.model.block)
    except arch_lib.ArchError as e:
      raise ConfigError(f"config.model.{e}") from None
  elif c.model.family == "repvgg":
    if c.model.repvgg not in repvgg.VARIANTS:
      fail("model.repvgg", c.model.repvgg, f"allowed: {', '.join(repvgg.VARIANTS)}")
  elif c.model.family == "imagenet":
    if c.model.depth not in arch_lib.IMAGENET_DEPTHS:
      fail("model.depth", c.model.depth,
           f"ImageNet ResNets allow {', '.join(map(str, arch_lib.IMAGENET_DEPTHS))}")
  else:
    fail("model.family", c.model.family, "allowed: cifar, imagenet, repvgg")
  for section in ("teacher", "distill", "finetune"):
    _validate_recipe(c, section)
  _validate_target(c)
  positive(c, "latency.batch_size", integer=True, zero_ok=True)
  positive(c, "latency.repeats", integer=True)
  method = methods.get(c.method)
  for m in methods.REGISTRY.values():
    if m.section:
      if m.section not in c:
        fail(m.section, None, f"method {m.name} keeps its settings in config.{m.section}, which "
             "this config lacks: build it with tas_jax.config.base_config() after registering")
      m.validate(c)
  _validate_families(c, method)
  _validate_distill(c)
  if c.parallel not in PARALLEL_MODES:
    fail("parallel", c.parallel, f"allowed: {', '.join(PARALLEL_MODES)}")
  if not (c.num_devices == -1 or (isinstance(c.num_devices, int) and c.num_devices > 0)):
    fail("num_devices", c.num_devices, "must be -1 (all) or a positive integer")
  positive(c, "log_every_steps", integer=True)
  positive(c, "checkpoint_every_steps", integer=True, zero_ok=True)
  positive(c, "keep_checkpoints", integer=True)
  positive(c, "max_steps_per_run", integer=True, zero_ok=True)
  positive(c, "profile_steps", integer=True, zero_ok=True)
  if not isinstance(c.compilation_cache, str):
    fail("compilation_cache", c.compilation_cache, "a folder, 'auto' or '' (off)")
  for stage in filter(None, (s.strip() for s in str(c.overwrite).split(","))):
    if not re.fullmatch(r"teacher|distill(/[\w.-]+)?|(search|extract)(-\w+)?", stage):
      fail("overwrite", c.overwrite, "comma-separated stage folders: teacher, search, extract, "
           "search-pas, extract-pas, distill/RUN (e.g. distill/tas-kd), distill (every run)")


def _validate_recipe(c: ml_collections.ConfigDict, section: str) -> None:
  for field in ("lr", "batch_size", "eval_batch_size", "cosine_epochs"):
    positive(c, f"{section}.{field}", integer=field != "lr")
  positive(c, f"{section}.warmup_epochs", integer=True, zero_ok=True)
  positive(c, f"{section}.weight_decay", zero_ok=True)
  fraction(c, f"{section}.momentum")


def _validate_target(c: ml_collections.ConfigDict) -> None:
  t = c.target
  if isinstance(t.flop_ratio, bool) or not (isinstance(t.flop_ratio, (int, float))
                                             and 0 < t.flop_ratio <= 1):
    fail("target.flop_ratio", t.flop_ratio, "must be in (0, 1]: the target fraction of the "
         "unpruned network's FLOPs")
  if isinstance(t.tolerance, bool) or not (isinstance(t.tolerance, (int, float))
                                            and 0 <= t.tolerance < t.flop_ratio):
    fail("target.tolerance", t.tolerance, "must be in [0, target.flop_ratio)")
  if t.cost not in COSTS:
    fail("target.cost", t.cost, f"allowed: {', '.join(COSTS)}")
  if target_lib.priced_by_table(t.cost) and network_family(c) in ("repvgg", user.FAMILY):
    fail("target.cost", t.cost, "the latency table covers ResNets (CIFAR and ImageNet) only")


FAMILY_WORDS = {"resnet": "a ResNet", "repvgg": "a RepVGG", user.FAMILY: "a model.module model"}


def _validate_families(c: ml_collections.ConfigDict, method: methods.Method) -> None:
  """Every method and baseline the stage uses can prune the config's network (TAS's space and the
  uniform / random baselines are ResNet-shaped, blocks of 2-3 convs)."""
  family = network_family(c)

  def pruners():
    return ", ".join(m.name for m in methods.REGISTRY.values() if family in m.families)

  if c.stage in ("search", "extract") and family not in method.families:
    fail("method", c.method, f"{method.label} prunes "
         f"{' or '.join(FAMILY_WORDS[k] for k in method.families)}; {FAMILY_WORDS[family]} is "
         f"pruned with --config.method={pruners()}")
  if c.stage in ("all", "distill"):
    runs = ([parse_run(r)["student"] for r in c.pipeline.runs.split(",")] if c.stage == "all"
            else [c.distill.student])
    for student in runs:
      works = (family == "resnet" if student in BASELINES else
               family in methods.get(student).families if methods.is_method(student) else True)
      if not works:
        field = "pipeline.runs" if c.stage == "all" else "distill.student"
        able = [m.name for m in methods.REGISTRY.values() if family in m.families]
        kinds = ("resnet",) if student in BASELINES else methods.get(student).families
        needs = " or ".join(FAMILY_WORDS[k] for k in kinds)
        fail(field, c.pipeline.runs if c.stage == "all" else c.distill.student,
             f"{student} needs {needs}; {FAMILY_WORDS[family]}'s runs use --config.method="
             f"{pruners()} (e.g. {able[0]}-kd, {able[0]}-ce)")


def _validate_distill(c: ml_collections.ConfigDict) -> None:
  d = c.distill
  if d.student not in students():
    try:
      networks.resolve(d.student)
    except arch_lib.ArchError as e:
      raise ConfigError(f"config.distill.student={d.student!r}: not one of "
                        f"{', '.join(students())}, and not an architecture: {e}") from None
  if d.init not in STUDENT_INITS:
    fail("distill.init", d.init, f"allowed: {', '.join(STUDENT_INITS)}")
  if d.init == "searched" and not keeps_weights(d.student):
    keeping = [m for m in methods.names() if keeps_weights(m)]
    fail("distill.init", d.init, "'searched' fine-tunes the weights a method extracted: only "
         f"for distill.student in {', '.join(keeping)}")
  if not (isinstance(d.kd_alpha, (int, float)) and 0 <= d.kd_alpha <= 1):
    fail("distill.kd_alpha", d.kd_alpha, "must be in [0, 1]")
  positive(c, "distill.kd_temperature")
  if not (isinstance(d.flops_tolerance, (int, float)) and 0 < d.flops_tolerance < 1):
    fail("distill.flops_tolerance", d.flops_tolerance, "must be in (0, 1)")
  for run in c.pipeline.runs.split(","):
    parse_run(run)
  for field in ("throughput_batch", "throughput_repeats"):
    positive(c, f"pipeline.{field}", integer=True)


# ------------------------------------------------------------------------------------------
# `python -m tas_jax.config [--config=configs/NAME.py] [--config.FIELD=VALUE ...]`: every field,
# its value and its meaning (the comment beside it above), for the command line
# ------------------------------------------------------------------------------------------

def field_help() -> dict[str, str]:
  """field -> its meaning, read from the comments of `base_config`, `sgd_recipe` and each method's
  `defaults` (one source: the comment a reader of those files sees). Recipe fields are keyed
  'recipe.NAME'; a method's section fields (`s.NAME` there) 'SECTION.NAME'."""
  import inspect
  meaning: dict[str, str] = {}
  last = None
  sources = [(inspect.getsource(base_config), ""), (inspect.getsource(sgd_recipe), "recipe.")]
  sources += [(inspect.getsource(m.defaults), f"{m.section}.")
              for m in methods.REGISTRY.values() if m.section]
  lines = [(line, prefix) for source, prefix in sources for line in source.splitlines()]
  for line, section in lines:
    assignment = re.match(r"\s+([cts])\.([\w.]+) = [^#]*(?:#\s?(.*))?$", line)
    if assignment:
      prefix, name, comment = assignment.groups()
      last = name if prefix == "c" else f"{section}{name}"
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
      text = (f"renamed: {RENAMED[name]} (still read, with a notice)" if name in RENAMED else
              None) or meaning.get(name) or (meaning.get(f"recipe.{key}", "")
                                   if section in ("teacher", "distill", "finetune") else "")
      out.append((name, value, text))

  walk(c, "")
  return out


if __name__ == "__main__":
  from tas_jax.commands import config as command
  command.main()
