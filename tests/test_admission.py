"""The validating admission webhook over real HTTPS on loopback: AdmissionReviews in and out,
the control plane's own verdicts word for word, the xDS port's certificate and its rotation,
and requests that are no review at all."""

from __future__ import annotations

import asyncio
import hashlib
import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
import trustme
from support.admission import SERVER_NAME, Review, grant, group_body, review, site_body, write_pair

from snapshot.builder import BuildOptions
from snapshot.model import parse_site
from snapshot.tenancy import Tenancy, parse_gateway_group
from xds_server.operations.admission import (
    GATEWAY_GROUPS_PATH,
    GRANTS_NOT_KNOWN,
    MAX_REVIEW_BYTES,
    SITES_PATH,
    AdmissionServer,
)
from xds_server.operations.tls import ServingCertificate
from xds_server.process.serve import ServeConfig, ServeError, serve

pytestmark = pytest.mark.unit

# login.x.com is the security team's alone; the rest of x.com is every listed team's.
TENANCY = Tenancy.of(
    [
        parse_gateway_group(
            group_body(
                "default",
                grant(["login.x.com"], "security"),
                grant(["**.x.com"], "security", "team-a", "team-b"),
            )
        )
    ],
    {"security": {}, "team-a": {}, "team-b": {}},
)


@dataclass
class Webhook:
    server: AdmissionServer
    session: aiohttp.ClientSession
    ca: trustme.CA
    files: Path
    tenancy: list[Tenancy | None] = field(default_factory=lambda: [TENANCY])

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.server.port}"

    async def post(self, path: str, body: bytes) -> aiohttp.ClientResponse:
        async with self.session.post(
            self.url + path,
            data=body,
            headers={"Content-Type": "application/json"},
            server_hostname=SERVER_NAME,
        ) as response:
            await response.read()
            return response

    async def ask(self, path: str, sent: Review) -> Review:
        async with self.session.post(self.url + path, json=sent, server_hostname=SERVER_NAME) as response:
            assert response.status == 200, await response.text()
            answer: Review = await response.json()
        assert answer["apiVersion"] == "admission.k8s.io/v1"
        assert answer["kind"] == "AdmissionReview"
        assert answer["response"]["uid"] == sent["request"]["uid"]
        response_body: Review = answer["response"]
        return response_body

    async def peer_fingerprint(self) -> str:
        """The SHA-256 of the certificate a new connection is shown."""
        context = ssl.create_default_context(cadata=self.ca.cert_pem.bytes().decode())
        _, writer = await asyncio.open_connection(
            "127.0.0.1", self.server.port, ssl=context, server_hostname=SERVER_NAME
        )
        try:
            der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        finally:
            writer.close()
        return hashlib.sha256(der).hexdigest()


def fingerprint_of(leaf: trustme.LeafCert) -> str:
    der = ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())
    return hashlib.sha256(der).hexdigest()


@pytest.fixture
async def webhook(tmp_path: Path) -> AsyncIterator[Webhook]:
    ca = trustme.CA()
    write_pair(tmp_path, ca.issue_cert(SERVER_NAME), ca)
    serving = ServingCertificate.from_paths(tmp_path / "tls.crt", tmp_path / "tls.key", tmp_path / "ca.crt")
    tenancy: list[Tenancy | None] = [TENANCY]
    server = AdmissionServer(serving, lambda: tenancy[0])
    await server.start("127.0.0.1:0")
    context = ssl.create_default_context(cadata=ca.cert_pem.bytes().decode())
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context, force_close=True))
    try:
        yield Webhook(server, session, ca, tmp_path, tenancy)
    finally:
        await session.close()
        await server.stop()


# -- StaticSites -------------------------------------------------------------------------------


async def test_a_valid_site_in_its_grant_is_allowed(webhook: Webhook) -> None:
    answer = await webhook.ask(SITES_PATH, review(site_body("team-a", "docs", "docs.x.com")))
    assert answer["allowed"] is True
    assert "status" not in answer
    assert "warnings" not in answer


async def test_an_invalid_spec_is_refused_naming_each_field(webhook: Webhook) -> None:
    body = site_body("team-a", "docs", "not a domain", connectRetries=99)
    answer = await webhook.ask(SITES_PATH, review(body))
    assert answer["allowed"] is False
    status = answer["status"]
    assert status["code"] == 403
    assert status["reason"] == "InvalidSpec"
    message = status["message"]
    assert message.startswith("StaticSite team-a/docs: ")
    assert "spec.domain: " in message
    assert "; spec.connectRetries: " in message


async def test_the_refusal_of_an_invalid_spec_is_the_status_message(webhook: Webhook) -> None:
    from snapshot.model import InvalidSite
    from snapshot.verdict import invalid

    body = site_body("team-a", "docs", "docs.x.com", backend={"serviceName": "Web_1"})
    with pytest.raises(InvalidSite) as raised:
        parse_site(body, origin="StaticSite team-a/docs")  # as the Kubernetes source parses it
    key = raised.value.key
    assert key is not None
    status = invalid(key, tuple(raised.value.problems), still_served=False)
    answer = await webhook.ask(SITES_PATH, review(body))
    assert answer["status"]["message"] == status.message


async def test_a_site_outside_its_grant_is_refused_with_the_status_message(webhook: Webhook) -> None:
    body = site_body("team-b", "login", "login.x.com")
    answer = await webhook.ask(SITES_PATH, review(body))
    assert answer["allowed"] is False
    assert answer["status"]["code"] == 403
    assert answer["status"]["reason"] == "DomainNotPermitted"
    expected = "domain login.x.com is not granted to namespace team-b in gateway group default (it is granted to: security)"
    assert answer["status"]["message"] == expected
    verdict = TENANCY.judge(parse_site(body))
    assert verdict is not None
    assert verdict.message == expected  # what the control plane writes in the site's status


async def test_an_alias_outside_the_grant_is_refused_too(webhook: Webhook) -> None:
    body = site_body("team-a", "docs", "docs.x.com", aliases=["www.y.org"])
    answer = await webhook.ask(
        SITES_PATH, review(body, "UPDATE", old=site_body("team-a", "docs", "docs.x.com"))
    )
    assert answer["allowed"] is False
    assert answer["status"]["message"].startswith("domain www.y.org is not granted to namespace team-a")


async def test_a_site_naming_a_gateway_group_that_does_not_exist_is_refused(webhook: Webhook) -> None:
    answer = await webhook.ask(
        SITES_PATH, review(site_body("team-a", "docs", "docs.x.com", gatewayGroup="edge"))
    )
    assert answer["allowed"] is False
    assert answer["status"]["reason"] == "GatewayGroupNotFound"
    assert answer["status"]["message"] == "gateway group edge does not exist (the groups: default)"


async def test_the_namespace_comes_from_the_request_when_the_object_lacks_it(webhook: Webhook) -> None:
    body = site_body("team-b", "login", "login.x.com")
    sent = review(body)
    del body["metadata"]["namespace"]
    answer = await webhook.ask(SITES_PATH, sent)
    assert answer["status"]["reason"] == "DomainNotPermitted"
    assert "namespace team-b" in answer["status"]["message"]


async def test_before_the_first_site_set_a_valid_site_is_allowed_with_a_warning(webhook: Webhook) -> None:
    webhook.tenancy[0] = None
    answer = await webhook.ask(SITES_PATH, review(site_body("team-b", "login", "login.x.com")))
    assert answer["allowed"] is True
    assert answer["warnings"] == [GRANTS_NOT_KNOWN]
    invalid = await webhook.ask(SITES_PATH, review(site_body("team-b", "login", "not a domain")))
    assert invalid["allowed"] is False  # the spec is judged all the same


async def test_the_tenancy_judged_against_is_the_current_one(webhook: Webhook) -> None:
    body = site_body("team-b", "login", "login.x.com")
    assert (await webhook.ask(SITES_PATH, review(body)))["allowed"] is False
    webhook.tenancy[0] = Tenancy.of(
        [parse_gateway_group(group_body("default", grant(["**.x.com"], "team-b")))], {"team-b": {}}
    )
    assert (await webhook.ask(SITES_PATH, review(body)))["allowed"] is True


@pytest.mark.parametrize("path", [SITES_PATH, GATEWAY_GROUPS_PATH])
async def test_delete_is_always_allowed(webhook: Webhook, path: str) -> None:
    old = (
        site_body("team-b", "login", "login.x.com") if path == SITES_PATH else group_body("x", grant(["com"]))
    )
    answer = await webhook.ask(path, review(None, "DELETE", old=old))
    assert answer["allowed"] is True


# -- GatewayGroups -----------------------------------------------------------------------------


async def test_a_valid_gateway_group_is_allowed(webhook: Webhook) -> None:
    body = group_body("edge", grant(["docs.my-company.com", "**.my-company.com"], "docs"))
    answer = await webhook.ask(GATEWAY_GROUPS_PATH, review(body))
    assert answer["allowed"] is True
    assert "warnings" not in answer


@pytest.mark.parametrize("pattern", ["**.co.uk", "*.com", "github.io"])
async def test_a_public_suffix_pattern_is_refused(webhook: Webhook, pattern: str) -> None:
    body = group_body("edge", grant(["docs.my-company.com", pattern], "docs"))
    answer = await webhook.ask(GATEWAY_GROUPS_PATH, review(body))
    assert answer["allowed"] is False
    assert answer["status"]["code"] == 403
    message = answer["status"]["message"]
    assert message.startswith("GatewayGroup edge: spec.grants[0].domains[1]: ")
    assert "public suffix" in message
    assert "domains[0]" not in message


async def test_a_gateway_group_that_cannot_be_read_is_refused(webhook: Webhook) -> None:
    body = group_body("Not_A_Label", grant(["x.com"], "docs"))
    answer = await webhook.ask(GATEWAY_GROUPS_PATH, review(body))
    assert answer["allowed"] is False
    assert "metadata.name" in answer["status"]["message"]


async def test_a_client_name_another_group_lists_is_warned_of(webhook: Webhook) -> None:
    shared = "default.gateway-group.staticsite-xds.dev"  # the default group's own name
    body = group_body("edge", grant(["docs.my-company.com"], "docs"), client_names=[shared])
    answer = await webhook.ask(GATEWAY_GROUPS_PATH, review(body))
    assert answer["allowed"] is True
    assert answer["warnings"] == [
        f"client name {shared} is listed by gateway group default too: neither group gets it"
    ]


# -- what is no review -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"\x00\xffgarbage", "not JSON"),
        (b"[1, 2]", "got a list"),
        (json.dumps({"apiVersion": "v1", "kind": "Pod"}).encode(), "expected apiVersion admission.k8s.io/v1"),
        (json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}).encode(), "request:"),
        (b"[" * 100_000 + b"]" * 100_000, "not JSON"),
    ],
    ids=["garbage", "a list", "another kind", "no request", "deep nesting"],
)
async def test_a_malformed_review_is_a_400_and_the_port_keeps_serving(
    webhook: Webhook, body: bytes, says: str
) -> None:
    response = await webhook.post(SITES_PATH, body)
    assert response.status == 400
    text = await response.text()
    assert text.startswith("not an AdmissionReview: ")
    assert says in text
    answer = await webhook.ask(SITES_PATH, review(site_body("team-a", "docs", "docs.x.com")))
    assert answer["allowed"] is True


async def test_a_review_without_its_object_is_a_400(webhook: Webhook) -> None:
    sent = review(site_body("team-a", "docs", "docs.x.com"))
    sent["request"]["object"] = None
    response = await webhook.post(SITES_PATH, json.dumps(sent).encode())
    assert response.status == 400
    assert "request.object" in await response.text()


async def test_a_review_too_large_is_refused_unread(webhook: Webhook) -> None:
    response = await webhook.post(SITES_PATH, b" " * (MAX_REVIEW_BYTES + 1))
    assert response.status == 413
    assert (await webhook.ask(SITES_PATH, review(site_body("team-a", "docs", "docs.x.com"))))["allowed"]


async def test_a_judging_failure_is_a_500_and_the_port_keeps_serving(webhook: Webhook) -> None:
    class Broken:
        def judge(self, _site: object) -> None:
            raise RuntimeError("boom")

    webhook.tenancy[0] = Broken()  # type: ignore[call-overload]
    response = await webhook.post(
        SITES_PATH, json.dumps(review(site_body("team-a", "d", "d.x.com"))).encode()
    )
    assert response.status == 500
    webhook.tenancy[0] = TENANCY
    assert (await webhook.ask(SITES_PATH, review(site_body("team-a", "docs", "docs.x.com"))))["allowed"]


async def test_an_unknown_path_is_a_404(webhook: Webhook) -> None:
    response = await webhook.post("/validate/pods", b"{}")
    assert response.status == 404


# -- the certificate ---------------------------------------------------------------------------


async def test_the_port_serves_the_xds_certificate_and_follows_its_rotation(webhook: Webhook) -> None:
    serving = webhook.server.tls.serving
    assert await webhook.peer_fingerprint() == serving.current.fingerprint
    renewed = webhook.ca.issue_cert(SERVER_NAME)
    write_pair(webhook.files, renewed, webhook.ca)
    assert await webhook.peer_fingerprint() == fingerprint_of(renewed)  # the next handshake has it
    assert serving.rotations == 1
    answer = await webhook.ask(SITES_PATH, review(site_body("team-a", "docs", "docs.x.com")))
    assert answer["allowed"] is True


async def test_a_broken_rotation_keeps_the_last_good_certificate(webhook: Webhook) -> None:
    before = await webhook.peer_fingerprint()
    (webhook.files / "tls.key").write_bytes(b"-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    assert await webhook.peer_fingerprint() == before


# -- assembling `serve` --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "with_tls", "says"),
    [
        ("127.0.0.1:8443", False, "--admission-address needs --tls-cert, --tls-key and --tls-client-ca"),
        ("nowhere", True, "--admission-address: 'nowhere' is not host:port"),
    ],
)
def test_serve_names_what_the_webhook_lacks(tmp_path: Path, address: str, with_tls: bool, says: str) -> None:
    ca = trustme.CA()
    write_pair(tmp_path, ca.issue_cert(SERVER_NAME), ca)
    serving = (
        ServingCertificate.from_paths(tmp_path / "tls.crt", tmp_path / "tls.key", tmp_path / "ca.crt")
        if with_tls
        else None
    )
    config = ServeConfig(
        BuildOptions(), xds_address="127.0.0.1:0", sites=tmp_path, serving=serving, admission_address=address
    )
    with pytest.raises(ServeError, match=says):
        serve(config)
