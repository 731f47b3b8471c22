"""The objects of one video: user ids (palette indices) and their tensor slots.

Slots follow ascending id order, as the official pipeline orders the objects it
decodes, so tensor channel ``i`` of the object part is always ``ids[i]``.
"""

from __future__ import annotations

from collections.abc import Iterable

from hodor.errors import HodorError

MAX_OBJECT_ID = 255
"""Masks are palette images, so an object id is a palette index 1..255 (0 is background)."""


class ObjectMap:
    """Every object added so far in a video, sorted by id.

    Objects are never removed: once an object has been given, the official pipeline
    tracks it to the end of the video, and ``has_objects`` (the "first objects of the
    video" test) must remember it even after the descriptor ring has forgotten its
    reference frame.
    """

    def __init__(self) -> None:
        self._ids: list[int] = []

    @property
    def ids(self) -> tuple[int, ...]:
        return tuple(self._ids)

    @property
    def has_objects(self) -> bool:
        return bool(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, object_id: object) -> bool:
        return object_id in self._ids

    def add(self, object_ids: Iterable[int]) -> list[int]:
        """Add ``object_ids``; return those not seen before, sorted."""
        new = sorted({int(i) for i in object_ids} - set(self._ids))
        for object_id in new:
            if not 1 <= object_id <= MAX_OBJECT_ID:
                raise HodorError(f"object id {object_id} is out of range: ids are palette indices 1..255")
        self._ids = sorted(self._ids + new)
        return new

    def slot(self, object_id: int) -> int:
        """Tensor slot (channel among the objects) of ``object_id``."""
        try:
            return self._ids.index(object_id)
        except ValueError:
            raise HodorError(f"unknown object id {object_id}; known ids: {self._ids}") from None

    def clear(self) -> None:
        self._ids.clear()
