"""Latency from a drifted batch's arrival to the decision form a person sees in the Prefect UI.

A local `prefect server` (its UI included), a digits champion in a temporary MLflow store, and a stream whose
batches drift from the second on. The supervise loop runs its steps as sub-flows of one run; reports are off the
path (the Evidently report is not produced inside the loop). For every drifted batch a person, played by headless
Chromium through Playwright, waits on the paused run's page, presses Resume as soon as it appears and answers
"ignore" (so the next batch is not delayed by an improvement) after labelling every critical sample with its true
class, as a person who knows would. Times are read from the server and the browser:

  arrival    the start of the batch's predict sub-flow (the loop picks the batch up)
  paused     the ask-human run entering Paused (the form exists on the server)
  usable     the form's first sample image and its choice rendered in the browser after Resume
  decided    the form submitted: every sample labelled, the action chosen

and the person's actions (clicks and keys: Resume, two per sample, two for the action, Submit) are counted.

Run: `python -m benchmarks.form_latency [--dataset digits|fashion-mnist] [--batches 4] [--batch-size 80]` (about 2
minutes on digits, 4 on Fashion-MNIST). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import tempfile
import threading
import time
import uuid
from pathlib import Path

from tests.flows.ui import PauseForm, browser_page


def _timestamp(value) -> float:
    return value.timestamp() if hasattr(value, "timestamp") else datetime.datetime.fromisoformat(str(value)).timestamp()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=4, help="stream batches; all but the first drift")
    parser.add_argument("--batch-size", type=int, default=80, help="images per batch (digits has 359 test images)")
    parser.add_argument("--dataset", default="digits", help="digits (seconds to train) or fashion-mnist (the demo's data)")
    parser.add_argument("--epochs", type=int, default=None, help="champion epochs (default: 15 for digits, 1 for fashion-mnist)")
    args = parser.parse_args()
    epochs = args.epochs or (15 if args.dataset == "digits" else 1)

    work = Path(tempfile.mkdtemp(prefix="scanflow-latency-"))
    os.environ.update(MLFLOW_TRACKING_URI=f"sqlite:///{work / 'mlflow.db'}", SCANFLOW_MODEL_NAME="latency-classifier", SCANFLOW_EXPERIMENT="latency")
    from scanflow.local import start_prefect_server
    from scanflow.local_auth import new_prefect_auth_string

    auth_string = new_prefect_auth_string()
    server = start_prefect_server(log_dir=work, home=work / "prefect", auth_string=auth_string)
    os.environ.update(PREFECT_API_URL=server.api_url, PREFECT_API_AUTH_STRING=auth_string)
    try:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterName, FlowRunFilterParentFlowRunId
        from prefect.context import _temporary_global_settings_context, get_settings_context
        from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: server.api_url, PREFECT_API_AUTH_STRING: auth_string}), _temporary_global_settings_context(get_settings_context()):
            from flows.supervise import paused_child, supervise_flow
            from flows.train import train_flow
            from scanflow.stream import make_stream

            train_flow(dataset=args.dataset, epochs=epochs, autoencoder_epochs=epochs, **({"latent_dim": 8} if args.dataset == "digits" else {}))
            batches = {batch.batch_id: batch for batch in make_stream(work / "stream", args.dataset, n_batches=args.batches, batch_size=args.batch_size, drift_at=1, corruption="impulse_noise", severity=5)}
            run_name = f"latency-{uuid.uuid4().hex[:8]}"
            loop = threading.Thread(target=lambda: supervise_flow.with_options(flow_run_name=run_name)(
                stream_dir=str(work / "stream"), human="person", pause_timeout_s=600, ask_known_shifts=True), daemon=True)
            loop.start()
            with get_client(sync_client=True) as client:
                while not (runs := client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[run_name])))):
                    time.sleep(0.2)
                parent = runs[0].id
            rows, answered = [], set()
            with browser_page() as page:
                while loop.is_alive() or len(answered) < args.batches - 1:
                    try:
                        child = paused_child(parent, timeout_s=5)
                    except TimeoutError:
                        if not loop.is_alive():
                            break
                        continue
                    if child in answered:
                        time.sleep(0.2)
                        continue
                    form = PauseForm.open(page, server.ui_url, str(child))
                    visible = time.time()
                    with get_client(sync_client=True) as client:
                        paused_run = client.read_flow_run(child)
                        request = paused_run.parameters["request"]
                        batch_id = request["batch_id"]
                        predict = client.read_flow_runs(
                            flow_filter=FlowFilter(name=FlowFilterName(any_=["predict"])),
                            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent])),
                        )
                    arrival = min(_timestamp(r.start_time) for r in predict if r.parameters.get("batch_id") == batch_id)
                    paused_at = _timestamp(paused_run.state.timestamp)
                    truth = batches[batch_id].true_labels()[request["shown"]]
                    for k, label in enumerate(truth):
                        field = form.sample(k + 1)
                        field.scroll_into_view_if_needed()
                        form.choose(field, request["classes"][int(label)])
                    form.choose_action("ignore")
                    form.submit()
                    decided = time.time()
                    rows.append((batch_id, paused_at - arrival, visible - paused_at, visible - arrival, len(truth),
                                 form.actions, decided - visible))
                    answered.add(child)
            loop.join(timeout=300)
    finally:
        server.stop()

    print(f"\nForm latency, {datetime.date.today()}, {platform.machine()} with {os.cpu_count()} cores, {args.dataset} champion ({epochs} epochs), "
          f"{args.batches} batches of {args.batch_size} (impulse_noise severity 5 from batch 1), steps as sub-flows, reports off the path\n")
    print("| batch | arrival -> paused (s) | paused -> usable (s) | arrival -> usable (s) | samples | actions | actions per sample | usable -> decided (s) |\n"
          "|---|---|---|---|---|---|---|---|")
    for batch_id, to_pause, to_visible, total, n, actions, deciding in rows:
        per_sample = (actions - 4) / n  # Resume, the action (open, pick) and Submit are per form
        print(f"| {batch_id} | {to_pause:.1f} | {to_visible:.1f} | {total:.1f} | {n} | {actions} | {per_sample:.1f} | {deciding:.1f} |")


if __name__ == "__main__":
    main()
