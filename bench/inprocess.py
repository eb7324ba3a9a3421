"""Scenarios that drive our code in this process: cold build, own share, fan-out, burst.

They watch the control plane as any observer does: `share` times the responses it is told
of, `fanout` the ACKs, and `burst` counts its publishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable
from types import MappingProxyType
from typing import Any

from snapshot.builder import BuildOptions, SnapshotBuilder
from snapshot.model import SiteKey, StaticSite
from snapshot.resources import CLUSTER_TYPE, ROUTE_TYPE
from snapshot.snapshot import Snapshot
from watcher.siteset import SiteSet
from xds_server.ads.server import AdsServer
from xds_server.ads.stream import Outgoing, StreamInfo
from xds_server.local.ads_client import AdsClient, client_class, supports_delta
from xds_server.process.control_plane import ControlPlane
from xds_server.process.observer import ObserverFuncs

from .harness import REPO_ROOT, log, rss_mb, site_object, summarize

Result = dict[str, Any]
CHANGED_TYPES = (CLUSTER_TYPE, ROUTE_TYPE)  # what adding a site changes
OPTIONS = BuildOptions(http_port=8080, listen_address="127.0.0.1", backend_host_template="127.0.0.1")


def make_sites(count: int, start: int = 0) -> dict[SiteKey, StaticSite]:
    sites = (site_object(i, 8000 + i % 4) for i in range(start, start + count))
    return {s.key: s for s in sites}


def site_set(sites: dict[SiteKey, StaticSite], changed: Iterable[SiteKey] | None = None) -> SiteSet:
    """A complete set, naming the sites changed since the previous one as the folder source does
    (None: unknown, the builder compares everything)."""
    return SiteSet(MappingProxyType(dict(sites)), changed=None if changed is None else frozenset(changed))


def add_site(sites: dict[SiteKey, StaticSite], index: int) -> list[SiteKey]:
    """Add site `index` to `sites`; return the keys changed."""
    new = make_sites(1, index)
    sites.update(new)
    return list(new)


# -- cold ----------------------------------------------------------------------------------


def cold_builds(size: int, options: BuildOptions = OPTIONS, runs: int = 3) -> list[float]:
    """The time of each of `runs` builds of `size` sites from a fresh builder, in ms."""
    sites = list(make_sites(size).values())
    samples = []
    for _ in range(runs):
        gc.collect()
        builder = SnapshotBuilder(options)
        started = time.perf_counter()
        builder.build(sites)
        samples.append((time.perf_counter() - started) * 1000)
        del builder
    gc.unfreeze()  # what the builds froze is garbage now
    gc.collect()
    return samples


def run_cold(sizes: list[int], quick: bool) -> Result:
    figures = []
    for size in sizes:
        samples = cold_builds(size)
        log(f"cold @{size}: best {min(samples):.0f} ms, median {statistics.median(samples):.0f} ms")
        figures.append(
            {
                "figure": "cold",
                "size": size,
                "best": min(samples),
                "median": statistics.median(samples),
                "samples": samples,
            }
        )
    return {"figures": figures, "notes": []}


# -- helpers for the asyncio scenarios -------------------------------------------------------


async def until(check: Callable[[], Any], within: float, what: str, interval: float = 0.005) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not check():
        if loop.time() > deadline:
            raise TimeoutError(f"timed out after {within:.0f} s waiting for {what}")
        await asyncio.sleep(interval)


async def quiet(clients: list[AdsClient], quiet_for: float = 0.1, within: float = 30) -> None:
    """Wait until no client has received anything for `quiet_for` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    last = -1
    stable_since = loop.time()
    while loop.time() < deadline:
        total = sum(sum(c.responses.values()) for c in clients)
        if total != last:
            last, stable_since = total, loop.time()
        elif loop.time() - stable_since >= quiet_for:
            return
        await asyncio.sleep(0.01)
    raise TimeoutError("the clients did not settle")


# -- share ---------------------------------------------------------------------------------


def run_share(size: int, quick: bool) -> Result:
    return asyncio.run(_share(size, 5 if quick else 20))


async def _share(size: int, changes: int) -> Result:
    sends: list[tuple[float, str, str, int]] = []

    def on_sent(info: StreamInfo, out: Outgoing) -> None:
        sends.append((time.perf_counter(), info.node_id, out.type_url, len(out.payload)))

    def sent_to(node: str, since: int) -> bool:
        return any(s[1] == node for s in sends[since:])

    plane = ControlPlane(OPTIONS, observers=[ObserverFuncs(on_sent=on_sent)])
    server = plane.server
    port = await server.start("127.0.0.1:0")
    clients: list[AdsClient] = []
    figures: list[dict[str, Any]] = []
    notes: list[str] = []
    try:
        sites = make_sites(size)
        plane.apply(site_set(sites))
        delta, why = await supports_delta(port)
        notes.append(f"share: {why}")
        main = await client_class(delta)(port, "share-main").start()
        clients.append(main)
        await until(main.has_all_types, 60, "the first responses")
        await quiet(clients)
        samples: list[float] = []
        applies: list[float] = []
        log(f"share @{size}: {changes} changes with one {'delta' if delta else 'sotw'} client")
        for k in range(changes):
            new = site_set(sites, add_site(sites, size + k))
            mark = len(sends)
            started = time.perf_counter()
            plane.apply(new)
            applies.append((time.perf_counter() - started) * 1000)
            await until(functools.partial(sent_to, "share-main", mark), 10, "a response")
            first = next(s for s in sends[mark:] if s[1] == "share-main")
            samples.append((first[0] - started) * 1000)
            await quiet(clients)
        figures.append(
            {
                "figure": "share",
                "size": size,
                **summarize(samples),
                "protocol": "delta" if delta else "sotw",
                "apply_ms": summarize(applies),
            }
        )
        # bytes on the wire for one one-site change, per protocol
        other = await client_class(not delta)(port, "share-other").start() if delta else None
        if other is not None:
            clients.append(other)
            await until(other.has_all_types, 60, "the first responses")
            await quiet(clients)
        new = site_set(sites, add_site(sites, size + changes))
        mark = len(sends)
        plane.apply(new)
        await quiet(clients, quiet_for=0.2)
        by_node: dict[str, int] = {}
        for _, node, _, nbytes in sends[mark:]:
            by_node[node] = by_node.get(node, 0) + nbytes
        sotw_node, delta_node = ("share-other", "share-main") if delta else ("share-main", None)
        figures.append(
            {
                "figure": "share-bytes",
                "size": size,
                "sotw_bytes": by_node.get(sotw_node),
                "delta_bytes": by_node.get(delta_node) if delta_node else None,
                "delta_reason": None if delta else why,
            }
        )
    finally:
        for client in clients:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), 5)
        await server.stop(grace=0.5)
    return {"figures": figures, "notes": notes}


# -- fan-out -------------------------------------------------------------------------------


class AckWatch:
    """Server side: which streams have ACKed the change being measured (via on_ack)."""

    def __init__(self) -> None:
        self.prefix = ""
        self.delta = False
        self.expected = 0
        self.targets: dict[str, str] = {}  # type -> version (state of the world)
        self.since = 0.0
        self.pending: dict[int, set[str]] = {}
        self.done: set[int] = set()
        self.finished_at = 0.0
        self.event: asyncio.Event | None = None

    def arm(self, prefix: str, delta: bool, expected: int, snapshot: Snapshot) -> None:
        self.prefix, self.delta, self.expected = prefix, delta, expected
        self.targets = {t: snapshot.of_type(t).version for t in CHANGED_TYPES}
        self.pending = {}
        self.done = set()
        self.finished_at = 0.0
        self.event = asyncio.Event()
        self.since = time.perf_counter()

    def on_ack(self, info: StreamInfo, type_url: str, version: str) -> None:
        if self.event is None or not info.node_id.startswith(self.prefix) or type_url not in self.targets:
            return
        if info.id in self.done:
            return
        # delta: any ACK of the type after the publish (the clients were quiet before it);
        # state of the world: the ACK names the version
        if not self.delta and version != self.targets[type_url]:
            return
        left = self.pending.setdefault(info.id, set(self.targets))
        left.discard(type_url)
        if not left:
            self.done.add(info.id)
            if len(self.done) >= self.expected:
                self.finished_at = time.perf_counter()
                self.event.set()


def run_fanout(quick: bool) -> Result:
    return asyncio.run(_fanout(quick))


async def _start_client(
    port: int, streams: int, prefix: str, delta: bool, stuck: bool
) -> asyncio.subprocess.Process:
    args = ["-m", "bench.fanout_client", "--port", str(port), "--streams", str(streams), "--prefix", prefix]
    if delta:
        args.append("--delta")
    if stuck:
        args.append("--stuck")
    return await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        cwd=REPO_ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=None,
    )


async def _client_ready(process: asyncio.subprocess.Process, within: float) -> None:
    assert process.stdout is not None
    async with asyncio.timeout(within):
        while True:
            line = (await process.stdout.readline()).decode()
            if line.startswith("READY"):
                return
            if not line or line.startswith("ERROR"):
                raise RuntimeError(f"the fan-out client failed: {line.strip() or 'it exited'}")


async def _stop_client(process: asyncio.subprocess.Process) -> None:
    if process.returncode is not None:
        return
    if process.stdin is not None:
        process.stdin.close()
    try:
        await asyncio.wait_for(process.wait(), 15)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()


async def _fanout(quick: bool) -> Result:
    streams = 50 if quick else 500
    size = 1000  # enough that the stuck stream's responses overflow its flow-control window
    reps = 3 if quick else 5
    stuck_changes = 20
    watch = AckWatch()
    server = AdsServer(observer=ObserverFuncs(on_ack=watch.on_ack))
    port = await server.start("127.0.0.1:0")
    builder = SnapshotBuilder(OPTIONS)
    sites = make_sites(size)
    server.publish(builder.build(sites.values()).snapshot)
    next_index = size
    figures: list[dict[str, Any]] = []
    notes: list[str] = []
    clients: list[asyncio.subprocess.Process] = []

    async def one_change(prefix: str, delta: bool, expected: int) -> float | None:
        nonlocal next_index
        sites.update(make_sites(1, next_index))
        next_index += 1
        snapshot = builder.build(sites.values()).snapshot
        watch.arm(prefix, delta, expected, snapshot)
        started = time.perf_counter()
        server.publish(snapshot)
        assert watch.event is not None
        try:
            await asyncio.wait_for(watch.event.wait(), 30)
        except TimeoutError:
            notes.append(f"fanout: only {len(watch.done)} of {expected} streams ACKed within 30 s")
            return None
        took = (watch.finished_at - started) * 1000
        await asyncio.sleep(0.2)  # let the last responses and ACKs drain
        return took

    def no_streams(prefix: str) -> bool:
        return not any(s.node_id.startswith(prefix) for s in server.streams())

    try:
        delta_ok, why = await supports_delta(port)
        notes.append(f"fanout: {why}")
        protocols = [False, True] if delta_ok else [False]
        for delta in protocols:
            proto = "delta" if delta else "sotw"
            prefix = f"fan-{proto}-"
            log(f"fanout: {streams} {proto} streams, {reps} changes")
            client = await _start_client(port, streams, prefix, delta, stuck=False)
            clients.append(client)
            await _client_ready(client, 120)
            await asyncio.sleep(0.5)
            samples = [await one_change(prefix, delta, streams) for _ in range(reps)]
            got = [s for s in samples if s is not None]
            figures.append(
                {
                    "figure": "fanout",
                    "size": streams,
                    "sites": size,
                    "protocol": proto,
                    **summarize(got),
                    "timeouts": len(samples) - len(got),
                }
            )
            await _stop_client(client)
            await until(functools.partial(no_streams, prefix), 15, "the streams to close")
        if not delta_ok:
            notes.append(f"fanout: delta streams not measured: {why}")

        # one stream that never reads, beside the others
        delta = delta_ok
        proto = "delta" if delta else "sotw"
        prefix = f"stuck-{proto}-"
        log(f"fanout: {streams} {proto} streams and one that never reads, {stuck_changes} changes")
        client = await _start_client(port, streams, prefix, delta, stuck=True)
        clients.append(client)
        await _client_ready(client, 120)
        await until(lambda: any(s.node_id == "stuck" for s in server.streams()), 15, "the stuck stream")
        await asyncio.sleep(0.5)
        gc.collect()
        before = rss_mb(os.getpid())
        samples = [await one_change(prefix, delta, streams) for _ in range(stuck_changes)]
        gc.collect()
        await asyncio.sleep(0.5)
        after = rss_mb(os.getpid())
        got = [s for s in samples if s is not None]
        stuck_info = next((s for s in server.streams() if s.node_id == "stuck"), None)
        current = server.snapshot.of_type(CLUSTER_TYPE).version if server.snapshot else ""
        # the server hands a response over just before writing it: a stream blocked on a full
        # window stays at an old cluster version while the others follow every change
        stuck_behind = stuck_info is not None and _sent_version(stuck_info, CLUSTER_TYPE) != current
        stuck_acked = stuck_info is not None and any(stuck_info.acked_version(t) for t in CHANGED_TYPES)
        figures.append(
            {
                "figure": "fanout-stuck",
                "size": streams,
                "sites": size,
                "protocol": proto,
                "stuck_protocol": "sotw",
                **summarize(got),
                "timeouts": len(samples) - len(got),
                "changes": stuck_changes,
                "rss_before_mb": before,
                "rss_after_mb": after,
                "stuck_stream_acked": stuck_acked,
                "stuck_stream_behind": stuck_behind,
            }
        )
        await _stop_client(client)
    finally:
        for client in clients:
            with contextlib.suppress(Exception):
                await _stop_client(client)
        await server.stop(grace=0.5)
    return {"figures": figures, "notes": notes}


def _sent_version(info: StreamInfo, type_url: str) -> str:
    """The version last handed to the stream for a type ('' if the server does not say)."""
    status = info.types.get(type_url)
    return str(getattr(status, "sent_version", "")) if status is not None else ""


# -- burst ---------------------------------------------------------------------------------


def run_burst(quick: bool) -> Result:
    size, changes = (200, 200) if quick else (1000, 1000)
    return asyncio.run(_burst(size, changes))


async def _burst(size: int, changes: int) -> Result:
    # The defaults, as `serve` runs them: the figure is what users get.
    plane = ControlPlane(OPTIONS)
    log(
        f"burst: hold-off {plane.hold_off * 1000:g} ms, maximum delay {plane.max_delay * 1000:g} ms (defaults)"
    )

    def publishes() -> int:
        return plane.publishes  # new snapshots only

    stop = asyncio.Event()
    burst_done = asyncio.Event()
    sites = make_sites(size)
    timing: dict[str, float] = {}

    async def source() -> AsyncIterator[SiteSet]:
        loop = asyncio.get_running_loop()
        yield site_set(sites)
        await until(lambda: publishes() >= 1, 60, "the first snapshot")
        timing["base"] = publishes()
        started = loop.time()
        for k in range(changes):
            delay = started + k / changes - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            yield site_set(sites, add_site(sites, size + k))
        timing["burst_s"] = loop.time() - started
        burst_done.set()
        await stop.wait()

    runner = asyncio.create_task(plane.run(source(), "127.0.0.1:0", stop))
    try:
        await asyncio.wait_for(burst_done.wait(), 120)
        expected = SnapshotBuilder(OPTIONS).build(sites.values()).snapshot.version
        loop = asyncio.get_running_loop()
        settle_deadline = loop.time() + 10
        last, stable_since = -1, loop.time()
        while loop.time() < settle_deadline:  # until the count has not moved for 0.5 s
            now = publishes()
            if now != last:
                last, stable_since = now, loop.time()
            elif loop.time() - stable_since >= 0.5 and plane.published is not None:
                break
            await asyncio.sleep(0.02)
        published = plane.published.version if plane.published else None
        served = plane.server.snapshot.version if plane.server.snapshot else None
        figure = {
            "figure": "burst",
            "size": size,
            "changes": changes,
            "burst_s": timing.get("burst_s", 0.0),
            "snapshots": publishes() - int(timing.get("base", 0)),
            "final_equal": published == expected and served == expected,
            "final_version": published,
            "expected_version": expected,
        }
    finally:
        stop.set()
        try:
            await asyncio.wait_for(runner, 15)
        except (TimeoutError, asyncio.CancelledError):
            runner.cancel()
    log(f"burst: {figure['snapshots']} snapshots for {changes} changes in {figure['burst_s']:.2f} s")
    return {"figures": [figure], "notes": []}
