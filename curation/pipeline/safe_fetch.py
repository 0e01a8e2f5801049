"""Guards installed into urllib inside the download processes (img2dataset fetches with
`urllib.request.urlopen`, which uses the global opener).

- Every connection, the first and each redirect's, goes to an address checked after
  resolution: no loopback, private, link-local, reserved or cloud-metadata targets unless the
  run allows the private network; the socket connects to the checked address itself, so a DNS
  answer that changes between check and connect (rebinding) cannot slip through.
- Only http and https are followed, redirects included.
- A body larger than `max_bytes` is refused while it is read, whatever Content-Length says.
- A response whose Content-Type is neither an image nor a generic binary type is refused.

img2dataset runs its downloads in `spawn`ed worker processes, which import `sitecustomize` at
start-up; `curation/pipeline/_fetchguard/sitecustomize.py` calls `install()` there from environment
variables set by `curation.pipeline.download`.
"""

import http.client
import ipaddress
import os
import socket
import urllib.request
from urllib.parse import urlsplit

ENV_ALLOW_PRIVATE = "CURATE_ALLOW_PRIVATE_NETWORK"
ENV_MAX_BYTES = "CURATE_MAX_BYTES"
GENERIC_TYPES = ("application/octet-stream", "binary/octet-stream", "")


class Refused(OSError):
    """A fetch the guards refused; its message becomes the row's download error."""


def is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    return ip.is_global and not ip.is_multicast


# Start of a refusal's message: it reaches the parent as img2dataset's error text, and
# download.py turns it back into the `blocked_address` reason.
BLOCKED = "blocked address"


def blocked_message(host: str, address: str) -> str:
    return f"{BLOCKED}: {host} resolves to non-public {address}"


def checked_address(host: str, port: int, allow_private: bool) -> tuple:
    """The first resolved address of `host`, refused when any resolved address is not public."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if not allow_private:
        blocked = [info[4][0] for info in infos if not is_public(info[4][0])]
        if blocked:
            raise Refused(blocked_message(host, blocked[0]))
    return infos[0][4]


def _guarded_create_connection(allow_private: bool):
    def create(address, timeout=socket._GLOBAL_DEFAULT_TIMEOUT, source_address=None, **kwargs):
        host, port = address
        target = checked_address(host, port, allow_private)
        return socket.create_connection(target[:2], timeout, source_address, **kwargs)

    return create


class _Redirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urlsplit(newurl).scheme not in ("http", "https"):
            raise Refused(f"redirect to a non-http(s) URL refused: {newurl[:200]}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class _Responses(urllib.request.BaseHandler):
    """Content-Type check, and a body read that stops past `max_bytes`."""

    handler_order = 1000  # after the redirect handler

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes

    def http_response(self, request, response):
        kind = response.headers.get_content_type() if response.headers.get("Content-Type") else ""
        if not (kind.startswith("image/") or kind in GENERIC_TYPES):
            raise Refused(f"content type {kind} is not an image")
        read, limit = response.read, self.max_bytes

        def bounded_read(amt=None):
            data = read(limit + 1 if amt is None or amt > limit else amt)
            if len(data) > limit:
                raise Refused(f"response larger than {limit} bytes")
            return data

        response.read = bounded_read
        return response

    https_response = http_response


def _guarded(connection_class: type, allow_private: bool) -> type:
    """`connection_class` whose sockets connect only to checked addresses."""
    create = _guarded_create_connection(allow_private)

    class Guarded(connection_class):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._create_connection = create  # http.client sets it per instance

    return Guarded


def opener(allow_private: bool, max_bytes: int) -> urllib.request.OpenerDirector:
    """An opener whose every connection and redirect passes the guards."""
    http_conn = _guarded(http.client.HTTPConnection, allow_private)
    https_conn = _guarded(http.client.HTTPSConnection, allow_private)

    class HTTP(urllib.request.HTTPHandler):
        def http_open(self, req):
            return self.do_open(http_conn, req)

    class HTTPS(urllib.request.HTTPSHandler):
        def https_open(self, req):
            return self.do_open(https_conn, req, context=self._context)

    return urllib.request.build_opener(HTTP, HTTPS, _Redirects, _Responses(max_bytes))


def install_from_env() -> None:
    """Install the guards as urllib's global opener when the download stage asked for them."""
    if ENV_MAX_BYTES in os.environ:
        allow = os.environ.get(ENV_ALLOW_PRIVATE) == "1"
        urllib.request.install_opener(opener(allow, int(os.environ[ENV_MAX_BYTES])))
