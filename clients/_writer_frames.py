"""Frames a detector wrote to its own files, linked into an entry (never copied), and
only from files under trusted roots that hold the frames the references name; the other
references are listed as text.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from databus._encoding import FileRef
from databus._saving import hdf5_name
from databus._subscribe import referenced_frames

from ._nexus import free_name, h5py_module
from ._writer_entries import Channel


@dataclasses.dataclass(frozen=True)
class TrustedRoots:
    """Where frames may be linked from: ``configured`` resolved roots (``--trust-ref-root``)
    or, without them, each scan's ``detector_directories`` and ``detectors``."""

    configured: list[str]
    detectors: Path

    def of(self, scan: Any) -> list[str]:
        """Resolved roots the frames of ``scan`` may be linked from: ``configured``, or by
        default the absolute ``detector_directories`` of its info and ``detectors``."""
        if self.configured:
            return self.configured
        named = scan.info.get("detector_directories")
        roots = [d for d in named if isinstance(d, str)] if isinstance(named, list) else []
        roots.append(os.path.abspath(self.detectors))
        return [os.path.realpath(d) for d in roots if os.path.isabs(d)]


def link_frames(e: Any, ch: Channel, trusted: TrustedRoots) -> None:
    """Frames a detector wrote to its own files: an external link when they are one
    dataset from its start, else a virtual dataset; never a copy. References to files
    outside the trusted roots, or to frames the file does not have, are listed as
    text (``<link>_unlinked``) instead."""
    h5py = h5py_module()
    holder = e["instrument"].require_group(hdf5_name(ch.name.split(":")[0]))
    link = free_name(holder, "data")
    good, bad = checked_refs(ch, trusted.of(ch.node.scan))
    if bad:
        rows = [json.dumps({"index": i, **dataclasses.asdict(r), "why": why}) for i, r, why in bad]
        listing = holder.create_dataset(
            f"{link}_unlinked", data=np.array(rows, dtype=object), dtype=h5py.string_dtype()
        )
        listing.attrs["why"] = (
            "references not linked: a file outside the writer's trusted roots "
            "(databus writer --trust-ref-root), or frames the file does not hold"
        )
    if not good:
        return
    first_ref = good[0][1]
    one = all(r.file == first_ref.file and r.dataset == first_ref.dataset for _, r in good)
    contiguous = good[0][0] == 0 and all(r.start == i for i, r in good)
    if one and contiguous and len(good) == len(ch.refs):
        holder[link] = h5py.ExternalLink(first_ref.file, first_ref.dataset)
    else:
        node = ch.node
        extent = max(i + len(r) for i, r in good)
        layout = h5py.VirtualLayout(shape=(extent, *node.shape), dtype=node.dtype)
        for index, ref in good:
            source = h5py.VirtualSource(ref.file, ref.dataset, shape=(ref.stop, *node.shape))
            layout[index : index + len(ref)] = source[ref.start : ref.stop]
        holder.create_virtual_dataset(link, layout, fillvalue=0)
    holder[link].attrs["channel"] = hdf5_name(ch.name)
    measurement = e["measurement"]
    measurement[free_name(measurement, ch.short)] = h5py.SoftLink(f"{holder.name}/{link}")


def checked_refs(
    ch: Channel, trusted: list[str]
) -> tuple[list[tuple[int, FileRef]], list[tuple[int, FileRef, str]]]:
    """``ch``'s references split into those safe to link and (index, ref, why) of the
    others: a file outside the ``trusted`` roots or that ``referenced_frames`` refuses (not
    a regular file, no such dataset, frames past its end or of another shape), or an
    index past what the references can cover (each refused one counted as at most the
    longest dataset checked)."""
    groups: dict[tuple[str, str], list[tuple[int, FileRef]]] = {}
    for index, ref in ch.refs:
        groups.setdefault((os.path.realpath(ref.file), ref.dataset), []).append((index, ref))
    good: list[tuple[int, FileRef]] = []
    bad: list[tuple[int, FileRef, str]] = []
    for (real, dataset), refs in groups.items():
        if not any(real.startswith(root + os.sep) for root in trusted):
            bad += [(i, r, "file outside the trusted roots") for i, r in refs]
            continue
        whole = FileRef(real, dataset, 0, max(r.stop for _, r in refs))
        if _frames_problem(whole, ch.node.shape) is None:  # one open for all of them
            good += refs
            continue
        for index, ref in refs:
            why = _frames_problem(dataclasses.replace(ref, file=real), ch.node.shape)
            if why is None:
                good.append((index, ref))
            else:
                bad.append((index, ref, why))
    longest = max((r.stop for _, r in good), default=0)
    bound = sum(len(r) for _, r in good) + sum(min(len(r), longest) for _, r, _ in bad)
    far = [(i, r) for i, r in good if i + len(r) > bound]
    bad += [(i, r, f"index {i} is past the {bound} frames the references cover") for i, r in far]
    return sorted(g for g in good if g not in far), sorted(bad, key=lambda b: b[0])


def _frames_problem(ref: FileRef, shape: tuple[int, ...]) -> str | None:
    """Why the frames ``ref`` names cannot be linked as points of ``shape``, or None."""
    try:
        with referenced_frames(ref, shape):
            return None
    except (OSError, KeyError, ValueError) as exc:
        return f"cannot read it ({exc})"
