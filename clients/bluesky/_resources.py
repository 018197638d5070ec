"""The documents that point at frames in files: ``stream_resource``/``stream_datum`` (what
ophyd-async's detectors emit), or ``resource``/``datum_page`` for older consumers. Pure; the
layout is described in ``_documents``."""

from __future__ import annotations

import uuid
from typing import Any

from databus import FileRef

Document = tuple[str, dict[str, Any]]


def is_legacy(resources: str) -> bool:
    """Whether ``resources`` names the legacy documents (``"legacy"``) rather than the
    stream ones (``"stream"``); ValueError for anything else."""
    if resources not in ("stream", "legacy"):
        raise ValueError(f"resources must be 'stream' or 'legacy', not {resources!r}")
    return resources == "legacy"


class FileResources:
    """The resources of one run (``run_uid``), one per data key, file and dataset; their
    uids are uuid5s in ``namespace``, so a run sent again names them the same."""

    def __init__(self, run_uid: str, namespace: uuid.UUID, *, legacy: bool) -> None:
        self.run_uid = run_uid
        self.namespace = namespace
        self.legacy = legacy
        self._uids: dict[tuple[str, str, str], str] = {}
        self._datums = 0

    def documents(
        self, key: str, shape: tuple[int, ...], descriptor: str, first: int, refs: list[FileRef]
    ) -> tuple[list[Document], list[str]]:
        """The documents of ``refs``, the frames of data key ``key`` for rows from
        ``first`` of stream ``descriptor``; and (legacy) the datum id of each row."""
        docs: list[Document] = []
        datum_ids: list[str] = []
        row = first
        for ref in refs:
            resource, new = self._resource(key, shape, ref)
            if new is not None:
                docs.append(new)
            if self.legacy:
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

    def _resource(
        self, key: str, shape: tuple[int, ...], ref: FileRef
    ) -> tuple[str, Document | None]:
        """The uid of the resource of ``ref``'s file and dataset, and its document when
        it is new."""
        ident = (key, ref.file, ref.dataset)
        if ident in self._uids:
            return self._uids[ident], None
        uid = str(uuid.uuid5(self.namespace, f"{self.run_uid}/{key}/{ref.file}/{ref.dataset}"))
        self._uids[ident] = uid
        if self.legacy:
            standard = ref.dataset.strip("/") == "entry/data/data"
            kwargs: dict[str, Any] = {"frame_per_point": 1}
            if not standard:
                kwargs["dataset"] = ref.dataset
            legacy = {
                "uid": uid,
                "run_start": self.run_uid,
                "spec": "AD_HDF5" if standard else "HDF5_DATASET",
                "root": "/",
                "resource_path": ref.file.lstrip("/"),
                "resource_kwargs": kwargs,
                "path_semantics": "posix",
            }
            return uid, ("resource", legacy)
        doc = {
            "uid": uid,
            "run_start": self.run_uid,
            "data_key": key,
            "mimetype": "application/x-hdf5",
            "uri": f"file://localhost{ref.file}",
            "parameters": {"dataset": ref.dataset, "chunk_shape": [1, *shape], "multiplier": 1},
        }
        return uid, ("stream_resource", doc)
