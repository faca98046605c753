"""Every MLflow tag Scanflow writes, in one place: run tags (what a run was, its lineage, how it ended) and model
version tags (what a registered version is, what it was built from, how it was judged). Values are strings."""

from __future__ import annotations

# ------------------------------------------------------------------------------------------------ run tags
#: The step a run or a version records: train, detect, predict, improve, adopt (runs); retrain, filter (versions).
KIND_TAG = "scanflow.kind"
BATCH_ID_TAG = "scanflow.batch_id"
#: The classifier version a detect or predict run used.
MODEL_VERSION_TAG = "scanflow.model_version"
IS_DRIFT_TAG = "scanflow.is_drift"
#: The detector's name on a detect run.
DETECTOR_NAME_TAG = "scanflow.detector"
#: On a detect run whose drift is a known shift: the batch whose decision it repeats.
KNOWN_SHIFT_OF_TAG = "scanflow.known_shift_of"
#: On an improve run: the decision, who made it, the champion it started from, whether its challenger was promoted.
ACTION_TAG = "scanflow.action"
DECIDED_BY_TAG = "scanflow.decided_by"
CHAMPION_VERSION_TAG = "scanflow.champion_version"
PROMOTED_TAG = "scanflow.promoted"
VERDICT_EVIDENCE_TAG = "scanflow.verdict_evidence"
#: On a run that failed on bad input after it was opened, or that `scanflow.orphans` ended: "true", with the
#: message in ABORTED_REASON_TAG.
ABORTED_TAG = "scanflow.aborted"
ABORTED_REASON_TAG = "scanflow.aborted_reason"
#: Who owns a running run (`scanflow.orphans`): host, pid and the process's start time in clock ticks after boot
#: (field 22 of /proc/PID/stat), which tells it from a later process given the same pid.
OWNER_HOST_TAG = "scanflow.owner.host"
OWNER_PID_TAG = "scanflow.owner.pid"
OWNER_START_TAG = "scanflow.owner.start_time"

# --------------------------------------------------------------------------------------- model version tags
#: What a registered classifier version was trained for: its dataset, class names (a JSON list, in label order) and
#: input shape (`CxHxW`, pixels).
DATASET_TAG = "scanflow.dataset"
CLASSES_TAG = "scanflow.classes"
INPUT_SHAPE_TAG = "scanflow.input_shape"
TEST_ACCURACY_TAG = "scanflow.test_accuracy"
#: The run that logged a version.
RUN_ID_TAG = "scanflow.run_id"
AUTOENCODER_VERSION_TAG = "scanflow.autoencoder_version"
DETECTOR_TAG = "scanflow.detector_uri"
#: The sha256 of every file of a registered version's model, recorded when it was logged and checked on load.
DIGESTS_TAG = "scanflow.sha256"
#: The sha256 of the detector file logged beside a classifier version.
DETECTOR_DIGEST_TAG = "scanflow.detector_sha256"
#: The promotion verdict of a challenger version (`PromotionVerdict.outcome`), its reason, its parent and the
#: champion it replaced.
VERDICT_TAG = "scanflow.verdict"
PROMOTION_REASON_TAG = "scanflow.promotion_reason"
PARENT_TAG = "scanflow.parent_version"
PREVIOUS_CHAMPION_TAG = "scanflow.previous_champion"
#: On a version the champion alias moved away from by `scanflow rollback`.
ROLLED_BACK_TAG = "scanflow.rolled_back"
#: A filter-wrapped version: what the filter is, and its gate (mean absolute correction, or "none").
FILTER_TAG = "scanflow.filter"
FILTER_GATE_TAG = "scanflow.filter_gate"
#: A filter whose gate also cleans images its champion's detector scores above this (the detector travels with it).
FILTER_SCORE_GATE_TAG = "scanflow.filter_score_gate"
#: Prefix of the tags that record a champion's known shifts (`scanflow.drift.known`), one per decided batch.
KNOWN_SHIFT_TAG_PREFIX = "scanflow.known_shift."
#: An adopted version (`scanflow.adopt`): its flavour, its input contract (JSON), its reference (JSON), the URI it
#: was adopted from and the adoption's run.
ADOPTED_TAG = "scanflow.adopted"
CONTRACT_TAG = "scanflow.contract"
REFERENCE_TAG = "scanflow.reference"
ADOPTED_FROM_TAG = "scanflow.adopted_from"
ADOPTION_RUN_TAG = "scanflow.adoption_run"
