"""Metrics pages for a real Prometheus to scrape, served as vLLM serves its own."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4


def serve_text_format(port: int, registry: CollectorRegistry) -> ThreadingHTTPServer:
    """/metrics in the text format 0.0.4, as vLLM serves it: prometheus_client's own server answers
    Prometheus's OpenMetrics Accept header with `vllm_…` names (its escaping of the colon)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = generate_latest(registry)
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE_PLAIN_0_0_4)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
