"""One Prefect test harness (a temporary server, ~20-40 s to start here) for every flow test of the session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def prefect_server():
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield PREFECT_API_URL.value()
