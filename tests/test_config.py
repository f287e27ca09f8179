"""Config validation and the command line: a wrong value stops at once with one line."""

import os
import subprocess
import sys

import pytest

from tas_jax import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize(
  "field, value, message",
  [
    ("model.depth", 21, "config.model.depth=21: a CIFAR basic ResNet needs depth = 6n+2"),
    ("data.name", "imagenet2", "config.data.name='imagenet2': allowed: cifar10, cifar100"),
    ("teacher.lr", -0.1, "config.teacher.lr=-0.1: must be a number > 0"),
    ("teacher.momentum", 1.0, "config.teacher.momentum=1.0: must be in [0, 1)"),
    ("parallel", "pjit", "config.parallel='pjit': allowed: jit, pmap"),
    ("stage", "prune", "config.stage='prune': allowed: teacher, search"),
    ("model.family", "vgg", "config.model.family='vgg': allowed: cifar, imagenet"),
    ("teacher.batch_size", 0, "config.teacher.batch_size=0: must be an integer > 0"),
    ("target.flop_ratio", 1.5, "config.target.flop_ratio=1.5: must be in (0, 1]"),
    ("search.variant", "tas2", "config.search.variant='tas2': allowed: tas, width, depth"),
    ("search.tau_schedule", "exp", "config.search.tau_schedule='exp': allowed: cosine, linear"),
    ("search.band", "wide", "config.search.band='wide': allowed: released, symmetric"),
    (
      "search.in_band",
      "expected",
      "config.search.in_band='expected': allowed: free, centred (expected and capped were retired",
    ),
    ("target.tolerance", 0.5, "config.target.tolerance=0.5: must be in [0, target.flop_ratio)"),
    ("l1.ranking", "layer", "config.l1.ranking='layer': allowed: global, uniform"),
    ("method", "obd", "config.method='obd': allowed: tas, pas, l1, fpgm"),
    ("search.arch_lr", -1.0, "config.search.arch_lr=-1.0: must be a number > 0"),
    ("search.init", "imagenet", "config.search.init='imagenet': allowed: scratch, teacher"),
    (
      "search.arch_lr_schedule",
      "step",
      "config.search.arch_lr_schedule='step': allowed: constant, cosine",
    ),
    (
      "search.arch_cooldown_epochs",
      600,
      "config.search.arch_cooldown_epochs=600: must be an integer in [0, search.epochs=600)",
    ),
    (
      "search.expected_flops",
      "chain",
      "config.search.expected_flops='chain': allowed: released, exact",
    ),
  ],
)
def test_validate_names_field_and_allowed_values(field, value, message):
  c = config_lib.base_config()
  section, _, name = field.rpartition(".")
  setattr(c[section] if section else c, name, value)
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate(c)
  assert str(e.value).startswith(message)


@pytest.mark.parametrize("config_file", sorted(os.listdir(os.path.join(ROOT, "configs"))))
def test_every_shipped_config_is_valid(config_file):
  if not config_file.endswith(".py"):
    return
  import importlib.util

  spec = importlib.util.spec_from_file_location("cfg", os.path.join(ROOT, "configs", config_file))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config_lib.validate(module.get_config())


@pytest.mark.children  # python -m tas_jax.… in a child process
@pytest.mark.parametrize(
  "override, needle",
  [
    ("--config.model.depth=21", "config.model.depth=21"),
    ("--config.data.name=svhn", "config.data.name='svhn'"),
    ("--config.teacher.lr=-0.1", "config.teacher.lr=-0.1"),
  ],
)
def test_command_line_stops_with_one_line(tmp_path, override, needle):
  out = subprocess.run(
    [
      sys.executable,
      "-m",
      "tas_jax.main",
      "--config=configs/demo.py",
      f"--workdir={tmp_path}",
      override,
    ],
    capture_output=True,
    text=True,
    cwd=ROOT,
    timeout=120,
  )
  assert out.returncode == 2
  errors = [l for l in out.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and needle in errors[0], out.stderr[-2000:]
  assert "Traceback" not in out.stderr
  assert not os.path.exists(tmp_path / "teacher")  # stopped before any work


@pytest.mark.children  # python -m tas_jax.… in a child process
@pytest.mark.parametrize(
  "args, message",
  [
    (
      ["--config=configs/demo.py", "--config.target.flop_ratioo=0.3"],
      "error: --config.target.flop_ratioo: no such config field 'flop_ratioo'; Did you mean "
      '"flop_ratio" instead of "flop_ratioo"? (all fields: python -m tas_jax.config --config=FILE)',
    ),
    (
      ["--config=configs/demoo.py"],
      "error: --config=configs/demoo.py: no such file (the shipped "
      f"configs are in {ROOT}/configs; list their fields with "
      "python -m tas_jax.config --config=FILE)",
    ),
    (
      ["--config=configs/demo.py", "--config.target.flop_ratio=half"],
      "error: flag --config.target.flop_ratio=half: could not convert string to float: 'half'",
    ),
    (
      ["--config=configs/demo.py", "--config.overwrite=teachers"],
      "error: config.overwrite='teachers': comma-separated stage folders: teacher, search, "
      "extract, search-pas, extract-pas, distill/RUN (e.g. distill/tas-kd), distill (every run)",
    ),
  ],
)
def test_command_line_mistakes_are_one_line_on_stderr(tmp_path, args, message):
  out = subprocess.run(
    [sys.executable, "-m", "tas_jax.main", f"--workdir={tmp_path / 'w'}", *args],
    capture_output=True,
    text=True,
    cwd=ROOT,
    timeout=120,
  )
  assert out.returncode == 2
  assert [l for l in out.stderr.splitlines() if "JAX 0.10.2" not in l] == [message]
  assert not os.path.exists(tmp_path / "w" / "teacher")


@pytest.mark.children  # python -m tas_jax.… in a child process
def test_outside_the_repository_and_an_unwritable_workdir(tmp_path):
  """From another folder, configs/demo.py is the repository's (said once); a workdir that cannot
  be made stops with one line."""
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  env = {**os.environ, "PYTHONPATH": ROOT}
  out = subprocess.run(
    [sys.executable, "-m", "tas_jax.main", "--config=configs/demo.py", f"--workdir={blocker}/w"],
    capture_output=True,
    text=True,
    cwd=tmp_path,
    env=env,
    timeout=120,
  )
  assert out.returncode == 2
  lines = [l for l in out.stderr.splitlines() if "JAX 0.10.2" not in l]
  assert lines == [
    f"--config=configs/demo.py: not in {tmp_path}; using {ROOT}/configs/demo.py",
    f"error: --workdir={blocker}/w cannot be written (Not a directory): choose a "
    "folder you can write to",
  ]


@pytest.mark.children  # python -m tas_jax.… in a child process
def test_every_field_has_a_meaning_and_the_listing_shows_overrides():
  rows = config_lib.describe(config_lib.base_config())
  assert [name for name, _, text in rows if not text] == []
  out = subprocess.run(
    [
      sys.executable,
      "-m",
      "tas_jax.config",
      "--config=configs/demo.py",
      "--config.target.flop_ratio=0.3",
    ],
    capture_output=True,
    text=True,
    cwd=ROOT,
    timeout=120,
  )
  assert out.returncode == 0, out.stderr
  line = next(l for l in out.stdout.splitlines() if l.startswith("target.flop_ratio = "))
  assert line.split()[:3] == ["target.flop_ratio", "=", "0.3"] and "the unpruned network's" in line
  old = next(l for l in out.stdout.splitlines() if l.startswith("search.flop_ratio = "))
  assert "renamed: target.flop_ratio" in old
  pas = next(l for l in out.stdout.splitlines() if l.startswith("pas.cost_weight = "))
  assert "α of α·(MACs − target)²" in pas  # a method's section, from its own defaults()
  teacher_lr = next(l for l in out.stdout.splitlines() if l.startswith("teacher.lr = "))
  assert "the peak learning rate" in teacher_lr


def test_a_renamed_field_still_works_with_a_one_line_notice(caplog):
  c = config_lib.base_config()
  c.search.flop_ratio, c.search.tolerance = 0.3, 0.02
  with caplog.at_level("WARNING"):
    config_lib.validate(c)
  assert (c.target.flop_ratio, c.target.tolerance) == (0.3, 0.02)
  assert c.search.flop_ratio is None and c.search.tolerance is None
  notices = [r.getMessage() for r in caplog.records]
  assert notices == [
    "config.search.flop_ratio is now config.target.flop_ratio: using "
    "target.flop_ratio=0.3 (the old name will go)",
    "config.search.tolerance is now config.target.tolerance: using "
    "target.tolerance=0.02 (the old name will go)",
  ]


def test_shipped_configs_are_locked_so_a_misspelt_field_raises_in_python():
  import glob
  import importlib

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  for path in sorted(glob.glob(os.path.join(root, "configs", "*.py"))):
    c = importlib.import_module(f"configs.{os.path.basename(path)[:-3]}").get_config()
    assert c.is_locked, path
  c = importlib.import_module("configs.demo").get_config()
  with pytest.raises(AttributeError, match=r'Did you mean "flop_ratio" instead of "flop_ration"'):
    c.target.flop_ration = 0.3
  c.target.flop_ratio = 0.3  # an existing field still takes a new value
  assert c.target.flop_ratio == 0.3
