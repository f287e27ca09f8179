"""The launch scripts, checked as far as this machine can: shell syntax, usage errors, and the exact
commands they would run (--dry-run)."""

import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ["setup.sh", "test.sh", "demo.sh", "tpu_vm.sh", "gpu.sh", "gpu_hosts.sh"]


def sh(*args):
  return subprocess.run(["bash", *args], capture_output=True, text=True, cwd=ROOT)


@pytest.mark.parametrize("script", SCRIPTS)
def test_shell_syntax(script):
  out = sh("-n", os.path.join("launch", script))
  assert out.returncode == 0, out.stderr


def test_tpu_vm_dry_run_commands():
  run = sh(
    "launch/tpu_vm.sh",
    "--dry-run",
    "run",
    "tp",
    "us-central2-b",
    "--",
    "--config=configs/imagenet_r50.py",
    "--workdir=/mnt/shared/r50",
    "--config.stage=search",
  )
  assert run.returncode == 0, run.stderr
  # detached on every worker, one log per worker
  assert run.stdout.strip() == (
    "gcloud compute tpus tpu-vm ssh tp --zone=us-central2-b --worker=all --command "
    "'cd tas_jax && mkdir -p logs && LOG=logs/$(hostname).log && nohup setsid .venv/bin/python "
    "-m tas_jax.main --distributed --config=configs/imagenet_r50.py --workdir=/mnt/shared/r50 "
    '--config.stage=search > $LOG 2>&1 < /dev/null & echo "started on $(hostname): '
    "tas_jax/$LOG\"'"
  )
  setup = sh("launch/tpu_vm.sh", "--dry-run", "setup", "tp", "z", "https://example.org/t.git")
  assert "--worker=all" in setup.stdout and "launch/setup.sh" in setup.stdout
  assert "jax[tpu]==0.10.2" in setup.stdout
  assert sh("launch/tpu_vm.sh", "setup", "tp", "z").returncode == 2  # no repository: usage
  logs = sh("launch/tpu_vm.sh", "logs", "tp", "z", "3", "--dry-run")
  assert (
    "--worker=3" in logs.stdout and "tail -n 100 -F tas_jax/logs/$(hostname).log" in logs.stdout
  )
  stop = sh("launch/tpu_vm.sh", "stop", "tp", "z", "--dry-run")
  assert "--worker=all" in stop.stdout and "pkill -TERM -f" in stop.stdout


@pytest.mark.parametrize(
  "accelerator, runtime",
  [
    ("v4-32", "tpu-ubuntu2204-base"),
    ("v3-8", "tpu-ubuntu2204-base"),
    ("v5litepod-8", "v2-alpha-tpuv5-lite"),
    ("v5p-16", "v2-alpha-tpuv5"),
    ("v6e-8", "v2-alpha-tpuv6e"),
  ],
)
def test_tpu_vm_create_chooses_the_runtime_of_the_family(accelerator, runtime):
  create = sh("launch/tpu_vm.sh", "create", "tp", "us-central2-b", accelerator, "--dry-run")
  assert create.returncode == 0, create.stderr
  assert create.stdout.strip() == (
    "gcloud compute tpus tpu-vm create tp --zone=us-central2-b "
    f"--accelerator-type={accelerator} --version={runtime}"
  )


def test_dry_run_anywhere_runs_nothing(tmp_path):
  """--dry-run placed last must not run gcloud: a fake gcloud on PATH records any call."""
  fake = tmp_path / "bin"
  fake.mkdir()
  (fake / "gcloud").write_text(f"#!/bin/sh\necho called > {tmp_path}/called\n")
  (fake / "gcloud").chmod(0o755)
  env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"}
  for args in (
    ["create", "tp", "us-central2-b", "v4-32", "--dry-run"],
    ["--dry-run", "create", "tp", "us-central2-b", "v4-32"],
    ["create", "tp", "--dry-run", "us-central2-b", "v4-32"],
  ):
    out = subprocess.run(
      ["bash", "launch/tpu_vm.sh", *args], capture_output=True, text=True, cwd=ROOT, env=env
    )
    assert out.returncode == 0 and out.stdout.startswith("gcloud compute tpus tpu-vm create tp ")
  assert not (tmp_path / "called").exists()
  unknown = sh("launch/tpu_vm.sh", "create", "tp", "z", "v9-8", "--dry-run")
  assert unknown.returncode == 2 and "unknown TPU accelerator type 'v9-8'" in unknown.stderr


def fake_python(path, version):
  """A stand-in interpreter: answers --version, and the version check with its exit status."""
  ok = tuple(map(int, version.split(".")[:2])) >= (3, 11)
  path.write_text(
    f"#!/bin/sh\n[ \"$1\" = --version ] && echo 'Python {version}' && exit 0\n"
    f"exit {0 if ok else 1}\n"
  )
  path.chmod(0o755)


def setup_dry_run(tmp_path, pythons, uv=False, env_extra=None, args=()):
  """launch/setup.sh --dry-run with only the given interpreters (and uv) on PATH."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir(parents=True)
  for tool in ("dirname",):
    os.symlink(subprocess.check_output(["which", tool], text=True).strip(), bin_dir / tool)
  for name, version in pythons.items():
    fake_python(bin_dir / name, version)
  if uv:
    (bin_dir / "uv").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "uv").chmod(0o755)
  env = {
    **os.environ,
    "PATH": str(bin_dir),
    "TAS_JAX_VENV": str(tmp_path / "venv"),
    "HOME": str(tmp_path),
  }
  env.pop("PYTHON", None)
  env.pop("TAS_JAX_INSTALLER", None)
  env.update(env_extra or {})
  out = subprocess.run(
    ["/bin/bash", "launch/setup.sh", "--dry-run", *args],
    capture_output=True,
    text=True,
    cwd=ROOT,
    env=env,
  )
  assert out.returncode == 0, out.stderr
  return out.stdout.splitlines()


def test_setup_finds_a_python_new_enough_or_gets_one_with_uv(tmp_path):
  venv = tmp_path / "venv"
  lines = setup_dry_run(tmp_path / "a", {"python3": "3.10.12", "python3.12": "3.12.3"})
  venv_a = tmp_path / "a" / "venv"
  assert lines[0] == f"python3.12 -m venv {venv_a}"
  # uv into the venv, then uv installs the pins (bytecode compiled once, with them)
  assert lines[2:6] == [
    f"{venv_a}/bin/python -m pip install -q uv",
    f"{venv_a}/bin/uv pip install -q --python {venv_a}/bin/python "
    "--compile-bytecode -r requirements.txt",
    f"{venv_a}/bin/uv pip install -q --python {venv_a}/bin/python --no-deps -e .",
    f"{venv_a}/bin/uv pip install -q --python {venv_a}/bin/python --no-deps foolbox==3.3.4",
  ]
  assert not any("torch" in line for line in lines)  # the optional packages: --tests only
  lines = setup_dry_run(
    tmp_path / "p",
    {"python3.12": "3.12.3"},
    env_extra={"TAS_JAX_INSTALLER": "pip"},
    args=("--tests",),
  )
  venv_p = tmp_path / "p" / "venv"
  assert (
    f"{venv_p}/bin/python -m pip install -q -r requirements.txt -r requirements-interop.txt "
    "-r requirements-docs.txt" in lines
  )
  assert f"{venv_p}/bin/python -m pip install -q --no-deps torchvision==0.28.0" in lines
  # no command runs or installs uv (a word of its own: a temporary path may hold the letters)
  assert not any(tok == "uv" or tok.endswith("/uv") for line in lines for tok in line.split())
  # a TPU VM image: python3 is 3.10 and uv is there
  lines = setup_dry_run(tmp_path / "b", {"python3": "3.10.12"}, uv=True)
  assert lines[0] == f"uv venv -q --seed --python 3.11 {tmp_path / 'b' / 'venv'}"
  # no uv either: it is installed first
  lines = setup_dry_run(tmp_path / "c", {"python3": "3.10.12"})
  assert lines[:3] == [
    "no Python >= 3.11 on PATH (python3: Python 3.10.12): installing uv to get one",
    "python3 -m pip install -q --user uv",
    f"uv venv -q --seed --python 3.11 {tmp_path / 'c' / 'venv'}",
  ]
  assert not venv.exists()


def test_pyproject_asks_for_the_python_the_pins_need():
  with open(os.path.join(ROOT, "pyproject.toml")) as f:
    assert 'requires-python = ">=3.11"' in f.read()


def test_gpu_dry_run_commands():
  setup = sh("launch/gpu.sh", "--dry-run", "setup", "12")
  assert setup.stdout.splitlines() == [
    "bash launch/setup.sh",
    ".venv/bin/pip install -q 'jax[cuda12]==0.10.2'",
  ]
  run = sh(
    "launch/gpu.sh",
    "--dry-run",
    "run",
    "--",
    "--config=configs/imagenet_r18.py",
    "--workdir=runs/r18",
  )
  assert run.stdout.strip() == (
    ".venv/bin/python -m tas_jax.main --config=configs/imagenet_r18.py --workdir=runs/r18"
  )


def test_gpu_hosts_dry_run_gives_every_host_its_process_id(tmp_path):
  hosts = tmp_path / "hosts"
  hosts.write_text("# the coordinator first\ngpu-a\n\n   \ngpu-b  # second rack\n#gpu-x\ngpu-c\n")
  out = sh(
    "launch/gpu_hosts.sh",
    str(hosts),
    "7777",
    "--",
    "--config=configs/imagenet_r50.py",
    "--workdir=/shared/r50",
    "--dry-run",
  )
  assert out.returncode == 0, out.stderr
  lines = out.stdout.strip().splitlines()
  assert len(lines) == 3
  for i, host in enumerate(["gpu-a", "gpu-b", "gpu-c"]):
    line = next(l for l in lines if l.startswith(f"ssh {host} "))
    assert f"--coordinator_address=gpu-a:7777 --num_processes=3 --process_id={i}" in line
    assert "-m tas_jax.main --config=configs/imagenet_r50.py --workdir=/shared/r50" in line
