"""A Kubernetes API for tests: kmock's emulator over real HTTP, and a control plane watching it.

The emulator stores objects as given and merges patches, nothing more; so the client here
plays the API server's part for the metadata it would set (uid, generation, resourceVersion,
creationTimestamp). Everything the control plane does goes over HTTP to the emulator.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import kopf

from snapshot.builder import BuildOptions
from snapshot.model import API_VERSION, GROUP, KIND, PLURAL, VERSION, SiteKey
from snapshot.resources import CLUSTER_TYPE, ROUTE_TYPE
from snapshot.snapshot import Snapshot
from snapshot.tenancy import DEFAULT_GROUP, GATEWAY_GROUP_KIND, GATEWAY_GROUP_PLURAL
from support.emulator import REVISIONS, listing
from support.waiting import eventually
from watcher.k8s import GATEWAY_GROUPS, SITES, KubernetesSource
from watcher.k8s_api import EVENTS, LEASES, NAMESPACES, SERVICES, KubeApi
from watcher.siteset import DEFAULT_MAX_SITES, SiteSet
from xds_server.local.gateway import REPO_ROOT
from xds_server.process.control_plane import ControlPlane
from xds_server.process.kubernetes import KubernetesMode
from xds_server.process.observer import ObserverFuncs

SITES_RESOURCE = f"{GROUP}/{VERSION}/{PLURAL}"
WEBHOOKS_RESOURCE = "admissionregistration.k8s.io/v1/validatingwebhookconfigurations"
GROUPS_RESOURCE = f"{GROUP}/{VERSION}/{GATEWAY_GROUP_PLURAL}"
# The group deploy/gateway-group.yaml ships: every namespace, every domain.
OPEN_GRANT: dict[str, Any] = {"namespaces": {"selector": {}}, "domains": ["*"]}
LEASE_NAMESPACE = "staticsite-xds"


def _read_namespace_paths() -> None:
    """Let the emulator serve Namespaces themselves: kmock 0.8 reads `/api/v1/namespaces` and
    `/api/v1/namespaces/NAME` as the namespace prefix of some other resource, and fails."""
    from kmock._internal import parsing

    if getattr(parsing.parse_path, "reads_namespaces", False):
        return
    parse = parsing.parse_path

    def parse_path(path: str) -> Any:
        parts = path.strip("/").split("/")
        if parts[:3] == ["api", "v1", "namespaces"] and len(parts) <= 4:
            return parsing.ParsedPath("", "v1", "namespaces", None, parts[3] if len(parts) == 4 else None)
        return parse(path)

    parse_path.reads_namespaces = True  # type: ignore[attr-defined]
    parsing.parse_path = parse_path


def declare_resources(kmock: Any) -> None:
    """What discovery must show: our CRD's resource, plus what kopf looks up at start."""
    info = kmock.ResourceInfo
    every = {"get", "list", "watch", "create", "update", "patch", "delete"}
    kmock.resources[SITES_RESOURCE] = info(kind=KIND, namespaced=True, subresources={"status"}, verbs=every)
    kmock.resources[GROUPS_RESOURCE] = info(kind=GATEWAY_GROUP_KIND, namespaced=False, verbs=every)
    kmock.resources["v1/services"] = info(kind="Service", namespaced=True, verbs=every)
    kmock.resources["v1/secrets"] = info(kind="Secret", namespaced=True, verbs=every)
    kmock.resources["v1/events"] = info(kind="Event", namespaced=True, verbs=every)
    kmock.resources["coordination.k8s.io/v1/leases"] = info(kind="Lease", namespaced=True, verbs=every)
    kmock.resources["v1/namespaces"] = info(kind="Namespace", namespaced=False, verbs=every)
    kmock.resources["apiextensions.k8s.io/v1/customresourcedefinitions"] = info(
        kind="CustomResourceDefinition", namespaced=False, verbs=every
    )
    kmock.resources[WEBHOOKS_RESOURCE] = info(
        kind="ValidatingWebhookConfiguration", namespaced=False, verbs=every
    )
    honour_secret_field_selectors(kmock)
    _read_namespace_paths()


# The fields a real API server lets a Secret's listing or watch select on, and their values.
SECRET_FIELDS = {
    "metadata.name": lambda body: str((body.get("metadata") or {}).get("name") or ""),
    "metadata.namespace": lambda body: str((body.get("metadata") or {}).get("namespace") or ""),
    "type": lambda body: str(body.get("type") or "Opaque"),  # the API server's default type
}


def field_selection(selector: str) -> Callable[[dict[str, Any]], bool]:
    """Whether a Secret is selected by a field selector (`a=b,c!=d`), as a real API server
    judges it; a field it cannot select on is refused (400), as there."""
    from kmock import KubernetesError

    terms: list[tuple[str, str, bool]] = []
    for term in filter(None, selector.split(",")):
        negated = "!=" in term
        field_name, _, value = term.partition("!=" if negated else "=")
        value = value.removeprefix("=")  # `==` means `=`
        if field_name not in SECRET_FIELDS:
            known = ", ".join(f'"{f}"' for f in SECRET_FIELDS)
            message = f'"{field_name}" is not a known field selector: only {known}'
            raise KubernetesError(400, "BadRequest", message)
        terms.append((field_name, value, negated))
    return lambda body: all((SECRET_FIELDS[f](body) == v) != negated for f, v, negated in terms)


def honour_secret_field_selectors(kmock: Any) -> None:
    """Make the emulator's listings and watches of Secrets honour `fieldSelector`, as a real API
    server does (kmock alone ignores it): a client that asks for every Secret gets every one."""
    secrets = kmock.resource("", "v1", "secrets")

    async def selected_listing(request: Any) -> Any:
        selector = request.params.get("fieldSelector")
        if not selector:
            raise NotImplementedError  # the emulator answers (NotImplemented would retire the reaction)
        return await listing(kmock, request, field_selection(selector))

    def watch(request: Any) -> Any:
        selector = request.params.get("fieldSelector")
        if not selector:
            raise NotImplementedError
        selected = field_selection(selector)

        async def events() -> AsyncIterator[Any]:
            async for event in kmock._serve_watch(request):
                if not isinstance(event, dict) or selected(event.get("object") or {}):
                    yield event

        return events()

    kmock[kmock.action.LIST, secrets] << selected_listing
    kmock[kmock.action.WATCH, secrets] << watch


def fast_settings(watch_timeout: float | None = None) -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    settings.watching.reconnect_backoff = 0.05
    settings.networking.error_backoffs = [0.1, 0.2, 0.5]
    settings.queueing.idle_timeout = 0.5
    settings.queueing.exit_timeout = 0.5
    if watch_timeout is not None:  # the watch request is cut after this long: kopf reconnects
        settings.watching.client_timeout = watch_timeout
    return settings


def route_domains(snapshot: Snapshot | None) -> list[str]:
    """Every domain in a snapshot's routes (repeated if served twice)."""
    if snapshot is None:
        return []
    from envoy.config.route.v3 import route_pb2

    found: list[str] = []
    for resource in snapshot.of_type(ROUTE_TYPE).resources.values():
        config = route_pb2.RouteConfiguration.FromString(resource.body)
        for vhost in config.virtual_hosts:
            found.extend(d for d in vhost.domains if d != "*")
    return found


def group_body(name: str, *grants: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": GATEWAY_GROUP_KIND,
        "metadata": {"name": name},
        "spec": {"grants": list(grants), **spec},
    }


def put_default_group(cluster: Cluster) -> None:
    """The GatewayGroup deploy/ ships (every namespace, every domain), there before anyone watches."""
    cluster.put_group_silently(DEFAULT_GROUP, OPEN_GRANT)


def site_body(
    namespace: str, name: str, domain: str, service: str = "web", port: int = 80, **spec: Any
) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"domain": domain, "backend": {"serviceName": service, "servicePort": port}, **spec},
    }


def service_body(namespace: str, name: str, ports: Iterable[int] = (80,)) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"ports": [{"port": p, "protocol": "TCP"} for p in ports]},
    }


def is_status_write(request: Any, name: str | None = None) -> bool:
    path = str(request.url.path)
    return (
        str(request.method).upper().endswith("PATCH")
        and path.endswith("/status")
        and "/staticsites/" in path
        and (name is None or path.endswith(f"/{name}/status"))
    )


def is_event_post(request: Any) -> bool:
    return str(request.method).upper().endswith("POST") and str(request.url.path).endswith("/events")


class Cluster:
    """The test's own client of the emulator, setting what a real API server would."""

    def __init__(self, kmock: Any) -> None:
        self.kmock = kmock
        self.url = str(kmock.url).rstrip("/")
        self.api = KubeApi.for_server(self.url, user_agent="test-client")
        self.replicas: list[Replica] = []  # started on this cluster, in order

    async def seen_by_replicas(self, namespace: str, name: str, present: bool) -> None:
        """Wait until every running replica's cache has (or no longer has) this Service.

        Each resource has a watch of its own, and nothing orders events across them: a site
        created right after its Service could otherwise be judged before the Service is seen.
        """
        for replica in self.replicas:
            if not replica.task.done():
                source = replica.mode.source
                await eventually(
                    lambda source=source: (source.cache.service(namespace, name) is not None) == present,
                    what=f"replica {replica.identity} to see Service {namespace}/{name}"
                    + ("" if present else " gone"),
                )

    def _stamp(self, body: dict[str, Any], *, new: bool) -> dict[str, Any]:
        """A new object's metadata as the API server sets it. An update over HTTP gets its
        resourceVersion from the emulator (one named here would be a precondition)."""
        meta = body.setdefault("metadata", {})
        if new:
            meta["resourceVersion"] = str(next(REVISIONS))
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("generation", 1)
            meta.setdefault("creationTimestamp", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        return body

    async def create_site(self, namespace: str, name: str, domain: str, **kw: Any) -> dict[str, Any]:
        body = self._stamp(site_body(namespace, name, domain, **kw), new=True)
        return await self.api.create(SITES, namespace, body)

    async def update_spec(self, namespace: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        current = await self.api.get(SITES, namespace, name)
        assert current is not None
        generation = int(current["metadata"].get("generation") or 1) + 1
        patch = self._stamp({"metadata": {"generation": generation}, "spec": spec}, new=False)
        return await self.api.call(
            "PATCH", SITES.path(namespace, name), patch, content_type="application/merge-patch+json"
        )

    async def delete_site(self, namespace: str, name: str) -> None:
        await self.api.call("DELETE", SITES.path(namespace, name))

    async def create_group(self, name: str, *grants: dict[str, Any], **spec: Any) -> dict[str, Any]:
        """A GatewayGroup (cluster-scoped) with these grants (and other spec fields)."""
        return await self.api.create(
            GATEWAY_GROUPS, "", self._stamp(group_body(name, *grants, **spec), new=True)
        )

    async def update_group(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        """Merge `spec` into a GatewayGroup, as `kubectl patch --type merge` would (next generation)."""
        current = await self.api.get(GATEWAY_GROUPS, "", name)
        assert current is not None
        generation = int(current["metadata"].get("generation") or 1) + 1
        patch = self._stamp({"metadata": {"generation": generation}, "spec": spec}, new=False)
        return await self.api.patch(GATEWAY_GROUPS, "", name, patch)

    async def delete_group(self, name: str) -> None:
        await self.api.call("DELETE", GATEWAY_GROUPS.path(None, name))

    def put_group_silently(self, name: str, *grants: dict[str, Any], **spec: Any) -> None:
        """Store a GatewayGroup with no watch event: as if it was there before anyone watched."""
        self.kmock.objects[GROUPS_RESOURCE, None, name] = self._stamp(
            group_body(name, *grants, **spec), new=True
        )

    async def create_namespace(self, name: str, **labels: str) -> None:
        body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}
        await self.api.create(NAMESPACES, "", self._stamp(body, new=True))

    async def label_namespace(self, name: str, **labels: str | None) -> None:
        """Set (a value) or remove (None) labels of a Namespace, as `kubectl label` would."""
        patch = self._stamp({"metadata": {"labels": labels}}, new=False)
        await self.api.patch(NAMESPACES, "", name, patch)

    async def create_service(self, namespace: str, name: str, ports: Iterable[int] = (80,)) -> None:
        body = service_body(namespace, name, ports)
        await self.api.create(SERVICES, namespace, self._stamp(body, new=True))
        await self.seen_by_replicas(namespace, name, present=True)

    async def delete_service(self, namespace: str, name: str) -> None:
        await self.api.call("DELETE", SERVICES.path(namespace, name))
        await self.seen_by_replicas(namespace, name, present=False)

    async def create_cluster_object(self, resource: str, body: dict[str, Any]) -> dict[str, Any]:
        """Create a cluster-scoped object of `resource` ("group/version/plural"), stamped as the
        API server stamps it."""
        group, version, plural = resource.split("/")
        path = f"/apis/{group}/{version}/{plural}"
        return await self.api.call("POST", path, self._stamp(body, new=True))

    def conflict_on_next_patch(self, resource: str, name: str, namespace: str | None = None) -> list[Any]:
        """Answer the next PATCH of this object 409 Conflict, and keep the object as it was: what
        the API server does with a write based on a resourceVersion it no longer holds (the
        emulator would store the write). The list of refused requests fills as they come."""
        key = (resource, namespace, name)
        before = copy.deepcopy(self.kmock.objects[key].raw)
        path = f"/{resource.rsplit('/', 1)[-1]}/{name}"
        refused: list[Any] = []

        def next_patch(request: Any) -> bool:
            hit = not refused and str(request.method).upper().endswith("PATCH") and path in str(request.url)
            if hit:
                refused.append(request)
            return hit

        def unstore(_: Any) -> None:
            self.kmock.objects[key] = before

        self.kmock[next_patch] << 409 << unstore
        return refused

    async def site(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self.api.get(SITES, namespace, name)

    async def status(self, namespace: str, name: str) -> dict[str, Any]:
        body = await self.site(namespace, name)
        return dict((body or {}).get("status") or {})

    async def events(self, namespace: str, name: str | None = None) -> list[dict[str, Any]]:
        items = await self.api.list_objects(EVENTS, namespace)
        found = [e for e in items if name is None or (e.get("involvedObject") or {}).get("name") == name]
        return sorted(found, key=lambda e: e["metadata"]["name"])

    async def lease(self) -> dict[str, Any] | None:
        return await self.api.get(LEASES, LEASE_NAMESPACE, "staticsite-xds-leader")

    def requests(self, method: str, path_part: str = "") -> list[Any]:
        """The requests the emulator received with this method (and path fragment)."""
        return [r for r in self.kmock if str(r.method).upper().endswith(method) and path_part in str(r.url)]

    # Seeding the store directly makes no watch event: as if it happened while no one watched.
    def put_silently(self, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        self.kmock.objects[SITES_RESOURCE, meta["namespace"], meta["name"]] = self._stamp(body, new=True)

    def put_service_silently(self, namespace: str, name: str, ports: Iterable[int] = (80,)) -> None:
        """Store a Service with no watch event (see `put_silently`)."""
        body = service_body(namespace, name, ports)
        self.kmock.objects["v1/services", namespace, name] = self._stamp(body, new=True)

    def put_namespace_silently(self, name: str, **labels: str) -> None:
        """Store a Namespace with no watch event (see `put_silently`)."""
        body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}
        self.kmock.objects["v1/namespaces", None, name] = self._stamp(body, new=True)

    def delete_silently(self, namespace: str, name: str) -> None:
        self.kmock.objects[SITES_RESOURCE, namespace, name].delete()

    def update_silently(self, namespace: str, name: str, spec: dict[str, Any]) -> None:
        """Merge `spec` into a stored StaticSite (same uid, next generation), with no watch event."""
        stored = self.kmock.objects[SITES_RESOURCE, namespace, name]
        generation = int(stored["metadata"].get("generation") or 1) + 1
        revision = str(next(REVISIONS))  # no HTTP write: the store keeps what it is given
        stored.patch({"metadata": {"generation": generation, "resourceVersion": revision}, "spec": spec})

    def stored_sites(self) -> dict[tuple[str, str], dict[str, Any]]:
        """The StaticSites the emulator holds now, by (namespace, name); read from memory, not HTTP."""
        found: dict[tuple[str, str], dict[str, Any]] = {}
        for (resource, namespace, name), obj in self.kmock.objects.items():
            site = (resource.group, resource.version, resource.plural) == (GROUP, VERSION, PLURAL)
            if site and not obj.deleted:
                found[namespace, name] = obj.raw
        return found

    def site_history(self) -> list[dict[str, Any]]:
        """Every version the emulator ever stored of every StaticSite, deleted ones included."""
        versions: list[dict[str, Any]] = []
        for (resource, _, _), obj in self.kmock.objects.items():
            if (resource.group, resource.version, resource.plural) == (GROUP, VERSION, PLURAL):
                versions.extend(v.raw for v in obj.history if v is not None)
        return versions

    def requests_by(self, user_agent: str) -> list[Any]:
        """The requests whose User-Agent starts with this."""
        return [r for r in self.kmock if str(r.headers.get("User-Agent", "")).startswith(user_agent)]

    def kopf_requests(self, action: str, plural: str) -> list[Any]:
        """kopf's requests of one action ("LIST", "WATCH", ...) on one kind, in any namespace."""
        wanted = getattr(self.kmock.action, action)
        return [
            r for r in self.requests_by("kopf/") if r.action == wanted and r.url.path.endswith(f"/{plural}")
        ]

    def write_kubeconfig(self, path: Path) -> Path:
        """A kubeconfig whose current context is this emulator, with no credentials."""
        return write_kubeconfig(self.url, path)


def write_kubeconfig(server: str, path: Path) -> Path:
    """A kubeconfig whose current context is the API server at `server`, with no credentials."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "emulator", "cluster": {"server": server}}],
        "users": [{"name": "anonymous", "user": {}}],
        "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "anonymous"}}],
        "current-context": "emulator",
    }
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def no_cluster_env(kubeconfig: Path, home: Path) -> dict[str, str]:
    """This environment for a child process, minus any in-cluster variables: it finds the API
    server through `kubeconfig` alone."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
    env.update(KUBECONFIG=str(kubeconfig), HOME=str(home), PYTHONUNBUFFERED="1")
    return env


async def start_serve_process(
    kubeconfig: Path,
    workdir: Path,
    log_path: Path,
    *,
    identity: str,
    xds_port: int,
    http_port: int,
    metrics_port: int,
) -> asyncio.subprocess.Process:
    """`staticsite-xds serve --kubernetes` as a real process on loopback ports, reaching the API
    server named by `kubeconfig`, its output written to `log_path`."""
    with log_path.open("wb") as log_file:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "xds_server.cli", "serve", "--kubernetes",
            "--xds-address", f"127.0.0.1:{xds_port}",
            "--metrics-address", f"127.0.0.1:{metrics_port}",
            "--http-port", str(http_port),
            "--listen-address", "127.0.0.1",
            "--backend-host-template", "127.0.0.1",
            "--identity", identity,
            "--lease-namespace", LEASE_NAMESPACE,
            cwd=REPO_ROOT, env=no_cluster_env(kubeconfig, workdir),
            stdin=asyncio.subprocess.DEVNULL, stdout=log_file, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip


@dataclass
class WatchedSource:
    """A Kubernetes source watching the emulator (kopf included), and every site set it yielded."""

    source: KubernetesSource
    api: KubeApi
    stop: asyncio.Event
    task: asyncio.Task[None]
    sets: list[SiteSet] = field(default_factory=list)

    @property
    def latest(self) -> SiteSet:
        return self.sets[-1] if self.sets else SiteSet()

    @classmethod
    async def start(
        cls, cluster: Cluster, namespaces: Iterable[str] = (), *, first: bool = True, **options: Any
    ) -> Self:
        """A source of its own client, started once the test has seeded the emulator; returned
        once it yielded its first set (`first`), or at once."""
        api = KubeApi.for_server(cluster.url, user_agent="staticsite-xds/test")
        source = KubernetesSource(api, list(namespaces), settings=fast_settings(), **options)
        stop = asyncio.Event()
        sets: list[SiteSet] = []

        async def run() -> None:
            async for sites in source.watch(stop):
                sets.append(sites)

        watched = cls(source, api, stop, asyncio.create_task(run()), sets)
        if first:
            await eventually(lambda: sets, what="the first site set")
        return watched

    async def close(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 20)
        self.api.close()


def offline_source(**options: Any) -> KubernetesSource:
    """A source fed by hand (see `feed`): its API client points nowhere and is never called. It
    holds the GatewayGroup deploy/ ships, as the emulator does."""
    source = KubernetesSource(KubeApi.for_server("http://127.0.0.1:9"), **options)
    source.group_event({"type": "ADDED", "object": group_body(DEFAULT_GROUP, OPEN_GRANT)})
    return source


def feed(source: KubernetesSource, kind: str | None, body: dict[str, Any]) -> None:
    """One watch event (kind None: an object of a listing), as kopf hands it to the source."""
    source._event(source.cache.sites, {"type": kind, "object": body}, source._sites_changed)


@dataclass
class Replica:
    """One control-plane replica, in this process, watching the emulator."""

    plane: ControlPlane
    mode: KubernetesMode
    stop: asyncio.Event
    task: asyncio.Task[None]
    identity: str
    published: list[Any] = field(default_factory=list)

    @property
    def sites(self) -> dict[SiteKey, Any]:
        return dict(self.plane.sites.sites)

    def clusters(self) -> set[str]:
        snapshot = self.plane.published
        return set(snapshot.of_type(CLUSTER_TYPE).resources) if snapshot is not None else set()

    def domains(self) -> list[str]:
        """Every domain in the published routes (repeated if served twice)."""
        return route_domains(self.plane.published)

    async def close(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 20)


async def start_replica(
    cluster: Cluster,
    identity: str = "replica-a",
    *,
    namespaces: Iterable[str] = (),
    resync: float = 300.0,
    watch_timeout: float | None = None,
    lease: tuple[float, float, float] = (3.0, 2.0, 0.2),
    max_sites: int = DEFAULT_MAX_SITES,
    xds_port: int = 0,
    backend_grace: float = 0.2,
    status_rate: tuple[float, int] | None = None,
) -> Replica:
    """A replica started in this event loop, serving xDS on 127.0.0.1:`xds_port` (0: any)."""
    api = KubeApi.for_server(cluster.url, user_agent=f"staticsite-xds/{identity}")
    mode = KubernetesMode.create(
        api,
        namespaces=list(namespaces),
        identity=identity,
        lease_namespace=LEASE_NAMESPACE,
        resync=resync,
        max_sites=max_sites,
        settings=fast_settings(watch_timeout),
        lease_timings=lease,
        **({} if status_rate is None else {"status_rate": status_rate}),
    )
    mode.writer.backend_grace = backend_grace  # short: the tests wait for what they create
    stop = asyncio.Event()
    published: list[Any] = []
    plane = ControlPlane(
        BuildOptions(),
        observers=[
            mode.observer,
            ObserverFuncs(on_published=lambda sites, snapshot: published.append((sites, snapshot))),
        ],
        hold_off=0.002,
        max_delay=0.02,
    )
    address = f"127.0.0.1:{xds_port}"
    task = asyncio.create_task(plane.run(mode.sites(stop), address, stop, mode.companions(stop)))
    replica = Replica(plane, mode, stop, task, identity, published)
    cluster.replicas.append(replica)
    return replica
