"""Where converted files live: one folder per (model, weights, variant), atomic writes, sha256-verified manifests.

A conversion is written into a hidden temporary folder and renamed into place only once its manifest is complete,
so a conversion killed midway leaves nothing the store would reuse. Only files named by a manifest and matching its
sha256 are ever handed to a loader; nothing a user uploads is loaded.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from deit_demo.core.errors import DeitDemoError, describe
from deit_demo.core.paths import home

MANIFEST = "manifest.json"
TUNED = "tuned.json"  # per (model, weights): settings tuned to an accuracy budget (measure.tune)
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}
STORAGE_WORDS = {errno.ENOSPC: ("No space left on device", "os error 28", "[Errno 28]"),
                 errno.EROFS: ("Read-only file system", "os error 30", "[Errno 30]"),
                 errno.EDQUOT: ("Disk quota exceeded", "os error 122", "[Errno 122]")}
DEFAULT_CAP_BYTES = 8 * 1024**3
SETTLED_NS = 2 * 10**9  # a file unchanged this long is hashed once per server (ArtifactStore.verify)


def default_root() -> Path:
    """``$DEIT_DEMO_HOME/artifacts``, else ``~/.cache/deit_demo/artifacts``."""
    return home() / "artifacts"


@dataclass
class Artifact:
    """One converted file and how it was made."""

    path: Path
    variant: str
    model: str
    weights_id: str = ""
    size_bytes: int = 0
    sha256: str = ""
    convert_s: float = 0.0
    recipe_version: int = 1  # the variant's conversion recipe; a new recipe never reuses an old file
    torch_version: str = field(default_factory=lambda: torch.__version__)
    notes: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["path"] = self.path.name  # manifests name files relative to their folder
        return data


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ArtifactStore:
    """A folder of verified artifacts with a size cap and least-recently-used eviction."""

    def __init__(self, root: Path | str | None = None, cap_bytes: int = DEFAULT_CAP_BYTES, *, isolate: bool = False):
        self.root = Path(root) if root else default_root()
        self.cap_bytes = cap_bytes
        self.isolate = isolate  # convert in a child process (deit_demo.variants.converter): a shared server's store
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise DeitDemoError(f"The artifact store folder {self.root} cannot be made ({describe(err)}). Start with "
                                "--store pointing somewhere writable.") from None
        self._lock = threading.RLock()
        # Files already hashed, by what a change of content would change (size, times, inode): a page listing the
        # browser formats, or a download, must not hash a 346 MB file each time.
        self._verified: dict[tuple, str] = {}

    def storage_errno(self, err: BaseException) -> int | None:
        """The storage error behind `err` (ENOSPC, EROFS, ...), whichever library raised it, or None.

        Writers wrap the OS's error in their own: safetensors raises "SafetensorError: ... No space left on device
        (os error 28)", torch.save "PytorchStreamWriter failed writing file", ONNX and OpenVINO their own types. So
        the chain of exceptions is read for an OSError or the C library's words, and where a failed write says
        nothing more, the store is asked directly: a small file written and synced in it."""
        seen, link = set(), err
        while link is not None and id(link) not in seen:
            seen.add(id(link))
            if isinstance(link, OSError) and link.errno in STORAGE_ERRNOS:
                return link.errno
            text = str(link)
            for number, words in STORAGE_WORDS.items():
                if any(w in text for w in words):
                    return number
            link = link.__cause__ or link.__context__
        if any(w in str(err).lower() for w in ("write", "writing", "serializ", "i/o", "save")):
            return self._probe()
        return None

    def _probe(self) -> int | None:
        probe = self.root / f".probe-{os.getpid()}-{threading.get_ident()}"
        try:
            with open(probe, "wb") as handle:
                handle.write(b"\0" * 65536)
                handle.flush()
                os.fsync(handle.fileno())
            return None
        except OSError as err:
            return err.errno if err.errno in STORAGE_ERRNOS else None
        finally:
            probe.unlink(missing_ok=True)

    def folder(self, model: str, weights_id: str, variant: str) -> Path:
        return self.root / model / weights_id / variant

    def tuning_file(self, model: str, weights_id: str) -> Path:
        return self.root / model / weights_id / TUNED

    def tuned(self, model: str, weights_id: str) -> dict[str, dict]:
        """What `save_tuned` stored for these weights: variant key -> its tuning record (with `r`); {} if none."""
        try:
            data = json.loads(self.tuning_file(model, weights_id).read_text())
        except (OSError, ValueError):
            return {}
        return {k: v for k, v in data.items() if isinstance(v, dict) and isinstance(v.get("r"), int)}

    def save_tuned(self, model: str, weights_id: str, variant: str, record: dict) -> Path:
        """Store a tuned setting (token merging's r, how it was chosen) beside the artifacts of these weights, written
        atomically; the preparation then uses it wherever no r is asked for."""
        path = self.tuning_file(model, weights_id)
        with self._lock:
            path.parent.mkdir(parents=True, exist_ok=True)
            data = {**self.tuned(model, weights_id), variant: record}
            scratch = path.with_name(f".{TUNED}.{os.getpid()}.{threading.get_ident()}")
            scratch.write_text(json.dumps(data, indent=2, default=str))
            os.replace(scratch, path)
        return path

    @contextmanager
    def converting(self, model: str, weights_id: str, variant: str):
        """Held while one process converts this key: another process on the same store (the app and a CLI run, two
        servers) waits for the file rather than converting it a second time. The lock lives beside the folders, not
        in one (`commit` replaces the folder). A store that cannot hold a lock file (read-only, full) coordinates
        nothing; the conversion then says what is wrong with the store."""
        try:
            locks = self.root / ".locks"
            locks.mkdir(parents=True, exist_ok=True)
            handle = open(locks / f"{model}--{weights_id}--{variant}", "a")
        except OSError:
            yield
            return
        with handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # released by the OS too, if this process dies holding it
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def new_workdir(self) -> Path:
        """A temporary folder inside the store (same file system, so `commit` can rename it). The store's folder is
        made again if it was deleted while the app runs."""
        self.root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.root))

    def lookup(self, model: str, weights_id: str, variant: str, recipe_version: int = 1) -> Artifact | None:
        """The verified artifact for this key, or None (a mismatching one is deleted so it gets rebuilt)."""
        folder = self.folder(model, weights_id, variant)
        manifest = folder / MANIFEST
        if not manifest.is_file():
            return None
        try:
            artifact = self._read_manifest(folder)
            self.verify(artifact)
        except DeitDemoError:
            shutil.rmtree(folder, ignore_errors=True)
            return None
        if artifact.torch_version != torch.__version__ or artifact.recipe_version != recipe_version:
            return None
        try:
            os.utime(manifest)  # mark as recently used
        except OSError:
            pass  # a read-only store still serves what it holds; only its eviction order goes stale
        return artifact

    def commit(self, workdir: Path, artifact: Artifact) -> Artifact:
        """Hash the file, write the manifest, and move `workdir` into place atomically."""
        artifact.size_bytes = artifact.path.stat().st_size
        artifact.sha256 = sha256_file(artifact.path)
        (workdir / MANIFEST).write_text(json.dumps(artifact.to_dict(), indent=2, default=str))
        final = self.folder(artifact.model, artifact.weights_id, artifact.variant)
        with self._lock:
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.exists():
                shutil.rmtree(final)
            os.replace(workdir, final)
            artifact.path = final / artifact.path.name
            self.evict(keep=final)
        return artifact

    def _read_manifest(self, folder: Path) -> Artifact:
        try:
            data = json.loads((folder / MANIFEST).read_text())
            data["path"] = folder / Path(data["path"]).name  # never a path outside its folder
            return Artifact(**data)
        except (OSError, ValueError, TypeError, KeyError) as err:
            raise DeitDemoError(f"Unreadable manifest in {folder}: {err}") from None

    def verify(self, artifact: Artifact) -> None:
        """Raise unless the file exists inside the store and matches its manifest's size and sha256."""
        path = artifact.path.resolve()
        if self.root.resolve() not in path.parents:
            raise DeitDemoError(f"{artifact.path} is outside the artifact store and will not be loaded.")
        if not path.is_file() or path.stat().st_size != artifact.size_bytes:
            raise DeitDemoError(f"Artifact {path.name} is missing or its size changed.")
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)
        if self._verified.get(key) == artifact.sha256:
            return
        if sha256_file(path) != artifact.sha256:
            raise DeitDemoError(f"Artifact {path.name} does not match its sha256; it was modified after conversion.")
        # Remembered only once the file has been still for a while: file times tick coarsely, and a write within the
        # same tick as the hash would leave them unchanged (git's "racy clean" case).
        if time.time_ns() - max(stat.st_mtime_ns, stat.st_ctime_ns) > SETTLED_NS:
            with self._lock:
                if len(self._verified) >= 1024:
                    self._verified.clear()
                self._verified[key] = artifact.sha256

    def artifacts(self) -> list[tuple[Path, int, float]]:
        """(folder, size_bytes, last_used) for every committed artifact folder."""
        found = []
        for manifest in self.root.glob(f"*/*/*/{MANIFEST}"):
            folder = manifest.parent
            size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
            found.append((folder, size, manifest.stat().st_mtime))
        return found

    def evict(self, keep: Path | None = None) -> list[Path]:
        """Delete least-recently-used folders until the store fits its cap; also clears stale temp folders."""
        removed = []
        with self._lock:
            for stale in self.root.glob(".tmp-*"):
                if time.time() - stale.stat().st_mtime > 3600:
                    shutil.rmtree(stale, ignore_errors=True)
            entries = sorted(self.artifacts(), key=lambda entry: entry[2])
            total = sum(size for _, size, _ in entries)
            for folder, size, _ in entries:
                if total <= self.cap_bytes:
                    break
                if keep is not None and folder == keep:
                    continue
                shutil.rmtree(folder, ignore_errors=True)
                total -= size
                removed.append(folder)
        return removed
