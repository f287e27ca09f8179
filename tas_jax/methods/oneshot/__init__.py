"""One-shot pruning of the trained teacher by a per-channel criterion: the classic baselines.

criteria.py  the scores: L1 norm of a channel's filters (Li et al. 2017), FPGM's distance to the
             other filters (He et al. 2019)
select.py    the kept channels for a FLOPs target: one global ranking, or one ratio for every group
stages.py    search (scores and kept channels) and extract (the channels cut out with their weights)

Both keep weights: their distill runs (l1-kd, fpgm-ce, …) fine-tune the extracted network.
How they differ from their papers is in README ("L1-norm and FPGM").
"""

import ml_collections

from tas_jax import validation
from tas_jax.methods.contract import Method
from tas_jax.methods.oneshot import stages

L1_RANKINGS = ("global", "uniform")


def l1_defaults() -> ml_collections.ConfigDict:
  s = ml_collections.ConfigDict()
  s.ranking = "global"   # global: one ranking of every channel by its L1 norm over its group's
                         # mean; uniform: one pruning ratio for every group, its lowest-L1
                         # channels first (the paper's per-layer form)
  return s


def l1_validate(c: ml_collections.ConfigDict) -> None:
  if c.l1.ranking not in L1_RANKINGS:
    validation.fail("l1.ranking", c.l1.ranking, f"allowed: {', '.join(L1_RANKINGS)}")


L1 = Method(
    name="l1",
    label="L1-norm (fine-tuned)",
    description="L1-norm filter pruning (Li et al., ICLR 2017): the channels whose filters "
                "have the smallest L1 norm removed from the trained teacher until the FLOPs target",
    search=stages.make_search("l1"),
    extract=stages.make_extract("l1", "L1-norm"),
    section="l1",
    defaults=l1_defaults,
    validate=l1_validate,
    keeps_weights=True,
    families=("resnet", "repvgg"))

FPGM = Method(
    name="fpgm",
    label="FPGM (fine-tuned)",
    description="Filter Pruning via Geometric Median (He et al., CVPR 2019): in every group the "
                "filters nearest the geometric median removed first, one ratio for all groups",
    search=stages.make_search("fpgm"),
    extract=stages.make_extract("fpgm", "FPGM"),
    keeps_weights=True,
    families=("resnet", "repvgg"))
