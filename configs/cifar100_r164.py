"""CIFAR-100 ResNet-164, the released TAS recipe (Dong & Yang 2019).

    python -m tas_jax.main --config=configs/cifar100_r164.py --workdir=runs/cifar100_r164 \
        --config.data.dir=/path/to/cifar100   # the official archive or TFDS data
"""

from tas_jax.config import cifar_recipe


def get_config():
  return cifar_recipe("cifar100", 164).lock()  # a misspelt field raises (with "did you mean")
