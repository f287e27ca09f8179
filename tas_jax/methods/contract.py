"""The contract every pruning method fulfils: `Method`, what the method-independent code knows of
one (its stages, its settings, how its results are trained and recorded). The registry that finds
a method by name is `tas_jax.methods`."""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import ml_collections


@dataclasses.dataclass(frozen=True)
class Method:
  name: str  # config.method=NAME; a distill run NAME-kd trains its pruned network
  label: str  # its rows in the results table, e.g. "PaS (fine-tuned)"
  description: str
  search: Callable[[ml_collections.ConfigDict, str], dict]
  extract: Callable[[ml_collections.ConfigDict, str], dict]
  section: str = ""  # config[section] holds its settings ("" = none of its own)
  defaults: Callable[[], ml_collections.ConfigDict] = ml_collections.ConfigDict
  validate: Callable[[ml_collections.ConfigDict], None] = lambda config: None
  keeps_weights: bool = False  # its extraction writes the kept channels' weights; its runs
  # fine-tune them (distill.init=searched)
  families: tuple[str, ...] = ("resnet",)  # the networks it prunes: resnet, repvgg
  reads_teacher: Callable[[ml_collections.ConfigDict], bool] = lambda config: True
  # whether its search starts from WORKDIR/teacher
  finetune_fields: tuple[str, ...] = ()  # fields of its section read by the fine-tuning of its
  # extracted weights, not by its search
  finetune: Optional[Callable[[ml_collections.ConfigDict], ml_collections.ConfigDict]] = None
  # the recipe fine-tuning its extracted weights (default: config.distill)
  search_reads_finetune: Callable[[ml_collections.ConfigDict], bool] = lambda config: False
  # whether its search trains with the finetune fields (soft FPGM), so they define it too
  not_defining: tuple[str, ...] = ()  # fields of its section that do not change a result
  imagenet: Callable[[ml_collections.ConfigDict], None] = lambda config: None
  # its settings in the ImageNet recipe (tas_jax.config.imagenet_recipe), set on the config
