"""The age of a site: creationTimestamp, then when a control plane first saw it (which orders
sites created in the same second), then namespace/name."""

from __future__ import annotations

import itertools

import pytest
from support.sites import site

from snapshot.model import parse_site, recorded_first_seen, seniority
from watcher.siteset import FirstSeen, format_first_seen

pytestmark = pytest.mark.unit

SECOND = "2026-12-03T09:00:00Z"


def test_creation_time_then_first_sighting_then_name_decide_the_order() -> None:
    older = site("zeta", created="2026-12-03T08:59:59Z", first_seen="2026-12-03T09:00:05.000000Z")
    first = site("yank", created=SECOND, first_seen="2026-12-03T09:00:00.100000Z")
    second = site("alpha", created=SECOND, first_seen="2026-12-03T09:00:00.200000Z")
    unseen = site("beta", created=SECOND)
    tied = site("aardvark", created=SECOND, first_seen="2026-12-03T09:00:00.200000Z")
    undated = site("gamma", first_seen="2026-12-03T08:00:00.000000Z")
    order = sorted([undated, unseen, second, tied, first, older], key=seniority)
    assert [s.key.name for s in order] == ["zeta", "yank", "aardvark", "alpha", "beta", "gamma"]


def test_a_recorded_first_sighting_is_read_from_the_status_and_nothing_else_is() -> None:
    doc = {
        "apiVersion": "staticsite-xds.dev/v1alpha1",
        "kind": "StaticSite",
        "metadata": {"name": "a", "namespace": "docs", "creationTimestamp": SECOND},
        "spec": {"domain": "a.example.test", "backend": {"serviceName": "s", "servicePort": 80}},
        "status": {"firstSeen": "2026-12-03T09:00:00.250000Z"},
    }
    assert parse_site(doc).first_seen == "2026-12-03T09:00:00.250000Z"
    for wrong in ("2026-12-03T09:00:00Z", "yesterday", 12, None, "2026-12-03T09:00:00.25Z"):
        assert recorded_first_seen(wrong) is None
        assert parse_site({**doc, "status": {"firstSeen": wrong}}).first_seen is None
    assert parse_site({**doc, "status": "garbage"}).first_seen is None


def test_stamps_only_grow_and_a_recorded_one_is_kept() -> None:
    clock = iter([100.0, 99.0, 99.0, 101.5])  # the wall clock steps back, then on
    seen = FirstSeen(clock=lambda: next(clock))
    a, b, c, d = (seen.stamp(site(name)) for name in "abcd")
    stamps = [s.first_seen for s in (a, b, c, d)]
    assert stamps == sorted(stamps)
    assert len(set(stamps)) == 4
    assert stamps[0] == format_first_seen(100_000_000) == "1970-01-01T00:01:40.000000Z"
    assert stamps[3] == "1970-01-01T00:01:41.500000Z"
    assert seen.stamp(site("a")).first_seen == stamps[0]  # seen again: the same age
    recorded = site("e", first_seen="2026-12-03T09:00:00.000001Z")
    assert seen.stamp(recorded) is recorded
    assert seen.stamp(site("e")).first_seen == "2026-12-03T09:00:00.000001Z"  # and kept


def test_sites_seen_together_are_of_one_age_and_a_forgotten_site_is_seen_anew() -> None:
    ticks = itertools.count(1000)
    seen = FirstSeen(clock=lambda: float(next(ticks)))
    with seen.together():
        early = [seen.stamp(site(name)).first_seen for name in ("a", "b", "c")]
    late = seen.stamp(site("d")).first_seen
    assert len(set(early)) == 1
    assert late is not None
    assert late > early[0]
    seen.forget([site("a").key])
    assert site("a").key not in seen
    again = seen.stamp(site("a")).first_seen
    assert again is not None
    assert again > late
