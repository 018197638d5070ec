"""Online analysis as map-reduce on the bus (``databus run``): a worker's
``process_event(event, parameters=None)`` on every point of a scan, shared among worker
processes, and a reducer's ``process_result(result, parameters=None)`` and ``finish``.
"""

from ._events import Event, Result

__all__ = ["Event", "Result"]
