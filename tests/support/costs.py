"""Every test has exactly one cost marker: `unit`, `kubernetes` or `envoy` (a pytest plugin).

A test's own marker decides, else its module's (`pytestmark`) or class's, else the fixtures it
uses (`kmock`, `cluster`: kubernetes; `gateway`, `backends`: envoy). A test's own marker may
not differ from its module's (`-m` would see both). A collection with a test that has none, or
more than one, is refused; a `unit` test that uses a costly fixture is refused too, and one
that starts a child process (or an Envoy) fails when it does.
"""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from xds_server.local.gateway import LocalEnvoy

COSTS = ("unit", "kubernetes", "envoy")
_FIXTURE_COSTS = {"kmock": "kubernetes", "cluster": "kubernetes", "gateway": "envoy", "backends": "envoy"}


def cost_of(item: pytest.Item) -> list[str]:
    """The cost markers that decide `item`'s cost: its own if it has any, else its module's
    (or class's), else what its fixtures need."""
    own = [m.name for m in item.own_markers if m.name in COSTS]
    if own:
        return own
    inherited = [m.name for m in item.iter_markers() if m.name in COSTS]
    if inherited:
        return inherited
    fixtures = getattr(item, "fixturenames", ())
    needed = {_FIXTURE_COSTS[f] for f in fixtures if f in _FIXTURE_COSTS}
    return ["envoy"] if "envoy" in needed else sorted(needed)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Give every test its one cost marker (before `-m` selects), or refuse the collection."""
    wrong = []
    for item in items:
        costs = cost_of(item)
        if len(costs) != 1:
            wrong.append(f"{item.nodeid}: {costs or 'no cost marker'}")
            continue
        if not any(m.name == costs[0] for m in item.iter_markers()):
            item.add_marker(costs[0])
        marked = {m.name for m in item.iter_markers() if m.name in COSTS}
        if marked != set(costs):
            wrong.append(
                f"{item.nodeid}: {sorted(marked)} (a test marked apart from its module's pytestmark)"
            )
        fixtures = getattr(item, "fixturenames", ())
        if costs == ["unit"] and any(f in _FIXTURE_COSTS for f in fixtures):
            wrong.append(f"{item.nodeid}: marked unit but uses {sorted(set(fixtures) & set(_FIXTURE_COSTS))}")
    if wrong:
        raise pytest.UsageError(
            "every test needs exactly one of the markers " + ", ".join(COSTS) + ":\n  " + "\n  ".join(wrong)
        )


@pytest.fixture(autouse=True)
def _unit_tests_start_no_process(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A `unit` test that starts a child process (or an Envoy) fails at once."""
    if request.node.get_closest_marker("unit") is None:
        return

    def refused(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"a unit test started a process: {args[:1]!r}; mark it envoy")

    monkeypatch.setattr(subprocess, "Popen", refused)
    monkeypatch.setattr(LocalEnvoy, "start", refused)
