"""One-shot pruning of the trained teacher by a per-channel criterion: the classic baselines.

The scores and the selection are shared with pruning any traced model (`tas_jax.prune`):
tas_jax/ops/criteria.py  L1 norm of a channel's filters (Li et al. 2017), FPGM's distance to the
                         other filters (He et al. 2019)
tas_jax/ops/select.py    the kept channels for a FLOPs target: one global ranking, or one ratio
                         for every group
settings.py  their config sections (config.l1, config.fpgm) and each paper's fine-tuning recipe
stages.py    search (scores, kept channels) and extract (the channels cut out with their weights)
soft.py      FPGM's soft pruning (fpgm.soft): the teacher fine-tuned, zeroed after each epoch

Both keep weights: their distill runs (l1-kd, fpgm-ce, …) fine-tune the extracted network with the
paper's recipe (or config.distill's: `l1.finetune=distill`). How they differ from their papers is
in docs/concepts/l1-fpgm.md.
"""

from tas_jax.methods.contract import Method
from tas_jax.methods.oneshot import settings, soft, stages

FINETUNE_FIELDS = ("finetune", "finetune_epochs", "finetune_lr", "finetune_batch_size")

L1 = Method(
    name="l1",
    label="L1-norm (fine-tuned)",
    description="L1-norm filter pruning (Li et al., ICLR 2017): the channels whose filters "
                "have the smallest L1 norm removed from the trained teacher until the FLOPs target",
    search=stages.make_search("l1"),
    extract=stages.make_extract("l1", "L1-norm"),
    section="l1",
    defaults=settings.l1_defaults,
    validate=settings.l1_validate,
    keeps_weights=True,
    families=("resnet", "repvgg", "module"),
    finetune_fields=FINETUNE_FIELDS,
    finetune=settings.finetune("l1"))

def _fpgm_search(config, workdir: str) -> dict:
  """FPGM's search: one shot from the teacher, or soft pruning over a fine-tuning (fpgm.soft)."""
  return (soft.search if config.fpgm.soft else stages.make_search("fpgm"))(config, workdir)


FPGM = Method(
    name="fpgm",
    label="FPGM (fine-tuned)",
    description="Filter Pruning via Geometric Median (He et al., CVPR 2019): in every group the "
                "filters nearest the geometric median removed first, one ratio for all groups",
    search=_fpgm_search,
    extract=stages.make_extract("fpgm", "FPGM"),
    section="fpgm",
    defaults=settings.fpgm_defaults,
    validate=settings.fpgm_validate,
    keeps_weights=True,
    families=("resnet", "repvgg", "module"),
    finetune_fields=FINETUNE_FIELDS,
    finetune=settings.finetune("fpgm"),
    search_reads_finetune=lambda config: bool(config.fpgm.soft))
