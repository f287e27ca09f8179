"""One process of a 2-process run on this machine (test_multiprocess.py starts two of these).

    python tests/multiprocess_check.py PORT PROCESS_ID WHAT[,WHAT…] [WORKDIR]

Joins the run with jax.distributed on 127.0.0.1:PORT (4 forced CPU devices per process: an
8-device global mesh), then runs each WHAT in turn (one pair of processes for all: starting and
joining is paid once) and prints one JSON line, {WHAT: result}:
  step | search    parallel_check's teacher step / search iteration on the 8-device mesh
  teacher          a tiny teacher stage into WORKDIR (checkpoints written by both processes)
"""

import json
import os
import sys

import jax

port, process_id, checks = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split(",")
jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=process_id)

import numpy as np  # noqa: E402  (after initialize: nothing may touch a device before it)
import parallel_check  # noqa: E402


def check(what: str) -> dict:
  if what in ("step", "search"):
    return parallel_check.CHECKS[what](8, "jit")
  if what == "teacher":
    import test_train

    from tas_jax.main import run

    c = test_train.demo_like_config()
    c.teacher.warmup_epochs, c.teacher.cosine_epochs = 0, 2
    c.data.train_examples = 512  # 4 steps of 128 per epoch
    summary = run(c, sys.argv[4])
    from tas_jax.models import arch as arch_lib
    from tas_jax.training import checkpoint

    a = arch_lib.load(os.path.join(sys.argv[4], "teacher", "arch.json"))
    variables, step = checkpoint.read_variables(
      os.path.join(sys.argv[4], "teacher"),
      a,
      "teacher",
      jax.sharding.SingleDeviceSharding(jax.local_devices()[0]),
    )
    flat = np.concatenate([np.ravel(x) for x in jax.tree.leaves(variables)])
    return {
      "finished": summary["finished"],
      "step": step,
      "test_accuracy": summary["test_accuracy"],
      "norm": float(np.linalg.norm(flat)),
      "head": flat[:500].tolist(),
    }
  raise SystemExit(f"unknown check {what!r}")


results = {}
for what in checks:
  results[what] = check(what) | {
    "process": jax.process_index(),
    "processes": jax.process_count(),
    "devices": jax.device_count(),
  }
print(json.dumps(results))
