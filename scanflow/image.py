"""The step image: assemble a build context for infra/Dockerfile and build it through the Docker SDK, streaming
the build's output; an image whose context hash label matches is reused instead of rebuilt.

The context holds only what the image needs: the package sources, a constraints file pinning every dependency to
the version installed here (the image runs what the tests ran), local wheels (a CPU torch when one is found: the
image then skips the multi-GB CUDA build) and the CA bundle pip must trust.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from scanflow.errors import ScanflowError

REPO = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "README.md", "scanflow", "flows", "blocks")
DEFAULT_TAG = "scanflow-step:latest"
DEFAULT_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
#: Distributions that belong to this machine's CUDA torch build, not to the image.
_NOT_PINNED = re.compile(r"^(scanflow|torch|torchvision|triton|nvidia-.*|cuda-.*)$", re.IGNORECASE)
#: Free space (bytes) a build needs in the daemon's data root. Measured here with the CPU torch wheel (`df` every
#: second during a build with no cache): the disk in use rose 4.3 GiB at the peak and settled 2.6 GiB higher. The
#: classic builder extracts each committed layer beside the container that wrote it, so the largest layer (the
#: dependencies, 1.3 GB) counts twice; with torch in the same layer the peak was 5.3 GiB. Without a CPU wheel pip
#: installs the CUDA build (~5.5 GB more, twice at the peak): an estimate, not a measurement.
BUILD_SPACE_CPU_TORCH = 5 * 2**30
BUILD_SPACE_CUDA_TORCH = 18 * 2**30


def pip_find_links() -> list[Path]:
    """The local wheel folders pip is configured with (`pip config list`), if any."""
    try:
        output = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    folders = []
    for line in output.splitlines():
        if "find-links" in line:
            folders += [Path(part) for part in line.split("=", 1)[1].strip().strip("'\"").split() if Path(part).is_dir()]
    return folders


def cpu_torch_wheels(folders: list[Path]) -> list[Path]:
    """CPU builds of torch for this Python among `folders` (newest last)."""
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    return sorted(w for folder in folders for w in folder.glob(f"torch-*+cpu-{tag}-*.whl"))


def constraints() -> str:
    """`name==version` of every distribution installed here, except the CUDA torch stack and Scanflow itself."""
    pins = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name and not _NOT_PINNED.match(name):
            pins[name.lower()] = f"{name}=={dist.version}"
    return "\n".join(pins[k] for k in sorted(pins)) + "\n"


def build_context(target: Path, wheels: list[Path], ca_bundle: Path = DEFAULT_CA_BUNDLE) -> str:
    """Write the build context into `target`; returns its content hash."""
    if not ca_bundle.is_file():
        raise ScanflowError(f"no CA bundle at {ca_bundle}: pass --ca-bundle (pip inside the build verifies TLS with it)")
    if target.exists():
        shutil.rmtree(target)
    (target / "src").mkdir(parents=True)
    for name in SOURCES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, target / "src" / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, target / "src" / name)
    (target / "wheels").mkdir()
    for wheel in wheels:
        shutil.copy2(wheel, target / "wheels" / wheel.name)
    (target / "constraints.txt").write_text(constraints())
    shutil.copy2(ca_bundle, target / "ca-certificates.crt")
    shutil.copy2(REPO / "infra" / "Dockerfile", target / "Dockerfile")
    digest = hashlib.sha256()
    for path in sorted(p for p in target.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(target)).encode())
        digest.update(path.read_bytes() if path.suffix != ".whl" else f"{path.stat().st_size}".encode())
    return digest.hexdigest()[:16]


def check_build_space(docker_root: str, needed: int) -> None:
    """Refuse to start a build that would fill the disk: a daemon out of space fails mid-layer, and everything else
    writing to that disk (the S3 server, MLflow, the tests) fails with it. Skipped when the daemon's data root is not
    on this machine (a remote DOCKER_HOST)."""
    if not docker_root or not os.path.isdir(docker_root):
        return
    stats = os.statvfs(docker_root)
    free = stats.f_bavail * stats.f_frsize
    if free < needed:
        raise ScanflowError(
            f"the step image build needs about {needed / 2**30:.0f} GiB free in {docker_root} and {free / 2**30:.1f} GiB is free: "
            "free some space (docker system prune -f removes stopped containers, unused images and build cache) and retry")


def build_image(
    tag: str = DEFAULT_TAG,
    base_image: str = "python:3.11-slim",
    context_dir: Path | None = None,
    wheels: list[Path] | None = None,
    progress: Callable[[str], None] = print,
    force: bool = False,
) -> str:
    """Build the step image `tag` FROM `base_image` (network: host, so every connection of the build stays on this
    machine's own network); returns the image id. Reuses an existing `tag` built from the same context."""
    try:
        import docker
        from docker.errors import APIError, DockerException
    except ImportError as error:
        raise ScanflowError(f"the docker Python SDK is missing ({error}): pip install docker") from error
    try:
        client = docker.from_env()
        client.ping()
    except DockerException as error:
        raise ScanflowError(f"no Docker daemon answers ({error}): start dockerd (infra/dockerd.sh does) or set DOCKER_HOST") from error
    context_dir = context_dir or REPO / ".scanflow" / "image-context"
    wheels = cpu_torch_wheels(pip_find_links())[-1:] if wheels is None else wheels
    context_hash = build_context(context_dir, wheels)
    previous = None
    try:
        previous = client.images.get(tag)
    except docker.errors.ImageNotFound:
        pass
    if previous is not None and not force and previous.labels.get("scanflow.context") == context_hash:
        progress(f"{tag} is up to date (context {context_hash}); reusing {previous.short_id}")
        return previous.id
    check_build_space(client.info().get("DockerRootDir", ""), BUILD_SPACE_CPU_TORCH if wheels else BUILD_SPACE_CUDA_TORCH)
    progress(f"building {tag} from {base_image} (context {context_hash}, {len(wheels)} local wheel(s))")
    image_id = None
    try:
        # forcerm: a failed step's container goes too, so a build that fails leaves no layer-sized leftovers.
        for chunk in client.api.build(path=str(context_dir), tag=tag, buildargs={"BASE_IMAGE": base_image, "CONTEXT_HASH": context_hash},
                                      network_mode="host", rm=True, forcerm=True, decode=True):
            if "stream" in chunk and chunk["stream"].strip():
                progress(chunk["stream"].rstrip())
            if "error" in chunk:
                raise ScanflowError(f"docker build of {tag} failed: {chunk['error'].strip()}")
            if "aux" in chunk and "ID" in chunk["aux"]:
                image_id = chunk["aux"]["ID"]
    except APIError as error:
        raise ScanflowError(f"docker build of {tag} failed: {error}") from error
    if image_id is None:
        image_id = client.images.get(tag).id
    if previous is not None and previous.id != image_id:
        _remove_if_unused(client, previous.id, progress)
    return image_id


def _remove_if_unused(client, image_id: str, progress: Callable[[str], None]) -> None:
    """Drop the image a rebuild replaced (gigabytes each) unless a container or another tag still uses it."""
    from docker.errors import APIError

    try:
        client.images.remove(image_id)
        progress(f"removed the replaced image {image_id[:19]}")
    except APIError:
        pass
