"""The package's own exceptions: every user-facing failure says what was wrong and what to do."""

from __future__ import annotations


class EdgeSmwError(Exception):
    """Base class; the CLI prints these as one clear line instead of a traceback."""


class InputError(EdgeSmwError, ValueError):
    """Bad input from the user: a file, a value, a folder. The message names it."""


class ImageReadError(InputError):
    """An image file that cannot be decoded."""

    def __init__(self, path: object, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class DataError(InputError):
    """A data set that cannot be trained or evaluated on (too few levels, empty level...)."""


class ModelError(EdgeSmwError, RuntimeError):
    """A model or checkpoint that is missing, corrupt, or not an edge-smw model."""


class BackendUnavailableError(EdgeSmwError, RuntimeError):
    """An optional backend (TensorRT, CUDA) whose library or device is missing here."""


class OfflineError(EdgeSmwError, RuntimeError):
    """Something had to be downloaded and the network is unreachable."""


class GateFailure(EdgeSmwError, RuntimeError):
    """A measured figure fell short of its required threshold (export parity, bench gates)."""
