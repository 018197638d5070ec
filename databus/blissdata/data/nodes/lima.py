"""``LimaImageChannelDataNode``: a detector's images as BLISS's ``data.nodes.lima`` reads
them, through a view (``LimaDataView``) rather than pixels.

Two kinds of channel are lima nodes (``type`` ``lima``): ``ref`` channels, whose frames
the detector wrote to its own HDF5 files (the bus holds ``FileRef``s: BLISS's saved Lima
images), and 2D array channels, whose frames are in the bus (BLISS's Lima images held in
the server's memory, not saved: references raise ``ImageNotSaved``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from ...._encoding import Descriptor, FileRef
from ...._events import EventData
from ...._subscribe import ChannelNode
from ..events.lima import ImageNotSaved, LimaImageStatusEvent
from ..lima_image import Frame
from .channel import _ChannelDataNodeBase

__all__ = ["LimaDataView", "LimaImageChannelDataNode", "is_lima"]

#: The file format BLISS names in image references (``saving_format``).
HDF5 = "HDF5"

#: One image's reference: (file, path in file, index in that dataset, format).
Reference = tuple[str, str, int, str]


def is_lima(desc: Descriptor) -> bool:
    """Whether a channel of descriptor ``desc`` is read as a lima node: frames in files
    (``ref``), or 2D frames in the bus."""
    return desc.kind == "ref" or (desc.kind == "array" and len(desc.shape) == 2)


def _expand(refs: Iterable[FileRef]) -> list[Reference]:
    """One ``(file, path, index, "HDF5")`` per image of ``refs``, in order."""
    return [(r.file, r.dataset, i, HDF5) for r in refs for i in range(r.start, r.stop)]


class LimaImageChannelDataNode(_ChannelDataNodeBase):
    """A detector's images; ``get(i[, j])`` is a ``LimaDataView`` of images ``i`` .. ``j``.

    ``from_stream``: BLISS reads ``get_last_live_image()`` from the Lima server's video when
    True; here it is the last image published (see ``LimaDataView.get_last_live_image``).
    """

    from_stream = False

    @property
    def type(self) -> str:  # type: ignore[override]
        return "lima"

    def get(self, from_index: int, to_index: int | None = None) -> LimaDataView:  # type: ignore[override]
        """A view of images ``from_index`` .. ``to_index`` (None: that image alone;
        negative: up to the last one published, as it grows)."""
        last = from_index if to_index is None else to_index
        return LimaDataView(self, from_index, last, from_stream=self.from_stream)

    def get_as_array(self, from_index: int, to_index: int | None = None) -> np.ndarray:  # type: ignore[override]
        """The images of ``get(from_index, to_index)`` as one array (one image alone if
        the view holds one)."""
        return np.asarray(self.get(from_index, to_index).as_array(), self.dtype)

    def references(self, from_index: int = 0, to_index: int = -1) -> list[Reference]:
        """``(file, path_in_file, index, "HDF5")`` of images ``from_index`` .. ``to_index``
        (-1: the last published); ``ImageNotSaved`` for images held in the bus only."""
        if self.desc.kind != "ref":
            raise ImageNotSaved(
                f"channel {self.name!r} of {self.scan.key} holds its images in the bus; "
                f"they are not saved in detector files (read them with get_image())"
            )
        return _expand(self.file_refs(from_index, to_index))

    def _event_data(self, data: EventData) -> EventData:
        """NEW_DATA as BLISS gives it for lima nodes: ``data`` one reference per image
        (``[]`` for images in the bus, which have none), ``description`` our descriptor."""
        refs = _expand(data.data) if self.desc.kind == "ref" else []
        return data._replace(data=refs)


class LimaDataView:
    """Images ``from_index`` .. ``to_index`` of a lima node (``to_index < 0``: up to the
    last one published, read again at each call): ``len``, iteration, ``view[i]``,
    ``get_image``, ``as_array``, ``get_last_image``, references."""

    def __init__(
        self,
        node: LimaImageChannelDataNode,
        from_index: int,
        to_index: int,
        from_stream: bool = False,
    ) -> None:
        self.node = node
        self.from_index = from_index
        self._to_index = to_index
        self.from_stream = from_stream

    def __repr__(self) -> str:
        return f"<LimaDataView {self.node.name!r} {self.from_index}..{self._to_index}>"

    @property
    def to_index(self) -> int:
        """The last image of the view published so far (-1 when none)."""
        last = len(self.node) - 1
        return last if self._to_index < 0 else min(self._to_index, last)

    @property
    def last_index(self) -> int:
        """``to_index + 1`` (BLISS's name: one past the last image)."""
        return self.to_index + 1

    @property
    def status_event(self) -> LimaImageStatusEvent:
        """The node's progress, as BLISS's Lima status event reports it."""
        return LimaImageStatusEvent(len(self.node) - 1)

    def __len__(self) -> int:
        return max(self.to_index - self.from_index + 1, 0)

    def __iter__(self) -> Iterator[np.ndarray]:
        """The view's images, one read each."""
        for index in range(self.from_index, self.to_index + 1):
            yield self.get_image(index)

    def __getitem__(self, index: int | slice) -> np.ndarray:
        """Image ``index`` of the view (negative: from its end), or a slice of them."""
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            return np.asarray(
                [self.get_image(self.from_index + i) for i in range(start, stop, step)]
            )
        position = self.to_index + 1 + index if index < 0 else self.from_index + index
        if position < 0:
            raise IndexError(f"no image {index} in {self!r}")
        return self.get_image(position)

    def get_image(self, image_index_in_scan: int) -> np.ndarray:
        """Image ``image_index_in_scan`` (counted from the scan's first, not the view's),
        from its file or from the bus; an IndexError (``NotYetPublished``...) if it is
        not there."""
        if image_index_in_scan < 0:
            raise ValueError(f"image_index_in_scan must be >= 0, got {image_index_in_scan}")
        image: np.ndarray = ChannelNode.get(self.node, image_index_in_scan)
        return image

    def as_array(self) -> np.ndarray:
        """The view's images as one array, read in one go; the image itself if there is one."""
        if len(self) == 0:
            return np.empty((0, *self.node.shape), self.node.dtype)
        images: np.ndarray = ChannelNode.get(self.node, self.from_index, self.to_index)
        return images[0] if len(images) == 1 else images

    def get_last_image(self) -> Frame:
        """The last image published, with its index: ``Frame(data, frame_number, "file")``;
        IndexError if there is none yet."""
        last = len(self.node) - 1
        if last < 0:
            raise IndexError(f"channel {self.node.name!r} has no image yet")
        return Frame(self.get_image(last), last, "file")

    def get_last_live_image(self) -> Frame:
        """With ``from_stream`` (BLISS: the Lima server's video), the last image published,
        as ``get_last_image()`` (there is no Lima server behind the bus: images come from
        their files or the bus); without, ``Frame(None, None, None)``, as BLISS."""
        if not self.from_stream:
            return Frame(None, None, None)
        return self.get_last_image()

    def all_image_references(self, saved: bool = False) -> list[Reference]:
        """``(file, path_in_file, index, "HDF5")`` of every image of the scan published so
        far (from the first, whatever the view's range). ``saved`` changes nothing: an
        image is referenced once its detector has written it. ``ImageNotSaved`` for
        images held in the bus."""
        return self.node.references(0, -1)

    def iter_image_references(
        self, image_indices_in_scan: Iterable[int] | None = None, saved: bool = False
    ) -> Iterator[Reference]:
        """The references of the images asked for (all by default), stopping at the
        first one not published yet."""
        refs = self.node.references(0, -1)
        indices = range(len(refs)) if image_indices_in_scan is None else image_indices_in_scan
        for index in indices:
            if not 0 <= index < len(refs):
                return
            yield refs[index]

    def image_references(
        self, image_indices_in_scan: Iterable[int], saved: bool = False
    ) -> list[Reference]:
        """The references of the images asked for; RuntimeError if one is not published."""
        wanted = list(image_indices_in_scan)
        refs = list(self.iter_image_references(wanted))
        if len(refs) != len(wanted):
            raise RuntimeError(
                f"channel {self.node.name!r}: images {wanted[len(refs) :]} are not ready yet"
            )
        return refs

    def image_reference(self, image_index_in_scan: int, saved: bool = False) -> Reference:
        """The reference of one image; RuntimeError if it is not published yet."""
        return self.image_references([image_index_in_scan])[0]
