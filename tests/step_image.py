"""The step image for the container tests, built in the background from the start of the session.

Building it (a Docker daemon, a debootstrap base image, the Dockerfile's pip installs) is mostly waiting on
downloads and disk, so `start` begins it as soon as collection has selected a container test, and the tests before
that module run meanwhile. `wait` returns the image once the build has ended, or fails with the build's log.
Run as a script (`python -m tests.step_image`) it is that build.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMAGE = "scanflow-step:test"
BASE_IMAGE = "scanflow-base:bookworm"
#: Seconds the build may take, on a busy 2-core machine, before the container test fails.
BUILD_TIMEOUT_S = 1800

_build: tuple[subprocess.Popen, Path] | None = None


def start() -> None:
    """Begin the build in a process of its own (once per session); its output goes to a log file."""
    global _build
    if _build is None:
        log_path = Path(tempfile.mkstemp(prefix="scanflow-step-image-", suffix=".log")[1])
        with open(log_path, "wb") as log:
            process = subprocess.Popen([sys.executable, "-m", "tests.step_image"], cwd=REPO, stdout=log,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        _build = (process, log_path)


def wait() -> str:
    """The image tag once the build has succeeded (started now if `start` was not called). Raises AssertionError
    with the end of the build's log when it failed or took longer than BUILD_TIMEOUT_S."""
    start()
    assert _build is not None
    process, log_path = _build
    try:
        code = process.wait(timeout=BUILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        stop()
        raise AssertionError(f"the step image was not built within {BUILD_TIMEOUT_S} s: {log_path.read_text(errors='replace')[-4000:]}")
    assert code == 0, f"building the step image failed (exit {code}):\n{log_path.read_text(errors='replace')[-4000:]}"
    return IMAGE


def stop() -> None:
    """End a build still running (the session ends early)."""
    if _build is not None and _build[0].poll() is None:
        _build[0].kill()
        _build[0].wait(timeout=60)


def _build_now() -> None:
    for script, *args in (("dockerd.sh",), ("base-image.sh", BASE_IMAGE)):
        subprocess.run(["bash", str(REPO / "infra" / script), *args], check=True, timeout=900)
    from scanflow.image import build_image

    build_image(IMAGE, BASE_IMAGE, progress=lambda line: print(line, flush=True))


if __name__ == "__main__":
    _build_now()
