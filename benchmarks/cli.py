"""What a person waits for at the command line: `scanflow detect` and `scanflow predict` on a clean 200-image batch,
with a running Prefect server, in a fresh process each time (as a shell runs them), cold and through the warm
runner (`scanflow runner start`).

Set-up, in a temporary folder: `scanflow server start` (its own SCANFLOW_HOME), an MLflow SQLite store, a
Fashion-MNIST champion from `scanflow train` (1 classifier and 1 autoencoder epoch: the commands' cost does not depend
on how well the models are trained), one clean batch from the demo stream, then `scanflow runner start`. Each
repeat runs the cold command (SCANFLOW_WARM=0) and the warm one back to back, so both meet the same load; wall
time of the whole `scanflow` process, medians over `--repeats`. Every command must exit 0.

Run: `python -m benchmarks.cli [--repeats 5] [--batch-size 200]`. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCANFLOW = str(Path(sys.executable).with_name("scanflow"))


def _timed(args: list[str], env: dict[str, str], cwd: Path) -> float:
    start = time.perf_counter()
    result = subprocess.run([SCANFLOW, *args], env=env, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"`scanflow {' '.join(args)}` exited {result.returncode}:\n{result.stderr[-3000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="cold and warm runs of each command (at least 1)")
    parser.add_argument("--batch-size", type=int, default=200, help="images in the batch (Fashion-MNIST, 28x28)")
    args = parser.parse_args()
    if args.repeats < 1:
        raise SystemExit("--repeats must be at least 1")

    from scanflow.stream import make_stream

    work = Path(tempfile.mkdtemp(prefix="scanflow-cli-"))
    env = {**os.environ, "SCANFLOW_HOME": str(work / "home"), "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
           "SCANFLOW_MODEL_NAME": "cli-classifier", "SCANFLOW_EXPERIMENT": "cli"}
    env.pop("PREFECT_API_URL", None)
    batch = make_stream(work / "stream", "fashion-mnist", n_batches=1, batch_size=args.batch_size, drift_at=1)[0].path
    try:
        _timed(["server", "start"], env, work)
        _timed(["train", "--dataset", "fashion-mnist", "--epochs", "1", "--autoencoder-epochs", "1"], env, work)
        runner_start = _timed(["runner", "start"], env, work)
        commands = {"detect": ["detect", "--batch", str(batch), "--no-report"], "predict": ["predict", "--batch", str(batch)]}
        seconds: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.repeats):
            for name, command in commands.items():
                seconds.setdefault((name, "cold"), []).append(_timed(command, {**env, "SCANFLOW_WARM": "0"}, work))
                seconds.setdefault((name, "warm"), []).append(_timed(command, env, work))
    finally:
        subprocess.run([SCANFLOW, "server", "stop"], env=env, cwd=work, capture_output=True)

    median = statistics.median
    print(f"\nCLI, {platform.machine()} with {os.cpu_count()} cores, Python {platform.python_version()}; `scanflow server "
          f"start` running; a Fashion-MNIST champion; one clean batch of {args.batch_size} images; a fresh `scanflow` "
          f"process per command, cold (SCANFLOW_WARM=0) and warm back to back, {args.repeats} repeats, medians; "
          f"`scanflow runner start` took {runner_start:.1f} s\n")
    print("| command | cold (s) | warm (s) | warm / cold |\n|---|---:|---:|---:|")
    for name in commands:
        cold, hot = median(seconds[name, "cold"]), median(seconds[name, "warm"])
        print(f"| `scanflow {name}` | {cold:.2f} | {hot:.2f} | {hot / cold:.2f} |")


if __name__ == "__main__":
    main()
