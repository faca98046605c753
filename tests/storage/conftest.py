"""One SeaweedFS S3 server (authentication on, 127.0.0.1 only) for the storage tests of the session."""

from __future__ import annotations

import pytest

ACCESS_KEY, SECRET_KEY = "scanflow-test", "scanflow-test-secret"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    from scanflow.local import start_seaweedfs

    server = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"), ACCESS_KEY, SECRET_KEY)
    yield server
    server.stop()
