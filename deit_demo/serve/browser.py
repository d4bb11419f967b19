"""What the visitor's browser downloads: ONNX Runtime Web's files and the model files, each with a strong ETag.

ONNX Runtime Web is pinned by `web/package-lock.json`. It is found, in order, in `web/node_modules` (`npm ci --prefix
web`, which `scripts/test.sh` runs) or in the lab's own cache; where neither has it, `fetch_runtime` downloads the
pinned tarball once from the npm registry, checks it against the lockfile's sha512 and unpacks only the files the page
uses. The page then loads everything from this server: no third-party code runs in it, and no third party sees who
classifies what.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from deit_demo.core.artifacts import sha256_file
from deit_demo.core.errors import DeitDemoError
from deit_demo.core.paths import home

WEB = Path(__file__).resolve().parents[2] / "web"
PACKAGE = "onnxruntime-web"
DEFAULT_REGISTRY = "https://registry.npmjs.org"
# The page's two builds: the WASM one (plain SIMD + threads) and the WebGPU one (which also runs WASM kernels).
RUNTIME_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm",
                 "ort.webgpu.min.mjs", "ort-wasm-simd-threaded.asyncify.mjs", "ort-wasm-simd-threaded.asyncify.wasm")
CONTENT_TYPES = {".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm",
                 ".onnx": "application/octet-stream"}
SETUP_HINT = "npm ci --prefix web"


@dataclass(frozen=True)
class Pin:
    """The pinned package: version and npm's integrity string (``sha512-<base64>``) from the lockfile."""

    version: str
    integrity: str

    def tarball_url(self, registry: str) -> str:
        return f"{registry.rstrip('/')}/{PACKAGE}/-/{PACKAGE}-{self.version}.tgz"


def pinned(lockfile: Path = WEB / "package-lock.json") -> Pin:
    try:
        entry = json.loads(lockfile.read_text())["packages"][f"node_modules/{PACKAGE}"]
        return Pin(entry["version"], entry["integrity"])
    except (OSError, ValueError, KeyError) as err:
        raise DeitDemoError(f"{lockfile} does not pin {PACKAGE} ({type(err).__name__}).") from None


def integrity_matches(data: bytes, integrity: str) -> bool:
    algorithm, _, expected = integrity.partition("-")
    if algorithm not in ("sha512", "sha384", "sha256"):
        return False
    return base64.b64encode(hashlib.new(algorithm, data).digest()).decode() == expected


class Runtime:
    """Where this server's copy of ONNX Runtime Web is, or why there is none; fetched at most once at a time."""

    def __init__(self, local: Path | None = None, cache: Path | None = None, registry: str | None = None,
                 fetch: bool = True, lockfile: Path = WEB / "package-lock.json"):
        self.pin = pinned(lockfile)
        self.local = local or WEB / "node_modules" / PACKAGE / "dist"
        self._cache = cache
        self.registry = registry or os.environ.get("DEIT_DEMO_NPM_REGISTRY") or DEFAULT_REGISTRY
        self.fetch_allowed = fetch
        self.failure = ""  # why the last fetch failed, for the page
        self._lock = threading.Lock()

    @property
    def cache(self) -> Path:
        return self._cache or home() / "web-runtime" / f"{PACKAGE}-{self.pin.version}"

    def folder(self) -> Path | None:
        """The folder holding every runtime file, or None."""
        for folder in (self.local, self.cache):
            if all((folder / name).is_file() for name in RUNTIME_FILES):
                return folder
        return None

    def source(self) -> str:
        folder = self.folder()
        if folder is None:
            return "missing"
        return "npm ci (web/node_modules)" if folder == self.local else "fetched from the npm registry, sha512 checked"

    def file(self, name: str) -> Path:
        if name not in RUNTIME_FILES:
            raise DeitDemoError(f"{name!r} is not one of ONNX Runtime Web's files.")
        folder = self.folder() or self.fetch()
        return folder / name

    def status(self) -> dict:
        folder = self.folder()
        return {"version": self.pin.version, "ready": folder is not None, "source": self.source(),
                "setup": SETUP_HINT, "failure": self.failure}

    def fetch(self, deadline_s: float = 120.0) -> Path:
        """Download the pinned tarball, check its sha512 against the lockfile, unpack the page's files atomically."""
        with self._lock:
            folder = self.folder()
            if folder is not None:
                return folder
            if not self.fetch_allowed:
                raise DeitDemoError(self._missing("fetching it is switched off here"))
            url = self.pin.tarball_url(self.registry)
            try:
                data = _download(url, deadline_s)
            except (OSError, ValueError) as err:
                self.failure = f"could not download {url}: {type(err).__name__}: {str(err)[:120]}"
                raise DeitDemoError(self._missing(self.failure)) from None
            if not integrity_matches(data, self.pin.integrity):
                self.failure = f"{url} does not match the lockfile's sha512: refused"
                raise DeitDemoError(self._missing(self.failure))
            self._unpack(data)
            self.failure = ""
            return self.cache

    def _missing(self, why: str) -> str:
        return (f"ONNX Runtime Web {self.pin.version} is not installed on this server ({why}). Run "
                f"`{SETUP_HINT}` in the project folder, then reload the page.")

    def _unpack(self, data: bytes) -> None:
        self.cache.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(dir=self.cache.parent, prefix=".unpack-"))
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
                for name in RUNTIME_FILES:
                    member = archive.getmember(f"package/dist/{name}")
                    if not member.isfile():
                        raise DeitDemoError(f"{name} in the {PACKAGE} tarball is not a file.")
                    with archive.extractfile(member) as source, open(work / name, "wb") as target:
                        shutil.copyfileobj(source, target)
            if self.cache.exists():
                shutil.rmtree(self.cache)
            os.replace(work, self.cache)
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _download(url: str, deadline_s: float, max_bytes: int = 200 * 2**20) -> bytes:
    deadline = time.monotonic() + deadline_s
    with urllib.request.urlopen(url, timeout=30) as response:
        chunks, total = [], 0
        while chunk := response.read(1 << 20):
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes or time.monotonic() > deadline:
                raise ValueError("too large or too slow")
        return b"".join(chunks)


class ETags:
    """Strong ETags: the sha256 of each file's bytes, computed once per (path, size, mtime)."""

    def __init__(self):
        self._known: dict[tuple, str] = {}
        self._lock = threading.Lock()

    def __call__(self, path: Path) -> str:
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        with self._lock:
            if key not in self._known:
                self._known[key] = sha256_file(path)
            return f'"{self._known[key]}"'

