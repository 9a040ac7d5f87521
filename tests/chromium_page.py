"""A minimal headless-Chromium check of an HTML page over the DevTools protocol.

Starts Debian's chromium with an empty profile and ``--remote-debugging-port=0`` (the chosen
port is read from ``DevToolsActivePort``), drives the first page target with websocket-client,
and reports the three failure kinds the report must never show: console errors (console.error,
uncaught exceptions, browser log errors), network requests (anything but the page's own file
and its inline data:image/ URIs), and content wider than the page (at a given viewport width,
on screen or in print media).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--remote-debugging-port=0",
    "--remote-allow-origins=*",
]

WIDE_JS = r"""
(() => {
  const vw = document.documentElement.clientWidth;
  const out = [];
  if (document.documentElement.scrollWidth > vw + 1)
    out.push(`page scrollWidth ${document.documentElement.scrollWidth} > ${vw}`);
  for (const el of document.querySelectorAll('body *')) {
    const r = el.getBoundingClientRect();
    if (r.width === 0 && r.height === 0) continue;
    const name = el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') +
      (el.className && typeof el.className === 'string' ? '.' + el.className.split(' ')[0] : '');
    if (r.right > vw + 1) out.push(`${name} ends at ${Math.round(r.right)} > ${vw}`);
    const s = getComputedStyle(el);
    if (s.overflowX !== 'visible' && el.scrollWidth > el.clientWidth + 1 && el.tagName !== 'svg')
      out.push(`${name} hides ${el.scrollWidth - el.clientWidth}px (overflow-x ${s.overflowX})`);
    if (out.length > 20) break;
  }
  return out;
})()
"""


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class PageCheck:
    console_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    too_wide: dict[str, list[str]] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)

    def problems(self) -> list[str]:
        out = [f"console error: {e}" for e in self.console_errors]
        out += [f"network request: {u}" for u in self.requests]
        out += [f"too wide ({k}): {w}" for k, ws in self.too_wide.items() for w in ws]
        return out


class _Session:
    def __init__(self, ws_url: str) -> None:
        import websocket

        self.ws = websocket.create_connection(ws_url, timeout=30, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        ident = self.next_id
        self.ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == ident:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def wait_for(self, method: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        if any(e.get("method") == method for e in self.events):
            return
        while time.monotonic() < deadline:
            msg = json.loads(self.ws.recv())
            self.events.append(msg)
            if msg.get("method") == method:
                return
        raise TimeoutError(method)

    def drain(self, seconds: float) -> None:
        """Collect events for a little while (late console messages, lazy requests)."""
        self.ws.settimeout(seconds)
        with contextlib.suppress(Exception):
            while True:
                self.events.append(json.loads(self.ws.recv()))
        self.ws.settimeout(30)


@contextlib.contextmanager
def browser() -> Iterator[str]:
    """A headless chromium with an empty profile; yields the first page's websocket URL."""
    exe = chromium()
    if exe is None:
        raise RuntimeError("chromium not found")
    profile = tempfile.mkdtemp(prefix="privlab-chromium-")
    # Its own session, so the helper processes (renderer, crashpad, ...) end with it: they
    # write into the profile folder and would race its removal.
    proc = subprocess.Popen(
        [exe, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        port_file = Path(profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not port_file.exists() or len(port_file.read_text().split()) < 2:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.05)
        port = port_file.read_text().split()[0]
        yield port
    finally:
        _end_session(proc)
        for _ in range(20):  # late writes by exiting helpers: retry, then give up quietly
            shutil.rmtree(profile, ignore_errors=True)
            if not Path(profile).exists():
                break
            time.sleep(0.1)


def _end_session(proc: subprocess.Popen) -> None:
    """Terminate chromium and every process of its session, then reap the main one."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(10)
            break
        except subprocess.TimeoutExpired:
            continue
    time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # helpers that outlived the main process


def _page_ws(port: str) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/new?about:blank", timeout=10) as r:
        # newer Chromium wants PUT for /json/new; fall back below if this one refuses
        return json.loads(r.read())["webSocketDebuggerUrl"]


def _new_page(port: str) -> str:
    import urllib.request

    req = urllib.request.Request(f"http://127.0.0.1:{port}/json/new?about:blank", method="PUT")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())["webSocketDebuggerUrl"]
    except Exception:
        return _page_ws(port)


def check_page(
    port: str,
    path: Path,
    widths: tuple[int, ...] = (1280,),
    print_width: int | None = 794,
    evaluate: dict[str, str] | None = None,
) -> PageCheck:
    """Open `path` in a fresh tab and collect the failures (see the module docstring)."""
    s = _Session(_new_page(port))
    try:
        for domain in ("Runtime", "Log", "Network", "Page"):
            s.call(f"{domain}.enable")
        s.call("Emulation.setDeviceMetricsOverride", width=widths[0], height=900,
               deviceScaleFactor=1, mobile=False)  # fmt: skip
        url = path.resolve().as_uri()
        s.call("Page.navigate", url=url)
        s.wait_for("Page.loadEventFired")
        s.drain(0.5)
        result = PageCheck()
        for width in widths:
            s.call("Emulation.setDeviceMetricsOverride", width=width, height=900,
                   deviceScaleFactor=1, mobile=False)  # fmt: skip
            wide = s.call("Runtime.evaluate", expression=WIDE_JS, returnByValue=True)
            if found := wide["result"].get("value"):
                result.too_wide[f"screen {width}px"] = found
        if print_width:
            s.call("Emulation.setEmulatedMedia", media="print")
            s.call("Emulation.setDeviceMetricsOverride", width=print_width, height=1123,
                   deviceScaleFactor=1, mobile=False)  # fmt: skip
            wide = s.call("Runtime.evaluate", expression=WIDE_JS, returnByValue=True)
            if found := wide["result"].get("value"):
                result.too_wide[f"print {print_width}px"] = found
            s.call("Emulation.setEmulatedMedia", media="")
        for key, expr in (evaluate or {}).items():
            value = s.call("Runtime.evaluate", expression=expr, returnByValue=True)
            result.values[key] = value["result"].get("value")
        s.drain(0.2)
        for e in s.events:
            method, p = e.get("method"), e.get("params", {})
            if method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                args = [str(a.get("value", a.get("description", ""))) for a in p.get("args", [])]
                result.console_errors.append(" ".join(args))
            elif method == "Runtime.exceptionThrown":
                d = p.get("exceptionDetails", {})
                result.console_errors.append(
                    str(d.get("exception", {}).get("description") or d.get("text"))
                )
            elif method == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                result.console_errors.append(str(p["entry"].get("text")))
            elif method == "Network.requestWillBeSent":
                req_url = p.get("request", {}).get("url", "")
                # data:image/ URIs are the page's own inline images (privlab.png), not fetches
                if req_url != url and not req_url.startswith("data:image/"):
                    result.requests.append(req_url)
        return result
    finally:
        s.ws.close()
