"""The benchmark's quick run: it completes, prints its table, and accounts for every scenario.

It runs `python -m bench --quick` as a real process (which starts our control plane, Envoy,
nginx when installed, and ADS clients on free loopback ports). Targets are not asserted here
(the quick sizes are not the targets' sizes); what is asserted is that every scenario either
measured something or says why it did not.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.envoy

REPO_ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = tuple(
    "change load nginx envoy-files cold share groups fanout memory burst kubernetes shards".split()  # noqa: SIM905
)
TABLE_HEADER = ("figure", "size", "ours", "target", "nginx", "envoy-files", "ratio", "verdict")


def _numbers(value: Any) -> bool:
    """True when a figure holds at least one measured number."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return True
    if isinstance(value, dict):
        return any(_numbers(v) for k, v in value.items() if k not in ("size", "changes"))
    if isinstance(value, list):
        return any(_numbers(v) for v in value)
    return False


def _quick_bench(out: Path, timeout: float, *only: str) -> subprocess.CompletedProcess[str]:
    """`python -m bench --quick` (only the scenarios named, if any), writing its JSON to `out`;
    it must exit 0."""
    selection = ["--only", ",".join(only)] if only else []
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", *selection, "--json", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr (end):\n{done.stderr[-6000:]}"
    return done


@pytest.mark.timeout(320)
def test_quick_benchmark_reports_every_scenario(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = _quick_bench(out, 300)

    lines = done.stdout.splitlines()
    headers = [line for line in lines if [c.strip() for c in line.split("|")] == list(TABLE_HEADER)]
    assert len(headers) == 1, done.stdout

    data = json.loads(out.read_text())
    assert set(data["scenarios"]) == set(SCENARIOS)
    for name in SCENARIOS:
        entry = data["scenarios"][name]
        assert entry["status"] in ("measured", "not measured"), (name, entry)
        if entry["status"] == "measured":
            assert entry["figures"], name
            assert all(_numbers(f) for f in entry["figures"]), (name, entry["figures"])
        else:
            assert entry["reasons"], (name, entry)
            assert all(r.strip() for r in entry["reasons"]), (name, entry)
            assert any(line.startswith("not measured:") for line in lines), done.stdout

    rows = data["rows"]
    assert {row["scenario"] for row in rows} >= set(SCENARIOS) - {"nginx", "envoy-files"}
    for row in rows:
        assert row["verdict"], row
        assert row["figure"] in done.stdout


@pytest.mark.timeout(150)
def test_quick_groups_keep_a_change_within_its_gateway_group(tmp_path: Path) -> None:
    """10 gateway groups of 50 sites, one ADS client each: a one-site change is built in its
    own group only and sent to its own group's Envoy only; the one-group contrast sends it to all."""
    out = tmp_path / "bench.json"
    _quick_bench(out, 140, "groups")
    figures = {f["figure"]: f for f in json.loads(out.read_text())["scenarios"]["groups"]["figures"]}
    split, one = figures["groups"], figures["groups-one"]
    assert split["built_groups"] == [[group] for group in split["changed_groups"]]
    assert split["other_bytes_per_change"] == [0] * split["changes"]
    assert split["other_responses"] == 0
    assert all(n > 0 for n in split["own_bytes_per_change"])
    assert split["first_response_ms"]["n"] == split["changes"]
    assert all(n > 0 for n in one["other_bytes_per_change"])
