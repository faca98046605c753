"""How far the supervise loop got through a stream, kept beside it (`progress.json`), so a loop that was killed
resumes from the first unfinished batch: finished batches are not predicted, asked about or improved again, and a
decision that was given is carried out, not asked for twice.

One file per stream folder, one section per registry (tracking URI and classifier name): a stream supervised against
another registry starts afresh. Every write replaces the file atomically (write, fsync, rename).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from scanflow.errors import ScanflowError

PROGRESS = "progress.json"


@dataclass(frozen=True)
class RecordedDecision:
    """A decision given on a drifted batch, before its improvement ran: the answer (action, labels, note), who gave
    it, the batch rows shown in that order, the drift statistics, and the champion it was given against."""

    action: str
    labels: list[int | None] | None
    note: str
    decided_by: str
    shown: list[int]
    drift: dict[str, float]
    champion_version: str

    def answer(self) -> dict[str, Any]:
        return {"action": self.action, "labels": self.labels, "note": self.note}


@dataclass(frozen=True)
class OwnerRun:
    """The supervise flow run that last worked on the stream, and its process (to tell whether it is gone)."""

    flow_run_id: str
    host: str
    pid: int
    start_time: int


@dataclass(frozen=True)
class Progress:
    """The finished rows and the pending decisions of one stream under one registry."""

    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    decisions: dict[str, RecordedDecision] = field(default_factory=dict)
    owner: OwnerRun | None = None


def registry_key(tracking_uri: str, classifier_name: str) -> str:
    return f"{tracking_uri}#{classifier_name}"


def _path(stream_dir: str | Path) -> Path:
    return Path(stream_dir) / PROGRESS


def _read_all(stream_dir: str | Path) -> dict[str, Any]:
    path = _path(stream_dir)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except ValueError as error:
        raise ScanflowError(f"{path} is not a supervision progress file ({error}): move it away to supervise the stream "
                            "from its first batch") from None
    return data if isinstance(data, dict) else {}


def read_progress(stream_dir: str | Path, key: str) -> Progress:
    """The progress of the stream in `stream_dir` under registry `key` (empty when none was recorded)."""
    section = _read_all(stream_dir).get(key, {})
    owner = section.get("owner")
    try:
        return Progress(
            rows=dict(section.get("rows", {})),
            decisions={batch: RecordedDecision(**value) for batch, value in section.get("decisions", {}).items()},
            owner=OwnerRun(**owner) if owner else None,
        )
    except TypeError as error:
        raise ScanflowError(f"{_path(stream_dir)} does not hold supervision progress ({error}): move it away to supervise "
                            "the stream from its first batch") from None


def _update(stream_dir: str | Path, key: str, change: Mapping[str, Any], drop_decision: str | None = None) -> None:
    data = _read_all(stream_dir)
    section = data.setdefault(key, {})
    for name, value in change.items():
        if isinstance(value, dict) and name != "owner":
            section.setdefault(name, {}).update(value)
        else:
            section[name] = value
    if drop_decision is not None:
        section.get("decisions", {}).pop(drop_decision, None)
    path = _path(stream_dir)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "w") as file:
        json.dump(data, file, indent=2, default=str)
        file.flush()
        os.fsync(file.fileno())
    partial.replace(path)


def record_owner(stream_dir: str | Path, key: str, owner: OwnerRun) -> None:
    _update(stream_dir, key, {"owner": asdict(owner)})


def record_decision(stream_dir: str | Path, key: str, batch_id: str, decision: RecordedDecision) -> None:
    """Keep `decision` on `batch_id` before it is carried out: a loop killed while improving finds it again."""
    _update(stream_dir, key, {"decisions": {batch_id: asdict(decision)}})


def record_row(stream_dir: str | Path, key: str, batch_id: str, row: Mapping[str, Any]) -> None:
    """`batch_id` is finished with report row `row` (its pending decision, if any, is done)."""
    _update(stream_dir, key, {"rows": {batch_id: dict(row)}}, drop_decision=batch_id)
