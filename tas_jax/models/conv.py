"""A 2-D convolution whose gradients are themselves NHWC/HWIO convolutions.

JAX differentiates a convolution into two more: the input gradient (a flipped kernel with input and
output features swapped) and the kernel gradient (the batch axis used as features). XLA:CPU rewrites
both into the NHWC/HWIO form its fast (Eigen) convolution needs, but only in the program's entry
computation: inside a `lax.scan` loop body the rewrite does not happen and they fall back to a
naive loop, 20-60x slower (a ResNet-20 training step: 0.7 s unrolled, 31 s scanned). This module
writes both gradients in that form itself, with explicit transposes, so a scanned block
differentiates as fast as an unrolled one. The forward is `lax.conv_general_dilated` unchanged.

`conv_general_dilated` has lax's signature so that it plugs into `flax.linen.Conv`. It covers
what the networks use (NHWC input, HWIO kernel, explicit padding, strides, no dilation, one group).
Any other call goes to `lax.conv_general_dilated` as it is.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

NHWC = ("NHWC", "HWIO", "NHWC")
_FLAX_NHWC = lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d(x, w, strides: tuple[int, int], padding: tuple[tuple[int, int], ...]):
  """NHWC x HWIO convolution with explicit (low, high) padding per spatial axis."""
  return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=NHWC)


def _forward(x, w, strides, padding):
  return conv2d(x, w, strides, padding), (x, w)


def _backward(strides, padding, residuals, g):
  x, w = residuals
  kh, kw = w.shape[:2]
  # input gradient: the output gradient, dilated by the stride, convolved with the flipped kernel
  # (input and output features swapped); the high padding makes up rows no output window reached
  pad_dx = []
  for axis, (k, s, (lo, _)) in enumerate(zip((kh, kw), strides, padding)):
    size_in, size_out = x.shape[1 + axis], g.shape[1 + axis]
    reach = (size_out - 1) * s + k - lo  # input rows up to which some window reached
    pad_dx.append((k - 1 - lo, k - 1 + size_in - reach))
  w_flipped = jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2)
  dx = lax.conv_general_dilated(
    g, w_flipped, (1, 1), pad_dx, lhs_dilation=strides, dimension_numbers=NHWC
  )
  # kernel gradient: input channels as the batch, the batch as features, the output gradient as
  # a kernel dilated by the stride; windows past the kernel's size (stride > 1) are dropped
  dw = lax.conv_general_dilated(
    x.transpose(3, 1, 2, 0),
    g.transpose(1, 2, 0, 3),
    (1, 1),
    padding,
    rhs_dilation=strides,
    dimension_numbers=NHWC,
  )
  dw = dw[:, :kh, :kw].transpose(1, 2, 0, 3)
  return dx.astype(x.dtype), dw.astype(w.dtype)


conv2d.defvjp(_forward, _backward)


def conv_general_dilated(
  lhs,
  rhs,
  window_strides,
  padding,
  lhs_dilation=None,
  rhs_dilation=None,
  dimension_numbers=None,
  feature_group_count=1,
  precision=None,
  **kw,
):
  """`lax.conv_general_dilated`, through `conv2d` where it applies (see the module docstring)."""
  simple = (
    lhs.ndim == 4
    and not isinstance(padding, str)
    and feature_group_count == 1
    and precision is None
    and not kw
    and all(d in (None, 1) for d in (lhs_dilation or ()) + (rhs_dilation or ()))
    and dimension_numbers in (_FLAX_NHWC, NHWC)
  )
  if not simple:
    return lax.conv_general_dilated(
      lhs,
      rhs,
      window_strides,
      padding,
      lhs_dilation,
      rhs_dilation,
      dimension_numbers,
      feature_group_count,
      precision=precision,
      **kw,
    )
  return conv2d(lhs, rhs, tuple(window_strides), tuple(tuple(p) for p in padding))


def for_flax():
  """The `conv_general_dilated` a `flax.linen.Conv` should use here: this module's on the CPU
  backend, where XLA needs it in loops, and Flax's default (None) on accelerators, whose
  compilers rewrite gradient convolutions everywhere."""
  return conv_general_dilated if jax.default_backend() == "cpu" else None
