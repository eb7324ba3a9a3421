"""Inspection: which Envoys are connected, what each has ACKed, and who is behind.

The same report is served two ways: as JSON over HTTP (`GET /debug/envoys` on the metrics
port) and as the gRPC method `staticsite_xds.v1.Inspection/ListEnvoys` on the xDS port, which
`staticsite-xds status` calls. The gRPC method takes and returns JSON bytes (a request of `{}`
or nothing at all), so no client needs generated code.

An Envoy is *behind* when, for some resource type it subscribed to, the version it last ACKed
is not the current snapshot's version of that type. `behind` is the one definition of it;
the metrics use it too.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import grpc

from snapshot.model import SiteKey
from snapshot.resources import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    SCOPED_ROUTE_TYPE,
    SECRET_TYPE,
    TYPE_ORDER,
)
from snapshot.snapshot import DEFAULT_GROUP, Snapshot
from snapshot.verdict import Phase, SiteState
from watcher.siteset import SiteSet
from watcher.status import StatusLog

from ..ads.server import AdsServer
from ..ads.stream import StreamInfo, short
from .tls import TlsFileError, channel_credentials

INSPECTION_SERVICE = "staticsite_xds.v1.Inspection"
LIST_ENVOYS = f"/{INSPECTION_SERVICE}/ListEnvoys"
DEFAULT_TIMEOUT = 5.0  # seconds the status command waits for an answer
MAX_REPORT_BYTES = 256 * 1024 * 1024  # every site's state, at some 200 bytes a site, fits

# How the table names the types (by their short names): the xDS service that carries each.
_SERVICE_NAMES = {
    short(CLUSTER_TYPE): "CDS",
    short(ENDPOINT_TYPE): "EDS",
    short(SECRET_TYPE): "SDS",
    short(LISTENER_TYPE): "LDS",
    short(SCOPED_ROUTE_TYPE): "SRDS",
    short(ROUTE_TYPE): "RDS",
}


class PlaneView(Protocol):
    """What operators are shown of a control plane (a `ControlPlane` is one)."""

    @property
    def server(self) -> AdsServer: ...

    @property
    def publishes(self) -> int: ...

    @property
    def status(self) -> StatusLog: ...

    @property
    def sites(self) -> SiteSet:
        """The sites of the last build."""
        ...

    @property
    def rejections_found(self) -> int:
        """Sites found to cause an Envoy's rejection since start, in every gateway group."""
        ...

    @property
    def searches(self) -> int:
        """Rejections that needed a search by halves, in every gateway group."""
        ...


def behind(info: StreamInfo, snapshot: Snapshot | None) -> bool:
    """True when the stream has not ACKed the current version of some type it subscribed to.

    A response that also carried resources held back from an older snapshot has a version of
    its own, so a stream that ACKed it is still behind until it ACKs the snapshot's.
    """
    if snapshot is None:
        return False
    types = snapshot.types
    for type_url, status in info.types.items():
        rset = types.get(type_url)
        if rset is not None and status.acked_version != rset.version:
            return True
    return False


def _timestamp(at: float) -> str | None:
    """Seconds since the epoch as RFC 3339 UTC (None for never)."""
    if not at:
        return None
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def envoy_report(info: StreamInfo, snapshot: Snapshot | None) -> dict[str, Any]:
    """One connected Envoy, as JSON-able data."""
    nack = info.last_nack
    return {
        "node_id": info.node_id,
        "gateway_group": info.group,
        "declared_group": info.cluster,
        "client_names": list(info.client_names),
        "variant": info.variant,
        "peer": info.peer,
        "connected_since": _timestamp(info.opened_at),
        "behind": behind(info, snapshot),
        "types": {
            short(type_url): {
                "acked_version": status.acked_version,
                "held_back": status.acked_extra,
                "acked_at": _timestamp(status.acked_at),
                "sent_version": status.sent_version,
            }
            for type_url, status in sorted(info.types.items(), key=lambda item: _type_rank(item[0]))
        },
        "last_nack": None
        if nack is None
        else {
            "type": short(nack.type_url),
            "version": nack.version,
            "message": nack.message,
            "at": _timestamp(nack.at),
        },
    }


def _type_rank(type_url: str) -> int:
    return TYPE_ORDER.index(type_url) if type_url in TYPE_ORDER else len(TYPE_ORDER)


def _snapshot_report(snapshot: Snapshot, generation: int) -> dict[str, Any]:
    return {
        "version": snapshot.version,
        "generation": generation,
        "types": {short(t): snapshot.of_type(t).version for t in TYPE_ORDER},
    }


def server_report(server: AdsServer, generation: int) -> dict[str, Any]:
    """Every connected Envoy and the snapshot each group should hold, as JSON-able data.

    `snapshot` is the default group's (`generation`: the publishes of the process), and
    `snapshots` every group's, by group, each with the publishes made for it.
    """
    snapshots = server.snapshots
    default = server.snapshot
    streams = sorted(server.streams(), key=lambda info: (info.group, info.node_id, info.id))
    return {
        "snapshot": None if default is None else _snapshot_report(default, generation),
        "snapshots": {
            group: _snapshot_report(snapshot, server.generations.get(group, 0))
            for group, snapshot in sorted(snapshots.items())
        },
        "envoys": [envoy_report(info, snapshots.get(info.group)) for info in streams],
    }


def sites_report(
    sites: SiteSet, states: Mapping[SiteKey, SiteState], *, all_sites: bool = False
) -> dict[str, Any]:
    """Every site's state as the control plane judged it: how many are in each phase, and the
    sites that are not Provisioned (every site with `all_sites`), each with its domain, its
    gateway group, phase, reason and message."""
    phases: dict[str, int] = {}
    listed: list[dict[str, Any]] = []
    for key in sorted(states):
        state = states[key]
        phases[state.phase.value] = phases.get(state.phase.value, 0) + 1
        if not all_sites and state.phase is Phase.PROVISIONED:
            continue
        site = sites.sites.get(key)
        listed.append(
            {
                "namespace": key.namespace,
                "name": key.name,
                "domain": None if site is None else site.domain,
                "gateway_group": None if site is None else site.gateway_group or DEFAULT_GROUP,
                "phase": state.phase.value,
                "reason": state.reason,
                "message": state.message,
            }
        )
    return {"total": len(states), "phases": dict(sorted(phases.items())), "all": all_sites, "listed": listed}


def report(plane: PlaneView) -> dict[str, Any]:
    """The inspection report of a control plane (`/debug/envoys`): its Envoys and snapshots."""
    return server_report(plane.server, plane.publishes)


def status_report(plane: PlaneView, *, all_sites: bool = False) -> dict[str, Any]:
    """What `staticsite-xds status` is told: the inspection report, and the sites' states."""
    data = report(plane)
    data["sites"] = sites_report(plane.sites, plane.status.states(), all_sites=all_sites)
    return data


# -- the gRPC method on the xDS port ---------------------------------------------------------


class Inspection:
    """Serves `staticsite_xds.v1.Inspection/ListEnvoys` on the xDS port."""

    def __init__(self, source: Callable[[Mapping[str, Any]], Mapping[str, Any]]) -> None:
        self.source = source  # given the request: {"sites": "all"} asks for every site's state

    def register(self, server: grpc.aio.Server) -> None:
        method = grpc.unary_unary_rpc_method_handler(
            self._list_envoys, request_deserializer=_as_bytes, response_serializer=_as_bytes
        )
        server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler(INSPECTION_SERVICE, {"ListEnvoys": method})]
        )

    async def _list_envoys(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        asked: Any = {}
        if request.strip():
            try:
                asked = json.loads(request)
            except ValueError:
                asked = None
            if not isinstance(asked, dict):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the request must be a JSON object")
        return json.dumps(self.source(asked)).encode()


def _as_bytes(payload: bytes) -> bytes:
    return payload


# -- the client: `staticsite-xds status` -----------------------------------------------------


class Unreachable(Exception):
    """The control plane did not answer the inspection call."""


def inspection_channel(address: str, credentials: grpc.ChannelCredentials | None = None) -> grpc.Channel:
    """A channel to the xDS port at `address` (host:port): TLS with `credentials`, else plain."""
    options = [("grpc.max_receive_message_length", MAX_REPORT_BYTES)]
    if credentials is None:
        return grpc.insecure_channel(address, options)
    return grpc.secure_channel(address, credentials, options)


def list_envoys(
    address: str,
    *,
    credentials: grpc.ChannelCredentials | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    all_sites: bool = False,
) -> dict[str, Any]:
    """Ask the control plane at `address` for its inspection report (with every site's state
    when `all_sites`, else only those of the sites that are not Provisioned)."""
    with inspection_channel(address, credentials) as channel:
        call = channel.unary_unary(LIST_ENVOYS, request_serializer=_as_bytes, response_deserializer=_as_bytes)
        request = json.dumps({"sites": "all"} if all_sites else {}).encode()
        try:
            answer = call(request, timeout=timeout)
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            if code is grpc.StatusCode.DEADLINE_EXCEEDED:
                raise Unreachable(f"no answer from {address} within {timeout:g} s") from None
            if code is grpc.StatusCode.UNIMPLEMENTED:
                raise Unreachable(f"{address} does not serve {INSPECTION_SERVICE}") from None
            detail = exc.details() if isinstance(exc, grpc.Call) else str(exc)
            raise Unreachable(f"cannot reach the control plane at {address}: {detail}") from None
    data: dict[str, Any] = json.loads(answer)
    return data


def print_status(
    address: str,
    *,
    tls_ca: Path | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    as_json: bool = False,
    all_sites: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
) -> int:
    """`staticsite-xds status`: print the report of the control plane at `address` (a table,
    or JSON); 0, or 1 if it did not answer, or 2 for unusable TLS files."""
    credentials = None
    if tls_ca or tls_cert or tls_key:
        try:
            credentials = channel_credentials(tls_ca, tls_cert, tls_key)
        except TlsFileError as exc:
            print(f"staticsite-xds: {exc}", file=sys.stderr)
            return 2
    try:
        data = list_envoys(address, credentials=credentials, timeout=timeout, all_sites=all_sites)
    except Unreachable as exc:
        print(f"staticsite-xds: {exc}", file=sys.stderr)
        return 1
    if as_json:
        json.dump(data, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(format_table(data))
        sites = format_sites(data.get("sites"))
        if sites:
            sys.stdout.write("\n" + sites)
    return 0


def _version(version: str, held_back: bool) -> str:
    """A version short enough for a table (the first 8 hex digits; `+` if clusters are held)."""
    return version[:8] + ("+" if held_back else "") if version else "-"


def _versions(types: Mapping[str, tuple[str, bool]]) -> str:
    return " ".join(
        f"{_SERVICE_NAMES.get(name, name)}:{_version(version, held)}"
        for name, (version, held) in types.items()
    )


def _ago(at: str | None, now: float) -> str:
    if at is None:
        return ""
    seconds = max(0, int(now - datetime.fromisoformat(at).timestamp()))
    if seconds < 60:
        return f"{seconds}s ago"
    if seconds < 3600:
        return f"{seconds // 60}m ago"
    return f"{seconds // 3600}h ago"


def _nack_summary(nack: Mapping[str, Any] | None, now: float, width: int = 60) -> str:
    if nack is None:
        return "-"
    message = " ".join(str(nack["message"]).split())
    if len(message) > width:
        message = message[: width - 1] + "…"
    return f"{_SERVICE_NAMES.get(nack['type'], nack['type'])} {_ago(nack['at'], now)}: {message}"


def _snapshot_line(snapshot: Mapping[str, Any]) -> str:
    return (
        f"snapshot {snapshot['version']} (generation {snapshot['generation']}): "
        f"{_versions({name: (version, False) for name, version in snapshot['types'].items()})}"
    )


def format_table(data: Mapping[str, Any], now: float | None = None) -> str:
    """The inspection report as a table for people."""
    now = time.time() if now is None else now
    snapshot = data.get("snapshot")
    groups: Mapping[str, Any] = data.get("snapshots") or {}
    envoys = data.get("envoys", [])
    lines: list[str] = []
    if set(groups) - {DEFAULT_GROUP}:  # several groups (or another than the default): one line each
        lines.extend(f"gateway group {group}: {_snapshot_line(groups[group])}" for group in sorted(groups))
    elif snapshot is None:
        lines.append("no snapshot published yet")
    else:
        lines.append(_snapshot_line(snapshot))
    behind_count = sum(1 for e in envoys if e["behind"])
    lines.append(
        f"{len(envoys)} {'Envoy' if len(envoys) == 1 else 'Envoys'} connected, {behind_count} behind"
    )
    if not envoys:
        return "\n".join(lines) + "\n"
    header = ("NODE ID", "GATEWAY GROUP", "VARIANT", "ACKED", "BEHIND", "LAST NACK")
    rows = [
        (
            e["node_id"] or "?",
            e["gateway_group"] or "?",
            e["variant"],
            _versions(
                {name: (t["acked_version"], bool(t.get("held_back"))) for name, t in e["types"].items()}
            )
            or "-",
            "yes" if e["behind"] else "no",
            _nack_summary(e["last_nack"], now),
        )
        for e in envoys
    ]
    lines.append("")
    lines.extend(_columns(header, rows))
    return "\n".join(lines) + "\n"


def _columns(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> list[str]:
    """A table's lines: every column padded to its widest cell but the last."""
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header) - 1)]
    return [
        "  ".join([*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), row[-1]]).rstrip()
        for row in (header, *rows)
    ]


def format_sites(sites: Mapping[str, Any] | None) -> str:
    """The sites part of the report for people: the count in each phase, then a table of the
    sites listed (those not Provisioned, or all of them)."""
    if sites is None:
        return ""
    total = sites.get("total", 0)
    phases: Mapping[str, int] = sites.get("phases") or {}
    counts = ", ".join(f"{count} {phase}" for phase, count in phases.items())
    lines = [f"{total} {'site' if total == 1 else 'sites'}" + (f": {counts}" if counts else "")]
    listed = sites.get("listed") or []
    if listed:
        header = ("SITE", "DOMAIN", "GATEWAY GROUP", "PHASE", "REASON", "MESSAGE")
        rows = [
            (
                f"{s['namespace']}/{s['name']}",
                s.get("domain") or "-",
                s.get("gateway_group") or "-",
                s["phase"],
                s["reason"],
                " ".join(str(s["message"]).split()),
            )
            for s in listed
        ]
        lines.append("")
        lines.extend(_columns(header, rows))
    return "\n".join(lines) + "\n"
