"""A notification when a decision waits: a Prefect automation that POSTs to a webhook each time a run of the
`ask-human` flow pauses. `scanflow notify` sets it up on the server at $PREFECT_API_URL."""

from __future__ import annotations

import re
from uuid import UUID

from prefect.automations import Automation, EventTrigger, Posture, SendNotification
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.client.orchestration import get_client

from flows.pending import ASK_HUMAN_FLOW
from scanflow.errors import ScanflowError

#: The server's event for a flow run entering the Paused state (prefect.server.models.events).
PAUSED_EVENT = "prefect.flow-run.Paused"
DEFAULT_NAME = "scanflow-decision-waiting"


def notification_templates(ui_url: str) -> tuple[str, str]:
    """(subject, body) as Jinja templates the server renders with the paused flow run (`flow_run`), linking to its
    page under `ui_url` (the client's view of the UI: the server may not know its own address)."""
    run_page = f"{ui_url.rstrip('/')}/runs/flow-run/{{{{ flow_run.id }}}}"
    subject = "Scanflow: decision waiting for batch {{ flow_run.parameters.request.batch_id }}"
    body = (
        "Flow run {{ flow_run.name }} ({{ flow_run.id }}) waits for a decision on batch "
        "{{ flow_run.parameters.request.batch_id }} (recommended: {{ flow_run.parameters.request.recommended }}).\n"
        f"Open {run_page} and press Resume, or: scanflow answer {{{{ flow_run.id }}}} --action ...\n"
        "`scanflow pending` lists every decision waiting."
    )
    return subject, body


def notify_on_pause(webhook_url: str, ui_url: str, name: str = DEFAULT_NAME) -> tuple[UUID, UUID]:
    """Save a CustomWebhookNotificationBlock `name` (POST of JSON {"subject", "body"} to `webhook_url`) and the
    automation `name` that sends it whenever a run of the ask-human flow pauses; automations of that name are
    replaced. Returns (block document id, automation id). Raises ScanflowError on a name Prefect refuses."""
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", name):
        raise ScanflowError(f"--name must be lowercase letters, digits and dashes (a Prefect block name), got {name!r}")
    block = CustomWebhookNotificationBlock(name=name, url=webhook_url, method="POST",
                                           json_data={"subject": "{{subject}}", "body": "{{body}}"})
    block_id = block.save(name, overwrite=True)
    with get_client(sync_client=True) as client:
        for old in client.read_automations_by_name(name):
            client.delete_automation(old.id)
    subject, body = notification_templates(ui_url)
    automation = Automation(
        name=name,
        description=f"POST to the webhook of block {name} when a run of {ASK_HUMAN_FLOW} pauses for a decision",
        trigger=EventTrigger(
            expect={PAUSED_EVENT},
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related={"prefect.resource.role": "flow", "prefect.resource.name": ASK_HUMAN_FLOW},
            posture=Posture.Reactive,
            threshold=1,
        ),
        actions=[SendNotification(block_document_id=block_id, subject=subject, body=body)],
    ).create()
    return block_id, automation.id
