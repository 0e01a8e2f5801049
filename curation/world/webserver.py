"""A loopback HTTP server for tests, the demo and benchmarks (img2dataset's tests do the same)."""

import mimetypes
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class Routes(dict):
    """path -> (status, content type, body[, delay or options]); for a 3xx status the body is
    the Location.

    `delay` (seconds) is waited before answering: a route slower than the client's timeout
    tests timeouts. `options` (a dict) may hold `delay`, `headers` (extra headers), `chunked`
    (send the body with Transfer-Encoding: chunked), `send` (send only the body's first bytes,
    then close: a body cut short), `drip` (bytes per second: a server that trickles) and
    `fail_first` (answer that many requests with 429 and `Retry-After: 1` first).
    """


def _options(extra: list) -> dict:
    if not extra:
        return {}
    return extra[0] if isinstance(extra[0], dict) else {"delay": extra[0]}


class Load:
    """Requests being answered now, and the most there ever were at once (`busiest`): how a
    test sees a client's concurrency."""

    def __init__(self):
        self.now = self.busiest = 0
        self.lock = threading.Lock()

    def __enter__(self):
        with self.lock:
            self.now += 1
            self.busiest = max(self.busiest, self.now)

    def __exit__(self, *exc):
        with self.lock:
            self.now -= 1


def _handler(routes: Routes, load: Load):
    asked = {}  # path -> requests so far (fail_first)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # chunked bodies need it

        def do_GET(self):  # noqa: N802 -- http.server's naming
            with load:
                self._get()

        def _get(self):
            status, content_type, body, *extra = routes.get(
                self.path, (404, "text/plain", b"not found")
            )
            options = _options(extra)
            asked[self.path] = asked.get(self.path, 0) + 1
            if asked[self.path] <= options.get("fail_first", 0):
                status, content_type, body = 429, "text/plain", b"slow down"
                options = {"headers": {"Retry-After": "1"}}
            time.sleep(options.get("delay", 0))
            try:
                self._answer(status, content_type, body, options)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout, body too large): its side is what is tested
            self.close_connection = True

        def _answer(self, status: int, content_type: str, body: bytes, options: dict):
            self.send_response(status)
            if 300 <= status < 400:
                self.send_header("Location", body.decode())
            self.send_header("Content-Type", content_type)
            for name, value in options.get("headers", {}).items():
                self.send_header(name, value)
            if options.get("chunked"):
                self.send_header("Transfer-Encoding", "chunked")
            else:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            sent = body[: options.get("send", len(body))]
            if options.get("chunked"):
                sent = f"{len(sent):x}\r\n".encode() + sent + b"\r\n0\r\n\r\n"
            if "drip" in options:
                for i in range(len(sent)):
                    self.wfile.write(sent[i : i + 1])
                    self.wfile.flush()
                    time.sleep(1 / options["drip"])
            else:
                self.wfile.write(sent)

        def log_message(self, *args):  # keep test output clean
            pass

    return Handler


class Server:
    """Serve `routes` on 127.0.0.1 until closed: at `port` when it is free, else at any port."""

    def __init__(self, routes: Routes, port: int = 0):
        self.load = Load()
        handler = _handler(routes, self.load)
        try:
            self.httpd = ThreadingHTTPServer(("127.0.0.1", port), handler)
        except OSError:
            self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def routes_from_dir(folder: str | Path, prefix: str = "") -> Routes:
    """Every file in `folder` at PREFIX/NAME, with its content type guessed from the name."""
    routes = Routes()
    for path in Path(folder).iterdir():
        if path.is_file():
            kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            routes[f"{prefix}/{path.name}"] = (200, kind, path.read_bytes())
    return routes
