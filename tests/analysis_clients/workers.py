"""Workers and reducers the analysis tests run under ``databus run`` (real processes)."""

import os
import time

import numpy as np


class IndexWorker:
    """Returns the event number, the frame's first pixel and the worker's pid; sleeps
    ``DELAY`` seconds per event (so a test can kill it mid-scan)."""

    DELAY = float(os.environ.get("ANALYSIS_TEST_DELAY", "0"))

    def process_event(self, event, parameters=None):
        time.sleep(self.DELAY)
        frame = next(iter(event.streams.values()))
        return {"event": event.event_number, "pixel": int(np.asarray(frame).flat[0])}


class FailingWorker:
    """Raises for events 3 and 5, returns a function for event 4, else the event number."""

    def process_event(self, event, parameters=None):
        if event.event_number in (3, 5):
            raise RuntimeError(f"cannot analyse event {event.event_number}")
        if event.event_number == 4:
            return {"oops": print}
        return event.event_number


class EventReducer:
    """Publishes each result's event number and payload, and the count at finish."""

    def __init__(self):
        self.count = 0

    def process_result(self, result, parameters=None):
        self.count += 1
        payload = result.payload
        value = payload["event"] if isinstance(payload, dict) else payload
        self.publish("event", value)

    def finish(self, parameters=None):
        return {"count": self.count}


class ParamWorker:
    """Returns its ``scale`` parameter and the event number, slowly."""

    @staticmethod
    def describe_parameters():
        from databus.clients.analysis import IntParameter

        return [IntParameter(name="scale", default=1, description="a factor")]

    def process_event(self, event, parameters=None):
        time.sleep(0.01)
        return {"event": event.event_number, "scale": parameters["scale"].value}


class ParamReducer:
    """Publishes each result's scale and remembers the hashes seen per scale."""

    def process_result(self, result, parameters=None):
        self.publish("scale", result.payload["scale"])
        self.publish("hash", int(result.parameters_hash[:12], 16))
