"""Fetching an image URL for a public server, safely.

A URL is refused unless its host is a globally routable address, checked *before* connecting; the address each
connection really uses is checked again (so DNS rebinding cannot slip through); redirects are followed by hand, and a
byte cap and a total deadline hold while streaming.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
import time
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from deit_demo.core.errors import DeitDemoError, quoted

MAX_IMAGE_BYTES = 20 * 1024 * 1024


@dataclass(frozen=True)
class FetchSettings:
    """Limits for fetching an image URL."""

    max_bytes: int = MAX_IMAGE_BYTES
    deadline_s: float = 10.0
    connect_timeout_s: float = 5.0
    max_redirects: int = 3
    allow_loopback: bool = False  # only tests that run their own 127.0.0.1 server switch this on


# ---------------------------------------------------------------------------------------------------- addresses

_NUMERIC_HOST = re.compile(r"^(0x[0-9a-f]+|[0-9]+)(\.(0x[0-9a-f]+|[0-9]+)){0,3}$", re.IGNORECASE)


def parse_ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address `host` spells, including decimal/hex/octal IPv4 forms (``2130706433``, ``0x7f.1``), else None."""
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        pass
    if _NUMERIC_HOST.match(host):
        try:  # inet_aton is what the C resolver would use, so we read these forms exactly as a connect would
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def address_refusal(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, *, allow_loopback: bool = False) -> str | None:
    """Why `ip` must not be fetched from, or None if it is a public unicast address."""
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if mapped is not None:
            reason = address_refusal(mapped, allow_loopback=allow_loopback)
            return f"it embeds {mapped}, and {reason}" if reason else None
    if ip.is_loopback:
        return None if allow_loopback else f"{ip} is a loopback address"
    if ip.is_link_local:
        return f"{ip} is a link-local address (cloud metadata services live there)"
    if ip.is_multicast:
        return f"{ip} is a multicast address"
    if isinstance(ip, ipaddress.IPv4Address) and ip in ipaddress.ip_network("100.64.0.0/10"):
        return f"{ip} is a carrier-grade NAT (shared) address"
    if ip.is_private:
        return f"{ip} is a private-network address"
    if ip.is_unspecified or ip.is_reserved or not ip.is_global:
        return f"{ip} is not a globally routable address"
    return None


def resolve_public(host: str, port: int, *, allow_loopback: bool = False) -> list[str]:
    """Resolve `host`; refuse if ANY of its addresses is not public. Returns the addresses to connect to."""
    literal = parse_ip(host)
    if literal is not None:
        addresses = [literal]
    else:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as err:
            raise DeitDemoError(f"Could not resolve the host {quoted(host)} ({err.strerror}). Check the URL.") from None
        addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    for ip in addresses:
        reason = address_refusal(ip, allow_loopback=allow_loopback)
        if reason:
            raise DeitDemoError(f"Refused to fetch from {quoted(host)}: {reason}. "
                                "Only public web addresses are allowed.")
    return [str(ip) for ip in addresses]


MAX_URL_CHARS = 2048


def check_host_name(host: str) -> str:
    """The ASCII (IDNA) form of `host`, or a project error naming the rule it breaks."""
    try:
        ascii_host = host.encode("idna").decode("ascii") if not host.isascii() else host
    except UnicodeError:
        raise DeitDemoError("The URL's host name is not a valid international domain name (IDNA).") from None
    labels = ascii_host.rstrip(".").split(".")
    if len(ascii_host) > 253:
        raise DeitDemoError(f"The URL's host name is {len(ascii_host)} characters long; at most 253 are allowed.")
    longest = max(labels, key=len)
    if len(longest) > 63:
        raise DeitDemoError(f"A label of the URL's host name is {len(longest)} characters long ({longest[:20]}...); "
                            "at most 63 are allowed.")
    if any(not label for label in labels):
        raise DeitDemoError("The URL's host name has an empty label (two dots in a row).")
    return ascii_host


def check_url(url: str, *, allow_loopback: bool = False) -> tuple[str, int]:
    """Validate scheme, credentials and host of `url` without connecting; returns (host, port)."""
    if not isinstance(url, str) or len(url) > MAX_URL_CHARS:
        raise DeitDemoError(f"The URL is missing or longer than {MAX_URL_CHARS} characters.")
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https"):
        raise DeitDemoError(f"Only http:// and https:// URLs can be fetched, not {parts.scheme or 'no'} scheme.")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise DeitDemoError("URLs with credentials (user:password@host) are refused.")
    host = parts.hostname
    if not host:
        raise DeitDemoError("The URL has no host name.")
    if parse_ip(host) is None:
        host = check_host_name(host)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise DeitDemoError("The URL's port is not a valid number.") from None
    resolve_public(host, port, allow_loopback=allow_loopback)
    return host, port


def _guarded_session(allow_loopback: bool):
    """A requests session whose every connection re-checks and pins the address it connects to."""
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.connection import HTTPConnection, HTTPSConnection
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

    def new_conn(self):
        last_err: OSError | None = None
        for ip in resolve_public(self._dns_host, self.port, allow_loopback=allow_loopback):
            try:
                return socket.create_connection((ip, self.port), timeout=self.timeout)
            except OSError as err:
                last_err = err
        raise last_err or OSError("no address to connect to")

    guarded_http = type("GuardedHTTPConnection", (HTTPConnection,), {"_new_conn": new_conn})
    guarded_https = type("GuardedHTTPSConnection", (HTTPSConnection,), {"_new_conn": new_conn})

    class GuardedAdapter(HTTPAdapter):
        def init_poolmanager(self, *args, **kwargs):
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = {
                "http": type("GuardedHTTPPool", (HTTPConnectionPool,), {"ConnectionCls": guarded_http}),
                "https": type("GuardedHTTPSPool", (HTTPSConnectionPool,), {"ConnectionCls": guarded_https}),
            }

    session = requests.Session()
    session.trust_env = False  # no proxies or netrc from the environment
    session.mount("http://", GuardedAdapter(max_retries=0))
    session.mount("https://", GuardedAdapter(max_retries=0))
    return session


def fetch_url(url: str, settings: FetchSettings = FetchSettings()) -> bytes:
    """Download an image's bytes from a public http(s) URL under the limits in `settings`."""
    import requests

    deadline = time.monotonic() + settings.deadline_s
    session = _guarded_session(settings.allow_loopback)
    try:
        for _hop in range(settings.max_redirects + 1):
            check_url(url, allow_loopback=settings.allow_loopback)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeitDemoError(f"Fetching the image took longer than {settings.deadline_s:g} s.")
            try:
                response = session.get(url, stream=True, allow_redirects=False, headers={"Accept": "image/*"},
                                       timeout=(min(settings.connect_timeout_s, remaining), remaining))
            except requests.RequestException as err:
                raise DeitDemoError(f"Could not fetch the URL: {type(err).__name__}.") from None
            with response:
                if response.is_redirect:
                    url = urljoin(url, response.headers.get("Location", ""))
                    continue
                if response.status_code != 200:
                    raise DeitDemoError(f"The server answered HTTP {response.status_code}, not an image.")
                kind = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
                if kind and not (kind.startswith("image/") or kind == "application/octet-stream"):
                    raise DeitDemoError(f"The URL points to {kind!r}, not an image.")
                declared = response.headers.get("Content-Length", "")
                if declared.isdigit() and int(declared) > settings.max_bytes:
                    raise DeitDemoError(f"The image is larger than the {settings.max_bytes // 2**20} MB limit.")
                return _read_capped(response, deadline, settings)
        raise DeitDemoError(f"Too many redirects (more than {settings.max_redirects}).")
    finally:
        session.close()


def _read_capped(response, deadline: float, settings: FetchSettings) -> bytes:
    # A timer closes the socket at the deadline, so a server trickling one byte at a time cannot hold us.
    timer = threading.Timer(max(0.0, deadline - time.monotonic()), response.close)
    timer.daemon = True
    timer.start()
    body = bytearray()
    try:
        while True:
            try:
                chunk = response.raw.read1(64 * 1024, decode_content=True)
            except Exception:
                if time.monotonic() >= deadline:
                    break
                raise DeitDemoError("The connection broke while downloading the image.") from None
            if not chunk:
                break
            body += chunk
            if len(body) > settings.max_bytes:
                raise DeitDemoError(f"The image is larger than the {settings.max_bytes // 2**20} MB limit.")
            if time.monotonic() >= deadline:
                break
    finally:
        timer.cancel()
    if time.monotonic() >= deadline:
        raise DeitDemoError(f"Fetching the image took longer than {settings.deadline_s:g} s.")
    return bytes(body)


# ---------------------------------------------------------------------------------------------------- decoding
