"""The driver's error for an unusable config field or workdir (no dependencies: every layer of
experiments/ may raise it)."""


class ConfigError(ValueError):
  """A config field or the workdir is unusable; the message is one line naming it."""

  def __init__(self, message: str):
    super().__init__(" ".join(str(message).split()))
