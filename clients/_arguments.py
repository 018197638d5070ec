"""Command-line pieces shared by the clients' commands."""

from __future__ import annotations

from collections.abc import Sequence


def parse_assignments(option: str, items: Sequence[str]) -> dict[str, str]:
    """``KEY=VALUE`` strings (of option ``option``) as a dict; ValueError naming a bad one."""
    parsed: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise ValueError(f"{option} takes KEY=VALUE, not {item!r}")
        if key in parsed:
            raise ValueError(f"{option}: key {key!r} is given twice")
        parsed[key] = value
    return parsed
