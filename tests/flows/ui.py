"""Drives the Prefect UI's pause form in headless Chromium (Debian `chromium` through Playwright), as a person would:
open the paused run, press Resume, read the evidence, choose an action, correct labels, submit."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@contextlib.contextmanager
def browser_page() -> Iterator[Any]:
    """A fresh page in headless Chromium; the browser closes on exit."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": 1400, "height": 1000})
        finally:
            browser.close()


@dataclass
class PauseForm:
    """The "Resume Flow Run" dialog of one paused run."""

    page: Any

    @classmethod
    def open(cls, page: Any, ui_url: str, flow_run_id: str, timeout_ms: int = 60_000) -> "PauseForm":
        page.goto(f"{ui_url}/runs/flow-run/{flow_run_id}")
        page.get_by_role("button", name="Resume").click(timeout=timeout_ms)
        form = cls(page)
        form.dialog.locator("input[type=number]").first.wait_for(timeout=timeout_ms)
        return form

    @property
    def dialog(self) -> Any:
        return self.page.get_by_role("dialog")

    def evidence_images(self) -> list[str]:
        """`src` of every image in the form's description (the grid of critical samples)."""
        images = self.dialog.locator("img")
        return [images.nth(i).get_attribute("src") or "" for i in range(images.count())]

    def table_rows(self) -> list[list[str]]:
        """The cells of each body row of the description's table."""
        rows = self.dialog.locator("table tbody tr")
        return [[cell.strip() for cell in rows.nth(i).locator("td").all_inner_texts()] for i in range(rows.count())]

    def labels(self) -> list[int]:
        inputs = self.dialog.locator("input[type=number]")
        return [int(inputs.nth(i).input_value()) for i in range(inputs.count())]

    def set_labels(self, labels: list[int]) -> None:
        """Type each label into its row; rows already right are left alone, as a person would."""
        inputs = self.dialog.locator("input[type=number]")
        for i, label in enumerate(labels):
            if int(inputs.nth(i).input_value()) != label:
                inputs.nth(i).fill(str(label))

    def choose_action(self, action: str) -> None:
        """The action select opens from the keyboard (a click toggles it shut again in this UI version)."""
        control = self.dialog.locator(".p-select-button__control")
        option = self.page.get_by_role("option", name=action, exact=True)
        for _ in range(3):
            control.focus()
            self.page.keyboard.press(" ")
            try:
                option.wait_for(timeout=2000)
                break
            except Exception:
                continue
        option.click()

    def set_note(self, note: str) -> None:
        self.dialog.locator("textarea").fill(note)

    def submit(self) -> None:
        self.dialog.get_by_role("button", name="Submit").click()
        self.dialog.wait_for(state="detached", timeout=30_000)
