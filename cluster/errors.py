"""The error types quantsweep raises for people (as opposed to bugs).

The CLI prints a `QuantsweepError` on one line and exits non-zero without a traceback; anything
else is a bug and keeps its traceback.
"""


class QuantsweepError(Exception):
    """Base class for mistakes a user can fix (bad config, missing path, unsupported request)."""


class ConfigError(QuantsweepError):
    """A sweep or conf/ file is malformed: unknown key, wrong type, unknown name, missing path."""


class StageError(QuantsweepError):
    """A stage could not run for a reason the user can act on (e.g. hardware lacks a format)."""
