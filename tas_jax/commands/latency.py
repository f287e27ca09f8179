"""`python -m tas_jax.latency --config=configs/NAME.py --workdir=W`: build (or read) the latency
table of the config's network in W/latency/ and print what it says (`tas_jax.latency.reading`)."""

from __future__ import annotations

from absl import app

from tas_jax import config as config_lib, console, latency
from tas_jax.commands import fail, guarded, main as main_command
from tas_jax.training import supervised


def table_command(argv) -> None:
  flags = main_command.FLAGS
  if len(argv) > 1:
    fail(f"unexpected arguments: {' '.join(argv[1:])} (flags are --name=value)")
  if flags.config is None or flags.workdir is None:
    fail("both --config=configs/NAME.py and --workdir=DIR are needed")
  console.setup()
  config = flags.config

  def network():
    config_lib.validate(config)
    _, ds = supervised.load_inputs(config, 1)
    return supervised.architecture(config, ds.num_classes, ds.image_size, ds.channels)

  base = guarded(network)
  table = latency.build(base, flags.workdir, latency.batch_size(config), config.latency.repeats)
  print(
    "\n".join(latency.reading(table, base, latency.cache_path(flags.workdir, table.batch_size)))
  )


def main() -> None:
  app.run(table_command, flags_parser=main_command.parse_flags)
