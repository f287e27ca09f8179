"""On-device augmentation and normalisation, traced into the jitted step.

Images stay uint8 on the device; a step gathers its batch by index, then crops, flips and normalises
it here. Every example's random numbers come from a key folded with its position in the global
batch, so the result does not depend on how the batch is spread over devices.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def normalize(images_uint8: jax.Array, mean, std) -> jax.Array:
  """uint8 NHWC -> float32, (x/255 - mean) / std per channel."""
  x = images_uint8.astype(jnp.float32) / 255.0
  return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def random_crop_flip(
  keys: jax.Array, images: jax.Array, padding: int = 4, flip: bool = True
) -> jax.Array:
  """Per example: a random crop of the original size from the image zero-padded by `padding`,
  then a random horizontal flip. `keys` holds one key per example. The raw pixels are padded with
  0 (black), as torchvision's RandomCrop does."""
  h, w, c = images.shape[1:]

  def one(key, img):
    k_off, k_flip = jax.random.split(key)
    off = jax.random.randint(k_off, (2,), 0, 2 * padding + 1)
    padded = jnp.pad(img, ((padding, padding), (padding, padding), (0, 0)))
    out = jax.lax.dynamic_slice(padded, (off[0], off[1], 0), (h, w, c))
    if flip:
      out = jnp.where(jax.random.bernoulli(k_flip), out[:, ::-1, :], out)
    return out

  return jax.vmap(one)(keys, images)


def example_keys(key: jax.Array, positions: jax.Array) -> jax.Array:
  """One key per example, from its position in the global batch: the same augmentation whatever
  the number of devices and whichever of them holds the example."""
  return jax.vmap(jax.random.fold_in, (None, 0))(key, positions)


def train_batch(keys, images_uint8, mean, std, padding: int = 4, flip: bool = True) -> jax.Array:
  """The training view of a batch: crop + flip on the raw pixels, then normalise."""
  if padding > 0 or flip:
    images_uint8 = random_crop_flip(keys, images_uint8, padding, flip)
  return normalize(images_uint8, mean, std)
