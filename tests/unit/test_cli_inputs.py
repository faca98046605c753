"""Bad command lines are refused before any flow or server starts: a message naming the problem and the fix, exit
code 2, no traceback, and nothing written (no mlflow.db, no stream/, no PNG) in the working directory."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from scanflow import cli
from scanflow.corruptions import CORRUPTIONS
from scanflow.cli import build_parser, main

ARGPARSE = "error: argument "  # argparse: "scanflow CMD: error: argument --OPTION: MESSAGE"
HANDLER = "scanflow: error: "  # a ScanflowError raised at the start of a handler

# (argv, expected stderr substring). {good}: a valid 10-image uint8 batch; {dir}: a directory; {missing}: no such
# file; {badname}: a valid batch whose file name is no batch id; {notastream}: a folder with files but no stream.json.
BAD_COMMAND_LINES = [
    # detect / predict / improve: the batch and its id
    (["detect", "--batch", "{good}", "--budget", "0"], ARGPARSE + "--budget: must be an integer >= 1, got 0"),
    (["detect", "--batch", "{good}", "--budget", "-5"], ARGPARSE + "--budget: must be an integer >= 1, got -5"),
    (["detect", "--batch", "{good}", "--budget", "lots"], ARGPARSE + "--budget: must be an integer >= 1, got 'lots'"),
    (["detect", "--batch", "{good}", "--batch-id", "../../x"], ARGPARSE + "--batch-id: a batch id names S3 keys and files: "
     "letters, digits, '.', '_' and '-', not starting with a dot, at most 128 characters; got '../../x'"),
    (["detect", "--batch", "{good}", "--batch-id", ".hidden"], "not starting with a dot, at most 128 characters; got '.hidden'"),
    (["detect", "--batch", "{good}", "--batch-id", "b" * 129], "at most 128 characters; got 'bbbb"),
    (["detect", "--batch", "{good}", "--batch-id", ""], ARGPARSE + "--batch-id: a batch id names S3 keys"),
    (["detect", "--batch", "{dir}"], HANDLER + "batch folder {dir} is empty: put the batch's PNG/JPEG images there"),
    (["detect", "--batch", "{missing}"], ARGPARSE + "--batch: batch {missing} does not exist: pass a .npy file written with "
     "numpy.save, a folder of PNG/JPEG images, or s3://bucket/key"),
    (["detect", "--batch", "{badname}"], HANDLER + "the batch file name 'my batch' cannot be the batch id"),
    (["predict", "--batch", "{dir}"], HANDLER + "batch folder {dir} is empty"),
    (["predict", "--batch", "{missing}"], ARGPARSE + "--batch: batch {missing} does not exist"),
    (["predict", "--batch", "{good}", "--batch-id", "a/b"], ARGPARSE + "--batch-id: a batch id names S3 keys"),
    (["improve", "--batch", "{dir}", "--shown", "1", "--action", "filter"], "is empty: put the batch's PNG/JPEG images there"),
    # train
    (["train", "--epochs", "0"], ARGPARSE + "--epochs: must be an integer >= 1, got 0"),
    (["train", "--epochs", "-1"], ARGPARSE + "--epochs: must be an integer >= 1, got -1"),
    (["train", "--epochs", "2.5"], ARGPARSE + "--epochs: must be an integer >= 1, got '2.5'"),
    (["train", "--autoencoder-epochs", "0"], ARGPARSE + "--autoencoder-epochs: must be an integer >= 1, got 0"),
    (["train", "--seed", "-1"], ARGPARSE + "--seed: must be an integer >= 0, got -1"),
    (["train", "--dataset", "imagenet"], ARGPARSE + "--dataset: unknown dataset 'imagenet'; known datasets: fashion-mnist"),
    # corrupt
    (["corrupt", "--severity", "9"], ARGPARSE + "--severity: severities are integers 1..5, comma-separated (e.g. 1,3,5), got 9"),
    (["corrupt", "--severities", "9"], ARGPARSE + "--severities: severities are integers 1..5, comma-separated (e.g. 1,3,5), got 9"),
    (["corrupt", "--severities", "1,0"], ARGPARSE + "--severities: severities are integers 1..5, comma-separated (e.g. 1,3,5), got 0"),
    (["corrupt", "--severities", "x"], ARGPARSE + "--severities: severities are integers 1..5, comma-separated (e.g. 1,3,5), got 'x'"),
    (["corrupt", "--severities", ","], ARGPARSE + "--severities: give comma-separated severities 1..5 (e.g. 1,3,5), got ','"),
    (["corrupt", "--images", "0"], ARGPARSE + "--images: must be an integer >= 1, got 0"),
    (["corrupt", "--scale", "0"], ARGPARSE + "--scale: must be an integer >= 1, got 0"),
    (["corrupt", "--seed", "-3"], ARGPARSE + "--seed: must be an integer >= 0, got -3"),
    (["corrupt", "--corruptions", "shot_noise,nope"], ARGPARSE + "--corruptions: unknown corruption 'nope': known ones are "
     "shot_noise, impulse_noise, glass_blur"),
    (["corrupt", "--output", "{dir}"], ARGPARSE + "--output: {dir} is a directory: give a file name such as corruptions.png"),
    # supervise
    (["supervise", "--stream", "{missing}"], HANDLER + "no stream folder {missing}: give a folder (or s3://bucket/prefix/) whose sub-folders are batches of images"),
    (["supervise", "--stream", "{dir}", "--demo"], HANDLER + "--stream is a folder of image files; --stream-dir and --demo are a stream of .npy batches"),
    (["supervise", "--demo", "--files-per-batch", "3"], HANDLER + "--files-per-batch goes with --stream (a folder of image files)"),
    (["supervise", "--demo", "--inline-steps", "--step-deployments", "docker"],
     HANDLER + "--inline-steps runs the steps in this process and --step-deployments docker elsewhere: give one of them"),
    (["supervise", "--stream", "{dir}", "--files-per-batch", "0"], ARGPARSE + "--files-per-batch: must be an integer >= 1, got 0"),
    (["supervise", "--demo", "--batches", "0"], ARGPARSE + "--batches: must be an integer >= 1, got 0"),
    (["supervise", "--demo", "--retrain-steps", "0"], ARGPARSE + "--retrain-steps: must be an integer >= 1, got 0"),
    (["supervise", "--demo", "--denoiser-steps", "many"], ARGPARSE + "--denoiser-steps: must be an integer >= 1, got 'many'"),
    (["supervise", "--demo", "--batch-size", "0"], ARGPARSE + "--batch-size: must be an integer >= 1, got 0"),
    (["supervise", "--demo", "--drift-at", "-1"], ARGPARSE + "--drift-at: must be an integer >= 0, got -1"),
    (["supervise", "--demo", "--batches", "4", "--drift-at", "5"],
     HANDLER + "--drift-at 5 is after the last of --batches 4: give the first corrupted batch, 0..3 (or 4 for a stream without drift)"),
    (["supervise", "--demo", "--budget", "0"], ARGPARSE + "--budget: must be an integer >= 1, got 0"),
    (["supervise", "--demo", "--alpha", "0"], ARGPARSE + "--alpha: must be a number strictly between 0 and 1 (e.g. 0.05), got 0"),
    (["supervise", "--demo", "--alpha", "1.5"], ARGPARSE + "--alpha: must be a number strictly between 0 and 1 (e.g. 0.05), got 1.5"),
    (["supervise", "--demo", "--alpha", "nan"], ARGPARSE + "--alpha: must be a number strictly between 0 and 1 (e.g. 0.05), got nan"),
    (["supervise", "--demo", "--timeout", "0"], ARGPARSE + "--timeout: must be an integer >= 1, got 0"),
    (["supervise", "--demo", "--corruption", "nope"], ARGPARSE + "--corruption: unknown corruption 'nope': known ones are shot_noise"),
    (["supervise", "--demo", "--dataset", "imagenet"], ARGPARSE + "--dataset: unknown dataset 'imagenet'"),
    (["supervise"], HANDLER + "no stream to supervise: give --stream-dir DIR (a folder with stream.json) or --demo for a demo stream"),
    (["supervise", "--stream-dir", "{missing}"], HANDLER + "no stream folder {missing}: check the path, or ask for a demo stream (--demo)"),
    (["supervise", "--demo", "--stream-dir", "{notastream}"], HANDLER + "{notastream} holds files but no stream (stream.json missing)"),
    # improve: the decision
    (["improve", "--batch", "{good}", "--shown", "", "--action", "filter"],
     ARGPARSE + "--shown: give the batch rows shown, comma-separated (the detect result's selected_indices, e.g. 4,17,9), got ''"),
    (["improve", "--batch", "{good}", "--shown", "1,1", "--action", "filter"],
     HANDLER + "--shown repeats row 1: list each critical sample once, in the order shown"),
    (["improve", "--batch", "{good}", "--shown", "-1", "--action", "filter"],
     ARGPARSE + "--shown: batch rows are integers >= 0, comma-separated (e.g. 4,17,9), got '-1'"),
    (["improve", "--batch", "{good}", "--shown=2,-1", "--action", "filter"], ARGPARSE + "--shown: batch rows are integers >= 0"),
    (["improve", "--batch", "{good}", "--shown", "1,x", "--action", "filter"], ARGPARSE + "--shown: batch rows are integers >= 0"),
    (["improve", "--batch", "{good}", "--shown", "10", "--action", "filter"],
     HANDLER + "--shown row 10 is outside the batch of 10 images: rows are 0..9"),
    (["improve", "--batch", "{good}", "--shown", "1,2", "--action", "retrain"], HANDLER + "retrain needs labels"),
    (["improve", "--batch", "{good}", "--shown", "1,2", "--action", "retrain", "--labels", "?,?"], HANDLER + "retrain needs labels"),
    (["improve", "--batch", "{good}", "--shown", "1,2", "--action", "filter", "--labels", "3"], HANDLER + "got 1 labels for 2 critical samples: give one label per sample shown"),
    (["improve", "--batch", "{good}", "--shown", "1,2", "--action", "retrain", "--labels", "3,-2"], HANDLER + "label 1 is -2"),
    (["improve", "--batch", "{good}", "--shown", "1,2", "--action", "retrain", "--labels", "1,x"],
     HANDLER + "label 1 is 'x': labels are class indices, or ? for a sample you do not label"),
    (["improve", "--batch", "{good}", "--shown", "1", "--action", "filter", "--margin", "2"],
     HANDLER + "promotion margin must be a fraction in [0, 1), got 2.0"),
    (["improve", "--batch", "{good}", "--shown", "1", "--action", "filter", "--batch-id", "x y"], ARGPARSE + "--batch-id: a batch id"),
    (["improve", "--batch", "{good}", "--shown", "1", "--action", "filter", "--steps", "0"], ARGPARSE + "--steps: must be an integer >= 1, got 0"),
    (["improve", "--batch", "{good}", "--shown", "1", "--action", "filter", "--steps", "many"], ARGPARSE + "--steps: must be an integer >= 1, got 'many'"),
    # servers and the registry
    (["server", "start", "--port", "0"], ARGPARSE + "--port: must be an integer >= 1, got 0"),
    (["stack", "up", "--prefect-port", "70000"], ARGPARSE + "--prefect-port: must be a TCP port 1..65535, got 70000"),
    (["serve", "--limit", "0"], ARGPARSE + "--limit: must be an integer >= 1, got 0"),
    (["serve", "--poll-seconds", "0"], ARGPARSE + "--poll-seconds: must be an integer >= 1, got 0"),
    (["rollback", "--to", "0"], ARGPARSE + "--to: must be an integer >= 1, got 0"),
    (["answer", "some-run-id", "--action", "filter", "--labels", "x"], HANDLER + "label 0 is 'x'"),
]


def _refuse_servers(*_args, **_kwargs):
    raise AssertionError("a bad command line reached the Prefect server lookup: it should have been refused before")


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """An empty working directory (the one that must stay empty) and, beside it, the input files the table names."""
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    images = np.random.default_rng(0).integers(0, 256, (10, 8, 8), dtype=np.uint8)
    np.save(inputs / "good.npy", images)
    np.save(inputs / "my batch.npy", images)
    (inputs / "adir").mkdir()
    (inputs / "notastream").mkdir()
    (inputs / "notastream" / "mine.npy").write_bytes(b"not a stream")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{cwd / 'mlflow.db'}")
    monkeypatch.setenv("SCANFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")  # nothing listens: a run would fail, not start a server
    for name in ("use_prefect_server", "_keep_a_server_for_a_person", "_require_prefect_server"):
        monkeypatch.setattr(cli, name, _refuse_servers)
    places = {"good": inputs / "good.npy", "badname": inputs / "my batch.npy", "dir": inputs / "adir",
              "missing": inputs / "missing.npy", "notastream": inputs / "notastream"}
    return cwd, inputs, {key: str(path) for key, path in places.items()}


def _run(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as stop:  # argparse's usage errors
        return stop.code


def _snapshot(folder) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


@pytest.mark.parametrize(("argv", "message"), BAD_COMMAND_LINES, ids=[" ".join(argv)[:60] for argv, _ in BAD_COMMAND_LINES])
def test_a_bad_command_line_is_refused_before_anything_is_written(workspace, capsys, argv, message):
    cwd, inputs, places = workspace
    before = _snapshot(inputs)
    code = _run([part.format(**places) for part in argv])
    out, err = capsys.readouterr()
    assert code == 2, err
    assert message.format(**places) in err
    assert "Traceback" not in out + err
    assert list(cwd.iterdir()) == []  # no mlflow.db, no stream/, no PNG
    assert _snapshot(inputs) == before


def test_the_table_covers_every_command_the_issue_names():
    assert len(BAD_COMMAND_LINES) >= 25
    commands = {argv[0] for argv, _ in BAD_COMMAND_LINES}
    assert {"detect", "predict", "improve", "train", "corrupt", "supervise"} <= commands


def test_good_values_parse_to_what_the_handlers_use(tmp_path):
    batch = tmp_path / "b.npy"
    np.save(batch, np.zeros((2, 8, 8), dtype=np.uint8))
    parser = build_parser()
    corrupt = parser.parse_args(["corrupt"])
    assert corrupt.severities == [1, 2, 3, 4, 5] and corrupt.corruptions is None and corrupt.dataset == "default"
    corrupt = parser.parse_args(["corrupt", "--severities", "1, 5", "--corruptions", "fog,shot_noise"])
    assert corrupt.severities == [1, 5] and corrupt.corruptions == ["fog", "shot_noise"]
    assert parser.parse_args(["study", "--corruptions", "all"]).corruptions == list(CORRUPTIONS)
    assert parser.parse_args(["corrupt", "--severity", "3"]).severities == [3]  # the singular a person may type
    detect = parser.parse_args(["detect", "--batch", str(batch), "--batch-id", "line-3_2024.06"])
    assert detect.batch_id == "line-3_2024.06" and detect.budget == 20
    improve = parser.parse_args(["improve", "--batch", str(batch), "--shown", "4, 0", "--action", "filter"])
    assert improve.shown == [4, 0]
    supervise = parser.parse_args(["supervise", "--alpha", "0.01", "--drift-at", "0"])
    assert supervise.alpha == 0.01 and supervise.drift_at == 0 and supervise.demo is False
    assert parser.parse_args(["rollback", "--to", "7"]).to_version == "7"
    assert parser.parse_args(["train", "--dataset", "Fashion_MNIST"]).dataset == "Fashion_MNIST"


def test_supervise_passes_demo_and_the_checked_options_to_the_flow(tmp_path, monkeypatch, capsys):
    seen = {}

    def supervise_flow(**kwargs):
        seen.update(kwargs)
        return {"batches": [], "champion": "1", "tracking_uri": "sqlite:///x.db", "prefect_flow_run_id": "run"}

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "use_prefect_server", lambda *args, **kwargs: None)
    monkeypatch.setitem(sys.modules, "flows.supervise", types.SimpleNamespace(supervise_flow=supervise_flow))
    argv = ["supervise", "--demo", "--batches", "4", "--drift-at", "4", "--corruption", "fog", "--alpha", "0.1", "--budget", "5"]
    assert main(argv) == 0
    assert seen["demo"] is True and seen["stream_dir"] is None
    assert (seen["n_batches"], seen["drift_at"], seen["corruption"], seen["alpha"], seen["budget"]) == (4, 4, "fog", 0.1, 5)
    assert "Champion now: v1" in capsys.readouterr().out
