"""The step image for the container tests, built in the background from the start of the session.

Building it (a Docker daemon, a debootstrap base image, the Dockerfile's pip installs) is mostly waiting on
downloads and disk, so `start` begins it as soon as collection has selected a container test, and the tests before
that module run meanwhile. `wait` returns the image once the build has ended, or fails with the build's log.
Run as a script (`python -m tests.step_image RC_FILE`) it is that build, and writes its exit code to RC_FILE.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMAGE = "scanflow-step:test"
BASE_IMAGE = "scanflow-base:bookworm"
#: Seconds the build may take, on a busy 2-core machine, before the container test fails.
BUILD_TIMEOUT_S = 1800
#: The environment variable naming the test run (tests/conftest.py sets it in the run's first process).
RUN_VARIABLE = "SCANFLOW_TEST_RUN"


def _files() -> tuple[Path, Path, Path]:
    """The build's claim, log and exit-code files, shared by every process of one test run (`RUN_VARIABLE`, set by
    the run's first process and inherited by pytest-xdist's workers): one build, whichever worker needs it."""
    run = os.environ.get(RUN_VARIABLE) or str(os.getpid())
    stem = Path(tempfile.gettempdir()) / f"scanflow-step-image-{run}"
    return stem.with_suffix(".claim"), stem.with_suffix(".log"), stem.with_suffix(".rc")


def start() -> None:
    """Begin the build in a process of its own, once per test run (the first process to claim it starts it); its
    output goes to a log file and its exit code to a file beside it."""
    claim, log_path, rc_path = _files()
    try:
        descriptor = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "tests.step_image", str(rc_path)], cwd=REPO, stdout=log,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    os.write(descriptor, str(process.pid).encode())
    os.close(descriptor)


def wait() -> str:
    """The image tag once the build has succeeded (started now if nobody did). Raises AssertionError with the end of
    the build's log when it failed, died, or took longer than BUILD_TIMEOUT_S."""
    start()
    _, log_path, rc_path = _files()
    deadline = time.monotonic() + BUILD_TIMEOUT_S
    while not rc_path.exists():
        if time.monotonic() > deadline:
            stop()
            raise AssertionError(f"the step image was not built within {BUILD_TIMEOUT_S} s: {_log_end(log_path)}")
        if not _builder_alive() and not rc_path.exists():
            raise AssertionError(f"the step image build died without an exit code:\n{_log_end(log_path)}")
        time.sleep(2)
    code = int(rc_path.read_text().strip() or "1")
    assert code == 0, f"building the step image failed (exit {code}):\n{_log_end(log_path)}"
    return IMAGE


def stop() -> None:
    """End a build still running (the run ends early); only the process that owns the run calls it."""
    pid = _builder_pid()
    if pid is not None and _builder_alive():
        os.killpg(pid, signal.SIGKILL)


def _builder_pid() -> int | None:
    claim, _, _ = _files()
    try:
        return int(claim.read_text().strip())
    except (OSError, ValueError):
        return None


def _builder_alive() -> bool:
    pid = _builder_pid()
    if pid is None:
        return True  # claimed, the pid not written yet
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ")[-1].startswith("Z"))


def _log_end(log_path: Path) -> str:
    return log_path.read_text(errors="replace")[-4000:] if log_path.exists() else "(no log)"


def _build_now() -> None:
    for script, *args in (("dockerd.sh",), ("base-image.sh", BASE_IMAGE)):
        subprocess.run(["bash", str(REPO / "infra" / script), *args], check=True, timeout=900)
    from scanflow.image import build_image

    build_image(IMAGE, BASE_IMAGE, progress=lambda line: print(line, flush=True))


if __name__ == "__main__":
    code = 1
    try:
        _build_now()
        code = 0
    finally:
        Path(sys.argv[1]).write_text(str(code))
