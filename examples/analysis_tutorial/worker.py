# The worker of dranspose's "Getting Started - Analysis" tutorial, as the tutorial writes
# it; only the imports of the stream1 types changed (dranspose -> databus).
import logging
from dataclasses import dataclass

import numpy as np

from databus.clients.analysis.stream1 import Stream1Data, Stream1End, Stream1Start  # noqa: F401
from databus.clients.analysis.stream1 import parse as parse_stins

logger = logging.getLogger(__name__)


@dataclass
class Start:
    filename: str


@dataclass
class Result:
    intensity: float


class TestWorker:
    def __init__(self, *args, **kwargs):
        pass

    def process_event(self, event, *args, parameters=None, **kwargs):
        logger.debug(event)
        if "xrd" in event.streams:
            acq = parse_stins(event.streams["xrd"])
            if isinstance(acq, Stream1Start):
                logger.info("start message %s", acq)
                return Start(acq.filename)
            elif isinstance(acq, Stream1Data):
                intensity = np.mean(acq.data[:2, 8:])
                logger.debug("intensity is %f", intensity)
                return Result(intensity)
