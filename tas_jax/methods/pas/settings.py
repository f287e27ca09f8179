"""PaS's config section, `config.pas` (Li et al., IJCAI 2022): its defaults, checks, and the recipe
that fine-tunes its extracted weights. Its FLOPs target is the shared `config.target.flop_ratio`.

The defaults are the released scripts' (liyy201912/PaS, `scripts/resnet50.sh`): a search of 9
epochs at lr 0.02 and global batch 512 (8 GPUs x 64), then, masks frozen and the searched weights
kept, a fine-tuning that is the tail of the released 90-epoch step schedule (lr x0.1 at epochs 30,
60 and 80): from epoch 52 for ResNet-50 (38 epochs: lr 0.0256, x0.1 after 8 and 28 epochs), from
epoch 42 for RepVGG-B1 (48 epochs: x0.1 after 18 and 38), SGD momentum 0.9, weight decay 1e-4, no
KD. α of the MACs penalty is 5 for ResNets and 0.1 for RepVGG (`prunesearch.py`), with MACs in G.

That α was tuned on ImageNet networks of a few G MACs; counted in G, the same α barely touches a
CIFAR ResNet of 0.04 G. The default penalty (`pas.penalty=scaled`) is the released one written
relative to the network: α·(M_ref/G)²·((MACs − R·MACs_full)/MACs_full)², M_ref the MACs of the
network α was tuned on (ResNet-50 at 224 px for ResNets, RepVGG-B1 for RepVGG). At that network it
is the released penalty exactly; on any other it pushes every mask in proportion to its channel's
share of the MACs, as the released penalty does ResNet-50's (docs/concepts/pas.md, "PaS at
every scale").
"""

from __future__ import annotations

import ml_collections

from tas_jax import validation
from tas_jax.models import networks, repvgg
from tas_jax.ops import flops

# the released per-family values, where the section's field is left at None
COST_WEIGHT = {"resnet": 5.0, "repvgg": 0.1}
# the network each family's released α was tuned on, where the scaled penalty is the released one
REFERENCE_NETWORK = {"resnet": "imagenet_resnet50", "repvgg": "repvgg_b1"}
RELEASED_MACS_UNIT = 1e9
PENALTIES = ("scaled", "released")
FINETUNES = ("released", "distill")
FINETUNE_EPOCHS = {"resnet": 38, "repvgg": 48}
RELEASED_DECAYS_BEFORE_END = (30, 10)   # the released schedule decays at epochs 60 and 80 of 90


def defaults() -> ml_collections.ConfigDict:
  placeholder = ml_collections.config_dict.placeholder
  s = ml_collections.ConfigDict()
  s.epochs = 9                 # joint SGD on weights and mask scalars, from the teacher
  s.batch_size = 512           # global batch of the search and the fine-tuning (released: 8 x 64)
  s.lr = 0.02                  # the search's constant lr, paired with batch 512 as released (the
                               # released code scales lr with the batch: at 256 use 0.01)
  s.momentum = 0.9             # SGD of weights and mask scalars, and of the fine-tuning
  s.nesterov = False           # SGD of weights and mask scalars, and of the fine-tuning
  s.weight_decay = 1e-4        # coupled L2, on the mask scalars too (as released)
  s.cost_weight = placeholder(float)   # α of α·(MACs − target)²; None: the family's released
                                      # value (ResNet 5, RepVGG 0.1)
  s.penalty = "scaled"         # scaled: the released α carried to this network's size
                               # (α·(M_ref/G)²·(relative gap)²); released: α·((MACs − target)/
                               # macs_unit)², as released
  s.macs_unit = placeholder(float)   # penalty=released: the MACs unit (None: G, as released; 0:
                                    # the unpruned network's MACs)
  s.eval_batch_size = 500      # evaluation only: does not change a result
  s.finetune = "released"      # released: the released fine-tuning below; distill: the recipe of
                               # config.distill (a common recipe for every method)
  s.finetune_epochs = placeholder(int)   # fine-tuning of the kept weights, masks frozen; None:
                                        # the family's released count (ResNet 38, RepVGG 48)
  s.finetune_lr = 0.0256       # its lr at the start (released, at batch 512), step-decayed
  s.finetune_decay_epochs = ()   # epochs after which its lr is multiplied by finetune_decay_factor;
                                 # () = the released points, 30 and 10 epochs before the end
                                 # (38 epochs: 8, 28)
  s.finetune_decay_factor = 0.1  # the step decay's factor
  return s


def cost_weight(p: ml_collections.ConfigDict, arch) -> float:
  """α: `p.cost_weight` (the pas section), or the released value of `arch`'s family."""
  if p.cost_weight is not None:
    return p.cost_weight
  return COST_WEIGHT[family(arch)]


def family(arch) -> str:
  """The family whose released settings apply: a user's model (traced groups) takes the ResNets'
  (α = 5 per G², scaled to its MACs as any network is)."""
  return "repvgg" if isinstance(arch, repvgg.RepVGGArch) else "resnet"


def reference_macs(arch) -> float:
  """M_ref: the MACs of the network `arch`'s family's released α was tuned on."""
  return float(flops.count(networks.resolve(REFERENCE_NETWORK[family(arch)])).flops)


def penalty_scale(p: ml_collections.ConfigDict, arch, full: float, by_table: bool) -> tuple:
  """(weight, unit) of the penalty weight·((cost − R·full)/unit)² for the unpruned network `arch`
  whose cost is `full` (its MACs, or its table latency when `by_table`).

  scaled: unit = full and weight = α·(M_ref/G)², so at the reference network (full = M_ref) it is
  α·((MACs − R·M_ref)/G)², the released penalty; a latency target gets the same weight on the
  same relative gap. released: α with MACs in `macs_unit` (a latency target: in units of the
  unpruned latency, as a table has no G)."""
  alpha = cost_weight(p, arch)
  if p.penalty == "scaled":
    return alpha * (reference_macs(arch) / RELEASED_MACS_UNIT) ** 2, full
  unit = RELEASED_MACS_UNIT if p.macs_unit is None else p.macs_unit
  return alpha, full if by_table or unit == 0 else unit


def finetune_epochs(c: ml_collections.ConfigDict) -> int:
  if c.pas.finetune_epochs is not None:
    return c.pas.finetune_epochs
  kind = networks.family_of(c.model)
  return FINETUNE_EPOCHS["repvgg" if kind == "repvgg" else "resnet"]


def decay_epochs(c: ml_collections.ConfigDict) -> tuple[int, ...]:
  if c.pas.finetune_decay_epochs:
    return tuple(int(e) for e in c.pas.finetune_decay_epochs)
  epochs = finetune_epochs(c)
  return tuple(epochs - b for b in RELEASED_DECAYS_BEFORE_END if epochs - b > 0)


def validate(c: ml_collections.ConfigDict) -> None:
  for field in ("epochs", "batch_size", "eval_batch_size"):
    validation.positive(c, f"pas.{field}", integer=True)
  for field in ("lr", "finetune_lr"):
    validation.positive(c, f"pas.{field}")
  validation.positive(c, "pas.weight_decay", zero_ok=True)
  if c.pas.penalty not in PENALTIES:
    validation.fail("pas.penalty", c.pas.penalty, f"allowed: {', '.join(PENALTIES)}")
  if c.pas.macs_unit is not None:
    if c.pas.penalty != "released":
      validation.fail("pas.macs_unit", c.pas.macs_unit,
                      "applies to pas.penalty=released only (the scaled penalty measures the gap "
                      "in units of the unpruned network's MACs)")
    validation.positive(c, "pas.macs_unit", zero_ok=True)
  if c.pas.cost_weight is not None:
    validation.positive(c, "pas.cost_weight")
  if c.pas.finetune_epochs is not None:
    validation.positive(c, "pas.finetune_epochs", integer=True)
  if c.pas.finetune not in FINETUNES:
    validation.fail("pas.finetune", c.pas.finetune, f"allowed: {', '.join(FINETUNES)}")
  validation.fraction(c, "pas.momentum")
  validation.positive(c, "pas.finetune_decay_factor")
  points = c.pas.finetune_decay_epochs
  if not (isinstance(points, (tuple, list)) and all(isinstance(e, int) and e > 0 for e in points)
          and list(points) == sorted(set(points))):
    validation.fail("pas.finetune_decay_epochs", points,
                    "increasing epochs > 0, e.g. '(8, 28)', or () for the released points")


def finetune(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The recipe of a PaS run (pas-ce, pas-kd): the released fine-tuning, with config.distill's KD
  settings (KD itself is the run's choice: pas-ce is the released recipe); with
  `pas.finetune=distill`, config.distill's recipe."""
  d = ml_collections.ConfigDict(c.distill.to_dict())
  if c.pas.finetune == "distill":
    d.description = "the distill recipe (config.distill), from the searched weights"
    return d
  d.schedule = "step"
  d.epochs = finetune_epochs(c)
  d.decay_epochs = decay_epochs(c)
  d.decay_factor = c.pas.finetune_decay_factor
  d.lr = c.pas.finetune_lr
  d.batch_size = c.pas.batch_size
  d.momentum, d.nesterov, d.weight_decay = c.pas.momentum, c.pas.nesterov, c.pas.weight_decay
  d.warmup_epochs, d.cosine_epochs = 0, 0
  d.description = "PaS fine-tuning as released (masks frozen, the searched weights kept)"
  return d
