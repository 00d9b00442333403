"""SQS throttling in front of a local SQS (ElasticMQ or moto), which never throttles.

A loopback HTTP front that passes every call to the SQS behind it, except a chosen share that it answers
as SQS answers a throttled call in the JSON protocol botocore speaks to it (SQS is `awsQueryCompatible`):
HTTP 400, `{"__type": "com.amazonaws.sqs#RequestThrottled", ...}` and the legacy code in the
`x-amzn-query-error` header. botocore's standard retry mode counts `RequestThrottled` as a throttling error
(botocore/retries/standard.py, ThrottledRetryableChecker); the error is documented in the SQS API reference
("RequestThrottled: the request was denied due to request throttling", SQS.Client.exceptions).

This is a simulation of the cloud's behaviour, not a real part: the share refused is the test's choice,
where real SQS throttles by request rate per queue and account.
"""

from __future__ import annotations

import json
import random
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self

from fleetsim.cloud import require_loopback
from fleetsim.local import free_port

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_PASSED_HEADERS = ("Content-Type", "X-Amz-Target", "X-Amz-Date", "Authorization", "X-Amz-Security-Token")
_THROTTLED = json.dumps(
    {
        "__type": "com.amazonaws.sqs#RequestThrottled",
        "message": "Request is throttled.",
    }
).encode()


class ThrottlingFront:
    def __init__(self, upstream: str, share: float = 0.0, seed: int = 0) -> None:
        require_loopback(upstream)
        self.upstream = upstream.rstrip("/")
        self.share = share  # of calls refused as throttled; 0 passes everything
        self.throttled = 0
        self.passed = 0
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self.port = free_port()
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._server.daemon_threads = True

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _refuse(self) -> bool:
        with self._lock:
            refuse = self._random.random() < self.share
            if refuse:
                self.throttled += 1
            else:
                self.passed += 1
            return refuse

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        front = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if front._refuse():
                    self._answer(
                        400,
                        _THROTTLED,
                        {
                            "Content-Type": "application/x-amz-json-1.0",
                            "x-amzn-query-error": "RequestThrottled;Sender",
                        },
                    )
                    return
                headers = {k: v for k, v in self.headers.items() if k in _PASSED_HEADERS}
                request = urllib.request.Request(
                    front.upstream + self.path, data=body, headers=headers, method="POST"
                )
                try:
                    with _NO_PROXY.open(request, timeout=60) as response:
                        status, answer, kept = response.status, response.read(), dict(response.headers)
                except urllib.error.HTTPError as error:
                    status, answer, kept = error.code, error.read(), dict(error.headers)
                passed = {k: v for k, v in kept.items() if k.lower().startswith(("content-type", "x-amz"))}
                self._answer(status, answer, passed)

            def _answer(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: object) -> None:
                return None

        return Handler

    def start(self) -> Self:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
