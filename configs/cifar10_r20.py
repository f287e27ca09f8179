"""CIFAR-10 ResNet-20, the released TAS recipe (Dong & Yang 2019).

    python -m tas_jax.main --config=configs/cifar10_r20.py --workdir=runs/cifar10_r20 \
        --config.data.dir=/path/to/cifar10   # the official archive or TFDS data
"""

from tas_jax.config import cifar_recipe


def get_config():
  return cifar_recipe("cifar10", 20).lock()  # a misspelt field raises (with "did you mean")
