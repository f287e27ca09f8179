"""TAS's config section, `config.search`: its defaults (the released TAS CIFAR recipe) and checks.

The FLOPs target is shared by every method: `config.target.flop_ratio` and `config.target.tolerance`
(the band's width t).
"""

from __future__ import annotations

import ml_collections

from tas_jax import validation
from tas_jax.methods.tas import cost
from tas_jax.models import networks, user

VARIANTS = ("tas", "width", "depth")
INITS = ("scratch", "teacher")
TAU_SCHEDULES = ("cosine", "linear")


def defaults() -> ml_collections.ConfigDict:
  s = ml_collections.ConfigDict()
  s.variant = "tas"         # tas (width + depth) | width | depth
  s.band = "released"       # released: [R - t·F_max, R]; symmetric: [(1-t)R, (1+t)R]
  s.in_band = "free"        # free (released): no cost while F(A) is in the band; centred (a
                            # deviation): E[F] above the band's centre is pushed down
  s.cost_weight = 2.0       # λ
  s.expected_flops = "released"  # released: the released TAS code's chain form of E[F]; exact:
                                 # the expectation of F(A) over independent choices (a deviation)
  s.branch_flops = "exact"  # the argmax network's cost that picks the cost loss's sign: exact
                            # (a deviation: the network extraction builds); released: the
                            # released code's get_flop('genotype') estimate (docs/concepts/tas.md)
  s.epochs = 600            # search epochs (each iteration: a weight and an arch step)
  s.batch_size = 256        # per step; each iteration takes one batch of each half
  s.tau_schedule = "cosine"   # cosine (released) | linear (paper: tau_max = 10)
  s.tau_max = 5.0           # Gumbel-softmax temperature at the first epoch
  s.tau_min = 0.1           # ... and at the last
  s.lr = 0.1                # weights: SGD Nesterov, cosine per epoch
  s.warmup_epochs = 0       # the first epochs of search.epochs: linear warm-up per iteration
  s.momentum = 0.9          # of the weights' SGD
  s.nesterov = True         # of the weights' SGD
  s.weight_decay = 5e-4     # of the weights (coupled L2)
  s.arch_lr = 1e-3          # architecture: Adam, coupled L2
  s.arch_lr_schedule = "constant"  # constant (released) | cosine: to 0 over the search
  s.arch_cooldown_epochs = 0  # with "constant": cosine to 0 over these last epochs (a
                              # deviation: the argmax settles at the end of a short search)
  s.arch_beta1 = 0.5        # Adam of the architecture logits
  s.arch_beta2 = 0.999      # Adam of the architecture logits
  s.arch_weight_decay = 1e-3  # coupled L2 on the architecture logits (released)
  s.init = "scratch"        # scratch (released) | teacher: supernet weights from WORKDIR/teacher
  s.evaluate_every_epoch = True   # test accuracy of the argmax network (batch statistics)
  s.eval_batch_size = 500   # evaluation only: does not change a result
  return s


def validate(c: ml_collections.ConfigDict) -> None:
  s, fail, positive = c.search, validation.fail, validation.positive
  if s.variant not in VARIANTS:
    fail("search.variant", s.variant, f"allowed: {', '.join(VARIANTS)}")
  if s.variant == "depth" and networks.family_of(c.model) == user.FAMILY:
    fail("search.variant", s.variant, "a model given by model.module has no blocks TAS may drop: "
         "its search is in width only (variant tas or width)")
  if s.band not in cost.BANDS:
    fail("search.band", s.band, f"allowed: {', '.join(cost.BANDS)}")
  if s.in_band not in cost.IN_BAND:
    fail("search.in_band", s.in_band, f"allowed: {', '.join(cost.IN_BAND)} (expected and capped "
         "were retired: RESULTS.md shows they did not settle the search)")
  if s.expected_flops not in cost.EXPECTED_FORMS:
    fail("search.expected_flops", s.expected_flops, f"allowed: {', '.join(cost.EXPECTED_FORMS)}")
  if s.branch_flops not in cost.BRANCH_FORMS:
    fail("search.branch_flops", s.branch_flops, f"allowed: {', '.join(cost.BRANCH_FORMS)}")
  if s.arch_lr_schedule not in ("constant", "cosine"):
    fail("search.arch_lr_schedule", s.arch_lr_schedule, "allowed: constant, cosine")
  if not isinstance(s.arch_cooldown_epochs, int) or not 0 <= s.arch_cooldown_epochs < s.epochs:
    fail("search.arch_cooldown_epochs", s.arch_cooldown_epochs,
         f"must be an integer in [0, search.epochs={s.epochs})")
  if s.arch_cooldown_epochs and s.arch_lr_schedule != "constant":
    fail("search.arch_cooldown_epochs", s.arch_cooldown_epochs,
         "applies to search.arch_lr_schedule=constant only (cosine already decays to 0)")
  if s.init not in INITS:
    fail("search.init", s.init, f"allowed: {', '.join(INITS)}")
  if s.tau_schedule not in TAU_SCHEDULES:
    fail("search.tau_schedule", s.tau_schedule, f"allowed: {', '.join(TAU_SCHEDULES)}")
  for field in ("tau_max", "tau_min", "lr", "arch_lr"):
    positive(c, f"search.{field}")
  if s.tau_min > s.tau_max:
    fail("search.tau_min", s.tau_min, f"must not exceed search.tau_max={s.tau_max}")
  for field in ("cost_weight", "weight_decay", "arch_weight_decay"):
    positive(c, f"search.{field}", zero_ok=True)
  for field in ("epochs", "batch_size", "eval_batch_size"):
    positive(c, f"search.{field}", integer=True)
  positive(c, "search.warmup_epochs", integer=True, zero_ok=True)
  if s.warmup_epochs >= s.epochs:
    fail("search.warmup_epochs", s.warmup_epochs, f"must be below search.epochs={s.epochs}")
  for field in ("momentum", "arch_beta1", "arch_beta2"):
    validation.fraction(c, f"search.{field}")


def imagenet(c: ml_collections.ConfigDict) -> None:
  """TAS in the ImageNet recipe (Dong & Yang 2019, as released): 120 search epochs (5 of
  warm-up), weight decay 1e-4, evaluation batches of 250."""
  c.search.epochs, c.search.warmup_epochs = 120, 5
  c.search.weight_decay = 1e-4
  c.search.eval_batch_size = 250
