"""The Prefect blocks: Prefect's own block standards, and that each block turns into the settings the library takes."""

from __future__ import annotations

import pytest
from prefect.testing.standard_test_suites import BlockStandardTestSuite
from pydantic import SecretStr, ValidationError

from blocks import BLOCK_TYPES, MLflowTracking, ScanflowStorage, SupervisionPolicy
from scanflow.config import StorageConfig, TrackingConfig
from scanflow.supervision import InvalidPolicyError, SupervisionSettings


@pytest.mark.parametrize("block", BLOCK_TYPES, ids=lambda b: b.__name__)
class TestBlockStandards(BlockStandardTestSuite):
    @pytest.fixture
    def block(self, block):
        return block

    def test_has_a_valid_image(self, block):
        """Prefect's version downloads the logo from the internet; tests here talk only to 127.0.0.1. What can be
        checked offline: a block either has no logo or an https one (the server refuses anything else)."""
        assert block._logo_url is None or str(block._logo_url).startswith("https://")


def test_storage_block_keeps_the_secret_out_of_its_repr_and_hands_it_to_the_library():
    storage = ScanflowStorage(bucket="scanflow", endpoint_url="http://127.0.0.1:8333", aws_access_key_id="key",
                              aws_secret_access_key=SecretStr("s3cr3t"))
    assert "s3cr3t" not in repr(storage)
    config = storage.config()
    assert config == StorageConfig(bucket="scanflow", endpoint_url="http://127.0.0.1:8333", access_key_id="key", secret_access_key="s3cr3t")
    assert "s3cr3t" not in repr(config)
    assert storage.environment()["AWS_SECRET_ACCESS_KEY"] == "s3cr3t"
    assert storage.environment()["MLFLOW_S3_ENDPOINT_URL"] == "http://127.0.0.1:8333"
    assert ScanflowStorage.from_config(config).config() == config


def test_storage_block_refuses_a_bucket_name_s3_would_refuse():
    with pytest.raises(ValidationError, match="bucket"):
        ScanflowStorage(bucket="ab")


def test_tracking_block_round_trips_the_library_config():
    config = TrackingConfig(tracking_uri="http://127.0.0.1:5000", experiment_name="e", classifier_name="shop-classifier", autoencoder_name="shop-autoencoder")
    block = MLflowTracking.from_config(config)
    assert block.config() == config
    assert MLflowTracking(tracking_uri="sqlite:////tmp/x.db", classifier_name="shop-classifier").config().autoencoder_name == "shop-autoencoder"
    assert block.environment()["SCANFLOW_MODEL_NAME"] == "shop-classifier"


def test_policy_block_defaults_are_the_library_defaults():
    assert SupervisionPolicy().settings() == SupervisionSettings()


@pytest.mark.parametrize("field, value", [("alpha", 1.5), ("budget", 0), ("pause_timeout_s", 0), ("action_on_timeout", "retrain"),
                                          ("promotion_margin", -0.1), ("retrain_steps", 0), ("denoiser_steps", -5)])
def test_policy_block_refuses_values_out_of_range(field, value):
    with pytest.raises(ValidationError, match=field):
        SupervisionPolicy(**{field: value})


def test_settings_name_every_problem_and_overrides_skip_none():
    with pytest.raises(InvalidPolicyError, match=r"alpha must be a false-alarm rate in \(0, 1\), got 0; budget must be at least 1 sample, got 0"):
        SupervisionSettings(alpha=0, budget=0)
    settings = SupervisionSettings(budget=10).overridden(budget=None, alpha=0.01)
    assert (settings.budget, settings.alpha) == (10, 0.01)
    with pytest.raises(InvalidPolicyError, match=r"unknown supervision settings \['budgt'\]"):
        SupervisionSettings().overridden(budgt=3)


def test_a_policy_says_how_long_a_decisions_improvement_trains():
    """Unset, the improvers' defaults; set, the improve flow gets the steps of the action decided; a count that is
    not a whole number >= 1 is refused with its name."""
    assert [SupervisionSettings().improve_steps(a) for a in ("retrain", "filter", "ignore")] == [None, None, None]
    policy = SupervisionPolicy(retrain_steps=120, denoiser_steps=250)
    settings = policy.settings()
    assert (settings.improve_steps("retrain"), settings.improve_steps("filter"), settings.improve_steps("ignore")) == (120, 250, None)
    assert SupervisionSettings(retrain_steps=120).overridden(retrain_steps=None, denoiser_steps=9).denoiser_steps == 9
    with pytest.raises(InvalidPolicyError, match=r"retrain_steps must be a whole number of optimisation steps, at least 1 "
                                                  r"\(or unset for the default\), got 2.5; denoiser_steps .* got True"):
        SupervisionSettings(retrain_steps=2.5, denoiser_steps=True)
