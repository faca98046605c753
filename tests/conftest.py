"""Shared test set-up: real data locations, an isolated MLflow store, no telemetry."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("SCANFLOW_TEST_MNIST_DIR", str(REPO.parent / "shared" / "data" / "mnist"))
os.environ["SCANFLOW_ALLOW_DOWNLOAD"] = "0"
# pytest-xdist's workers share the cores. A worker whose OpenMP pool is wider than its share of them spins on threads
# the other worker has descheduled: the MNIST training test takes 24 s alone at 2 threads, 99 s beside another worker
# at 2 and 42 s at 1. So each worker, and every process it starts (flow runs, the CLI), gets its share.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))

import scanflow  # noqa: E402, F401  (applies the telemetry-off environment defaults before mlflow/prefect load)


def _restoring_mlflow_state():
    """Yield, then put back MLflow's process-wide state as it was: the active experiment (``mlflow.set_experiment``),
    and the tracking and registry URIs, which ``mlflow.set_tracking_uri``/``set_registry_uri`` also export as
    MLFLOW_TRACKING_URI/MLFLOW_REGISTRY_URI."""
    from mlflow.tracking import fluent
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    environment = {name: os.environ.get(name) for name in names}
    uris = tracking_utils._tracking_uri, registry_utils._registry_uri
    yield
    fluent._active_experiment_id = None
    tracking_utils._tracking_uri, registry_utils._registry_uri = uris
    for name, value in environment.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(autouse=True)
def _no_leaked_mlflow_state():
    """A test leaves none of MLflow's process-wide state to the next test, whose server may not have it or may be
    gone."""
    yield from _restoring_mlflow_state()


@pytest.fixture(scope="module", autouse=True)
def _no_leaked_mlflow_state_from_a_module():
    """Nor does a module: its module-scoped fixtures (set up before, and torn down after, every test's own reset) may
    point MLflow at a server they stop when the module ends."""
    yield from _restoring_mlflow_state()


def require(path: Path, what: str) -> Path:
    """Skip a test whose real data is absent on a developer machine; in CI the data must be there."""
    if path.exists():
        return path
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{what} is missing at {path}: CI must provide it")
    pytest.skip(f"{what} not found at {path}")


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    return require(Path(os.environ["SCANFLOW_TEST_MNIST_DIR"]), "the real MNIST test set")


@pytest.fixture(scope="session")
def fashion_mnist_dir() -> Path:
    from scanflow.data import DEBIAN_FASHION_MNIST_DIR

    return require(DEBIAN_FASHION_MNIST_DIR, "Fashion-MNIST (Debian package dataset-fashion-mnist)")


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's bundled 8x8 digits as (train, test): tiny, real, always present."""
    from scanflow.data import load_train_test

    return load_train_test("digits")


@pytest.fixture(scope="session")
def mlflow_store(tmp_path_factory) -> str:
    """One SQLite MLflow store for the session (creating one runs ~5 s of migrations)."""
    folder = tmp_path_factory.mktemp("mlflow")
    return f"sqlite:///{folder / 'mlflow.db'}"


@pytest.fixture()
def tracking_config(mlflow_store, monkeypatch, request):
    """A TrackingConfig on the session store with model names unique to the test, set in the environment too."""
    from scanflow.config import TrackingConfig

    stem = "t-" + request.node.name.replace("[", "-").replace("]", "").replace("_", "-")[:60]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store)
    monkeypatch.setenv("SCANFLOW_MODEL_NAME", f"{stem}-classifier")
    monkeypatch.setenv("SCANFLOW_EXPERIMENT", stem)
    return TrackingConfig.from_env()


S3_ACCESS_KEY, S3_SECRET_KEY = "scanflow-test", "scanflow-test-secret"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """One SeaweedFS S3 server (authentication on, 127.0.0.1 only) for the session."""
    from scanflow.local import start_seaweedfs

    server = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"), S3_ACCESS_KEY, S3_SECRET_KEY)
    yield server
    server.stop()


def pytest_collection_modifyitems(config, items):
    """Container tests are opt-in for developers (minutes of image build, root, docker.io) and always on in CI."""
    if os.environ.get("CI", "").lower() == "true" or os.environ.get("SCANFLOW_DOCKER_TESTS") == "1":
        return
    skip = pytest.mark.skip(reason="container test: opt in with SCANFLOW_DOCKER_TESTS=1 (CI always runs it)")
    for item in items:
        if "docker" in item.keywords:
            item.add_marker(skip)


def pytest_collection_finish(session):
    """Start building the step image now when a container test will run: the tests before it run meanwhile."""
    if any("docker" in item.keywords and item.get_closest_marker("skip") is None for item in session.items):
        from tests import step_image

        step_image.start()


def pytest_configure(config):
    """The run's id, for what its processes share (the step image build); pytest-xdist's workers inherit it."""
    if not hasattr(config, "workerinput"):
        import uuid

        from tests import step_image

        os.environ[step_image.RUN_VARIABLE] = uuid.uuid4().hex


def pytest_sessionfinish(session, exitstatus):
    """The run's own process (not an xdist worker, which may finish before another needs the image) ends the build."""
    if not hasattr(session.config, "workerinput"):
        from tests import step_image

        step_image.stop()


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory):
    """The local stack as `scanflow stack up` starts it (`scanflow.stack.up`, free ports), once for the session:
    yields its `StackInfo` (addresses and credentials); stopped at the end."""
    from scanflow import stack
    from scanflow.local import free_port

    directory = tmp_path_factory.mktemp("local-stack") / "stack"
    info = stack.up(directory, {"prefect": free_port(), "mlflow": free_port(), "s3": free_port()})
    try:
        yield info
    finally:
        stack.down(directory)
