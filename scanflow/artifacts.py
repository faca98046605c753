"""Stored artifacts that cannot run code: a pickle-free state format, and sha256 digests checked on load.

`save_state` writes a tree of dicts, lists, tuples, strings, numbers, numpy arrays, tensors, `DatasetInfo`s and
Scanflow models (`SavableModel`: config + weights) with `torch.save`; `load_state` reads it with
`torch.load(weights_only=True)`, which builds only tensors and primitives, and rebuilds models from an allow-list
of Scanflow classes. Nothing in a stored file can name a class or a function to call.

`file_digests` / `verify_digests` record and check the sha256 of every file of a downloaded artifact, so a file
changed in storage after logging is refused by name instead of being loaded.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scanflow.data import DatasetInfo
from scanflow.errors import ScanflowError
from scanflow.models import Autoencoder, Classifier, Denoiser, SavableModel

#: The models a state file may rebuild, by their `kind`.
MODEL_CLASSES: dict[str, type[SavableModel]] = {cls.kind: cls for cls in (Classifier, Autoencoder, Denoiser)}
_MARK = "__scanflow__"


class TamperedArtifactError(ScanflowError):
    """A stored artifact differs from the sha256 recorded when it was logged, or has no recorded digest."""


def _encode(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise TypeError("arrays of Python objects cannot be stored: convert them to numbers or strings")
        return {_MARK: "ndarray", "data": torch.from_numpy(np.ascontiguousarray(value).copy())}
    if isinstance(value, DatasetInfo):
        return {_MARK: "dataset_info", "fields": _encode(asdict(value))}
    if isinstance(value, SavableModel):
        state = {k: v.detach().clone() for k, v in value.state_dict().items()}
        return {_MARK: "model", "kind": value.kind, "config": _encode(value.config()), "state_dict": state}
    if callable(value) and isinstance(getattr(value, "__self__", None), SavableModel):
        return {_MARK: "method", "name": value.__name__, "model": _encode(value.__self__)}
    if isinstance(value, Mapping):
        if not all(isinstance(key, (str, int)) for key in value):
            raise TypeError(f"mapping keys must be strings or integers, got {sorted({type(k).__name__ for k in value})}")
        return {_MARK: "dict", "items": [[key, _encode(item)] for key, item in value.items()]}
    if isinstance(value, tuple):
        return {_MARK: "tuple", "items": [_encode(item) for item in value]}
    if isinstance(value, list):
        return [_encode(item) for item in value]
    raise TypeError(f"{type(value).__name__} cannot be stored without pickle: store its numbers, not the object")


def _decode(value: Any, path: Path) -> Any:
    if isinstance(value, list):
        return [_decode(item, path) for item in value]
    if not isinstance(value, dict):
        return value
    mark = value.get(_MARK)
    if mark == "ndarray":
        return value["data"].numpy()
    if mark == "dict":
        return {key: _decode(item, path) for key, item in value["items"]}
    if mark == "tuple":
        return tuple(_decode(item, path) for item in value["items"])
    if mark == "dataset_info":
        fields = _decode(value["fields"], path)
        return DatasetInfo(**{**fields, "classes": tuple(fields["classes"])})
    if mark == "model":
        cls = MODEL_CLASSES.get(value["kind"])
        if cls is None:
            raise ScanflowError(f"{path} holds a model of unknown kind {value['kind']!r}; known: {sorted(MODEL_CLASSES)}")
        model = cls(**_decode(value["config"], path))
        model.load_state_dict(value["state_dict"])
        return model.eval()
    if mark == "method":
        if value["name"] not in ("embed", "predict_proba", "forward", "clean"):
            raise ScanflowError(f"{path} names the method {value['name']!r}, which a stored encoder may not be")
        return getattr(_decode(value["model"], path), value["name"])
    raise ScanflowError(f"{path} holds an unknown stored value {mark!r}: it was not written by `save_state`")


def save_state(state: Mapping[str, Any], path: str | Path) -> Path:
    """Write `state` to `path` without pickle; raises TypeError naming a value that cannot be stored so."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(_encode(dict(state)), path)
    return path


def load_state(path: str | Path) -> dict[str, Any]:
    """Read a file written by `save_state`. Refuses (ScanflowError) a file that is not one, e.g. an old pickle."""
    path = Path(path)
    if not path.is_file():
        raise ScanflowError(f"no saved state at {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torch's note on a foreign pickle protocol
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError or EOFError for foreign files
        raise ScanflowError(
            f"{path} is not a Scanflow state file ({type(error).__name__}); files that need pickle are never loaded: "
            "re-create it with this Scanflow (e.g. `scanflow train`)"
        ) from None
    state = _decode(raw, path)
    if not isinstance(state, dict):
        raise ScanflowError(f"{path} holds a {type(state).__name__}, not a Scanflow state")
    return state


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_digests(directory: str | Path) -> dict[str, str]:
    """sha256 of every file under `directory`, keyed by its POSIX path relative to it."""
    root = Path(directory)
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def digests_tag(digests: Mapping[str, str]) -> str:
    """The compact JSON kept in a registry tag."""
    return json.dumps(dict(sorted(digests.items())), separators=(",", ":"))


def verify_digests(directory: str | Path, recorded: str | None, what: str) -> None:
    """Check every file under `directory` against `recorded` (a `digests_tag`); `what` names the artifact.

    Raises TamperedArtifactError naming each changed, added or missing file, or when nothing was recorded.
    """
    if not recorded:
        raise TamperedArtifactError(
            f"{what} has no recorded sha256, so Scanflow cannot tell whether it was changed in storage: "
            "it was logged by an older Scanflow; register a new version (`scanflow train`) to use it"
        )
    expected = json.loads(recorded)
    found = file_digests(directory)
    changed = sorted(name for name in expected.keys() & found.keys() if expected[name] != found[name])
    added, missing = sorted(found.keys() - expected.keys()), sorted(expected.keys() - found.keys())
    if changed or added or missing:
        parts = [f"{label}: {', '.join(names)}" for label, names in (("changed", changed), ("added", added), ("missing", missing)) if names]
        raise TamperedArtifactError(
            f"{what} differs from what was logged ({'; '.join(parts)}); refusing to load it. Someone or something "
            "wrote to the artifact store after logging: restore the files from a backup or register a new version"
        )
