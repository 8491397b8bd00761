"""JupyterLab in a real browser: helpers for the end-to-end tests of credits inside it.

Used by tests/test_browser_lab.py (with the fixtures of tests/browser.py and a real
hub from tests/realhub.py). What the tests look for in the page is the DOM
contract of the credits JupyterLab extension (``.jp-credits-*``); what JupyterLab
itself offers (menus, launcher, notebooks, toasts) is found the way a person finds
it: by its visible label.

``BrowserTraffic`` keeps every response body and WebSocket frame a browser
context receives, so that a test can prove no token ever reached the browser.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import requests

from tests.waiting import wait_for

#: JupyterLab is ready when its shell is in the page (the URL changes much earlier).
LAB_READY_MS = 120_000
#: JupyterLab's user settings, relative to a home directory.
USER_SETTINGS = Path(".jupyter/lab/user-settings/@jupyterlab")


def server_path(user: str, server: str = "") -> str:
    """``/user/alice/`` or ``/user/alice/short/``: a server's URL prefix under the hub."""
    return f"/user/{user}/{server}/" if server else f"/user/{user}/"


def spawn_path(user: str, server: str = "") -> str:
    """The hub's spawn page of one server (what "start again" leads to)."""
    return f"/hub/spawn/{user}/{server}" if server else f"/hub/spawn/{user}"


def home_dir(hub, user: str) -> Path:
    """``user``'s home on the test hub (``home_dir_template`` in tests/hub.py): the notebook
    root of their servers."""
    return hub.workdir / "home" / user


def disable_autosave(hub, user: str) -> None:
    """Turn JupyterLab's autosave off for ``user`` (a user setting, before the server starts).

    With autosave off, a document on disk changes only when something saves it on
    purpose: the proof that the credits extension saved it before the stop. The news
    question is answered too ("no"): its toast would be in every screenshot.
    """
    settings = {"docmanager-extension/plugin": {"autosave": False},
                "apputils-extension/notification": {"fetchNews": "false",
                                                    "checkForUpdates": False}}
    for name, values in settings.items():
        path = home_dir(hub, user) / USER_SETTINGS / f"{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))


# --- JupyterLab itself ------------------------------------------------------------------

def wait_for_lab(page) -> None:
    """JupyterLab has loaded: its shell is there and its splash screen gone."""
    from playwright.sync_api import expect

    expect(page.locator(".jp-LabShell")).to_be_visible(timeout=LAB_READY_MS)
    expect(page.locator("#jupyterlab-splash")).to_have_count(0, timeout=LAB_READY_MS)


def open_lab(page, hub, user: str, server: str = "") -> None:
    """Go to a server's JupyterLab with a fresh workspace (``?reset``: the launcher shows).

    Someone who is not the owner (an admin) first meets the hub's "Authorize access"
    page for that server, and clicks Authorize as a person does.
    """
    from playwright.sync_api import expect

    page.goto(f"{hub.url}{server_path(user, server)}lab?reset")
    authorize = page.get_by_role("button", name="Authorize")
    shell = page.locator(".jp-LabShell")
    expect(authorize.or_(shell)).to_be_visible(timeout=LAB_READY_MS)
    if authorize.is_visible():
        authorize.click()
    wait_for_lab(page)


def menu_item(page, label: str):
    """The visible menu item whose label is exactly ``label`` (menus also hold longer names:
    "JupyterLab Dark" and "JupyterLab Dark High Contrast")."""
    exact = re.compile(f"^{re.escape(label)}$")
    return page.locator(".lm-Menu-item:visible").filter(
        has=page.locator(".lm-Menu-itemLabel", has_text=exact))


def choose_theme(page, theme: str) -> None:
    """Settings menu → Theme → ``theme``, by clicking; waits until the theme is applied."""
    from playwright.sync_api import expect

    page.locator("#jp-menu-panel").get_by_role("menuitem", name="Settings", exact=True).click()
    menu_item(page, "Theme").click()
    menu_item(page, theme).click()
    expect(page.locator("body")).to_have_attribute("data-jp-theme-name", theme)
    # JupyterLab shows its splash screen while the theme's styles load.
    expect(page.locator("#jupyterlab-splash")).to_have_count(0)


def new_notebook(page):
    """Click the launcher's first notebook card; returns the new notebook's panel, once
    its first cell can be typed into."""
    from playwright.sync_api import expect

    page.locator('.jp-LauncherCard[data-category="Notebook"]').first.click()
    notebook = page.locator(".jp-NotebookPanel").last
    expect(notebook.locator(".jp-Cell .cm-content").first).to_be_visible()
    # As a person waits for the status bar to say the kernel is idle: a cell run before the
    # kernel's session is connected is dropped (its prompt stays "[ ]").
    expect(page.get_by_role("button", name="Python 3 (ipykernel) | Idle", exact=True)
           ).to_be_visible(timeout=90_000)
    return notebook


def type_into_cell(page, notebook, text: str) -> None:
    """Click the notebook's last cell and type ``text`` key by key, as a person does."""
    editor = notebook.locator(".jp-Cell .cm-content").last
    editor.click()
    page.keyboard.type(text)


def current_document(page) -> str:
    """The name in the main area's current tab (``Untitled.ipynb``), as a person reads it."""
    return page.locator("#jp-main-dock-panel .lm-TabBar-tab.lm-mod-current "
                        ".lm-TabBar-tabLabel").inner_text().strip()


# --- the credits extension ----------------------------------------------------------------

def status_item(page):
    return page.locator(".jp-credits-StatusItem")


def credits_panel(page):
    return page.locator("#jp-credits-panel")


def open_panel_from_status_bar(page):
    """Click the status bar item; returns the credits panel, once visible."""
    from playwright.sync_api import expect

    status_item(page).click()
    panel = credits_panel(page)
    expect(panel).to_be_visible()
    return panel


def server_status(hub, user: str, server: str = "", *, refresh: bool = True) -> dict:
    """What the server extension serves at ``credits/status``, asked with the hub's admin
    token (as a script would), for comparing with what the page shows."""
    response = requests.get(
        f"{hub.url}{server_path(user, server)}credits/status",
        params={"refresh": "1"} if refresh else None,
        headers={"Authorization": f"token {hub.token}"}, timeout=30)
    assert response.status_code == 200, (response.status_code, response.text[:500])
    return response.json()


# --- tokens ---------------------------------------------------------------------------------

def process_environment(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {key.decode(): value.decode() for key, value in pairs}


def service_token(hub) -> str:
    """The credits service's own hub token (from its process's environment)."""
    pids = wait_for(hub.service_pids, what="the credits service's process")
    return process_environment(pids[0])["JUPYTERHUB_API_TOKEN"]


def server_token(hub, user: str) -> str:
    """The hub token of ``user``'s running single-user server (its only one)."""
    return hub.server_environment(user)["JUPYTERHUB_API_TOKEN"]


@dataclass
class Received:
    url: str
    status: int
    body: bytes


@dataclass
class BrowserTraffic:
    """Every response body and WebSocket frame one browser context received.

    Bodies are read as they arrive (later, Chromium may have dropped them);
    redirects and empty answers have none.
    """

    responses: list[Received] = field(default_factory=list)
    frames: list[tuple[str, bytes]] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)

    def attach(self, context) -> "BrowserTraffic":
        context.on("response", self._response)
        for page in context.pages:
            self._page(page)
        context.on("page", self._page)
        return self

    def _response(self, response) -> None:
        status = response.status
        if 300 <= status < 400 or status in (101, 204):
            self.responses.append(Received(response.url, status, b""))
            return
        try:
            body = response.body()
        except Exception as error:  # noqa: BLE001 - closed pages, aborted loads: noted
            self.unreadable.append(f"{response.url}: {error}")
            body = b""
        self.responses.append(Received(response.url, status, body))

    def _page(self, page) -> None:
        page.on("websocket", self._websocket)

    def _websocket(self, socket) -> None:
        url = socket.url

        def frame(payload):
            data = payload.encode() if isinstance(payload, str) else bytes(payload)
            self.frames.append((url, data))
        socket.on("framereceived", frame)

    def leaks(self, secrets: dict[str, str]) -> list[str]:
        """"<secret name> in <url>" for every body or frame that holds one of ``secrets``."""
        found = []
        for name, secret in secrets.items():
            needle = secret.encode()
            found += [f"{name} in response {r.url}" for r in self.responses if needle in r.body]
            found += [f"{name} in WebSocket frame of {url}" for url, data in self.frames
                      if needle in data]
        return found


def page_secrets_leaks(page, secrets: dict[str, str]) -> list[str]:
    """Where in the page's PageConfig, localStorage, sessionStorage or cookies a secret is."""
    config = page.evaluate(
        "() => document.getElementById('jupyter-config-data')?.textContent ?? ''")
    storage = page.evaluate("() => JSON.stringify({local: Object.entries(localStorage),"
                            " session: Object.entries(sessionStorage)})")
    cookies = json.dumps(page.context.cookies())
    places = {"PageConfig": config, "web storage": storage, "cookies": cookies}
    return [f"{name} in {place}" for name, secret in secrets.items()
            for place, text in places.items() if secret in text]
