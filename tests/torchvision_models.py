"""torchvision's model code for the tests, on the PyTorch that launch/setup.sh installs.

On Linux x86_64 the torch build that installs quickly is the CPU one (190 MB), but PyPI's
torchvision wheel is built against CUDA torch: its C extension (the detection ops, nms, roi_align)
cannot load beside the CPU build, and torchvision's package __init__ then stops at registering
those ops. The model definitions themselves are pure Python. Where the plain import fails for that
reason, this module imports `torchvision.models` without running torchvision's __init__ (a package
object pointing at the installed folder), so the tests build torchvision's own ResNets — the
state-dict names and the forward pass the conversion must match — and nothing of tas_jax's.
"""

import importlib
import importlib.util
import sys
import types


def models():
  """The `torchvision.models` module."""
  try:
    return importlib.import_module("torchvision.models")
  except (RuntimeError, ImportError, OSError) as e:
    spec = importlib.util.find_spec("torchvision")
    if spec is None:
      raise
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
      del sys.modules[name]          # the half-imported package of the failed attempt
    package = types.ModuleType("torchvision")
    package.__path__ = list(spec.submodule_search_locations)
    package.__spec__ = spec
    package.__file__ = spec.origin
    package.__doc__ = f"torchvision without its C extension ({str(e).splitlines()[0]})"
    sys.modules["torchvision"] = package
    return importlib.import_module("torchvision.models")
