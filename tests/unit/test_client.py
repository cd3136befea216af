"""The client against a real local HTTP server that answers as TorchServe does (503s, errors, streams)."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from sdxl_client import APIError, SDXLClient, read_token


class Scripted(BaseHTTPRequestHandler):
    """Answers POSTs from a script of (status, content type, body) and records what it received."""

    script: ClassVar[list] = []
    received: ClassVar[list] = []

    def do_POST(self):
        length = int(self.headers["Content-Length"])
        type(self).received.append((dict(self.headers), json.loads(self.rfile.read(length))))
        status, content_type, body = type(self).script.pop(0)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def endpoint():
    Scripted.script, Scripted.received = [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


RESULT = json.dumps({"images": ["aGk="], "seeds": [1], "parameters": {}}).encode()


def test_retries_503_with_backoff_then_succeeds(endpoint):
    busy = (503, "application/json", b'{"code": 503, "type": "ServiceUnavailableException", "message": "busy"}')
    Scripted.script = [busy, busy, (200, "application/json", RESULT)]
    client = SDXLClient(endpoint, token="t0k", backoff=0.01)
    assert client.generate({"prompt": "x"})["seeds"] == [1]
    assert len(Scripted.received) == 3
    headers, body = Scripted.received[-1]
    assert headers["Authorization"] == "Bearer t0k" and body == {"prompt": "x"}


def test_gives_up_after_the_configured_retries(endpoint):
    Scripted.script = [(503, "application/json", b'{"code": 503, "message": "busy"}')] * 3
    with pytest.raises(APIError) as caught:
        SDXLClient(endpoint, token="t", retries=2, backoff=0.01).generate({"prompt": "x"})
    assert caught.value.status == 503 and len(Scripted.received) == 3


def test_4xx_is_not_retried_and_names_the_field(endpoint):
    error = {"error": {"code": 400, "type": "InvalidRequest", "message": "bad width", "field": "width"}}
    Scripted.script = [(400, "application/json", json.dumps(error).encode())]
    with pytest.raises(APIError) as caught:
        SDXLClient(endpoint, token="t").generate({"prompt": "x"})
    assert (caught.value.status, caught.value.field, caught.value.error_type) == (400, "width", "InvalidRequest")
    assert len(Scripted.received) == 1


def test_stream_yields_events_and_raises_on_an_error_event(endpoint):
    lines = [
        {"event": "progress", "step": 1, "total_steps": 2},
        {"event": "error", "code": 504, "type": "TimeBudgetExceeded", "message": "late"},
    ]
    Scripted.script = [(200, "application/x-ndjson", b"".join(json.dumps(e).encode() + b"\n" for e in lines))]
    events = SDXLClient(endpoint, token="t").stream({"prompt": "x"})
    assert next(events)["step"] == 1
    with pytest.raises(APIError) as caught:
        next(events)
    assert caught.value.status == 504 and caught.value.message == "late"
    assert Scripted.received[0][1] == {"prompt": "x", "stream": True}


def test_token_precedence(tmp_path, monkeypatch):
    key_file = tmp_path / "key_file.json"
    key_file.write_text(json.dumps({"inference": {"key": "from-file"}, "management": {"key": "m"}}))
    monkeypatch.delenv("SDXL_TOKEN", raising=False)
    monkeypatch.chdir(tmp_path)
    assert read_token() == "from-file"
    monkeypatch.setenv("SDXL_TOKEN", "from-env")
    assert read_token() == "from-env"
    assert read_token("explicit") == "explicit"
    monkeypatch.delenv("SDXL_TOKEN")
    assert read_token(key_file=tmp_path / "missing.json") is None
