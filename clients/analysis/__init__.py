"""Online analysis as map-reduce on the bus (``databus run``): a worker's
``process_event(event, parameters=None)`` on every point of a scan, shared among worker
processes, and a reducer's ``process_result(result, parameters=None)`` and ``finish``.
"""

from ._events import Event, Result
from ._parameters import (
    BinaryParameter,
    BoolParameter,
    FloatParameter,
    IntParameter,
    Parameters,
    StrParameter,
    UnknownAnalysis,
    UnknownParameter,
    parameter_values,
)
from ._payloads import UnknownPayloadClass, register_payload

__all__ = [
    "BinaryParameter",
    "BoolParameter",
    "Event",
    "FloatParameter",
    "IntParameter",
    "Parameters",
    "Result",
    "StrParameter",
    "UnknownAnalysis",
    "UnknownParameter",
    "UnknownPayloadClass",
    "parameter_values",
    "register_payload",
]
