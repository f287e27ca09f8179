"""PaS's config section, `config.pas` (spec PAS.md): its defaults, checks, and the recipe that
fine-tunes its extracted weights. Its FLOPs target is the shared `config.target.flop_ratio`."""

from __future__ import annotations

import copy

import ml_collections

from tas_jax import validation


def defaults() -> ml_collections.ConfigDict:
  s = ml_collections.ConfigDict()
  s.epochs = 9                 # joint SGD on weights and mask scalars, from the teacher
  s.batch_size = 256           # global batch of the search
  s.lr = 0.02                  # constant
  s.momentum = 0.9             # SGD of weights and mask scalars
  s.nesterov = False           # SGD of weights and mask scalars
  s.weight_decay = 1e-4        # coupled L2, on the mask scalars too (as released)
  s.cost_weight = 5.0          # α of α·(MACs − target)² (ResNet-50: 5; RepVGG: 0.1)
  s.macs_unit = 1e9            # MACs are counted in this unit in the penalty (spec: G);
                               # 0 = in units of the unpruned network's MACs
  s.eval_batch_size = 500      # evaluation only: does not change a result
  s.finetune_lr = 0.0          # > 0: the peak lr of fine-tuning the extracted weights (pas-kd,
                               # pas-ce) instead of distill.lr; a deployed RepVGG has no BN
                               # and needs a small one (e.g. 0.001)
  return s


def validate(c: ml_collections.ConfigDict) -> None:
  for field in ("epochs", "batch_size", "eval_batch_size"):
    validation.positive(c, f"pas.{field}", integer=True)
  for field in ("lr", "cost_weight"):
    validation.positive(c, f"pas.{field}")
  for field in ("weight_decay", "macs_unit", "finetune_lr"):
    validation.positive(c, f"pas.{field}", zero_ok=True)
  validation.fraction(c, "pas.momentum")


def finetune(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """config.distill, with pas.finetune_lr as its lr when set."""
  d = copy.deepcopy(c.distill)
  if c.pas.finetune_lr > 0:
    d.lr = c.pas.finetune_lr
  return d
