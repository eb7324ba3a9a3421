"""The `shards` scenario: what one change costs at 1,000, 10,000 and 100,000 sites, with the
routes split into route shards (scoped routes, `serve`'s default) and beside it, in the same
run, with every virtual host in one RouteConfiguration (`--route-shards 1`).

For each size and design: `serve` on a folder of sites and a real Envoy on the delta
bootstrap (stats of clusters trimmed, as `envoy/bootstrap-local.yaml` has them), then
- cold: start -> every site served (the last site written answers 200, then a sweep of a
  sample), the control plane's and Envoy's memory;
- new site live: a manifest written -> 200 through Envoy, one change at a time;
- existing site moved: its manifest rewritten with another backend -> answered by it;
- at the largest size, changes under keep-alive load: none of the requests may fail.
The control plane's cold build is timed in this process, `SnapshotBuilder.build` over every
site, with the same options as `serve`.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from snapshot.builder import DEFAULT_ROUTE_SHARDS, BuildOptions

from .harness import answering, log, site_domain
from .inprocess import cold_builds
from .scenarios import OursSystem, measure_changes, measure_load, start_ours, startup_timeout

Result = dict[str, Any]

DESIGNS = (("shards", DEFAULT_ROUTE_SHARDS), ("single", 1))
BACKENDS = 4
SWEEP = 2000  # sites swept once served, spread over all of them


def sizes(quick: bool) -> list[int]:
    return [200, 1000] if quick else [1000, 10_000, 100_000]


def changes(quick: bool) -> tuple[int, int]:
    """(changes of each kind timed one at a time, changes under load)."""
    return (5, 10) if quick else (20, 100)


def run_shards(quick: bool, workdir: Path) -> Result:
    figures: list[dict[str, Any]] = []
    notes: list[str] = []
    timed, under_load = changes(quick)
    all_sizes = sizes(quick)
    for size in all_sizes:
        for design, shards in DESIGNS:
            figure: dict[str, Any] = {"figure": "shards", "size": size, "design": design, "shards": shards}
            options = BuildOptions(
                listen_address="127.0.0.1", backend_host_template="127.0.0.1", route_shards=shards
            )
            figure["cold_build_ms"] = min(cold_builds(size, options))
            with ExitStack() as stack:
                log(f"shards @{size} ({design}): starting the control plane and Envoy")
                started = time.perf_counter()
                ours = start_ours(
                    stack,
                    workdir / f"{design}-{size}",
                    size,
                    BACKENDS,
                    extra=["--route-shards", str(shards), "--max-sites", str(size + 1000)],
                )
                figure["served_s"] = time.perf_counter() - started
                step = max(1, size // SWEEP)
                hosts = [site_domain(i) for i in range(0, size, step)]
                figure["swept"] = len(hosts)
                figure["sweep_ok"] = answering(ours.http_port, hosts, startup_timeout(size))
                figure["rss_control_plane_mb"] = ours.plane.rss_mb()
                figure["rss_envoy_mb"] = ours.envoy_mb()
                system = OursSystem(ours.sites_dir, ours.http_port)
                log(f"shards @{size} ({design}): {timed} new sites, then {timed} moves")
                figure["add_ms"] = measure_changes(system, ours.backends, size, timed, 600)
                figure["move_ms"] = measure_changes(
                    system, ours.backends, size, timed, 600, moves=list(range(0, size, max(1, size // timed)))
                )
                if size == all_sizes[-1]:
                    log(f"shards @{size} ({design}): {under_load} changes under keep-alive load")
                    figure["load"] = measure_load(
                        system, ours.backends, size, size + timed, under_load, quick
                    )
                figure["rss_envoy_after_mb"] = ours.envoy_mb()
                if not ours.plane.alive():
                    raise RuntimeError("the control plane exited during the scenario")
            figures.append(figure)
            log(
                f"shards @{size} ({design}): served {figure['served_s']:.1f} s, new site med "
                f"{figure['add_ms'].get('median', float('nan')):.0f} ms, move med "
                f"{figure['move_ms'].get('median', float('nan')):.0f} ms"
            )
    notes.append(
        f"shards: `serve --route-shards {DEFAULT_ROUTE_SHARDS}` (the default) beside `--route-shards 1`, "
        "each with a real Envoy on the delta bootstrap; cold build in this process"
    )
    return {"figures": figures, "notes": notes}
