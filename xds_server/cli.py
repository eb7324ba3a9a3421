"""The `staticsite-xds` command: serve, render, validate and demo."""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from snapshot.builder import DEFAULT_ROUTE_SHARDS, BuildOptions
from snapshot.model import API_VERSION
from snapshot.resources import ACCESS_LOG_STDOUT, DEFAULT_HOST_TEMPLATE
from snapshot.snapshot import DEFAULT_GROUP
from snapshot.tenancy import CLIENT_NAME_SUFFIX
from watcher.leader import DEFAULT_LEASE_NAME, DEFAULT_LEASE_NAMESPACE
from watcher.manifest_file import DEFAULT_MAX_MANIFEST_BYTES
from watcher.rate_limit import DEFAULT_BURST, DEFAULT_QPS
from watcher.siteset import DEFAULT_MAX_SITES

from .operations import issuer, log_format
from .operations.inspection import DEFAULT_TIMEOUT
from .operations.log_format import FORMATS, LEVELS
from .operations.tls import ServingCertificate
from .process.control_plane import DEFAULT_HOLD_OFF, DEFAULT_MAX_DELAY

log = logging.getLogger("staticsite_xds")

DEFAULT_XDS_ADDRESS = "127.0.0.1:18000"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="staticsite-xds",
        description=f"An Envoy xDS control plane for static websites ({API_VERSION} StaticSite).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    logs = argparse.ArgumentParser(add_help=False)  # accepted before or after the command
    for top, given in ((parser, "info"), (logs, argparse.SUPPRESS)):
        top.add_argument(
            "--log-level", default=given, choices=LEVELS, help="what the log shows (default info)"
        )
        top.add_argument(
            "--log-format",
            default="text" if given == "info" else given,
            choices=FORMATS,
            help="text lines, or one JSON object a line (default text)",
        )
    sub = parser.add_subparsers(dest="command", required=True)

    def build_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--http-port", type=int, default=8080, help="port of the gateways' HTTP listener")
        p.add_argument(
            "--https-port",
            type=int,
            default=8443,
            help="port of the gateways' HTTPS listener, opened once a site has spec.tls (8443)",
        )
        p.add_argument(
            "--public-https-port",
            type=int,
            default=443,
            help="the HTTPS port clients reach (the gateways' Service or load balancer); redirects "
            "to HTTPS name it unless it is 443",
        )
        p.add_argument(
            "--listen-address", default="0.0.0.0", help="address the gateways' HTTP listener binds (0.0.0.0)"
        )
        p.add_argument(
            "--backend-host-template",
            default=DEFAULT_HOST_TEMPLATE,
            help="how Envoy reaches a backend Service; may use {service} and {namespace} "
            f"(default {DEFAULT_HOST_TEMPLATE}; 127.0.0.1 for local runs)",
        )
        p.add_argument(
            "--route-shards",
            type=int,
            default=DEFAULT_ROUTE_SHARDS,
            metavar="N",
            help="route configurations per listener, each domain in the one of its hash, so a "
            "change rebuilds one of them in Envoy; 1: one route configuration per listener "
            "(default %(default)s)",
        )
        p.add_argument(
            "--access-log",
            default=ACCESS_LOG_STDOUT,
            metavar="WHERE",
            help="where the gateways write one JSON line per request: stdout, stderr, off, "
            "or an absolute path on the gateways (default %(default)s)",
        )

    serve = sub.add_parser(
        "serve",
        parents=[logs],
        help="watch StaticSites (a folder of manifests, or Kubernetes) and serve them over ADS",
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
        "--status-qps",
        type=float,
        default=DEFAULT_QPS,
        metavar="N",
        help="with --kubernetes: at most this many status writes and Events a second, after the "
        "burst (default %(default)g)",
    )
    serve.add_argument(
        "--status-burst",
        type=int,
        default=DEFAULT_BURST,
        metavar="N",
        help="with --kubernetes: this many status writes and Events at once before the rate "
        "applies (default %(default)s)",
    )
    serve.add_argument(
        "--metrics-address",
        default=None,
        metavar="HOST:PORT",
        help="serve /healthz, /readyz, /metrics and /debug/envoys over HTTP here (default: off)",
    )
    serve.add_argument(
        "--admission-address",
        default=None,
        metavar="HOST:PORT",
        help="serve the validating admission webhook for StaticSites and GatewayGroups over HTTPS "
        "here, with the --tls-cert certificate (default: off)",
    )
    serve.add_argument(
        "--xds-address",
        default=DEFAULT_XDS_ADDRESS,
        help=f"host:port of the ADS server ({DEFAULT_XDS_ADDRESS})",
    )
    tls = serve.add_argument_group(
        "mutual TLS on the xDS port",
        "all three together; without them the port is plain text, which only a loopback "
        "--xds-address allows unless --insecure-plaintext is given. The files are re-read when "
        "they change",
    )
    tls.add_argument("--tls-cert", type=Path, metavar="FILE", help="the server's certificate chain (PEM)")
    tls.add_argument(
        "--tls-key", type=Path, metavar="FILE", help="the server's private key (PEM, unencrypted)"
    )
    tls.add_argument(
        "--tls-client-ca",
        type=Path,
        metavar="FILE",
        help="CA certificates (PEM); a client must present a certificate signed by one of them",
    )
    tls.add_argument(
        "--insecure-plaintext",
        action="store_true",
        help="serve plain text on an --xds-address other than loopback; any client that reaches "
        "the port can then read every site's private key",
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
    serve.add_argument(
        "--max-sites",
        type=_at_least_one,
        default=DEFAULT_MAX_SITES,
        metavar="N",
        help="serve at most this many sites; newer ones are refused and reported (default %(default)d)",
    )
    serve.add_argument(
        "--max-manifest-bytes",
        type=_at_least_one,
        default=DEFAULT_MAX_MANIFEST_BYTES,
        metavar="BYTES",
        help="with --sites: a larger manifest file is reported and not read (default %(default)d)",
    )
    build_flags(serve)

    render = sub.add_parser(
        "render", parents=[logs], help="print the Envoy resources a folder of sites produces, as JSON"
    )
    render.add_argument("sites", type=Path)
    build_flags(render)

    validate = sub.add_parser(
        "validate", parents=[logs], help="check StaticSite manifests; exit non-zero on any problem"
    )
    validate.add_argument("paths", nargs="+", type=Path, metavar="PATH")

    status = sub.add_parser(
        "status",
        parents=[logs],
        help="list the Envoys connected to a running control plane, what each has ACKed, "
        "and the sites that are not served",
    )
    status.add_argument(
        "--xds-address",
        default=DEFAULT_XDS_ADDRESS,
        metavar="HOST:PORT",
        help=f"the control plane's xDS port ({DEFAULT_XDS_ADDRESS})",
    )
    status.add_argument("--json", action="store_true", help="print the whole report as JSON")
    status.add_argument(
        "--sites",
        action="store_true",
        help="list every site's state, not only those of the sites that are not Provisioned",
    )
    status.add_argument(
        "--tls-ca",
        type=Path,
        metavar="FILE",
        help="the xDS port serves TLS: trust its certificate if a CA in FILE (PEM) signed it",
    )
    status.add_argument(
        "--tls-cert", type=Path, metavar="FILE", help="with --tls-key: present this client certificate (PEM)"
    )
    status.add_argument(
        "--tls-key", type=Path, metavar="FILE", help="with --tls-cert: the client certificate's key (PEM)"
    )
    status.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help="seconds to wait for an answer (default %(default)g)",
    )

    certificates = sub.add_parser(
        "certificates",
        parents=[logs],
        help="make (or renew) the xDS port's CA, server and client certificates as Kubernetes Secrets",
        description="Keep a CA, a server certificate for the control plane's Service and a client "
        "certificate for the gateways in Secrets of type kubernetes.io/tls (tls.crt, tls.key, "
        "ca.crt). Writes only a Secret that is missing, unusable, or expires within --renew-before; "
        "in a pod it uses its service account, else the kubeconfig.",
    )
    certificates.add_argument(
        "--namespace", required=True, help="where the Secrets live (the control plane's)"
    )
    certificates.add_argument(
        "--service",
        default=issuer.DEFAULT_SERVICE,
        help="the control plane's Service; names the server certificate unless --dns-name is given "
        "(%(default)s)",
    )
    certificates.add_argument(
        "--dns-name",
        action="append",
        default=[],
        metavar="NAME",
        help="a DNS name of the server certificate (repeat; default: SERVICE.NAMESPACE.svc, "
        "SERVICE.NAMESPACE.svc.cluster.local, SERVICE.NAMESPACE and SERVICE)",
    )
    certificates.add_argument(
        "--server-secret",
        default=issuer.DEFAULT_SERVER_SECRET,
        help="the control plane's Secret (%(default)s)",
    )
    certificates.add_argument(
        "--client-secret", default=issuer.DEFAULT_CLIENT_SECRET, help="the gateways' Secret (%(default)s)"
    )
    certificates.add_argument(
        "--ca-secret", default=issuer.DEFAULT_CA_SECRET, help="the CA's certificate and key (%(default)s)"
    )
    certificates.add_argument(
        "--webhook-configuration",
        default=issuer.DEFAULT_WEBHOOK_CONFIGURATION,
        metavar="NAME",
        help="the ValidatingWebhookConfiguration whose caBundle is set to the server certificate's "
        "CA (%(default)s; '' for none)",
    )
    certificates.add_argument(
        "--client-name",
        default=issuer.DEFAULT_CLIENT_NAME,
        help="the common name of the gateways' certificates (%(default)s)",
    )
    certificates.add_argument(
        "--gateway-group",
        action="append",
        default=[],
        metavar="GROUP",
        dest="gateway_groups",
        help="a gateway group to make a gateway certificate for (repeat; default: default), named "
        f"GROUP{CLIENT_NAME_SUFFIX}, in the client Secret for the default group and in "
        "CLIENT_SECRET-GROUP for another",
    )
    for flag, default, what in (
        ("--days", issuer.DEFAULT_DAYS, "days the server and client certificates are valid"),
        ("--ca-days", issuer.DEFAULT_CA_DAYS, "days the CA is valid"),
        (
            "--renew-before",
            issuer.DEFAULT_RENEW_BEFORE_DAYS,
            "renew a certificate that expires within this many days",
        ),
    ):
        certificates.add_argument(
            flag, type=_at_least_one, default=default, metavar="DAYS", help=f"{what} (%(default)d)"
        )

    demo = sub.add_parser(
        "demo", parents=[logs], help="run the control plane, a real Envoy and sample backends locally"
    )
    demo.add_argument(
        "--sites",
        type=Path,
        default=Path("demo-sites"),
        help="sites folder, seeded with five sites if missing (%(default)s)",
    )
    demo.add_argument(
        "--xds-port",
        type=int,
        default=18000,
        help="port of the control plane's xDS (ADS) server (%(default)s)",
    )
    demo.add_argument(
        "--http-port", type=int, default=8080, help="port of Envoy's HTTP listener (%(default)s)"
    )
    demo.add_argument(
        "--https-port", type=int, default=8443, help="port of Envoy's HTTPS listener (%(default)s)"
    )
    demo.add_argument(
        "--admin-port", type=int, default=9901, help="port of Envoy's admin interface (%(default)s)"
    )
    demo.add_argument(
        "--metrics-port",
        type=int,
        default=9102,
        help="port of /metrics, /healthz, /readyz and /debug/envoys (%(default)s)",
    )
    demo.add_argument(
        "--work-dir",
        type=Path,
        default=Path("demo-run"),
        help="folder of Envoy's bootstrap and log, replaced on every run (%(default)s)",
    )
    return parser


def _version() -> str:
    try:
        return importlib.metadata.version("staticsite-xds")
    except importlib.metadata.PackageNotFoundError:  # a bare checkout, not installed
        return "(not installed)"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    log_format.configure(args.log_level, args.log_format)
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
    if args.command == "status":
        return _status(args)
    if args.command == "certificates":
        return _certificates(args)
    from .local.demo import DemoPorts, run_demo

    ports = DemoPorts(args.xds_port, args.http_port, args.https_port, args.admin_port, args.metrics_port)
    return run_demo(args.sites, ports, args.work_dir)


def _at_least_one(text: str) -> int:
    """An argument that is a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _options(args: argparse.Namespace) -> BuildOptions:
    return BuildOptions(
        http_port=args.http_port,
        https_port=args.https_port,
        public_https_port=args.public_https_port,
        listen_address=args.listen_address,
        backend_host_template=args.backend_host_template,
        access_log=args.access_log,
        route_shards=args.route_shards,
    )


def _serve(args: argparse.Namespace) -> int:
    from .process.serve import KubernetesConfig, ServeConfig, ServeError, serve

    if args.namespace and not args.kubernetes:
        print("staticsite-xds: --namespace needs --kubernetes", file=sys.stderr)
        return 2
    if not args.status_qps > 0:
        print(f"staticsite-xds: --status-qps must be above 0, got {args.status_qps:g}", file=sys.stderr)
        return 2
    if args.status_burst < 1:
        print(f"staticsite-xds: --status-burst must be at least 1, got {args.status_burst}", file=sys.stderr)
        return 2
    if args.sites is not None and not args.sites.is_dir():
        print(f"staticsite-xds: --sites {args.sites}: not a folder", file=sys.stderr)
        return 2
    try:
        config = ServeConfig(
            options=_options(args),
            xds_address=args.xds_address,
            sites=args.sites,
            kubernetes=KubernetesConfig(
                namespaces=args.namespace,
                identity=args.identity,
                lease_namespace=args.lease_namespace,
                lease_name=args.lease_name,
                status_qps=args.status_qps,
                status_burst=args.status_burst,
            )
            if args.kubernetes
            else None,
            max_sites=args.max_sites,
            force_polling=args.force_polling,
            max_manifest_bytes=args.max_manifest_bytes,
            metrics_address=args.metrics_address,
            hold_off=args.hold_off_ms / 1000,
            max_delay=args.max_delay_ms / 1000,
            serving=_serving_certificate(args),
            insecure_plaintext=args.insecure_plaintext,
            admission_address=args.admission_address,
        )
    except ValueError as exc:  # bad flags: name them and stop
        print(f"staticsite-xds: {exc}", file=sys.stderr)
        return 2
    try:
        serve(config)
    except ServeError as exc:
        print(f"staticsite-xds: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"staticsite-xds: {exc}", file=sys.stderr)
        return 1
    log.info("stopped")
    return 0


def _serving_certificate(args: argparse.Namespace) -> ServingCertificate | None:
    """The xDS port's certificate from the --tls-* flags (all three, or none: plain text)."""
    given = {"--tls-cert": args.tls_cert, "--tls-key": args.tls_key, "--tls-client-ca": args.tls_client_ca}
    if not any(given.values()):
        return None
    missing = [flag for flag, value in given.items() if value is None]
    if missing:
        raise ValueError(
            f"--tls-cert, --tls-key and --tls-client-ca go together; missing {' and '.join(missing)}"
        )
    return ServingCertificate.from_paths(args.tls_cert, args.tls_key, args.tls_client_ca)


# The `certificates` flags whose value is the plan's field of the same name.
_PLAN_FLAGS = (
    "server_secret",
    "client_secret",
    "ca_secret",
    "client_name",
    "days",
    "ca_days",
    "webhook_configuration",
)


def _certificates(args: argparse.Namespace) -> int:
    from .operations.issuer import CertificatePlan, keep_certificates_in_cluster

    try:
        plan = CertificatePlan(
            namespace=args.namespace,
            dns_names=tuple(args.dns_name) or issuer.service_dns_names(args.namespace, args.service),
            renew_before_days=args.renew_before,
            gateway_groups=tuple(args.gateway_groups) or (DEFAULT_GROUP,),
            **{name: getattr(args, name) for name in _PLAN_FLAGS},
        )
    except ValueError as exc:  # bad flags: name them and stop
        print(f"staticsite-xds: {exc}", file=sys.stderr)
        return 2
    return keep_certificates_in_cluster(plan)


def _status(args: argparse.Namespace) -> int:
    from .operations.inspection import print_status

    return print_status(
        args.xds_address,
        tls_ca=args.tls_ca,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        as_json=args.json,
        all_sites=args.sites,
        timeout=args.timeout,
    )


def _render(args: argparse.Namespace) -> int:
    from .process.offline import render

    if not args.sites.is_dir():
        print(f"staticsite-xds: {args.sites}: not a folder", file=sys.stderr)
        return 2
    return render(args.sites, _options(args))


def _validate(args: argparse.Namespace) -> int:
    from .process.offline import validate

    missing = [path for path in args.paths if not path.exists()]
    if missing:  # a path given on the command line: a usage error, as for render
        for path in missing:
            print(f"staticsite-xds: {path}: no such file or folder", file=sys.stderr)
        return 2
    return validate(args.paths)


if __name__ == "__main__":
    sys.exit(main())
