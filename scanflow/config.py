"""Settings as plain dataclasses (Prefect Blocks turn into these), and the environment defaults Scanflow applies.

Telemetry of every dependency is off unless the user has set the variable themselves: Scanflow's own
environment defaults are applied with `setdefault`, never overriding an explicit choice.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace, field
from pathlib import Path

ENVIRONMENT_DEFAULTS: dict[str, str] = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "EVIDENTLY_DISABLE_TELEMETRY": "1",
    # A temporary Prefect server takes 20-40 s to start on a 2-core machine; Prefect's default wait is 20 s.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    # MLflow's HTTP client: each request waits at most 20 s for an answer and is tried 3 more times, 0 + 2 + 4 s
    # apart (plus up to 0.5 s jitter each). MLflow's defaults (120 s, 7 retries, factor 2: minutes of backoff per
    # call) made a stopped server, or a server whose artifact store is stopped, look like a hang for 17 minutes.
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    # Download progress bars are noise in logs.
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    # Prefect's client: 30 s per request (default 60). Its 5 retries (2 + 4 + 8 + 16 + 32 s) stay: they carry a
    # paused run across a restart of its server, and a server that is down at the start of a command
    # is refused at once (Prefect retries connection errors only once it has connected).
    "PREFECT_API_REQUEST_TIMEOUT": "30",
}

#: Bounded S3 retries for every boto3 client in a process given `StorageConfig.environment()` (an MLflow server
#: proxying artifacts, a worker): botocore's default "legacy" mode makes 5 attempts, 7 s against a stopped endpoint,
#: which an MLflow server spends on each request its own clients then retry.
S3_RETRY_ENVIRONMENT = {"AWS_RETRY_MODE": "standard", "AWS_MAX_ATTEMPTS": "3"}

#: The CLI commands the warm runner takes (`scanflow runner start`, `scanflow.warm`); every other one runs in the
#: command's own process.
WARM_COMMANDS = ("detect", "predict")

DEFAULT_EXPERIMENT = "scanflow"
DEFAULT_CLASSIFIER_NAME = "scanflow-classifier"
DEFAULT_AUTOENCODER_NAME = "scanflow-autoencoder"
CHAMPION_ALIAS = "champion"
CHALLENGER_ALIAS = "challenger"
#: How often `scanflow serve` asks the Prefect server for runs to start, in seconds. Prefect's default (10 s) would
#: leave each step of a supervise loop run as deployments waiting 5 s on average before it starts.
SERVE_POLL_S = 2
#: Optimisation steps of one retraining round, and of a filter's denoiser, unless a decision says otherwise
#: (`scanflow improve --steps`).
RETRAIN_STEPS = 300
DENOISER_STEPS = 500


def apply_environment_defaults() -> None:
    """Set Scanflow's defaults for variables the user has not set (telemetry off, startup timeouts)."""
    for name, value in ENVIRONMENT_DEFAULTS.items():
        os.environ.setdefault(name, value)


def default_tracking_uri(workdir: Path | None = None) -> str:
    """A local SQLite MLflow store in the working directory (MLflow 3.17+ refuses its old file store)."""
    return f"sqlite:///{((workdir or Path.cwd()) / 'mlflow.db').resolve()}"


@dataclass(frozen=True)
class TrackingConfig:
    """Where runs and models go: tracking URI, experiment name and the registered model names."""

    tracking_uri: str
    experiment_name: str = DEFAULT_EXPERIMENT
    classifier_name: str = DEFAULT_CLASSIFIER_NAME
    autoencoder_name: str = DEFAULT_AUTOENCODER_NAME

    @classmethod
    def from_env(cls) -> "TrackingConfig":
        """`MLFLOW_TRACKING_URI` (default: `./mlflow.db`), `SCANFLOW_EXPERIMENT`, `SCANFLOW_MODEL_NAME`."""
        classifier = os.environ.get("SCANFLOW_MODEL_NAME", DEFAULT_CLASSIFIER_NAME)
        return cls(
            tracking_uri=os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(),
            experiment_name=os.environ.get("SCANFLOW_EXPERIMENT", DEFAULT_EXPERIMENT),
            classifier_name=classifier,
            autoencoder_name=os.environ.get("SCANFLOW_AUTOENCODER_NAME", f"{classifier.removesuffix('-classifier')}-autoencoder"),
        )

    def for_model(self, classifier_name: str) -> "TrackingConfig":
        """This configuration for another registered classifier, with the autoencoder name `from_env` would give it."""
        return replace(self, classifier_name=classifier_name,
                       autoencoder_name=f"{classifier_name.removesuffix('-classifier')}-autoencoder")

    def environment(self) -> dict[str, str]:
        """The variables `from_env` reads, for child processes (workers, containers) that must track to the same place."""
        return {
            "MLFLOW_TRACKING_URI": self.tracking_uri,
            "SCANFLOW_EXPERIMENT": self.experiment_name,
            "SCANFLOW_MODEL_NAME": self.classifier_name,
            "SCANFLOW_AUTOENCODER_NAME": self.autoencoder_name,
        }

    @property
    def artifact_root(self) -> str | None:
        """For a local SQLite store, artifacts go beside the database (`mlartifacts/`); servers choose their own."""
        if self.tracking_uri.startswith("sqlite:///"):
            return (Path(self.tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
        return None


@dataclass(frozen=True)
class StorageConfig:
    """An S3 bucket (any S3-compatible server: AWS, SeaweedFS, MinIO) and the key prefix Scanflow writes under.

    `endpoint_url` None means AWS itself; credentials None means boto3's own chain (environment, profile, role).
    The secret stays out of `repr`.
    """

    bucket: str
    endpoint_url: str | None = None
    region_name: str = "us-east-1"
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    prefix: str = "scanflow"

    @classmethod
    def from_env(cls) -> "StorageConfig | None":
        """`SCANFLOW_S3_BUCKET` (None when unset), `SCANFLOW_S3_PREFIX`, the endpoint from `AWS_ENDPOINT_URL_S3`,
        `AWS_ENDPOINT_URL` or `MLFLOW_S3_ENDPOINT_URL`, and the standard `AWS_*` credential variables."""
        bucket = os.environ.get("SCANFLOW_S3_BUCKET", "").strip()
        if not bucket:
            return None
        endpoint = next((os.environ[k] for k in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL") if os.environ.get(k)), None)
        return cls(
            bucket=bucket,
            endpoint_url=endpoint,
            region_name=os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1",
            access_key_id=os.environ.get("AWS_ACCESS_KEY_ID"),
            secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY"),
            prefix=os.environ.get("SCANFLOW_S3_PREFIX", "scanflow"),
        )

    def environment(self) -> dict[str, str]:
        """The variables that point boto3, MLflow and child processes (workers, containers) at this bucket."""
        env = {"SCANFLOW_S3_BUCKET": self.bucket, "SCANFLOW_S3_PREFIX": self.prefix, "AWS_DEFAULT_REGION": self.region_name,
               **S3_RETRY_ENVIRONMENT}
        if self.endpoint_url:
            env.update(AWS_ENDPOINT_URL_S3=self.endpoint_url, MLFLOW_S3_ENDPOINT_URL=self.endpoint_url)
        if self.access_key_id:
            env["AWS_ACCESS_KEY_ID"] = self.access_key_id
        if self.secret_access_key:
            env["AWS_SECRET_ACCESS_KEY"] = self.secret_access_key
        return env
