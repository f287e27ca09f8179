"""Checkpoints and weights on disk, in one place: the Orbax checkpoint series of a training stage
(`manager`, `restore_latest`, `save`), a partial read of its latest step (`read_checkpoint`:
the weights of a teacher, the logits of a search, never optimiser state), single trees outside a
series (`save_tree` / `restore_tree`: an extraction's kept weights), and the abstract trees
every restore needs (`abstract`, `abstract_variables`) on the host (`host_sharding`) or a mesh.
A trained network is read back by `read_variables` / `read_trained`, a workdir's teacher by
`read_teacher` (with its architecture check).
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, Optional

import jax
import orbax.checkpoint as ocp
from absl import logging

from tas_jax import workdir as layout
from tas_jax.errors import CheckpointNotFoundError, ConfigError
from tas_jax.models import networks


def host_sharding() -> jax.sharding.Sharding:
  """This process's first device: where weights read for the host (export, extraction) land."""
  return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])


def abstract(tree, sharding: Optional[jax.sharding.Sharding] = None):
  """`tree`'s arrays as ShapeDtypeStructs placed with `sharding` (default: each array's own):
  what Orbax restores into."""
  return jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(
      x.shape, x.dtype, sharding=sharding if sharding is not None else x.sharding
    ),
    tree,
  )


def manager_for(stage_dir: str, keep: int) -> ocp.CheckpointManager:
  _save_replicated_arrays_from_one_device()
  return ocp.CheckpointManager(
    layout.checkpoint_dir(stage_dir),
    options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
  )


@functools.cache  # once per process: the process count does not change
def _save_replicated_arrays_from_one_device() -> None:
  """In one process, every replica of a replicated array is local, so Orbax's replica-parallel
  saving (its default off GPU) writes the same bytes as one replica would, but first slices the
  array on every device: a slice program compiled per device and per shape, at each stage's first
  save (144 programs, about 2.5 s, for ResNet-8 on 8 devices; hundreds on an 8-GPU or TPU host).
  Several processes keep the default: there each process writes its part."""
  if jax.process_count() == 1:
    ocp.type_handlers.register_type_handler(
      jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True
    )


def restore_latest(manager: ocp.CheckpointManager, abstract_state) -> Optional[tuple[Any, dict]]:
  """(state, meta) of the latest readable checkpoint, or None when there is none.

  An interrupted save is never 'latest': Orbax finalises a step only once all of it is on disk. A
  finalised checkpoint that cannot be read (a damaged file) is skipped with a warning for the one
  before it (and removed, since the run writes that step again); when none can be read the run
  stops with one line saying what to do — never silently from scratch.
  """
  steps = sorted(manager.all_steps(), reverse=True)
  failures = []
  for step in steps:
    try:
      restored = manager.restore(
        step,
        args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
        ),
      )
    except Exception as e:  # noqa: BLE001 — any unreadable checkpoint: fall back, say so
      reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
      failures.append(f"step {step}: {reason}")
      logging.warning(
        "checkpoint at step %d in %s cannot be read (%s); trying the one before it",
        step,
        manager.directory,
        reason,
      )
      continue
    for bad in (b for b in steps if b > step):  # the run will write these steps again
      manager.delete(bad)
      logging.warning(
        "removed the unreadable checkpoint at step %d; continuing from step %d", bad, step
      )
    return restored["state"], restored["meta"]
  if failures:
    raise CheckpointNotFoundError(
      f"no readable checkpoint in {manager.directory} ({'; '.join(failures)}): delete that folder "
      "to start this stage over"
    )
  return None


def save_tree(path: str, tree) -> None:
  """A pytree of arrays as one Orbax checkpoint at `path` (replaced if it exists): the weights an
  extraction or a finished fine-tuning hands on, outside any stage's checkpoint series."""
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(os.path.abspath(path), jax.tree.map(jax.numpy.asarray, tree), force=True)


def restore_tree(path: str, abstract_tree):
  """The pytree `save_tree` wrote at `path`, restored to `abstract_tree`'s shapes and shardings."""
  with ocp.StandardCheckpointer() as checkpointer:
    return checkpointer.restore(os.path.abspath(path), abstract_tree)


def read_checkpoint(stage_dir: str, abstract_subtrees: dict, stage: str) -> tuple[dict, dict, int]:
  """(the requested subtrees of the state, the meta JSON, step) of the latest checkpoint in
  `stage_dir`, read in a fresh manager with Orbax partial restore: a later stage reads only what
  it needs (the architecture logits of a search, the weights of a teacher), never optimiser state.

  `abstract_subtrees` maps top-level state fields to trees of `jax.ShapeDtypeStruct` (with the
  sharding to restore onto).
  """
  directory = layout.checkpoint_dir(stage_dir)
  manager = ocp.CheckpointManager(directory) if os.path.isdir(directory) else None
  step = manager.latest_step() if manager is not None else None
  if step is None:
    raise CheckpointNotFoundError(
      f"no {stage} checkpoint in {directory}: run --config.stage={stage} with this --workdir first"
    )
  restored = manager.restore(
    step,
    args=ocp.args.Composite(
      state=ocp.args.PyTreeRestore(
        item=abstract_subtrees,
        partial_restore=True,
        restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_subtrees),
      ),
      meta=ocp.args.JsonRestore(),
    ),
  )
  manager.close()
  return dict(restored["state"]), restored["meta"], step


def save_variables(stage_dir: str, variables: dict, meta: dict, step: int = 0) -> str:
  """Writes {"params", "batch_stats"} as a stage's checkpoint at `step`, in the layout
  `read_checkpoint` reads (weights made outside a training loop: an imported teacher); returns the
  checkpoint folder."""
  manager = manager_for(stage_dir, keep=1)
  save(manager, step, variables, meta)
  manager.wait_until_finished()
  manager.close()
  return layout.checkpoint_dir(stage_dir)


def save(manager, step: int, state, meta: dict) -> None:
  manager.save(
    step,
    args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
    force=True,
  )


def abstract_variables(arch, sharding) -> dict:
  """{'params', 'batch_stats'} of `arch` as ShapeDtypeStructs placed with `sharding`: what a
  checkpoint of its weights is restored into."""
  shapes = jax.eval_shape(
    lambda: networks.build(arch).init(jax.random.key(0), networks.dummy_input(arch), train=False)
  )
  return abstract(
    {"params": shapes["params"], "batch_stats": shapes.get("batch_stats", {})}, sharding
  )


def read_variables(stage_dir: str, arch, stage: str, sharding) -> tuple[dict, int]:
  """({'params', 'batch_stats'}, step) of a trained network's latest checkpoint, placed with
  `sharding`; the optimiser state is not read (Orbax partial restore)."""
  variables, _, step = read_checkpoint(stage_dir, abstract_variables(arch, sharding), stage)
  return variables, step


def read_trained(directory: str, stage: str, sharding) -> tuple[Any, dict, int]:
  """(architecture, {'params', 'batch_stats'}, step) of the network a training stage produced:
  its checkpoint, or, for a run trained in another form and cut at the end (a RepVGG fine-tuned
  with frozen masks), the `deploy/` network it wrote."""
  deploy = os.path.join(directory, layout.DEPLOY)
  if os.path.isdir(deploy):
    arch = networks.load(os.path.join(deploy, layout.ARCH))
    summary = layout.read_summary(directory) or {}
    return (
      arch,
      restore_tree(os.path.join(deploy, layout.WEIGHTS), abstract_variables(arch, sharding)),
      summary.get("steps", 0),
    )
  arch = networks.load(os.path.join(directory, layout.ARCH))
  variables, step = read_variables(directory, arch, stage, sharding)
  return arch, variables, step


def same_network(a, b) -> bool:
  """Whether two architecture descriptions describe the same network (their names aside)."""
  return a.to_dict() | {"name": ""} == b.to_dict() | {"name": ""}


def read_teacher(
  workdir: str,
  sharding,
  reader: str,
  expected=None,
  mismatch: Optional[Callable[[Any], str]] = None,
) -> tuple[Any, dict, int]:
  """The teacher's architecture and {'params', 'batch_stats'} placed with `sharding`, from its
  latest checkpoint in WORKDIR/teacher; optimiser state is not read. `reader` names the stage
  asking. With `expected` (the network the reader works on), a teacher of another architecture
  is a ConfigError: `mismatch(teacher_arch)` says what to do (a generic line by default)."""
  teacher_dir = layout.teacher_dir(workdir)
  arch_path = os.path.join(teacher_dir, layout.ARCH)
  if not os.path.exists(arch_path):
    raise CheckpointNotFoundError(
      f"{arch_path} is missing: run --config.stage=teacher (or import one with python -m "
      "tas_jax.convert) with this --workdir first"
    )
  arch = networks.load(arch_path)
  if expected is not None and not same_network(arch, expected):
    raise ConfigError(
      mismatch(arch)
      if mismatch is not None
      else f"[{reader}] the teacher in {teacher_dir} is {arch.name or 'custom'}, but the "
      f"config describes {expected.name or 'a different network'}"
    )
  variables, step = read_variables(teacher_dir, arch, "teacher", sharding)
  if layout.read_summary(teacher_dir) is None and layout.read_imported(teacher_dir) is None:
    logging.warning(
      "[%s] the teacher in %s has not finished; using its checkpoint at step %d",
      reader,
      teacher_dir,
      step,
    )
  return arch, variables, step
