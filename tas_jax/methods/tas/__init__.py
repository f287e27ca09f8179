"""TAS, Transformable Architecture Search (Dong & Yang, NeurIPS 2019).

settings.py  its config section (config.search): defaults and checks
space.py     the search space: width candidates per conv, depth candidates per stage
traced.py    a user's model's search space: width candidates per traced channel group
spaces.py    either space behind the interface the stages call
gumbel.py    two-of-K Gumbel sampling of a width, soft depth weights
cwi.py       channel-wise interpolation and the fused per-conv aggregation
supernet.py  the width/depth mixture network, a pure function of weights, logits, key and τ
cost.py      E[F], F(A) and the FLOPs cost loss
search.py    the search stage: alternating weight and architecture steps
extract.py   the extract stage: the argmax architecture, its report and plots
"""

from tas_jax.methods.contract import Method
from tas_jax.methods.tas import extract, search, settings

METHOD = Method(
  name="tas",
  label="TAS",
  description="Transformable Architecture Search: differentiable width and depth search "
  "with a FLOPs cost, argmax extraction",
  search=search.search,
  extract=extract.extract,
  section="search",
  families=("resnet", "module"),
  defaults=settings.defaults,
  validate=settings.validate,
  imagenet=settings.imagenet,
  reads_teacher=lambda config: config.search.init == "teacher",
  not_defining=("eval_batch_size", "evaluate_every_epoch"),
)
