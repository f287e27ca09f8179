"""Networks in and out of tas_jax: PyTorch state dicts (torchvision, released RepVGG), PyTorch
modules, ONNX and StableHLO. PyTorch and ONNX are optional: `require` names what to install."""

from __future__ import annotations

import importlib

from tas_jax.errors import ConfigError

# module -> what to install for it (torch: the CPU build is enough and much smaller)
INSTALL = {
  "torch": "pip install torch --index-url https://download.pytorch.org/whl/cpu",
  "onnx": "pip install onnx onnxscript",
  "onnxscript": "pip install onnx onnxscript",
  "onnxruntime": "pip install onnxruntime",
}


class MissingDependencyError(ConfigError):
  """An optional package a command needs is not installed; the message is the install line."""


def require(module: str, purpose: str):
  """The imported optional `module`, or a MissingDependencyError saying what to install."""
  try:
    return importlib.import_module(module)
  except ImportError:
    raise MissingDependencyError(
      f"{purpose} needs {module}, which is not installed: "
      f"{INSTALL.get(module, f'pip install {module}')}"
    ) from None
