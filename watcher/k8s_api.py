"""The few Kubernetes API calls the control plane makes itself, on the official client.

kopf owns the watch streams; this module lists (to know when a listing is complete and to
heal watch gaps), writes status and Events, and manages the leader Lease. The client is
synchronous, so every call runs in a worker thread. One `Configuration` is the single source
of credentials: kopf is logged in from it too.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # both are imported when first used: the folder mode never needs them
    import kopf
    import kubernetes

log = logging.getLogger("staticsite_xds.kubernetes")

LIST_PAGE = 500  # objects per page of a listing
# A listing whose continue token expired (410 Gone: the API server's snapshot of it was
# compacted away) is started again from its first page, this many times at most.
LIST_RESTARTS = 3


class Listing(list[dict[str, Any]]):
    """The objects of one listing, and the resourceVersion it was read at: a watch from that
    version gets every change made since, and nothing before."""

    version: str = ""


class ApiError(Exception):
    """A Kubernetes API call failed; `status` is the HTTP status (0 when unreachable)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Kind:
    """One resource kind as the API names it."""

    group: str  # "" for the core group
    version: str
    plural: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None, name: str | None = None, sub: str | None = None) -> str:
        root = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        where = f"/namespaces/{namespace}" if namespace else ""
        tail = "".join(f"/{part}" for part in (name, sub) if part)
        return f"{root}{where}/{self.plural}{tail}"


SERVICES = Kind("", "v1", "services")
NAMESPACES = Kind("", "v1", "namespaces")
SECRETS = Kind("", "v1", "secrets")
EVENTS = Kind("", "v1", "events")
LEASES = Kind("coordination.k8s.io", "v1", "leases")


class KubeApi:
    """An API client for one cluster (or one emulator in tests)."""

    def __init__(self, configuration: kubernetes.client.Configuration, user_agent: str = "") -> None:
        import kubernetes

        configuration.connection_pool_maxsize = max(configuration.connection_pool_maxsize or 0, 16)
        self.configuration = configuration
        self.client = kubernetes.client.ApiClient(configuration)
        if user_agent:
            self.client.user_agent = user_agent

    @classmethod
    def from_environment(cls, user_agent: str = "") -> KubeApi:
        """In a pod: its service account; elsewhere: the current kubeconfig context."""
        import kubernetes

        configuration = kubernetes.client.Configuration()
        try:
            kubernetes.config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except kubernetes.config.ConfigException:
            try:
                kubernetes.config.load_kube_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            except Exception as exc:  # a malformed file raises YAML, type or key errors, not only these
                detail = " ".join(str(exc).split())  # YAML errors span lines: keep the message to one
                raise ApiError(
                    0, f"no Kubernetes credentials: not in a pod, and no usable kubeconfig ({detail})"
                ) from exc
        return cls(configuration, user_agent)

    @classmethod
    def for_server(cls, url: str, user_agent: str = "") -> KubeApi:
        """An unauthenticated client for one server URL (an emulator, or a local proxy)."""
        import kubernetes

        configuration = kubernetes.client.Configuration()
        configuration.host = url.rstrip("/")
        return cls(configuration, user_agent)

    @property
    def server(self) -> str:
        return str(self.configuration.host)

    def connection_info(self) -> kopf.ConnectionInfo:
        """The same credentials, for kopf; refreshed first when they can expire."""
        import kopf

        cfg = self.configuration
        hook = getattr(cfg, "refresh_api_key_hook", None)
        if hook is not None:
            hook(cfg)
        header = cfg.get_api_key_with_prefix("BearerToken") or cfg.get_api_key_with_prefix("authorization")
        parts = header.split(" ", 1) if header else []
        scheme, token = (None, None) if not parts else (None, parts[0]) if len(parts) == 1 else parts
        return kopf.ConnectionInfo(
            server=cfg.host,
            ca_path=cfg.ssl_ca_cert,
            insecure=not cfg.verify_ssl,
            username=cfg.username or None,
            password=cfg.password or None,
            scheme=scheme,
            token=token,
            certificate_path=cfg.cert_file,
            private_key_path=cfg.key_file,
        )

    # -- raw calls -------------------------------------------------------------------------

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: Mapping[str, str | int] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        """One request; the decoded JSON answer, or `ApiError`."""
        return await asyncio.to_thread(self._call, method, path, body, query, content_type)

    def _call(
        self,
        method: str,
        path: str,
        body: Any,
        query: Mapping[str, str | int] | None,
        content_type: str,
    ) -> dict[str, Any]:
        import kubernetes

        headers = {"Accept": "application/json", "Content-Type": content_type}
        try:
            request = self.client.param_serialize(
                method,
                path,
                query_params=list((query or {}).items()),
                header_params=headers,
                body=body,
                auth_settings=["BearerToken"],
            )
            response = self.client.call_api(*request, _request_timeout=30)
            data = response.read()  # type: ignore[no-untyped-call]
        except kubernetes.client.ApiException as exc:
            raise ApiError(exc.status or 0, _reason(exc.status, exc.reason, exc.body)) from exc
        except Exception as exc:  # urllib3 connection errors and the like
            raise ApiError(0, f"{self.server} is unreachable: {exc}") from exc
        if not 200 <= response.status <= 299:
            raise ApiError(response.status, _reason(response.status, response.reason, data))
        decoded: dict[str, Any] = json.loads(data) if data else {}
        return decoded

    # -- what the control plane does -------------------------------------------------------

    async def list_objects(
        self,
        kind: Kind,
        namespace: str | None = None,
        *,
        keep: Callable[[dict[str, Any]], bool] | None = None,
        field_selector: str = "",
    ) -> Listing:
        """Every object of a kind (in one namespace, or all), page by page, with the version
        the listing was read at.

        With `field_selector`, the API server sends only the objects it selects (Secrets of
        one type). With `keep`, only the objects it accepts are kept, page by page: a listing
        of a kind with many objects the caller has no use for holds one page of them at most.
        A listing that takes so long that its continue token expires is made again.
        """
        items = Listing()
        token = ""
        restarts = 0
        while True:
            query: dict[str, str | int] = {"limit": LIST_PAGE}
            if field_selector:
                query["fieldSelector"] = field_selector
            if token:
                query["continue"] = token
            try:
                page = await self.call("GET", kind.path(namespace), query=query)
            except ApiError as exc:
                if exc.status != 410 or not token or restarts >= LIST_RESTARTS:
                    raise
                restarts += 1
                log.info("the listing of %s expired before its last page: listing again", kind.plural)
                items, token = Listing(), ""
                continue
            meta = page.get("metadata") or {}
            if not token:  # every page is of the first one's version
                items.version = str(meta.get("resourceVersion") or "")
            token = meta.get("continue") or ""
            found = page.get("items") or []
            items.extend(found if keep is None else (item for item in found if keep(item)))
            del page, found  # the page's other objects are not held while the next one is read
            if not token:
                return items

    async def patch_status(self, kind: Kind, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        await self.call(
            "PATCH",
            kind.path(namespace, name, "status"),
            {"status": dict(status)},
            content_type="application/merge-patch+json",
        )

    async def create_event(self, namespace: str, event: Mapping[str, Any]) -> None:
        await self.call("POST", EVENTS.path(namespace), dict(event))

    async def get(self, kind: Kind, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self.call("GET", kind.path(namespace, name))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def create(self, kind: Kind, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self.call("POST", kind.path(namespace), dict(body))

    async def patch(self, kind: Kind, namespace: str, name: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """A JSON merge patch; with metadata.resourceVersion in it, a conflicting write fails (409)."""
        return await self.call(
            "PATCH", kind.path(namespace, name), dict(body), content_type="application/merge-patch+json"
        )

    def close(self) -> None:
        self.client.close()  # type: ignore[no-untyped-call]


def _reason(status: int | None, reason: str | None, body: bytes | str | None) -> str:
    """The API server's own message for a failed call, when it sent one."""
    try:
        decoded = json.loads(body or "")
        message = decoded.get("message") if isinstance(decoded, dict) else None
    except ValueError:
        message = None
    return f"{status} {reason}: {message}" if message else f"{status} {reason}"
