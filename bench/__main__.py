"""`python -m bench`: run the scenarios, print one table row per figure, optionally write JSON.

    python -m bench [--sizes 1000,10000,20000] [--quick] [--json FILE] [--only NAME[,NAME]]

`--sizes` sets the number of sites for the end-to-end scenarios (change, load, nginx,
envoy-files); the others use the sizes their targets are set at (cold: 10,000 and 50,000;
share: 10,000; groups: 10 gateway groups of 1,000 sites; fanout: 500 streams; memory: 10,000
sites and 100 streams, Envoy at 20,000; burst: 1,000 changes; kubernetes: 10,000 StaticSites in 100 namespaces), and `--quick` shrinks
everything (200 sites, groups of 50, few repetitions) so the whole run takes well under a
minute.

Exit status: 0 when every selected scenario ran (measured, or not measured for a stated
reason such as nginx not installed), 1 when one failed, 2 for bad
arguments, 130 when interrupted. A missed target does not change the exit status.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import SCENARIOS
from .harness import REPO_ROOT, log
from .report import Outcome, Results, build_rows, render_table, rows_json, scenario_entries

DEFAULT_SIZES = (1000, 10_000, 20_000)
QUICK_SIZES = (200,)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmarks of staticsite-xds against its targets, nginx and Envoy fed by files.",
    )
    parser.add_argument(
        "--sizes",
        help="numbers of sites for change, load, nginx and envoy-files, comma-separated "
        f"(default {','.join(map(str, DEFAULT_SIZES))}; quick {','.join(map(str, QUICK_SIZES))})",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes and few repetitions (< 1 minute)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON")
    parser.add_argument(
        "--only", metavar="NAME[,NAME]", help=f"run only these scenarios: {', '.join(SCENARIOS)}"
    )
    parser.add_argument("--timeout", type=float, help="time limit for each task, in seconds")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs) after the run")
    return parser.parse_args(argv)


def _selected(only: str | None) -> list[str]:
    if not only:
        return list(SCENARIOS)
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise ValueError(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    return [n for n in SCENARIOS if n in names]


def _sizes(text: str | None, quick: bool) -> list[int]:
    if not text:
        return list(QUICK_SIZES if quick else DEFAULT_SIZES)
    sizes = [int(s) for s in text.split(",") if s.strip()]
    if not sizes or any(s < 1 or s > 99_999 for s in sizes):
        raise ValueError("--sizes takes numbers of sites from 1 to 99999")
    return sizes


def plan(selected: Sequence[str], sizes: Sequence[int], quick: bool) -> list[dict[str, Any]]:
    """The tasks to run, each in a child process: end-to-end ones size by size, then the rest."""
    tasks: list[dict[str, Any]] = []
    for size in sizes:
        if "change" in selected or "load" in selected:
            tasks.append(
                {"kind": "ours", "size": size, "change": "change" in selected, "load": "load" in selected}
            )
        for kind in ("nginx", "envoy-files"):
            if kind in selected:
                tasks.append({"kind": kind, "size": size})
    if "cold" in selected:
        tasks.append({"kind": "cold", "sizes": [1000] if quick else [10_000, 50_000]})
    if "share" in selected:
        tasks.append({"kind": "share", "size": 1000 if quick else 10_000})
    if "groups" in selected:
        tasks.append({"kind": "groups", "size": 500 if quick else 10_000})
    for kind in ("fanout", "memory", "burst", "kubernetes", "shards"):
        if kind in selected:
            tasks.append({"kind": kind})
    for task in tasks:
        task["quick"] = quick
    return tasks


def _task_timeout(task: dict[str, Any], quick: bool, override: float | None) -> float:
    if override:
        return override
    if quick:
        return 150.0
    if task["kind"] == "shards":  # three sizes up to 100,000, two designs each
        return 3600.0
    return 900.0 + 0.1 * int(task.get("size", 0))


def _kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def run_task(task: dict[str, Any], workdir: Path, timeout: float) -> dict[str, Any]:
    """Run one task in a child process (its own process group), bounded by `timeout`."""
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / "result.json"
    task = {**task, "workdir": str(workdir)}
    cmd = [sys.executable, "-m", "bench.child", "--task", json.dumps(task), "--out", str(out)]
    process = subprocess.Popen(
        cmd, cwd=REPO_ROOT, stdout=sys.stderr, stdin=subprocess.DEVNULL, start_new_session=True
    )
    try:
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            log(f"{task['kind']}: timed out after {timeout:.0f} s; stopping it")
            _kill_group(process.pid, signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                _kill_group(process.pid, signal.SIGKILL)
                process.wait(10)
            return {
                "status": "error",
                "reason": f"timed out after {timeout:.0f} s",
                "figures": [],
                "notes": [],
            }
    except BaseException:  # Ctrl-C: the child (in its own group) is told to clean up, then killed
        _kill_group(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(30)
        _kill_group(process.pid, signal.SIGKILL)
        raise
    finally:
        _kill_group(process.pid, signal.SIGKILL)  # anything the task left behind in its group
    try:
        result: dict[str, Any] = json.loads(out.read_text())
    except (OSError, ValueError):
        return {
            "status": "error",
            "reason": f"the task exited with {process.returncode} without a result",
            "figures": [],
            "notes": [],
        }
    return result


def _label(task: dict[str, Any]) -> str:
    return str(task["kind"]) + (f" @{task['size']}" if task.get("size") else "")


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "cpus": str(os.cpu_count())}
    with contextlib.suppress(Exception):
        from xds_server.local.gateway import envoy_version

        out["envoy"] = envoy_version()
    from .baselines import nginx_binary

    binary = nginx_binary()
    if binary:
        with contextlib.suppress(Exception):
            done = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=20)
            out["nginx"] = str(done.stderr).strip().rsplit("/", 1)[-1]
    return out


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    try:
        selected = _selected(args.only)
        sizes = _sizes(args.sizes, args.quick)
    except ValueError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    tasks = plan(selected, sizes, args.quick)
    signal.signal(signal.SIGTERM, _interrupt)
    workroot = Path(tempfile.mkdtemp(prefix="staticsite-bench-"))
    started = time.monotonic()
    outcomes: list[Outcome] = []
    code = 0
    try:
        for n, task in enumerate(tasks, start=1):
            log(f"task {n}/{len(tasks)}: {_label(task)}")
            t0 = time.monotonic()
            result = run_task(
                task, workroot / f"{n:02d}-{task['kind']}", _task_timeout(task, args.quick, args.timeout)
            )
            log(
                f"task {n}/{len(tasks)}: {_label(task)}: {result.get('status')} in {time.monotonic() - t0:.1f} s"
            )
            outcomes.append(Outcome(task, result))
            if result.get("status") == "error":
                code = 1
    except KeyboardInterrupt:
        print("bench: interrupted; the table below has what was measured so far", file=sys.stderr)
        code = 130
    finally:
        if args.keep:
            log(f"work folder kept: {workroot}")
        else:
            shutil.rmtree(workroot, ignore_errors=True)

    results = Results(outcomes)
    rows = build_rows(results, selected, sizes)
    scenarios = scenario_entries(results, selected)
    lines = []
    for outcome in outcomes:
        status = outcome.result.get("status")
        if status == "not measured":
            lines.append(f"not measured: {_label(outcome.task)}: {outcome.result.get('reason')}")
        elif status == "error":
            lines.append(f"error: {_label(outcome.task)}: {outcome.result.get('reason')}")
    notes = [note for o in outcomes for note in o.result.get("notes", [])]
    for outcome in outcomes:
        for fig in outcome.result.get("figures", []):
            if fig["figure"] == "load" and fig.get("failed"):
                kinds = ", ".join(f"{k} {v}" for k, v in sorted(fig["errors"].items(), key=lambda kv: -kv[1]))
                notes.append(f"{_label(outcome.task)}: failed requests under load: {kinds}")
    for outcome in outcomes:
        for fig in outcome.result.get("figures", []):
            if fig.get("delta_reason"):
                lines.append(f"not measured: {_label(outcome.task)}: delta bytes: {fig['delta_reason']}")
    mode = "quick" if args.quick else "full"
    print(
        f"staticsite-xds benchmark ({mode}; sizes {','.join(map(str, sizes))}; scenarios {','.join(selected)})"
    )
    for line in lines:
        print(line)
    print()
    print(render_table(rows))
    if notes:
        print()
        print("notes:")
        for note in notes:
            print(f"  - {note}")
    duration = time.monotonic() - started
    print(f"\n({len(tasks)} tasks in {duration:.0f} s)")
    if args.json:
        data = {
            "meta": {
                "mode": mode,
                "sizes": sizes,
                "scenarios": selected,
                "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "duration_s": round(duration, 1),
                "versions": _versions(),
                "exit_status": code,
            },
            "scenarios": scenarios,
            "rows": rows_json(rows),
            "messages": lines,
            "notes": notes,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
