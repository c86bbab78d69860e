"""Small checks of config values, shared by the driver's start-up validation and the objectives'
own checks (``diffusion.objectives``). Each failure is a ``ConfigError`` (a ValueError) whose
message is one line naming the field (``config.<field>``), the bad value and what is accepted.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence


class ConfigError(ValueError):
  """A config field or the workdir is unusable; the message is one line naming it."""

  def __init__(self, message: str):
    super().__init__(" ".join(str(message).split()))


# -- generic field checks ------------------------------------------------------------------------


def one_of(field: str, value: Any, accepted: Sequence[Any]) -> None:
  """``value`` must be one of ``accepted``."""
  if value not in tuple(accepted):
    raise ConfigError(f"config.{field}={value!r} is not accepted; accepted: {list(accepted)}")


def is_bool(field: str, value: Any) -> None:
  """``value`` must be True or False."""
  if not isinstance(value, bool):
    raise ConfigError(f"config.{field}={value!r} must be True or False")


def int_at_least(field: str, value: Any, lo: int) -> None:
  """``value`` must be an int (not a bool) >= ``lo``."""
  if isinstance(value, bool) or not isinstance(value, int) or value < lo:
    raise ConfigError(f"config.{field}={value!r} must be an integer >= {lo}")


def number_in(field: str, value: Any, lo: float, hi: float = math.inf, *,
              lo_open: bool = False, hi_open: bool = False) -> None:
  """``value`` must be a finite real number in the interval [lo, hi] (ends open as asked)."""
  ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        and (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi))
  if not ok:
    interval = (("(" if lo_open else "[") + f"{lo}, {hi}" + (")" if hi_open else "]"))
    raise ConfigError(f"config.{field}={value!r} must be a finite number in {interval}")


def positive(field: str, value: Any) -> None:
  """``value`` must be a finite number > 0."""
  number_in(field, value, 0.0, lo_open=True)


def from_library(field: str, fn: Callable[..., Any], *args, **kwargs) -> Any:
  """Calls a library constructor or checker; its ValueError / TypeError (a refused argument)
  becomes a ConfigError naming ``field``."""
  try:
    return fn(*args, **kwargs)
  except (ValueError, TypeError) as e:
    raise ConfigError(f"config.{field}: {e}") from None
