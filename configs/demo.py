"""Demo: the embedded Fashion-MNIST subset, a small CIFAR-style ResNet, a few minutes on 2 CPU cores.

    python -m tas_jax.main --config=configs/demo.py --workdir=runs/demo
"""

from tas_jax.config import base_config


def get_config():
  c = base_config()
  c.data.name = "embedded"        # 5,000 train / 1,000 test real Fashion-MNIST images, in the repo
  c.model.depth = 8               # ResNet-8: one basic block per stage
  c.teacher.warmup_epochs = 1
  c.teacher.cosine_epochs = 14
  c.teacher.batch_size = 128
  c.log_every_steps = 13
  return c
