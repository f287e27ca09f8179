"""Fault injection for tests/test_multiprocess.py, loaded by Python at start-up when this folder
is on PYTHONPATH. TAS_JAX_TEST_FAULT=no_data: this process's data loading fails as if its data
folder were empty (a user error on one host of a multi-process run)."""

import os

if os.environ.get("TAS_JAX_TEST_FAULT") == "no_data":
  from tas_jax.data import datasets
  from tas_jax.training import supervised

  def _no_data(*args, **kwargs):
    raise datasets.DataNotFoundError("test fault: this process's data folder is empty")

  supervised.load_inputs = _no_data
