"""The catalogue of bad input (issue 23): every command refuses each row with the expected exit code (2 bad input,
3 a server missing) and a message naming the problem, prints no traceback, and writes nothing — the MLflow runs
(ids, status, tags), the registered versions (status, tags), the aliases and the bucket's keys are the same after
the command as before it.

One set of real servers for the module: the session's Prefect server, an MLflow server whose artifacts go to a
SeaweedFS bucket, and in its registry a small digits champion (trained once), a Fashion-MNIST-shaped champion under a
second model name (registered untrained: only its recorded dataset and shape matter), and three versions rollback
must refuse (never judged, logging unfinished, run failed). The CLI runs in this process (`scanflow.cli.main`)."""

from __future__ import annotations

import contextlib
import os
import pickle
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from mlflow.entities import ViewType
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
from prefect.client.schemas.objects import StateType

from flows.improve import improve_flow
from flows.train import train_flow
from scanflow import tracking
from scanflow.cli import main
from scanflow.config import StorageConfig, TrackingConfig
from scanflow.data import LabeledImages, dataset_info
from scanflow.errors import ChampionMismatchError, UnusableVersionError
from scanflow.human import InvalidDecisionError
from scanflow.local_auth import MlflowAuth
from scanflow.local import start_mlflow_server
from scanflow.models import Autoencoder, Classifier
from scanflow.storage import S3Store
from tests.conftest import S3_ACCESS_KEY, S3_SECRET_KEY

pytestmark = pytest.mark.slow

BUCKET = "catalogue"
MODEL = "catalogue-classifier"
FASHION_MODEL = "catalogue-fashion-classifier"
NOBODY_MODEL = "catalogue-nobody-classifier"
ARGPARSE = "error: argument "  # argparse: "scanflow CMD: error: argument --OPTION: MESSAGE"
HANDLER = "scanflow: error: "  # a ScanflowError (exit 2) or a missing server (exit 3), printed by main

# Environment changes of a row ("{home}" is an empty folder; None removes the variable).
NO_PREFECT = {"PREFECT_API_URL": None, "SCANFLOW_HOME": "{home}"}
NO_MLFLOW = {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}
NO_S3 = {"AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9"}
NO_BUCKET = {"SCANFLOW_S3_BUCKET": None}
FASHION = {"SCANFLOW_MODEL_NAME": FASHION_MODEL}
NOBODY = {"SCANFLOW_MODEL_NAME": NOBODY_MODEL}


@dataclass(frozen=True)
class Row:
    """One bad command line: argv (with {placeholders} of the `inputs` fixture), exit code, a substring of stderr."""

    argv: tuple[str, ...]
    code: int
    message: str
    env: dict[str, str | None] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return " ".join(self.argv)[:70] + (" +" + ",".join(sorted(self.env)) if self.env else "")


def row(argv: str | list[str], code: int, message: str, env: dict[str, str | None] | None = None) -> Row:
    return Row(tuple(argv.split() if isinstance(argv, str) else argv), code, message, dict(env or {}))


SHAPE_8 = "this model expects images of shape [N, 1, 8, 8] (digits), got [N, 1, 28, 28]"
NOT_NPY = "is not a .npy file (no numpy header)"
REFUSED_ROLLBACK = "cannot become champion"
CATALOGUE = [
    # ---------------------------------------------------------------------------------------------------- train
    row("train --epochs 0", 2, ARGPARSE + "--epochs: must be an integer >= 1, got 0"),
    row("train --epochs -1", 2, ARGPARSE + "--epochs: must be an integer >= 1, got -1"),
    row("train --epochs 2.5", 2, ARGPARSE + "--epochs: must be an integer >= 1, got '2.5'"),
    row("train --autoencoder-epochs 0", 2, ARGPARSE + "--autoencoder-epochs: must be an integer >= 1, got 0"),
    row("train --seed -1", 2, ARGPARSE + "--seed: must be an integer >= 0, got -1"),
    row("train --seed x", 2, ARGPARSE + "--seed: must be an integer >= 0, got 'x'"),
    row("train --dataset imagenet", 2, ARGPARSE + "--dataset: unknown dataset 'imagenet'"),
    row("train --dataset digits --epochs 1", 2, HANDLER + f"{FASHION_MODEL} v1, the champion, was trained on fashion-mnist "
        "(10 classes: T-shirt/top", FASHION),
    row("train --dataset digits --epochs 1", 2, "this training is on digits (10 classes: 0, 1, 2, 3, 4, 5, 6, 7, 8, 9; input "
        "1x8x8), another dataset and class set and input shape. Registering it would replace that champion: pass --force", FASHION),
    row("train --dataset mnist --epochs 1", 2, "is on mnist (10 classes: 0, 1, 2, 3, 4, 5, 6, 7, 8, 9; input 1x28x28), "
        "another dataset and input shape. Registering it would replace that champion: pass --force"),
    row("train --dataset digits --epochs 1", 3, HANDLER + "MLflow tracking server at http://127.0.0.1:9 is unreachable", NO_MLFLOW),
    row("train --dataset cifar10 --data-dir {missing} --epochs 1", 2, HANDLER + "cifar10", NOBODY),
    # ---------------------------------------------------------------------------------------------------- detect
    row("detect --batch {good} --budget 0", 2, ARGPARSE + "--budget: must be an integer >= 1, got 0"),
    row("detect --batch {good} --budget -5", 2, ARGPARSE + "--budget: must be an integer >= 1, got -5"),
    row("detect --batch {good} --budget lots", 2, ARGPARSE + "--budget: must be an integer >= 1, got 'lots'"),
    row("detect --batch {good} --batch-id ../../x", 2, ARGPARSE + "--batch-id: a batch id names S3 keys and files: letters, "
        "digits, '.', '_' and '-', not starting with a dot, at most 128 characters; got '../../x'"),
    row("detect --batch {good} --batch-id .hidden", 2, "not starting with a dot, at most 128 characters; got '.hidden'"),
    row("detect --batch {good} --batch-id a/b", 2, ARGPARSE + "--batch-id: a batch id names S3 keys"),
    row(["detect", "--batch", "{good}", "--batch-id", "b" * 129], 2, "at most 128 characters; got 'bbbb"),
    row(["detect", "--batch", "{good}", "--batch-id", ""], 2, ARGPARSE + "--batch-id: a batch id names S3 keys"),
    row("detect --batch {dir}", 2, HANDLER + "batch folder {dir} is empty: put the batch's PNG/JPEG images there"),
    row("detect --batch {missing}", 2, ARGPARSE + "--batch: batch {missing} does not exist: pass a .npy file written with numpy.save, "
        "a folder of PNG/JPEG images, or s3://bucket/key"),
    row("detect --batch {empty}", 2, HANDLER + "batch file {empty} " + NOT_NPY),
    row("detect --batch {text}", 2, HANDLER + "batch file {text} " + NOT_NPY),
    row("detect --batch {garbage}", 2, HANDLER + "batch file {garbage} " + NOT_NPY),
    row("detect --batch {pickle_raw}", 2, HANDLER + "batch file {pickle_raw} " + NOT_NPY),
    row("detect --batch {pickled}", 2, HANDLER + "batch file {pickled} is not a plain numpy array (it holds Python objects, "
        "which are never loaded)"),
    row("detect --batch {wrong_shape}", 2, HANDLER + SHAPE_8),
    row("detect --batch {rank1}", 2, HANDLER + "expected a batch shaped [N, C, H, W] or [N, H, W], got shape [10] (rank 1)"),
    row("detect --batch {nan}", 2, HANDLER + "the batch contains NaN pixel values (1 of 10 images)"),
    row("detect --batch {float01}", 2, HANDLER + "expected uint8 pixel values 0..255, got float32; convert with "
        "(x * 255).round().astype('uint8')"),
    row("detect --batch {int64}", 2, HANDLER + "expected uint8 pixel values 0..255, got int64"),
    row("detect --batch {no_images}", 2, HANDLER + "the batch is empty (N = 0, shape [0, 8, 8])"),
    row("detect --batch {badname}", 2, HANDLER + "the batch file name 'my batch' cannot be the batch id"),
    row("detect --batch {good} --model nope@champion", 2, HANDLER + "no version of 'nope' has the alias 'champion'"),
    row(f"detect --batch {{good}} --model {MODEL}@nope", 2, HANDLER + f"no version of '{MODEL}' has the alias 'nope'"),
    row("detect --batch {good} --model noalias", 2, HANDLER + "--model must look like NAME@ALIAS"),
    row("detect --batch {s3_missing}", 2, HANDLER + "{s3_missing} does not exist in bucket 'catalogue'"),
    row("detect --batch {s3_text}", 2, HANDLER + "batch file {s3_text} " + NOT_NPY),
    row("detect --batch {s3_good}", 3, HANDLER + "cannot reach the S3 endpoint of bucket 'catalogue' at http://127.0.0.1:9", NO_S3),
    row("detect --batch {s3_good}", 2, HANDLER + "{s3_good} is in S3 but no storage is configured: set SCANFLOW_S3_BUCKET", NO_BUCKET),
    row("detect --batch s3://onlybucket", 2, ARGPARSE + "--batch: 's3://onlybucket' is not an S3 object URI: expected s3://BUCKET/KEY"),
    # ---------------------------------------------------------------------------------------------------- predict
    row("predict --batch {dir}", 2, HANDLER + "batch folder {dir} is empty"),
    row("detect --batch {text_folder}", 2, HANDLER + "{text_folder} holds no image files (0 hidden files and 1 files with "
        "other extensions (.txt) were ignored): put PNG or JPEG files there"),
    row("detect --batch {bad_png_folder}", 2, HANDLER + "1 of 1 image files in {bad_png_folder} are unusable (every image "
        "file): truncated.png (not an image Pillow can read); replace or remove them"),
    row("predict --batch {bad_png_folder}", 2, HANDLER + "1 of 1 image files in {bad_png_folder} are unusable (every image "
        "file): truncated.png (not an image Pillow can read); replace or remove them"),
    row("predict --batch {missing}", 2, ARGPARSE + "--batch: batch {missing} does not exist"),
    row("predict --batch {empty}", 2, HANDLER + "batch file {empty} " + NOT_NPY),
    row("predict --batch {garbage}", 2, HANDLER + "batch file {garbage} " + NOT_NPY),
    row("predict --batch {pickled}", 2, "(it holds Python objects, which are never loaded)"),
    row("predict --batch {nan}", 2, HANDLER + "the batch contains NaN pixel values"),
    row("predict --batch {wrong_shape}", 2, HANDLER + SHAPE_8),
    row("predict --batch {good} --alias nope", 2, HANDLER + f"no version of '{MODEL}' has the alias 'nope'"),
    row("predict --batch {good} --batch-id a/b", 2, ARGPARSE + "--batch-id: a batch id names S3 keys"),
    row("predict --batch {badname}", 2, HANDLER + "the batch file name 'my batch' cannot be the batch id"),
    row("predict --batch {s3_missing}", 2, HANDLER + "{s3_missing} does not exist in bucket 'catalogue'"),
    row("predict --batch {s3_good}", 3, HANDLER + "cannot reach the S3 endpoint of bucket 'catalogue'", NO_S3),
    # ---------------------------------------------------------------------------------------------------- improve
    row("improve --batch {good} --shown 1 --action filter --margin -1", 2, HANDLER + "promotion margin must be a fraction in "
        "[0, 1), got -1.0"),
    row("improve --batch {good} --shown 1 --action filter --margin 2", 2, HANDLER + "promotion margin must be a fraction in [0, 1), got 2.0"),
    row("improve --batch {good} --shown 1 --action filter --margin nan", 2, HANDLER + "promotion margin must be a fraction in [0, 1), got nan"),
    row("improve --batch {good} --shown 1 --action filter --margin x", 2, ARGPARSE + "--margin: invalid float value: 'x'"),
    row("improve --batch {good} --shown 10 --action filter", 2, HANDLER + "--shown row 10 is outside the batch of 10 images: rows are 0..9"),
    row("improve --batch {good} --shown 3,10 --action retrain --labels 1,2", 2, HANDLER + "--shown row 10 is outside the batch of 10 images"),
    row("improve --batch {good} --shown 99 --action ignore", 2, HANDLER + "--shown row 99 is outside the batch of 10 images"),
    row("improve --batch {good} --shown 1,1 --action filter", 2, HANDLER + "--shown repeats row 1: list each critical sample once"),
    row("improve --batch {good} --shown 2,2 --action retrain --labels 1,1", 2, HANDLER + "--shown repeats row 2"),
    row("improve --batch {good} --shown 4,5,4 --action ignore", 2, HANDLER + "--shown repeats row 4"),
    row(["improve", "--batch", "{good}", "--shown", "", "--action", "filter"], 2, ARGPARSE + "--shown: give the batch rows shown"),
    row("improve --batch {good} --shown -1 --action filter", 2, ARGPARSE + "--shown: batch rows are integers >= 0, comma-separated"),
    row("improve --batch {good} --shown 1,x --action ignore", 2, ARGPARSE + "--shown: batch rows are integers >= 0"),
    row("improve --batch {good} --shown 1,2 --action filter --labels 3", 2, HANDLER + "got 1 labels for 2 critical samples: give one label per sample shown"),
    row("improve --batch {good} --shown 1,2 --action retrain --labels 1,x", 2, HANDLER + "label 1 is 'x': labels are class indices"),
    row("improve --batch {good} --shown 1,2 --action retrain --labels 3,-2", 2, HANDLER + "label 1 is -2: labels are class indices"),
    row("improve --batch {good} --shown 1,2 --action retrain", 2, HANDLER + "retrain needs labels"),
    row("improve --batch {good} --shown 1,2 --action retrain --labels ?,?", 2, HANDLER + "retrain needs labels"),
    row("improve --batch {good} --shown 1 --action retrain --labels 10", 2, HANDLER + "label 0 is 10: labels are class indices 0..9"),
    row("improve --batch {wrong_shape} --shown 1 --action filter", 2, HANDLER + SHAPE_8),
    row("improve --batch {good} --shown 1 --action bogus", 2, ARGPARSE + "--action: invalid choice: 'bogus'"),
    row("improve --batch {text} --shown 1 --action filter", 2, HANDLER + "batch file {text} " + NOT_NPY),
    row("improve --batch {s3_missing} --shown 1 --action filter", 2, HANDLER + "{s3_missing} does not exist in bucket 'catalogue'"),
    row(["improve", "--batch", "{good}", "--shown", "1", "--action", "filter", "--batch-id", "x y"], 2, ARGPARSE + "--batch-id: a batch id"),
    # ---------------------------------------------------------------------------------------------------- supervise
    row("supervise --stream-dir {bad_manifest}", 2, HANDLER + "{bad_manifest}/stream.json is not a stream manifest"),
    row("supervise --stream-dir {not_a_stream}", 2, HANDLER + "{not_a_stream} holds no stream (stream.json missing)"),
    row("supervise --stream-dir {missing}", 2, HANDLER + "no stream folder {missing}: check the path, or ask for a demo stream"),
    row("supervise --demo --stream-dir {not_a_stream}", 2, HANDLER + "{not_a_stream} holds files but no stream (stream.json missing)"),
    row("supervise", 2, HANDLER + "no stream to supervise: give --stream-dir DIR"),
    row("supervise --demo --batches 0", 2, ARGPARSE + "--batches: must be an integer >= 1, got 0"),
    row("supervise --demo --batch-size 0", 2, ARGPARSE + "--batch-size: must be an integer >= 1, got 0"),
    row("supervise --demo --batches 4 --drift-at 5", 2, HANDLER + "--drift-at 5 is after the last of --batches 4"),
    row("supervise --demo --alpha 1.5", 2, ARGPARSE + "--alpha: must be a number strictly between 0 and 1 (e.g. 0.05), got 1.5"),
    row("supervise --demo --alpha nan", 2, ARGPARSE + "--alpha: must be a number strictly between 0 and 1 (e.g. 0.05), got nan"),
    row("supervise --demo --timeout 0", 2, ARGPARSE + "--timeout: must be an integer >= 1, got 0"),
    row("supervise --demo --corruption nope", 2, ARGPARSE + "--corruption: unknown corruption 'nope'"),
    row("supervise --demo --on-timeout retrain", 2, ARGPARSE + "--on-timeout: invalid choice: 'retrain'"),
    row("supervise --demo --human nobody", 2, ARGPARSE + "--human: invalid choice: 'nobody'"),
    # ---------------------------------------------------------------------------------------------------- answer
    row("answer {unknown_run} --action filter", 2, HANDLER + "no flow run {unknown_run} on http://127.0.0.1:"),
    row("answer not-a-uuid --action filter", 2, HANDLER + "'not-a-uuid' is not a flow run id (a UUID"),
    row("answer {finished_run} --action ignore", 2, HANDLER + "flow run {finished_run} is Completed, not waiting for a decision"),
    row("answer {unknown_run} --action filter", 3, HANDLER + "no Prefect server is set: start one with `scanflow server start`", NO_PREFECT),
    row("answer {unknown_run} --action bogus", 2, ARGPARSE + "--action: invalid choice: 'bogus'"),
    row("answer {unknown_run} --action filter --labels x", 2, HANDLER + "label 0 is 'x'"),
    # ---------------------------------------------------------------------------------------------------- rollback
    row("rollback --to 0", 2, ARGPARSE + "--to: must be an integer >= 1, got 0"),
    row("rollback --to x", 2, ARGPARSE + "--to: must be an integer >= 1, got 'x'"),
    row("rollback --to 99", 2, HANDLER + f"{MODEL} has no version 99: list them in the MLflow UI"),
    row("rollback --to {unjudged}", 2, HANDLER + f"{MODEL} v{{unjudged}} {REFUSED_ROLLBACK}: it is a retrain challenger nobody "
        "judged (no scanflow.verdict tag"),
    row("rollback --to {unfinished}", 2, HANDLER + f"{MODEL} v{{unfinished}} {REFUSED_ROLLBACK}: it has no scanflow.sha256 tag, "
        "so its logging did not finish"),
    row("rollback --to {failed_run}", 2, HANDLER + f"{MODEL} v{{failed_run}} {REFUSED_ROLLBACK}: the run that logged it"),
    row("rollback --to {champion}", 2, HANDLER + f"{MODEL} v{{champion}} already is the champion"),
    row("rollback", 2, HANDLER + f"{MODEL} v{{champion}} replaced no earlier champion: nothing to roll back to (name a version with --to)"),
    row("rollback", 2, HANDLER + f"no version of '{NOBODY_MODEL}' has the alias 'champion'", NOBODY),
    row("rollback --to 1", 3, HANDLER + "MLflow tracking server at http://127.0.0.1:9 is unreachable", NO_MLFLOW),
    # ---------------------------------------------------------------------------------------------------- corrupt
    row("corrupt --severity 9", 2, ARGPARSE + "--severity: severities are integers 1..5, comma-separated (e.g. 1,3,5), got 9"),
    row("corrupt --severity x", 2, ARGPARSE + "--severity: severities are integers 1..5, comma-separated (e.g. 1,3,5), got 'x'"),
    row("corrupt --severities 1,0", 2, ARGPARSE + "--severities: severities are integers 1..5, comma-separated (e.g. 1,3,5), got 0"),
    row("corrupt --severities ,", 2, ARGPARSE + "--severities: give comma-separated severities 1..5"),
    row("corrupt --images 0", 2, ARGPARSE + "--images: must be an integer >= 1, got 0"),
    row("corrupt --scale 0", 2, ARGPARSE + "--scale: must be an integer >= 1, got 0"),
    row("corrupt --seed -3", 2, ARGPARSE + "--seed: must be an integer >= 0, got -3"),
    row("corrupt --corruptions shot_noise,nope", 2, ARGPARSE + "--corruptions: unknown corruption 'nope'"),
    row("corrupt --output {dir}", 2, ARGPARSE + "--output: {dir} is a directory: give a file name such as corruptions.png"),
    row("corrupt --dataset imagenet", 2, ARGPARSE + "--dataset: unknown dataset 'imagenet'"),
    row("corrupt --dataset cifar10 --data-dir {missing}", 2, HANDLER + "cifar10"),
    # ---------------------------------------------------------------------------------------------------- servers
    row("server start --port 0", 2, ARGPARSE + "--port: must be an integer >= 1, got 0"),
    row("server start --port 70000", 2, ARGPARSE + "--port: must be a TCP port 1..65535, got 70000"),
    row("server restart", 2, ARGPARSE + "action: invalid choice: 'restart'"),
    row("stack up --prefect-port 70000", 2, ARGPARSE + "--prefect-port: must be a TCP port 1..65535, got 70000"),
    row("stack up --mlflow-port 0", 2, ARGPARSE + "--mlflow-port: must be an integer >= 1, got 0"),
    row("stack up --s3-port x", 2, ARGPARSE + "--s3-port: must be an integer >= 1, got 'x'"),
    row("stack sideways", 2, ARGPARSE + "action: invalid choice: 'sideways'"),
    row("blocks", 2, "the following arguments are required: action"),
    row("blocks unregister", 2, ARGPARSE + "action: invalid choice: 'unregister'"),
    row("blocks register", 3, HANDLER + "no Prefect server is set: start one with `scanflow server start`", NO_PREFECT),
    row("build-image --no-such-option", 2, "unrecognized arguments: --no-such-option"),
    row("image", 2, "argument COMMAND: invalid choice: 'image'"),
    row("serve --limit 0", 2, ARGPARSE + "--limit: must be an integer >= 1, got 0"),
    row("serve --limit x", 2, ARGPARSE + "--limit: must be an integer >= 1, got 'x'"),
    row("serve --human bogus", 2, ARGPARSE + "--human: invalid choice: 'bogus'"),
    row("serve", 3, HANDLER + "no Prefect server is set: start one with `scanflow server start`", NO_PREFECT),
    row("pending", 3, HANDLER + "no Prefect server is set: start one with `scanflow server start`", NO_PREFECT),
    row("pending --all", 2, "unrecognized arguments: --all"),
    row("notify", 2, "the following arguments are required: --webhook"),
    row("notify --webhook http://127.0.0.1:9/hook", 3, HANDLER + "no Prefect server is set", NO_PREFECT),
    row("datasets --bogus", 2, "unrecognized arguments: --bogus"),
]


# ------------------------------------------------------------------------------------------------------ servers
@pytest.fixture(scope="module")
def servers(s3_server, tmp_path_factory):
    """An MLflow server (SQLite, artifacts in the bucket) and the environment pointing every command at it and at the
    bucket; the environment is restored afterwards."""
    storage = StorageConfig(bucket=BUCKET, endpoint_url=s3_server.endpoint_url, access_key_id=S3_ACCESS_KEY,
                            secret_access_key=S3_SECRET_KEY, prefix="prod")
    store = S3Store(storage)
    store.ensure_bucket()
    folder = tmp_path_factory.mktemp("catalogue-mlflow")
    auth = MlflowAuth.generate()
    server = start_mlflow_server(folder / "mlflow.db", f"s3://{BUCKET}/mlflow", storage.environment(), log_dir=folder, auth=auth)
    env = {**storage.environment(), **auth.environment(), "MLFLOW_TRACKING_URI": server.tracking_uri,
           "SCANFLOW_CACHE_DIR": str(folder / "cache")}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        yield server.tracking_uri, store
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()


def _fashion_champion(tracking_uri: str) -> None:
    """A champion of FASHION_MODEL recorded as trained on Fashion-MNIST (untrained weights: only its tags matter)."""
    info = dataset_info("fashion-mnist")
    config = TrackingConfig(tracking_uri, "catalogue", FASHION_MODEL, FASHION_MODEL.replace("classifier", "autoencoder"))
    images = torch.randint(0, 256, (10, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    data = LabeledImages(images, torch.arange(10), info, "synthetic")
    classifier = Classifier(1, 28, 28, 10)
    classifier.set_normalization(images)
    with tracking.tracked_run(config, "train-fashion-mnist") as run_id:
        tracking.register_models(run_id, config, classifier, Autoencoder(1, 28, 28, latent_dim=8), data)


def _versions_rollback_refuses(config: TrackingConfig, champion: str) -> dict[str, str]:
    """Three classifier versions that must never become champion: a challenger nobody judged, a judged one without
    its sha256 tag (logging unfinished), and a judged one whose run failed."""
    info = dataset_info("digits")
    with tracking.tracked_run(config, "improve-unjudged") as run_id:
        unjudged = tracking.register_candidate(run_id, config, Classifier(1, 8, 8, 10), info, champion)
    with pytest.raises(RuntimeError), tracking.tracked_run(config, "improve-crashed") as run_id:
        failed_run = tracking.register_candidate(run_id, config, Classifier(1, 8, 8, 10), info, champion)
        tracking.record_verdict(config, failed_run, "promoted")
        raise RuntimeError("the improve run crashed after registering")
    with tracking.tracked_run(config, "improve-interrupted") as run_id:
        unfinished = tracking.register_candidate(run_id, config, Classifier(1, 8, 8, 10), info, champion)
        tracking.record_verdict(config, unfinished, "promoted")
    # As if logging had stopped before the files' sha256 were recorded (`_record_digests`).
    tracking.mlflow_client(config.tracking_uri).delete_model_version_tag(config.classifier_name, unfinished, tracking.DIGESTS_TAG)
    return {"unjudged": unjudged, "unfinished": unfinished, "failed_run": failed_run}


def _finished_flow_run() -> str:
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
            type=FlowRunFilterStateType(any_=[StateType.COMPLETED]))), limit=1)
    return str(runs[0].id)


@contextlib.contextmanager
def small_digits_champion(tracking_uri: str) -> Iterator[None]:
    """A digits champion of MODEL trained by the train flow for as few epochs as it takes to exist (its accuracy is
    no concern here), with the environment naming it; restored afterwards."""
    env = {"SCANFLOW_MODEL_NAME": MODEL, "SCANFLOW_EXPERIMENT": "catalogue"}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        train_flow(dataset="digits", epochs=1, autoencoder_epochs=1, latent_dim=8)
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def registry(servers):
    """The digits champion (trained once), the Fashion-MNIST champion of a second model name, and the versions
    rollback refuses; yields the placeholders naming them."""
    tracking_uri, _ = servers
    with small_digits_champion(tracking_uri):
        config = TrackingConfig.from_env()
        champion = tracking.champion_version(config)
        names = _versions_rollback_refuses(config, champion)
        _fashion_champion(tracking_uri)
        yield {**names, "champion": champion, "finished_run": _finished_flow_run(), "unknown_run": str(uuid.uuid4())}


@pytest.fixture(scope="module")
def inputs(servers, tmp_path_factory):
    """Bad (and one good) input files and objects, by placeholder name."""
    _, store = servers
    folder = tmp_path_factory.mktemp("catalogue-inputs")
    rng = np.random.default_rng(0)
    good = rng.integers(0, 256, (10, 8, 8), dtype=np.uint8)
    arrays = {"good": good, "wrong_shape": rng.integers(0, 256, (10, 28, 28), dtype=np.uint8),
              "rank1": np.zeros(10, dtype=np.uint8), "int64": good.astype(np.int64), "no_images": np.zeros((0, 8, 8), np.uint8),
              "float01": (good / 255).astype(np.float32)}
    nan = good.astype(np.float32)
    nan[3, 2, 2] = np.nan
    arrays["nan"] = nan
    places = {}
    for name, array in arrays.items():
        np.save(folder / f"{name}.npy", array)
        places[name] = str(folder / f"{name}.npy")
    np.save(folder / "my batch.npy", good)
    np.save(folder / "pickled.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    np.savez(folder / "archive.npz", images=good)
    files = {"empty": b"", "text": b"these are not images\n", "garbage": rng.bytes(512),
             "pickle_raw": pickle.dumps(good)}
    for name, data in files.items():
        (folder / f"{name}.npy").write_bytes(data)
        places[name] = str(folder / f"{name}.npy")
    for name in ("adir", "not_a_stream", "bad_manifest", "home"):
        (folder / name).mkdir()
    (folder / "not_a_stream" / "mine.npy").write_bytes(b"not a stream")
    for name in ("text_folder", "bad_png_folder"):
        (folder / name).mkdir()
    (folder / "text_folder" / "notes.txt").write_text("no images here\n")
    (folder / "bad_png_folder" / "truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n" + rng.bytes(40))
    places.update(text_folder=str(folder / "text_folder"), bad_png_folder=str(folder / "bad_png_folder"))
    (folder / "bad_manifest" / "stream.json").write_text("{ this is not JSON")
    places.update(badname=str(folder / "my batch.npy"), pickled=str(folder / "pickled.npy"), npz=str(folder / "archive.npz"),
                  dir=str(folder / "adir"), missing=str(folder / "missing"), not_a_stream=str(folder / "not_a_stream"),
                  bad_manifest=str(folder / "bad_manifest"), home=str(folder / "home"))
    places["s3_good"] = store.put_array(store.key("batches", "good.npy"), good)
    places["s3_text"] = store.put_bytes(store.key("batches", "text.npy"), b"these are not images\n")
    places["s3_missing"] = store.uri(store.key("batches", "missing.npy"))
    return places


# ----------------------------------------------------------------------------------------------------- snapshots
def snapshot(tracking_uri: str, store: S3Store) -> dict:
    """Everything a command could write: MLflow runs (id, status, tags), registered models (aliases; versions with
    status and tags), and the bucket's keys."""
    client = tracking.mlflow_client(tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    runs = client.search_runs(experiments, run_view_type=ViewType.ALL, max_results=5000)
    models = []
    for model in client.search_registered_models(max_results=1000):
        versions = client.search_model_versions(f"name='{model.name}'", max_results=5000)
        models.append((model.name, sorted(model.aliases.items()) if isinstance(model.aliases, dict) else sorted(model.aliases),
                       sorted((v.version, v.status, sorted(v.tags.items())) for v in versions)))
    return {
        "runs": sorted((r.info.run_id, r.info.status, sorted(r.data.tags.items())) for r in runs),
        "models": sorted(models),
        "keys": sorted(store.keys("")),
    }


@pytest.fixture
def restore_environment(tmp_path, monkeypatch):
    """Commands set PREFECT_API_URL and SCANFLOW_MODEL_NAME for the flows they start: each row starts from the
    module's environment again, in an empty working directory."""
    saved = dict(os.environ)
    monkeypatch.chdir(tmp_path)
    yield
    os.environ.clear()
    os.environ.update(saved)


def _run(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as stop:  # argparse's usage errors
        return stop.code


@pytest.mark.parametrize("case", CATALOGUE, ids=[case.id for case in CATALOGUE])
def test_bad_input_is_refused_with_its_message_and_nothing_written(case, servers, registry, inputs, restore_environment, capfd):
    tracking_uri, store = servers
    places = {**inputs, **registry}
    for key, value in case.env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value.format(**places)
    before = snapshot(tracking_uri, store)
    code = _run([part.format(**places) for part in case.argv])
    out, err = capfd.readouterr()
    after = snapshot(tracking_uri, store)
    assert (code, case.message.format(**places) in err) == (case.code, True), err[-3000:]
    assert "Traceback" not in out + err
    assert after == before


# ------------------------------------------------------------------------------------- the flows, called from Python
def test_the_train_flow_refuses_a_champion_of_another_dataset_before_its_run(servers, registry, restore_environment):
    tracking_uri, store = servers
    os.environ["SCANFLOW_MODEL_NAME"] = FASHION_MODEL
    before = snapshot(tracking_uri, store)
    with pytest.raises(ChampionMismatchError, match=r"was trained on fashion-mnist .*input 1x28x28\); this training is on digits "
                       r".*input 1x8x8\), another dataset and class set and input shape\. .*pass --force \(train_flow\(force=True\)\)"):
        train_flow(dataset="digits", epochs=1, autoencoder_epochs=1)
    assert snapshot(tracking_uri, store) == before


def test_the_improve_flow_checks_the_shown_rows_itself_first(servers, registry, inputs, restore_environment):
    tracking_uri, store = servers
    before = snapshot(tracking_uri, store)
    for shown, action, message in (([0, 0], "ignore", "--shown repeats row 0"), ([12], "filter", "--shown row 12 is outside the batch of 10"),
                                   ([-1], "ignore", r"shown row -1 \(--shown\) is not a batch row: rows are integers 0\.\.9")):
        with pytest.raises(InvalidDecisionError, match=message):
            improve_flow(batch_path=inputs["good"], shown_indices=shown, action=action)
    assert snapshot(tracking_uri, store) == before


def test_promote_refuses_a_version_whose_logging_did_not_finish(servers, registry, restore_environment):
    tracking_uri, store = servers
    before = snapshot(tracking_uri, store)
    with pytest.raises(UnusableVersionError, match=rf"{MODEL} v{registry['unfinished']} cannot be promoted: it has no scanflow.sha256 tag"):
        tracking.promote(TrackingConfig.from_env(), registry["unfinished"], "a test")
    assert snapshot(tracking_uri, store) == before


def test_a_run_ended_by_bad_input_is_marked_aborted(servers, registry, restore_environment):
    from scanflow.errors import InvalidBatchError

    config = TrackingConfig.from_env()
    with pytest.raises(InvalidBatchError), tracking.tracked_run(config, "aborted-on-purpose") as run_id:
        raise InvalidBatchError("a batch found bad after the run opened")
    run = tracking.mlflow_client(config.tracking_uri).get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["scanflow.aborted"] == "true"
    assert run.data.tags["scanflow.aborted_reason"] == "a batch found bad after the run opened"


def test_the_catalogue_covers_every_command():
    commands = {case.argv[0] if case.argv else "" for case in CATALOGUE}
    assert len(CATALOGUE) >= 90
    assert {"train", "detect", "predict", "improve", "supervise", "answer", "rollback", "corrupt", "stack", "server",
            "blocks", "build-image", "image", "serve", "pending", "notify"} <= commands
    assert {case.code for case in CATALOGUE} == {2, 3}
