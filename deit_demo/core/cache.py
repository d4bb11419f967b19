"""One small bounded LRU cache, safe to share between server threads (models, loaded variants)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class BoundedCache(Generic[T]):
    """Keeps the `max_items` most recently used values. `get(key, make)` builds a missing value once however many
    threads ask for it, and holds no lock that others need meanwhile: a cached value is handed out at once while
    another key is built (a compile of minutes must not stall every visitor)."""

    def __init__(self, max_items: int):
        if max_items < 1:
            raise ValueError("a cache holds at least one item")
        self.max_items = max_items
        self._items: OrderedDict[Hashable, T] = OrderedDict()
        self._lock = threading.Lock()
        self._building: dict[Hashable, threading.Lock] = {}

    def get(self, key: Hashable, make: Callable[[], T]) -> T:
        while True:
            with self._lock:
                if key in self._items:
                    self._items.move_to_end(key)
                    return self._items[key]
                build = self._building.setdefault(key, threading.Lock())
            with build:
                with self._lock:
                    if self._building.get(key) is not build:
                        continue  # built (or failed) while this thread waited: look again
                try:
                    value = make()
                except BaseException:
                    with self._lock:
                        del self._building[key]
                    raise
                with self._lock:
                    del self._building[key]
                    self._items[key] = value
                    while len(self._items) > self.max_items:
                        self._items.popitem(last=False)
                return value

    def peek(self, match: Callable[[Hashable], bool]) -> T | None:
        """The most recently used value whose key matches, or None: builds nothing and leaves the order as it is."""
        with self._lock:
            return next((value for key, value in reversed(self._items.items()) if match(key)), None)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)
