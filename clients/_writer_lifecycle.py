"""A scan's entry in its file from start to end: created, or taken up where
``writer/progress`` says after a restart; ended (end reason, what is missing, frames
linked, the default plot); marked when its scan expired before it was written.
"""

from __future__ import annotations

import errno
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import databus
from databus._encoding import text
from databus._saving import hdf5_name, original_name

from ._nexus import channel_dataset, channel_table, create_entry, h5_text, iso, plotselect
from ._writer_entries import Channel, Entry
from ._writer_files import OutputFile
from ._writer_frames import TrustedRoots, link_frames

log = logging.getLogger("databus.writer")

#: ``end_reason`` of an entry whose scan left Redis before all of it was written.
EXPIRED = "incomplete: the scan expired from Redis before it was written"


def compression_options(kind: str | None) -> dict[str, Any]:
    """h5py's dataset options for frames compressed with ``kind`` (none, gzip, lz4)."""
    if kind in (None, "none"):
        return {}
    if kind == "gzip":
        return {"compression": "gzip", "compression_opts": 4}
    if kind == "lz4":
        try:
            import hdf5plugin
        except ImportError:
            raise ImportError(
                "lz4 compression needs hdf5plugin: pip install 'databus[hdf5]'"
            ) from None
        return dict(hdf5plugin.LZ4())
    raise ValueError(f"compression must be 'none', 'gzip' or 'lz4', not {kind!r}")


def entry_name(h5: Any, scan: Any, name: str) -> str:
    """``name`` (``<number>.1``), unless that entry holds another scan of the same
    number (a server restarted without its data counts again from 1): then
    ``<number>.2``, ``<number>.3``... Scans are told apart by their creation time."""
    created = scan.created or 0.0
    number, k = name.rsplit(".", 1)
    k_int = int(k)
    while name in h5:
        stored = h5[name].get("writer")
        if stored is None or stored.attrs.get("scan_created", created) == created:
            break
        k_int += 1
        name = f"{number}.{k_int}"
    return name


def open_entry(
    file: OutputFile, h5: Any, scan: Any, name: str, compression: dict[str, Any]
) -> tuple[Entry, bool] | None:
    """The scan's entry in ``h5`` (``file`` open for structure changes), created or taken
    up unfinished with every dataset cut back to ``writer/progress``, and whether it was
    taken up; None if another writer finished it."""
    name = entry_name(h5, scan, name)
    resumed = name in h5
    if resumed and not _created_whole(h5[name]):  # a creation that failed half way
        del h5[name]
        resumed = False
    if resumed and "end_reason" in h5[name]:
        log.info("%s: %s::%s was finished by another writer", scan.db_name, file.path, name)
        return None
    group = h5[name] if resumed else create_entry(h5, name, scan, compression)
    if not _created_whole(group):
        del h5[name]
        raise IncompleteEntry(
            errno.ENOSPC,
            f"{file.path}::{name}: HDF5 made the entry but not its channel list "
            f"(its writes failed: the disk is full)",
        )
    names = [original_name(text(n)) for n in group["writer/channels"][()]]
    progress = group["writer/progress"][()]
    channels = {}
    for index, ch_name in enumerate(names):
        node = scan.channels.get(ch_name)
        path_in_entry = text(group["writer/paths"][index])
        channels[ch_name] = Channel(
            node,
            ch_name,
            hdf5_name(ch_name.rsplit(":", 1)[-1]),
            path_in_entry or None,
            index,
            int(progress[index]),
            int(progress[index]),
            int(progress[index]),
        )
        if resumed and path_in_entry:  # drop whatever the progress does not vouch for
            ds = group[path_in_entry]
            if ds.shape[0] > progress[index]:
                ds.resize(int(progress[index]), axis=0)
    entry = Entry(scan, file, name, channels)
    entry.gaps = {(int(c), int(a), int(b), int(r)) for c, a, b, r in group["writer/gaps"][()]}
    return entry, resumed


#: Disk an entry's making takes at most per dataset it makes (object header, B-tree node,
#: a first chunk of a scalar channel), beside the scan info's own bytes.
DATASET_BYTES = 16 * 2**10


def entry_bytes(scan: Any) -> int:
    """Room to ask for before making ``scan``'s entry: its datasets (one per channel and
    per scan-info key, and the bookkeeping) and about the size of its info as text, so
    HDF5 does not meet a full disk half way through (it then fails without raising)."""
    info = scan.info
    datasets = len(scan.channels) + len(info) + 16
    return datasets * DATASET_BYTES + len(repr(info))


def add_channel(entry: Entry, node: Any, compression: dict[str, Any]) -> Channel:
    """Add channel ``node``, declared after the entry was made (a bluesky stream that
    starts mid-run), to ``entry``: its dataset, and a row of ``writer/channels``,
    ``paths`` and ``progress`` (rewritten whole, with the file's structure open)."""
    entry.store()
    entry.file.check_room(4 * DATASET_BYTES)
    h5 = entry.file.structural()
    e = h5[entry.name]
    path = channel_dataset(e, node, compression)
    channels = list(entry.channels.values())
    channel_table(
        e["writer"],
        [c.name for c in channels] + [node.name],
        [c.path or "" for c in channels] + [path],
        [c.stored for c in channels] + [0],
    )
    ch = Channel(
        node, node.name, hdf5_name(node.name.rsplit(":", 1)[-1]), path or None, len(channels)
    )
    entry.channels[node.name] = ch
    entry.file.live()
    return ch


class IncompleteEntry(OSError):
    """HDF5 made a scan's entry but failed to write it whole, without raising (a full
    disk): the entry is removed, to be made again once there is room."""


def _created_whole(group: Any) -> bool:
    """Whether ``group``'s creation went through: its ``writer`` bookkeeping is there and
    every channel name in it is readable (HDF5 that hit a full disk can leave the string
    datasets made but their data unwritten: they read back as empty names)."""
    if "writer/progress" not in group or "writer/channels" not in group:
        return False
    return all(text(n) for n in group["writer/channels"][()])


def end_entry(entry: Entry, end: databus.ScanEnd, trusted: TrustedRoots) -> str:
    """Store what is left, write the entry's end (time, reason, what is missing, frames
    linked, the final plot) and flush the file; the end reason written."""
    key = entry.scan.db_name
    missing = {}
    if entry.failed is None:
        if entry.behind:
            missing = entry.catch_up_all()
        entry.store()
    h5 = entry.file.structural()
    e = h5[entry.name]
    reason = f"writer failed: {entry.failed}" if entry.failed else str(end.reason)
    if missing:
        reason = EXPIRED
        log.error("%s: %s; missing %s", key, reason, missing)
    e["end_time"] = iso(None)
    e["end_reason"] = h5_text(reason)
    if end.error:
        e["end_error"] = h5_text(end.error)
    if end.reason == databus.EndReason.LOST:  # keys gone before it ended: say what is missing
        missing = {c.name: [c.written, None] for c in entry.channels.values()}
    if missing:
        e["writer/missing"] = json.dumps(missing)
    for ch in entry.channels.values():
        if ch.path is None and ch.refs:
            link_frames(e, ch, trusted)
    names = list(entry.channels)
    paths = [c.path or "" for c in entry.channels.values()]
    try:
        plotselect(e, entry.scan.info, names, paths, final=True)
    except Exception as exc:
        log.warning("%s: no default plot (%s)", key, exc)
    entry.file.flush()
    return reason


def mark_expired_entries(h5: Any, path: Path, exists: Callable[[str], bool]) -> None:
    """Mark the entries of ``h5`` left unfinished whose scan no longer ``exists`` in
    Redis: ``end_reason`` and, per channel, the points missing from ``writer/progress``."""
    for name, entry in h5.items():
        if "writer" not in entry or "end_reason" in entry:
            continue
        key = original_name(text(entry["scan_key"][()]))
        if exists(key):
            continue  # still in Redis: the walk will resume it
        progress = entry["writer/progress"][()]
        channels = [original_name(text(c)) for c in entry["writer/channels"][()]]
        missing = {c: [int(p), None] for c, p in zip(channels, progress, strict=True)}
        entry["end_reason"] = EXPIRED
        entry["end_time"] = iso(None)
        entry["writer/missing"] = json.dumps(missing)
        log.error("%s::%s: data expired before it was written; missing %s", path, name, missing)


def note(key: str, call: Callable[[], None]) -> None:
    """Tell readers (DataExpired names the file) and the memory guard (it deletes
    scans still being written last) where a scan goes and when it is written
    (``call``: a ``ScanNode.record_*`` call)."""
    try:
        call()
    except databus.DatabusError as exc:  # a read-only user: the files are right all the same
        log.warning("%s: cannot note the file in the scan record (%s)", key, exc)
