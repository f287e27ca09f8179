"""`torchvision.models` where `import torchvision` fails: the ResNet definitions a user saves
weights from, on the PyTorch that `launch/setup.sh --tests` installs.

    from tas_jax.interop.torchvision import models
    torch.save(models().resnet18(weights="IMAGENET1K_V1").state_dict(), "resnet18.pth")

On Linux x86_64 the torch build that installs quickly is the CPU one, but PyPI's torchvision wheel
is built against CUDA torch: its C extension (the detection ops, nms, roi_align) cannot load
beside the CPU build, and torchvision's package `__init__` stops at registering those ops
(`RuntimeError: operator torchvision::nms does not exist`). The model definitions themselves are
pure Python. Where the plain import fails for that reason, this module imports
`torchvision.models` without running torchvision's `__init__` (a package object pointing at the
installed folder). Elsewhere, install a matching pair instead (`pip install torch torchvision`).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

from tas_jax.interop import require


def models():
  """The `torchvision.models` module (torchvision's C extension not needed)."""
  require("torch", "torchvision's models")
  try:
    return importlib.import_module("torchvision.models")
  except (RuntimeError, ImportError, OSError) as e:
    spec = importlib.util.find_spec("torchvision")
    if spec is None:
      require("torchvision", "torchvision's models")  # one line: what to install
      raise
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
      del sys.modules[name]  # the half-imported package of the failed attempt
    package = types.ModuleType("torchvision")
    package.__path__ = list(spec.submodule_search_locations)
    package.__spec__ = spec
    package.__file__ = spec.origin
    package.__doc__ = f"torchvision without its C extension ({str(e).splitlines()[0]})"
    sys.modules["torchvision"] = package
    return importlib.import_module("torchvision.models")
