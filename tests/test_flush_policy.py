"""FlushPolicy and FlushTimers: the sink's decisions, without a server."""

import pytest

from databus._flush_policy import Admission, FlushPolicy, FlushTimers, FullServer, Job


def test_flush_when_pending_and_nothing_in_flight():
    policy = FlushPolicy()
    assert policy.should_flush(pending=True, in_flight=False)
    assert not policy.should_flush(pending=True, in_flight=True)
    assert not policy.should_flush(pending=False, in_flight=False)


def test_admission_blocks_or_drops_when_full():
    policy = FlushPolicy(max_buffer_bytes=100)
    assert policy.admit(0, 10, lossy=False) is Admission.ACCEPT
    assert policy.admit(90, 10, lossy=False) is Admission.ACCEPT
    assert policy.admit(91, 10, lossy=False) is Admission.BLOCK
    assert policy.admit(91, 10, lossy=True) is Admission.DROP_OLDEST


def test_a_block_bigger_than_the_buffer_goes_when_the_buffer_is_empty():
    policy = FlushPolicy(max_buffer_bytes=100)
    assert policy.admit(0, 1000, lossy=False) is Admission.ACCEPT
    assert policy.admit(1, 1000, lossy=False) is Admission.BLOCK


def test_policy_checks_its_arguments():
    with pytest.raises(ValueError, match="must be > 0"):
        FlushPolicy(max_buffer_bytes=0)


def test_a_flush_takes_at_most_half_the_buffer():
    assert FlushPolicy(max_buffer_bytes=2**30).flush_budget == 32 * 2**20
    assert FlushPolicy(max_buffer_bytes=2 * 2**20).flush_budget == 2**20
    assert FlushPolicy(max_buffer_bytes=1).flush_budget == 1


def test_flushes_are_spaced_by_the_readers_they_wake():
    policy = FlushPolicy()
    assert policy.pace(0) == 0
    assert policy.pace(1) == pytest.approx(0.0005)  # no delay for one reader at 1 kHz
    assert policy.pace(20) == pytest.approx(0.01)
    assert policy.pace(1000) == policy.max_pace_s  # bounded: what it adds to latency
    with pytest.raises(ValueError, match="wake_budget"):
        FlushPolicy(wake_budget=0)


def _timers(**kw):
    return FlushTimers(FlushPolicy(), 100.0, running_ttl=8.0, bus_full_timeout=30.0, **kw)


def test_the_first_flush_runs_the_guard_and_counts_readers_then_once_a_second():
    timers = _timers()
    assert timers.with_flush(100.0) == [Job.GUARD, Job.COUNT_READERS]
    assert timers.with_flush(100.5) == []
    assert timers.with_flush(101.0) == [Job.GUARD, Job.COUNT_READERS]
    assert timers.with_flush(102.0) == [Job.REFRESH, Job.GUARD, Job.COUNT_READERS]
    assert Job.REFRESH not in timers.with_flush(103.9)
    assert Job.REFRESH in timers.with_flush(104.0)  # every running_ttl / 4


def test_an_idle_flusher_refreshes_or_checks_the_connection_when_due():
    timers = _timers(heartbeat_s=1.0)
    assert timers.when_idle(100.5) is None
    assert timers.idle_wait(100.5) == pytest.approx(0.5)
    assert timers.when_idle(101.0) is Job.HEARTBEAT
    assert timers.when_idle(101.0) is Job.HEARTBEAT  # until the server answers
    timers.sent(101.0)
    assert timers.when_idle(101.5) is None and timers.idle_wait(101.5) == pytest.approx(0.5)
    assert timers.when_idle(102.0) is Job.REFRESH  # a refresh checks the connection too
    assert timers.idle_wait(102.0) == pytest.approx(0.0)
    timers.sent(102.0)
    assert timers.idle_wait(102.0) == pytest.approx(1.0)


def test_flushes_are_paced_by_the_most_readers_of_the_last_counts():
    timers = _timers()
    policy = timers.policy
    timers.flushing(100.0)
    assert timers.flush_wait(100.0) == 0.0  # no readers: no pace
    timers.readers_counted(20)
    assert timers.pace == policy.pace(20)
    for _ in range(4):
        timers.readers_counted(1)
    assert timers.pace == policy.pace(20)  # still among the last five counts
    timers.readers_counted(1)
    assert timers.pace == policy.pace(1)
    assert timers.flush_wait(100.0) == pytest.approx(policy.pace(1))
    timers.readers_counted(None)  # they cannot be counted: unpaced from now on
    timers.readers_counted(20)
    assert timers.pace == 0.0
    assert Job.COUNT_READERS not in timers.with_flush(200.0)


def test_a_full_server_is_waited_for_until_bus_full_timeout():
    timers = _timers()
    assert timers.server_has_room(100.0) is None
    assert timers.server_full(100.0) is FullServer.FIRST
    assert timers.server_full(120.0) is FullServer.WAIT
    assert timers.server_full(130.0) is FullServer.WAIT
    assert timers.server_full(130.1) is FullServer.GIVE_UP
    assert timers.server_has_room(131.0) == pytest.approx(31.0)
    assert timers.server_has_room(132.0) is None
    assert timers.server_full(140.0) is FullServer.FIRST
