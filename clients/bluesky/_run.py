"""One bluesky run published as one bus scan: its streams' channels declared as their
descriptors come (also mid-run: the SDK allows it until the scan ends), events and event
pages sent as blocks (a page of n rows is one ``send()`` per channel), file references
sent as ``FileRef``s, and the end. Runs in the publisher's worker thread.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from databus import ChannelWriter, FileRef, Scan, Session

from ._channels import (
    ChannelSpec,
    channel_name,
    channel_spec,
    end_of,
    event_field_specs,
    motor_keys,
    plain,
    scan_info,
)
from ._files import Unmapped


class Stream:
    """One descriptor's channels: per data key its writer (declared at the key's first
    value when its dtype is only known then), the event time and timestamps."""

    def __init__(self, run: RunScan, descriptor: Mapping[str, Any]) -> None:
        self.run = run
        self.name = str(descriptor.get("name", "primary"))
        data_keys = descriptor.get("data_keys") or {}
        object_keys = descriptor.get("object_keys") or {}
        motors = motor_keys(run.start, object_keys) if self.name == "primary" else set()
        self.specs: dict[str, ChannelSpec] = {}
        self.writers: dict[str, ChannelWriter] = {}
        self.refused: set[str] = set()  # keys without a channel (counted once)
        for key, data_key in data_keys.items():
            try:
                spec = channel_spec(self.name, key, data_key, channel_name(self.name, key, motors))
            except Unmapped as exc:
                run.unmapped(str(exc))
                self.refused.add(key)
                continue
            self.specs[key] = spec
            if spec.dtype is not None or spec.kind == "json":
                self._declare(key, spec)
        self.stamped = [k for k, dk in data_keys.items() if not dk.get("external")]
        time_spec, stamps_spec = event_field_specs(self.name, self.stamped)
        self.time = run.declare(time_spec)
        self.timestamps = None if stamps_spec is None else run.declare(stamps_spec)

    def _declare(self, key: str, spec: ChannelSpec) -> ChannelWriter | None:
        writer = self.run.declare(spec)
        if writer is None:
            self.refused.add(key)
        else:
            self.writers[key] = writer
        return writer

    def writer(self, key: str, first: Any) -> ChannelWriter | None:
        """The writer of ``key``, declared from ``first`` if it waited for a value; None
        for a key without a channel (a key the descriptor did not declare is counted)."""
        writer = self.writers.get(key)
        if writer is not None or key in self.refused:
            return writer
        spec = self.specs.get(key)
        if spec is None:
            self.refused.add(key)
            self.run.unmapped(f"stream {self.name!r}: data key {key!r} is not in its descriptor")
            return None
        return self._declare(key, spec.with_value(first))

    def event(self, doc: Mapping[str, Any]) -> None:
        """One event: one point per channel."""
        for key, value in (doc.get("data") or {}).items():
            writer = self.writer(key, value)
            if writer is not None:
                self._send(writer, key, value, many=False)
        stamps = doc.get("timestamps") or {}
        if self.time is not None:
            self.time.send(float(doc.get("time", np.nan)))
        if self.timestamps is not None:
            self.timestamps.send(np.array([stamps.get(k, np.nan) for k in self.stamped], float))

    def page(self, doc: Mapping[str, Any]) -> None:
        """An event page of n rows: one block of n points per channel."""
        for key, values in (doc.get("data") or {}).items():
            writer = self.writer(key, values[0]) if len(values) else None
            if writer is not None:
                self._send(writer, key, values, many=True)
        times = np.asarray(doc["time"], dtype=np.float64)
        if self.time is not None:
            self.time.send(times)
        if self.timestamps is not None:
            stamps = doc.get("timestamps") or {}
            nan = [np.nan] * len(times)
            columns = [stamps.get(k, nan) for k in self.stamped]
            block = np.asarray(columns, dtype=np.float64).T.reshape(len(times), len(self.stamped))
            self.timestamps.send(block)

    def _send(self, writer: ChannelWriter, key: str, value: Any, many: bool) -> None:
        """Send ``value`` (``many``: a page's column of values) to ``key``'s channel. A
        value the channel refuses (wrong dtype or shape, a datum of no mapped resource) is
        counted and left out, so the event's other keys still go; that channel is then
        behind the others by what it refused."""
        desc = writer.desc
        try:
            if desc.kind == "ref":
                refs = [self.run.datum_ref(v) for v in (value if many else [value])]
                writer.extend(refs)
            elif desc.kind == "json":
                writer.extend(value if many else [value])
            elif many:
                writer.send(np.asarray(value))
            elif isinstance(value, float) and desc.dtype == np.float64 and not desc.shape:
                writer.send(float(value))  # a Python float takes send()'s fast path
            else:
                writer.send(value)
        except (ValueError, TypeError) as exc:  # Unmapped, and the PointErrors of send()
            self.run.unmapped(f"stream {self.name!r}: {key!r} not sent: {exc}")


class RunScan:
    """The scan of one run, from its ``start`` document to its ``stop``. ``unmapped`` is
    told (and counts) every part that has no bus equivalent; ``datum`` gives the
    ``FileRef`` of a datum id."""

    def __init__(
        self,
        session: Session,
        start: Mapping[str, Any],
        unmapped: Callable[[str], None],
        datum: Callable[[str], FileRef],
    ) -> None:
        self.start = start
        self.uid = str(start.get("uid"))
        self.unmapped = unmapped
        self.datum_ref = datum
        self.streams: dict[str, Stream] = {}  # by descriptor uid
        self.scan: Scan = session.create_scan(scan_info(start))
        self.scan.prepare()
        self.scan.start()

    def declare(self, spec: ChannelSpec) -> ChannelWriter | None:
        """The channel of ``spec``; None (counted) if the bus refuses it (a name taken)."""
        try:
            return self.scan.channel(
                spec.name,
                spec.dtype,
                spec.shape,
                unit=spec.unit,
                kind=spec.kind,  # type: ignore[arg-type]
                attrs=spec.attrs,
                copy=spec.copy,
            )
        except (ValueError, TypeError) as exc:  # a name taken or refused, attrs msgpack refuses
            self.unmapped(f"run {self.uid}: channel {spec.name!r} not declared: {exc}")
            return None

    def descriptor(self, doc: Mapping[str, Any]) -> Stream:
        """The stream a descriptor declares, its channels declared."""
        stream = self.streams[str(doc["uid"])] = Stream(self, doc)
        return stream

    def stream_datum(self, stream: Stream, key: str, ref: FileRef) -> None:
        """Frames of ``key`` a ``stream_datum`` says are in a file."""
        writer = stream.writer(key, None)
        if writer is None or writer.desc.kind != "ref":
            raise Unmapped(f"stream {stream.name!r}: {key!r} is not an external data key")
        writer.send(ref)

    def stop(self, doc: Mapping[str, Any]) -> None:
        """End the scan with the stop's reason; the stop document goes in its info."""
        reason, error = end_of(doc)
        self.scan.end(reason, error, info={"stop": plain(doc)})
