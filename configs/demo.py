"""Demo: the whole TAS pipeline on the embedded Fashion-MNIST subset, ~10 minutes on 2 CPU cores.

    python -m tas_jax.main --config=configs/demo.py --workdir=runs/demo     # teacher → … → results

teacher (ResNet-14) → TAS search at 50% FLOPs → extraction → the pruned network trained with KD →
results table. Any single stage: add --config.stage=teacher|search|extract|distill|results.
"""

from tas_jax.config import base_config


def get_config():
  c = base_config()
  c.stage = "all"
  c.data.name = "embedded"  # 5,000 train / 1,000 test real Fashion-MNIST images, in the repo
  c.model.depth = 14  # ResNet-14: two basic blocks per stage, depth choices {1, 2}
  for recipe in (c.teacher, c.distill):  # 15 epochs instead of 5 + 300
    recipe.warmup_epochs = 1
    recipe.cosine_epochs = 14
    recipe.batch_size = 128
  # Search: 30 epochs x 19 iterations instead of 600 x 98. At this budget a supernet trained from
  # scratch does not learn (random widths with CWI every step: ~37% training accuracy after 10
  # epochs, ~58% after 30) and the logits stay undecided, so the demo departs from the released
  # recipe where the budget demands it (the released recipe stays the default of every other
  # config):
  c.search.epochs = 30
  c.search.batch_size = 128
  c.search.init = "teacher"  # supernet weights from the teacher the pipeline trained first
  c.search.lr = 0.03  # fine-tuning those weights, not training from scratch
  c.search.arch_lr = 0.1  # 570 architecture steps instead of 58,800: larger Adam steps
  c.search.tau_min = 0.5  # τ 5 → 0.5: below ~0.5 the pair weights turn hard and the
  # supernet's accuracy drops faster than the logits decide
  c.search.expected_flops = "exact"  # the released chain form misprices truncated stages and
  # inserted projections by 4-7% of F_max here, as much as the band
  # PaS (--config.method=pas, or a pas-ce / pas-kd run): 10 epochs from the teacher at the released
  # lr 0.02 (released at batch 512; kept at 128: 390 steps instead of 90), the default (scaled)
  # penalty
  c.pas.epochs = 10
  c.pas.batch_size = 128
  c.pas.lr = 0.02
  # its fine-tuning: the released shape (step decay x0.1, masks frozen) over the distill runs' 15
  # epochs, the decays at the released points scaled (8 and 28 of 38 -> 3 and 11 of 15), lr
  # 0.0256 at batch 512 paired with batch 128
  c.pas.finetune_epochs = 15
  c.pas.finetune_lr = 0.0064
  c.pas.finetune_decay_epochs = (3, 11)
  c.pipeline.runs = "tas-kd"
  c.log_every_steps = 13
  return c.lock()  # a misspelt field raises (with "did you mean")
