"""The `MLflowTracking` block: where runs are tracked and models registered."""

from __future__ import annotations

from typing import Optional

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from scanflow.config import DEFAULT_CLASSIFIER_NAME, DEFAULT_EXPERIMENT, TrackingConfig, default_tracking_uri


class MLflowTracking(Block):
    """An MLflow tracking server or store, the experiment Scanflow's runs go to, and the registered model names of
    the classifier (the champion/challenger aliases live on it) and its autoencoder."""

    _block_type_name = "Scanflow MLflow Tracking"
    _block_type_slug = "scanflow-mlflow-tracking"
    _documentation_url = "https://mlflow.org/docs/latest/tracking.html"
    _code_example = """
    from blocks import MLflowTracking

    tracking = MLflowTracking.load("BLOCK_NAME")
    config = tracking.config()   # scanflow.config.TrackingConfig, what every flow and scanflow.tracking take
    """

    tracking_uri: str = Field(
        default_factory=default_tracking_uri,
        description="MLflow tracking URI, e.g. http://127.0.0.1:5000 or sqlite:////abs/path/mlflow.db.",
    )
    experiment_name: str = Field(default=DEFAULT_EXPERIMENT, description="MLflow experiment of every Scanflow run.")
    classifier_name: str = Field(
        default=DEFAULT_CLASSIFIER_NAME, description="Registered model name of the classifier (holds the champion alias)."
    )
    autoencoder_name: Optional[str] = Field(
        default=None, description="Registered model name of the autoencoder; empty means the classifier's name with -autoencoder."
    )
    username: Optional[str] = Field(
        default=None, description="User of an MLflow server that asks for one (its basic-auth app); empty: none or the environment's."
    )
    password: Optional[SecretStr] = Field(default=None, description="That user's password (kept secret by Prefect).")

    def config(self) -> TrackingConfig:
        """The plain settings the library takes."""
        autoencoder = self.autoencoder_name or f"{self.classifier_name.removesuffix('-classifier')}-autoencoder"
        return TrackingConfig(tracking_uri=self.tracking_uri, experiment_name=self.experiment_name,
                              classifier_name=self.classifier_name, autoencoder_name=autoencoder)

    @classmethod
    def from_config(cls, config: TrackingConfig, username: str | None = None, password: str | None = None) -> "MLflowTracking":
        return cls(tracking_uri=config.tracking_uri, experiment_name=config.experiment_name,
                   classifier_name=config.classifier_name, autoencoder_name=config.autoencoder_name,
                   username=username, password=SecretStr(password) if password is not None else None)

    def credentials_environment(self) -> dict[str, str]:
        """MLFLOW_TRACKING_USERNAME/PASSWORD for MLflow's clients in the process that loaded the block; empty without
        credentials. Never put into job variables or deployments: a step loads the block itself."""
        if not self.username or self.password is None:
            return {}
        return {"MLFLOW_TRACKING_USERNAME": self.username, "MLFLOW_TRACKING_PASSWORD": self.password.get_secret_value()}

    def environment(self) -> dict[str, str]:
        """Variables for child processes (a worker's job variables, a container's env)."""
        return self.config().environment()
