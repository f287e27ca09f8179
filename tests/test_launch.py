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
  run = sh("launch/tpu_vm.sh", "--dry-run", "run", "tp", "us-central2-b", "--",
           "--config=configs/imagenet_r50.py", "--workdir=/mnt/shared/r50", "--config.stage=search")
  assert run.returncode == 0, run.stderr
  assert run.stdout.strip() == (
      "gcloud compute tpus tpu-vm ssh tp --zone=us-central2-b --worker=all --command "
      "'cd tas_jax && .venv/bin/python -m tas_jax.main --distributed "
      "--config=configs/imagenet_r50.py --workdir=/mnt/shared/r50 --config.stage=search '")
  create = sh("launch/tpu_vm.sh", "--dry-run", "create", "tp", "us-central2-b", "v4-32")
  assert create.stdout.strip() == ("gcloud compute tpus tpu-vm create tp --zone=us-central2-b "
                                   "--accelerator-type=v4-32 --version=tpu-ubuntu2204-base")
  setup = sh("launch/tpu_vm.sh", "--dry-run", "setup", "tp", "z", "https://example.org/t.git")
  assert "--worker=all" in setup.stdout and "launch/setup.sh" in setup.stdout
  assert "jax[tpu]==0.10.2" in setup.stdout
  assert sh("launch/tpu_vm.sh", "setup", "tp", "z").returncode == 2      # no repository: usage


def test_gpu_dry_run_commands():
  setup = sh("launch/gpu.sh", "--dry-run", "setup", "12")
  assert setup.stdout.splitlines() == ["bash launch/setup.sh",
                                       ".venv/bin/pip install -q 'jax[cuda12]==0.10.2'"]
  run = sh("launch/gpu.sh", "--dry-run", "run", "--", "--config=configs/imagenet_r18.py",
           "--workdir=runs/r18")
  assert run.stdout.strip() == (".venv/bin/python -m tas_jax.main --config=configs/imagenet_r18.py "
                                "--workdir=runs/r18")


def test_gpu_hosts_dry_run_gives_every_host_its_process_id(tmp_path):
  hosts = tmp_path / "hosts"
  hosts.write_text("gpu-a\ngpu-b\ngpu-c\n")
  out = sh("launch/gpu_hosts.sh", "--dry-run", str(hosts), "7777", "--",
           "--config=configs/imagenet_r50.py", "--workdir=/shared/r50")
  assert out.returncode == 0, out.stderr
  lines = out.stdout.strip().splitlines()
  assert len(lines) == 3
  for i, host in enumerate(["gpu-a", "gpu-b", "gpu-c"]):
    line = next(l for l in lines if l.startswith(f"ssh {host} "))
    assert f"--coordinator_address=gpu-a:7777 --num_processes=3 --process_id={i}" in line
    assert "-m tas_jax.main --config=configs/imagenet_r50.py --workdir=/shared/r50" in line
