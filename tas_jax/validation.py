"""Checks of single config fields, each failing with the one-line ConfigError that names the field,
its value and what is allowed: shared by `tas_jax.config` and every method's own section."""

from __future__ import annotations

from tas_jax.errors import ConfigError


def fail(field: str, value, allowed: str):
  """Raises the one-line ConfigError naming `config.FIELD=value` and what is allowed."""
  raise ConfigError(f"config.{field}={value!r}: {allowed}")


def _value(c, field: str):
  for part in field.split("."):
    c = c[part]
  return c


def positive(c, field: str, integer: bool = False, zero_ok: bool = False):
  """`config.FIELD` is a number (an integer) > 0 (>= 0 with zero_ok)."""
  value = _value(c, field)
  ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
  if isinstance(value, bool) or not ok_type or value < 0 or (value == 0 and not zero_ok):
    kind = "an integer" if integer else "a number"
    fail(field, value, f"must be {kind} {'>= 0' if zero_ok else '> 0'}")


def fraction(c, field: str):
  """`config.FIELD` is in [0, 1) (a momentum, an Adam beta)."""
  value = _value(c, field)
  if isinstance(value, bool) or not (isinstance(value, (int, float)) and 0 <= value < 1):
    fail(field, value, "must be in [0, 1)")
