"""One bus scan as an event-model 1.24 run: pure, no sockets, no Redis.

``RunDocuments(key, number, created, info, descriptors)`` is fed what a follower delivers
(``data`` for NEW_DATA, ``gap`` for GAP, ``close`` for END_SCAN) and returns the documents
to send, as ``(name, doc)`` pairs, in order. Every document passes
``event_model.schema_validators``.

start
    ``uid``: the ``uid`` in the scan info when the scan came from bluesky, else a uuid5 of
    the scan key and creation time (the same for every bridge, and after a restart);
    ``time`` = creation; ``scan_id`` = scan number; ``plan_name`` = the info's
    ``plan_name`` or ``type``; ``plan_type`` (``LiveTable`` prints it) = ``databus``;
    ``motors``, ``detectors``, ``hints.dimensions`` (one per motor, ``time`` without
    motors), ``num_points`` = ``npoints``; the info's own ``plan_name``, ``plan_type``,
    ``detectors`` and ``hints`` win (a scan that came from bluesky); the whole scan info is
    under ``databus.scan_info`` (event-model forbids ``.`` and ``/`` in nested keys: they
    become ``_``), with the scan ``key``.
data keys
    A channel's data key is its short name (after the last ``:``, ``axis:robz`` ->
    ``robz``) when no other channel of the scan has that short name, else its full name
    with ``:`` as ``_``. ``source`` is ``databus:<scan key>/<channel>``. ``json`` channels
    are strings (a record that is not a string as its JSON text).
streams
    A channel whose ``attrs`` has ``stream`` goes to that stream. Otherwise, when the
    info's ``acquisition_chain`` has several top masters, the channels listed under the
    first are ``primary`` and those under each other top master (a group with its own
    length) are a stream named after it. Everything else is ``primary``. Each stream gets
    its descriptor right after the start.
events
    A row (a point index) is sent once every channel of its stream has it: an
    ``event_page`` per run of complete rows, so a follower's block becomes one page, never
    one document per point. ``seq_num`` = index + 1; event uids are
    ``<descriptor uid>/<seq_num>``; ``time`` and ``timestamps`` are when the bridge had the
    row (the bus keeps no per-point time).
frames in files
    A ``ref`` channel's data key is ``external: "STREAM:"``: a ``stream_resource`` per
    (file, dataset) (``uri`` ``file://localhost<path>``, ``application/x-hdf5``,
    ``parameters`` ``dataset`` and ``chunk_shape``), a ``stream_datum`` per reference and
    run (``indices`` = frames in the file, ``seq_nums`` = the rows), sent before the page
    of those rows, whose ``data`` leaves the key out (as ophyd-async's detectors do).
    With ``resources="legacy"``: ``external: "FILESTORE:"``, a ``resource`` per (file,
    dataset) (spec ``AD_HDF5`` for ``/entry/data/data``, else ``HDF5_DATASET`` with the
    ``dataset`` in ``resource_kwargs``), a ``datum_page`` per run (``point_number`` = frame
    in the file) and the ``datum_id`` in the page's data (``filled`` False).
gaps
    Rows a channel will never deliver (a lossy channel's dropped points, points a server
    lost) are skipped: ``seq_num`` jumps over them, and the other channels' values of
    those rows are not sent (they stay on the bus). The stop document lists them under
    ``databus.gaps`` (``stream``, ``data_key``, ``first`` index, ``count``, ``reason``);
    ``databus.incomplete`` counts per stream the trailing rows some channels had and others
    never sent (an aborted scan). event-model's stop allows such a key; pages do not
    carry it.
stop
    ``exit_status``: ``success`` for finished and stopped scans (bluesky's ``RE.stop()``),
    ``abort`` for aborted and interrupted ones, ``fail`` for failed and lost ones (and any
    reason this module does not know); ``reason`` = the end reason and error text;
    ``num_events`` = rows sent per stream; ``databus`` = end reason, error, gaps, incomplete.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from databus import Descriptor, FileRef

from ._rows import StreamRows

__all__ = ["RunDocuments"]

Document = tuple[str, dict[str, Any]]

#: Names the run uids of bus scans (uuid5 of scan key and creation time).
_NAMESPACE = uuid.UUID("5f0c1f36-6a39-4f8e-9d2b-1f6a4c3e7b21")
_EXIT_STATUS = {
    "finished": "success",
    "stopped": "success",
    "aborted": "abort",
    "interrupted": "abort",
}
_JSON_TYPES = {"b": "boolean", "i": "integer", "u": "integer", "f": "number", "c": "number"}


def _clean(value: Any) -> Any:
    """``value`` with every nested mapping key fit for event-model (no ``.`` or ``/``)."""
    if isinstance(value, Mapping):
        return {str(k).replace(".", "_").replace("/", "_"): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def data_keys_of(names: Sequence[str]) -> dict[str, str]:
    """Channel name -> data key: the short name when unique in ``names``, else the full
    name with ``:`` as ``_``."""
    shorts = {name: name.rsplit(":", 1)[-1] for name in names}
    count = Counter(shorts.values())
    return {
        name: short if count[short] == 1 else name.replace(":", "_")
        for name, short in shorts.items()
    }


def streams_of(descriptors: Sequence[Descriptor], info: Mapping[str, Any]) -> dict[str, str]:
    """Channel name -> stream name (the rule in the module docstring)."""
    chain = info.get("acquisition_chain")
    members: dict[str, str] = {}
    if isinstance(chain, Mapping) and len(chain) > 1:
        for position, (master, entry) in enumerate(chain.items()):
            stream = "primary" if position == 0 else str(master)
            for name in _chain_channels(entry):
                members.setdefault(name, stream)
    out: dict[str, str] = {}
    for desc in descriptors:
        wanted = desc.attrs.get("stream")
        out[desc.name] = (
            wanted if isinstance(wanted, str) and wanted else members.get(desc.name, "primary")
        )
    return out


def _chain_channels(entry: Any) -> list[str]:
    """The channel names one top master's ``acquisition_chain`` entry lists."""
    if not isinstance(entry, Mapping):
        return []
    lists = [entry.get(k) for k in ("scalars", "spectra", "images")]
    master = entry.get("master")
    if isinstance(master, Mapping):
        lists += [master.get(k) for k in ("scalars", "spectra", "images")]
    return [n for names in lists if isinstance(names, list) for n in names if isinstance(n, str)]


def data_key(desc: Descriptor, source: str, external: str | None) -> dict[str, Any]:
    """The descriptor's ``data_keys`` entry of a channel."""
    out: dict[str, Any] = {"source": source, "units": desc.unit}
    if desc.kind == "json" or desc.dtype is None:
        out.update(dtype="string", shape=[])
        return out
    kind = "array" if desc.shape or desc.kind == "ref" else _JSON_TYPES[desc.dtype.kind]
    out.update(dtype=kind, dtype_numpy=desc.dtype.str, shape=list(desc.shape))
    if external is not None:
        out["external"] = external
    return out


def _record_text(record: Any) -> str:
    return record if isinstance(record, str) else json.dumps(record, default=str)


class RunDocuments:
    """The documents of one scan (the rules in the module docstring).

    ``resources`` is ``"stream"`` (stream_resource/stream_datum) or ``"legacy"``
    (resource/datum_page); ``clock`` gives the time of rows and documents.
    """

    def __init__(
        self,
        key: str,
        number: int,
        created: float | None,
        info: Mapping[str, Any],
        descriptors: Sequence[Descriptor],
        *,
        resources: str = "stream",
        clock: Callable[[], float] = time.time,
    ) -> None:
        if resources not in ("stream", "legacy"):
            raise ValueError(f"resources must be 'stream' or 'legacy', not {resources!r}")
        self.key = key
        self._legacy = resources == "legacy"
        self._clock = clock
        self._info = dict(info)
        self._created = created if created is not None else clock()
        bluesky_uid = self._info.get("uid")
        self.uid = (
            bluesky_uid
            if isinstance(bluesky_uid, str) and bluesky_uid
            else str(uuid.uuid5(_NAMESPACE, f"{key}@{self._created!r}"))
        )
        self._number = number
        self._desc = {d.name: d for d in descriptors}
        self._keys = data_keys_of(list(self._desc))
        stream_of = streams_of(descriptors, self._info)
        names = list(dict.fromkeys(["primary", *stream_of.values()]))
        self._streams = {
            s: StreamRows(tuple(n for n in self._desc if stream_of[n] == s))
            for s in names
            if any(stream_of[n] == s for n in self._desc)
        }
        self._stream_of = stream_of
        self._descriptor_uid = {s: f"{self.uid}/{s}" for s in self._streams}
        self._resources: dict[tuple[str, str, str], str] = {}
        self._datums = 0
        self.opened = False

    # ------------------------------------------------------------------ start

    def open(self) -> list[Document]:
        """The start and one descriptor per stream."""
        self.opened = True
        docs: list[Document] = [("start", self._start())]
        docs += [("descriptor", self._descriptor(s)) for s in self._streams]
        return docs

    def _start(self) -> dict[str, Any]:
        info = self._info
        motors = [self._motor_key(m) for m in info.get("motors", []) if isinstance(m, str)]
        dimensions = [[[m], "primary"] for m in motors] or [[["time"], "primary"]]
        detectors = info.get("detectors", info.get("counters"))
        if not (isinstance(detectors, list) and all(isinstance(d, str) for d in detectors)):
            detectors = sorted({n.split(":", 1)[0] for n in self._desc} - {"axis", "timer"})
        plan_name = info.get("plan_name", info.get("type", "scan"))
        start: dict[str, Any] = {
            "uid": self.uid,
            "time": self._created,
            "scan_id": self._number,
            "plan_name": str(plan_name),
            "plan_type": str(info.get("plan_type", "databus")),
            "motors": motors,
            "detectors": list(detectors),
            "hints": {"dimensions": dimensions},
            "databus": {"key": self.key, "scan_info": _clean(info)},
        }
        if isinstance(info.get("hints"), Mapping):
            start["hints"] = _clean(info["hints"])
        npoints = info.get("npoints", info.get("num_points"))
        if isinstance(npoints, int) and not isinstance(npoints, bool) and npoints > 0:
            start["num_points"] = npoints
        return start

    def _motor_key(self, motor: str) -> str:
        for name, key in self._keys.items():
            if name == motor or name.rsplit(":", 1)[-1] == motor:
                return key
        return motor

    def _descriptor(self, stream: str) -> dict[str, Any]:
        external = "FILESTORE:" if self._legacy else "STREAM:"
        data_keys = {}
        object_keys: dict[str, list[str]] = {}
        for name in self._streams[stream].channels:
            desc = self._desc[name]
            key = self._keys[name]
            source = f"databus:{self.key}/{name}"
            data_keys[key] = data_key(desc, source, external if desc.kind == "ref" else None)
            object_keys.setdefault(name.split(":", 1)[0], []).append(key)
        return {
            "uid": self._descriptor_uid[stream],
            "run_start": self.uid,
            "time": self._clock(),
            "name": stream,
            "data_keys": data_keys,
            "object_keys": object_keys,
            "configuration": {},
            "hints": {obj: {"fields": keys} for obj, keys in object_keys.items()},
        }

    # ------------------------------------------------------------------ data

    def data(self, channel: str, first: int, payload: Any, count: int) -> list[Document]:
        """Points ``first .. first + count - 1`` of ``channel`` arrived: the documents of
        the rows they complete. KeyError for a channel the scan did not declare."""
        stream = self._stream_of[channel]
        rows = self._streams[stream]
        rows.add(channel, first, payload, count)
        return self._rows(stream, rows)

    def gap(self, channel: str, first: int, count: int, reason: str) -> list[Document]:
        """Points ``first .. first + count - 1`` of ``channel`` will never come."""
        stream = self._stream_of[channel]
        rows = self._streams[stream]
        rows.gap(channel, first, count, reason)
        return self._rows(stream, rows)

    def _rows(self, stream: str, rows: StreamRows) -> list[Document]:
        docs: list[Document] = []
        for first, stop, payloads in rows.take():
            docs += self._page(stream, first, stop, payloads)
        return docs

    def _page(self, stream: str, first: int, stop: int, payloads: dict) -> list[Document]:
        docs: list[Document] = []
        descriptor = self._descriptor_uid[stream]
        now = self._clock()
        seq = list(range(first + 1, stop + 1))
        times = [now] * len(seq)
        data: dict[str, Any] = {}
        filled: dict[str, list[bool]] = {}
        for name, payload in payloads.items():
            desc = self._desc[name]
            key = self._keys[name]
            if desc.kind == "ref":
                refs_docs, datum_ids = self._references(name, key, descriptor, first, payload)
                docs += refs_docs
                if self._legacy:
                    data[key] = datum_ids
                    filled[key] = [False] * len(seq)
            elif desc.kind == "json":
                data[key] = [_record_text(r) for r in payload]
            elif desc.shape:
                data[key] = list(payload)
            else:
                data[key] = payload.tolist()
        page = {
            "descriptor": descriptor,
            "uid": [f"{descriptor}/{s}" for s in seq],
            "seq_num": seq,
            "time": times,
            "data": data,
            "timestamps": dict.fromkeys(data, times),
            "filled": filled,
        }
        docs.append(("event_page", page))
        return docs

    def _references(
        self, name: str, key: str, descriptor: str, first: int, refs: list[FileRef]
    ) -> tuple[list[Document], list[str]]:
        """The resource and datum documents of ``refs`` (rows from ``first``), and the
        datum ids of the rows (legacy resources)."""
        docs: list[Document] = []
        datum_ids: list[str] = []
        row = first
        for ref in refs:
            resource, new = self._resource(name, key, ref)
            if new is not None:
                docs.append(new)
            if self._legacy:
                ids = [f"{resource}/{i}" for i in range(ref.start, ref.stop)]
                page = {
                    "resource": resource,
                    "datum_id": ids,
                    "datum_kwargs": {"point_number": list(range(ref.start, ref.stop))},
                }
                docs.append(("datum_page", page))
                datum_ids += ids
            else:
                self._datums += 1
                datum = {
                    "uid": f"{resource}/{self._datums}",
                    "stream_resource": resource,
                    "descriptor": descriptor,
                    "indices": {"start": ref.start, "stop": ref.stop},
                    "seq_nums": {"start": row + 1, "stop": row + 1 + len(ref)},
                }
                docs.append(("stream_datum", datum))
            row += len(ref)
        return docs, datum_ids

    def _resource(self, name: str, key: str, ref: FileRef) -> tuple[str, Document | None]:
        """The uid of the resource of ``ref``'s file and dataset, and its document when
        it is new."""
        ident = (name, ref.file, ref.dataset)
        if ident in self._resources:
            return self._resources[ident], None
        uid = str(uuid.uuid5(_NAMESPACE, f"{self.uid}/{name}/{ref.file}/{ref.dataset}"))
        self._resources[ident] = uid
        shape = list(self._desc[name].shape)
        if self._legacy:
            standard = ref.dataset.strip("/") == "entry/data/data"
            kwargs: dict[str, Any] = {"frame_per_point": 1}
            if not standard:
                kwargs["dataset"] = ref.dataset
            legacy = {
                "uid": uid,
                "run_start": self.uid,
                "spec": "AD_HDF5" if standard else "HDF5_DATASET",
                "root": "/",
                "resource_path": ref.file.lstrip("/"),
                "resource_kwargs": kwargs,
                "path_semantics": "posix",
            }
            return uid, ("resource", legacy)
        doc = {
            "uid": uid,
            "run_start": self.uid,
            "data_key": key,
            "mimetype": "application/x-hdf5",
            "uri": f"file://localhost{ref.file}",
            "parameters": {"dataset": ref.dataset, "chunk_shape": [1, *shape]},
        }
        return uid, ("stream_resource", doc)

    # ------------------------------------------------------------------ stop

    def close(
        self, reason: str, error: str | None = None, ended: float | None = None
    ) -> list[Document]:
        """The stop document (after the start and descriptors if they were not sent)."""
        docs = [] if self.opened else self.open()
        gaps = [
            {
                "stream": stream,
                "data_key": self._keys[g.channel],
                "first": g.first,
                "count": g.count,
                "reason": g.reason,
            }
            for stream, rows in self._streams.items()
            for g in rows.gaps
        ]
        reason = str(reason)
        stop: dict[str, Any] = {
            "uid": f"{self.uid}/stop",
            "run_start": self.uid,
            "time": ended if ended is not None else self._clock(),
            "exit_status": _EXIT_STATUS.get(reason, "fail"),
            "reason": f"{reason}: {error}" if error else reason,
            "num_events": {s: rows.emitted for s, rows in self._streams.items()},
            "databus": {
                "end_reason": reason,
                "error": error,
                "gaps": gaps,
                "incomplete": {s: rows.incomplete for s, rows in self._streams.items()},
            },
        }
        docs.append(("stop", stop))
        return docs
