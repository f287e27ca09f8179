"""The documentation is checked like code: the shell blocks marked `<!-- runnable -->` in the
Quickstart and the guides run as written (with tiny overrides appended to each `tas_jax.main`
command, and `runs/` moved into a temporary folder), so the docs cannot drift from the CLI; the
site builds with `--strict` (a broken link, a missing page or API reference fails; `.ci/run` builds
it too) and its pages hold their title and every asset they reference."""

import os
import re
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
RUNNABLE = re.compile(r"<!-- runnable -->\s*\n```bash\n(.*?)```", re.S)
TINY = {  # as tests/test_compilation.py's: a depth-8 ResNet on 200 images, one epoch per stage
  "data.train_examples": 200,
  "model.depth": 8,
  "teacher.warmup_epochs": 0,
  "teacher.cosine_epochs": 1,
  "teacher.batch_size": 50,
  "search.epochs": 1,
  "search.batch_size": 50,
  "distill.warmup_epochs": 0,
  "distill.cosine_epochs": 1,
  "distill.batch_size": 50,
  "l1.finetune_epochs": 1,
  "fpgm.finetune_epochs": 1,
  "pipeline.throughput_batch": 32,
  "pipeline.throughput_repeats": 2,
}


def runnable_commands(text: str) -> list[str]:
  """The commands of every `<!-- runnable -->` bash block: continuation lines joined, comments
  and blank lines left out."""
  commands = []
  for block in RUNNABLE.findall(text):
    for line in block.replace("\\\n", " ").splitlines():
      line = line.split(" #")[0].strip()
      if line and not line.startswith("#"):
        commands.append(" ".join(line.split()))
  return commands


def shrunk(command: str, runs: str) -> list[str]:
  """The command as the test runs it: `runs/` under `runs`, tiny overrides after `tas_jax.main`."""
  argv = [a.replace("runs/", f"{runs}/") for a in shlex.split(command)]
  if argv[:3] == ["python", "-m", "tas_jax.main"]:
    given = {a.split("=")[0] for a in argv}
    argv += [f"--config.{k}={v}" for k, v in TINY.items() if f"--config.{k}" not in given]
  if argv[0] == "python":
    argv[0] = sys.executable
  return argv


def _pages() -> list[str]:
  pages = [os.path.join(DOCS, "quickstart.md")]
  guides = os.path.join(DOCS, "guides")
  pages += sorted(os.path.join(guides, f) for f in os.listdir(guides) if f.endswith(".md"))
  return pages


def test_runnable_blocks_are_found_and_shrunk():
  text = (
    "<!-- runnable -->\n```bash\npython -m tas_jax.main --config=c.py \\\n  --workdir=runs/x  # a\n"
    "# only a comment\n```\n```bash\nnot marked\n```"
  )
  assert runnable_commands(text) == ["python -m tas_jax.main --config=c.py --workdir=runs/x"]
  argv = shrunk("python -m tas_jax.main --workdir=runs/x --config.model.depth=14", "/t")
  assert argv[:4] == [sys.executable, "-m", "tas_jax.main", "--workdir=/t/x"]
  assert "--config.model.depth=14" in argv and "--config.model.depth=8" not in argv
  assert "--config.data.train_examples=200" in argv


def _run_page(page: str, runs) -> list[str]:
  """Runs the page's runnable commands in order; returns them as run."""
  with open(page) as f:
    commands = runnable_commands(f.read())
  assert commands, f"{page} has no runnable block"
  for command in commands:
    done = subprocess.run(
      shrunk(command, str(runs)),
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=600,
      env={**os.environ, "PYTHONPATH": ROOT, "XLA_FLAGS": "", "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert done.returncode == 0, f"{os.path.relpath(page, ROOT)}: {command}\n{done.stderr[-3000:]}"
  print(f"ran ({os.path.relpath(page, ROOT)}):\n" + "\n".join(commands))
  return commands


@pytest.mark.children  # python -m tas_jax.main in child processes
def test_the_quickstarts_commands_run(tmp_path):
  _run_page(os.path.join(DOCS, "quickstart.md"), tmp_path / "runs")
  results = (tmp_path / "runs" / "stages" / "results.md").read_text()
  assert "teacher (unpruned)" in results and "TAS + KD" in results


GUIDES = [
  p for p in _pages() if os.path.basename(p) != "quickstart.md" and RUNNABLE.search(open(p).read())
]


@pytest.mark.guides  # child processes on one device each, in the 8-device pass
@pytest.mark.parametrize("page", GUIDES, ids=lambda p: os.path.basename(p)[:-3])
def test_the_guides_runnable_commands_run(page, tmp_path):
  _run_page(page, tmp_path / "runs")


def test_every_guide_with_runnable_commands_is_run():
  assert {os.path.basename(p) for p in GUIDES} >= {"own-model.md", "resuming.md"}


def _local_references(html: str) -> list[str]:
  """The files a page loads from the site itself: stylesheets, scripts, images, icons."""
  found = re.findall(r'(?:src|href)="([^"#?]+)[^"]*"', html)
  return [
    r
    for r in found
    if not r.startswith(("http:", "https:", "mailto:", "data:", "//"))
    and re.search(r"\.(css|js|png|svg|ico|woff2?|jpg|json)$", r)
  ]


def test_the_built_site_has_its_pages_titles_and_assets(tmp_path):
  site = tmp_path / "site"
  built = subprocess.run(
    [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
    cwd=ROOT,
    capture_output=True,
    text=True,
    env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
  )
  assert built.returncode == 0, built.stderr[-3000:]
  pages = {
    "index.html": "tas_jax",
    "quickstart/index.html": "Quickstart",
    "concepts/tas/index.html": "TAS - tas_jax",
    "guides/own-model/index.html": "Pruning your own Flax model",
    "reference/config/index.html": "Config fields",
    "reference/api/index.html": "Python API",
    "results/index.html": "Results",
    "benchmarks/index.html": "Benchmarks",
  }
  for page, title in pages.items():
    html = (site / page).read_text()
    assert re.search(rf"<title>{re.escape(title)}\b", html), (page, html[:300])
    for ref in _local_references(html):
      target = os.path.normpath(os.path.join(site, os.path.dirname(page), ref))
      assert os.path.isfile(target), f"{page} loads {ref}, which the site does not hold"
  # one source: the config reference holds every field `python -m tas_jax.config` prints
  from tas_jax import config as config_lib

  reference = (site / "reference/config/index.html").read_text()
  names = [name for name, _, _ in config_lib.describe(config_lib.base_config())]
  assert all(f"<code>{name}</code>" in reference for name in names)
  assert "tas_jax.compilation.KeptStep" in (site / "reference/api/index.html").read_text()
