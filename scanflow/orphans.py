"""MLflow runs whose process died: every run Scanflow opens names its owner (host, pid, process start time), and
`mark_orphans` ends as FAILED each RUNNING run whose owner on this host is gone, so a killed training or a server
that vanished mid-run does not leave a run RUNNING for ever.

A run is an orphan when its owner process on this host no longer exists, when its pid now belongs to another process
(another start time), or when it is this process's own run that this process failed to end (the tracking server
did not answer at the time). Runs of live processes, and runs of other hosts, are never touched.
"""

from __future__ import annotations

import functools
import os
import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass

from mlflow.entities import RunStatus

from scanflow.local import process_identity
from scanflow.tags import ABORTED_TAG, OWNER_HOST_TAG, OWNER_PID_TAG, OWNER_START_TAG


_lock = threading.Lock()
_unended: set[str] = set()


@dataclass(frozen=True)
class Owner:
    """The process that opened a run."""

    host: str
    pid: int
    start_time: int

    def tags(self) -> dict[str, str]:
        return {OWNER_HOST_TAG: self.host, OWNER_PID_TAG: str(self.pid), OWNER_START_TAG: str(self.start_time)}

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> "Owner | None":
        """The owner named by a run's tags; None for a run without them (not opened by Scanflow, or older)."""
        try:
            return cls(tags[OWNER_HOST_TAG], int(tags[OWNER_PID_TAG]), int(tags[OWNER_START_TAG]))
        except (KeyError, ValueError):
            return None


    def is_gone(self) -> bool:
        """Whether this owner, a process of this host, no longer runs (its pid is free, or now another process's)."""
        if self.host != this_host():
            return False
        identity = process_identity(self.pid)
        return identity is None or identity[0] != self.start_time


def this_host() -> str:
    return socket.gethostname()


@functools.lru_cache(maxsize=4)
def _owner_of(pid: int) -> Owner:
    identity = process_identity(pid)
    return Owner(this_host(), pid, identity[0] if identity else 0)


def this_process() -> Owner:
    """The owner of runs this process opens (looked up once per pid: a forked child is a new owner)."""
    return _owner_of(os.getpid())


def owner_tags() -> dict[str, str]:
    """The tags naming this process as a run's owner."""
    return this_process().tags()


def could_not_end(run_id: str) -> None:
    """Remember that this process failed to end `run_id` (the server did not answer): the next `mark_orphans`, here
    or in a later process, ends it."""
    with _lock:
        _unended.add(run_id)


def orphan_reason(run_id: str, owner: Owner | None) -> str | None:
    """Why the RUNNING run `run_id` of `owner` is an orphan, or None when its owner may still end it (or it is not
    ours to judge: no owner tags, another host)."""
    if owner is None or owner.host != this_host():
        return None
    me = this_process()
    if owner == me:
        with _lock:
            return (f"process {me.pid} on {me.host} could not end it (the tracking server did not answer)"
                    if run_id in _unended else None)
    identity = process_identity(owner.pid)
    if identity is None:
        return f"its process {owner.pid} on {owner.host} is gone"
    if identity[0] != owner.start_time:
        return f"its process {owner.pid} on {owner.host} is gone (the pid now belongs to another process)"
    return None


def mark_orphans(tracking_uri: str, experiment_id: str) -> list[str]:
    """End as FAILED, with tag `scanflow.aborted` = the reason, every RUNNING run of `experiment_id` opened on this
    host whose owner is gone (see `orphan_reason`); returns their ids. One search for RUNNING runs of this host.
    Raises what the MLflow client raises when the store does not answer."""
    # Imported here: scanflow.tracking imports this module (a module-level import would be a circle).
    from scanflow.tracking.client import mlflow_client

    client = mlflow_client(tracking_uri)
    runs = client.search_runs(
        [experiment_id], filter_string=f"attributes.status = 'RUNNING' and tags.`{OWNER_HOST_TAG}` = '{this_host()}'",
        max_results=1000,
    )
    marked = []
    for run in runs:
        reason = orphan_reason(run.info.run_id, Owner.from_tags(run.data.tags))
        if reason is None:
            continue
        client.set_tag(run.info.run_id, ABORTED_TAG, reason)
        client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FAILED))
        with _lock:
            _unended.discard(run.info.run_id)
        marked.append(run.info.run_id)
    return marked
