"""Settings as plain dataclasses (Prefect Blocks turn into these), and the environment defaults Scanflow applies.

Telemetry of every dependency is off unless the user has set the variable themselves: Scanflow's own
environment defaults are applied with `setdefault`, never overriding an explicit choice.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ENVIRONMENT_DEFAULTS: dict[str, str] = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "EVIDENTLY_DISABLE_TELEMETRY": "1",
    # A temporary Prefect server takes 20-40 s to start on a 2-core machine; Prefect's default wait is 20 s.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
}

DEFAULT_EXPERIMENT = "scanflow"
DEFAULT_CLASSIFIER_NAME = "scanflow-classifier"
DEFAULT_AUTOENCODER_NAME = "scanflow-autoencoder"
CHAMPION_ALIAS = "champion"
CHALLENGER_ALIAS = "challenger"


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

    @property
    def artifact_root(self) -> str | None:
        """For a local SQLite store, artifacts go beside the database (`mlartifacts/`); servers choose their own."""
        if self.tracking_uri.startswith("sqlite:///"):
            return (Path(self.tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
        return None
