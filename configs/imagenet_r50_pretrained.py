"""ImageNet ResNet-50 pruned with PaS from torchvision's pretrained weights (Li et al., IJCAI 2022:
PaS starts from a pretrained ResNet-50), at 50% of its FLOPs.

    python -m tas_jax.convert torchvision --arch=resnet50_tv \
        --weights=resnet50-0676ba61.pth --workdir=runs/r50_pas      # the teacher: no training
    python -m tas_jax.main --config=configs/imagenet_r50_pretrained.py --workdir=runs/r50_pas \
        --config.data.dir=/data/imagenet --config.stage=all

torchvision's weights (IMAGENET1K_V1, 76.13% top-1) come from
https://download.pytorch.org/models/resnet50-0676ba61.pth (or torchvision's cache after
`torchvision.models.resnet50(weights="IMAGENET1K_V1")`). The teacher stage evaluates them on
`data.dir`'s validation set; then the PaS search (pas.* fields, from the teacher), extraction and
the fine-tuning run `pas-ce` (the released PaS fine-tunes without KD; `pas-kd` adds it). The network
is torchvision's topology (`resnet50_tv`: stride-2 1x1 projections), not TAS's pooled one.
"""

from tas_jax.config import imagenet_recipe


def get_config():
  c = imagenet_recipe(50)
  c.model.arch = "resnet50_tv"
  c.method = "pas"
  c.target.flop_ratio = 0.5
  c.pipeline.runs = "pas-ce"
  return c.lock()  # a misspelt field raises (with "did you mean")
