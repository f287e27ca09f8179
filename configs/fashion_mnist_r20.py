"""Fashion-MNIST (full, 60k/10k) ResNet-20 with the CIFAR recipe; images zero-padded 28 -> 32.

`apt-get install dataset-fashion-mnist` puts the data where the loader looks by default:

    python -m tas_jax.main --config=configs/fashion_mnist_r20.py --workdir=runs/fmnist_r20

Results on it are Fashion-MNIST results, not CIFAR results.
"""

from tas_jax.config import cifar_recipe


def get_config():
  c = cifar_recipe("fashion_mnist", 20)
  c.data.image_size = 32  # CIFAR's input shape, so FLOPs match the CIFAR table
  return c.lock()  # a misspelt field raises (with "did you mean")
