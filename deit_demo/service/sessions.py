"""Visitors' own things: the stop switch of each one's jobs and a folder for each one's result files."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import threading
from pathlib import Path


class Sessions:
    """Per-visitor stop switches and folders. The folders live outside the store and outside Gradio's allowed paths:
    a file is served only once a handler returns it (Gradio copies it to its cache under a content hash), so no
    visitor can ask for another's by path. Each server has its own root."""

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="deit-demo-sessions-"))
        self._cancels: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def _folder(self, session: str | None) -> Path:
        return self.root / hashlib.sha256((session or "local").encode()).hexdigest()[:16]

    def cancel_event(self, session: str | None) -> threading.Event:
        """The stop switch of one visitor's jobs (Stop stops only the jobs of whoever pressed it)."""
        with self._lock:
            return self._cancels.setdefault(session or "local", threading.Event())

    def folder(self, session: str | None) -> Path:
        """A folder for one visitor's result files, made on first use."""
        folder = self._folder(session)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def end(self, session: str | None) -> None:
        """A visitor left: stop their jobs and delete their files."""
        with self._lock:
            event = self._cancels.pop(session or "local", None)
        if event is not None:
            event.set()
        shutil.rmtree(self._folder(session), ignore_errors=True)
