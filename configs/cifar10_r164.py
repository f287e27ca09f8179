"""CIFAR-10 ResNet-164, the released TAS recipe (Dong & Yang 2019).

    python -m tas_jax.main --config=configs/cifar10_r164.py --workdir=runs/cifar10_r164 \
        --config.data.dir=/path/to/cifar10   # the official archive or TFDS data
"""

from tas_jax.config import cifar_recipe


def get_config():
  return cifar_recipe("cifar10", 164).lock()  # a misspelt field raises (with "did you mean")
