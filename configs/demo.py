"""Demo: the whole TAS pipeline on the embedded Fashion-MNIST subset, ~10 minutes on 2 CPU cores.

    python -m tas_jax.main --config=configs/demo.py --workdir=runs/demo     # teacher → … → results

teacher (ResNet-14) → TAS search at 50% FLOPs → extraction → the pruned network trained with KD →
results table. Any single stage: add --config.stage=teacher|search|extract|distill|results.
"""

from tas_jax.config import base_config


def get_config():
  c = base_config()
  c.stage = "all"
  c.data.name = "embedded"        # 5,000 train / 1,000 test real Fashion-MNIST images, in the repo
  c.model.depth = 14              # ResNet-14: two basic blocks per stage, depth choices {1, 2}
  for recipe in (c.teacher, c.distill):   # 15 epochs instead of 5 + 300
    recipe.warmup_epochs = 1
    recipe.cosine_epochs = 14
    recipe.batch_size = 128
  # Search: a short budget (10 epochs x 19 iterations instead of 600 x 98), so the architecture
  # optimiser takes larger steps than the recipe's 1e-3 to move the logits in time.
  c.search.epochs = 10
  c.search.batch_size = 128
  c.search.arch_lr = 0.01
  c.pipeline.runs = "tas-kd"
  c.log_every_steps = 13
  return c
