"""The config sections of the one-shot methods, `config.l1` and `config.fpgm`: their defaults,
checks, and the recipe each paper fine-tunes its pruned network with.

- L1-norm (Li et al., ICLR 2017) retrains the pruned network at a constant lr of 0.001: 40
  epochs on CIFAR (the re-implementation in "Rethinking the Value of Network Pruning",
  `cifar/l1-norm-pruning/main_finetune.py`: batch 64, SGD momentum 0.9, weight decay 1e-4), 20
  on ImageNet (the paper). Li et al. prune only the first conv of each residual block
  (`l1.scope=inner`).
- FPGM (He et al., CVPR 2019) in its "pruning a pre-trained model" setting fine-tunes at a tenth
  of the training lr: on CIFAR 200 epochs from lr 0.01, x0.2 at epochs 60, 120 and 160, SGD
  Nesterov, weight decay 5e-4, batch 128 (`scripts/pruning_cifar10.sh`); on ImageNet 100 epochs
  from lr 0.1, x0.1 every 30, weight decay 1e-4, batch 256 (`pruning_imagenet.py`). The paper
  prunes softly (the selected filters zeroed after every epoch, free to grow back, only the final
  selection cut): `fpgm.soft=true` (`soft.py`); by default tas_jax cuts once, before this
  fine-tuning.

`finetune=distill` fine-tunes with `config.distill` instead (the TAS recipe: 5 + 300 epochs from
lr 0.1), an explicit choice. KD from the teacher is the run's choice either way (`l1-kd`, `l1-ce`).
A shorter `finetune_epochs` keeps each paper's decay points at the same fractions of the run.
"""

from __future__ import annotations

import ml_collections

from tas_jax import validation

L1_RANKINGS = ("global", "uniform")
L1_SCOPES = ("all", "inner")
FINETUNES = ("paper", "distill")

# the papers' fine-tuning per data scale: epochs, lr, decay points (fractions of the epochs) and
# factor, batch, momentum, Nesterov, weight decay
PAPER_RECIPES = {
  "l1": {
    "cifar": dict(epochs=40, lr=0.001, decays=(), factor=1.0, batch=64, nesterov=False, wd=1e-4),
    "imagenet": dict(epochs=20, lr=0.001, decays=(), factor=1.0, batch=256, nesterov=False,
                     wd=1e-4),
  },
  "fpgm": {
    "cifar": dict(epochs=200, lr=0.01, decays=(0.3, 0.6, 0.8), factor=0.2, batch=128,
                  nesterov=True, wd=5e-4),
    "imagenet": dict(epochs=100, lr=0.1, decays=(0.3, 0.6, 0.9), factor=0.1, batch=256,
                     nesterov=True, wd=1e-4),
  },
}
PAPERS = {"l1": "Li et al.'s retraining", "fpgm": "He et al.'s fine-tuning of a pre-trained model"}


def l1_defaults() -> ml_collections.ConfigDict:
  placeholder = ml_collections.config_dict.placeholder
  s = ml_collections.ConfigDict()
  s.ranking = "global"   # global: one ranking of every channel by its L1 norm over its group's
                         # mean; uniform: one pruning ratio for every group, its lowest-L1
                         # channels first (the paper's per-layer form)
  s.scope = "all"        # all: every channel group, residual chains included; inner: only the
                         # blocks' inner activations (Li et al.: the first conv of a block)
  s.finetune = "paper"   # paper: Li et al.'s retraining (CIFAR 40 epochs, constant lr 0.001,
                         # batch 64; ImageNet 20 epochs); distill: config.distill's recipe
  s.finetune_epochs = placeholder(int)      # None: the paper's
  s.finetune_lr = placeholder(float)        # None: the paper's
  s.finetune_batch_size = placeholder(int)  # None: the paper's
  return s


def fpgm_defaults() -> ml_collections.ConfigDict:
  placeholder = ml_collections.config_dict.placeholder
  s = ml_collections.ConfigDict()
  s.soft = False         # True: the paper's soft pruning: the search fine-tunes the whole teacher
                         # with the recipe below, zeroing the selected filters after every epoch
                         # (they may grow back); extraction cuts the last selection; no
                         # fine-tuning after the cut
  s.finetune = "paper"   # paper: He et al.'s pre-trained setting (CIFAR 200 epochs from lr 0.01,
                         # x0.2 at 30/60/80%; ImageNet 100 from 0.1); distill: config.distill's
  s.finetune_epochs = placeholder(int)      # None: the paper's; the decays keep their fractions
  s.finetune_lr = placeholder(float)        # None: the paper's
  s.finetune_batch_size = placeholder(int)  # None: the paper's
  return s


def _validate_finetune(c: ml_collections.ConfigDict, section: str) -> None:
  s = c[section]
  if s.finetune not in FINETUNES:
    validation.fail(f"{section}.finetune", s.finetune, f"allowed: {', '.join(FINETUNES)}")
  for field in ("finetune_epochs", "finetune_batch_size"):
    if s[field] is not None:
      validation.positive(c, f"{section}.{field}", integer=True)
  if s.finetune_lr is not None:
    validation.positive(c, f"{section}.finetune_lr")


def l1_validate(c: ml_collections.ConfigDict) -> None:
  if c.l1.ranking not in L1_RANKINGS:
    validation.fail("l1.ranking", c.l1.ranking, f"allowed: {', '.join(L1_RANKINGS)}")
  if c.l1.scope not in L1_SCOPES:
    validation.fail("l1.scope", c.l1.scope, f"allowed: {', '.join(L1_SCOPES)}")
  _validate_finetune(c, "l1")


def fpgm_validate(c: ml_collections.ConfigDict) -> None:
  if not isinstance(c.fpgm.soft, bool):
    validation.fail("fpgm.soft", c.fpgm.soft, "true or false")
  _validate_finetune(c, "fpgm")


def scale(c: ml_collections.ConfigDict) -> str:
  return "imagenet" if c.data.name == "imagenet" else "cifar"


def paper_recipe(c: ml_collections.ConfigDict, method: str) -> ml_collections.ConfigDict:
  """The paper's fine-tuning of `method` (l1, fpgm) at the config's data scale, with the
  section's overrides, as a step-decay recipe with config.distill's KD settings."""
  s, paper = c[method], PAPER_RECIPES[method][scale(c)]
  d = ml_collections.ConfigDict(c.distill.to_dict())
  d.schedule = "step"
  d.epochs = s.finetune_epochs or paper["epochs"]
  d.decay_epochs = tuple(
    e for e in dict.fromkeys(round(f * d.epochs) for f in paper["decays"]) if 0 < e < d.epochs
  )
  d.decay_factor = paper["factor"]
  d.lr = s.finetune_lr or paper["lr"]
  d.batch_size = s.finetune_batch_size or paper["batch"]
  d.momentum, d.nesterov, d.weight_decay = 0.9, paper["nesterov"], paper["wd"]
  d.warmup_epochs, d.cosine_epochs = 0, 0
  d.description = f"{PAPERS[method]} ({scale(c)} recipe), from the cut weights"
  return d


def _recipe(c: ml_collections.ConfigDict, method: str) -> ml_collections.ConfigDict:
  if c[method].finetune == "distill":
    d = ml_collections.ConfigDict(c.distill.to_dict())
    d.description = "the distill recipe (config.distill), from the cut weights"
    return d
  return paper_recipe(c, method)


def soft(c: ml_collections.ConfigDict, method: str) -> bool:
  return method == "fpgm" and bool(c.fpgm.soft)


def soft_recipe(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """What soft FPGM's search fine-tunes the whole teacher with: FPGM's fine-tuning recipe."""
  return _recipe(c, "fpgm")


def finetune(method: str):
  """The `Method.finetune` hook of `method`: the paper's recipe, or config.distill's; with soft
  FPGM no training at all (the search fine-tuned before the cut): the cut network evaluated."""

  def recipe(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    if not soft(c, method):
      return _recipe(c, method)
    d = ml_collections.ConfigDict(c.distill.to_dict())
    d.schedule, d.epochs, d.decay_epochs, d.decay_factor = "step", 0, (), 1.0
    d.warmup_epochs, d.cosine_epochs = 0, 0
    d.description = "soft FPGM, fine-tuned before the cut (search-fpgm): the cut network evaluated"
    return d

  return recipe
