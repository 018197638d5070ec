"""BLISS's ``data.events.lima``: ``ImageNotSaved`` and the acquisition status a lima view
reports (``view.status_event``)."""

from __future__ import annotations

from typing import Any

__all__ = ["ImageNotSaved", "LimaImageStatusEvent"]


class ImageNotSaved(RuntimeError):
    """Raised when saved images are asked of a detector channel that does not save them
    (a 2D channel whose frames are in the bus, not in files)."""


class LimaImageStatusEvent:
    """A lima channel's progress, as BLISS's status event reports it: ``status`` holds
    ``last_image_acquired``, ``last_image_ready`` and ``last_image_saved`` (the last frame
    index the bus references, -1 for none: every referenced frame is in its file),
    ``lima_acq_nb`` (-1) and ``server_url`` (""); each is an attribute too. ``proxy`` is
    None: no Lima server is reachable through the bus."""

    proxy = None

    def __init__(self, last_image: int) -> None:
        self.status: dict[str, Any] = {
            "server_url": "",
            "lima_acq_nb": -1,
            "last_image_acquired": last_image,
            "last_image_ready": last_image,
            "last_image_saved": last_image,
        }

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["status"][name]
        except KeyError:
            raise AttributeError(name) from None

    def __repr__(self) -> str:
        return f"<LimaImageStatusEvent {self.status}>"
