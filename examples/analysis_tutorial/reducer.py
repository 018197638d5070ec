# The reducer of dranspose's "Getting Started - Analysis" tutorial (the deltas of the
# worker's intensities), as the tutorial writes it. `databus run` logs its finish line.
import logging

from .worker import Result, Start

logger = logging.getLogger(__name__)


class TestReducer:
    def __init__(self, *args, **kwargs):
        self.evolution = [0]
        self.last_value = 0

    def process_result(self, result, parameters=None):
        if isinstance(result.payload, Start):
            logger.info("start message")
        elif isinstance(result.payload, Result):
            logger.debug("got result %s", result.payload)
            if result.event_number > (len(self.evolution) - 1):
                self.evolution += [None] * (1 + result.event_number - len(self.evolution))
            self.evolution[result.event_number] = result.payload.intensity - self.last_value
            self.last_value = result.payload.intensity

    def finish(self, parameters=None):
        logger.info("delta were %s", self.evolution)
