"""Prefect Blocks: Scanflow's settings stored by name in the Prefect server, editable in its UI.

`scanflow blocks register` registers the three types (so they appear in the UI's block catalog) and, with
`--save-defaults`, saves a document of each named `default` from the current environment, and with a bucket
configured, prefect-aws's `s3-bucket/scanflow-results` on it (Prefect result storage for steps in containers).
Flows load blocks inside the run, never at import: pass a block's name as the flow's `tracking`, `policy` or
`storage` parameter.
"""

from __future__ import annotations

import os

from prefect.blocks.core import Block

from blocks.policy import SupervisionPolicy
from blocks.storage import ScanflowStorage
from blocks.tracking import MLflowTracking

BLOCK_TYPES = (ScanflowStorage, MLflowTracking, SupervisionPolicy)
DEFAULT_DOCUMENT = "default"
RESULTS_DOCUMENT = "scanflow-results"

__all__ = ["BLOCK_TYPES", "DEFAULT_DOCUMENT", "RESULTS_DOCUMENT", "MLflowTracking", "ScanflowStorage", "SupervisionPolicy", "register", "save_defaults"]


def register() -> list[str]:
    """Register every Scanflow block type and schema with the current Prefect server; returns their slugs."""
    for block_type in BLOCK_TYPES:
        block_type.register_type_and_schema()
    return [block_type.get_block_type_slug() for block_type in BLOCK_TYPES]


def save_defaults(overwrite: bool = False) -> list[str]:
    """Save a `default` document of each block from the environment (tracking from MLFLOW_TRACKING_URI, SCANFLOW_*
    and the server's MLFLOW_TRACKING_USERNAME/PASSWORD; storage only when SCANFLOW_S3_BUCKET is set; the policy's
    built-in defaults). Existing documents are kept unless `overwrite`. Returns the `slug/name` of each document saved."""
    from scanflow.config import StorageConfig, TrackingConfig

    tracking = MLflowTracking.from_config(TrackingConfig.from_env(), os.environ.get("MLFLOW_TRACKING_USERNAME"),
                                          os.environ.get("MLFLOW_TRACKING_PASSWORD"))
    documents: list[tuple[Block, str]] = [(tracking, DEFAULT_DOCUMENT),
                                          (SupervisionPolicy(), DEFAULT_DOCUMENT)]
    storage = StorageConfig.from_env()
    if storage is not None:
        block = ScanflowStorage.from_config(storage)
        documents += [(block, DEFAULT_DOCUMENT), (block.result_storage(), RESULTS_DOCUMENT)]
    saved = []
    for document, name in documents:
        slug = document.get_block_type_slug()
        try:
            document.save(name, overwrite=overwrite)
        except ValueError as error:
            if "already in use" not in str(error):
                raise
            continue
        saved.append(f"{slug}/{name}")
    return saved
