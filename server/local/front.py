"""The emulator's invocation URL (port 9000), served in front of it so that callers queue."""

from __future__ import annotations

import json
from concurrent.futures import TimeoutError as FutureTimeout
from urllib.parse import urlsplit

from server.local.invoker import Invoker
from server.local.serving import JSON, MAX_CONNECTIONS, MAX_INVOKE_BYTES, SOCKET_TIMEOUT_S, BoundedServer, JsonHandler


class InvokeFront(BoundedServer):
    """The emulator's invocation URL, served in front of it: callers queue on the shared `Invoker`.

    Payloads pass through untouched (a malformed one reaches the runtime, which answers as it
    would on Lambda); only the size limit of a synchronous invocation is checked here. Other
    methods get 405 and other paths 404, as JSON (the emulator itself invokes on any method and
    answers Go's text 404 elsewhere; what Lambda's Invoke API answers to a GET was not checked).
    """

    def __init__(self, address: tuple[str, int], invoker: Invoker, timeout_s: float, *,
                 socket_timeout_s: float = SOCKET_TIMEOUT_S, max_connections: int = MAX_CONNECTIONS):
        super().__init__(address, _InvokeHandler, socket_timeout_s=socket_timeout_s, max_connections=max_connections)
        self.invoker, self.timeout_s = invoker, timeout_s


class _InvokeHandler(JsonHandler):
    server: InvokeFront

    def _is_invocation_path(self) -> bool:
        parts = urlsplit(self.path).path.strip("/").split("/")
        return len(parts) == 4 and parts[:2] == ["2015-03-31", "functions"] and parts[3] == "invocations"

    def other_method(self) -> None:
        if not self._is_invocation_path():
            return self._reply(404, JSON, b'{"message": "POST /2015-03-31/functions/function/invocations"}')
        self.close_connection = True  # any body is left unread
        self._reply(405, {**JSON, "Allow": "POST"}, json.dumps(
            {"message": f"{self.command} is not an invocation: POST the event to this URL"}).encode())

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        if not self._is_invocation_path():
            self.close_connection = True  # any body is left unread
            return self._reply(404, JSON, b'{"message": "POST /2015-03-31/functions/function/invocations"}')
        payload = self._read_body(MAX_INVOKE_BYTES, json.dumps({
            "Type": "User", "message": f"Request must be smaller than {MAX_INVOKE_BYTES} bytes for the "
                                       "InvokeFunction operation"}).encode())
        if payload is None:
            return
        future = self.server.invoker.submit_raw(payload)
        try:
            status, ctype, body = future.result(timeout=self.server.timeout_s)
        except FutureTimeout:
            future.cancel()  # still queued behind a long invocation: never send it
            return self._reply(504, JSON, b'{"message": "the function did not answer in time"}')
        except OSError as exc:
            return self._reply(502, JSON, json.dumps({"message": f"the emulator did not answer: {exc}"}).encode())
        self._reply(status, {"Content-Type": ctype}, body)
