"""`python -m tas_jax.convert SOURCE --arch=NAME --weights=FILE.pth --workdir=W`: a pretrained
PyTorch network (or a Flax model's own variables, SOURCE flax) as the teacher of a workdir
(`tas_jax.convert.convert`).

    python -m tas_jax.convert torchvision --arch=resnet50_tv --weights=resnet50-11ad3fa6.pth \\
        --workdir=W
    python -m tas_jax.convert repvgg --arch=repvgg_a0 --weights=RepVGG-A0-train.pth --workdir=W
"""

from __future__ import annotations

import os

from tas_jax import console

console.quiet_environment()

from absl import app, flags  # noqa: E402

from tas_jax import convert, workdir as layout  # noqa: E402
from tas_jax.commands import guarded  # noqa: E402


def cli(
  source: str,
  name: str,
  weights: str,
  workdir: str,
  input_size: int = 0,
  kwargs: str = "{}",
  input_channels: int = 3,
) -> int:
  """Converts, prints what it did and what to run next; a user's error is one line, status 2."""
  console.setup()
  record = guarded(
    convert.convert, source, name, weights, workdir, input_size, kwargs, input_channels
  )
  teacher_dir = layout.teacher_dir(workdir)
  error = record["max_abs_logit_difference"]
  model = (
    f"--config.model.module={name} --config.model.kwargs='{kwargs}'"
    if source == "flax"
    else f"--config.model.arch={os.path.join(teacher_dir, layout.ARCH)}"
  )
  print(
    f"{record['architecture']} ({record['num_classes']} classes, {record['input_size']}x"
    f"{record['input_size']} inputs) from {weights} -> {teacher_dir}\n"
    + (
      f"check against PyTorch on a random batch: largest |logit difference| {error:.2e}\n"
      if error is not None
      else ""
    )
    + f"next: python -m tas_jax.main --config=CONFIG --workdir={workdir} {model} "
    "--config.stage=all"
  )
  return 0


def main() -> None:
  arch = flags.DEFINE_string(
    "arch",
    None,
    "resnet18_tv | resnet50_tv | repvgg_a0 | repvgg_b1 | an architecture JSON; SOURCE flax: "
    "package.module:Class",
  )
  kwargs = flags.DEFINE_string("kwargs", "{}", "SOURCE flax: the class's keyword arguments (JSON)")
  channels = flags.DEFINE_integer("input_channels", 3, "SOURCE flax: the image channels")
  weights = flags.DEFINE_string("weights", None, "the PyTorch checkpoint (.pth)")
  workdir = flags.DEFINE_string("workdir", None, "the workdir whose teacher/ it becomes")
  input_size = flags.DEFINE_integer(
    "input_size",
    0,
    "the image side the network is trained and "
    "evaluated at (0: the architecture's, 224 for the named ones)",
  )

  def run(argv):
    if len(argv) != 2:
      raise app.UsageError(f"one SOURCE: {', '.join(convert.SOURCES)}")
    for flag in (arch, weights, workdir):
      if not flag.value:
        raise app.UsageError(f"--{flag.name} is needed")
    return cli(
      argv[1],
      arch.value,
      weights.value,
      workdir.value,
      input_size.value,
      kwargs.value,
      channels.value,
    )

  app.run(run)
