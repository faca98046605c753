"""The `scanflow` command. Prefect and the flows are imported only inside the commands that run flows, after the
Prefect server to use is found (`scanflow.local.prefect_api_url`) and set as PREFECT_API_URL.

Exit codes: 0 done, 2 a ScanflowError (bad input, unknown run...), 3 a server the command needs is missing
(ServiceUnavailableError), 1 anything else. Options that can be checked without a model are checked before any flow
or server starts: by argparse `type=` functions (argparse prints the usage error and exits 2), then at the start of the
handler for checks across options (a ScanflowError, exit 2)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import json
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scanflow.config import CHAMPION_ALIAS, DENOISER_STEPS, RETRAIN_STEPS, SERVE_POLL_S, WARM_COMMANDS
from scanflow.errors import ScanflowError, ServiceUnavailableError

if TYPE_CHECKING:
    import torch

    from flows.pending import PendingDecision
    from scanflow.warm import Answer

EPILOG = """\
examples:
  scanflow datasets                      what data is available here, and where
  scanflow train                         train on the default dataset, track in MLflow, register as champion
  scanflow train --dataset mnist --data-dir ../shared/data
  scanflow corrupt --output corruptions.png
  scanflow detect --batch batch.npy --json  test a production batch (uint8 [N,H,W] or [N,C,H,W]) for drift
  scanflow detect --batch s3://BUCKET/KEY  the same on an object in S3 (bucket settings: SCANFLOW_S3_BUCKET, AWS_*)
  scanflow predict --batch batch.npy      label a batch with the served champion; predictions logged with lineage
  scanflow improve --batch batch.npy --shown 4,17,9 --action retrain --labels 3,3,8
                                         apply a decision on a drifted batch; promote the result if it earns it
  scanflow supervise --demo              the whole loop on a demo stream written to ./stream (clean, then corrupted)
  scanflow rollback                      give the champion alias back to the version it replaced
  scanflow server start                  keep a local Prefect server running (every command then uses it)
  scanflow runner start                  keep detect and predict warm: they then answer in about a second
  scanflow pending                       list the decisions waiting for a person
"""


# Option checks that need no model: argparse calls these on the text typed (and on string defaults), and on an
# ArgumentTypeError prints "scanflow CMD: error: argument --OPTION: MESSAGE" and exits 2, before any handler runs.

BATCH_ID_PATTERN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")
BATCH_ID_RULE = ("a batch id names S3 keys and files: letters, digits, '.', '_' and '-', "
                 "not starting with a dot, at most 128 characters")
SEVERITIES = range(1, 6)


def _integer_at_least(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {value}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (epochs, budgets, batch counts and sizes, seconds)."""
    return _integer_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """An integer >= 0 (seeds, batch positions)."""
    return _integer_at_least(text, 0)


MODEL_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def model_name(text: str) -> str:
    """A registered model name: letters, digits, '.', '_' and '-', at most 128 characters."""
    if not MODEL_NAME_PATTERN.fullmatch(text):
        raise argparse.ArgumentTypeError(f"must be letters, digits, '.', '_' or '-' (at most 128, not starting with a "
                                         f"punctuation mark), got {text!r}")
    return text


def input_size(text: str) -> str:
    """HEIGHTxWIDTH in pixels, e.g. 32x32."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(part.isdigit() and 0 < int(part) <= 4096 for part in parts):
        raise argparse.ArgumentTypeError(f"must be HEIGHTxWIDTH in pixels, e.g. 32x32, got {text!r}")
    return text.lower()


def float_list(text: str) -> list[float]:
    """Comma-separated numbers, e.g. 0.5,0.5,0.5."""
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated numbers, e.g. 0.5,0.5,0.5, got {text!r}") from None
    if not values or not all(v == v and abs(v) != float("inf") for v in values):
        raise argparse.ArgumentTypeError(f"must be finite numbers, got {text!r}")
    return values


def class_names_file(text: str) -> list[str]:
    """A text file of class names, one per line (blank lines ignored)."""
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text} is not a file: write the class names one per line, in the model's output order")
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError:
        raise argparse.ArgumentTypeError(f"{text} is not UTF-8 text: write the class names one per line") from None
    if len(names) < 2 or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"{text} must name at least two distinct classes, one per line; it has {names[:5]}")
    return names


def port_number(text: str) -> int:
    """A TCP port, 1..65535."""
    value = _integer_at_least(text, 1)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port 1..65535, got {value}")
    return value


def version_number(text: str) -> str:
    """A registered model version (an integer >= 1), kept as the string MLflow uses."""
    return str(_integer_at_least(text, 1))


def fraction_open(text: str) -> float:
    """A number strictly between 0 and 1 (a false-alarm rate)."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"must be a number strictly between 0 and 1 (e.g. 0.05), got {text!r}") from None
    if not 0 < value < 1:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a number strictly between 0 and 1 (e.g. 0.05), got {text}")
    return value


def severity_list(text: str) -> list[int]:
    """Comma-separated severities, each 1..5."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts:
        raise argparse.ArgumentTypeError(f"give comma-separated severities 1..5 (e.g. 1,3,5), got {text!r}")
    severities = []
    for part in parts:
        try:
            value = int(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"severities are integers 1..5, comma-separated (e.g. 1,3,5), got {part!r}") from None
        if value not in SEVERITIES:
            raise argparse.ArgumentTypeError(f"severities are integers 1..5, comma-separated (e.g. 1,3,5), got {value}")
        severities.append(value)
    return severities


def _check_corruption(name: str) -> str:
    from scanflow.corruptions import CORRUPTIONS

    if name not in CORRUPTIONS:
        raise argparse.ArgumentTypeError(f"unknown corruption {name!r}: known ones are {', '.join(CORRUPTIONS)}")
    return name


def corruption_name(text: str) -> str:
    """One name of `scanflow.corruptions.CORRUPTIONS`."""
    return _check_corruption(text.strip())


def corruption_list(text: str) -> list[str]:
    """Comma-separated names of `scanflow.corruptions.CORRUPTIONS`, or `all` for every one of them."""
    from scanflow.corruptions import CORRUPTIONS

    if text.strip() == "all":
        return list(CORRUPTIONS)
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"give comma-separated corruption names (e.g. shot_noise,fog), got {text!r}")
    return [_check_corruption(name) for name in names]


def dataset_name(text: str) -> str:
    """A dataset name `scanflow.data` knows (or 'default'); kept as typed."""
    from scanflow.data import canonical_dataset_name
    from scanflow.errors import UnknownDatasetError

    try:
        canonical_dataset_name(text)
    except UnknownDatasetError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def batch_id(text: str) -> str:
    """An identifier safe in S3 keys and file names (`BATCH_ID_RULE`)."""
    if not BATCH_ID_PATTERN.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{BATCH_ID_RULE}; got {text!r}")
    return text


def batch_file(text: str) -> str:
    """A batch that exists: a .npy file, a folder of image files, an image file or .npz (their contents are checked
    in the handler, or against the model's contract by the flow), or an S3 object or prefix `s3://BUCKET/KEY`."""
    from scanflow.storage import is_s3_uri, parse_s3_uri

    if is_s3_uri(text):
        try:
            parse_s3_uri(text)
        except ScanflowError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
        return text
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"batch {path} does not exist: pass a .npy file written with numpy.save, a "
                                         "folder of PNG/JPEG images, or s3://bucket/key")
    return text


def png_file(text: str) -> str:
    """A file to write a PNG to: not an existing directory."""
    if not text.strip():
        raise argparse.ArgumentTypeError("give a file name such as corruptions.png")
    if Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory: give a file name such as corruptions.png")
    return text


def row_list(text: str) -> list[int]:
    """Comma-separated batch rows (integers >= 0), at least one."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts:
        raise argparse.ArgumentTypeError(
            f"give the batch rows shown, comma-separated (the detect result's selected_indices, e.g. 4,17,9), got {text!r}")
    rows = []
    for part in parts:
        try:
            rows.append(_integer_at_least(part, 0))
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(f"batch rows are integers >= 0, comma-separated (e.g. 4,17,9), got {part!r}") from None
    return rows


def _load_batch(location: str) -> "torch.Tensor":
    """The validated images of the batch at `location` (shape and classes are checked against the model later, in
    the flow): a .npy file, or an object `s3://BUCKET/KEY` read through `scanflow.storage.S3Store` with the bucket
    settings of the environment (`StorageConfig.from_env`: SCANFLOW_S3_BUCKET, AWS_*), into the local data cache,
    where the flow finds it again. Raises ObjectNotFoundError (exit 2) for a missing key, StorageUnavailableError
    (exit 3) for an endpoint that does not answer or refuses the keys, InvalidBatchError for bad content."""
    from scanflow.data import default_cache_dir, load_batch_file
    from scanflow.errors import InvalidBatchError
    from scanflow.storage import is_s3_uri

    if not is_s3_uri(location):
        return load_batch_file(location)
    from scanflow.config import StorageConfig
    from scanflow.storage import S3Store

    config = StorageConfig.from_env()
    if config is None:
        raise ScanflowError(f"{location} is in S3 but no storage is configured: set SCANFLOW_S3_BUCKET and the AWS_* "
                            "variables (`scanflow stack env` prints them for the local stack)")
    local = S3Store(config).fetch(location, default_cache_dir() / "s3")
    try:
        return load_batch_file(local)
    except InvalidBatchError as error:
        raise InvalidBatchError(str(error).replace(str(local), location)) from None


def _default_batch_id(args: argparse.Namespace) -> None:
    """Without --batch-id the file name is the batch id: refuse a name that is not a safe one, naming the fix."""
    if args.batch_id is None and not BATCH_ID_PATTERN.fullmatch(Path(args.batch).stem):
        raise ScanflowError(f"the batch file name {Path(args.batch).stem!r} cannot be the batch id ({BATCH_ID_RULE}): "
                            "give one with --batch-id, or rename the file")



def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help="directory holding the dataset files (default: $SCANFLOW_DATA_DIR, then system locations)")
    parser.add_argument("--allow-download", action="store_true", help="let torchvision download missing datasets into the cache")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scanflow",
        description="Keep deployed image classifiers honest: train, predict, detect drift, improve.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks (also SCANFLOW_DEBUG=1)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    datasets = commands.add_parser("datasets", help="list the datasets Scanflow knows and where each is found")
    datasets.add_argument("--data-dir", help="also look in this directory")
    datasets.add_argument("--json", action="store_true", help="print JSON instead of a table")
    datasets.set_defaults(handler=_datasets)

    train = commands.add_parser(
        "train",
        help="run the train flow: classifier + autoencoder, tracked in MLflow, registered as champion",
        description="Runs the Prefect train flow. MLflow store: $MLFLOW_TRACKING_URI (default ./mlflow.db). "
        "Prefect: $PREFECT_API_URL, else the server of `scanflow server start` (or of `scanflow stack`), else a temporary one.",
    )
    train.add_argument("--dataset", type=dataset_name, default="default", help="fashion-mnist, mnist, digits, cifar10, fashion-rgb (32x32 RGB, made offline), fashion-rgb-64 (the same at 64x64) or 'default' (first of fashion-mnist/digits present)")
    train.add_argument("--epochs", type=positive_int, help="classifier epochs (default: about 150k images, 3 epochs of Fashion-MNIST)")
    train.add_argument("--autoencoder-epochs", type=positive_int, help="autoencoder epochs (default: twice the classifier's default, about 300k images)")
    train.add_argument("--seed", type=non_negative_int, default=0)
    train.add_argument("--no-register", action="store_true", help="track the run but do not register the models")
    train.add_argument("--force", action="store_true",
                       help="replace a champion trained on another dataset, class set or input shape (refused without it)")
    _add_data_arguments(train)
    train.set_defaults(handler=_train)

    adopt = commands.add_parser(
        "adopt",
        help="put a registered model Scanflow did not train under supervision (champion, with a fitted detector)",
        description="Runs the Prefect adopt flow: reads the model's input contract (signature, metadata, these flags), "
        "fits the autoencoder and the drift detector on the reference images and makes the version the champion. "
        "The model's artifact is not changed. Afterwards set SCANFLOW_MODEL_NAME to the supervised name.",
    )
    adopt.add_argument("model_uri", help="models:/NAME/VERSION or models:/NAME@ALIAS (a pytorch or pyfunc model)")
    adopt.add_argument("--reference", required=True, help="clean images the model serves well: a folder (class sub-folders "
                       "or flat), .npy/.npz, or s3://bucket/prefix/ (at least 50)")
    adopt.add_argument("--classes", type=class_names_file, help="a file of class names, one per line, in the model's output order")
    adopt.add_argument("--input-size", type=input_size, help="HEIGHTxWIDTH the model takes, e.g. 32x32 (when its signature does not say)")
    adopt.add_argument("--channels", type=int, choices=(1, 3), help="1 (grey) or 3 (RGB), when the signature does not say (default 3)")
    adopt.add_argument("--mean", type=float_list, help="per-channel mean of the normalisation, e.g. 0.49,0.48,0.45 (default 0)")
    adopt.add_argument("--std", type=float_list, help="per-channel std of the normalisation (default 1: pixels in 0..1)")
    adopt.add_argument("--output", choices=("logits", "probabilities", "labels"), help="what the model returns (default: logits "
                       "for pytorch, probabilities for pyfunc)")
    adopt.add_argument("--embedding-layer", metavar="LAYER", help="a pytorch model's layer whose output is its embedding (a name "
                       "from named_modules(), e.g. its penultimate layer): the detector also scores distances in it")
    adopt.add_argument("--embedding-model", metavar="MODEL_URI", help="instead, a registered MLflow model (models:/NAME/VERSION "
                       "or @ALIAS) that maps the model's input to its embedding [N, D]: for a pyfunc, whose layers Scanflow "
                       "cannot read")
    adopt.add_argument("--name", type=model_name, help="the registered name to supervise it under (default: the model's own)")
    adopt.add_argument("--on-bad", choices=("refuse", "skip"), default="refuse", help="a bad reference file refuses the "
                       "adoption (default) or is skipped and listed")
    adopt.add_argument("--autoencoder-epochs", type=positive_int, help="autoencoder epochs (default: scaled to the reference size)")
    adopt.set_defaults(handler=_adopt)

    detect = commands.add_parser(
        "detect",
        help="run the detect flow on one batch: drift verdict, critical samples, MLflow run, Prefect artifacts",
        description="Tests a .npy batch of uint8 images against the detector of the registered model at ALIAS.",
    )
    detect.add_argument("--batch", type=batch_file, required=True, help="a .npy of uint8 images [N, H, W] or [N, C, H, W], a folder of PNG/JPEG images (converted to the model's input), or s3://bucket/key or prefix/")
    detect.add_argument("--model", default=None, help="NAME@ALIAS of the registered classifier (default: $SCANFLOW_MODEL_NAME@champion)")
    detect.add_argument("--batch-id", type=batch_id, help="identifier recorded with the result (default: the file name)")
    detect.add_argument("--budget", type=positive_int, default=20, help="samples to select for labelling (default: 20)")
    detect.add_argument("--no-report", action="store_true", help="skip Evidently's HTML report (saves a few seconds)")
    detect.add_argument("--json", action="store_true", help="print the drift result as JSON")
    detect.set_defaults(handler=_detect)

    predict = commands.add_parser(
        "predict", help="run the predict flow: label a batch with the served champion, log predictions and lineage to MLflow"
    )
    predict.add_argument("--batch", type=batch_file, required=True, help="a .npy of uint8 images, a folder of PNG/JPEG images, or s3://bucket/key or prefix/")
    predict.add_argument("--batch-id", type=batch_id, help="identifier recorded with the predictions (default: the file name)")
    predict.add_argument("--alias", default=CHAMPION_ALIAS, help=f"registry alias to serve (default: {CHAMPION_ALIAS})")
    predict.add_argument("--json", action="store_true", help="print the summary and labels as JSON")
    predict.set_defaults(handler=_predict)

    improve = commands.add_parser(
        "improve",
        help="run the improve flow: retrain or filter after drift, register the challenger, promote it if it earns it",
        description="Applies a decision on a drifted batch. --shown lists the batch rows shown to the person (the "
        "detect result's selected_indices), --labels their classes in that order.",
    )
    improve.add_argument("--batch", type=batch_file, required=True, help="the drifted batch, as given to detect")
    improve.add_argument("--shown", type=row_list, required=True, help="comma-separated batch rows shown to the person, in order")
    improve.add_argument("--action", required=True, choices=("retrain", "filter", "ignore"))
    improve.add_argument("--labels", default="", help="comma-separated class indices of the shown samples, in order; ? for a sample nobody labelled")
    improve.add_argument("--note", default="", help="recorded with the decision in MLflow")
    improve.add_argument("--margin", type=float, default=0.005, help="clean accuracy a challenger may lose (default: 0.005)")
    improve.add_argument("--batch-id", type=batch_id, help="identifier recorded with the decision (default: the file name)")
    improve.add_argument("--data-dir", help="directory holding the champion's dataset files")
    improve.add_argument("--steps", type=positive_int, help="optimisation steps per retraining round, or of the filter's "
                         f"denoiser (default: {RETRAIN_STEPS} and {DENOISER_STEPS}); fewer train faster and fit the shift less")
    improve.add_argument("--json", action="store_true", help="print the outcome as JSON")
    improve.set_defaults(handler=_improve)

    supervise = commands.add_parser(
        "supervise",
        help="the whole loop: train a champion if there is none, then predict, detect and (on drift) ask and improve, per batch",
        description="Supervises a production stream: the one in --stream-dir, or with --demo a demo stream written to "
        "./stream (or --stream-dir): clean batches, then corrupted ones. On drift the run pauses for a decision: answered by the oracle (true labels), the policy, or a "
        "person in the Prefect UI or with `scanflow answer`.",
    )
    supervise.add_argument("--stream-dir", help="folder of a stream written before (with --demo: where the demo stream goes, default ./stream)")
    supervise.add_argument("--demo", action="store_true", help="write a demo stream to ./stream (or --stream-dir) and supervise it")
    supervise.add_argument("--stream", help="a folder or s3://bucket/prefix/ receiving image files: each new sub-folder is a "
                           "batch (or each --files-per-batch new files); run it again, or on a schedule, for the new ones")
    supervise.add_argument("--files-per-batch", type=positive_int, help="with --stream: batches of this many new files "
                           "directly under it, instead of sub-folders")
    supervise.add_argument("--dataset", type=dataset_name, default="default")
    supervise.add_argument("--batches", type=positive_int, default=6, help="demo stream: number of batches (default: 6)")
    supervise.add_argument("--batch-size", type=positive_int, default=200, help="demo stream: images per batch (default: 200)")
    supervise.add_argument("--drift-at", type=non_negative_int, default=3,
                           help="demo stream: first corrupted batch, 0-based; --batches for none (default: 3)")
    supervise.add_argument("--corruption", type=corruption_name, default="shot_noise", help="demo stream: corruption (default: shot_noise)")
    supervise.add_argument("--human", choices=("oracle", "policy", "person"), default="oracle",
                           help="who answers a pause: simulated oracle (default), simulated policy, or a person")
    supervise.add_argument("--interactive", action="store_true",
                           help="a person answers: use the running Prefect server (or start one that keeps running, as "
                           "`scanflow server start`), print the UI link, wait")
    supervise.add_argument("--policy", help="name of a SupervisionPolicy block (default: the built-in policy); the options below override it")
    supervise.add_argument("--tracking", help="name of an MLflowTracking block (default: $MLFLOW_TRACKING_URI and $SCANFLOW_*)")
    supervise.add_argument("--timeout", type=positive_int, help="seconds a pause waits for an answer (policy default: 3600)")
    supervise.add_argument("--on-timeout", choices=("filter", "ignore"),
                           help="the action when nobody answers in time (policy default: ignore; retraining needs labels); recorded as a timeout")
    supervise.add_argument("--budget", type=positive_int, help="critical samples shown per drifted batch (policy default: 20)")
    supervise.add_argument("--alpha", type=fraction_open, help="false-alarm rate of the drift test on clean batches (policy default: 0.05)")
    supervise.add_argument("--ask-known-shifts", action="store_true", default=None,
                           help="ask again about a drift that repeats a shift already decided about (default: one drift, one question)")
    supervise.add_argument("--retrain-steps", type=positive_int, metavar="N",
                           help=f"optimisation steps per retraining round of a decision (policy default: {RETRAIN_STEPS})")
    supervise.add_argument("--denoiser-steps", type=positive_int, metavar="N",
                           help=f"optimisation steps of a filter decision's denoiser (policy default: {DENOISER_STEPS})")
    supervise.add_argument("--step-deployments", metavar="NAME",
                           help="run the steps as the deployments <flow>/NAME (see `scanflow serve`) instead of sub-flows in this process")
    supervise.add_argument("--inline-steps", action="store_true",
                           help="run each batch's predict and detect as tasks of the supervise run instead of sub-flows: the same "
                                "MLflow runs and Prefect artifacts in about half the time per batch")
    supervise.set_defaults(handler=_supervise)

    answer = commands.add_parser(
        "answer", help="answer a paused supervise run (shows its critical samples' summary first)",
        description="Resumes the paused decision form of flow run RUN_ID (the supervise run or its ask-human child).",
    )
    answer.add_argument("run_id", help="the supervise flow run id (or the paused ask-human run id)")
    answer.add_argument("--action", required=True, choices=("retrain", "filter", "ignore"))
    answer.add_argument("--labels", default=None,
                        help="comma-separated class indices in the order shown, '?' for a sample you leave unlabelled (default: none labelled)")
    answer.add_argument("--note", default="")
    answer.set_defaults(handler=_answer)

    pending = commands.add_parser(
        "pending", help="list the decisions waiting for a person (paused ask-human runs) with their critical samples",
        description="For each paused decision: batch, age, recommendation, UI link, run id, and the critical samples "
        "(a PNG grid written to DIR/<batch_id>.png, and a table). Needs a Prefect server (`scanflow server start`).",
    )
    pending.add_argument("--dir", default="scanflow-pending", help="folder for the PNG grids (default: ./scanflow-pending)")
    pending.add_argument("--json", action="store_true", help="print a JSON list instead of text")
    pending.set_defaults(handler=_pending)

    server = commands.add_parser(
        "server", help="a local Prefect server that outlives commands: start, stop, status",
        description="start: `prefect server start` on 127.0.0.1 in the background (PREFECT_HOME=$SCANFLOW_HOME/prefect, "
        "default ~/.scanflow/prefect), recorded in $SCANFLOW_HOME/server.json; every scanflow command then uses it. "
        "stop: stop the server that start started. status: running or stopped, and its UI.",
    )
    server.add_argument("action", choices=("start", "stop", "status"))
    server.add_argument("--port", type=port_number, help="start: the port (default 4200 when free, else a free one)")
    server.set_defaults(handler=_server)

    runner = commands.add_parser(
        "runner", help="a warm process that runs detect and predict without their start-up cost: start, stop, status",
        description="start: a background process (recorded in $SCANFLOW_HOME/runner.json) that imports torch, Prefect, "
        "MLflow and the flows once, then runs `scanflow detect` and `scanflow predict` for every shell with the same "
        "Prefect server and the same MLFLOW_*, SCANFLOW_*, AWS_* and PREFECT_* settings as the shell that started it: "
        "the same runs and records, in about a second instead of several. Needs a Prefect server (`scanflow server "
        "start`). stop: stop it. status: running or stopped.",
    )
    runner.add_argument("action", choices=("start", "stop", "status"))
    runner.set_defaults(handler=_runner)

    notify = commands.add_parser(
        "notify", help="POST to a webhook whenever a decision starts waiting (a Prefect automation on the server)",
        description="Saves a Custom Webhook notification block NAME and the automation NAME that sends it (JSON with "
        "subject and body, naming the run and linking to it) each time a run of ask-human pauses. Running it again "
        "replaces both.",
    )
    notify.add_argument("--webhook", required=True, help="the URL to POST to")
    notify.add_argument("--name", default="scanflow-decision-waiting", help="block and automation name (default: scanflow-decision-waiting)")
    notify.set_defaults(handler=_notify)

    blocks = commands.add_parser(
        "blocks", help="Prefect blocks: register Scanflow's block types (storage, tracking, policy) with the server",
        description="Registers ScanflowStorage, MLflowTracking and SupervisionPolicy with the Prefect server at "
        "$PREFECT_API_URL, so they appear in the UI's block catalog.",
    )
    blocks.add_argument("action", choices=("register",))
    blocks.add_argument("--save-defaults", action="store_true",
                        help="also save a 'default' document of each block from the environment (storage only if $SCANFLOW_S3_BUCKET is set)")
    blocks.add_argument("--overwrite", action="store_true", help="with --save-defaults: replace existing 'default' documents")
    blocks.set_defaults(handler=_blocks)

    serve_parser = commands.add_parser(
        "serve", help="serve every flow as a deployment from this process, with the drift automation (Ctrl-C stops)",
        description="Serves train/predict/detect/improve/supervise/respond-to-drift as deployments named NAME, and the "
        "automation that starts respond-to-drift/NAME on every scanflow.drift.detected event. Needs $PREFECT_API_URL.",
    )
    serve_parser.add_argument("--name", default="process", help="deployment name (default: process)")
    serve_parser.add_argument("--human", choices=("oracle", "policy", "person"), default="person",
                              help="who answers the pauses of runs started from these deployments (default: person)")
    serve_parser.add_argument("--tracking", help="MLflowTracking block the deployments use (default: the environment of this process)")
    serve_parser.add_argument("--policy", help="SupervisionPolicy block of the supervise and respond deployments")
    serve_parser.add_argument("--limit", type=positive_int, help="at most this many runs at once")
    serve_parser.add_argument("--poll-seconds", type=positive_int, default=SERVE_POLL_S,
                              help=f"seconds between asks to the server for runs to start (default: {SERVE_POLL_S})")
    serve_parser.set_defaults(handler=_serve)

    stack = commands.add_parser(
        "stack", help="the local stack: SeaweedFS (S3), MLflow server (artifacts in S3), Prefect server, as local processes",
        description="up: start the three servers from DIR (data kept across restarts), health-checked, and print the "
        "variables that point at them (eval \"$(scanflow stack env)\" in a shell); down: stop them; status: which run.",
    )
    stack.add_argument("action", choices=("up", "down", "status", "env"))
    stack.add_argument("--dir", default=".scanflow/stack", help="where the stack keeps its data, logs and PIDs (default: .scanflow/stack)")
    stack.add_argument("--prefect-port", type=port_number, help="default 4200 (first start; later starts reuse the ports)")
    stack.add_argument("--mlflow-port", type=port_number, help="default 5000")
    stack.add_argument("--s3-port", type=port_number, help="default 8333")
    stack.set_defaults(handler=_stack)

    image = commands.add_parser(
        "build-image", help="build the step image (infra/Dockerfile) through the Docker SDK, streaming its output",
        description="Assembles the build context (sources, dependency pins of this environment, a local CPU torch "
        "wheel when pip's find-links hold one, the CA bundle) and builds it; an image built from the same context is reused.",
    )
    image.add_argument("--tag", default="scanflow-step:latest")
    image.add_argument("--base-image", default="python:3.11-slim",
                       help="a Debian/Ubuntu image with apt (default python:3.11-slim; without a registry, a local debootstrap image: infra/base-image.sh)")
    image.add_argument("--force", action="store_true", help="rebuild even if an image from the same context exists")
    image.set_defaults(handler=_build_image)

    rollback = commands.add_parser(
        "rollback", help="point the champion alias back at the version the current champion replaced (or --to VERSION)"
    )
    rollback.add_argument("--to", dest="to_version", type=version_number, help="the classifier version to make champion again")
    rollback.set_defaults(handler=_rollback)

    corrupt = commands.add_parser("corrupt", help="write a PNG gallery of the 15 MNIST-C corruptions at every severity")
    corrupt.add_argument("--dataset", type=dataset_name, default="default")
    corrupt.add_argument("--output", type=png_file, default="corruptions.png", help="PNG file to write (default: corruptions.png)")
    corrupt.add_argument("--images", type=positive_int, default=2, help="images per cell (default: 2)")
    corrupt.add_argument("--corruptions", type=corruption_list, help="comma-separated names (default: all 15)")
    corrupt.add_argument("--severities", type=severity_list, default="1,2,3,4,5", help="comma-separated severities 1..5 (default: all)")
    corrupt.add_argument("--severity", dest="severities", type=severity_list, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    corrupt.add_argument("--seed", type=non_negative_int, default=0)
    corrupt.add_argument("--scale", type=positive_int, default=3, help="pixel enlargement (default: 3)")
    _add_data_arguments(corrupt)
    corrupt.set_defaults(handler=_corrupt)

    study = commands.add_parser(
        "study", help="the seed study: streams turning corrupted, the oracle's decisions, every remedy measured, with plots",
        description="Per seed a champion is trained (as the registered model scanflow-study-<dataset>-classifier, never "
        "your champion); per corruption and severity a stream of clean then corrupted batches goes through the detect "
        "flow, the oracle decides through the improve flow, and retrain with the person's, random or pseudo labels, the "
        "filter and the all-labelled ceiling are measured on one holdout. Tables and plots go to --out and to one MLflow run.",
    )
    study.add_argument("--dataset", type=study_dataset, default="default",
                       help="a dataset `scanflow datasets` lists, or rgb: CIFAR-10 when its files are here, else fashion-rgb")
    study.add_argument("--quick", action="store_true", help="one corruption per family at severity 3, one seed (the default set); "
                       "without it: every corruption and severity, three seeds")
    study.add_argument("--corruptions", type=corruption_list, help="comma-separated names, or all (override the set)")
    study.add_argument("--severities", type=severity_list, help="comma-separated severities 1..5 (override the set)")
    study.add_argument("--budgets", type=budget_list, help="comma-separated label budgets, increasing (quick: 20,50,100)")
    study.add_argument("--seeds", type=positive_int, help="how many seeds (0, 1, ...); intervals over seeds when more than one")
    study.add_argument("--batch-size", type=positive_int, help="images per stream batch (default: 200)")
    study.add_argument("--holdout-size", type=positive_int, help="held-out test images every remedy is judged on (default: 1000)")
    study.add_argument("--retrain-steps", type=positive_int, help="fine-tuning steps of each measured retrain and of the oracle's (half per round; quick: 100)")
    study.add_argument("--denoiser-steps", type=positive_int, help="training steps of the measured filters' denoisers and of the oracle's filter (quick: 600)")
    study.add_argument("--epochs", type=positive_int, help="the champion's training epochs (default: the train flow's)")
    study.add_argument("--autoencoder-epochs", type=positive_int, help="its autoencoder's epochs (default: the train flow's)")
    study.add_argument("--out", default="study-results", help="folder for study.md, cells.csv and the plots (default: ./study-results)")
    study.add_argument("--tracking", help="name of an MLflowTracking block (default: $MLFLOW_TRACKING_URI and $SCANFLOW_*)")
    _add_data_arguments(study)
    study.set_defaults(handler=_study)
    return parser


def study_dataset(text: str) -> str:
    """A dataset name for `scanflow study`: any `dataset_name`, or `rgb` (the RGB set available here)."""
    return "rgb" if text.strip().lower() == "rgb" else dataset_name(text)


def budget_list(text: str) -> list[int]:
    """Comma-separated label budgets, each >= 1."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts:
        raise argparse.ArgumentTypeError(f"give comma-separated label budgets (e.g. 20,50,100), got {text!r}")
    return [positive_int(part) for part in parts]


def _study_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The options that override the study's set; `None` where not given."""
    return {"corruptions": args.corruptions, "severities": args.severities, "budgets": args.budgets,
            "seeds": list(range(args.seeds)) if args.seeds else None, "batch_size": args.batch_size,
            "holdout_size": args.holdout_size, "retrain_steps": args.retrain_steps, "denoiser_steps": args.denoiser_steps}


def _study(args: argparse.Namespace) -> int:
    from scanflow import study

    overrides = _study_overrides(args)
    config = study.config_for(args.dataset, args.quick, **overrides)
    study.check_fits(config, args.data_dir)  # before a server, a flow run or a training
    use_prefect_server(fallback=True)
    from flows.study import study_flow

    result = study_flow(dataset=args.dataset, quick=args.quick, out_dir=args.out, data_dir=args.data_dir, tracking=args.tracking,
                        epochs=args.epochs, autoencoder_epochs=args.autoencoder_epochs, **overrides)
    print(f"study of {result.cells} cells written to {result.out_dir}: {', '.join(result.files)}")
    print("\n".join(result.headline.lines()))
    print(f"MLflow run: {result.mlflow_run_id}")
    print(f"Prefect UI: {prefect_ui_hint(result.prefect_flow_run_id)}")
    return 0


def _datasets(args: argparse.Namespace) -> int:
    from scanflow.data import dataset_availability

    rows = dataset_availability(args.data_dir)
    if args.json:
        print(json.dumps([asdict(row) for row in rows], indent=2))
        return 0
    for row in rows:
        status = "available" if row.available else "missing"
        print(f"{row.name:14} {status:9} {row.location or ''}")
        if not row.available:
            print(f"{'':14} how to get it: {row.how_to_get}")
    return 0


def _corrupt(args: argparse.Namespace) -> int:
    from scanflow.corruptions import corruption_names
    from scanflow.data import load_dataset
    from scanflow.gallery import corruption_gallery, save_png

    data = load_dataset(args.dataset, "test", data_dir=args.data_dir, allow_download=args.allow_download)
    names = args.corruptions or list(corruption_names())
    severities = args.severities
    picture = corruption_gallery(data.images[: args.images], names, severities, seed=args.seed, scale=args.scale)
    path = save_png(picture, args.output)
    print(f"wrote {path.resolve()} ({len(names)} corruptions x {len(severities)} severities, {data.info.name})")
    return 0


def _detect(args: argparse.Namespace) -> int:
    _default_batch_id(args)
    check_batch(args.batch)
    name, alias = None, CHAMPION_ALIAS
    if args.model:
        name, _, alias = args.model.partition("@")
        if not name or not alias:
            raise ScanflowError(f"--model must look like NAME@ALIAS (e.g. scanflow-classifier@champion), got {args.model!r}")
    use_prefect_server(fallback=True)
    from flows.detect import detect_flow

    report = detect_flow(batch_path=args.batch, batch_id=args.batch_id, alias=alias, budget=args.budget, report=not args.no_report,
                         model=name)
    if args.json:
        print(json.dumps(report.brief(), indent=2))
    else:
        verdict = "DRIFT" if report.is_drift else "no drift"
        print(
            f"{report.batch_id}: {verdict} (statistic {report.statistic:.3f}, threshold {report.threshold:.3f}, "
            f"p = {report.p_value:.4f}); {report.n_critical} critical of {report.n}; MLflow run {report.mlflow_run_id}"
        )
    return 0


def check_batch(batch: str) -> "torch.Tensor | None":
    """The images of a .npy batch, local or an S3 object (`_load_batch`: refused with a message when it is not one),
    or None for a batch the flow reads in the model's contract (a folder, an image file, .npz, an s3:// prefix ending
    in '/'): its checks need the model."""
    from scanflow.images import IMAGE_EXTENSIONS

    if batch.startswith("s3://"):
        return None if batch.endswith("/") else _load_batch(batch)
    if Path(batch).is_dir() or Path(batch).suffix.lower() in (".npz", *IMAGE_EXTENSIONS):
        if Path(batch).is_dir() and not any(p.is_file() for p in Path(batch).rglob("*")):
            raise ScanflowError(f"batch folder {batch} is empty: put the batch's PNG/JPEG images there")
        return None
    return _load_batch(batch)


def _predict(args: argparse.Namespace) -> int:
    _default_batch_id(args)
    check_batch(args.batch)
    use_prefect_server(fallback=True)
    from flows.predict import predict_flow

    summary = predict_flow(batch_path=args.batch, batch_id=args.batch_id, alias=args.alias)
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{summary['batch_id']}: {summary['n']} labels by v{summary['model_version']} ({summary['n_rejected']} rejected); "
              f"MLflow run {summary['mlflow_run_id']}")
    return 0


def _improve(args: argparse.Namespace) -> int:
    from scanflow.human import check_decision_form, check_shown_rows, parse_labels
    from scanflow.improve.promotion import check_promotion_margin

    check_promotion_margin(args.margin)
    _default_batch_id(args)
    labels = parse_labels(args.labels) or None
    check_decision_form(args.action, labels, len(args.shown))
    images = check_batch(args.batch)
    if images is not None:
        check_shown_rows(args.shown, len(images))
    use_prefect_server(fallback=True)
    from flows.improve import improve_flow

    report = improve_flow(
        batch_path=args.batch, shown_indices=args.shown, action=args.action, labels=labels, note=args.note,
        batch_id=args.batch_id, promotion_margin=args.margin, data_dir=args.data_dir, steps=args.steps,
    )
    if args.json:
        print(json.dumps(report.model_dump(mode="json"), indent=2))
    elif report.challenger_version is None:
        print(f"{report.batch_id}: {report.reason}; MLflow run {report.mlflow_run_id}")
    else:
        verdict = "promoted to champion" if report.promoted else "registered as challenger, champion kept"
        print(f"{report.batch_id}: v{report.challenger_version} {verdict}: {report.reason}")
    return 0


def _check_stream_source(args: argparse.Namespace) -> None:
    """The stream `supervise_flow` will open exists (or, with --demo, can be written) — refused here, before any server."""
    if args.drift_at > args.batches:
        raise ScanflowError(f"--drift-at {args.drift_at} is after the last of --batches {args.batches}: give the first "
                            f"corrupted batch, 0..{args.batches - 1} (or {args.batches} for a stream without drift)")
    from scanflow.stream import MANIFEST, read_stream

    if args.stream is not None:
        if args.demo or args.stream_dir:
            raise ScanflowError("--stream is a folder of image files; --stream-dir and --demo are a stream of .npy batches: give one of them")
        if not args.stream.startswith("s3://") and not Path(args.stream).is_dir():
            raise ScanflowError(f"no stream folder {args.stream}: give a folder (or s3://bucket/prefix/) whose sub-folders are batches of images")
        return
    if args.files_per_batch is not None:
        raise ScanflowError("--files-per-batch goes with --stream (a folder of image files)")
    if not args.demo:
        if args.stream_dir is None:
            raise ScanflowError("no stream to supervise: give --stream-dir DIR (a folder with stream.json) or --demo for a demo stream")
        read_stream(args.stream_dir)
        return
    folder = Path(args.stream_dir or "stream")
    if not (folder / MANIFEST).is_file() and folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise ScanflowError(f"{folder} holds files but no stream ({MANIFEST} missing): a demo stream is never written over "
                            "them; give an empty or new folder with --stream-dir")


def _supervise(args: argparse.Namespace) -> int:
    _check_stream_source(args)
    if args.inline_steps and args.step_deployments:
        raise ScanflowError(f"--inline-steps runs the steps in this process and --step-deployments {args.step_deployments} "
                            "elsewhere: give one of them")
    human = "person" if args.interactive else args.human
    if human == "person":
        _keep_a_server_for_a_person()
    else:
        use_prefect_server(fallback=True)
    from flows.supervise import supervise_flow
    from scanflow.supervision import summary_markdown

    result = supervise_flow(
        stream_dir=args.stream_dir, dataset=args.dataset, n_batches=args.batches, batch_size=args.batch_size,
        drift_at=args.drift_at, corruption=args.corruption, human=human, policy=args.policy, tracking=args.tracking,
        budget=args.budget, alpha=args.alpha, pause_timeout_s=args.timeout, action_on_timeout=args.on_timeout,
        ask_known_shifts=args.ask_known_shifts, step_deployments=args.step_deployments, demo=args.demo,
        stream=args.stream, files_per_batch=args.files_per_batch, inline_steps=args.inline_steps,
        retrain_steps=args.retrain_steps, denoiser_steps=args.denoiser_steps,
    )
    print()
    print(summary_markdown(result["batches"]))
    print(f"\nChampion now: v{result['champion']}")
    print(f"MLflow UI:  {mlflow_ui_hint(result['tracking_uri'])}")
    print(f"Prefect UI: {prefect_ui_hint(result['prefect_flow_run_id'])}")
    return 0


def _keep_a_server_for_a_person() -> None:
    """A person answers in the UI or with `scanflow answer`, so the server must outlive this command: the one found,
    else the persistent one (started now if need be). Prints where the decisions wait."""
    from scanflow import local

    endpoint = local.prefect_endpoint()
    record = local.read_server_record()
    if endpoint is None:
        record, _ = local.start_persistent_server()
        endpoint = local.PrefectEndpoint(record.api_url, record.auth_string or None)
    os.environ.update(endpoint.environment())
    api_url = endpoint.api_url
    ours = record is not None and record.api_url == api_url
    keeps = "; the server keeps running: `scanflow server stop` stops it" if ours else ""
    print(f"Prefect UI: {_ui_url(api_url)} — paused runs wait there for your decision (`scanflow pending` lists them{keeps})")


def _answer(args: argparse.Namespace) -> int:
    if args.labels is not None:
        from scanflow.human import parse_labels

        parse_labels(args.labels)
    api_url = use_prefect_server(fallback=False, why="`scanflow answer` resumes a paused run held there")
    from prefect.exceptions import ObjectNotFound

    from flows.supervise import answer_paused_run

    with _prefect_errors(api_url):
        try:
            print(answer_paused_run(args.run_id, args.action, args.labels, args.note))
        except ObjectNotFound:
            raise ScanflowError(f"no flow run {args.run_id} on {api_url}: `scanflow pending` lists the decisions waiting") from None
    return 0


def _pending(args: argparse.Namespace) -> int:
    api_url = use_prefect_server(fallback=False, why="`scanflow pending` lists the paused runs held there")
    from flows.pending import pending_decisions

    with _prefect_errors(api_url):
        decisions = pending_decisions(_ui_url(api_url))
    grids = _save_grids(decisions, Path(args.dir))
    if args.json:
        print(json.dumps([_decision_dict(decision, grid) for decision, grid in zip(decisions, grids)], indent=2))
        return 0
    if not decisions:
        print("no decisions waiting")
        return 0
    print(f"{len(decisions)} decision{'s' * (len(decisions) > 1)} waiting")
    for decision, grid in zip(decisions, grids):
        print(f"\n{format_decision(decision, grid)}")
    return 0


def format_decision(decision: PendingDecision, grid: Path | None) -> str:
    """One waiting decision for a terminal: what, since when, where to answer, and the critical samples."""
    request = decision.request
    lines = [
        f"batch {decision.batch_id} · waiting {format_age(decision.age_s)} · recommended: {decision.recommended}",
        f"  UI:      {decision.url}",
        f"  run id:  {decision.run_id}",
        f"  summary: {request.summary_line()}",
        f"  samples: {grid or 'no grid in this request'}",
        *(f"    {line}" for line in request.table().splitlines()),
        f"  classes: {'  '.join(f'{k}={name}' for k, name in enumerate(request.classes))}",
        f"  answer:  scanflow answer {decision.run_id} --action {decision.recommended} --labels "
        f"{','.join('?' * len(request.shown))}   (a class index for each ? you can tell)",
    ]
    return "\n".join(lines)


def _save_grids(decisions: list[PendingDecision], folder: Path) -> list[Path | None]:
    """Each decision's grid of critical samples as folder/<batch_id>.png (a run id suffix when two share a batch)."""
    paths: list[Path | None] = []
    for decision in decisions:
        if not decision.request.grid_png_b64:
            paths.append(None)
            continue
        stem = re.sub(r"[^A-Za-z0-9._-]", "_", decision.batch_id)
        path = folder / f"{stem}.png"
        if path.resolve() in paths:
            path = folder / f"{stem}-{decision.run_id[:8]}.png"
        paths.append(decision.request.save_grid(path).resolve())
    return paths


def _decision_dict(decision: PendingDecision, grid: Path | None) -> dict:
    request = decision.request
    samples = [{"position": k + 1, "row": row, "score": score, "guess": request.classes[guess], "guess_index": guess}
               for k, (row, score, guess) in enumerate(zip(request.shown, request.scores, request.guesses))]
    return {"run_id": decision.run_id, "batch_id": decision.batch_id, "age_s": round(decision.age_s, 1),
            "recommended": decision.recommended, "url": decision.url, "grid_png": str(grid) if grid else None,
            "summary": request.summary_line(), "classes": list(request.classes), "samples": samples}


def format_age(seconds: float) -> str:
    """A wait for a person to read: "45 s", "3 min", "2 h 5 min", "1 d 3 h"."""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min"
    if seconds < 86400:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // 86400} d {seconds % 86400 // 3600} h"


def _server(args: argparse.Namespace) -> int:
    from scanflow import local

    home = local.scanflow_home()
    if args.action == "stop":
        from scanflow import warm

        record, runner = local.read_server_record(home), warm.read_runner_record(home)
        if record is not None and runner is not None and runner.api_url == record.api_url:
            print(warm.stop_runner(home))  # its runs would only fail against the stopped server
        print(local.stop_persistent_server(home))
        return 0
    if args.action == "start":
        record, started = local.start_persistent_server(args.port, home)
        state = "started" if started else "already running"
        print(f"Prefect server {state} (pid {record.pid}; data in {home / 'prefect'}; log {record.log_path})\n"
              f"Prefect UI: {record.ui_url}\nscanflow commands use it from now on; for other tools: export PREFECT_API_URL={record.api_url} "
              f"and PREFECT_API_AUTH_STRING (`auth_string` in {home / 'server.json'}; the API refuses calls without it)")
        if os.environ.get("PREFECT_API_URL", record.api_url) != record.api_url:
            print(f"note: PREFECT_API_URL={os.environ['PREFECT_API_URL']} is set in this shell and wins over this server")
        return 0
    record = local.read_server_record(home)
    if record is not None and record.is_ours():
        health = "" if local.is_healthy(record.api_url) else " (not answering /api/health yet)"
        print(f"running{health}: Prefect UI {record.ui_url} (pid {record.pid}, API {record.api_url})")
    else:
        print(f"stopped (no live server recorded in {home}; `scanflow server start` starts one)")
    return 0


def _notify(args: argparse.Namespace) -> int:
    api_url = use_prefect_server(fallback=False, why="`scanflow notify` saves its automation there")
    from flows.notify import notify_on_pause

    with _prefect_errors(api_url):
        _, automation_id = notify_on_pause(args.webhook, _ui_url(api_url), args.name)
    print(f"automation {args.name} ({automation_id}) on {api_url}: POST to {args.webhook} each time a decision starts waiting")
    return 0


TEMPORARY_SERVER_NOTE = ("scanflow: no Prefect server running; starting a temporary one for this command (about 20 s). "
                         "Keep one running with: scanflow server start")


def use_prefect_server(fallback: bool, why: str = "") -> str | None:
    """Find the Prefect server (`scanflow.local.prefect_endpoint`) and set it as PREFECT_API_URL (and its auth string as
    PREFECT_API_AUTH_STRING); call before importing
    Prefect. With none found: `fallback` says once on stderr that Prefect starts a temporary one and returns None;
    otherwise raises ServiceUnavailableError naming the fix (`why` says what needs the server)."""
    from scanflow.local import prefect_endpoint

    endpoint = prefect_endpoint()
    if endpoint:
        os.environ.update(endpoint.environment())  # the server's auth string too, never printed
        return endpoint.api_url
    if fallback:
        print(TEMPORARY_SERVER_NOTE, file=sys.stderr)
        return None
    raise ServiceUnavailableError(f"no Prefect server is set: start one with `scanflow server start` (or set PREFECT_API_URL); {why}")


def _ui_url(api_url: str) -> str:
    return api_url.rstrip("/").removesuffix("/api")


@contextlib.contextmanager
def _prefect_errors(api_url: str | None) -> Iterator[None]:
    """A server found but not answering (stopped since, or a wrong PREFECT_API_URL) as ServiceUnavailableError."""
    import httpx

    try:
        yield
    except httpx.TransportError as error:
        raise ServiceUnavailableError(f"the Prefect server at {api_url} does not answer ({error}): "
                                      "`scanflow server status` tells whether it runs") from None


def _require_prefect_server(what: str) -> None:
    use_prefect_server(fallback=False, why=f"{what} needs a Prefect server that outlives this command")


def _blocks(args: argparse.Namespace) -> int:
    _require_prefect_server("scanflow blocks register")
    import blocks

    for slug in blocks.register():
        print(f"registered block type {slug}")
    if args.save_defaults:
        for document in blocks.save_defaults(overwrite=args.overwrite):
            print(f"saved block {document}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    _require_prefect_server("scanflow serve")
    from flows.deployments import serve_all

    serve_all(args.name, human=args.human, tracking=args.tracking, policy=args.policy, limit=args.limit, poll_s=args.poll_seconds)
    return 0


def _stack(args: argparse.Namespace) -> int:
    from scanflow import stack

    if args.action == "up":
        requested = {k: v for k, v in (("prefect", args.prefect_port), ("mlflow", args.mlflow_port), ("s3", args.s3_port)) if v}
        info = stack.up(args.dir, requested or None)
        print(f"Prefect UI: {info.prefect_ui_url} (log in with PREFECT_API_AUTH_STRING)\n"
              f"MLflow UI:  {info.mlflow_tracking_uri} (user {info.mlflow_username}, password MLFLOW_TRACKING_PASSWORD)\n"
              f"S3:         {info.s3_endpoint_url} (bucket {info.bucket})\n"
              f"Every credential is in {args.dir}/credentials.json; none is printed here\nLogs:       {info.directory}/*.log\n\n"
              f"Point this shell at it (sets the keys without printing them): eval \"$(scanflow stack env --dir {args.dir})\"")
    elif args.action == "down":
        stopped = stack.down(args.dir)
        print(f"stopped: {', '.join(stopped)}" if stopped else f"no stack running from {args.dir}")
    elif args.action == "status":
        states = stack.status(args.dir)
        print("\n".join(f"{name}: {'running' if alive else 'stopped'}" for name, alive in states.items()) or f"no stack started from {args.dir}")
    else:
        print(stack.info(args.dir).exports())
    return 0


def _build_image(args: argparse.Namespace) -> int:
    from scanflow.image import build_image

    image_id = build_image(args.tag, args.base_image, force=args.force)
    print(f"{args.tag}: {image_id}")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    from scanflow import tracking
    from scanflow.config import TrackingConfig

    config = TrackingConfig.from_env()
    tracking.check_reachable(config.tracking_uri)
    previous, current = tracking.rollback(config, args.to_version)
    print(f"{config.classifier_name}: champion moved from v{previous} back to v{current}")
    return 0


def _adopt(args: argparse.Namespace) -> int:
    use_prefect_server(fallback=True)
    from flows.adopt import adopt_flow

    summary = adopt_flow(
        model_uri=args.model_uri, reference=args.reference, classes=args.classes, input_size=args.input_size,
        channels=args.channels, mean=args.mean, std=args.std, output=args.output, on_bad=args.on_bad,
        autoencoder_epochs=args.autoencoder_epochs, name=args.name, embedding_layer=args.embedding_layer,
        embedding_model=args.embedding_model,
    )
    lines = [
        "",
        f"Supervised:  {summary['model']} v{summary['version']} @champion (from {summary['adopted_from']})",
        f"Reference:   {summary['reference_images']} images" + "".join(f"; {line}" for line in summary["conversions"]),
        f"Evidence:    {summary['evidence']}",
        f"MLflow run:  {summary['mlflow_run_id']}",
    ]
    lines.append(f"Decisions:   {', '.join(summary['actions'])}" + (f" ({summary['actions_note']})" if summary["actions_note"] else ""))
    lines.append(f"Next:        export SCANFLOW_MODEL_NAME={summary['model']}; scanflow detect --batch BATCH")
    print("\n".join(lines))
    return 0


def _train(args: argparse.Namespace) -> int:
    if not args.no_register:
        _check_champion_replaceable(args)
    use_prefect_server(fallback=True)
    from flows.train import train_flow

    summary = train_flow(
        dataset=args.dataset,
        epochs=args.epochs,
        autoencoder_epochs=args.autoencoder_epochs,
        seed=args.seed,
        data_dir=args.data_dir,
        allow_download=args.allow_download,
        register_models=not args.no_register,
        force=args.force,
    )
    print(format_train_summary(summary))
    return 0


def _check_champion_replaceable(args: argparse.Namespace) -> None:
    """The train flow's champion check, made here too so that a refused training starts no flow: the dataset's
    description (classes, shape) is known from its name, without loading it."""
    from scanflow import tracking
    from scanflow.config import TrackingConfig
    from scanflow.data import canonical_dataset_name, dataset_info, default_dataset_name

    name = canonical_dataset_name(args.dataset)
    info = dataset_info(default_dataset_name(args.data_dir) if name == "default" else name)
    tracking.check_champion_replaceable(TrackingConfig.from_env(), info, args.force)


def format_train_summary(summary: dict) -> str:
    """What a person needs after training: the figures, the ids, and where to look."""
    lines = [
        "",
        f"Test accuracy: {summary['test_accuracy']:.4f} on {summary['dataset']} ({summary['test_split']})",
        f"MLflow run:    {summary['mlflow_run_id']} (experiment '{summary['experiment']}', store {summary['tracking_uri']})",
    ]
    registered = summary.get("registered")
    if registered:
        lines.append(
            f"Registered:    {registered['classifier_name']} v{registered['classifier_version']} and "
            f"{registered['autoencoder_name']} v{registered['autoencoder_version']}, alias 'champion'"
        )
    lines += ["", "Where to look:", f"  MLflow UI:  {mlflow_ui_hint(summary['tracking_uri'])}", f"  Prefect UI: {prefect_ui_hint(summary['prefect_flow_run_id'])}"]
    return "\n".join(lines)


def mlflow_ui_hint(tracking_uri: str) -> str:
    if tracking_uri.startswith(("http://", "https://")):
        return tracking_uri
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    return f"{mlflow_bin} ui --backend-store-uri {tracking_uri} --port 5000   then open http://127.0.0.1:5000"


def prefect_ui_hint(flow_run_id: str) -> str:
    api_url = os.environ.get("PREFECT_API_URL")
    if api_url:
        return f"{api_url.removesuffix('/').removesuffix('/api')}/runs/flow-run/{flow_run_id}"
    home = os.environ.get("PREFECT_HOME", "~/.prefect")
    prefect_bin = Path(sys.executable).with_name("prefect")
    return (
        f"PREFECT_HOME={home} {prefect_bin} server start   then open "
        f"http://127.0.0.1:4200/runs/flow-run/{flow_run_id}"
    )


def _run_warm(argv: list[str]) -> "Answer | None":
    from scanflow.warm import run_in_runner

    return run_in_runner(argv)


def _runner(args: argparse.Namespace) -> int:
    from scanflow import warm

    if args.action == "start":
        record, started = warm.start_runner()
        print(f"warm runner {'started' if started else 'already running'} (pid {record.pid}; Prefect API {record.api_url}; "
              f"log {record.log_path})\n`scanflow {'` and `scanflow '.join(WARM_COMMANDS)}` in a shell with these settings "
              "now run there, with the models' libraries already loaded")
    elif args.action == "stop":
        print(warm.stop_runner())
    else:
        print(warm.runner_status())
    return 0


def _hide_tracebacks_of_user_errors() -> None:
    """Log records about a ScanflowError (Prefect logs a failed task or flow with its traceback) keep their message
    and lose the traceback: the message already names the problem and the fix, and the CLI prints it once at the end."""
    make_record = logging.getLogRecordFactory()
    if getattr(make_record, "scanflow_message_only", False):
        return

    def message_only(*args: object, **kwargs: object) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        if record.exc_info and isinstance(record.exc_info[1], ScanflowError):
            record.exc_info, record.exc_text = None, None
        return record

    message_only.scanflow_message_only = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(message_only)


def main(argv: list[str] | None = None, *, warm: bool = True) -> int:
    """Run one command. Exit codes: 0 done, 2 a ScanflowError (bad input; the message names the fix), 3 a needed
    server is missing, 1 anything else; tracebacks only with --debug or SCANFLOW_DEBUG=1. With `warm`, `detect` and
    `predict` go to the warm runner when one may take them (`scanflow.warm.run_in_runner`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get("SCANFLOW_DEBUG") == "1"
    if not debug:
        _hide_tracebacks_of_user_errors()
    try:
        if warm and args.command in WARM_COMMANDS:
            answer = _run_warm(argv)
            if answer is not None:
                sys.stdout.write(answer.stdout)
                sys.stderr.write(answer.stderr)
                return answer.code
        return args.handler(args)
    except ServiceUnavailableError as error:
        print(f"scanflow: error: {error}", file=sys.stderr)
        return 3
    except ScanflowError as error:
        print(f"scanflow: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as error:
        if debug:
            raise
        print(f"scanflow: unexpected error: {type(error).__name__}: {error} (run with --debug or SCANFLOW_DEBUG=1 for "
              "the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
