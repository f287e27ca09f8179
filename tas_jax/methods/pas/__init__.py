"""PaS, Pruning-as-Search (Li et al., IJCAI 2022).

settings.py its config section (config.pas): defaults, checks, the released fine-tuning recipe
masks.py    per-channel masks (threshold + straight-through), their groups, the masked MACs
search.py   the search stage: joint SGD on weights and mask scalars, CE + α·(MACs − target)²
extract.py  the extract stage: kept channel indices, the physically smaller network, its weights
"""

from tas_jax.methods.contract import Method
from tas_jax.methods.pas import extract, search, settings

METHOD = Method(
  name=search.NAME,
  label="PaS (fine-tuned)",
  description="Pruning-as-Search: per-channel binary masks (straight-through) with a MACs "
  "penalty, trained jointly with the weights; the kept channels are cut out",
  search=search.search,
  extract=extract.extract,
  section="pas",
  defaults=settings.defaults,
  validate=settings.validate,
  keeps_weights=True,
  families=("resnet", "repvgg", "module"),
  finetune_fields=(
    "finetune",
    "finetune_epochs",
    "finetune_lr",
    "finetune_decay_epochs",
    "finetune_decay_factor",
  ),
  finetune=settings.finetune,
  not_defining=("eval_batch_size",),
)
