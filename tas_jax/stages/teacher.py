"""Stage `teacher`: train the unpruned network of the config (spec §6).

Writes `WORKDIR/teacher/`: Orbax checkpoints (the distill stage reads the weights from them),
TensorBoard events, `arch.json` and `summary.json`. The training itself is
`tas_jax.training.supervised.train_network`, the same code the pruned network is trained with.
"""

from __future__ import annotations

import ml_collections

from tas_jax import config as config_lib, workdir as layout
from tas_jax.training import supervised


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs (or resumes, or finds finished) the teacher stage; returns its summary."""
  config_lib.validate(config)
  mesh, ds = supervised.load_inputs(config, config.teacher.eval_batch_size)
  arch = config_lib.architecture(config, ds.num_classes, ds.image_size, ds.channels)
  return supervised.train_network(config, config.teacher, "teacher", "teacher",
                                  layout.teacher_dir(workdir), mesh, ds, arch)
