"""The client of a running server (ragtune ask, compare --endpoint) against a real local HTTP server:
a 503 is retried, other errors and a closed port are reported with what to do."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ragtune.serve.client import EndpointError, ServeClient


@pytest.fixture
def server():
    calls = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            calls.append((self.headers.get("Authorization"), body))
            status = 503 if len(calls) < 3 else 200
            payload = {"error": {"code": "overloaded"}} if status == 503 else {"usage": {"prompt_tokens": 3}}
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self.send_response(401)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"no")

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/", calls
    httpd.shutdown()


def test_a_503_is_retried_and_the_request_carries_key_and_greedy_settings(server):
    url, calls = server
    reply = ServeClient(url, "k").chat("Q?", "m:ad", 16, {"mode": "ft"}, retries=2)
    assert reply == {"usage": {"prompt_tokens": 3}} and len(calls) == 3
    key, body = calls[-1]
    assert key == "Bearer k" and body["model"] == "m:ad" and body["temperature"] == 0 and body["max_tokens"] == 16
    assert body["messages"] == [{"role": "user", "content": "Q?"}] and body["ragtune"] == {"mode": "ft"}


def test_errors_name_the_status_or_the_way_to_start_the_server(server):
    url, calls = server
    with pytest.raises(EndpointError, match="answered 503") as exc:
        ServeClient(url).chat("Q?", "m", 8, {})  # no retries: the first 503 is the answer
    assert exc.value.status == 503
    with pytest.raises(EndpointError, match="models answered 401: no"):
        ServeClient(url).models()
    with pytest.raises(EndpointError, match="cannot reach .* start the server with `ragtune serve`") as exc:
        ServeClient("http://127.0.0.1:9").models()
    assert exc.value.status is None
