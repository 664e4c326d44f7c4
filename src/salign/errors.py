"""Exception classes of salign.

Every error raised on bad user input is a :class:`SalignError` and also a subclass of the
built-in exception a Python user would expect (``ValueError``, ``TypeError``,
``FileNotFoundError``), so ``except ValueError`` keeps working. The CLI prints these as one
line and exits non-zero; anything else is a bug and shows a traceback.
"""

from __future__ import annotations


class SalignError(Exception):
    """Base class of every error salign raises on purpose."""


class InputError(SalignError, ValueError):
    """A tensor argument has the wrong shape, range, values or device."""


class InputTypeError(SalignError, TypeError):
    """An argument has the wrong type or dtype."""


class ConfigError(SalignError, ValueError):
    """A configuration file or option is invalid (unknown key, wrong type, bad value)."""


class CheckpointError(SalignError, ValueError):
    """A checkpoint is missing, corrupt, unsafe to load, or for another architecture."""


class DataError(SalignError, ValueError):
    """A dataset is unavailable, corrupt, or fails its integrity check."""


class MissingFileError(SalignError, FileNotFoundError):
    """A file or directory the user named does not exist."""


class MissingDependencyError(SalignError, ImportError):
    """An optional dependency (an extra) is not installed."""


class ModelOutputError(SalignError, ValueError):
    """The model returned something that is not an (N, K) tensor of finite logits."""


class TrainingError(SalignError, RuntimeError):
    """Training or evaluation cannot go on (a non-finite loss: the last good state is kept on disk;
    out of memory even one image at a time)."""


def describe_error(exc: BaseException) -> str:
    """``"Type: first line of the message"``: a foreign exception in one line, for the messages
    of the errors above (the original stays chained, so ``--debug`` shows its traceback)."""
    text = str(exc).strip()
    name = type(exc).__name__
    return f"{name}: {text.splitlines()[0]}" if text else name
