"""`python -m tas_jax.export --workdir=W --run=RUN --format=stablehlo|onnx|torch`: a trained network
out of tas_jax, checked against it.

RUN is `teacher` or a distill run of the results table (`tas-kd`, `pas-ce`, …). Writes
W/export/RUN/:

- `stablehlo`: `model.stablehlo`, a serialised `jax.export` of the inference function (weights
  inside, any batch size, lowered for CPU, CUDA and TPU). Loading it needs only JAX:
      from jax import export
      model = export.deserialize(open("model.stablehlo", "rb").read())
      logits = model.call(images)          # float32 NHWC, normalised as export.json says
- `torch`: `model.pt`, a PyTorch state dict in torchvision's names (ResNets; an unpruned
  `resnet18_tv`/`resnet50_tv` loads into torchvision's own model) or the released RepVGG code's,
  with `arch.json`; `tas_jax.interop.torch_net.module(arch)` is the module it fits. Also
  `model.pt2`, the module as a `torch.export` program that loads without tas_jax:
  `torch.export.load("model.pt2").module()(images_nchw)`.
- `onnx`: `model.onnx` (input `images`, NCHW, dynamic batch), made from the torch form by
  PyTorch's own exporter (`torch.onnx.export(dynamo=True)`), and checked with onnxruntime.

Every format is checked before the command returns: its logits against the tas_jax network's on
`--check_images` real test images of the run's dataset, largest difference printed and recorded
in export.json with everything a caller must reproduce: the input size and channel order (RGB),
the ÷255 scale, the mean and std, the resize/crop at evaluation, and the class names (label index
-> name; the synset folders for ImageNet). `README.md` beside the files says the same in words and
gives the three lines that load and call each format. PyTorch formats take NCHW, StableHLO NHWC
(JAX's layout), both float32 normalised by the dataset's mean and std.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from typing import Callable

from tas_jax import console

console.quiet_environment()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from tas_jax import errors, runs, workdir as layout  # noqa: E402
from tas_jax.interop import require  # noqa: E402
from tas_jax.models import networks  # noqa: E402

FORMATS = ("stablehlo", "onnx", "torch")
TOLERANCE = 1e-4  # largest |logit difference| an export may have, relative to max(1, |logits|)
PLATFORMS = ("cpu", "cuda", "tpu")

run_dir = runs.run_dir


def read_run(workdir: str, run: str):
  """(architecture, {"params", "batch_stats"} on the host, the config it was made with)."""
  a, variables, config = runs.read_run(workdir, run)
  if config is None:
    raise errors.CheckpointNotFoundError(
      f"{run_dir(workdir, run)} has no record of its data (config.json): run a stage on it first"
    )
  return a, variables, config


def check_images(config: ml_collections.ConfigDict, n: int) -> tuple[np.ndarray, dict]:
  """n real test images of the run's dataset, normalised float32 NHWC, and how they were made."""
  from tas_jax import parallel
  from tas_jax.data import augment
  from tas_jax.training import inputs

  c = ml_collections.ConfigDict(config.to_dict())
  c.num_devices = 1
  ds = inputs.load(c, parallel.make_mesh(1), n)
  images = np.asarray(augment.normalize(jnp.asarray(ds.sample_images(n)), ds.mean, ds.std))
  names = list(ds.class_names) or [str(i) for i in range(ds.num_classes)]
  return images, {
    "dataset": ds.name,
    "mean": list(ds.mean),
    "std": list(ds.std),
    "image_size": ds.image_size,
    "channels": ds.channels,
    "input": {
      "size": [ds.image_size, ds.image_size],
      "channels": ds.channels,
      "channel_order": "RGB" if ds.channels == 3 else "grey (one channel)",
      "dtype": "float32",
      "scale": "uint8 pixels divided by 255 (0..1) before the normalisation",
      "normalisation": "(x / 255 - mean) / std per channel",
      "preprocessing": ds.preprocessing,
    },
    "num_classes": ds.num_classes,
    "class_names": names,
    "class_names_are": "names" if ds.class_names else "indices (the dataset files name no classes)",
  }


LOAD_LINES = {
  "stablehlo": (
    "from jax import export",
    'model = export.deserialize(open("model.stablehlo", "rb").read())',
    "logits = model.call(images)   # float32 NHWC, batch x {s} x {s} x {c}",
  ),
  "onnx": (
    "import onnxruntime",
    'session = onnxruntime.InferenceSession("model.onnx")',
    'logits = session.run(None, {{"images": images}})[0]   # float32 NCHW, batch x {c} x {s} x {s}',
  ),
  "torch": (
    "import torch",
    'model = torch.export.load("model.pt2").module()',
    "logits = model(torch.from_numpy(images))   # float32 NCHW, batch x {c} x {s} x {s}",
  ),
}


def write_readme(out_dir: str, info: dict) -> str:
  """README.md of an export folder: what the network expects, and the three lines that load and
  call each file written so far."""
  i = info["input"]
  mean = ", ".join(f"{m:g}" for m in info["mean"])
  std = ", ".join(f"{s:g}" for s in info["std"])
  lines = [
    f"# {info['run']} ({info['architecture']}), exported by tas_jax",
    "",
    f"Trained on {info['dataset']}: {info['num_classes']} classes, "
    f"{i['size'][0]}x{i['size'][1]} {i['channel_order']} images.",
    "",
    "## Input",
    "",
    f"1. {i['preprocessing'][0].upper()}{i['preprocessing'][1:]}.",
    "2. Divide the uint8 pixels by 255.",
    f"3. Subtract the mean ({mean}) and divide by the std ({std}), per channel.",
    "",
    "## Output",
    "",
    f"Logits, batch x {info['num_classes']}; index k is `class_names[k]` in export.json "
    f"({info['class_names_are']}).",
    "",
  ]
  for fmt in FORMATS:
    if fmt in info:
      code = [line.format(s=i["size"][0], c=i["channels"]) for line in LOAD_LINES[fmt]]
      lines += [
        f"## {fmt} (`{os.path.basename(info[fmt]['path'])}`)",
        "",
        "```python",
        *code,
        "```",
        "",
      ]
  path = os.path.join(out_dir, "README.md")
  with open(path, "w") as f:
    f.write("\n".join(lines))
  return path


def jax_function(a, variables) -> Callable:
  """images (NHWC float32) -> logits: the tas_jax network in evaluation mode, float32."""
  apply = runs.apply_function(a)
  return lambda x: apply(variables, x)


def export_stablehlo(a, variables, out_dir: str) -> tuple[str, Callable]:
  """Writes model.stablehlo; returns (path, images -> logits through the deserialised export)."""
  batch = jax.export.symbolic_shape("batch")[0]
  spec = jax.ShapeDtypeStruct((batch, a.input_size, a.input_size, a.input_channels), jnp.float32)
  exported = jax.export.export(jax.jit(jax_function(a, variables)), platforms=PLATFORMS)(spec)
  path = os.path.join(out_dir, "model.stablehlo")
  with open(path, "wb") as f:
    f.write(exported.serialize())
  with open(path, "rb") as f:
    loaded = jax.export.deserialize(bytearray(f.read()))
  return path, lambda x: np.asarray(loaded.call(x))


def torch_module(a, variables):
  from tas_jax.interop import torch_net

  return torch_net.load(a, variables)


def export_torch(a, variables, out_dir: str) -> tuple[str, Callable]:
  """Writes model.pt (state dict), arch.json and model.pt2 (torch.export); returns (path of
  model.pt, images NHWC -> logits through the module rebuilt from arch.json + model.pt)."""
  torch = require("torch", "--format=torch")
  from tas_jax.interop import torch_net

  module = torch_module(a, variables)
  path = os.path.join(out_dir, "model.pt")
  torch.save(module.state_dict(), path)
  a.save(os.path.join(out_dir, layout.ARCH))
  example = torch.zeros(2, a.input_channels, a.input_size, a.input_size)
  with _quiet_torch():
    program = torch.export.export(
      module, (example,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},)
    )
    torch.export.save(program, os.path.join(out_dir, "model.pt2"))
  rebuilt = torch_net.module(networks.load(os.path.join(out_dir, layout.ARCH)))
  rebuilt.load_state_dict(torch.load(path, weights_only=True))
  return path, _nchw(torch, rebuilt)


@contextlib.contextmanager
def _quiet_torch():
  """PyTorch's exporters warn about their own internals (FutureWarning): nothing a user acts on."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    yield


def _nchw(torch, module) -> Callable:
  def call(x):
    with torch.no_grad():
      return module(torch.tensor(x.transpose(0, 3, 1, 2))).numpy()

  return call


def export_onnx(a, variables, out_dir: str) -> tuple[str, Callable]:
  """Writes model.onnx from the torch form; returns (path, images NHWC -> logits in onnxruntime)."""
  torch = require("torch", "--format=onnx (made from the PyTorch form)")
  require("onnxscript", "--format=onnx (PyTorch's exporter)")
  ort = require("onnxruntime", "checking --format=onnx")
  module = torch_module(a, variables)
  path = os.path.join(out_dir, "model.onnx")
  example = torch.zeros(2, a.input_channels, a.input_size, a.input_size)
  with _quiet_torch():
    torch.onnx.export(
      module,
      (example,),
      path,
      input_names=["images"],
      output_names=["logits"],
      dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
      dynamo=True,
      external_data=False,
      verbose=False,
    )
  session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
  return path, lambda x: session.run(
    None, {"images": np.ascontiguousarray(x.transpose(0, 3, 1, 2))}
  )[0]


EXPORTERS = {"stablehlo": export_stablehlo, "onnx": export_onnx, "torch": export_torch}


def largest_difference(reference: np.ndarray, other: np.ndarray) -> float:
  """max |a - b| / max(1, max |a|): absolute for small logits, relative for large ones."""
  return float(np.max(np.abs(reference - other)) / max(1.0, float(np.max(np.abs(reference)))))


def export(workdir: str, run: str, fmt: str, num_images: int = 8) -> dict:
  """Writes W/export/RUN/ in format `fmt`, checks it on real test images; returns export.json."""
  if fmt not in EXPORTERS:
    raise errors.ConfigError(f"--format={fmt}: allowed: {', '.join(FORMATS)}")
  a, variables, config = read_run(workdir, run)
  images, data = check_images(config, num_images)
  out_dir = os.path.join(workdir, "export", run)
  os.makedirs(out_dir, exist_ok=True)
  path, call = EXPORTERS[fmt](a, variables, out_dir)
  reference = np.asarray(jax.jit(jax_function(a, variables))(images))
  difference = largest_difference(reference, np.asarray(call(images)))
  if difference > TOLERANCE:
    raise AssertionError(
      f"{fmt} export of {run} differs from tas_jax by {difference:.2e} "
      f"(tolerance {TOLERANCE}): a bug, please report it"
    )
  info_path = os.path.join(out_dir, "export.json")
  info = json.load(open(info_path)) if os.path.exists(info_path) else {}
  info.update(
    {
      "run": run,
      "architecture": a.name,
      **data,
      "layout": {"stablehlo": "NHWC"} | {f: "NCHW" for f in ("onnx", "torch")},
      fmt: {"path": path, "checked_images": len(images), "max_logit_difference": difference},
    }
  )
  with open(info_path, "w") as f:
    json.dump(info, f, indent=2)
  write_readme(out_dir, info)
  return info


if __name__ == "__main__":
  from tas_jax.commands import export as command

  command.main()
