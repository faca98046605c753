"""Images read from an S3 prefix (a real SeaweedFS bucket): labels from key folders, bad objects, stream batches."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from scanflow.config import StorageConfig
from scanflow.errors import InvalidBatchError
from scanflow.images import BadFile, Conversion, ImageContract, list_batch_units, read_batch_unit, read_images
from scanflow.local import free_port
from scanflow.storage import S3Store, StorageUnavailableError
from tests.conftest import S3_ACCESS_KEY, S3_SECRET_KEY

pytestmark = pytest.mark.slow

RGB32 = ImageContract(3, 32, 32)


def _store(endpoint: str, bucket: str) -> S3Store:
    return S3Store(StorageConfig(bucket=bucket, endpoint_url=endpoint, access_key_id=S3_ACCESS_KEY,
                                 secret_access_key=S3_SECRET_KEY, prefix="unused"))


def _png(size: tuple[int, int], mode: str, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    bands = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    array = rng.integers(0, 256, (size[1], size[0], bands), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array[..., 0] if bands == 1 else array, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def bucket(s3_server) -> S3Store:
    """A bucket holding a labelled set, a flat set with bad objects and a stream, each under its own prefix."""
    store = _store(s3_server.endpoint_url, "images")
    store.ensure_bucket()
    objects = {
        "labelled/dog/2.png": _png((32, 32), "RGB", 1),
        "labelled/cat/1.png": _png((64, 48), "RGB", 2),
        "labelled/cat/0.png": _png((32, 32), "L", 3),
        "labelled/dog/": b"",  # a folder marker some tools write
        "labelled/.DS_Store": b"x",
        "labelled/labels.csv": b"a,b",
        "flat/a.png": _png((32, 32), "RGBA", 4),
        "flat/b.png": b"",
        "flat/c.png": b"<html>not an image</html>",
        "flat/d.jpg": _png((32, 32), "RGB", 5)[:200],
        "flat/e.png": _png((32, 32), "RGB", 6),
        "flat10/z.png": _png((32, 32), "RGB", 7),
        "stream/b1/y.png": _png((32, 32), "RGB", 8),
        "stream/b0/x.png": _png((32, 32), "RGB", 9),
        "stream/b0/w.png": _png((32, 32), "RGB", 10),
        "docs/readme.txt": b"text",
    }
    for key, data in objects.items():
        store.put_bytes(key, data)
    return store


def test_class_folders_under_a_prefix_give_labels_conversions_and_counts(bucket):
    result = read_images("s3://images/labelled/", RGB32, store=bucket)
    assert result.source == "s3://images/labelled/"
    assert result.names == ("cat/0.png", "cat/1.png", "dog/2.png")
    assert result.classes == ("cat", "dog") and result.labels.tolist() == [0, 0, 1]
    assert result.conversions == (Conversion("resize", "48x64", "32x32", 1), Conversion("mode", "L", "RGB", 1))
    assert (result.ignored_hidden, result.ignored_other) == (1, 1)
    expected = np.asarray(Image.open(io.BytesIO(bucket.get_bytes("labelled/dog/2.png")))).transpose(2, 0, 1)
    assert np.array_equal(result.images[2].numpy(), expected)
    same = read_images("s3://images/labelled", RGB32, store=_store(bucket.config.endpoint_url, "another-bucket"))
    assert same.names == result.names, "the bucket comes from the URI, the store gives endpoint and credentials"


def test_bad_objects_are_refused_or_skipped_by_name(bucket):
    with pytest.raises(InvalidBatchError) as raised:
        read_images("s3://images/flat/", RGB32, store=bucket)
    message = str(raised.value)
    assert message.startswith("3 of 5 image files in s3://images/flat/ are unusable: b.png (empty file (0 bytes)); c.png (not an image")
    assert "d.jpg (truncated or corrupt" in message
    result = read_images("s3://images/flat/", RGB32, store=bucket, on_bad="skip")
    assert result.names == ("a.png", "e.png") and result.labels is None
    assert [item.name for item in result.skipped] == ["b.png", "c.png", "d.jpg"]
    assert result.skipped[0] == BadFile("b.png", "empty file (0 bytes)")
    assert result.describe()[0] == "1 of 2 images converted from RGBA to RGB"


def test_a_prefix_is_a_folder_not_a_name_start_and_an_imageless_prefix_is_named(bucket):
    assert read_images("s3://images/flat10", RGB32, store=bucket).names == ("z.png",)
    with pytest.raises(InvalidBatchError, match=r"s3://images/docs/ holds no image files \(0 hidden files and 1 files with other extensions \(.txt\)"):
        read_images("s3://images/docs/", RGB32, store=bucket)
    with pytest.raises(InvalidBatchError, match=r"s3://images/nothing-here/ holds no image files"):
        read_images("s3://images/nothing-here/", RGB32, store=bucket)
    with pytest.raises(InvalidBatchError, match=r"needs an S3 store: configure the ScanflowStorage block"):
        read_images("s3://images/flat/", RGB32)


def test_stream_batches_under_a_prefix_are_listed_in_order_and_read(bucket):
    units = list_batch_units("s3://images/stream", store=bucket)
    assert [(u.root, u.key, u.files) for u in units] == [
        ("s3://images/stream/", "b0", ("b0/w.png", "b0/x.png")), ("s3://images/stream/", "b1", ("b1/y.png",)),
    ]
    first = read_batch_unit(units[0], RGB32, store=bucket)
    assert first.names == ("w.png", "x.png") and first.source == "s3://images/stream/b0"
    assert [u.key for u in list_batch_units("s3://images/stream/", store=bucket, processed=units[0].files)] == ["b1"]
    groups = list_batch_units("s3://images/flat/", files_per_batch=2, store=bucket)
    assert [u.files for u in groups] == [("a.png", "b.png"), ("c.png", "d.jpg")]
    skipped = read_batch_unit(groups[0], RGB32, store=bucket, on_bad="skip")
    assert skipped.names == ("a.png",) and skipped.skipped == (BadFile("b.png", "empty file (0 bytes)"),)


def test_an_unreachable_endpoint_is_a_service_error_not_a_bad_file():
    store = _store(f"http://127.0.0.1:{free_port()}", "images")
    with pytest.raises(StorageUnavailableError, match="cannot reach the S3 endpoint"):
        read_images("s3://images/flat/", RGB32, store=store, on_bad="skip")
