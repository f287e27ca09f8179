"""The errors a user can cause and fix; the entry point prints each as one line ("error: …").

Architecture and data errors live with their modules (`tas_jax.models.arch.ArchError`,
`tas_jax.data.datasets.DataNotFoundError`, `BadDataError`); `tas_jax.commands.USER_ERRORS` lists all
of them.
"""


class ConfigError(ValueError):
  """A config value that cannot work; the message is one line: field, value, what is allowed."""


class CheckpointNotFoundError(FileNotFoundError):
  """A later stage needs an earlier stage's output that is not there; the message says which
  command makes it."""
