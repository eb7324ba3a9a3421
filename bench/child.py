"""One benchmark task in a process of its own: `python -m bench.child --task JSON --out FILE`.

The parent runs every task this way, so each scenario starts from a clean process (its RSS
figures are its own) and a crash or a hang stays in its task. The result (figures, notes, or
the reason it was not measured) is written as JSON to FILE.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Any, NoReturn

from .harness import NotMeasured, log


def run_task(task: dict[str, Any]) -> dict[str, Any]:
    kind = task["kind"]
    quick = bool(task["quick"])
    workdir = Path(task["workdir"])
    size = int(task.get("size", 0))
    if kind == "ours":
        from .scenarios import run_ours

        return run_ours(size, quick, workdir, bool(task["change"]), bool(task["load"]))
    if kind == "nginx":
        from .scenarios import run_nginx

        return run_nginx(size, quick, workdir)
    if kind == "envoy-files":
        from .scenarios import run_envoy_files

        return run_envoy_files(size, quick, workdir)
    if kind == "memory":
        from .scenarios import run_memory

        return run_memory(quick, workdir)
    if kind == "cold":
        from .inprocess import run_cold

        return run_cold([int(s) for s in task["sizes"]], quick)
    if kind == "share":
        from .inprocess import run_share

        return run_share(size, quick)
    if kind == "groups":
        from .groups import run_groups

        return run_groups(quick)
    if kind == "fanout":
        from .inprocess import run_fanout

        return run_fanout(quick)
    if kind == "burst":
        from .inprocess import run_burst

        return run_burst(quick)
    if kind == "kubernetes":
        from .kubernetes import run_kubernetes

        return run_kubernetes(quick, workdir)
    if kind == "shards":
        from .shards import run_shards

        return run_shards(quick, workdir)
    raise ValueError(f"unknown task kind {kind!r}")


def _terminate(signum: int, _frame: object) -> NoReturn:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.child")
    parser.add_argument("--task", required=True, help="the task, as JSON")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _terminate)
    task = json.loads(args.task)
    code = 0
    try:
        result = run_task(task)
        result["status"] = "measured"
    except NotMeasured as exc:
        result = {"status": "not measured", "reason": str(exc), "figures": [], "notes": []}
    except KeyboardInterrupt:
        result = {"status": "error", "reason": "interrupted", "figures": [], "notes": []}
        code = 130
    except Exception as exc:
        log(f"{task['kind']}: failed:\n{traceback.format_exc()}")
        result = {
            "status": "error",
            "reason": f"{type(exc).__name__}: {exc}",
            "figures": [],
            "notes": [],
        }
        code = 1
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(result, default=str))
    os.replace(tmp, args.out)
    return code


if __name__ == "__main__":
    sys.exit(main())
