"""The `ScanflowStorage` block: the S3 bucket where batches, predictions, detector state and reports live."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from scanflow.config import StorageConfig
from scanflow.storage import S3Store

if TYPE_CHECKING:
    from prefect_aws import S3Bucket

RESULTS_FOLDER = "prefect-results"


class ScanflowStorage(Block):
    """An S3 bucket (AWS, SeaweedFS, MinIO or any S3-compatible server) and the key prefix Scanflow writes under.
    The secret key is stored encrypted by the Prefect server and never printed."""

    _block_type_name = "Scanflow Storage"
    _block_type_slug = "scanflow-storage"
    # prefect-aws's S3 logo (the same Prefect CDN image its S3Bucket block shows).
    _logo_url = "https://cdn.sanity.io/images/3ugk85nk/production/d74b16fe84ce626345adf235a47008fea2869a60-225x225.png"
    _documentation_url = "https://boto3.amazonaws.com/v1/documentation/api/latest/reference/services/s3.html"
    _code_example = """
    from blocks import ScanflowStorage

    storage = ScanflowStorage.load("BLOCK_NAME")
    store = storage.store()
    store.put_array(store.key("batches", "b0.npy"), images)
    """

    bucket: str = Field(description="Bucket name (at least 3 characters).", min_length=3)
    endpoint_url: Optional[str] = Field(
        default=None, description="S3 endpoint, e.g. http://127.0.0.1:8333 for a local SeaweedFS; empty means AWS itself."
    )
    region_name: str = Field(default="us-east-1", description="Region the client signs requests for.")
    aws_access_key_id: Optional[str] = Field(default=None, description="Access key id; empty uses boto3's credential chain.")
    aws_secret_access_key: Optional[SecretStr] = Field(
        default=None, description="Secret access key, stored encrypted; empty uses boto3's credential chain."
    )
    prefix: str = Field(default="scanflow", description="Key prefix every Scanflow object is written under.")

    def config(self) -> StorageConfig:
        """The plain settings the library takes (no Prefect inside `scanflow/`)."""
        secret = self.aws_secret_access_key.get_secret_value() if self.aws_secret_access_key else None
        return StorageConfig(bucket=self.bucket, endpoint_url=self.endpoint_url or None, region_name=self.region_name,
                             access_key_id=self.aws_access_key_id or None, secret_access_key=secret, prefix=self.prefix)

    @classmethod
    def from_config(cls, config: StorageConfig) -> "ScanflowStorage":
        return cls(bucket=config.bucket, endpoint_url=config.endpoint_url, region_name=config.region_name,
                   aws_access_key_id=config.access_key_id, aws_secret_access_key=config.secret_access_key, prefix=config.prefix)

    def store(self) -> S3Store:
        """A boto3-backed store on this bucket."""
        return S3Store(self.config())

    def result_storage(self) -> "S3Bucket":
        """Prefect result storage on this bucket (prefect-aws `S3Bucket`, under `<prefix>/prefect-results`).

        A step run in a container persists its return value there, so the supervise run that started it through
        `run_deployment` can read it, and a retried run on another machine finds the results of the tasks it cached.
        Save it (`scanflow blocks register --save-defaults`, or `.save("scanflow-results")`) and point
        PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK at `s3-bucket/<name>` where the steps run (infra/prefect.yaml does
        for the docker pool)."""
        from prefect_aws import AwsCredentials, S3Bucket
        from prefect_aws.client_parameters import AwsClientParameters

        credentials = AwsCredentials(
            aws_access_key_id=self.aws_access_key_id or None, aws_secret_access_key=self.aws_secret_access_key,
            region_name=self.region_name,
            aws_client_parameters=AwsClientParameters(endpoint_url=self.endpoint_url or None,
                                                      config={"s3": {"addressing_style": "path"}}),
        )
        return S3Bucket(bucket_name=self.bucket, credentials=credentials, bucket_folder=f"{self.prefix}/{RESULTS_FOLDER}")

    def environment(self) -> dict[str, str]:
        """Variables for child processes (a worker's job variables, a container's env); includes the secret."""
        return self.config().environment()
