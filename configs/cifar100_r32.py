"""CIFAR-100 ResNet-32, the released TAS recipe (Dong & Yang 2019).

    python -m tas_jax.main --config=configs/cifar100_r32.py --workdir=runs/cifar100_r32 \
        --config.data.dir=/path/to/cifar100   # the official archive or TFDS data
"""

from tas_jax.config import cifar_recipe


def get_config():
  return cifar_recipe("cifar100", 32).lock()  # a misspelt field raises (with "did you mean")
