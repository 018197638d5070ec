"""Where bluesky says a detector wrote its frames, as databus ``FileRef``s. Pure.

Two conventions are read (event-model 1.24):

- ``resource`` + ``datum`` (ophyd's area detectors): specs ``AD_HDF5`` and
  ``AD_HDF5_SWMR`` mean the frames are the first axis of ``/entry/data/data`` in the file
  ``root`` / ``resource_path``, ``resource_kwargs["frame_per_point"]`` of them per event;
  a datum's ``point_number`` is the event, so it covers frames
  ``point_number * frame_per_point`` up to the next point's.
- ``stream_resource`` + ``stream_datum`` (ophyd-async): mimetype ``application/x-hdf5``,
  ``uri`` ``file://<host>/<absolute path>``, ``parameters["dataset"]``; a stream datum's
  ``indices`` are the frames of the dataset it covers.

Anything else (another spec or mimetype, a relative path) raises ``Unmapped``, which the
publisher logs and counts: the run goes on without those frames.
"""

from __future__ import annotations

import dataclasses
import posixpath
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote, urlparse

from databus import FileRef

#: Resource specs whose frames are ``/entry/data/data`` of an HDF5 file.
AD_HDF5_SPECS = ("AD_HDF5", "AD_HDF5_SWMR")
#: Where ophyd's area-detector HDF5 plugin (and its handler) keeps the frames.
AD_HDF5_DATASET = "/entry/data/data"
HDF5_MIMETYPE = "application/x-hdf5"


class Unmapped(ValueError):
    """A document part that has no databus equivalent (an unknown resource spec, a datum
    of an unknown resource, a value a channel cannot take)."""


@dataclasses.dataclass(frozen=True)
class FileSource:
    """One HDF5 dataset a detector writes: its file, dataset and frames per event."""

    file: str
    dataset: str
    frames_per_point: int = 1


def resource_source(resource: Mapping[str, Any]) -> FileSource:
    """The dataset a ``resource`` document names; ``Unmapped`` for a spec other than
    ``AD_HDF5_SPECS`` or a path that is not absolute."""
    spec = resource.get("spec")
    if spec not in AD_HDF5_SPECS:
        raise Unmapped(f"resource spec {spec!r} is not mapped (only {', '.join(AD_HDF5_SPECS)})")
    root = str(resource.get("root") or "")
    path = posixpath.join(root, str(resource.get("resource_path", "")))
    if not posixpath.isabs(path):
        raise Unmapped(f"resource {resource.get('uid')!r}: {path!r} is not an absolute path")
    kwargs = resource.get("resource_kwargs") or {}
    per_point = kwargs.get("frame_per_point", 1)
    if not isinstance(per_point, int) or per_point < 1:
        raise Unmapped(f"resource {resource.get('uid')!r}: frame_per_point {per_point!r}")
    return FileSource(path, AD_HDF5_DATASET, per_point)


def datum_ref(source: FileSource, datum_kwargs: Mapping[str, Any]) -> FileRef:
    """The frames one ``datum`` of ``source`` covers (its ``point_number``)."""
    point = datum_kwargs.get("point_number")
    if not isinstance(point, int) or point < 0:
        raise Unmapped(f"datum_kwargs {dict(datum_kwargs)!r} have no point_number")
    per = source.frames_per_point
    return FileRef(source.file, source.dataset, point * per, (point + 1) * per)


def stream_resource_source(doc: Mapping[str, Any]) -> FileSource:
    """The dataset a ``stream_resource`` document names; ``Unmapped`` for a mimetype
    other than HDF5, a URI that is not a local file, or no ``dataset`` parameter."""
    if doc.get("mimetype") != HDF5_MIMETYPE:
        raise Unmapped(f"stream_resource mimetype {doc.get('mimetype')!r} is not mapped")
    uri = urlparse(str(doc.get("uri", "")))
    path = unquote(uri.path)
    if uri.scheme != "file" or not posixpath.isabs(path):
        raise Unmapped(f"stream_resource uri {doc.get('uri')!r} is not a file:// URI")
    dataset = (doc.get("parameters") or {}).get("dataset")
    if not isinstance(dataset, str) or not dataset:
        raise Unmapped(f"stream_resource {doc.get('uid')!r} has no 'dataset' parameter")
    return FileSource(path, dataset)


def stream_datum_ref(source: FileSource, doc: Mapping[str, Any]) -> FileRef:
    """The frames a ``stream_datum`` covers: its ``indices`` in ``source``'s dataset."""
    indices = doc.get("indices") or {}
    start, stop = indices.get("start"), indices.get("stop")
    if not (isinstance(start, int) and isinstance(stop, int) and 0 <= start < stop):
        raise Unmapped(f"stream_datum {doc.get('uid')!r}: indices {indices!r}")
    return FileRef(source.file, source.dataset, start, stop)
