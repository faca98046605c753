"""Settings of a flow run: from the Blocks named in its parameters (loaded inside the run, never at import), else
from the environment. Deployments name blocks; scripts and tests usually rely on the environment."""

from __future__ import annotations

from typing import Any, TypeVar

from prefect.blocks.core import Block

from scanflow.config import StorageConfig, TrackingConfig
from scanflow.data import default_cache_dir
from scanflow.errors import ScanflowError
from scanflow.storage import S3Store, is_s3_uri
from scanflow.supervision import SupervisionSettings

B = TypeVar("B", bound=Block)


class BlockNotFoundError(ScanflowError, LookupError):
    """A block document named in a flow's parameters that the Prefect server does not hold."""


def load_block(block_type: type[B], name: str) -> B:
    """`block_type.load(name)` with an error that says how to create the document."""
    try:
        return block_type.load(name)
    except ValueError as error:
        raise BlockNotFoundError(
            f"no {block_type.get_block_type_name()} block named {name!r} on the Prefect server ({error}); create it in the "
            f"UI (Blocks > +) or with `scanflow blocks register --save-defaults` (saves 'default' documents)"
        ) from error


def tracking_config(tracking: str | None) -> TrackingConfig:
    """The `MLflowTracking` block named `tracking`, or the environment (`TrackingConfig.from_env`) when None."""
    if tracking is None:
        return TrackingConfig.from_env()
    import os

    from blocks import MLflowTracking

    block = load_block(MLflowTracking, tracking)
    os.environ.update(block.credentials_environment())  # MLflow's clients read them from the environment
    return block.config()


def supervision_settings(policy: str | None, **overrides: Any) -> SupervisionSettings:
    """The `SupervisionPolicy` block named `policy` (or the built-in defaults), with every override that is not None
    applied on top: a run's explicit parameters win over its policy."""
    if policy is None:
        base = SupervisionSettings()
    else:
        from blocks import SupervisionPolicy

        base = load_block(SupervisionPolicy, policy).settings()
    return base.overridden(**overrides)


def storage_store(storage: str | None) -> S3Store | None:
    """The bucket of the `ScanflowStorage` block named `storage`, else of the environment (SCANFLOW_S3_BUCKET and
    the AWS_* variables), else None: flows then keep everything local and in MLflow."""
    if storage is not None:
        from blocks import ScanflowStorage

        return load_block(ScanflowStorage, storage).store()
    config = StorageConfig.from_env()
    return S3Store(config) if config else None


def local_batch(batch_path: str, store: S3Store | None) -> str:
    """A local path for `batch_path`: itself, or for `s3://bucket/key` a copy downloaded under the data cache
    (`$SCANFLOW_CACHE_DIR/s3/`, default ~/.cache/scanflow/datasets/s3/; a step in its own container fetches its own)."""
    if not is_s3_uri(batch_path):
        return batch_path
    if store is None:
        raise ScanflowError(
            f"{batch_path} is in S3 but no storage is configured: pass storage=<ScanflowStorage block name> or set "
            "SCANFLOW_S3_BUCKET and the AWS_* variables (`scanflow stack env` prints them for the local stack)"
        )
    return str(store.fetch(batch_path, default_cache_dir() / "s3"))


def shared_batch(batch_path: str, batch_id: str, store: S3Store | None) -> str:
    """Where the steps read a batch: `batch_path` itself when there is no bucket or it is already in one, else its
    copy in the bucket (`<prefix>/batches/<batch_id>-<sha256[:12]>.npy`, uploaded once, see `S3Store.put_file_once`),
    so a step in a container or on another machine reads what this run read."""
    if store is None or is_s3_uri(batch_path):
        return batch_path
    return store.put_file_once("batches", batch_id, batch_path)


def read_batch(batch_path: str, info: Any, store: S3Store | None) -> Any:
    """The uint8 images [N, C, H, W] of a batch in the model's contract `info`: a .npy file, a folder of image files,
    an image file or .npz, locally or in S3 (an `s3://bucket/prefix/` ending in '/' is a folder of images); what was
    converted to fit the contract is printed (into the run's logs)."""
    from scanflow.images import ImageContract, read_batch as read_local_batch, read_images

    if is_s3_uri(batch_path) and batch_path.endswith("/"):
        if store is None:
            local_batch(batch_path, store)  # its message: no storage configured
        images = read_images(batch_path, ImageContract.of(info), classes=info.classes, store=store)
    else:
        images = read_local_batch(local_batch(batch_path, store), info)
    for line in images.describe():
        print(f"batch {batch_path}: {line}")
    return images.images

