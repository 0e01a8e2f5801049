"""Guards installed into urllib inside the download processes (img2dataset fetches with
`urllib.request.urlopen`, which uses the global opener).

- Every connection, the first and each redirect's, goes to an address checked after
  resolution: no loopback, private, link-local, reserved or cloud-metadata targets unless the
  run allows the private network; the socket connects to the checked address itself, so a DNS
  answer that changes between check and connect (rebinding) cannot slip through.
- Only http and https are followed, redirects included.
- A body larger than `max_bytes` is refused while it is read, whatever Content-Length says;
  a body shorter than its Content-Length is a failure ("incomplete body"), not an image.
- gzip and deflate bodies (Content-Encoding) are decoded, `max_bytes` bounding the decoded
  size too (a gzip bomb stays cheap); other encodings are refused by name.
- The whole request, connect, headers, body and redirects, ends within its timeout: a watchdog
  shuts the socket at the deadline, so a server that drips bytes cannot stall the download.
- 429 and 503 answers wait before the downloader retries: `Retry-After` (capped by the
  deadline), else a short back-off.
- Addresses are judged by the IPv4 address an IPv6 one embeds (mapped, NAT64, 6to4, Teredo,
  IPv4-compatible); through an `http_proxy`, the destination and every redirect target are
  still checked, not only the proxy.
- A response whose Content-Type is neither an image nor a generic binary type is refused.

img2dataset runs its downloads in `spawn`ed worker processes, which import `sitecustomize` at
start-up; `curation/pipeline/_fetchguard/sitecustomize.py` calls `install()` there from environment
variables set by `curation.pipeline.download`.
"""

import email.utils
import http.client
import ipaddress
import os
import socket
import threading
import time
import urllib.error
import urllib.request
import zlib
from urllib.parse import urlsplit

ENV_ALLOW_PRIVATE = "CURATE_ALLOW_PRIVATE_NETWORK"
ENV_MAX_BYTES = "CURATE_MAX_BYTES"
GENERIC_TYPES = ("application/octet-stream", "binary/octet-stream", "")


class Refused(OSError):
    """A fetch the guards refused; its message becomes the row's download error."""


NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052: the last 32 bits are IPv4
IETF_PROTOCOL = ipaddress.ip_network("192.0.0.0/24")  # RFC 6890: not forwarded, not public


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 transition address carries (mapped, NAT64, 6to4, Teredo's
    client, IPv4-compatible ::a.b.c.d), or None."""
    if ip.ipv4_mapped:
        return ip.ipv4_mapped
    if ip in NAT64 or (int(ip) >> 32 == 0 and int(ip) > 0xFFFF):  # NAT64 or ::a.b.c.d
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour:
        return ip.sixtofour
    return ip.teredo[1] if ip.teredo else None


def is_public(address: str) -> bool:
    """Whether `address` (IPv4 or IPv6, zone allowed) is a public unicast address; an IPv6
    address that embeds an IPv4 one is judged by that one too."""
    ip = ipaddress.ip_address(address.split("%")[0])
    if ip.version == 6 and (inner := embedded_ipv4(ip)) is not None and not is_public(str(inner)):
        return False
    return ip.is_global and not ip.is_multicast and ip not in IETF_PROTOCOL


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


# The request under way on this thread (img2dataset fetches on a thread pool): its deadline,
# set when the top-level open starts and kept through its redirects.
_request = threading.local()
MAX_BACKOFF = 1.0  # seconds waited after a 429/503 without Retry-After


def _remaining() -> float | None:
    deadline = getattr(_request, "deadline", None)
    return None if deadline is None else deadline - time.monotonic()


def _past_deadline() -> bool:
    left = _remaining()
    return left is not None and left <= 0


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)  # a blocked recv returns: the request ends now
    except OSError:
        pass  # already closed: the request ended before its deadline


def _guarded_create_connection(allow_private: bool):
    def create(address, timeout=socket._GLOBAL_DEFAULT_TIMEOUT, source_address=None, **kwargs):
        host, port = address
        proxied = (host, port) in _proxy_addresses()  # the user's proxy: the request's own
        target = checked_address(host, port, allow_private or proxied)  # host was checked
        left = _remaining()
        if left is not None and left <= 0:
            raise Refused(f"no complete response within the {_request.timeout} s deadline")
        sock = socket.create_connection(target[:2], timeout, source_address, **kwargs)
        if left is not None:
            watchdog = threading.Timer(left, _shut, (sock,))
            watchdog.daemon = True
            watchdog.start()
        return sock

    return create


def _proxy_addresses() -> set[tuple[str, int]]:
    """(host, port) of the proxies urllib takes from the environment (`http_proxy`...)."""
    found = set()
    for url in urllib.request.getproxies().values():
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.hostname:
            found.add((parts.hostname, parts.port or 80))
    return found


class _Destinations(urllib.request.BaseHandler):
    """Check each request's own host (the first and every redirect target) before it is sent:
    through a proxy, the connection check sees only the proxy."""

    handler_order = 50  # before the proxy handler rewrites the request's host

    def __init__(self, allow_private: bool):
        self.allow_private = allow_private

    def http_request(self, req):
        parts = urlsplit(req.full_url)
        if not self.allow_private:
            checked_address(parts.hostname, parts.port or 80, False)
        return req

    https_request = http_request


class _Redirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urlsplit(newurl).scheme not in ("http", "https"):
            raise Refused(f"redirect to a non-http(s) URL refused: {newurl[:200]}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class _RateLimits(urllib.request.BaseHandler):
    """On 429 / 503, wait as the server asks (Retry-After, capped by the request's deadline)
    before the error reaches the downloader, which then retries."""

    handler_order = 900  # before the error processor turns the answer into an HTTPError

    def http_response(self, request, response):
        if response.status in (429, 503):
            time.sleep(max(0.0, min(_retry_after(response.headers), _remaining() or 0.0)))
        return response

    https_response = http_response


def _retry_after(headers) -> float:
    """Seconds a Retry-After header asks for (delta-seconds or an HTTP date), else the back-off."""
    value = (headers.get("Retry-After") or "").strip()
    if value.isdigit():
        return float(value)
    try:
        return email.utils.parsedate_to_datetime(value).timestamp() - time.time()
    except (TypeError, ValueError):
        return MAX_BACKOFF


class _Responses(urllib.request.BaseHandler):
    """Content-Type check; a body read that stops past `max_bytes`, fails when shorter than
    its Content-Length or past the deadline, and decodes gzip / deflate."""

    handler_order = 1000  # after the redirect handler

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes

    def http_response(self, request, response):
        if isinstance(response.read, _Replay):  # a redirect's target, checked when it came
            return response
        kind = response.headers.get_content_type() if response.headers.get("Content-Type") else ""
        if not (kind.startswith("image/") or kind in GENERIC_TYPES):
            raise Refused(f"content type {kind} is not an image")
        encoding = (response.headers.get("Content-Encoding") or "identity").strip().lower()
        if encoding not in ("identity", "gzip", "x-gzip", "deflate"):
            raise Refused(f"content encoding {encoding} is not supported")
        body = _read_body(response, self.max_bytes)
        if encoding != "identity":
            body = _decoded(body, self.max_bytes)
        response.read = _Replay(body)
        return response

    https_response = http_response


def _read_body(response: http.client.HTTPResponse, limit: int) -> bytes:
    """The whole body, read in pieces so that the deadline is checked between them.

    Raises:
        Refused: more than `limit` bytes, fewer than Content-Length, or past the deadline.
    """
    declared = response.headers.get("Content-Length")
    parts, size = [], 0
    while piece := _read_piece(response):
        parts.append(piece)
        size += len(piece)
        if size > limit:
            raise Refused(f"response larger than {limit} bytes")
    if _past_deadline():
        raise Refused(f"no complete response within the {_request.timeout} s deadline")
    if declared and declared.isdigit() and size < int(declared):
        raise Refused(f"incomplete body: {size} of {declared} bytes")
    return b"".join(parts)


def _read_piece(response: http.client.HTTPResponse) -> bytes:
    try:
        return response.read1(1 << 16)  # at most one receive's worth: no waiting for 64 KiB
    except (http.client.IncompleteRead, OSError, ValueError):
        if _past_deadline():  # the watchdog shut the socket
            return b""
        raise


def _decoded(body: bytes, limit: int) -> bytes:
    """gzip / zlib / raw deflate `body` decoded, at most `limit` bytes (a bomb is refused)."""
    for wbits in (47, -15):  # 47: gzip or zlib header, detected; -15: raw deflate
        inflater = zlib.decompressobj(wbits)
        try:
            data = inflater.decompress(body, limit + 1)
        except zlib.error:
            continue
        if len(data) > limit or inflater.unconsumed_tail:
            raise Refused(f"response larger than {limit} bytes once decoded")
        return data
    raise Refused("content encoding does not decode")


class _Replay:
    """`read` over a body already read: what the downloader calls next."""

    def __init__(self, body: bytes):
        self.body, self.position = body, 0

    def __call__(self, amt: int | None = None) -> bytes:
        end = len(self.body) if amt is None or amt < 0 else self.position + amt
        data = self.body[self.position : end]
        self.position += len(data)
        return data


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

    handlers = [_Destinations(allow_private), _Redirects, _RateLimits, _Responses(max_bytes)]
    director = urllib.request.build_opener(HTTP, HTTPS, *handlers)
    director.__class__ = _DeadlineOpener  # build_opener's defaults, plus the deadline
    return director


class _DeadlineOpener(urllib.request.OpenerDirector):
    """Starts each top-level request's deadline (`timeout` seconds, redirects included)."""

    def open(self, fullurl, data=None, timeout=socket._GLOBAL_DEFAULT_TIMEOUT):
        if getattr(_request, "deadline", None) is not None or not isinstance(timeout, int | float):
            return super().open(fullurl, data, timeout)  # a redirect: the same deadline
        _request.deadline, _request.timeout = time.monotonic() + timeout, timeout
        try:
            return super().open(fullurl, data, timeout)
        except OSError as err:  # an HTTP error status is an answer, whenever it came
            if _past_deadline() and not isinstance(err, Refused | urllib.error.HTTPError):
                raise Refused(f"no complete response within the {timeout} s deadline") from None
            raise
        finally:
            _request.deadline = None


def install_from_env() -> None:
    """Install the guards as urllib's global opener when the download stage asked for them."""
    if ENV_MAX_BYTES in os.environ:
        allow = os.environ.get(ENV_ALLOW_PRIVATE) == "1"
        urllib.request.install_opener(opener(allow, int(os.environ[ENV_MAX_BYTES])))
