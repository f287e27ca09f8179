"""`python -m benchmarks.bench` on a tiny network: its figures and the checks behind them."""

import json

import jax
import numpy as np
import pytest

from benchmarks import bench
from tas_jax import parallel

pytestmark = pytest.mark.devices  # the data-parallel harness: its profile differs on 8 devices
REFERENCE_CALLS = []


@pytest.fixture(scope="module")
def result(tmp_path_factory):
  # a stand-in for another framework's step: records when it runs
  reference = lambda: REFERENCE_CALLS.append(1) or 0
  return bench.bench_jax(
    "resnet8",
    batch=16,
    num_devices=-1,
    repeats=3,
    steps_per_repeat=2,
    profile_dir=str(tmp_path_factory.mktemp("trace")),
    reference=reference,
  )


def test_bench_reports_times_ratio_compiles_and_memory(result):
  r = result
  assert r["network"] == "resnet8" and r["batch"] == 16 and r["devices"] == jax.device_count()
  assert r["plain_step_s"] > 0 and r["search_iteration_s"] > 0
  assert r["search_over_two_plain_ratio"] == pytest.approx(
    r["search_iteration_s"] / (2 * r["plain_step_s"]), rel=0.01
  )
  assert r["plain_images_per_s"] == pytest.approx(16 / r["plain_step_s"], rel=0.01)
  assert r["plain_compile_s"] > 0 and r["search_compile_s"] > 0
  assert r["plain_memory"]["compiled_argument_bytes"] > 0
  # a new permutation and a new τ (the next epoch) reuse the compiled steps
  assert (
    r["plain_compilations"] == 1 and r["search_compilations"] == 1 and r["pas_compilations"] == 1
  )
  assert r["pas_step_s"] > 0 and r["pas_over_plain_ratio"] == pytest.approx(
    r["pas_step_s"] / r["plain_step_in_turns_with_pas_s"], rel=0.01
  )
  assert r["compilations_after_epoch_boundary"] == 0
  assert r["host_transfers_in_step_loop"] == 0
  # the same plain step compiled with XLA's default options, the "before" of the CPU options
  assert r["compiler_options"] == parallel.compiler_options() != {}
  assert r["plain_step_xla_defaults_s"] > 0
  assert r["xla_defaults_over_tuned_ratio"] == pytest.approx(
    r["plain_step_xla_defaults_s"] / r["plain_step_s"], rel=0.01
  )


def test_reference_step_is_timed_in_turns_with_the_plain_step(result):
  ref = result["reference"]
  assert len(REFERENCE_CALLS) == 3 * 2  # repeats x steps, no warm-up of its own
  assert len(ref["repeats_s"]) == len(result["plain_repeats_s"]) == 3
  assert ref["step_s"] == pytest.approx(sorted(ref["repeats_s"])[1], abs=1e-4)  # the median


def test_profile_says_where_the_time_goes(result):
  for name in ("plain_profile", "search_profile"):
    p = result[name]
    assert p["thread_ms_per_call"] > 0 and p["by_kind"] and p["top_ops"]
    shares = [k["share"] for k in p["by_kind"]]
    assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1.0001
    kinds = {k["op"] for k in p["by_kind"]}
    if jax.device_count() == 1:  # the network's convolutions and fusions are what runs
      assert any("conv" in k or "fusion" in k for k in kinds), kinds
    else:  # forced CPU devices share two cores: collectives show up
      assert any("all-reduce" in k or "Rendezvous" in k or "fusion" in k for k in kinds), kinds


def test_transfer_guard_catches_a_host_array_in_the_step():
  """The guard the benchmark relies on does raise on an implicit host-to-device copy."""
  f = jax.jit(lambda x: x + 1)
  f(jax.numpy.ones(3))
  with jax.transfer_guard("disallow"), pytest.raises(Exception, match="[Dd]isallowed"):
    f(np.ones(3, np.float32))


def test_cli_json_line_and_bad_network(capsys):
  """The absl flags as a user writes them, parsed and run in this process."""
  flags = bench.FLAGS
  flags(
    [
      "bench",
      "--network=resnet8",
      "--batch=16",
      "--repeats=1",
      "--steps=1",
      "--json",
      "--notorch",
      "--noxla_defaults",
    ]
  )
  try:
    assert bench.run(flags) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    r = json.loads(line)
    assert any("ratio" in k for k in r) and r["compilations_after_epoch_boundary"] == 0
    assert "plain_step_xla_defaults_s" not in r
    flags(["bench", "--network=resnet21"])
    assert bench.run(flags) == 2
    assert "resnetN" in capsys.readouterr().err
  finally:
    flags.unparse_flags()
