"""Minimal reproduction, outside tas_jax, of the SIGABRT of long 8-device CPU test processes.

    python tests/repro/cpu_collective_abort.py [--steps=N] [--xla_flags="..."] [--load=K]

A data-parallel step (a dot per device, gradients all-reduced) on 8 forced CPU devices, run N
times while K busy-looping processes load the machine. XLA:CPU runs each device's program on the
client's threads; when a device's dot runs on the (multi-threaded) Eigen intra-op pool, the rest
of that device's program — the all-reduce included — continues on a pool thread, which then
blocks in the all-reduce's rendezvous until all 8 devices arrive. Once the pool's few threads
(one per core) are all blocked there, the devices whose dots still wait for a pool thread never
arrive: after `xla_cpu_collective_call_warn_stuck_seconds` (20 s) XLA warns, after another
`xla_cpu_collective_call_terminate_timeout_seconds` (40 s) it LOG(FATAL)s — "Termination timeout
for `all reduce …` exceeded … only 3 of them arrived on time" — and the process aborts.

Prints one line per 50 steps and `survived N steps` at the end; exits 134 on the abort.
"""

import argparse
import multiprocessing
import os
import time

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=3000)
parser.add_argument("--xla_flags", default="")
parser.add_argument("--load", type=int, default=2, help="busy processes beside this one")
parser.add_argument("--size", type=int, default=384)
args = parser.parse_args()


def busy(parent):
  while os.getppid() == parent:  # ends with the reproduction, however that ends
    for _ in range(100000):
      pass


if __name__ == "__main__":
  hogs = [
    multiprocessing.Process(target=busy, args=(os.getpid(),), daemon=True) for _ in range(args.load)
  ]
  for h in hogs:
    h.start()
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count=8 {args.xla_flags}"
  import jax
  import jax.numpy as jnp
  import numpy as np
  from jax.sharding import NamedSharding, PartitionSpec as P

  mesh = jax.make_mesh((8,), ("data",))
  n = args.size
  x = jax.device_put(
    np.random.default_rng(0).normal(size=(8 * n, n)).astype(np.float32),
    NamedSharding(mesh, P("data")),
  )
  w = jax.device_put(np.eye(n, dtype=np.float32) * 0.01, NamedSharding(mesh, P()))

  @jax.jit
  def step(w, x):
    loss, g = jax.value_and_grad(lambda w: jnp.mean(jnp.tanh(x @ w) ** 2))(w)  # g: all-reduced
    return w - 0.1 * g, loss

  t = time.time()
  for i in range(args.steps):
    w, loss = step(w, x)
    if i % 50 == 0:
      print(f"step {i} loss {float(loss):.5f} {time.time() - t:.0f}s", flush=True)
  print(f"survived {args.steps} steps", flush=True)
