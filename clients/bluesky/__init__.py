"""bluesky both ways: bus scans as event-model documents over bluesky's 0MQ wire, bluesky
runs (a RunEngine callback or an existing 0MQ proxy) into the bus, and ophyd signals backed
by shared channels for suspenders."""

from .from_bluesky import FromBluesky, FromBlueskyStatistics
from .publisher import BusPublisher, PublisherStatistics
from .to_bluesky import ToBluesky, ToBlueskyStatistics

__all__ = [
    "BusPublisher",
    "FromBluesky",
    "FromBlueskyStatistics",
    "PublisherStatistics",
    "ToBluesky",
    "ToBlueskyStatistics",
]
