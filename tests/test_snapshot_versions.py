"""Snapshot versions are a function of content: whatever the order of the sites, whatever a
builder built before, and in another process with another hash seed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from support.sites import SITE_A, SITE_B, build, site, versions_of

from snapshot import SnapshotBuilder

pytestmark = pytest.mark.envoy  # a child process

_versions = versions_of

_OTHER_PROCESS = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, sys.argv[1])
    from support.sites import SITE_A, SITE_B, build, versions_of
    print(json.dumps(versions_of(build(SITE_A, SITE_B))))
    """
)


def test_versions_are_a_function_of_content() -> None:
    sites = [SITE_A, SITE_B, site("c", "c.example.test", "svc-a", namespace="default", parsed=True)]
    one = SnapshotBuilder().build(sites).snapshot
    two = SnapshotBuilder().build(list(reversed(sites))).snapshot
    assert _versions(one) == _versions(two)
    assert one.version != build(SITE_A).version

    # a builder that has built something else first still gives the same versions
    warm = SnapshotBuilder()
    warm.build([site("x", "x.example.test", "svc-x", namespace="default", parsed=True)])
    assert _versions(warm.build(sites).snapshot) == _versions(one)

    # and so does another process, with another hash seed
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", _OTHER_PROCESS, str(Path(__file__).parent)],
        env=env,
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )
    assert json.loads(out.stdout) == _versions(build(SITE_A, SITE_B))
