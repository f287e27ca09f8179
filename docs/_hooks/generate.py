"""MkDocs hook: the pages written from one source elsewhere, generated at every build so that
they cannot drift — the config reference from the field help `python -m tas_jax.config` prints
(`tas_jax.config.describe`), and the Results and Benchmarks pages from RESULTS.md and
BENCHMARKS.md at the repository's root."""

from __future__ import annotations

import os
import sys

from mkdocs.structure.files import File

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def config_reference() -> str:
  sys.path.insert(0, ROOT)
  from tas_jax import config as config_lib

  rows = config_lib.describe(config_lib.base_config())
  out = [
    "# Config fields",
    "",
    "Every field of `tas_jax.config.base_config()`, its default and what it means: the same text",
    "`python -m tas_jax.config` prints (add `--config=configs/FILE.py` to see a config's values).",
    "Override any of them on the command line, `--config.teacher.lr=0.05`, or edit the",
    "`ConfigDict` in a notebook. This page is generated from `tas_jax/config.py` at every build.",
    "",
  ]
  section = None
  for name, value, text in rows:
    group = name.split(".")[0] if "." in name else "top level"
    if group != section:
      section = group
      out += ["", f"## {group}", "", "| field | default | meaning |", "|---|---|---|"]
    cell = text.replace("|", "\\|")
    out.append(f"| `{name}` | `{value!r}` | {cell} |".replace("`''`", "`''`"))
  return "\n".join(out) + "\n"


def from_root(name: str, title: str) -> str:
  with open(os.path.join(ROOT, name)) as f:
    text = f.read()
  note = f"*This page is `{name}` at the repository's root, rendered at every build.*\n\n"
  first, _, rest = text.partition("\n")
  return f"# {title}\n\n{note}{rest}" if first.startswith("# ") else f"# {title}\n\n{note}{text}"


def on_files(files, config):
  generated = {
    "reference/config.md": config_reference(),
    "results.md": from_root("RESULTS.md", "Results"),
    "benchmarks.md": from_root("BENCHMARKS.md", "Benchmarks"),
  }
  for uri, content in generated.items():
    files.append(File.generated(config, uri, content=content))
  return files
