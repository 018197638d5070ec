"""Old path of ``Scan`` (blissdata 1.x), kept as blissdata 2.x keeps it; use
``databus.blissdata``."""

import warnings

from .redis_engine.scan import Scan

warnings.warn(
    "'databus.blissdata.scan' is deprecated, use 'databus.blissdata' instead.",
    FutureWarning,
    stacklevel=2,
)

__all__ = ["Scan"]
