"""The exceptions deployft raises, all under one base class.

    DeployftError                  base: the CLI catches this one and prints `Error: <message>`
    ├── UsageError (ValueError)    bad input the user can fix: a flag, a value, a config file
    │   ├── DataError              a data file: missing, empty, wrong format, encoding, column, labels
    │   ├── ModelError             a model or RUN folder: missing config, bad weights, unsupported architecture
    │   ├── BundleError            a BUNDLE folder: missing, newer format, modified file, wrong task
    │   └── OutputExistsError      the output folder exists and is not empty (pass --overwrite)
    ├── MissingDependencyError (ImportError)   an optional package is not installed; the message has the install command
    ├── DeviceError (RuntimeError) the requested device is not what ONNX Runtime actually runs on
    ├── AccuracyBudgetError        a quantized model lost more accuracy than allowed; no bundle written
    └── StageError                 a pipeline stage failed for a reason outside the user's input

Every message says what was expected, what was found, and the fix, on one line.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = [
    "AccuracyBudgetError",
    "BundleError",
    "DataError",
    "DeployftError",
    "DeviceError",
    "MissingDependencyError",
    "ModelError",
    "OutputExistsError",
    "StageError",
    "UsageError",
    "first_line",
    "reraise_as",
]


class DeployftError(Exception):
    """Base class of every error deployft raises on purpose."""


class UsageError(DeployftError, ValueError):
    """Bad input that the user can fix: a flag, a value, a config file."""


class DataError(UsageError):
    """A data file cannot be used: missing, empty, unreadable, wrong columns or labels."""


class ModelError(UsageError):
    """A model or RUN folder cannot be used."""


class BundleError(UsageError):
    """A BUNDLE folder cannot be used."""


class OutputExistsError(UsageError):
    """The output folder exists and is not empty."""


class MissingDependencyError(DeployftError, ImportError):
    """An optional package is missing; the message carries the install command."""


class DeviceError(DeployftError, RuntimeError):
    """The requested device is not the one ONNX Runtime really runs on."""


class AccuracyBudgetError(DeployftError):
    """A quantized model lost more accuracy than the budget allows.

    `budget` is the allowed drop, its unit and where it came from (`{"max_drop", "measure", "origin"}`);
    `attempts` the drop of every try
    (`[{"remedy", "drop", "guard"}]`), so a caller can report them without parsing the message.
    """

    def __init__(self, message: str, budget: dict | None = None, attempts: list[dict] | None = None):
        super().__init__(message)
        self.budget = budget or {}
        self.attempts = list(attempts or [])


class StageError(DeployftError):
    """A stage failed for a reason outside the user's input (the message says which stage)."""


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type name when the message is empty."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


@contextlib.contextmanager
def reraise_as(error: type[DeployftError], message: str,
               catch: type[BaseException] | tuple[type[BaseException], ...] = Exception) -> Iterator[None]:
    """Turn what a library raises inside the block into `error`, in one line.

    `message` may hold `{reason}`: the library's first line. A DeployftError passes through unchanged, so
    nested blocks keep the innermost, most precise message.

        with reraise_as(ModelError, f"cannot load the weights in {folder} ({{reason}}); re-run deployft finetune"):
            model = cls.from_pretrained(folder)
    """
    try:
        yield
    except DeployftError:
        raise
    except catch as exc:
        raise error(message.replace("{reason}", first_line(exc))) from exc


def require(module: str, extra: str = "train"):
    """Import an optional module, or raise MissingDependencyError with the install command."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        package = module.split(".")[0].replace("_", "-")
        raise MissingDependencyError(
            f"{package} is not installed; install it with: pip install \"deployft[{extra}]\""
        ) from exc
