"""Stage records: a rerun with settings that change a stage's result stops with one line naming the
fields; settings that do not are accepted; `overwrite` deletes the stage and the stages that read
it. Workdirs are built by hand (a summary.json marks a finished stage): no training here."""

import json
import os

import pytest

from tas_jax import config as config_lib, workdir as layout
from tas_jax.stages import records


def demo_like():
  c = config_lib.base_config()
  c.stage = "all"
  c.data.name = "embedded"
  c.search.init = "teacher"
  c.pipeline.runs = "tas-kd,uniform-ce,pas-kd"
  return c


def finish(workdir, config, stage):
  """Records `stage` as the pipeline does, then marks it finished."""
  records.check(config, str(workdir), stage)
  directory = layout.stage_dir(str(workdir), stage)
  with open(os.path.join(directory, layout.SUMMARY), "w") as f:
    json.dump({"finished": True}, f)


def distill_config(config, run):
  c = config.copy_and_resolve_references()
  for field, value in config_lib.parse_run(run).items():
    c.distill[field] = value
  return c


@pytest.fixture
def workdir(tmp_path):
  c = demo_like()
  for stage in ("teacher", "search", "extract"):
    finish(tmp_path, c, stage)
  finish(tmp_path, distill_config(c, "tas-kd"), "distill/tas-kd")
  finish(tmp_path, distill_config(c, "uniform-ce"), "distill/uniform-ce")
  return tmp_path


def test_what_each_stage_reads():
  c = demo_like()
  assert records.defining_fields(c, "teacher")[1] == []
  assert records.defining_fields(c, "extract")[1] == ["teacher", "search"]
  assert records.defining_fields(distill_config(c, "tas-kd"), "distill/tas-kd")[1] == [
    "teacher",
    "search",
    "extract",
  ]
  pas = records.defining_fields(distill_config(c, "pas-kd"), "distill/pas-kd")
  assert pas[1] == ["teacher", "search-pas", "extract-pas"]
  assert pas[0]["pas.finetune_lr"] == 0.0256 and pas[0]["target.flop_ratio"] == 0.5
  # the fine-tuning's own fields define the run, not the search
  search_pas = records.defining_fields(c, "search-pas")[0]
  assert "pas.lr" in search_pas and not any(k.startswith("pas.finetune") for k in search_pas)
  # the teacher's fields are only the teacher's (plus seed, data, model); neutral ones are left out
  teacher = records.defining_fields(c, "teacher")[0]
  assert "teacher.lr" in teacher and "data.name" in teacher and "seed" in teacher
  assert not any(k.startswith(("search.", "distill.")) for k in teacher)
  assert "teacher.eval_batch_size" not in teacher and "max_steps_per_run" not in teacher
  c.search.init = "scratch"  # a search from scratch does not read the teacher
  assert records.defining_fields(c, "search")[1] == []
  ce = records.defining_fields(distill_config(c, "uniform-ce"), "distill/uniform-ce")
  assert ce[1] == ["search", "extract"] and "distill.kd_alpha" not in ce[0]


def test_a_changed_result_field_stops_with_one_line(workdir):
  c = demo_like()
  c.target.flop_ratio = 0.3
  with pytest.raises(records.StageMismatchError) as e:
    records.check(c, str(workdir), "search")
  message = str(e.value)
  assert "\n" not in message
  assert message == (
    f"{workdir}/search holds a result made with other settings: target.flop_ratio=0.5 (now 0.3). "
    "Use a new --workdir, or add --config.overwrite=search to delete it and the 3 stage(s) that "
    "read it and run it again"
  )
  # a downstream stage finds the difference in a stage it reads
  with pytest.raises(records.StageMismatchError, match=r"/search holds .*flop_ratio"):
    records.check(distill_config(c, "tas-kd"), str(workdir), "distill/tas-kd")
  c = demo_like()
  c.teacher.cosine_epochs, c.seed = 5, 1
  with pytest.raises(
    records.StageMismatchError,
    match=r"/teacher holds .*seed=0 \(now 1\), teacher\.cosine_epochs=300 \(now 5\)",
  ):
    records.check(distill_config(c, "tas-kd"), str(workdir), "distill/tas-kd")


def test_a_stage_that_is_only_read_is_taken_as_recorded(tmp_path):
  # the teacher was trained with overrides (batch 128, 3 epochs); the search command leaves them out
  made = demo_like()
  made.teacher.batch_size, made.teacher.cosine_epochs = 128, 3
  finish(tmp_path, made, "teacher")
  later = demo_like()
  later.stage = "search"
  config = records.check(later, str(tmp_path), "search", overrides={"stage": "search"})
  assert config is not later and later.teacher.batch_size == 256  # the caller's is untouched
  assert (config.teacher.batch_size, config.teacher.cosine_epochs) == (128, 3)
  record = records.read_record(str(tmp_path / "search"))
  assert record["fields"]["teacher.batch_size"] == 128
  assert record["taken_as_recorded"] == {"teacher.batch_size": 128, "teacher.cosine_epochs": 3}
  # an explicit flag that contradicts the record stops with one line naming it
  later.teacher.batch_size = 64
  with pytest.raises(records.StageMismatchError) as e:
    records.check(later, str(tmp_path), "search", overrides={"teacher.batch_size": 64})
  assert str(e.value) == (
    f"{tmp_path}/teacher holds a result made with other settings: teacher.batch_size=128 (now "
    "64). Leave those flags out to use it as it is, use a new --workdir, or add "
    "--config.overwrite=teacher to delete it and the stages that read it"
  )
  # an explicit flag that agrees is fine; no overrides known (a notebook): every field compared
  later.teacher.batch_size = 128
  assert (
    records.check(
      later, str(tmp_path), "search", overrides={"teacher.batch_size": 128}
    ).teacher.cosine_epochs
    == 3
  )
  with pytest.raises(records.StageMismatchError, match=r"teacher\.cosine_epochs=3 \(now 300\)"):
    records.check(later, str(tmp_path), "search")
  # the stage a command runs is still compared with the config: a rerun of the teacher is refused
  with pytest.raises(records.StageMismatchError, match=r"/teacher holds"):
    records.check(demo_like(), str(tmp_path), "teacher", overrides={})


def test_fields_that_do_not_change_a_result_are_accepted(workdir):
  c = demo_like()
  c.max_steps_per_run, c.log_every_steps, c.checkpoint_every_steps = 5, 3, 10
  c.teacher.eval_batch_size, c.search.eval_batch_size, c.num_devices = 100, 100, 1
  c.data.workers, c.parallel = 4, "pmap"
  c.distill.kd_alpha = 0.5  # uniform-ce trains without KD: alpha is not its field
  for stage in ("teacher", "search", "extract"):
    records.check(c, str(workdir), stage)
  records.check(distill_config(c, "uniform-ce"), str(workdir), "distill/uniform-ce")
  with pytest.raises(records.StageMismatchError, match=r"distill\.kd_alpha=0\.9 \(now 0\.5\)"):
    records.check(distill_config(c, "tas-kd"), str(workdir), "distill/tas-kd")


def test_overwrite_deletes_the_stage_and_its_readers_and_keeps_the_rest(workdir):
  c = demo_like()
  c.target.flop_ratio = 0.3
  c.overwrite = "search"
  config_lib.validate(c)
  records.check(c, str(workdir), "search")
  assert sorted(os.listdir(workdir)) == ["distill", "search", "teacher"]
  assert os.listdir(workdir / "distill") == []
  assert os.listdir(workdir / "search") == [records.RECORD]  # recorded again, with 0.3
  assert records.read_record(str(workdir / "search"))["fields"]["target.flop_ratio"] == 0.3
  # the same command again (an interrupted rerun) keeps what now matches
  finish(workdir, c, "search")
  records.check(c, str(workdir), "search")
  assert os.path.exists(workdir / "search" / layout.SUMMARY)


def test_a_stage_without_a_result_takes_the_new_settings(tmp_path):
  c = demo_like()
  records.check(c, str(tmp_path), "teacher")  # started, no checkpoint yet
  c.teacher.lr = 0.05
  records.check(c, str(tmp_path), "teacher")
  assert records.read_record(str(tmp_path / "teacher"))["fields"]["teacher.lr"] == 0.05


def test_overwrite_values_are_validated():
  c = demo_like()
  c.overwrite = "distill/tas-kd, search-pas"
  config_lib.validate(c)
  c.overwrite = "teachers"
  with pytest.raises(config_lib.ConfigError, match="config.overwrite='teachers': comma-separated"):
    config_lib.validate(c)


def test_a_record_written_before_a_rename_is_read_under_the_new_name():
  """Workdirs from before config.target: their records say search.flop_ratio."""
  assert records._differences(
    {"search.flop_ratio": 0.5, "seed": 0}, {"target.flop_ratio": 0.3, "seed": 0}
  ) == ["target.flop_ratio=0.5 (now 0.3)"]
  assert records._differences({"search.tolerance": 0.05}, {"target.tolerance": 0.05}) == []


def test_extraction_takes_the_variant_from_the_search_record(tmp_path):
  """The argmax pins what a variant does not search: the search's own record decides, and a
  config asking for another variant is refused before anything is read."""
  from tas_jax.errors import ConfigError
  from tas_jax.methods.tas import extract

  search_dir = tmp_path / "search"
  search_dir.mkdir()
  (search_dir / records.RECORD).write_text(json.dumps({"fields": {"search.variant": "width"}}))
  c = config_lib.base_config()
  with pytest.raises(
    ConfigError,
    match=r"search\.variant='tas', but the search in .* ran variant "
    r"'width': extract with --config\.search\.variant=width",
  ):
    extract.extract(c, str(tmp_path))
  c.search.variant = "width"
  assert extract.searched_variant(c, str(tmp_path)) == "width"
