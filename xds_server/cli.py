"""The `staticsite-xds` command: serve, render, validate and demo."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from snapshot.builder import BuildOptions, Phase, SiteState, SnapshotBuilder
from snapshot.model import API_VERSION, SiteKey
from snapshot.resources import DEFAULT_HOST_TEMPLATE
from watcher.folder import FolderSource, read_manifests
from watcher.leader import DEFAULT_LEASE_NAME, DEFAULT_LEASE_NAMESPACE
from watcher.siteset import SiteSet

from .app import DEFAULT_HOLD_OFF, DEFAULT_MAX_DELAY, ControlPlane

log = logging.getLogger("staticsite_xds")

DEFAULT_XDS_ADDRESS = "127.0.0.1:18000"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="staticsite-xds",
        description=f"An Envoy xDS control plane for static websites ({API_VERSION} StaticSite).",
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(dest="command", required=True)

    def build_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--http-port", type=int, default=8080, help="port of the gateways' HTTP listener")
        p.add_argument(
            "--listen-address", default="0.0.0.0", help="address the gateways' HTTP listener binds (0.0.0.0)"
        )
        p.add_argument(
            "--backend-host-template",
            default=DEFAULT_HOST_TEMPLATE,
            help="how Envoy reaches a backend Service; may use {service} and {namespace} "
            f"(default {DEFAULT_HOST_TEMPLATE}; 127.0.0.1 for local runs)",
        )

    serve = sub.add_parser(
        "serve", help="watch StaticSites (a folder of manifests, or Kubernetes) and serve them over ADS"
    )
    source = serve.add_mutually_exclusive_group(required=True)
    source.add_argument("--sites", type=Path, help="folder of StaticSite YAML manifests")
    source.add_argument(
        "--kubernetes",
        action="store_true",
        help="watch StaticSite objects in a cluster (in a pod: its service account; else the kubeconfig)",
    )
    serve.add_argument(
        "--namespace",
        action="append",
        default=[],
        metavar="NS",
        help="with --kubernetes: watch only this namespace (repeat for several; default: all)",
    )
    serve.add_argument(
        "--lease-name",
        default=DEFAULT_LEASE_NAME,
        help="with --kubernetes: the Lease that elects the replica writing status (%(default)s)",
    )
    serve.add_argument(
        "--lease-namespace",
        default=None,
        help="with --kubernetes: the Lease's namespace (default: $POD_NAMESPACE, else "
        f"{DEFAULT_LEASE_NAMESPACE})",
    )
    serve.add_argument(
        "--identity",
        default=None,
        help="with --kubernetes: this replica's name in the Lease and in Events (default: $POD_NAME)",
    )
    serve.add_argument(
        "--metrics-address",
        default=None,
        metavar="HOST:PORT",
        help="serve /healthz, /readyz and /metrics over HTTP here (default: off)",
    )
    serve.add_argument(
        "--xds-address",
        default=DEFAULT_XDS_ADDRESS,
        help=f"host:port of the ADS server ({DEFAULT_XDS_ADDRESS})",
    )
    serve.add_argument(
        "--force-polling", action="store_true", help="poll the folder instead of using inotify"
    )
    serve.add_argument(
        "--hold-off-ms",
        type=float,
        default=DEFAULT_HOLD_OFF * 1000,
        help="wait this long without a new change before building (default %(default)g)",
    )
    serve.add_argument(
        "--max-delay-ms",
        type=float,
        default=DEFAULT_MAX_DELAY * 1000,
        help="never hold a change longer than this in a burst of changes (default %(default)g)",
    )
    build_flags(serve)

    render = sub.add_parser("render", help="print the Envoy resources a folder of sites produces, as JSON")
    render.add_argument("sites", type=Path)
    build_flags(render)

    validate = sub.add_parser("validate", help="check StaticSite manifests; exit non-zero on any problem")
    validate.add_argument("paths", nargs="+", type=Path, metavar="PATH")

    demo = sub.add_parser("demo", help="run the control plane, a real Envoy and sample backends locally")
    demo.add_argument(
        "--sites", type=Path, default=Path("demo-sites"), help="sites folder (seeded if missing)"
    )
    demo.add_argument("--xds-port", type=int, default=18000)
    demo.add_argument("--http-port", type=int, default=8080)
    demo.add_argument("--admin-port", type=int, default=9901)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("watchfiles").setLevel(logging.WARNING)
    if args.log_level != "debug":  # kopf narrates every event at INFO
        logging.getLogger("kopf").setLevel(logging.WARNING)
    if args.command in ("serve", "render"):
        try:
            _options(args)
        except ValueError as exc:  # bad flags: name them and stop
            print(f"staticsite-xds: {exc}", file=sys.stderr)
            return 2
    if args.command == "serve":
        return _serve(args)
    if args.command == "render":
        return _render(args)
    if args.command == "validate":
        return _validate(args)
    from .demo import run_demo

    return run_demo(args.sites, args.xds_port, args.http_port, args.admin_port)


def _options(args: argparse.Namespace) -> BuildOptions:
    return BuildOptions(
        http_port=args.http_port,
        listen_address=args.listen_address,
        backend_host_template=args.backend_host_template,
    )


def _serve(args: argparse.Namespace) -> int:
    options = _options(args)
    if args.namespace and not args.kubernetes:
        print("staticsite-xds: --namespace needs --kubernetes", file=sys.stderr)
        return 2
    if args.sites is not None and not args.sites.is_dir():
        print(f"staticsite-xds: --sites {args.sites}: not a folder", file=sys.stderr)
        return 2
    try:
        if args.metrics_address is not None:
            from .health import split_address

            split_address(args.metrics_address)
        plane = ControlPlane(options, hold_off=args.hold_off_ms / 1000, max_delay=args.max_delay_ms / 1000)
    except ValueError as exc:
        print(f"staticsite-xds: {exc}", file=sys.stderr)
        return 2
    kube = None
    if args.kubernetes:
        from watcher.k8s_api import ApiError, KubeApi

        from .k8s_mode import KubernetesMode, default_identity

        identity = args.identity or default_identity()
        try:
            api = KubeApi.from_environment(user_agent=f"staticsite-xds/{identity}")
        except ApiError as exc:
            print(f"staticsite-xds: {exc}", file=sys.stderr)
            return 2
        kube = KubernetesMode.attach(
            plane,
            api,
            namespaces=args.namespace,
            identity=identity,
            lease_namespace=args.lease_namespace,
            lease_name=args.lease_name,
        )

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        companions = []
        if args.metrics_address is not None:
            from .health import HealthServer

            companions.append(HealthServer(lambda: plane.ready).serve(args.metrics_address, stop))
        if kube is not None:
            sites = kube.sites(stop)
            companions.extend(kube.companions(stop))
        else:
            sites = FolderSource(args.sites, force_polling=args.force_polling).watch(stop)
        await plane.run(sites, args.xds_address, stop, companions)

    try:
        asyncio.run(run())
    except OSError as exc:
        print(f"staticsite-xds: {exc}", file=sys.stderr)
        return 1
    log.info("stopped")
    return 0


def _render(args: argparse.Namespace) -> int:
    options = _options(args)
    if not args.sites.is_dir():
        print(f"staticsite-xds: {args.sites}: not a folder", file=sys.stderr)
        return 2
    sites = FolderSource(args.sites).load()
    result = SnapshotBuilder(options).build(sites.sites.values())
    json.dump(result.snapshot.to_json(), sys.stdout, indent=2)
    sys.stdout.write("\n")
    lines = _problem_lines(sites, result.sites)
    for line in lines:
        print(line, file=sys.stderr)
    return 1 if lines else 0


def _validate(args: argparse.Namespace) -> int:
    sites = read_manifests(args.paths)
    result = SnapshotBuilder().build(sites.sites.values())
    lines = _problem_lines(sites, result.sites)
    for line in lines:
        print(line)
    if not lines:
        print(f"{len(sites.sites)} sites, all valid", file=sys.stderr)
    return 1 if lines else 0


def _problem_lines(sites: SiteSet, states: Mapping[SiteKey, SiteState]) -> list[str]:
    """Every problem a user must fix: invalid manifests, then domains lost to a conflict."""
    lines = [str(p) for p in sites.problems]
    for key, state in sorted(states.items()):
        if state.phase is Phase.CONFLICT:
            origin = sites.sites[key].origin if key in sites.sites else str(key)
            lines.append(f"{origin}: spec.domain: {state.message}")
    return lines


if __name__ == "__main__":
    sys.exit(main())
