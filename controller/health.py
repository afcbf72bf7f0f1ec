"""``/healthz`` and ``/readyz`` for the kubelet's probes, served from a thread.

Liveness is whatever ``alive`` answers: the agent and the controller tie it to their work queue's
heartbeat (worker threads alive, no key overdue for a worker) and the agent also to the DomainMonitor
scheduler's (it loops at least every second); readiness means the agent finished its initial refresh of
the host and can serve (DESIGN.md "Start-up sequence" step 5), and the body says what the host cannot do
(the preflight report), so ``kubectl exec ... curl /readyz`` explains a node that refuses some connection
types. The server runs in its own thread so a busy or blocked asyncio loop cannot make the probe hang.
"""

from __future__ import annotations

import http.server
import json
import logging
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

Probe = Callable[[], tuple[bool, dict[str, Any]]]


class HealthServer:
    def __init__(self, port: int, *, alive: Probe, ready: Probe, metrics: Callable[[], bytes] | None = None,
                 addr: str = "0.0.0.0") -> None:  # noqa: S104 - the kubelet probes the pod IP
        probes = {"/healthz": alive, "/livez": alive, "/readyz": ready}

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics" and metrics is not None:
                    self._send(200, metrics(), "text/plain; version=0.0.4")
                    return
                probe = probes.get(path)
                if probe is None:
                    self._send(404, b"not found\n", "text/plain")
                    return
                try:
                    ok, detail = probe()
                except Exception as exc:  # a probe must answer, whatever broke
                    ok, detail = False, {"error": repr(exc)}
                body = json.dumps({"ok": ok, **detail}, sort_keys=True, default=str).encode() + b"\n"
                self._send(200 if ok else 503, body, "application/json")

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("probe %s", format % args)

        self.server = http.server.ThreadingHTTPServer((addr, port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="health", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
