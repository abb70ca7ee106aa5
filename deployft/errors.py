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
    """A quantized model lost more accuracy than the budget allows."""


class StageError(DeployftError):
    """A stage failed for a reason outside the user's input (the message says which stage)."""


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
