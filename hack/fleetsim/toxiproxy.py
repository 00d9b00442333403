"""Toxiproxy (hack/install-toxiproxy.sh) on loopback: TCP proxies whose faults a test switches on and off.

Faults are Toxiproxy's own "toxics": latency, reset_peer (connections reset), and a proxy disabled (the
upstream unreachable, connections refused).
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

from fleetsim.cloud import LoopbackServer
from fleetsim.local import free_port

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ToxiproxyServer(LoopbackServer):
    name = "toxiproxy"

    def __init__(self, binary: Path, log: Path, port: int | None = None) -> None:
        super().__init__(port, "127.0.0.1", log)
        self.binary = binary

    def command(self) -> list[str]:
        return [str(self.binary), "-host", self.host, "-port", str(self.port)]

    def _api(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        request = urllib.request.Request(
            f"{self.endpoint_url}{path}",
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Content-Type": "application/json"},
        )
        with _NO_PROXY.open(request, timeout=10) as response:
            raw = response.read()
        return json.loads(raw) if raw else None

    def proxy(self, name: str, upstream: str) -> int:
        """A proxy to `upstream` (host:port); the loopback port to connect to instead."""
        port = free_port()
        self._api("POST", "/proxies", {"name": name, "listen": f"127.0.0.1:{port}", "upstream": upstream})
        return port

    def add(self, proxy: str, toxic: str, kind: str, stream: str = "downstream", **attributes: Any) -> None:
        self._api(
            "POST",
            f"/proxies/{proxy}/toxics",
            {"name": toxic, "type": kind, "stream": stream, "attributes": attributes},
        )

    def remove(self, proxy: str, toxic: str) -> None:
        self._api("DELETE", f"/proxies/{proxy}/toxics/{toxic}")

    def enable(self, proxy: str, enabled: bool) -> None:
        self._api("POST", f"/proxies/{proxy}", {"enabled": enabled})
