"""`python -m tas_jax.convert SOURCE --arch=NAME --weights=FILE.pth --workdir=W`: a pretrained
PyTorch network as the teacher of a workdir.

    python -m tas_jax.convert torchvision --arch=resnet50_tv --weights=resnet50-11ad3fa6.pth \\
        --workdir=W
    python -m tas_jax.convert repvgg --arch=repvgg_a0 --weights=RepVGG-A0-train.pth --workdir=W

SOURCE names the checkpoint's layout: `torchvision` (a torchvision ResNet's state dict, for the
`resnet18_tv` / `resnet50_tv` topology or an architecture JSON with `"downsample": "strided_conv"`)
or `repvgg` (the released RepVGG code's training-form state dict). The classifier's width is read
from the file, so a network fine-tuned to other classes converts too. `flax` takes a user's own
Flax model's variables (.msgpack or .npz) for `--arch=package.module:Class` (`--kwargs`,
`--input_size`, `--input_channels`): checked against the class's shapes, no PyTorch involved.

Writes W/teacher/ as the teacher stage would: arch.json, an Orbax checkpoint of the weights and
BN statistics, `imported.json` (file, SHA-256, the conversion check) and the stage record. The
next `--config.stage=teacher` (or the first step of `all`) evaluates it on the config's test set
instead of training it, and every later stage reads it as a trained teacher: `all` goes on with
the search. Before writing, the converted network and the checkpoint's own PyTorch network are run
on the same random batch; their largest logit difference is printed and kept in imported.json.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

from tas_jax import console

console.quiet_environment()

import numpy as np  # noqa: E402

from tas_jax import errors, workdir as layout  # noqa: E402
from tas_jax.interop import require, torch_layout  # noqa: E402
from tas_jax.models import networks, repvgg  # noqa: E402

SOURCES = {
  "torchvision": "a torchvision ResNet state dict",
  "repvgg": "a released RepVGG training-form state dict",
  "flax": "a Flax model's variables (.msgpack from flax.serialization, or .npz keyed "
  "'params/Conv_0/kernel'), for --arch=package.module:Class",
}


def sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def read_state_dict(path: str) -> dict:
  """{key: float32 numpy array} of a PyTorch checkpoint file (tensors only, no code run)."""
  torch = require("torch", "reading a PyTorch checkpoint")
  if not os.path.isfile(path):
    raise errors.ConfigError(f"--weights={path}: no such file")
  try:
    state = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # noqa: BLE001 — any unreadable file: one line
    raise errors.ConfigError(
      f"--weights={path}: not a PyTorch checkpoint ({str(e).splitlines()[0][:160]})"
    ) from None
  state = torch_layout.strip_wrappers(state)
  return {k: v.float().numpy() for k, v in state.items() if hasattr(v, "numpy")}


def architecture(source: str, name: str, state: dict, input_size: int):
  """The tas_jax architecture the checkpoint fills: `name`, with the classifier's width from the
  file and the input side asked for."""
  a = networks.resolve(name)
  is_repvgg = isinstance(a, repvgg.RepVGGArch)
  if (source == "repvgg") != is_repvgg:
    raise errors.ConfigError(
      f"--arch={name} is {'a RepVGG' if is_repvgg else 'a ResNet'}; "
      f"SOURCE {source} needs "
      f"{'repvgg_a0 or repvgg_b1' if source == 'repvgg' else 'resnet18_tv or resnet50_tv'}"
    )
  if not is_repvgg and a.downsample != "strided_conv":
    raise errors.ConfigError(
      f"--arch={name} downsamples with TAS's average pool; torchvision's "
      "ResNets need the strided form: resnet18_tv, resnet50_tv, or an "
      'architecture JSON with "downsample": "strided_conv"'
    )
  if is_repvgg and any("rbr_reparam" in k for k in state):
    raise errors.ConfigError(
      "--weights holds a RepVGG in deploy form (rbr_reparam); convert its "
      "training-form checkpoint (e.g. RepVGG-A0-train.pth)"
    )
  head = "linear.weight" if is_repvgg else "fc.weight"
  if head not in state:
    raise torch_layout.WeightsError(f"--weights has no {head}: not {SOURCES[source]}")
  return dataclasses.replace(
    a, num_classes=int(state[head].shape[0]), input_size=input_size or a.input_size
  )


def check_against_torch(a, state: dict, variables: dict, batch: int = 2) -> float:
  """Largest |logit difference| between the converted network and the checkpoint loaded into
  tas_jax's PyTorch form of `a` (same names as the source), on one random batch."""
  import jax

  torch = require("torch", "checking a conversion")
  from tas_jax.interop import torch_net

  reference = torch_net.module(a)
  reference.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=False)
  x = np.random.default_rng(0).standard_normal(
    (batch, a.input_size, a.input_size, a.input_channels), np.float32
  )
  ours = jax.jit(lambda v, x: networks.build(a).apply(v, x, train=False))(variables, x)
  with torch.no_grad():
    theirs = reference(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  return float(np.max(np.abs(np.asarray(ours) - theirs)))


def read_flax_variables(path: str) -> dict:
  """{"params": ..., "batch_stats"?: ...} of a .msgpack (flax.serialization) or .npz file."""
  if not os.path.isfile(path):
    raise errors.ConfigError(f"--weights={path}: no such file")
  if path.endswith(".npz"):
    tree: dict = {}
    with np.load(path) as f:
      for key in f.files:
        *parents, leaf = key.split("/")
        node = tree
        for p in parents:
          node = node.setdefault(p, {})
        node[leaf] = np.asarray(f[key], np.float32)
  else:
    from flax import serialization

    try:
      with open(path, "rb") as f:
        tree = serialization.msgpack_restore(f.read())
    except Exception as e:  # noqa: BLE001 — any unreadable file: one line
      raise errors.ConfigError(f"--weights={path}: not a Flax msgpack file ({e})") from None
  return tree if "params" in tree else {"params": tree}


def flax_network(name: str, kwargs: str, variables: dict, input_size: int, channels: int):
  """The `UserNetwork` of a user's class whose variables these are (classes from its output),
  checked against the module's own variable shapes."""
  import jax

  from tas_jax.models import user

  if not input_size:
    raise errors.ConfigError("SOURCE flax needs --input_size (the image side the model takes)")
  kwargs = json.dumps(json.loads(kwargs or "{}"), sort_keys=True)
  module = user.instantiate(user.UserNetwork(name, kwargs, 1, input_size, channels))
  x = np.zeros((1, input_size, input_size, channels), np.float32)
  expected = jax.eval_shape(lambda: module.init(jax.random.key(0), x, train=False))
  want = {p: v.shape for p, v in jax.tree_util.tree_flatten_with_path(expected)[0]}
  got = {p: np.shape(v) for p, v in jax.tree_util.tree_flatten_with_path(variables)[0]}
  if want != got:
    diff = sorted(set(want.items()) ^ set(got.items()), key=str)[:3]
    raise errors.ConfigError(
      f"--weights do not fit {name} at {input_size}x{input_size}x{channels}: first differences "
      f"(path, shape) {[(jax.tree_util.keystr(p), s) for p, s in diff]}"
    )
  logits = jax.eval_shape(lambda v: module.apply(v, x, train=False), variables)
  class_name = name.split(":")[-1].lower()
  return user.UserNetwork(
    name, kwargs, int(logits.shape[-1]), input_size, channels, name=class_name
  )


def convert(
  source: str,
  name: str,
  weights: str,
  workdir: str,
  input_size: int = 0,
  kwargs: str = "{}",
  input_channels: int = 3,
) -> dict:
  """Writes WORKDIR/teacher from a PyTorch checkpoint (or a Flax model's variables); returns
  what imported.json records."""
  if source not in SOURCES:
    raise errors.ConfigError(f"SOURCE={source!r}: allowed: {', '.join(SOURCES)}")
  teacher_dir = layout.teacher_dir(workdir)
  if os.path.isdir(teacher_dir) and os.listdir(teacher_dir):
    raise errors.ConfigError(
      f"{teacher_dir} already holds a teacher: choose a new --workdir, or "
      "delete that folder to replace it"
    )
  if source == "flax":
    variables = read_flax_variables(weights)
    a = flax_network(name, kwargs, variables, input_size, input_channels)
    return _write_teacher(workdir, a, variables, source, weights, None)
  state = read_state_dict(weights)
  a = architecture(source, name, state, input_size)
  variables = torch_layout.from_state_dict(a, state, source=f"--weights={weights}")
  error = check_against_torch(a, state, variables)
  return _write_teacher(workdir, a, variables, source, weights, error)


def _write_teacher(workdir: str, a, variables: dict, source: str, weights: str, error) -> dict:
  teacher_dir = layout.teacher_dir(workdir)
  record = {
    "source": source,
    "weights": os.path.abspath(weights),
    "sha256": sha256(weights),
    "architecture": a.name,
    "num_classes": a.num_classes,
    "input_size": a.input_size,
    "max_abs_logit_difference": error,  # None: nothing to compare with (a Flax model's own)
  }
  from tas_jax.stages import records
  from tas_jax.training import checkpoint

  os.makedirs(teacher_dir, exist_ok=True)
  a.save(os.path.join(teacher_dir, layout.ARCH))
  checkpoint.save_variables(teacher_dir, variables, {"imported": record})
  with open(os.path.join(teacher_dir, layout.IMPORTED), "w") as f:
    json.dump(record, f, indent=2)
  records.write_imported(workdir, record)
  return record


if __name__ == "__main__":
  from tas_jax.commands import convert as command

  command.main()
