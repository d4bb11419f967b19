"""URL safety. Nothing here may leave loopback: refusals are checked on the address logic (or with resolution
stubbed), and real fetches only go to servers these tests start on 127.0.0.1."""

import http.server
import io
import socket
import threading
import time

import pytest
from PIL import Image

from deit_demo import DeitDemoError
from deit_demo.core.images import load_image
from deit_demo.core.urls import FetchSettings, check_url, fetch_url
from deit_demo.serve.server import ClassifyRequest

REFUSED = [
    ("http://127.0.0.1/x.jpg", "loopback"),
    ("http://localhost/x.jpg", "loopback"),
    ("http://[::1]/x.jpg", "loopback"),
    ("http://10.0.0.5/x.jpg", "private"),
    ("http://192.168.1.1/x.jpg", "private"),
    ("http://172.16.0.1/x.jpg", "private"),
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://100.100.100.200/x.jpg", "carrier-grade NAT"),
    ("http://[::ffff:127.0.0.1]/x.jpg", "embeds 127.0.0.1"),
    ("http://[::ffff:169.254.169.254]/x.jpg", "embeds 169.254.169.254"),
    ("http://[fe80::1]/x.jpg", "link-local"),
    ("http://[fd00::1]/x.jpg", "private"),
    ("http://2130706433/x.jpg", "loopback"),  # decimal 127.0.0.1
    ("http://0x7f000001/x.jpg", "loopback"),  # hex
    ("http://0177.0.0.1/x.jpg", "loopback"),  # octal
    ("http://0x7f.1/x.jpg", "loopback"),
    ("http://0.0.0.0/x.jpg", "not a globally routable|private"),
    ("http://224.0.0.1/x.jpg", "multicast"),
    ("http://240.0.0.1/x.jpg", "not a globally routable|private"),
    ("file:///etc/passwd", "Only http"),
    ("ftp://example.com/x.jpg", "Only http"),
    ("gopher://example.com/", "Only http"),
    ("http://user:pass@example.com/x.jpg", "credentials"),
    ("http://user@example.com/x.jpg", "credentials"),
    ("http:///x.jpg", "no host"),
]


@pytest.mark.parametrize("url,reason", REFUSED, ids=[u for u, _ in REFUSED])
def test_refused_before_any_connection(url, reason, monkeypatch):
    def no_connect(*args, **kwargs):
        raise AssertionError("a refused URL must not open a socket")

    monkeypatch.setattr(socket, "create_connection", no_connect)
    with pytest.raises(DeitDemoError, match=reason):
        check_url(url)
    with pytest.raises(DeitDemoError, match=reason):
        fetch_url(url)


def test_hostname_resolving_to_private_address_is_refused(monkeypatch):
    def fake_getaddrinfo(host, port, *args, **kwargs):
        assert host == "internal.example"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port)),
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.1.2.3", port))]

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    with pytest.raises(DeitDemoError, match="10.1.2.3 is a private"):
        check_url("https://internal.example/cat.jpg")


def test_public_address_passes_the_check_without_connecting(monkeypatch):
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, port, *a, **k: [
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port))])
    assert check_url("https://images.example/cat.jpg") == ("images.example", 443)


# ------------------------------------------------------------------------------------------- loopback test servers


def _png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (0, 128, 255)).save(buf, "PNG")
    return buf.getvalue()


GATE = threading.Event()


class Handler(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        Handler.hits.append(self.path)
        png = _png_bytes()
        if self.path == "/cat.png":
            self._send(200, "image/png", png)
        elif self.path == "/html":
            self._send(200, "text/html", b"<html>not an image</html>")
        elif self.path == "/octet-not-image":
            self._send(200, "application/octet-stream", b"just bytes" * 10)
        elif self.path == "/huge":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            try:
                for _ in range(30):
                    self.wfile.write(b"\x00" * (1024 * 1024))
            except OSError:
                pass
        elif self.path == "/trickle":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            try:
                for byte in png:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(0.05)
            except OSError:
                pass
        elif self.path == "/gate.png":  # answers once the test opens the gate
            GATE.wait(60)
            self._send(200, "image/png", png)
        elif self.path == "/redirect-ok":
            self._redirect("/cat.png")
        elif self.path == "/redirect-metadata":
            self._redirect("http://169.254.169.254/latest/meta-data/")
        elif self.path == "/redirect-loop":
            self._redirect("/redirect-loop")
        else:
            self._send(404, "text/plain", b"nope")

    def _send(self, code, kind, body):
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, location):
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture()
def server():
    Handler.hits = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


LOOPBACK_OK = FetchSettings(allow_loopback=True, deadline_s=3.0)


def test_fetch_from_local_server(server):
    image = load_image(f"{server}/cat.png", fetch=LOOPBACK_OK)
    assert image.size == (32, 32) and image.getpixel((1, 1)) == (0, 128, 255)


def test_canary_loopback_refused_by_default_and_never_reached(server):
    for path in ("/cat.png", "/redirect-ok"):
        with pytest.raises(DeitDemoError, match="loopback"):
            load_image(f"{server}{path}")
    localhost = server.replace("127.0.0.1", "localhost")
    with pytest.raises(DeitDemoError, match="loopback"):
        load_image(f"{localhost}/cat.png")
    assert Handler.hits == []


def test_redirect_followed_and_each_hop_checked(server):
    assert fetch_url(f"{server}/redirect-ok", LOOPBACK_OK) == _png_bytes()
    with pytest.raises(DeitDemoError, match="link-local"):
        fetch_url(f"{server}/redirect-metadata", LOOPBACK_OK)
    with pytest.raises(DeitDemoError, match="Too many redirects"):
        fetch_url(f"{server}/redirect-loop", LOOPBACK_OK)


def test_non_image_content_refused(server):
    with pytest.raises(DeitDemoError, match="text/html"):
        load_image(f"{server}/html", fetch=LOOPBACK_OK)
    with pytest.raises(DeitDemoError, match="not an image in a supported format"):
        load_image(f"{server}/octet-not-image", fetch=LOOPBACK_OK)


def test_body_over_cap_refused_while_streaming(server):
    settings = FetchSettings(allow_loopback=True, max_bytes=2 * 1024 * 1024, deadline_s=5)
    with pytest.raises(DeitDemoError, match="larger than the 2 MB"):
        fetch_url(f"{server}/huge", settings)


def test_trickling_server_hits_the_total_deadline(server):
    settings = FetchSettings(allow_loopback=True, deadline_s=1.0)
    start = time.perf_counter()
    with pytest.raises(DeitDemoError, match="longer than 1 s"):
        fetch_url(f"{server}/trickle", settings)
    assert time.perf_counter() - start < 3.0


def test_http_error_status(server):
    with pytest.raises(DeitDemoError, match="HTTP 404"):
        fetch_url(f"{server}/missing", LOOPBACK_OK)


def test_a_slow_url_never_holds_up_other_visitors_answers(server, store, tmp_path):
    from deit_demo.service.config import AppConfig
    from deit_demo.service.lab import Lab
    from deit_demo.variants.pipeline import example_images

    lab = Lab(AppConfig(model="deit_tiny", offline=True, store_root=str(store.root), auto_prepare=False))
    lab.server.fetch = FetchSettings(allow_loopback=True, deadline_s=30.0)
    cat = str(example_images()[1])
    GATE.clear()
    batch: list = []
    fetching = threading.Thread(target=lambda: batch.extend(lab.classify_batch(
        [ClassifyRequest(source, "deit_tiny", "original")
         for source in (f"{server}/gate.png", f"{server}/html", cat)])))
    fetching.start()
    try:
        for _ in range(300):
            if "/gate.png" in Handler.hits and "/html" in Handler.hits:  # both URLs are being fetched, side by side
                break
            time.sleep(0.05)
        assert "/html" in Handler.hits, "the batch's URLs are fetched side by side, not one after the other"
        _, alone = lab.classify(cat, "deit_tiny", "original")  # another visitor, while that host keeps us waiting
        assert fetching.is_alive(), "the answer waited for another visitor's URL"
    finally:
        GATE.set()
        fetching.join(60)
    (_, from_url), not_image, (_, same_cat) = batch
    assert isinstance(not_image, DeitDemoError) and "image" in str(not_image)
    assert same_cat.top1.index == alone.top1.index
    (tmp_path / "gate.png").write_bytes(_png_bytes())  # what the URL served, classified from a file
    _, from_file = lab.classify(str(tmp_path / "gate.png"), "deit_tiny", "original")
    assert from_url.top1.index == from_file.top1.index
    assert from_url.top1.prob == pytest.approx(from_file.top1.prob, abs=1e-4)
