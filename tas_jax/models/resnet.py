"""ResNets built from an `Architecture` (Dong & Yang 2019's networks, as released): one module per
network family.

One module, `ResNet`, for both families: the stem, pool, strides and shortcuts come from
`tas_jax.models.topology` (CIFAR: 3x3 stem, pooled projection without BN; ImageNet: 7x7 stem +
max-pool, projections with BN, zero-initialised last BN of each block). Every width comes from the
architecture, so the same code builds the unpruned teacher, the network extracted from a search and
any user-written description. Layer names are the topology's (`stage2.block1.conv_a`, ...), which
the FLOP counter shares, so a test compares them layer by layer.

`gates` (a call argument) multiplies named activations by a per-channel vector, right after their
ReLU: "stem", "stageS.blockB.conv_a" (and "conv_b" in a bottleneck) inside a block, and
"stageS.blockB" for a block's output. A pruning method that masks channels (PaS) passes 0/1
vectors there; without gates the network is the plain one.

`bn_axis_name` is for explicit per-device code (the `pmap` mode): BatchNorm then averages its batch
statistics over that mesh axis so that they cover the global batch, as they do under plain `jit`.
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from tas_jax.models import conv as conv_ops, scan, topology
from tas_jax.models.arch import Architecture

# kaiming-normal, fan_out, gain sqrt(2) (PyTorch's kaiming_normal_(mode='fan_out',
# nonlinearity='relu'))
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
linear_init = nn.initializers.normal(stddev=0.01)


def conv(width: int, kernel: int, stride: int, dtype) -> nn.Conv:
  """The k x k conv of every network family and the supernet: no bias, padded by k//2 on each
  side, so that a teacher's kernel, a supernet's and an extracted network's are laid out alike.
  Made inside a module's compact method, whose child "conv" it becomes."""
  p = kernel // 2
  return nn.Conv(
    width,
    (kernel, kernel),
    (stride, stride),
    padding=((p, p), (p, p)),
    use_bias=False,
    kernel_init=conv_init,
    dtype=dtype,
    conv_general_dilated=conv_ops.for_flax(),
    name="conv",
  )


def classify(x: jax.Array, num_classes: int) -> jax.Array:
  """Global average pooling, then the classifier ("classifier"), both in float32 whatever the
  network's dtype. Called inside a module's compact method."""
  features = jnp.mean(x, axis=(1, 2)).astype(jnp.float32)
  return nn.Dense(
    num_classes,
    kernel_init=linear_init,
    bias_init=nn.initializers.zeros,
    dtype=jnp.float32,
    name="classifier",
  )(features)


class ConvBN(nn.Module):
  """k x k conv (no bias, padded by k//2 on each side) with an optional BatchNorm."""

  width: int
  kernel: int = 3
  stride: int = 1
  use_bn: bool = True
  zero_init_bn: bool = False
  bn_axis_name: Optional[str] = None
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    x = conv(self.width, self.kernel, self.stride, self.dtype)(x)
    if self.use_bn:
      x = nn.BatchNorm(
        use_running_average=not train,
        momentum=0.9,
        epsilon=1e-5,
        scale_init=nn.initializers.zeros if self.zero_init_bn else nn.initializers.ones,
        axis_name=self.bn_axis_name,
        dtype=self.dtype,
        name="bn",
      )(x)
    return x


class Shortcut(nn.Module):
  """Projection shortcut: 2x2 average pool (TAS's stride-2 form), 1x1 conv (with stride 2 in
  torchvision's form), BN where asked."""

  width: int
  pool: bool
  use_bn: bool
  stride: int = 1
  bn_axis_name: Optional[str] = None
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    if self.pool:
      x = nn.avg_pool(x, (2, 2), (2, 2))
    return ConvBN(
      self.width,
      1,
      self.stride,
      self.use_bn,
      bn_axis_name=self.bn_axis_name,
      dtype=self.dtype,
      name="proj",
    )(x, train)


class Block(nn.Module):
  """A post-activation residual block: ReLU(main path(x) + shortcut(x)), as `layout` describes it
  (kernels, strides, shortcut and its BN from `tas_jax.models.topology`). ReLU after every BN of
  the main path but the last."""

  layout: topology.Block
  zero_init_last_bn: bool
  bn_axis_name: Optional[str] = None
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool, gates: Optional[dict] = None):
    y, last = x, len(self.layout.convs) - 1
    for i, c in enumerate(self.layout.convs):
      y = ConvBN(
        c.out_width,
        c.kernel,
        c.stride,
        zero_init_bn=self.zero_init_last_bn and i == last,
        bn_axis_name=self.bn_axis_name,
        dtype=self.dtype,
        name=f"conv_{'abc'[i]}",
      )(y, train)
      if i < last:
        y = gate(nn.relu(y), gates, c.name)
    p = self.layout.projection
    residual = (
      x
      if p is None
      else Shortcut(
        p.out_width,
        pool=self.layout.shortcut == "pool_conv",
        use_bn=p.has_bn,
        stride=p.stride,
        bn_axis_name=self.bn_axis_name,
        dtype=self.dtype,
        name="shortcut",
      )(x, train)
    )
    return gate(nn.relu(y + residual), gates, self.layout.name)


def shape_signature(b: topology.Block):
  """What fixes a block's shapes and function, its names aside: blocks alike in it can be
  scanned."""
  shape = lambda c: (
    None if c is None else (c.kernel, c.stride, c.in_width, c.out_width, c.in_size, c.has_bn)
  )
  return (
    b.stride,
    b.in_width,
    b.in_size,
    b.shortcut,
    shape(b.projection),
    tuple(map(shape, b.convs)),
  )


def _gate_sites(b: topology.Block) -> list[str]:
  return [c.name for c in b.convs[:-1]] + [b.name]


def _stacked_gates(run: list[topology.Block], gates: Optional[dict]):
  """The gates of a run's blocks stacked per site of its first block (None without gates;
  False when only some blocks have a site: the run then stays unrolled)."""
  if not gates:
    return None
  out = {}
  for j, site in enumerate(_gate_sites(run[0])):
    present = [_gate_sites(b)[j] in gates for b in run]
    if all(present):
      out[site] = jnp.stack([gates[_gate_sites(b)[j]] for b in run])
    elif any(present):
      return False
  return out or None


def gate(x, gates: Optional[dict], site: str):
  """x times the channel vector `gates[site]`, where there is one."""
  if gates is None or site not in gates:
    return x
  return x * gates[site].astype(x.dtype)


def variable_scope(conv_name: str) -> tuple[str, ...]:
  """Where a topology conv's variables live in this model's trees: "stem" -> ("stem",),
  "stage1.block2.conv_a" -> ("stage1.block2", "conv_a"), "stage2.block1.shortcut" ->
  ("stage2.block1", "shortcut", "proj"); each holds {"conv": {"kernel"}, "bn": {...}}."""
  if conv_name == "stem":
    return ("stem",)
  block, part = conv_name.rsplit(".", 1)
  return (block, part, "proj") if part == "shortcut" else (block, part)


class ResNet(nn.Module):
  """Stem, stages, head of any CIFAR or ImageNet ResNet, basic or bottleneck, at any widths and
  kept depths: the topology of `arch` says which stem, pool and shortcuts."""

  arch: Architecture
  bn_axis_name: Optional[str] = None
  dtype: jnp.dtype = jnp.float32
  scan_blocks: bool = False  # runs of equal blocks as one lax.scan (tas_jax.models.scan)

  @nn.compact
  def __call__(self, x, train: bool = False, gates: Optional[dict] = None):
    topo = topology.of(self.arch)
    stem = topo.stem
    x = nn.relu(
      ConvBN(
        stem.out_width,
        stem.kernel,
        stem.stride,
        bn_axis_name=self.bn_axis_name,
        dtype=self.dtype,
        name="stem",
      )(x.astype(self.dtype), train)
    )
    x = gate(x, gates, "stem")
    if topo.stem_pool:
      x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    for run in scan.runs(topo.blocks, shape_signature):
      stacked_gates = _stacked_gates(run, gates)
      if not self.scan_blocks or len(run) < 2 or self.is_initializing() or stacked_gates is False:
        for b in run:
          x = Block(b, topo.zero_init_last_bn, self.bn_axis_name, self.dtype, name=b.name)(
            x, train, gates
          )
        continue
      mutable = train and self.is_mutable_collection("batch_stats")
      block = Block(run[0], topo.zero_init_last_bn, self.bn_axis_name, self.dtype, parent=None)
      x, _, stats = scan.stacked_apply(
        block,
        [{col: tree[b.name] for col, tree in self.variables.items()} for b in run],
        x,
        stacked_gates,
        mutable,
        lambda m, x, g: (m(x, train, g), None),
      )
      for b, s in zip(run, stats or ()):
        self.put_variable("batch_stats", b.name, s)
    return classify(x, self.arch.num_classes)


def build(
  arch: Architecture,
  bn_axis_name: Optional[str] = None,
  dtype: jnp.dtype = jnp.float32,
  scan_blocks: bool = False,
) -> nn.Module:
  """The Flax module of `arch`."""
  return ResNet(arch, bn_axis_name=bn_axis_name, dtype=dtype, scan_blocks=scan_blocks)


def dummy_input(arch: Architecture, batch: int = 1) -> jax.ShapeDtypeStruct:
  """The NHWC input shape the network expects."""
  return jnp.zeros((batch, arch.input_size, arch.input_size, arch.input_channels), jnp.float32)


def inherit_first_channels(student, teacher):
  """The paper's "w/ Init": every student array takes the leading block of the teacher's array at
  the same path (the first k filters, the first k input channels, BN vectors, classifier rows).

  Works for `params` and `batch_stats` trees of two networks of one family: layer names are shared
  (a dropped block is simply absent from the student). A student array without a counterpart of at
  least its size (a projection the pruning introduced) keeps its own initial value. Returns
  (tree, number of arrays inherited).
  """
  flat_teacher = dict(jax.tree_util.tree_flatten_with_path(teacher)[0])
  inherited = 0

  def take(path, value):
    nonlocal inherited
    source = flat_teacher.get(path)
    if (
      source is None
      or source.ndim != value.ndim
      or any(s < v for s, v in zip(source.shape, value.shape))
    ):
      return value
    inherited += 1
    # a copy: the train step donates the student's buffers, the teacher's must survive
    return jnp.array(source[tuple(slice(0, n) for n in value.shape)], dtype=value.dtype, copy=True)

  tree = jax.tree_util.tree_map_with_path(take, student)
  return tree, inherited
