"""One small bounded LRU cache, safe to share between server threads (models, loaded variants)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class BoundedCache(Generic[T]):
    """Keeps the `max_items` most recently used values; `get(key, make)` builds a missing one under the lock, so two
    threads asking for the same model never build it twice."""

    def __init__(self, max_items: int):
        if max_items < 1:
            raise ValueError("a cache holds at least one item")
        self.max_items = max_items
        self._items: OrderedDict[Hashable, T] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, make: Callable[[], T]) -> T:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            value = make()
            self._items[key] = value
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)
            return value

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)
