"""Drives the Prefect UI's pause form in headless Chromium (Debian `chromium` through Playwright), as a person would:
open the paused run, press Resume, read the evidence, label each critical sample, choose an action, submit.

Visibility is measured as a person meets it: the part of an element's box that is left after cutting it by the
viewport and by every ancestor that clips its content (a scrolled dialog, a collapsed description).
"""

from __future__ import annotations

import contextlib
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]

#: JavaScript: the visible part {x, y, width, height} of an element's box after every clipping ancestor and the viewport.
VISIBLE_BOX_JS = """element => {
  const box = element.getBoundingClientRect();
  let left = box.left, top = box.top, right = box.right, bottom = box.bottom;
  for (let node = element.parentElement; node; node = node.parentElement) {
    const style = getComputedStyle(node);
    if (style.overflowX !== 'visible' || style.overflowY !== 'visible') {
      const clip = node.getBoundingClientRect();
      left = Math.max(left, clip.left); top = Math.max(top, clip.top);
      right = Math.min(right, clip.right); bottom = Math.min(bottom, clip.bottom);
    }
  }
  left = Math.max(left, 0); top = Math.max(top, 0);
  right = Math.min(right, window.innerWidth); bottom = Math.min(bottom, window.innerHeight);
  return {x: left, y: top, width: Math.max(0, right - left), height: Math.max(0, bottom - top),
          full_width: box.width, full_height: box.height};
}"""


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@contextlib.contextmanager
def browser_page(width: int = 1366, height: int = 768) -> Iterator[Any]:
    """A fresh page of `width` x `height` CSS pixels in headless Chromium; the browser closes on exit. With
    PREFECT_API_AUTH_STRING set, the page is logged in as the UI's login form does (the string, base64, in local
    storage under `prefect-password`), so the UI's API calls carry it."""
    import base64
    import json
    import os

    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            if auth_string := os.environ.get("PREFECT_API_AUTH_STRING"):
                token = base64.b64encode(auth_string.encode()).decode()
                page.add_init_script(f"window.localStorage.setItem('prefect-password', {json.dumps(token)});")
            yield page
        finally:
            browser.close()


def visible_box(locator: Any) -> dict[str, float]:
    """What a person can see of `locator`'s element (see the module docstring), with its full size."""
    return locator.evaluate(VISIBLE_BOX_JS)


@dataclass
class PauseForm:
    """The "Resume Flow Run" dialog of one paused run. `actions` counts the person's actions (a click, a key)."""

    page: Any
    actions: int = 0

    @classmethod
    def open(cls, page: Any, ui_url: str, flow_run_id: str, timeout_ms: int = 60_000) -> "PauseForm":
        page.goto(f"{ui_url}/runs/flow-run/{flow_run_id}")
        page.get_by_role("button", name="Resume").click(timeout=timeout_ms)
        form = cls(page, actions=1)
        form.dialog.locator(".p-select-button__control").first.wait_for(timeout=timeout_ms)
        form.dialog.locator("img").first.wait_for(timeout=timeout_ms)
        return form

    @property
    def dialog(self) -> Any:
        return self.page.get_by_role("dialog")

    def field(self, title: str) -> Any:
        """The form property (label, description, control) titled `title`."""
        label = self.page.locator(".schema-form-property__label", has_text=re.compile(rf"^{re.escape(title)}( |$)"))
        return self.dialog.locator(".schema-form-property").filter(has=label)

    def sample(self, number: int) -> Any:
        """The field of critical sample `number` (1-based, as shown)."""
        return self.field(f"Sample #{number}")

    def n_samples(self) -> int:
        return self.dialog.locator(".schema-form-property__label", has_text="Sample #").count()

    def heading(self) -> Any:
        """The verdict heading in the action field's description."""
        return self.field("Action").locator("h3")

    def options(self, field: Any) -> list[str]:
        """Open `field`'s choice (keyboard: a mouse click does not open it in headless Chromium) and read its options."""
        control = field.locator(".p-select-button__control")
        control.press(" ")
        self.actions += 1
        options = self.page.get_by_role("option")
        options.first.wait_for(timeout=5_000)
        return [text.strip() for text in options.all_inner_texts()]

    def pick(self, option: str) -> None:
        """Choose `option` in the open choice list."""
        self.page.get_by_role("option", name=option, exact=True).click()
        self.actions += 1
        self.page.get_by_role("option").first.wait_for(state="hidden", timeout=5_000)

    def choose(self, field: Any, option: str) -> None:
        self.options(field)
        self.pick(option)

    def value(self, field: Any) -> str:
        return field.locator(".p-select-button__control").inner_text().strip()

    def choose_action(self, action: str) -> None:
        self.choose(self.field("Action"), action)

    def set_note(self, note: str) -> None:
        self.dialog.locator("textarea").fill(note)
        self.actions += 1

    def submit(self) -> None:
        self.dialog.get_by_role("button", name="Submit").click()
        self.actions += 1
        self.dialog.wait_for(state="detached", timeout=30_000)
