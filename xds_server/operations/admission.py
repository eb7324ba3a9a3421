"""The validating admission webhook: a bad StaticSite or GatewayGroup is refused at `kubectl apply`.

The API server sends every CREATE and UPDATE of a StaticSite or a GatewayGroup here as an
AdmissionReview (`admission.k8s.io/v1`) and refuses the object when the answer does, with the
answer's message. The judgment is the control plane's own, word for word what it would write
in the site's status:

- `POST /validate/staticsites`: the problems `snapshot.model.parse_site` finds (InvalidSpec,
  each naming its field), then the domain grants of the tenancy the control plane built last
  (DomainNotPermitted, GatewayGroupNotFound).
- `POST /validate/gatewaygroups`: what `parse_gateway_group` cannot read, and every part it
  would leave out (a domain pattern on a public suffix, a bad client name...): at apply a
  group is taken whole or not at all.

Any other operation (DELETE) is allowed. Until the control plane has built its first site
set the grants are not known: a site is then allowed with a warning (its status tells).

The port serves HTTPS with the xDS port's server certificate (`ServingCertificate`, the
`--tls-cert` and `--tls-key` files, followed through their rotations): a handshake after a
rotation gets the new certificate. The API server presents no client certificate, so none is
asked for. A review is bounded in size; a body that is no AdmissionReview is answered 400 with
what is wrong; whatever a request holds, the process keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web

from snapshot.model import InvalidSite, SiteKey, describe, parse_site, type_name
from snapshot.tenancy import InvalidGatewayGroup, Tenancy, parse_gateway_group
from snapshot.verdict import invalid

from .health import split_address
from .tls import ServerKeyMaterial, ServingCertificate

log = logging.getLogger("staticsite_xds.admission")

ADMISSION_API_VERSION: Final = "admission.k8s.io/v1"
REVIEW_KIND: Final = "AdmissionReview"
SITES_PATH: Final = "/validate/staticsites"
GATEWAY_GROUPS_PATH: Final = "/validate/gatewaygroups"
# A review holds the object and, for an UPDATE, its old version: each at most what etcd
# stores (1.5 MiB), in JSON.
MAX_REVIEW_BYTES: Final = 4 * 1024 * 1024
REFUSED_CODE: Final = 403
JUDGED_OPERATIONS: Final = frozenset({"CREATE", "UPDATE"})
GRANTS_NOT_KNOWN: Final = (
    "the control plane has not read the cluster's gateway groups yet, so the domain grants "
    "were not checked at apply; the site's status will tell"
)


class MalformedReview(ValueError):
    """A request body that is no AdmissionReview this webhook can answer (the message says why)."""


@dataclass(frozen=True, slots=True)
class ReviewRequest:
    """What a review asks: of which object, by which operation."""

    uid: str
    operation: str
    namespace: str
    name: str
    object: Mapping[str, Any] | None


@dataclass(frozen=True, slots=True)
class Answer:
    """The webhook's verdict on one request."""

    allowed: bool
    message: str = ""
    reason: str = ""  # the status reason the control plane would report
    warnings: tuple[str, ...] = ()


ALLOWED: Final = Answer(True)


def read_review(body: bytes) -> ReviewRequest:
    """The request of an AdmissionReview in JSON; `MalformedReview` when it is none."""
    try:
        review = json.loads(body)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested beyond what JSON decodes
        raise MalformedReview(f"the body is not JSON ({exc})") from None
    if not isinstance(review, dict):
        raise MalformedReview(f"expected an {REVIEW_KIND} object, got {type_name(review)}")
    if review.get("apiVersion") != ADMISSION_API_VERSION or review.get("kind") != REVIEW_KIND:
        raise MalformedReview(
            f"expected apiVersion {ADMISSION_API_VERSION} and kind {REVIEW_KIND}, got "
            f"{describe(review.get('apiVersion'))} and {describe(review.get('kind'))}"
        )
    request = review.get("request")
    if not isinstance(request, dict):
        raise MalformedReview(f"request: expected an object, got {type_name(request)}")
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid:
        raise MalformedReview(f"request.uid: expected a non-empty string, got {describe(uid)}")
    operation = request.get("operation")
    if not isinstance(operation, str):
        raise MalformedReview(f"request.operation: expected a string, got {describe(operation)}")
    obj = request.get("object")
    if operation in JUDGED_OPERATIONS and not isinstance(obj, dict):
        raise MalformedReview(f"request.object: expected the object of the {operation}, got {type_name(obj)}")
    texts = {}
    for field in ("namespace", "name"):
        value = request.get(field) or ""
        if not isinstance(value, str):
            raise MalformedReview(f"request.{field}: expected a string, got {describe(value)}")
        texts[field] = value
    return ReviewRequest(
        uid, operation, texts["namespace"], texts["name"], obj if isinstance(obj, dict) else None
    )


def review_response(uid: str, answer: Answer) -> dict[str, Any]:
    """The AdmissionReview that answers request `uid`."""
    response: dict[str, Any] = {"uid": uid, "allowed": answer.allowed}
    if not answer.allowed:
        status: dict[str, Any] = {"code": REFUSED_CODE, "message": answer.message}
        if answer.reason:
            status["reason"] = answer.reason
        response["status"] = status
    if answer.warnings:
        response["warnings"] = list(answer.warnings)
    return {"apiVersion": ADMISSION_API_VERSION, "kind": REVIEW_KIND, "response": response}


def _with_identity(request: ReviewRequest) -> dict[str, Any]:
    """The object, with the namespace and name of the request where its metadata lacks them."""
    assert request.object is not None
    body = dict(request.object)
    meta = body.get("metadata")
    if isinstance(meta, Mapping):
        filled = dict(meta)
        if request.namespace:
            filled.setdefault("namespace", request.namespace)
        if request.name:
            filled.setdefault("name", request.name)
        body["metadata"] = filled
    return body


def judge_site(request: ReviewRequest, tenancy: Tenancy | None) -> Answer:
    """A StaticSite as the control plane judges it; `tenancy` None: the grants are not known yet."""
    if request.operation not in JUDGED_OPERATIONS:
        return ALLOWED
    body = _with_identity(request)
    key = SiteKey(request.namespace, request.name)
    try:
        site = parse_site(body, origin=f"StaticSite {key}")
    except InvalidSite as exc:  # the message of the status, as the Kubernetes source reports it
        state = invalid(exc.key or key, tuple(exc.problems), still_served=False)
        return Answer(False, state.message, state.reason)
    if tenancy is None:
        return Answer(True, warnings=(GRANTS_NOT_KNOWN,))
    verdict = tenancy.judge(site)
    if verdict is not None:
        return Answer(False, verdict.message, verdict.reason)
    return ALLOWED


def judge_gateway_group(request: ReviewRequest, tenancy: Tenancy | None) -> Answer:
    """A GatewayGroup: refused if any part of it would be left out; warned of a client name
    another group lists too."""
    if request.operation not in JUDGED_OPERATIONS:
        return ALLOWED
    body = _with_identity(request)
    try:
        group = parse_gateway_group(body)
    except InvalidGatewayGroup as exc:
        return Answer(False, _group_message(exc.name or request.name, exc))
    if group.problems:
        return Answer(False, _group_message(group.name, InvalidGatewayGroup(list(group.problems))))
    warnings = []
    for other in tenancy.groups.values() if tenancy is not None else ():
        if other.name == group.name:
            continue
        for name in sorted(set(group.client_names) & set(other.client_names)):
            warnings.append(
                f"client name {name} is listed by gateway group {other.name} too: neither group gets it"
            )
    return Answer(True, warnings=tuple(warnings))


def _group_message(name: str, exc: InvalidGatewayGroup) -> str:
    return f"GatewayGroup {name}: {exc}" if name else f"GatewayGroup: {exc}"


Judge = Callable[[ReviewRequest, Tenancy | None], Answer]


# -- HTTPS with the xDS port's certificate --------------------------------------------------------


@contextlib.contextmanager
def _in_memory(data: bytes) -> Iterator[str]:
    """A path that reads `data` from memory alone: a private key is never written to a disk."""
    fd = os.memfd_create("staticsite-xds-admission", os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def server_context(material: ServerKeyMaterial) -> ssl.SSLContext:
    """A TLS server context presenting this certificate chain and key (no client certificate asked)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    with _in_memory(material.certificate_chain) as chain, _in_memory(material.private_key) as key:
        context.load_cert_chain(chain, key)
    return context


class FollowedContext:
    """The TLS context of the webhook's port, following the serving certificate's rotations.

    `context` is what the port listens with; before each handshake it looks at the files (as
    the xDS port does) and hands the connection a context of the newest good set.
    """

    def __init__(self, serving: ServingCertificate) -> None:
        self.serving = serving
        self._material = serving.current
        self._current = server_context(self._material)
        self.context = server_context(self._material)
        self.context.sni_callback = self._choose

    def _choose(self, connection: ssl.SSLObject, _server_name: str | None, _base: ssl.SSLContext) -> None:
        try:
            self.serving.check()
            material = self.serving.current
            if material is not self._material:
                self._current, self._material = server_context(material), material
            connection.context = self._current
        except Exception:  # a handshake must never take the port down
            log.exception("the admission webhook could not take the new certificate; serving the last one")


# -- the port ------------------------------------------------------------------------------------


class AdmissionServer:
    """The webhook's HTTPS port; `tenancy` gives the control plane's current tenancy (None
    until it has built its first site set)."""

    def __init__(self, serving: ServingCertificate, tenancy: Callable[[], Tenancy | None]) -> None:
        self.tls = FollowedContext(serving)
        self.tenancy = tenancy
        self._runner: web.AppRunner | None = None
        self.port = 0

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_REVIEW_BYTES)
        app.router.add_post(SITES_PATH, self._sites)
        app.router.add_post(GATEWAY_GROUPS_PATH, self._gateway_groups)
        return app

    async def start(self, address: str) -> int:
        """Listen on `address` (port 0: any free one); the port bound."""
        host, port = split_address(address)
        listening = socket.create_server(
            (host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET, reuse_port=False
        )
        self.port = listening.getsockname()[1]
        runner = web.AppRunner(self.app(), access_log=None)
        await runner.setup()
        try:
            await web.SockSite(runner, listening, ssl_context=self.tls.context).start()
        except BaseException:
            await runner.cleanup()
            listening.close()
            raise
        self._runner = runner
        log.info(
            "admission webhook on https://%s:%d (%s, %s)", host, self.port, SITES_PATH, GATEWAY_GROUPS_PATH
        )
        return self.port

    async def serve(self, address: str, stop: asyncio.Event) -> None:
        """Answer reviews until `stop` is set."""
        async with self.listening(address):
            await stop.wait()

    @contextlib.asynccontextmanager
    async def listening(self, address: str) -> AsyncIterator[int]:
        """The port open on `address` while in the block (its number given)."""
        port = await self.start(address)
        try:
            yield port
        finally:
            await self.stop()

    async def stop(self) -> None:
        """Close the port (a review being answered is finished first)."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _sites(self, request: web.Request) -> web.Response:
        return await self._review(request, judge_site)

    async def _gateway_groups(self, request: web.Request) -> web.Response:
        return await self._review(request, judge_gateway_group)

    async def _review(self, request: web.Request, judge: Judge) -> web.Response:
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return web.Response(status=413, text=f"an AdmissionReview is at most {MAX_REVIEW_BYTES} bytes\n")
        try:
            review = read_review(body)
        except MalformedReview as exc:
            return web.Response(status=400, text=f"not an AdmissionReview: {exc}\n")
        try:
            answer = judge(review, self.tenancy())
        except Exception:  # a judging bug: this review goes unanswered, the port keeps serving
            log.exception("judging %s %s/%s failed", review.operation, review.namespace, review.name)
            return web.Response(status=500, text="the review could not be judged\n")
        if not answer.allowed:
            log.info("refused at admission: %s", answer.message)
        return web.json_response(review_response(review.uid, answer))
