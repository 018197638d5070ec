"""What every blissdata stream and view has, over a databus channel.

A stream reads a ``databus.ChannelNode`` (``node``) and, on the writer's side, publishes
through a ``databus.ChannelWriter`` (``writer``). Indexing follows blissdata 2.x: a
negative index means something only once the stream is sealed, a slice returns what exists
(as numpy does past an array's end) and raises only when part of it was trimmed away; the
errors are those of ``databus.blissdata.exceptions``, which keep databus's detail.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from ..._cursor import ChannelPoints
from ..._cursor import Cursor as ChannelCursor
from ..._encoding import ChannelKind, Descriptor
from ..._errors import DataExpired, EndOfData, NotYetPublished
from ..exceptions import (
    EndOfStream,
    IndexNoMoreThereError,
    IndexNotYetThereError,
    NoWritePermission,
    blissdata_error,
)

if TYPE_CHECKING:
    from ..._publish import ChannelWriter
    from ..._subscribe import ChannelNode
    from .cursor import Cursor

_READ_ERRORS = (DataExpired, NotYetPublished, EndOfData)


@dataclasses.dataclass(slots=True)
class StreamDefinition:
    """What ``Scan.create_stream`` declares: made by a stream class's ``make_definition``."""

    name: str
    info: dict[str, Any]
    dtype: Any
    shape: tuple[int, ...]
    kind: ChannelKind


class BaseView:
    """The points a cursor read: ``index`` of the first, ``len()``, ``last_index``,
    ``get_data(start, stop)`` (positions within the view) and iteration."""

    index: int

    def __len__(self) -> int:
        raise NotImplementedError

    @property
    def last_index(self) -> int:
        return self.index + len(self) - 1

    def get_data(self, start: int | None = None, stop: int | None = None) -> Any:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Any]:
        yield from self.get_data()


class BaseStream:
    """A stream of a scan: ``name``, ``key``, ``info``, ``kind``, ``plugin``, ``dtype``,
    ``shape``, ``len()``, indexing, ``cursor()``, iteration (blocking to the seal),
    ``is_sealed()``, ``wait_seal()``, and on the writer's side ``send``/``join``/``seal``.
    ``node`` is the databus ``ChannelNode`` below."""

    plugin: str | None = None
    kind = "array"

    def __init__(self, node: ChannelNode | None, writer: ChannelWriter | None) -> None:
        self._node = node
        self._writer = writer

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} of {self.node.scan.key}>"

    @property
    def node(self) -> ChannelNode:
        """The channel's reader node (a writer's is read from Redis on first use)."""
        if self._node is None:
            writer = self._check_writer("read it")
            self._node = writer.scan.bus.scan(writer.scan.key).channels[writer.name]
        return self._node

    @property
    def name(self) -> str:
        return self._writer.name if self._writer is not None else self.node.name

    @property
    def key(self) -> str:
        return self._writer.key if self._writer is not None else self.node.key

    @property
    def _desc(self) -> Descriptor:
        return self._writer.desc if self._writer is not None else self.node.desc

    @property
    def info(self) -> dict[str, Any]:
        """What the writer gave ``make_definition`` (dtype name, shape, its own info)."""
        desc = self._desc
        info = dict(desc.attrs)
        if desc.dtype is not None:
            info.setdefault("dtype", desc.dtype.name)
        info.setdefault("shape", list(desc.shape))
        if desc.unit is not None:
            info.setdefault("unit", desc.unit)
        return info

    @property
    def dtype(self) -> np.dtype:
        return self._desc.dtype if self._desc.dtype is not None else np.dtype(object)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._desc.shape)

    @property
    def encoding(self) -> dict[str, Any]:
        """How points are encoded, in blissdata's terms."""
        if self._desc.kind == "json":
            return {"type": "json"}
        return {"type": "numeric", "dtype_str": self.dtype.str, "shape": self.shape}

    @property
    def event_stream(self) -> BaseStream:
        """blissdata's low-level stream: this stream itself (``encoding``, ``key``...)."""
        return self

    # ---------------------------------------------------------------- reading

    def __len__(self) -> int:
        return len(self.node)

    def _sealed_length(self, what: str) -> int:
        if not self.is_sealed():
            raise IndexNotYetThereError(
                f"stream {self.name!r}: {what} means nothing before the stream is sealed"
            )
        return len(self.node)

    def __getitem__(self, key: int | slice) -> Any:
        if isinstance(key, slice):
            return self._get_slice(key)
        if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
            return self._get_index(int(key))
        raise TypeError(f"stream indices must be integers or slices, not {type(key).__name__}")

    def _get_index(self, index: int) -> Any:
        if index < 0:
            length = self._sealed_length(f"index {index}")
            if index + length < 0:
                raise IndexError(f"index {index} out of range: stream {self.name!r} has {length}")
            index += length
        try:
            return self.node.get(index)
        except _READ_ERRORS as exc:
            raise blissdata_error(exc) from exc

    def _get_slice(self, key: slice) -> Any:
        start, stop = key.start or 0, key.stop
        if start < 0 or (stop is not None and stop < 0):
            length = self._sealed_length(f"slice {key}")
            start = max(start + length, 0) if start < 0 else start
            stop = max(stop + length, 0) if stop is not None and stop < 0 else stop
        if stop is not None and stop <= start:
            return self.node.get_as_array(1, 0)
        try:
            data = self.node.get_as_array(start, -1 if stop is None else stop - 1)
        except _READ_ERRORS as exc:
            raise blissdata_error(exc) from exc
        return data[:: key.step] if key.step not in (None, 1) else data

    def is_sealed(self) -> bool:
        """Whether the writer sealed the stream (its length is final)."""
        with ChannelCursor(self.node) as cursor:
            return any(p.ended for p in cursor.read(0, last_only=True).values())

    def wait_seal(self, timeout: float = 0.0) -> bool:
        """Block until the stream is sealed (``timeout`` seconds, 0: for ever); whether
        it is. Reads only each newest point meanwhile."""
        deadline = None if timeout == 0 else time.monotonic() + timeout
        with ChannelCursor(self.node) as cursor:
            while not cursor.done:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                cursor.read(remaining, last_only=True)
        return True

    def cursor(self) -> Cursor:
        """A cursor from the stream's first point."""
        from .cursor import Cursor

        return Cursor(self)

    def _view(self, points: ChannelPoints) -> BaseView:
        """The view of what a cursor read of this stream."""
        missing = sum(gap.block_size for gap in points.missing)
        return View(points.start, points.data, missing, points.missing)

    def __iter__(self) -> Iterator[Any]:
        """Every point, from the first, blocking until the stream is sealed."""
        cursor = self.cursor()
        while True:
            try:
                view = cursor.read()
            except EndOfStream:
                return
            if view is not None:
                yield from view

    # ---------------------------------------------------------------- writing

    def _check_writer(self, action: str) -> ChannelWriter:
        if self._writer is None:
            raise NoWritePermission(f"Stream {self.name} is read-only: cannot {action}")
        return self._writer

    def send(self, data: Any) -> None:
        """Publish one point or a batch of points (shape ``(n, *shape)``)."""
        self._check_writer("send").send(data)

    def join(self) -> None:
        """Wait until everything sent is in Redis."""
        self._check_writer("join").flush()

    def seal(self) -> int:
        """Flush and seal the stream; its final length."""
        return self._check_writer("seal").seal()


class View(BaseView):
    """A cursor's read of an array or json stream: ``nb_expired`` points it could not
    read (trimmed, or lost: ``lost`` keeps databus's exceptions saying why) followed by
    the data."""

    def __init__(self, index: int, data: Any, nb_expired: int = 0, lost: tuple = ()) -> None:
        self.index = index
        self._data = data
        self.nb_expired = nb_expired
        self.lost = lost

    def __len__(self) -> int:
        return self.nb_expired + len(self._data)

    def get_data(self, start: int | None = None, stop: int | None = None) -> Any:
        """Points ``start`` to ``stop`` of the view (positions within it, as a slice);
        ``IndexNoMoreThereError`` if they include points the view could not read."""
        wanted = range(len(self))[start:stop]
        first = wanted.start - self.nb_expired
        if first < 0 and len(wanted):
            raise IndexNoMoreThereError(
                f"points {self.index + wanted.start}..{self.index + self.nb_expired - 1} "
                f"of this view are no longer available"
                + (f" ({'; '.join(map(str, self.lost))})" if self.lost else "")
            )
        return self._data[max(first, 0) : wanted.stop - self.nb_expired]
