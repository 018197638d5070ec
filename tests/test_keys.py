"""keys.py: names, escaping and hash tags; no server."""

import pytest

from databus._store import keys

NAMES = ["demo", "we{ird}", "a:b", "spa ce", "ünï", "%41", "}{", "x" * 10_000]


@pytest.mark.parametrize("session", NAMES)
def test_all_keys_of_a_scan_share_one_cluster_slot(session):
    scan = keys.scan("databus", session, 42)
    every = [scan, keys.scan_log(scan), keys.scan_control(scan)] + [
        keys.channel(scan, ch) for ch in ["x", "sim:gauss", "{evil}", "a b"]
    ]
    assert len({keys.hash_slot(k) for k in every}) == 1


@pytest.mark.parametrize("session", NAMES)
def test_scan_key_round_trips_and_has_exactly_one_tag(session):
    key = keys.scan("p", session, 7)
    assert keys.parse_scan(key) == ("p", session, 7)
    assert key.count("{") == 1 and key.count("}") == 1


def test_escape_keeps_common_names_readable():
    assert keys.escape("demo_session") == "demo_session"
    assert keys.channel("p:scan:{s:1}", "sim:gauss") == "p:scan:{s:1}:ch:sim%3Agauss"
    assert keys.unescape(keys.escape("a{b}:c %")) == "a{b}:c %"


def test_hash_slot_matches_the_redis_cluster_reference():
    # Values from the Redis Cluster specification (CRC16-XMODEM of the key, mod 16384).
    assert keys.hash_slot("123456789") == 0x31C3 % 16384
    assert keys.hash_slot("{user1000}.following") == keys.hash_slot("{user1000}.followers")
    # An empty tag means the whole key is hashed; the first "{" opens the tag.
    assert keys.hash_slot("foo{}{bar}") != keys.hash_slot("bar")
    assert keys.hash_slot("foo{{bar}}zap") == keys.hash_slot("{bar")


@pytest.mark.parametrize("bad", ["nope", "p:scan:{s}", "p:scan:{s:x}", ":scan:{s:1}"])
def test_parse_scan_rejects_what_is_not_a_scan_key(bad):
    with pytest.raises(ValueError, match="not a databus scan key"):
        keys.parse_scan(bad)
