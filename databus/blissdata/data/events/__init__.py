"""BLISS's ``data.events``: what walks yield (``Event``, ``EventType``, ``EventData``, the
SDK's own types) and ``ImageNotSaved`` (``events.lima``)."""

from ...._events import Event, EventData, EventType
from .lima import ImageNotSaved, LimaImageStatusEvent

__all__ = ["Event", "EventData", "EventType", "ImageNotSaved", "LimaImageStatusEvent"]
