"""One error hierarchy for the whole project.

Every message is one line that names what was wrong and what is valid. The CLI maps `UsageError`s to exit
code 2 and everything else to 1; the server (later) maps them to HTTP statuses in one place.
"""

from __future__ import annotations


class AipcError(Exception):
    """Base of every error aipc raises on purpose."""

    exit_code = 1


class UsageError(AipcError):
    """The caller asked for something invalid: a bad option, an unknown name, a missing file."""

    exit_code = 2


class InvalidConfigError(UsageError):
    """A generation or load option is out of its valid range."""


class ModelNotFoundError(UsageError):
    """The model is neither in the catalog, nor a local path, nor reachable."""


class DeviceNotAvailableError(UsageError):
    """The device asked for is not present for the chosen backend."""


class BackendUnavailableError(UsageError):
    """The backend asked for is unknown, or its runtime package is not installed."""


class ContextLengthError(UsageError):
    """The prompt does not fit the model's (or the device pipeline's) context."""

    def __init__(self, message: str, *, limit: int, requested: int) -> None:
        super().__init__(message)
        self.limit = limit
        self.requested = requested


class ConversionError(AipcError):
    """Turning a model into a backend's format failed."""


class GenerationError(AipcError):
    """The runtime failed while generating."""
