"""ImageNet ResNet-50, the released TAS recipe (Dong & Yang 2019): teacher, TAS search, pruned
network with KD.

    python -m tas_jax.main --config=configs/imagenet_r50.py --workdir=runs/imagenet_r50 \
        --config.data.dir=/data/imagenet --config.stage=all

`config.data.dir` holds train/<class>/*.JPEG and val/<class>/*.JPEG, or TFDS imagenet2012 prepared
as ArrayRecord. bf16 by default (`--config.model.dtype=float32` for full precision).
"""

from tas_jax.config import imagenet_recipe


def get_config():
  return imagenet_recipe(50).lock()  # a misspelt field raises (with "did you mean")
