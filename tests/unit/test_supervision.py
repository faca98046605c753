"""The supervise loop's report, without Prefect: demo streams keep true labels beside the batches; rows and the
summary table come from the flows' JSON results."""

from __future__ import annotations

import numpy as np
import pytest

from scanflow.detect import CriticalRow, DetectionReport, KnownShiftMatch
from scanflow.improve import ImprovementReport
from scanflow.errors import ScanflowError, UnknownCorruptionError
from scanflow.stream import make_stream, read_stream
from scanflow.supervision import DecisionRequest, batch_row, stream_metrics, summary_markdown, with_decision, with_known_shift


def test_a_stream_turns_corrupted_and_keeps_labels_beside_it(tmp_path):
    batches = make_stream(tmp_path, "digits", n_batches=3, batch_size=50, drift_at=2, corruption="fog")
    assert read_stream(tmp_path) == batches
    assert [b.corruption for b in batches] == [None, None, "fog"]
    images = np.load(batches[0].path)
    assert images.dtype == np.uint8 and images.shape == (50, 1, 8, 8)
    truth = batches[0].true_labels()
    assert batches[0].accuracy(truth) == 1.0 and batches[0].accuracy(np.full(50, -1)) == 0.0
    with pytest.raises(UnknownCorruptionError, match="unknown corruption 'smoke'"):
        make_stream(tmp_path / "x", "digits", corruption="smoke")
    with pytest.raises(ScanflowError, match="fewer than 100 batches x 200: lower either"):
        make_stream(tmp_path / "y", "digits", n_batches=100, drift_at=3)
    with pytest.raises(ScanflowError, match="no stream folder .*nowhere: check the path"):
        read_stream(tmp_path / "nowhere")


def test_rows_and_summary_from_the_flow_results(tmp_path):
    [batch] = make_stream(tmp_path, "digits", n_batches=1, batch_size=10, drift_at=0, corruption="fog")
    truth = batch.true_labels().tolist()
    wrong = [(t + 1) % 10 for t in truth]
    detection = DetectionReport(
        is_drift=True, p_value=0.00123, batch_id=batch.batch_id, model_version="1", detector="scanflow-autoencoder", statistic=9.0,
        threshold=2.0, alpha=0.05, n=10, sample_threshold=1.0, critical_indices=(4, 1, 2, 3, 5, 6, 7), n_critical=7, details={},
        selected_indices=(4,), recommendation="", mlflow_run_id="r123", guesses=(7,), classes=tuple(str(k) for k in range(10)),
        critical_rows=(CriticalRow(position=0, batch_index=4, score=3.14159, above_threshold=True, predicted="7"),),
        recommended_action="filter", grid_png_b64="AAAA", thumbnails_b64=("BBBB",))
    row = batch_row(batch, {"model_version": "1", "labels": wrong}, detection)
    assert row["accuracy_before"] == 0.0 and row["drift"] == "yes" and row["p_value"] == 0.0012 and row["corrupted"] == "fog"
    improvement = ImprovementReport(batch_id=batch.batch_id, action="filter", decided_by="oracle", champion_version="1",
                                    promoted=True, outcome={"n_labels_used": 0})
    done = with_decision(row, batch, improvement, {"labels": truth})
    assert done["accuracy_after"] == 1.0 and done["promoted"] == "yes" and row["promoted"] == "-"
    table = summary_markdown([done])
    assert f"| {batch.batch_id} | fog | v1 | yes | 0.0012 | filter | oracle | 0 | 0.000 | 1.000 | yes |" in table
    request = DecisionRequest.from_detection(detection)
    assert "Drift statistic **9.00** against the threshold 2.00 (p = 0.0012)" in request.heading_markdown()
    assert "Recommended: **filter** (clean the inputs with a denoiser; needs no labels)" in request.heading_markdown()
    assert request.sample_markdown(0) == "![sample #1](data:image/png;base64,BBBB)\n\n**#1** · batch row 4 · score 3.14 · model's guess: 7"
    assert request.table().splitlines()[1] == "  1     4   3.14  7"
    rejected = with_decision(row, batch, improvement.model_copy(update={"promoted": False, "verdict": {"outcome": "not enough labels"}}),
                             {"labels": wrong})
    assert rejected["promoted"] == "needs labels"

    known = with_known_shift(row, KnownShiftMatch(batch_id="batch-003", decision="filter", model_version="1", mlflow_run_id="r0", p_value=0.4))
    assert f"| {batch.batch_id} | fog | v1 | known | 0.0012 | as batch-003 (filter) | known shift | 0 | 0.000 | - | - |" in summary_markdown([known])

    # What the supervise run charts per batch: the detected batch with its statistic, a row read back without it.
    assert stream_metrics(done, detection) == {"p_value": 0.0012, "drift": 1.0, "labels_used": 0.0, "promoted": 1.0,
                                               "accuracy_before": 0.0, "accuracy_after": 1.0, "statistic": 9.0, "threshold": 2.0}
    assert stream_metrics(known) == {"p_value": 0.0012, "drift": 1.0, "labels_used": 0.0, "promoted": 0.0, "accuracy_before": 0.0}
    assert stream_metrics({**row, "drift": "no"})["drift"] == 0.0


def _snapshot(folder) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_a_folder_that_is_not_a_stream_is_refused_and_never_written(tmp_path):
    from scanflow.stream import open_stream

    users = tmp_path / "batches"
    users.mkdir()
    np.save(users / "batch-000.npy", np.zeros((3, 1, 8, 8), dtype=np.uint8))
    before = _snapshot(users)
    with pytest.raises(ScanflowError, match=r"batches holds no stream \(stream\.json missing\): write one with make_stream, or ask for a demo stream \(--demo\)$"):
        open_stream(users, demo=False)
    with pytest.raises(ScanflowError, match=r"batches holds files but no stream \(stream\.json missing\): a demo stream is never written over them"):
        open_stream(users, demo=True, dataset="digits")
    assert _snapshot(users) == before
    with pytest.raises(ScanflowError, match=r"^no stream folder .*mistyped: check the path, or ask for a demo stream \(--demo\)$"):
        open_stream(tmp_path / "mistyped", demo=False)
    with pytest.raises(ScanflowError, match=r"^no stream to supervise: give --stream-dir DIR"):
        open_stream(None, demo=False)
    assert not (tmp_path / "mistyped").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["batches"]


def test_a_demo_stream_is_written_once_and_then_read_back(tmp_path):
    from scanflow.stream import open_stream

    first = open_stream(tmp_path / "demo", demo=True, dataset="digits", n_batches=2, batch_size=10, drift_at=1)
    written = _snapshot(tmp_path / "demo")
    again = open_stream(tmp_path / "demo", demo=True, dataset="digits", n_batches=5, batch_size=50, drift_at=2)
    assert again == first and _snapshot(tmp_path / "demo") == written


def test_a_manifest_that_is_not_json_is_named_not_a_traceback(tmp_path):
    (tmp_path / "stream.json").write_text("{not json")
    with pytest.raises(ScanflowError, match=r"stream\.json is not a stream manifest \(JSONDecodeError: .*\): write the stream with make_stream"):
        read_stream(tmp_path)
