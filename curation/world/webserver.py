"""A loopback HTTP server for tests, the demo and benchmarks (img2dataset's tests do the same)."""

import mimetypes
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class Routes(dict):
    """path -> (status, content type, body[, delay]); for a 3xx status the body is the Location.

    `delay` (seconds, optional) is waited before answering: a route slower than the client's
    timeout tests timeouts.
    """


def _handler(routes: Routes):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 -- http.server's naming
            status, content_type, body, *delay = routes.get(
                self.path, (404, "text/plain", b"not found")
            )
            time.sleep(delay[0] if delay else 0)
            try:
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", body.decode())
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout, body too large): its side is what is tested

        def log_message(self, *args):  # keep test output clean
            pass

    return Handler


class Server:
    """Serve `routes` on 127.0.0.1 until closed: at `port` when it is free, else at any port."""

    def __init__(self, routes: Routes, port: int = 0):
        try:
            self.httpd = ThreadingHTTPServer(("127.0.0.1", port), _handler(routes))
        except OSError:
            self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(routes))
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
