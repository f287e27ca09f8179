"""Plain reference implementations the tests compare tas_jax against (test-only code)."""

import numpy as np


def cwi_numpy(x: np.ndarray, c_out: int) -> np.ndarray:
  """CWI written as the definition's loop: output channel j is the mean of input channels
  floor(j·C/C') … ceil((j+1)·C/C')−1."""
  c_in = x.shape[-1]
  out = np.zeros(x.shape[:-1] + (c_out,), np.float64)
  for j in range(c_out):
    lo, hi = (j * c_in) // c_out, -(-((j + 1) * c_in) // c_out)
    out[..., j] = x[..., lo:hi].mean(-1)
  return out
