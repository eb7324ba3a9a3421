"""Turns the tasks' results into the table (and its JSON): one row per figure, beside its target.

A verdict is given against the target at the size the target is set for; at another size
(the quick run's, say) it is shown in parentheses, as an indication only.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from . import SCENARIOS

NOT_RUN = "not run"
NOT_MEASURED = "not measured"


@dataclass
class Outcome:
    task: dict[str, Any]
    result: dict[str, Any]


@dataclass
class Row:
    figure: str
    scenario: str
    size: str
    ours: str
    target: str = "-"
    nginx: str = "-"
    envoy_files: str = "-"
    ratio: str = "-"
    verdict: str = "-"
    met: bool | None = None
    data: dict[str, Any] = field(default_factory=dict)


# -- formatting ----------------------------------------------------------------------------


def fmt_ms(value: float) -> str:
    return f"{value:.1f}" if value < 100 else f"{value:,.0f}"


def fmt_mb(value: float | None) -> str:
    return "?" if value is None else f"{value:,.0f} MB"


def fmt_bytes(value: float | None) -> str:
    if value is None:
        return "?"
    if value < 10_000:
        return f"{value:,.0f} B"
    if value < 10_000_000:
        return f"{value / 1000:,.1f} kB"
    return f"{value / 1_000_000:,.1f} MB"


def stats_cell(fig: dict[str, Any]) -> str:
    if not fig.get("n"):
        text = "no sample"
    else:
        text = f"med {fmt_ms(fig['median'])} / p99 {fmt_ms(fig['p99'])} / max {fmt_ms(fig['max'])} ms"
    if fig.get("timeouts"):
        text += f" ({fig['timeouts']} timed out)"
    if fig.get("planned") and fig.get("changes", 0) < fig["planned"]:
        text += f" ({fig['changes']} of {fig['planned']} changes: time budget)"
    return text


def load_cell(fig: dict[str, Any]) -> str:
    text = f"{fig['failed']:,} failed / {fig['sent']:,} sent ({fig['changes']} changes)"
    if fig.get("change_timeouts"):
        text += f", {fig['change_timeouts']} changes not served in time"
    return text


# -- verdicts ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    label: str
    value: float
    limit: float
    unit: str
    at_most: bool = True

    def missed_by(self) -> float:
        return self.value - self.limit if self.at_most else self.limit - self.value


def verdict(checks: Sequence[Check], at_target_size: bool, extra_miss: str = "") -> tuple[str, bool]:
    missed = [c for c in checks if c.missed_by() > 0]
    if missed:
        worst = max(missed, key=lambda c: c.missed_by() / (c.limit or 1))
        text = f"missed by {_amount(worst.missed_by(), worst.unit)}" + (
            f" ({worst.label})" if len(checks) > 1 else ""
        )
    elif extra_miss:
        text = f"missed: {extra_miss}"
    else:
        text = "met"
    ok = not missed and not extra_miss
    return (text if at_target_size else f"({text})"), ok


def _amount(value: float, unit: str) -> str:
    if unit == "ms":
        return f"{fmt_ms(value)} ms"
    if unit == "x":
        return f"{value:.1f}x"
    if unit == "MB":
        return f"{value:,.0f} MB"
    if unit == "s":
        return f"{value:.1f} s"
    return f"{value:,.0f}{(' ' + unit) if unit else ''}"


# -- the index of results ------------------------------------------------------------------


class Results:
    def __init__(self, outcomes: Iterable[Outcome]) -> None:
        self.outcomes = list(outcomes)

    def figures(self, kind: str, figure: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for o in self.outcomes:
            if o.task["kind"] == kind:
                out.extend(f for f in o.result.get("figures", []) if f["figure"] == figure)
        return out

    def figure(self, kind: str, figure: str, size: int) -> dict[str, Any] | None:
        return next((f for f in self.figures(kind, figure) if f["size"] == size), None)

    def ran(self, kind: str, size: int | None = None) -> bool:
        return any(
            o.task["kind"] == kind and (size is None or o.task.get("size") == size) for o in self.outcomes
        )

    def why(self, kind: str, size: int | None = None) -> str:
        """Why a figure of a task is missing: the task's reason, or that it did not run."""
        for o in self.outcomes:
            if o.task["kind"] == kind and (size is None or o.task.get("size") in (size, None)):
                status = o.result.get("status")
                if status == "error":
                    return f"error: {o.result.get('reason', '?')}"
                if status == "not measured":
                    return f"{NOT_MEASURED}: {o.result.get('reason', '?')}"
                return f"{NOT_MEASURED}: no figure"
        return NOT_RUN


def _cell(
    results: Results, kind: str, figure: str, size: int, show: Any
) -> tuple[str, dict[str, Any] | None]:
    fig = results.figure(kind, figure, size)
    if fig is not None:
        return show(fig), fig
    return (_short(results.why(kind, size)) if results.ran(kind) else NOT_RUN), None


def _short(reason: str) -> str:
    """In a table cell a reason is shortened; the full line is printed above the table."""
    if len(reason) <= 40:
        return reason
    return "error (see above)" if reason.startswith("error") else f"{NOT_MEASURED} (see above)"


def _status(reason: str) -> str:
    return "error" if reason.startswith("error") else NOT_MEASURED


# -- rows ----------------------------------------------------------------------------------

CHANGE_AT, CHANGE_MEDIAN, CHANGE_P99 = 10_000, 200.0, 400.0
RATIO_AT, RATIO_MIN = 20_000, 5.0
SHARE_AT, SHARE_MAX = 10_000, 10.0
FANOUT_AT, FANOUT_MAX = 500, 1000.0
STUCK_GROWTH_MB = 32.0
PLANE_AT, PLANE_MB = 10_000, 250.0
ENVOY_AT, ENVOY_MB = 20_000, 600.0
BURST_MAX = 10
COLD_TARGETS = ((10_000, 300.0), (50_000, 1500.0))
K8S_AT = 10_000
K8S_SERVED_S, K8S_STATUS_S, K8S_FAILOVER_S = 20.0, 60.0, 15.0
K8S_APPLY_MEDIAN, K8S_APPLY_P99 = 300.0, 1000.0
K8S_MB = 400.0


def build_rows(results: Results, selected: Sequence[str], sizes: Sequence[int]) -> list[Row]:
    rows: list[Row] = []
    for size in sizes:
        rows.extend(_e2e_rows(results, selected, size))
    if "cold" in selected:
        rows.extend(_cold_rows(results))
    if "share" in selected:
        rows.extend(_share_rows(results))
    if "groups" in selected:
        rows.extend(_groups_rows(results))
    if "fanout" in selected:
        rows.extend(_fanout_rows(results))
    if "memory" in selected:
        rows.extend(_memory_rows(results))
    if "burst" in selected:
        rows.extend(_burst_rows(results))
    if "kubernetes" in selected:
        rows.extend(_kubernetes_rows(results))
    if "shards" in selected:
        rows.extend(_shards_rows(results))
    return rows


def _e2e_rows(results: Results, selected: Sequence[str], size: int) -> list[Row]:
    rows: list[Row] = []
    baselines = [k for k in ("nginx", "envoy-files") if k in selected]
    if "change" in selected or baselines:
        ours, ofig = (
            _cell(results, "ours", "change", size, stats_cell) if "change" in selected else (NOT_RUN, None)
        )
        nginx, nfig = _cell(results, "nginx", "change", size, stats_cell)
        files, ffig = _cell(results, "envoy-files", "change", size, stats_cell)
        ratios = []
        if ofig and ofig.get("n") and ofig["median"] > 0:
            for name, bfig in (("nginx", nfig), ("files", ffig)):
                if bfig and bfig.get("n"):
                    ratios.append(f"{name}/ours {bfig['median'] / ofig['median']:.1f}x")
        row = Row(
            "one-site change, end to end",
            "change" if "change" in selected else baselines[0],
            str(size),
            ours,
            f"med <= {CHANGE_MEDIAN:.0f}, p99 <= {CHANGE_P99:.0f} ms (at {CHANGE_AT})",
            nginx,
            files,
            ", ".join(ratios) or "-",
            data={"ours": ofig, "nginx": nfig, "envoy_files": ffig},
        )
        if ofig and ofig.get("n"):
            checks = [
                Check("median", ofig["median"], CHANGE_MEDIAN, "ms"),
                Check("p99", ofig["p99"], CHANGE_P99, "ms"),
            ]
            timed_out = f"{ofig['timeouts']} changes timed out" if ofig.get("timeouts") else ""
            row.verdict, row.met = verdict(checks, size == CHANGE_AT, timed_out)
        elif ofig is not None:
            row.verdict, row.met = "missed: no change was served in time", False
        elif "change" in selected:
            row.verdict = _status(results.why("ours", size))
        rows.append(row)
        if "change" in selected and "nginx" in selected:
            ratio_row = Row(
                "speed-up over nginx (medians)",
                "nginx",
                str(size),
                f"med {fmt_ms(ofig['median'])} ms" if ofig and ofig.get("n") else ours,
                f"nginx/ours >= {RATIO_MIN:.0f}x (at {RATIO_AT})",
                f"med {fmt_ms(nfig['median'])} ms" if nfig and nfig.get("n") else nginx,
                "-",
            )
            if ofig and nfig and ofig.get("n") and nfig.get("n") and ofig["median"] > 0:
                ratio = nfig["median"] / ofig["median"]
                ratio_row.ratio = f"{ratio:.1f}x"
                ratio_row.data = {"ratio": ratio}
                ratio_row.verdict, ratio_row.met = verdict(
                    [Check("ratio", ratio, RATIO_MIN, "x", at_most=False)], size == RATIO_AT
                )
            else:
                ratio_row.verdict = NOT_MEASURED
            rows.append(ratio_row)
    if "load" in selected or baselines:
        ours, ofig = (
            _cell(results, "ours", "load", size, load_cell) if "load" in selected else (NOT_RUN, None)
        )
        nginx, nfig = _cell(results, "nginx", "load", size, load_cell)
        files, ffig = _cell(results, "envoy-files", "load", size, load_cell)
        row = Row(
            "failed requests under keep-alive load",
            "load" if "load" in selected else baselines[0],
            str(size),
            ours,
            "0 failed",
            nginx,
            files,
            data={"ours": ofig, "nginx": nfig, "envoy_files": ffig},
        )
        if ofig is not None:
            row.verdict, row.met = verdict([Check("failed", ofig["failed"], 0, "")], True)
        elif "load" in selected:
            row.verdict = _status(results.why("ours", size))
        rows.append(row)
    if "change" in selected or baselines:
        ofig = results.figure("ours", "change", size)
        nfig = results.figure("nginx", "change", size)
        ffig = results.figure("envoy-files", "change", size)
        rows.append(
            Row(
                "RSS after the changes",
                "change" if "change" in selected else baselines[0],
                str(size),
                f"control plane {fmt_mb(ofig['rss_control_plane_mb'])}, Envoy {fmt_mb(ofig['rss_envoy_mb'])}"
                if ofig
                else (NOT_RUN if "change" not in selected else NOT_MEASURED),
                nginx=f"{fmt_mb(nfig['rss_nginx_mb'])} (master + workers)" if nfig else "-",
                envoy_files=f"Envoy {fmt_mb(ffig['rss_envoy_mb'])}" if ffig else "-",
                data={
                    "ours": {k: ofig[k] for k in ("rss_control_plane_mb", "rss_envoy_mb")} if ofig else None,
                    "nginx": nfig["rss_nginx_mb"] if nfig else None,
                    "envoy_files": ffig["rss_envoy_mb"] if ffig else None,
                },
            )
        )
    return rows


def _missing(figure: str, scenario: str, size: str, reason: str, target: str) -> Row:
    return Row(figure, scenario, size, _short(reason), target, verdict=_status(reason))


def _cold_rows(results: Results) -> list[Row]:
    figs = results.figures("cold", "cold")
    if not figs:
        return [_missing("cold build, fresh builder", "cold", "-", results.why("cold"), "-")]
    rows = []
    for fig in figs:
        at, limit = next(((s, lim) for s, lim in COLD_TARGETS if fig["size"] <= s), COLD_TARGETS[-1])
        row = Row(
            "cold build, fresh builder",
            "cold",
            str(fig["size"]),
            f"best {fmt_ms(fig['best'])} / med {fmt_ms(fig['median'])} ms",
            f"med <= {fmt_ms(limit)} ms (at {at})",
            data=fig,
        )
        row.verdict, row.met = verdict([Check("median", fig["median"], limit, "ms")], fig["size"] == at)
        rows.append(row)
    return rows


def _share_rows(results: Results) -> list[Row]:
    rows = []
    target = f"med <= {SHARE_MAX:.0f} ms (at {SHARE_AT})"
    figs = results.figures("share", "share")
    if not figs:
        return [
            _missing("own share of a change", "share", "-", results.why("share"), target),
            _missing("bytes sent for a one-site change", "share", "-", results.why("share"), "-"),
        ]
    for fig in figs:
        row = Row(
            f"own share of a change ({fig['protocol']})",
            "share",
            str(fig["size"]),
            stats_cell(fig),
            target,
            data=fig,
        )
        if fig.get("n"):
            row.verdict, row.met = verdict(
                [Check("median", fig["median"], SHARE_MAX, "ms")], fig["size"] == SHARE_AT
            )
        else:
            row.verdict = NOT_MEASURED
        rows.append(row)
    for fig in results.figures("share", "share-bytes"):
        sotw, delta = fig.get("sotw_bytes"), fig.get("delta_bytes")
        delta_text = fmt_bytes(delta) if delta is not None else NOT_MEASURED
        rows.append(
            Row(
                "bytes sent for a one-site change",
                "share",
                str(fig["size"]),
                f"sotw {fmt_bytes(sotw)}, delta {delta_text}",
                ratio=f"sotw/delta {sotw / delta:,.0f}x" if sotw and delta else "-",
                data=fig,
            )
        )
    return rows


def _times(own: dict[str, Any], one: dict[str, Any] | None, key: str) -> str:
    """How many times the one-group figure is the own group's (medians)."""
    if one is None or not own[key].get("n") or not one[key].get("n") or own[key]["median"] <= 0:
        return "-"
    return f"one group/own {one[key]['median'] / own[key]['median']:.1f}x"


def _groups_rows(results: Results) -> list[Row]:
    figs = results.figures("groups", "groups")
    if not figs:
        why = results.why("groups")
        return [
            _missing("one-site change in 1 group: builds in other groups", "groups", "-", why, "0"),
            _missing("one-site change in 1 group: bytes to other groups' Envoys", "groups", "-", why, "0"),
        ]
    rows = []
    for fig in figs:
        one = next((f for f in results.figures("groups", "groups-one") if f["size"] == fig["size"]), None)
        where = f"1 of {fig['groups']} groups"
        size = f"{fig['groups']} x {fig['sites_per_group']:,}"
        builds = Row(
            f"one-site change in {where}: builds in other groups",
            "groups",
            size,
            f"{fig['other_builds']} in {fig['changes']} changes",
            "0",
            data=fig,
        )
        builds.verdict, builds.met = verdict([Check("builds", fig["other_builds"], 0, "")], True)
        sent = Row(
            f"one-site change in {where}: bytes to other groups' Envoys",
            "groups",
            size,
            f"{fmt_bytes(fig['other_bytes'])} ({fig['other_responses']} responses) in {fig['changes']} changes",
            "0",
        )
        sent.verdict, sent.met = verdict([Check("bytes", fig["other_bytes"], 0, "B")], True)
        own_bytes = fig["own_bytes"]
        rows += [
            builds,
            sent,
            Row(
                f"own group's build ({fig['sites_per_group']:,} sites)",
                "groups",
                size,
                stats_cell(fig["build_ms"]),
                ratio=_times(fig, one, "build_ms"),
            ),
            Row(
                f"bytes to own group's Envoy ({fig['protocol']}, median)",
                "groups",
                size,
                fmt_bytes(own_bytes),
                ratio=f"one group/own {one['own_bytes'] / own_bytes:.1f}x" if one and own_bytes else "-",
            ),
            Row(
                "apply -> first response to own group's Envoy",
                "groups",
                size,
                stats_cell(fig["first_response_ms"]),
                ratio=_times(fig, one, "first_response_ms"),
            ),
            Row("apply() of the change", "groups", size, stats_cell(fig["apply_ms"])),
        ]
        if one is not None:
            rows += [
                Row(
                    f"same change, all {one['size']:,} sites in one group: build",
                    "groups",
                    f"1 x {one['sites_per_group']:,}",
                    stats_cell(one["build_ms"]),
                    data=one,
                ),
                Row(
                    f"same change, one group: bytes to each Envoy / to all {one['envoys']} ({one['protocol']})",
                    "groups",
                    f"1 x {one['sites_per_group']:,}",
                    f"{fmt_bytes(one['own_bytes'])} / {fmt_bytes(one['all_bytes'])}"
                    f" (split: {fmt_bytes(fig['all_bytes'])} in all)",
                ),
                Row(
                    "same change, one group: apply -> first response to its Envoy",
                    "groups",
                    f"1 x {one['sites_per_group']:,}",
                    stats_cell(one["first_response_ms"]),
                ),
            ]
    return rows


def _fanout_rows(results: Results) -> list[Row]:
    target = f"<= {FANOUT_MAX:,.0f} ms (at {FANOUT_AT} streams)"
    figs = results.figures("fanout", "fanout")
    stuck = results.figures("fanout", "fanout-stuck")
    if not figs and not stuck:
        return [_missing("all streams ACK a change", "fanout", "-", results.why("fanout"), target)]
    rows = []
    for fig in figs + stuck:
        name = f"all streams ACK a change ({fig['protocol']}, {fig['sites']} sites)"
        if fig["figure"] == "fanout-stuck":
            name = f"same + 1 stuck sotw stream ({fig['protocol']}, {fig['changes']} changes)"
        row = Row(
            name,
            "fanout",
            f"{fig['size']} streams",
            stats_cell(fig),
            target,
            data=fig,
        )
        if fig.get("n"):
            timed_out = f"{fig['timeouts']} changes not ACKed by all" if fig.get("timeouts") else ""
            row.verdict, row.met = verdict(
                [Check("max", fig["max"], FANOUT_MAX, "ms")], fig["size"] == FANOUT_AT, timed_out
            )
        else:
            row.verdict = NOT_MEASURED
        rows.append(row)
    for fig in stuck:
        before, after = fig.get("rss_before_mb"), fig.get("rss_after_mb")
        row = Row(
            f"server RSS with a stuck stream, {fig['changes']} changes",
            "fanout",
            f"{fig['size']} streams",
            f"{fmt_mb(before)} -> {fmt_mb(after)}"
            + (f" ({after - before:+.0f} MB)" if before and after else "")
            + f"; stuck stream held back: {'yes' if fig.get('stuck_stream_behind') else 'NO'}",
            f"growth <= {STUCK_GROWTH_MB:.0f} MB",
            data=fig,
        )
        if before is not None and after is not None:
            row.verdict, row.met = verdict([Check("growth", after - before, STUCK_GROWTH_MB, "MB")], True)
        rows.append(row)
    return rows


def _memory_rows(results: Results) -> list[Row]:
    rows = []
    plane = results.figures("memory", "memory-plane")
    envoy = results.figures("memory", "memory-envoy")
    if not plane and not envoy:
        why = results.why("memory")
        return [
            _missing("control plane RSS", "memory", "-", why, f"<= {PLANE_MB:.0f} MB"),
            _missing("Envoy RSS", "memory", "-", why, f"<= {ENVOY_MB:.0f} MB"),
        ]

    def rss_row(fig: dict[str, Any], label: str, limit: float, at: int, where: str) -> Row:
        row = Row(
            label, "memory", str(fig["size"]), fmt_mb(fig["mb"]), f"<= {limit:.0f} MB ({where})", data=fig
        )
        if fig["mb"] is not None:
            row.verdict, row.met = verdict([Check("RSS", fig["mb"], limit, "MB")], fig["size"] == at)
        return row

    for fig in plane:
        label = f"control plane RSS, Envoy + {fig['streams'] - 1} streams"
        rows.append(rss_row(fig, label, PLANE_MB, PLANE_AT, f"at {PLANE_AT}, 100 streams"))
    for fig in envoy:
        label = f"Envoy RSS ({fig.get('api_type', '?')})"
        rows.append(rss_row(fig, label, ENVOY_MB, ENVOY_AT, f"at {ENVOY_AT}"))
    return rows


def _burst_rows(results: Results) -> list[Row]:
    figs = results.figures("burst", "burst")
    target = f"<= {BURST_MAX} snapshots, final = fresh build"
    if not figs:
        return [_missing("snapshots published for a burst", "burst", "-", results.why("burst"), target)]
    rows = []
    for fig in figs:
        row = Row(
            f"snapshots published for {fig['changes']} changes in {fig['burst_s']:.2f} s",
            "burst",
            str(fig["size"]),
            f"{fig['snapshots']} (final = fresh build: {'yes' if fig['final_equal'] else 'NO'})",
            target,
            data=fig,
        )
        row.verdict, row.met = verdict(
            [Check("snapshots", fig["snapshots"], BURST_MAX, "")],
            True,
            "" if fig["final_equal"] else "the final snapshot differs from a fresh build",
        )
        rows.append(row)
    return rows


def _seconds(value: float | None) -> str:
    return "never (timed out)" if value is None else f"{value:.1f} s"


def _kubernetes_rows(results: Results) -> list[Row]:
    figs = results.figures("kubernetes", "kubernetes")
    if not figs:
        why = results.why("kubernetes")
        return [_missing("Kubernetes mode: start -> every site served", "kubernetes", "-", why, "-")]
    return [row for fig in figs for row in _kubernetes_figure_rows(fig)]


def _kubernetes_figure_rows(fig: dict[str, Any]) -> list[Row]:
    size, at = str(fig["size"]), fig["size"] == K8S_AT
    where = f"(at {K8S_AT:,})"

    def timed(label: str, value: float | None, limit: float, ours: str, row_data: Any) -> Row:
        row = Row(label, "kubernetes", size, ours, f"<= {limit:.0f} s {where}", data=row_data)
        if value is None:
            row.verdict, row.met = ("missed: never" if at else "(missed: never)"), False
        else:
            row.verdict, row.met = verdict([Check("seconds", value, limit, "s")], at)
        return row

    unserved = fig["size"] - fig["served"]
    served = timed(
        "Kubernetes mode: start -> every site served by Envoy",
        fig["served_s"] if not unserved else None,
        K8S_SERVED_S,
        f"{_seconds(fig['served_s'])} ({fig['served']:,} of {fig['size']:,} then answered 200)",
        {k: fig[k] for k in ("served_s", "served")},
    )
    rate = f", {fig['status_rate']:,.0f} writes/s" if fig.get("status_rate") else ""
    status = timed(
        "Kubernetes mode: start -> every status written (first install)",
        fig["status_s"],
        K8S_STATUS_S,
        f"{_seconds(fig['status_s'])} ({fig['status_patches']:,} patches{rate}; "
        f"{fig['status_events']:,} Events by then)",
        {k: fig[k] for k in ("status_s", "status_patches", "status_events", "status_rate")},
    )
    restart_writes = fig["restart_patches"] + fig["restart_events"]
    restart = Row(
        "Kubernetes mode: restart over correct statuses: writes",
        "kubernetes",
        size,
        f"{fig['restart_patches']} patches, {fig['restart_events']} Events "
        f"(compared every site {fig['restart_judged_s']:.1f} s after start)",
        "0",
        data={k: fig[k] for k in ("restart_patches", "restart_events", "restart_judged_s")},
    )
    restart.verdict, restart.met = verdict([Check("writes", restart_writes, 0, "")], True)
    apply = fig["apply_ms"]
    answered = fig.get("apply_api_ms") or {}
    applied = Row(
        "Kubernetes mode: new site created (as kubectl apply) -> 200",
        "kubernetes",
        size,
        stats_cell(apply)
        + (
            f"; the API's answer to the apply med {fmt_ms(answered['median'])} / max {fmt_ms(answered['max'])} ms"
            if answered.get("n")
            else ""
        ),
        f"med <= {K8S_APPLY_MEDIAN:.0f}, p99 <= {K8S_APPLY_P99:,.0f} ms {where}",
        data={**apply, "api": answered},
    )
    if apply.get("n"):
        applied.verdict, applied.met = verdict(
            [
                Check("median", apply["median"], K8S_APPLY_MEDIAN, "ms"),
                Check("p99", apply["p99"], K8S_APPLY_P99, "ms"),
            ],
            at,
            f"{apply['timeouts']} not served in time" if apply.get("timeouts") else "",
        )
    else:
        applied.verdict, applied.met = "missed: none served in time", False
    memory = Row(
        "Kubernetes mode: control plane RSS",
        "kubernetes",
        size,
        f"{fmt_mb(fig['rss_mb'])} (peak {fmt_mb(fig['peak_rss_mb'])})",
        f"<= {K8S_MB:.0f} MB {where}",
        data={k: fig[k] for k in ("rss_mb", "peak_rss_mb")},
    )
    if fig["rss_mb"] is not None:
        memory.verdict, memory.met = verdict([Check("RSS", fig["rss_mb"], K8S_MB, "MB")], at)
    failover = timed(
        "Kubernetes mode: leader SIGKILLed -> status written by the other",
        fig["failover_status_s"],
        K8S_FAILOVER_S,
        f"{_seconds(fig['failover_status_s'])} (it led after {_seconds(fig['failover_lease_s'])})",
        {k: fig[k] for k in ("failover_status_s", "failover_lease_s")},
    )
    return [served, status, restart, applied, memory, failover]


# -- scenarios, for the JSON ---------------------------------------------------------------

SOURCES = {
    "change": ("ours", ("change",)),
    "load": ("ours", ("load",)),
    "nginx": ("nginx", ("change", "load")),
    "envoy-files": ("envoy-files", ("change", "load")),
    "cold": ("cold", ("cold",)),
    "share": ("share", ("share", "share-bytes")),
    "groups": ("groups", ("groups", "groups-one")),
    "fanout": ("fanout", ("fanout", "fanout-stuck")),
    "memory": ("memory", ("memory-plane", "memory-envoy")),
    "burst": ("burst", ("burst",)),
    "kubernetes": ("kubernetes", ("kubernetes",)),
    "shards": ("shards", ("shards",)),
}


def scenario_entries(results: Results, selected: Sequence[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name in SCENARIOS:
        if name not in selected:
            continue
        kind, figure_names = SOURCES[name]
        figures = [f for fig_name in figure_names for f in results.figures(kind, fig_name)]
        reasons, errors = [], []
        for o in results.outcomes:
            if o.task["kind"] != kind:
                continue
            status = o.result.get("status")
            where = f"{name}" + (f" @{o.task['size']}" if o.task.get("size") else "")
            if status == "error":
                errors.append(f"{where}: {o.result.get('reason')}")
            elif status == "not measured":
                reasons.append(f"{where}: {o.result.get('reason')}")
        if errors:
            status = "error"
        elif figures:
            status = "measured"
        else:
            status = "not measured"
            if not reasons:
                reasons.append(f"{name}: {NOT_RUN}")
        out[name] = {"status": status, "figures": figures, "reasons": reasons + errors}
    return out


# -- the table -----------------------------------------------------------------------------

COLUMNS = (
    ("figure", "figure"),
    ("size", "size"),
    ("ours", "ours"),
    ("target", "target"),
    ("nginx", "nginx"),
    ("envoy_files", "envoy-files"),
    ("ratio", "ratio"),
    ("verdict", "verdict"),
)


def render_table(rows: Sequence[Row]) -> str:
    cells = [[str(getattr(r, attr)) for attr, _ in COLUMNS] for r in rows]
    header = [title for _, title in COLUMNS]
    widths = [
        max(len(header[c]), *(len(row[c]) for row in cells)) if cells else len(header[c])
        for c in range(len(header))
    ]

    def line(values: Sequence[str]) -> str:
        return " | ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)).rstrip()

    out = [line(header), "-+-".join("-" * w for w in widths)]
    out.extend(line(row) for row in cells)
    if any(r.verdict.startswith("(") for r in rows):
        out.append("")
        out.append("(verdict in parentheses): measured at another size than the target's; indicative only")
    return "\n".join(out)


def rows_json(rows: Sequence[Row]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows]


# -- route shards --------------------------------------------------------------------------

SHARDS_AT, SHARDS_SMALL_AT = 100_000, 10_000
SHARDS_ADD_MEDIAN_SMALL, SHARDS_ADD_MEDIAN, SHARDS_ADD_P99 = 30.0, 50.0, 150.0
SHARDS_MOVE_MEDIAN, SHARDS_RATIO = 50.0, 2.0
SHARDS_SERVED_S, SHARDS_BUILD_MS, SHARDS_PLANE_MB = 60.0, 3000.0, 1024.0


def _shards_rows(results: Results) -> list[Row]:
    figs = results.figures("shards", "shards")
    if not figs:
        return [_missing("route shards: new site live", "shards", "-", results.why("shards"), "-")]
    by = {(f["size"], f["design"]): f for f in figs}
    sizes = sorted({f["size"] for f in figs})
    rows: list[Row] = []

    def beside(size: int, show: Any) -> str:
        single = by.get((size, "single"))
        return f"one RouteConfiguration: {show(single)}" if single else "-"

    def row(label: str, size: int, ours: str, target: str, peer: str, checks: list[Check], at: bool) -> Row:
        made = Row(f"route shards: {label}", "shards", f"{size}", ours, target, ratio=peer)
        if checks:
            made.verdict, made.met = verdict(checks, at)
        return made

    def med(stats: dict[str, Any]) -> str:
        return f"med {fmt_ms(stats['median'])} ms" if stats.get("n") else "no sample"

    for size in sizes:
        fig = by.get((size, "shards"))
        if fig is None:
            continue
        at_big, at_small = size == SHARDS_AT, size == SHARDS_SMALL_AT
        add, move = fig["add_ms"], fig["move_ms"]
        if at_small:
            checks = [Check("median", add["median"], SHARDS_ADD_MEDIAN_SMALL, "ms")] if add.get("n") else []
            target = f"med <= {SHARDS_ADD_MEDIAN_SMALL:.0f} ms (at {SHARDS_SMALL_AT:,})"
        else:
            checks = (
                [
                    Check("median", add["median"], SHARDS_ADD_MEDIAN, "ms"),
                    Check("p99", add["p99"], SHARDS_ADD_P99, "ms"),
                ]
                if add.get("n")
                else []
            )
            target = f"med <= {SHARDS_ADD_MEDIAN:.0f}, p99 <= {SHARDS_ADD_P99:.0f} ms (at {SHARDS_AT:,})"
        rows.append(
            row(
                "new site live (file -> 200)",
                size,
                stats_cell(add),
                target,
                beside(size, lambda f: med(f["add_ms"])),
                checks,
                at_big or at_small,
            )
        )
        rows.append(
            row(
                "site moved to another backend",
                size,
                stats_cell(move),
                f"med <= {SHARDS_MOVE_MEDIAN:.0f} ms (at {SHARDS_AT:,})",
                beside(size, lambda f: med(f["move_ms"])),
                [Check("median", move["median"], SHARDS_MOVE_MEDIAN, "ms")] if move.get("n") else [],
                at_big,
            )
        )
        swept = f"{fig['sweep_ok']:,} of {fig['swept']:,} swept answered 200"
        rows.append(
            row(
                "start -> every site served",
                size,
                f"{_seconds(fig['served_s'])} ({swept})",
                f"<= {SHARDS_SERVED_S:.0f} s (at {SHARDS_AT:,})",
                beside(size, lambda f: _seconds(f["served_s"])),
                [Check("seconds", fig["served_s"], SHARDS_SERVED_S, "s")],
                at_big,
            )
        )
        rows.append(
            row(
                "control plane cold build",
                size,
                f"{fmt_ms(fig['cold_build_ms'])} ms",
                f"<= {SHARDS_BUILD_MS / 1000:.0f} s (at {SHARDS_AT:,})",
                beside(size, lambda f: f"{fmt_ms(f['cold_build_ms'])} ms"),
                [Check("build", fig["cold_build_ms"], SHARDS_BUILD_MS, "ms")],
                at_big,
            )
        )
        memory_checks = (
            [Check("RSS", fig["rss_control_plane_mb"], SHARDS_PLANE_MB, "MB")]
            if fig["rss_control_plane_mb"] is not None
            else []
        )
        rows.append(
            row(
                "control plane RSS",
                size,
                fmt_mb(fig["rss_control_plane_mb"]),
                f"<= {SHARDS_PLANE_MB:,.0f} MB (at {SHARDS_AT:,})",
                beside(size, lambda f: fmt_mb(f["rss_control_plane_mb"])),
                memory_checks,
                at_big,
            )
        )
        rows.append(
            row(
                "Envoy RSS (served, after the changes)",
                size,
                f"{fmt_mb(fig['rss_envoy_mb'])}, {fmt_mb(fig.get('rss_envoy_after_mb'))}",
                "reported",
                beside(size, lambda f: f"{fmt_mb(f['rss_envoy_mb'])}, {fmt_mb(f.get('rss_envoy_after_mb'))}"),
                [],
                at_big,
            )
        )
        load = fig.get("load")
        if load is not None:
            failed = Row(
                "route shards: changes under keep-alive load",
                "shards",
                f"{size}",
                load_cell(load),
                f"0 failed (at {SHARDS_AT:,})",
                ratio=beside(size, lambda f: load_cell(f["load"]) if f.get("load") else "-"),
            )
            failed.verdict, failed.met = verdict(
                [Check("failed", load["failed"], 0, "")],
                at_big,
                f"{load['change_timeouts']} changes not served in time"
                if load.get("change_timeouts")
                else "",
            )
            rows.append(failed)
    small, big = by.get((min(sizes), "shards")), by.get((max(sizes), "shards"))
    if small and big and small is not big and small["add_ms"].get("n") and big["add_ms"].get("n"):
        ratio = big["add_ms"]["median"] / small["add_ms"]["median"]
        single_small, single_big = by.get((min(sizes), "single")), by.get((max(sizes), "single"))
        peer = "-"
        if single_small and single_big and single_small["add_ms"].get("n") and single_big["add_ms"].get("n"):
            peer = f"one RouteConfiguration: {single_big['add_ms']['median'] / single_small['add_ms']['median']:.1f}x"
        rows.append(
            row(
                f"new site median, {max(sizes):,} / {min(sizes):,} sites",
                max(sizes),
                f"{ratio:.1f}x",
                f"<= {SHARDS_RATIO:.0f}x (100,000 / 1,000)",
                peer,
                [Check("ratio", ratio, SHARDS_RATIO, "x")],
                max(sizes) == SHARDS_AT and min(sizes) == 1000,
            )
        )
    return rows
