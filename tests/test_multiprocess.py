"""Two processes × 4 forced CPU devices on 127.0.0.1 against one process × 8 (MULTIHOST.md's
pattern: a free port, two children with a timeout, killed by PID if they hang)."""

import json
import os
import socket
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np
import pytest
from test_train import run_on

from tas_jax.models import arch as arch_lib
from tas_jax.training import checkpoint

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def two_processes(
  argv_of, timeout=900, check=True, env_of=lambda i: {}, devices=4
) -> list[subprocess.CompletedProcess]:
  """Runs argv_of(port, i) for i = 0, 1 with 4 forced CPU devices each (and env_of(i) added to
  the environment); kills both on timeout. Their output goes to files: with pipes read one
  process after the other, a process that fills its pipe (64 KiB of log) blocks on the write
  while the other waits for it at a barrier, and both sit idle."""
  port = free_port()
  env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}  # proxies hang the init
  env.update(
    XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
    TF_CPP_MIN_LOG_LEVEL="2",
    PYTHONPATH=os.pathsep.join([HERE, ROOT, os.environ.get("PYTHONPATH", "")]),
  )
  with tempfile.TemporaryDirectory() as logs:
    files = [
      (open(os.path.join(logs, f"{i}.out"), "w+"), open(os.path.join(logs, f"{i}.err"), "w+"))
      for i in range(2)
    ]
    procs = [
      subprocess.Popen(
        argv_of(port, i), stdout=out, stderr=err, text=True, env={**env, **env_of(i)}, cwd=ROOT
      )
      for i, (out, err) in enumerate(files)
    ]
    deadline, timed_out = time.time() + timeout, False
    try:
      for p in procs:
        p.wait(timeout=max(1.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
      timed_out = True
    finally:
      for p in procs:
        if p.poll() is None:
          p.kill()
          p.wait()
    outs = []
    for p, (out, err) in zip(procs, files):
      out.seek(0), err.seek(0)
      outs.append(subprocess.CompletedProcess(p.args, p.returncode, out.read(), err.read()))
      out.close(), err.close()
  assert not timed_out, f"killed after {timeout} s: " + " | ".join(o.stderr[-1500:] for o in outs)
  for o in outs:
    assert o.returncode == 0 or not check, o.stderr[-3000:]
  return outs


@pytest.fixture(scope="module")
def two_process_checks(tmp_path_factory):
  """One pair of processes runs the three checks (the teacher's checkpoints into `workdir`):
  {check: [result of process 0, of process 1]}."""
  workdir = str(tmp_path_factory.mktemp("two_process_teacher"))
  checks = "step,search,teacher"
  outs = two_processes(
    lambda port, i: [
      sys.executable,
      os.path.join(HERE, "multiprocess_check.py"),
      str(port),
      str(i),
      checks,
      workdir,
    ]
  )
  results = [json.loads(o.stdout.strip().splitlines()[-1]) for o in outs]
  return {what: [r[what] for r in results] for what in checks.split(",")} | {"workdir": workdir}


@pytest.mark.devices  # against the 1 x 8 run of this process (the 8-device pass)
def test_teacher_step_on_two_processes_equals_one_process(two_process_checks):
  results = two_process_checks["step"]
  ref = run_on(8, "jit")
  for r in results:
    assert (r["processes"], r["devices"]) == (2, 8)
    np.testing.assert_allclose(r["losses"], ref["losses"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(r["params_head"], ref["params_head"], atol=1e-5)
    assert abs(r["params_norm"] - ref["params_norm"]) < 1e-5 * ref["params_norm"]


@pytest.mark.devices
def test_search_iteration_on_two_processes_equals_one_process(two_process_checks):
  results = two_process_checks["search"]
  ref = run_on(8, "jit", "search")
  for r in results:
    assert (r["processes"], r["devices"]) == (2, 8)
    for got, want in zip(r["metrics"], ref["metrics"]):
      for k in want:
        assert got[k] == pytest.approx(want[k], abs=1e-5), k
    np.testing.assert_allclose(r["alpha"], ref["alpha"], atol=1e-5)
    np.testing.assert_allclose(r["beta"], ref["beta"], atol=1e-5)
    np.testing.assert_allclose(r["params_head"], ref["params_head"], atol=1e-5)


@pytest.mark.devices
def test_checkpoint_of_two_processes_restores_in_one(two_process_checks):
  """Both processes write the teacher's Orbax checkpoints into one directory; this single process
  (1 or 8 devices) reads the same weights; process 0 alone wrote the files."""
  workdir = two_process_checks["workdir"]
  results = two_process_checks["teacher"]
  assert results[0]["finished"] and results[1]["finished"]
  assert results[0]["norm"] == pytest.approx(results[1]["norm"], rel=1e-7)
  a = arch_lib.load(os.path.join(workdir, "teacher", "arch.json"))
  variables, step = checkpoint.read_variables(
    os.path.join(workdir, "teacher"),
    a,
    "teacher",
    jax.sharding.SingleDeviceSharding(jax.local_devices()[0]),
  )
  flat = np.concatenate([np.ravel(x) for x in jax.tree.leaves(variables)])
  assert step == results[0]["step"] == 8
  assert float(np.linalg.norm(flat)) == pytest.approx(results[0]["norm"], rel=1e-6)
  np.testing.assert_allclose(flat[:500], results[0]["head"], atol=1e-6)
  events = [f for f in os.listdir(os.path.join(workdir, "teacher")) if "tfevents" in f]
  assert len(events) == 1  # TensorBoard from process 0 only


@pytest.mark.children
def test_two_process_search_through_the_cli_logs_once_and_writes_once(tmp_path):
  """`python -m tas_jax.main` with --coordinator_address on localhost: a few search steps; one
  progress stream (process 1 logs nothing but warnings) and one set of output files."""
  workdir = str(tmp_path)
  args = [
    "--config=configs/demo.py",
    f"--workdir={workdir}",
    "--config.stage=search",
    "--config.search.init=scratch",
    "--config.search.epochs=2",
    "--config.search.batch_size=64",
    "--config.data.train_examples=512",
    "--config.model.depth=8",
    "--config.log_every_steps=2",
    "--config.search.evaluate_every_epoch=false",
  ]  # one program less to compile
  outs = two_processes(
    lambda port, i: [
      sys.executable,
      "-m",
      "tas_jax.main",
      *args,
      f"--coordinator_address=127.0.0.1:{port}",
      "--num_processes=2",
      f"--process_id={i}",
    ],
    devices=1,
  )
  lead, other = outs[0].stderr, outs[1].stderr
  assert "[search] epoch 2/2 done" in lead and "| loss " in lead and "ETA" in lead
  assert "process 0/2, 1 local device(s)" in lead
  assert "[search]" not in other and "| loss " not in other
  summary = json.load(open(os.path.join(workdir, "search", "summary.json")))
  assert summary["finished"] and summary["devices"] == 2 and len(summary["history"]) == 2
  assert len([f for f in os.listdir(os.path.join(workdir, "search")) if "tfevents" in f]) == 1


SEARCH = [
  "--config=configs/demo.py",
  "--config.stage=search",
  "--config.search.init=scratch",
  "--config.search.epochs=2",
  "--config.search.batch_size=64",
  "--config.data.train_examples=512",
  "--config.model.depth=8",
]


def cli_pair(workdir, extra_of=lambda i: [], env_of=lambda i: {}):
  return two_processes(
    lambda port, i: [
      sys.executable,
      "-m",
      "tas_jax.main",
      *SEARCH,
      f"--workdir={workdir}",
      *extra_of(i),
      f"--coordinator_address=127.0.0.1:{port}",
      "--num_processes=2",
      f"--process_id={i}",
    ],
    check=False,
    env_of=env_of,
  )


@pytest.mark.children
def test_different_commands_on_two_processes_stop_both_with_one_line(tmp_path):
  """Different settings would send the processes down different paths (one waiting in a
  collective the other never reaches): both stop before any work, naming the field."""
  outs = cli_pair(tmp_path, extra_of=lambda i: ["--config.search.epochs=1"] if i == 1 else [])
  for o in outs:
    errors = [l for l in o.stderr.splitlines() if l.startswith("error:")]
    assert o.returncode == 2 and "Traceback" not in o.stderr, o.stderr[-2000:]
    assert errors == [
      "error: process 1 runs other settings than process 0: search.epochs=1 "
      "(process 0: 2): every process must run the same command"
    ], o.stderr[-2000:]
  assert not os.path.exists(tmp_path / "search" / "checkpoints")


@pytest.mark.children
def test_a_process_that_stops_stops_the_other_at_once(tmp_path):
  """Process 1 cannot load its data (injected by tests/faults/sitecustomize.py): it stops with its
  one line, and process 0, which went on and waits for it, stops too, naming where it was and
  why, instead of waiting in a collective until the coordination service gives up."""
  outs = cli_pair(
    tmp_path,
    env_of=lambda i: {
      "TAS_JAX_TEST_FAULT": "no_data" if i == 1 else "",
      "PYTHONPATH": os.pathsep.join([os.path.join(HERE, "faults"), HERE, ROOT]),
    },
  )
  lead, failed = outs
  assert failed.returncode == 2 and failed.stderr.splitlines()[-1] == (
    "error: test fault: this process's data folder is empty"
  ), failed.stderr[-2000:]
  assert lead.returncode == 2 and "Traceback" not in lead.stderr, lead.stderr[-2000:]
  errors = [l for l in lead.stderr.splitlines() if l.startswith("error:")]
  last = lead.stderr.splitlines()[-1]
  assert errors == [last], lead.stderr[-2000:]  # one error line, the last one
  assert last.startswith(
    "error: process 0: process 1 stopped (test fault: this process's data "
    "folder is empty) while this process was at "
  ), last
  assert last.endswith("; stopping too")
