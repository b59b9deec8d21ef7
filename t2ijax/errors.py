"""Errors a user can cause. Each message names the problem and the fix."""


class T2IError(Exception):
  """Base class of errors caused by input, configuration or data."""


class DataLayoutError(T2IError):
  """A data directory is missing or does not have the expected layout."""


class CorruptImageError(T2IError):
  """An image file cannot be decoded."""


class CaptionError(T2IError):
  """A caption is empty or cannot be encoded with the vocabulary."""


class ConfigError(T2IError):
  """A configuration value is invalid or inconsistent."""


class CheckpointError(T2IError):
  """A checkpoint is missing or does not match the model being restored."""


class NonFiniteError(T2IError):
  """Training produced NaN or Inf; the last good checkpoint is left intact."""
