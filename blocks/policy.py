"""The `SupervisionPolicy` block: how the supervise loop treats drift, stored by name in the Prefect server."""

from __future__ import annotations

from typing import Literal

from prefect.blocks.core import Block
from pydantic import Field

from scanflow.supervision import SupervisionSettings

_DEFAULTS = SupervisionSettings()


class SupervisionPolicy(Block):
    """What counts as drift, how many samples a person labels, how long the loop waits for an answer, what runs
    when nobody answers, how much clean accuracy a challenger may lose and still replace the champion, whether a
    shift already decided about is asked about again, and how long a decision's improvement trains."""

    _block_type_name = "Scanflow Supervision Policy"
    _block_type_slug = "scanflow-supervision-policy"
    _documentation_url = "https://docs.prefect.io/v3/advanced/interactive"
    _code_example = """
    from blocks import SupervisionPolicy

    policy = SupervisionPolicy.load("BLOCK_NAME")
    settings = policy.settings()   # scanflow.supervision.SupervisionSettings
    """

    alpha: float = Field(default=_DEFAULTS.alpha, gt=0, lt=1, description="False-alarm rate of the batch drift test on clean batches.")
    budget: int = Field(default=_DEFAULTS.budget, ge=1, description="Critical samples shown to a person per drifted batch.")
    pause_timeout_s: int = Field(default=_DEFAULTS.pause_timeout_s, ge=1, description="Seconds a decision form waits for an answer.")
    action_on_timeout: Literal["filter", "ignore"] = Field(
        default=_DEFAULTS.action_on_timeout, description="What runs when nobody answers in time (retraining needs labels)."
    )
    promotion_margin: float = Field(
        default=_DEFAULTS.promotion_margin, ge=0, lt=1, description="Clean accuracy (a fraction) a challenger may lose and still be promoted."
    )

    ask_known_shifts: bool = Field(
        default=_DEFAULTS.ask_known_shifts,
        description="Ask again about a drift that repeats a shift already decided about for the champion (default: one drift, one question).",
    )

    retrain_steps: int | None = Field(
        default=_DEFAULTS.retrain_steps, ge=1,
        description="Optimisation steps per retraining round of a decision (empty: the improver's default).",
    )
    denoiser_steps: int | None = Field(
        default=_DEFAULTS.denoiser_steps, ge=1,
        description="Optimisation steps of a filter decision's denoiser (empty: the improver's default).",
    )

    def settings(self) -> SupervisionSettings:
        """The plain settings the library takes."""
        return SupervisionSettings(alpha=self.alpha, budget=self.budget, pause_timeout_s=self.pause_timeout_s,
                                   action_on_timeout=self.action_on_timeout, promotion_margin=self.promotion_margin,
                                   ask_known_shifts=self.ask_known_shifts, retrain_steps=self.retrain_steps,
                                   denoiser_steps=self.denoiser_steps)
