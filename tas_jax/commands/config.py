"""`python -m tas_jax.config [--config=FILE] [--config.FIELD=VALUE ...]`: every config field with
its value and meaning (`tas_jax.config.describe`: the comments of `tas_jax/config.py`)."""

from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from tas_jax import config as config_lib


def fields(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  c = flags.FLAGS.config if flags.FLAGS.config is not None else config_lib.base_config()
  rows = config_lib.describe(c)
  width = max(len(f"{name} = {value!r}") for name, value, _ in rows)
  for name, value, text in rows:
    print(f"{f'{name} = {value!r}':<{width}}  {text}".rstrip())


def main() -> None:
  config_flags.DEFINE_config_file("config", None, "A config file (default: the base config).")
  app.run(fields)
