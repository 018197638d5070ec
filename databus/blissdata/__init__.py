"""blissdata's API over the bus: port a BLISS or blissdata script by changing its import
prefix from ``blissdata`` to ``databus.blissdata`` (``bliss.data`` -> ``databus.blissdata.data``
for BLISS <= 1.11).

The top level is blissdata 2.x's: ``DataStore``, ``Scan``, ``ScanState`` (with
``redis_engine``, ``streams`` and ``exceptions`` below, at blissdata's module paths).
"""

from .redis_engine.scan import Scan, ScanState
from .redis_engine.store import DataStore

__all__ = ["DataStore", "Scan", "ScanState"]
