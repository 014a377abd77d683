"""uvicorn's HTTP protocol, with its own parse errors answered in OpenAI's error shape.

A request that is not valid HTTP (a control character in a header value, say)
never reaches the app: uvicorn answers it with a plain-text 400. This protocol
answers the same 400 as a JSON error body, like every other error of the API.
"""

from __future__ import annotations

import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


def error_400(message: str) -> bytes:
    body = json.dumps({"error": {
        "message": f"the request is not valid HTTP: {message}", "type": "invalid_request_error",
        "param": None, "code": "invalid_http"}}).encode()
    return (b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n"
            + body)


class JsonErrorsHttpToolsProtocol(HttpToolsProtocol):
    def send_400_response(self, msg: str) -> None:
        transport: Any = self.transport
        transport.write(error_400(msg))
        transport.close()
