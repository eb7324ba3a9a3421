"""Shared fixtures (sample backends, a gateway, a folder of manifests, a Kubernetes API) and
the cost of every test.

Every test carries exactly one cost marker, so that a subset can be chosen by what it needs:

- `unit`: nothing but this process: no child process, no Envoy, no Kubernetes emulator. The
  protocol rules run on the pure stream classes; the few tests of what only the server loop
  shows (the node of the first request, unknown types, publish waking streams, a stream that
  skips what it missed, a failing observer) talk gRPC over loopback within this process, and
  the metrics and inspection tests do too.
- `kubernetes`: kmock's Kubernetes API emulator (any test using the `kmock` or `cluster` fixture).
- `envoy`: a real Envoy or any child process (the control plane, the CLI, a wheel build).

A test's own marker wins over its module's (`pytestmark`); a test with neither gets `kubernetes`
or `envoy` from the fixtures it uses. A test left without one fails the collection, and a `unit`
test that starts a process fails.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from support.processes import Gateway, running_gateway

from xds_server.local.gateway import LocalEnvoy
from xds_server.local.sample_backend import SampleBackend

if TYPE_CHECKING:
    from support.kubernetes import Cluster

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


@pytest.fixture
def backends() -> Iterator[Callable[[str], SampleBackend]]:
    """A factory of sample backends on free loopback ports, all stopped after the test."""
    started: list[SampleBackend] = []

    def make(name: str) -> SampleBackend:
        backend = SampleBackend(name).start()
        started.append(backend)
        return backend

    yield make
    for backend in started:
        backend.stop()


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    """A running control plane (a real process) and a real Envoy, on free loopback ports."""
    with running_gateway(tmp_path) as gw:
        yield gw


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """An empty folder for manifests: `tmp_path`/sites."""
    folder = tmp_path / "sites"
    folder.mkdir()
    return folder


@pytest.fixture
def cluster(kmock: Any) -> Cluster:
    """kmock's Kubernetes API emulator, showing our resources, and the test's client of it."""
    from support.kubernetes import Cluster, declare_resources  # kopf is loaded by the tests that need it

    declare_resources(kmock)
    return Cluster(kmock)
