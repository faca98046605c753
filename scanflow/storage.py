"""Objects in an S3 bucket through boto3: production batches, predictions, detector state, reports.

Works against AWS and any S3-compatible server (SeaweedFS in the tests and the local stack, MinIO). Every key lives
under the configured prefix; one `put_*` is one S3 PUT, so a reader never sees half an object. Connection and
credential failures become a `StorageUnavailableError` that names the endpoint and the fix.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from scanflow.config import StorageConfig
from scanflow.errors import ScanflowError, StorageUnavailableError  # noqa: F401  (raised here; importable from here)


class ObjectNotFoundError(ScanflowError, FileNotFoundError):
    """A key that is not in the bucket."""


S3_SCHEME = "s3://"


def is_s3_uri(location: str) -> bool:
    return str(location).startswith(S3_SCHEME)


def absolute_location(location: str) -> str:
    """An S3 URI as it is, a local path made absolute (so another process or an event consumer finds it)."""
    return str(location) if is_s3_uri(location) else str(Path(location).resolve())


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/key` as (bucket, key); anything else is an error naming the expected form."""
    bucket, _, key = str(uri).removeprefix(S3_SCHEME).partition("/")
    if not is_s3_uri(uri) or not bucket or not key:
        raise ScanflowError(f"{uri!r} is not an S3 object URI: expected s3://BUCKET/KEY")
    return bucket, key


def _etag_path(path: Path, etag: str) -> Path:
    """`dir/name.npy` as `dir/name.<etag>.npy`: one cached file per version of an object."""
    return path.with_name(f"{path.stem}.{etag}{path.suffix}")


def _write_atomically(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    partial.replace(path)
    return path


#: Bounds of one S3 call: seconds to connect, seconds to wait for an answer, attempts in all (botocore's "standard"
#: retry mode: exponential backoff with jitter, at most 1 + 2 s between three attempts). A stopped endpoint fails a
#: call within seconds; the flows' task retries (flows/retries.py) try it twice more.
S3_CONNECT_TIMEOUT_S = 5
S3_READ_TIMEOUT_S = 20
S3_MAX_ATTEMPTS = 3

_CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken", "ExpiredToken"}


class S3Store:
    """A bucket and a key prefix. `client` may be injected (e.g. one shared by several stores)."""

    def __init__(self, config: StorageConfig, client: Any = None) -> None:
        self.config = config
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            self._client = boto3.client(
                "s3",
                endpoint_url=self.config.endpoint_url,
                region_name=self.config.region_name,
                aws_access_key_id=self.config.access_key_id,
                aws_secret_access_key=self.config.secret_access_key,
                # Path-style addressing: S3-compatible servers on 127.0.0.1 have no per-bucket host names.
                config=Config(s3={"addressing_style": "path"}, connect_timeout=S3_CONNECT_TIMEOUT_S,
                              read_timeout=S3_READ_TIMEOUT_S, retries={"max_attempts": S3_MAX_ATTEMPTS, "mode": "standard"}),
            )
        return self._client

    def in_bucket(self, bucket: str) -> "S3Store":
        """The same endpoint, credentials and client on another bucket."""
        return self if bucket == self.config.bucket else S3Store(replace(self.config, bucket=bucket), client=self._client)

    def fetch(self, uri: str, cache_dir: str | Path) -> Path:
        """A local copy of `s3://bucket/key` under `cache_dir`, named by the object's ETag: later steps on this
        machine reuse it while the object is unchanged, and an object replaced under the same key is fetched anew
        (a cache keyed on the name alone tested the old bytes)."""
        bucket, key = parse_s3_uri(uri)
        store = self.in_bucket(bucket)
        etag = store._call("head_object", Bucket=bucket, Key=key)["ETag"].strip('"')
        cached = _etag_path(Path(cache_dir) / bucket / key, etag)
        if cached.is_file():
            return cached
        response = store._call("get_object", Bucket=bucket, Key=key)
        return _write_atomically(_etag_path(Path(cache_dir) / bucket / key, response["ETag"].strip('"')), response["Body"].read())

    @property
    def where(self) -> str:
        return f"bucket {self.config.bucket!r} at {self.config.endpoint_url or 'AWS S3'}"

    def key(self, *parts: str) -> str:
        """The full key of `parts` under the prefix."""
        return "/".join(p.strip("/") for p in (self.config.prefix, *parts) if p and p.strip("/"))

    def uri(self, key: str) -> str:
        return f"s3://{self.config.bucket}/{key}"

    # ------------------------------------------------------------------------------------------------ calls
    def _call(self, operation: str, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError

        try:
            return getattr(self.client, operation)(**kwargs)
        except EndpointConnectionError as error:
            raise StorageUnavailableError(
                f"cannot reach the S3 endpoint of {self.where} ({error}): start it (`scanflow stack up` starts a local "
                "SeaweedFS) or point the ScanflowStorage block / AWS_ENDPOINT_URL_S3 at a running one"
            ) from error
        except NoCredentialsError as error:
            raise StorageUnavailableError(
                f"no S3 credentials for {self.where}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or the block's keys"
            ) from error
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NotFound"):
                raise ObjectNotFoundError(f"{self.uri(kwargs.get('Key', ''))} does not exist in {self.where}") from error
            if code == "NoSuchBucket":
                raise StorageUnavailableError(
                    f"{self.where} does not exist: create it (S3Store.ensure_bucket(), `scanflow stack up` does) or name another bucket"
                ) from error
            if code in _CREDENTIAL_CODES:
                raise StorageUnavailableError(
                    f"{self.where} refused the credentials ({code}): check the access key id and secret of the "
                    "ScanflowStorage block or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
                ) from error
            raise
        except BotoCoreError as error:
            raise StorageUnavailableError(
                f"S3 call {operation} on {self.where} failed after {S3_MAX_ATTEMPTS} attempts ({error}): check that the "
                "endpoint runs and answers (`scanflow stack up` starts a local SeaweedFS), or point the ScanflowStorage "
                "block / AWS_ENDPOINT_URL_S3 at one that does"
            ) from error

    def ensure_bucket(self) -> None:
        """Create the bucket when it does not exist (idempotent)."""
        try:
            self._call("head_bucket", Bucket=self.config.bucket)
        except ObjectNotFoundError:
            self._call("create_bucket", Bucket=self.config.bucket)

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        self._call("put_object", Bucket=self.config.bucket, Key=key, Body=data, ContentType=content_type)
        return self.uri(key)

    def get_bytes(self, key: str) -> bytes:
        return self._call("get_object", Bucket=self.config.bucket, Key=key)["Body"].read()

    def put_file(self, key: str, path: str | Path) -> str:
        return self.put_bytes(key, Path(path).read_bytes())

    def put_file_once(self, folder: str, stem: str, path: str | Path) -> str:
        """Upload `path` as `<prefix>/<folder>/<stem>-<sha256[:12]><suffix>` unless that key exists, and return its
        s3:// URI. The key follows the bytes: uploading the same file again writes nothing, and changed bytes get a
        new key instead of replacing an object another process may be reading."""
        path = Path(path)
        data = path.read_bytes()
        key = self.key(folder, f"{stem}-{hashlib.sha256(data).hexdigest()[:12]}{path.suffix}")
        return self.uri(key) if self.exists(key) else self.put_bytes(key, data)

    def get_file(self, key: str, path: str | Path) -> Path:
        """Download `key` to `path` through a temporary name, so an interrupted download leaves no partial file."""
        return _write_atomically(Path(path), self.get_bytes(key))

    def put_array(self, key: str, array: np.ndarray) -> str:
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        return self.put_bytes(key, buffer.getvalue(), "application/x-npy")

    def get_array(self, key: str) -> np.ndarray:
        return np.load(io.BytesIO(self.get_bytes(key)), allow_pickle=False)

    def put_json(self, key: str, value: Any) -> str:
        return self.put_bytes(key, json.dumps(value, indent=2, default=str).encode(), "application/json")

    def get_json(self, key: str) -> Any:
        return json.loads(self.get_bytes(key))

    def exists(self, key: str) -> bool:
        try:
            self._call("head_object", Bucket=self.config.bucket, Key=key)
        except ObjectNotFoundError:
            return False
        return True

    def keys(self, under: str = "") -> Iterator[str]:
        """Every key below `under` (a full key prefix), in S3's order."""
        token: str | None = None
        while True:
            page = self._call("list_objects_v2", Bucket=self.config.bucket, Prefix=under, **({"ContinuationToken": token} if token else {}))
            yield from (item["Key"] for item in page.get("Contents", []))
            token = page.get("NextContinuationToken")
            if not token:
                return
