"""Prefect Blocks: Scanflow's settings stored by name in the Prefect server, editable in its UI.

`scanflow blocks register` registers the three types (so they appear in the UI's block catalog) and, with
`--save-defaults`, saves a document of each named `default` from the current environment.
Flows load blocks inside the run, never at import: pass a block's name as the flow's `tracking`, `policy` or
`storage` parameter.
"""

from __future__ import annotations

from prefect.blocks.core import Block

from blocks.policy import SupervisionPolicy
from blocks.storage import ScanflowStorage
from blocks.tracking import MLflowTracking

BLOCK_TYPES = (ScanflowStorage, MLflowTracking, SupervisionPolicy)
DEFAULT_DOCUMENT = "default"

__all__ = ["BLOCK_TYPES", "DEFAULT_DOCUMENT", "MLflowTracking", "ScanflowStorage", "SupervisionPolicy", "register", "save_defaults"]


def register() -> list[str]:
    """Register every Scanflow block type and schema with the current Prefect server; returns their slugs."""
    for block_type in BLOCK_TYPES:
        block_type.register_type_and_schema()
    return [block_type.get_block_type_slug() for block_type in BLOCK_TYPES]


def save_defaults(overwrite: bool = False) -> list[str]:
    """Save a `default` document of each block from the environment (tracking from MLFLOW_TRACKING_URI and
    SCANFLOW_*; storage only when SCANFLOW_S3_BUCKET is set; the policy's built-in defaults). Existing documents
    are kept unless `overwrite`. Returns the `slug/name` of each document saved."""
    from scanflow.config import StorageConfig, TrackingConfig

    documents: list[Block] = [MLflowTracking.from_config(TrackingConfig.from_env()), SupervisionPolicy()]
    storage = StorageConfig.from_env()
    if storage is not None:
        documents.append(ScanflowStorage.from_config(storage))
    saved = []
    for document in documents:
        slug = document.get_block_type_slug()
        try:
            document.save(DEFAULT_DOCUMENT, overwrite=overwrite)
        except ValueError as error:
            if "already in use" not in str(error):
                raise
            continue
        saved.append(f"{slug}/{DEFAULT_DOCUMENT}")
    return saved
