"""The project's exceptions. Every message names the problem and the fix."""

from __future__ import annotations


class ScanflowError(Exception):
    """Base class of every error Scanflow raises on purpose."""


class UnknownDatasetError(ScanflowError, ValueError):
    """A dataset name that Scanflow does not know."""


class DatasetNotFoundError(ScanflowError, FileNotFoundError):
    """A known dataset whose files are nowhere Scanflow looked."""


class InvalidBatchError(ScanflowError, ValueError):
    """A batch of images that a model cannot score (shape, dtype, NaN, size)."""


class UnsupportedImageSizeError(ScanflowError, ValueError):
    """An image size no model is built for: a side below `scanflow.models.MIN_IMAGE_SIDE` or above
    `scanflow.models.MAX_IMAGE_SIDE` pixels (larger images are fitted by `scanflow.images.model_contract`)."""


class UnknownCorruptionError(ScanflowError, ValueError):
    """A corruption name that is not in the registry."""


class NotFittedError(ScanflowError, RuntimeError):
    """A detector or model used before it was fitted."""


class ModelNotFoundError(ScanflowError, LookupError):
    """A registered model name or alias that the registry does not hold."""


class ChampionMismatchError(ScanflowError):
    """A training that would replace a champion trained on another dataset, class set or input shape (`--force`
    replaces it anyway)."""


class UnusableVersionError(ScanflowError, LookupError):
    """A registered version that may not become champion: its logging did not finish, or nobody judged it."""


class ServiceUnavailableError(ScanflowError):
    """A server a command needs (the Prefect API, MLflow, S3) is not set or does not answer; `scanflow` exits 3 on it."""


class TrackingUnavailableError(ServiceUnavailableError, ConnectionError):
    """The MLflow tracking server (or the artifact store behind it) cannot be reached, or did not answer within the
    bounded retries (MLFLOW_HTTP_REQUEST_TIMEOUT, MLFLOW_HTTP_REQUEST_MAX_RETRIES)."""


class StorageUnavailableError(ServiceUnavailableError, ConnectionError):
    """The S3 endpoint cannot be reached, refuses the credentials, or lacks the bucket."""


def worth_retrying(error: BaseException) -> bool:
    """Whether an I/O step that failed with `error` may succeed if tried again: a server that did not answer
    (ConnectionError, TimeoutError) or an error Scanflow does not know; not a ScanflowError, neither one naming a
    user's mistake (an unknown model, a bad batch), which fails the same way every time, nor a ServiceUnavailableError,
    raised once the client's own bounded retries with backoff are spent (trying those again multiplies the wait)."""
    if isinstance(error, ServiceUnavailableError):
        return False
    if isinstance(error, (ConnectionError, TimeoutError)):
        return True
    return not isinstance(error, ScanflowError)
