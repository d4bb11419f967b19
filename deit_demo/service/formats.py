"""The browser formats the Your device tab offers: a service of its own beside the `Lab`, which builds it.

It lists a model's formats with their sizes before any download (`catalog`), makes one the first time anyone asks,
through the same door as every heavy job (`prepare`), hands out a made file by its sha256 (`file`), and serves ONNX
Runtime Web's files (`runtime_file`) with strong ETags (`etag`). Nothing here converts on a catalog or file request.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import deit_demo.service.device as device
from deit_demo.core.artifacts import ArtifactStore
from deit_demo.core.errors import DeitDemoError
from deit_demo.core.model_cache import ModelCache
from deit_demo.core.models import LoadedModel, get_spec
from deit_demo.present.report import weights_banner
from deit_demo.serve.browser import CONTENT_TYPES, ETags, Runtime
from deit_demo.serve.classify import labels_for
from deit_demo.variants import VariantContext, get_variant
from deit_demo.variants.pipeline import ConversionResult, run_conversion


class BrowserFormats:
    """The page's formats, made once per file and checked once per file; the runtime's files; their ETags."""

    def __init__(self, models: ModelCache, store: ArtifactStore, runtime: Runtime, job: Callable):
        self.models, self.store, self.runtime = models, store, runtime
        self._job = job  # the lab's door: Lab._job
        self._made_once = device.MadeOnce()
        self._etags = ETags()

    def catalog(self, model_key: str) -> dict:
        """What the page needs for `model_key`: how to preprocess, the labels, and each browser format with its size
        (exact where the file is made, estimated until then: nothing is converted here)."""
        loaded = self.models.get(model_key)
        formats = []
        for key in device.browser_keys():
            found = self._stored(loaded, key)
            made = None
            if found is not None:
                made = ConversionResult(model=loaded.spec.key, variant=key, status="ok", size_bytes=found.size_bytes,
                                        sha256=found.sha256, notes=found.notes)  # checked again when asked for
            formats.append(device.as_dict(device.format_of(loaded.spec, key, made)))
        return {"model": device.page_spec(loaded.spec, labels_for(loaded)), "weights": loaded.weights,
                "banner": weights_banner(loaded, markdown=False), "formats": formats,
                "preference": list(device.WASM_PREFERENCE), "ask_first_bytes": device.ASK_FIRST_BYTES,
                "runtime": self.runtime.status(), "timing": device.timing_spec()}

    def prepare(self, model_key: str, key: str, *, visitor: str | None = None) -> device.BrowserFormat:
        """Make (the first time anyone asks) and check one browser format, as a job through the lab's door; its
        download URL names its sha256."""
        device.check_browser_variant(key)
        loaded = self.models.peek(get_spec(model_key).key)
        if loaded is not None and (checked := self._checked(loaded, key)) is not None:
            return checked  # every new page session asks again, and the stored file still answers for it
        with self._job(f"the {key} file of {model_key}", visitor=visitor, model=model_key) as job:
            with self._made_once.lock(job.loaded.spec.key, key):
                if (checked := self._checked(job.loaded, key)) is not None:
                    return checked
                fmt = device.format_of(job.loaded.spec, key, run_conversion(job.loaded, [key], self.store)[0])
            if fmt.ready:
                self._made_once.remember(job.loaded.spec.key, job.loaded.weights_id, fmt)
            return fmt

    def _checked(self, loaded: LoadedModel, key: str) -> device.BrowserFormat | None:
        """The format checked before, while its stored file keeps the sha256 it was checked with."""
        checked = self._made_once.checked(loaded.spec.key, loaded.weights_id, key)
        found = self._stored(loaded, key) if checked is not None else None
        return checked if found is not None and found.sha256 == checked.sha256 else None

    def file(self, model_key: str, key: str, sha256: str) -> Path:
        """The stored file of a made format, verified; an error if it is not made or no longer has this sha256."""
        device.check_browser_variant(key)
        found = self._stored(self.models.get(model_key), key)
        if found is None or found.sha256 != sha256:
            raise DeitDemoError(f"The {key} file of {model_key} with sha256 {sha256[:12]}… is not on this server "
                                "(it was never made, or it changed): reload the formats and try again.")
        return found.path

    def runtime_status(self) -> dict:
        return self.runtime.status()

    def runtime_file(self, version: str, name: str) -> Path:
        """One of ONNX Runtime Web's files, for the version this server pins (a page of an older server reloads)."""
        if version != self.runtime.pin.version:
            raise DeitDemoError(f"This server has ONNX Runtime Web {self.runtime.pin.version}, not {version}: "
                                "reload the page.")
        return self.runtime.file(name)

    @staticmethod
    def content_type(path: Path) -> str:
        return CONTENT_TYPES.get(path.suffix, "application/octet-stream")

    def etag(self, path: Path) -> str:
        """A strong ETag for a file this server hands out (its content hash, kept while the file is unchanged)."""
        return self._etags(path)

    def _stored(self, loaded: LoadedModel, key: str):
        """The verified stored file of variant `key` for `loaded`, or None: nothing is converted."""
        variant = get_variant(key)
        # The key needs only the spec (a full variant_context decodes the example images): as RunnerCache does
        return self.store.lookup(loaded.spec.key, loaded.weights_id,
                                 variant.store_key(VariantContext(loaded.spec, self.store.root)), variant.version)
