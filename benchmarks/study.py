"""The seed study: `scanflow study` run from the benchmarks, with the same options.

Per seed a champion is trained (as `scanflow-study-<dataset>-classifier`); per corruption and severity a stream of
clean then corrupted batches goes through the real detect flow, the oracle decides through the real improve flow,
and every remedy (retrain with the person's, random or pseudo labels at each budget, the filter, the all-labelled
ceiling) is measured on one held-out set. It writes `study.md`, `cells.csv` and the plots (PNG and SVG) to `--out`,
logs them to one MLflow run and, as a flow, publishes them as Prefect artifacts.

Run: `python -m benchmarks.study --dataset mnist --quick --out docs/results` (every option: `--help`).
"""

from __future__ import annotations

import sys

from scanflow.cli import main

if __name__ == "__main__":
    sys.exit(main(["study", *sys.argv[1:]]))
