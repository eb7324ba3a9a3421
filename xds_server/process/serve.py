"""`staticsite-xds serve`: the one place that assembles a control plane process.

A source of sites (a folder, or Kubernetes with its Lease and status writer), the control
plane and its observers (metrics, gRPC health, the status writer), the operators' ports
(health, metrics, inspection), the admission webhook and the xDS port's TLS, started together and stopped together.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from snapshot.builder import BuildOptions
from watcher.folder import FolderSource
from watcher.leader import DEFAULT_LEASE_NAME
from watcher.manifest_file import DEFAULT_MAX_MANIFEST_BYTES
from watcher.rate_limit import DEFAULT_BURST, DEFAULT_QPS
from watcher.siteset import DEFAULT_MAX_SITES, SiteSet

from ..operations.admission import AdmissionServer
from ..operations.health import GrpcHealth, HealthServer, split_address
from ..operations.inspection import Inspection, report, status_report
from ..operations.metrics import Metrics
from ..operations.tls import ServingCertificate
from .control_plane import DEFAULT_HOLD_OFF, DEFAULT_MAX_DELAY, ControlPlane
from .observer import Observer, ObserverFuncs

if TYPE_CHECKING:
    from .kubernetes import KubernetesMode

log = logging.getLogger("staticsite_xds")


class ServeError(Exception):
    """The process cannot be assembled as configured (the message names the flag)."""


@dataclass(frozen=True, slots=True)
class KubernetesConfig:
    namespaces: Sequence[str] = ()
    identity: str | None = None
    lease_namespace: str | None = None
    lease_name: str = DEFAULT_LEASE_NAME
    status_qps: float = DEFAULT_QPS  # status writes and Events a second
    status_burst: int = DEFAULT_BURST


@dataclass(frozen=True, slots=True)
class ServeConfig:
    options: BuildOptions
    xds_address: str
    sites: Path | None = None  # the folder of manifests (when not in Kubernetes)
    kubernetes: KubernetesConfig | None = None
    max_sites: int = DEFAULT_MAX_SITES
    force_polling: bool = False
    max_manifest_bytes: int = DEFAULT_MAX_MANIFEST_BYTES
    metrics_address: str | None = None
    hold_off: float = DEFAULT_HOLD_OFF
    max_delay: float = DEFAULT_MAX_DELAY
    serving: ServingCertificate | None = None  # the xDS port's TLS (None: plain text)
    insecure_plaintext: bool = False  # plain text allowed on an address other than loopback
    admission_address: str | None = None  # the validating admission webhook's HTTPS port (None: off)


PLAINTEXT_WARNING = (
    "the xDS port serves plain text on {address}: any client that reaches the port can read "
    "every site's private key (--insecure-plaintext)"
)


def is_loopback(address: str) -> bool:
    """Whether `host:port` binds only the loopback interface (127.0.0.0/8, ::1, localhost)."""
    host, _ = split_address(address)
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def plaintext_warning(config: ServeConfig) -> str | None:
    """The warning plain text on a reachable address earns; `ServeError` without the flag."""
    if config.serving is not None:
        if config.insecure_plaintext:
            raise ServeError("--insecure-plaintext and the --tls-* flags exclude each other")
        return None
    try:
        if is_loopback(config.xds_address):
            return None
    except ValueError as exc:
        raise ServeError(f"--xds-address: {exc}") from None
    if not config.insecure_plaintext:
        raise ServeError(
            f"--xds-address {config.xds_address} is not a loopback address: serve mutual TLS "
            "there with --tls-cert, --tls-key and --tls-client-ca, or give --insecure-plaintext "
            "to serve plain text anyway (any client that reaches the port can then read every "
            "site's private key)"
        )
    return PLAINTEXT_WARNING.format(address=config.xds_address)


def serve(config: ServeConfig) -> None:
    """Run the control plane until SIGTERM or SIGINT; ServeError if it cannot be assembled."""
    warning = plaintext_warning(config)
    if config.metrics_address is not None:
        try:
            split_address(config.metrics_address)
        except ValueError as exc:
            raise ServeError(f"--metrics-address: {exc}") from None
    _check_admission(config)
    kube = _kubernetes(config) if config.kubernetes is not None else None
    surfaces = OperatorSurfaces()
    observers = surfaces.observers()
    if kube is not None:
        observers.append(kube.observer)
    try:
        plane = ControlPlane(
            config.options, observers=observers, hold_off=config.hold_off, max_delay=config.max_delay
        )
    except ValueError as exc:
        raise ServeError(str(exc)) from None
    serving = config.serving
    surfaces.expose(plane, serving)
    if serving is not None:
        log.info("the xDS port serves mutual TLS: %s", serving.describe())
    if warning is not None:
        log.warning("%s", warning)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        companions = surfaces.companions(stop, config.metrics_address, warning)
        if serving is not None:
            companions.append(serving.follow(stop))
        if config.admission_address is not None:
            assert serving is not None  # _check_admission
            # Every replica judges, against the tenancy of the last site set it built.
            webhook = AdmissionServer(serving, lambda: plane.tenancy if plane.ready else None)
            companions.append(webhook.serve(config.admission_address, stop))
        sites: AsyncIterator[SiteSet]
        if kube is not None:
            sites = kube.sites(stop)
            companions.extend(kube.companions(stop))
        else:
            assert config.sites is not None
            folder = FolderSource(
                config.sites,
                force_polling=config.force_polling,
                max_manifest_bytes=config.max_manifest_bytes,
                max_sites=config.max_sites,
            )
            sites = folder.watch(stop)
        await plane.run(
            sites,
            config.xds_address,
            stop,
            companions,
            credentials=None if serving is None else serving.server_credentials(),
            services=surfaces.services,
        )

    asyncio.run(run())


class OperatorSurfaces:
    """What operators look at, for any process that runs a control plane (`serve`, the demo):
    the metrics, gRPC health and the inspection service on the xDS port, and the HTTP port of
    health, metrics and `/debug/envoys`."""

    def __init__(self) -> None:
        self.metrics = Metrics()
        self.health = GrpcHealth()
        self._plane: ControlPlane | None = None

    def observers(self) -> list[Observer]:
        """The observers the control plane must be made with."""
        return [self.metrics, ObserverFuncs(on_published=lambda _sites, _snapshot: self.health.published())]

    def expose(self, plane: ControlPlane, serving: ServingCertificate | None = None) -> None:
        """Show `plane` (made with `observers()`), and the xDS port's certificate if it has one."""
        self.metrics.export(plane, None if serving is None else lambda: serving.current.expires)
        self._plane = plane

    def _report(self, asked: Mapping[str, Any]) -> dict[str, Any]:
        assert self._plane is not None, "expose() the control plane first"
        return status_report(self._plane, all_sites=asked.get("sites") == "all")

    @property
    def services(self) -> list[Callable[[grpc.aio.Server], None]]:
        """What to register on the xDS port: gRPC health and the inspection service."""
        return [self.health.register, Inspection(self._report).register]

    def companions(
        self, stop: asyncio.Event, metrics_address: str | None, warning: str | None = None
    ) -> list[Coroutine[Any, Any, None]]:
        """The tasks to run beside the control plane until `stop`."""
        plane = self._plane
        assert plane is not None, "expose() the control plane first"
        companions: list[Coroutine[Any, Any, None]] = [self.health.serve(stop)]
        if metrics_address is not None:
            http = HealthServer(lambda: plane.ready, inspect=lambda: report(plane), warning=warning)
            companions.append(http.serve(metrics_address, stop))
        return companions


def _check_admission(config: ServeConfig) -> None:
    """The webhook's address is host:port, and it has the xDS port's certificate to serve."""
    if config.admission_address is None:
        return
    try:
        split_address(config.admission_address)
    except ValueError as exc:
        raise ServeError(f"--admission-address: {exc}") from None
    if config.serving is None:
        raise ServeError(
            "--admission-address needs --tls-cert, --tls-key and --tls-client-ca: the webhook "
            "serves HTTPS with the xDS port's server certificate"
        )


def _kubernetes(config: ServeConfig) -> KubernetesMode:
    """The Kubernetes mode's parts, made before the control plane that tells them its states."""
    from watcher.k8s_api import ApiError, KubeApi

    from .kubernetes import KubernetesMode, default_identity

    kube = config.kubernetes
    assert kube is not None
    identity = kube.identity or default_identity()
    try:
        api = KubeApi.from_environment(user_agent=f"staticsite-xds/{identity}")
    except ApiError as exc:
        raise ServeError(str(exc)) from None
    return KubernetesMode.create(
        api,
        namespaces=kube.namespaces,
        identity=identity,
        lease_namespace=kube.lease_namespace,
        lease_name=kube.lease_name,
        max_sites=config.max_sites,
        status_rate=(kube.status_qps, kube.status_burst),
    )
