"""FlushPolicy: the sink's decisions, without a server."""

import pytest

from databus._sink import Admission, FlushPolicy


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
