"""The TLS Secrets of StaticSites, against kmock's API emulator over HTTP.

A site's `spec.tls.secretName` names a `kubernetes.io/tls` Secret of its namespace; the source
attaches its certificate to the site, follows its renewals, and reports a Secret that is
missing or unusable as a problem of the site. Only the Secrets some site names are held.

Most tests run the source alone (`KubernetesSource.watch`, kopf included) and read the site
sets it yields; one runs a whole control plane, to read the status it writes.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import trustme
from support.kubernetes import Cluster, WatchedSource, start_replica
from support.waiting import eventually

from snapshot.model import Certificate, Problem, SiteKey, StaticSite
from watcher.k8s import (
    INVALID_SECRET,
    SECRET_FIELD,
    SECRET_NOT_FOUND,
    certificate_name,
    load_secret,
)
from watcher.k8s_api import SECRETS, ApiError

pytestmark = [pytest.mark.timeout(30), pytest.mark.kubernetes]

SECRETS_RESOURCE = "v1/secrets"
TLS = "kubernetes.io/tls"
KEY = SiteKey("docs", "main")
TLS_SPEC = {"tls": {"secretName": "web-tls"}}


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@dataclass(frozen=True)
class Pair:
    chain: bytes
    key: bytes


def issue(ca: trustme.CA, domain: str = "docs.example.com") -> Pair:
    leaf = ca.issue_cert(domain)
    return Pair(b"".join(pem.bytes() for pem in leaf.cert_chain_pems), leaf.private_key_pem.bytes())


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def secret_body(
    namespace: str,
    name: str,
    pair: Pair | None = None,
    *,
    kind: str = TLS,
    data: dict[str, str] | None = None,
) -> dict[str, Any]:
    if data is None:
        assert pair is not None
        data = {"tls.crt": b64(pair.chain), "tls.key": b64(pair.key)}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "type": kind,
        "data": data,
    }


async def create_secret(
    cluster: Cluster, namespace: str, name: str, pair: Pair | None = None, **kw: Any
) -> None:
    body = cluster._stamp(secret_body(namespace, name, pair, **kw), new=True)
    await cluster.api.create(SECRETS, namespace, body)


async def renew_secret(cluster: Cluster, namespace: str, name: str, pair: Pair) -> None:
    patch = cluster._stamp({"data": {"tls.crt": b64(pair.chain), "tls.key": b64(pair.key)}}, new=False)
    await cluster.api.patch(SECRETS, namespace, name, patch)


async def delete_secret(cluster: Cluster, namespace: str, name: str) -> None:
    await cluster.api.call("DELETE", SECRETS.path(namespace, name))


def put_secret_silently(cluster: Cluster, namespace: str, name: str, pair: Pair) -> None:
    """Store a Secret with no watch event: as if it was there before anyone watched."""
    body = cluster._stamp(secret_body(namespace, name, pair), new=True)
    cluster.kmock.objects[SECRETS_RESOURCE, namespace, name] = body


def secret_gets(cluster: Cluster, name: str) -> int:
    """How many GETs of this one Secret the source made."""
    fetch = cluster.kmock.action.FETCH
    ours = cluster.requests_by("staticsite-xds/")
    return sum(1 for r in ours if r.action == fetch and r.url.path.endswith(f"/secrets/{name}"))


def secret_watches(cluster: Cluster) -> int:
    """How many watch requests on Secrets kopf has made so far."""
    watch = cluster.kmock.action.WATCH
    return sum(1 for r in cluster.requests_by("kopf/") if r.action == watch and "/secrets" in r.url.path)


class Watching(WatchedSource):
    """A Kubernetes source watching the emulator, and every site set it yielded."""

    def site(self, key: SiteKey = KEY) -> StaticSite | None:
        return self.latest.sites.get(key)

    def certificate(self, key: SiteKey = KEY) -> Certificate | None:
        site = self.site(key)
        return site.certificate if site is not None else None

    def problems(self, key: SiteKey = KEY) -> tuple[Problem, ...]:
        return tuple(self.latest.invalid.get(key, ()))

    @property
    def held(self) -> set[tuple[str, str]]:
        """The Secrets the source holds in memory."""
        return set(self.source.cache.secrets.objects)


async def watch_a_tls_site(cluster: Cluster, watching: Any, pair: Pair) -> Watching:
    """Site docs/main with the certificate of Secret docs/web-tls (`pair`), and a source watching."""
    await create_secret(cluster, "docs", "web-tls", pair)
    await cluster.create_site("docs", "main", "docs.example.com", **TLS_SPEC)
    watched: Watching = await watching()
    return watched


@pytest.fixture
async def watching(cluster: Cluster) -> AsyncIterator[Any]:
    """Start a source on demand (after the test has seeded the emulator); stop it at the end."""
    started: list[Watching] = []

    async def start(resync: float = 300.0) -> Watching:
        watched = await Watching.start(cluster, resync=resync)
        started.append(watched)
        # kopf stopped while it starts takes seconds; and events need its watch
        await eventually(lambda: secret_watches(cluster), what="kopf watching Secrets")
        return watched

    yield start
    for watched in started:
        await watched.close()


async def test_a_site_carries_the_certificate_of_its_secret(
    cluster: Cluster, watching: Any, ca: trustme.CA
) -> None:
    pair = issue(ca)
    watched = await watch_a_tls_site(cluster, watching, pair)

    # listed at start: the first set has it, and no GET of the Secret was needed
    cert = watched.certificate()
    assert cert is not None
    assert cert.name == certificate_name("docs", "web-tls") == "secret/docs/web-tls"
    assert (cert.chain, cert.key) == (pair.chain, pair.key)
    assert watched.latest.invalid == {}
    assert secret_gets(cluster, "web-tls") == 0

    # a site that comes later, naming a Secret that is there: read with a GET
    other = issue(ca, "blog.example.com")
    await create_secret(cluster, "blog", "blog-tls", other)
    await cluster.create_site("blog", "main", "blog.example.com", **{"tls": {"secretName": "blog-tls"}})
    blog = SiteKey("blog", "main")
    await eventually(lambda: watched.certificate(blog), what="the new site with its certificate")
    assert watched.certificate(blog) == Certificate(
        "secret/blog/blog-tls", other.chain, other.key, watched.certificate(blog).not_after
    )
    assert watched.held == {("docs", "web-tls"), ("blog", "blog-tls")}


async def test_a_renewed_secret_reaches_the_site_under_the_same_name(
    cluster: Cluster, watching: Any, ca: trustme.CA
) -> None:
    first, second = issue(ca), issue(ca)
    await create_secret(cluster, "docs", "web-tls", first)
    await cluster.create_site("docs", "main", "docs.example.com", **TLS_SPEC)
    await cluster.create_site("docs", "other", "other.example.com", **TLS_SPEC)  # the same Secret
    watched: Watching = await watching()
    assert watched.certificate() is not None
    count = len(watched.sets)

    await renew_secret(cluster, "docs", "web-tls", second)
    await eventually(lambda: (c := watched.certificate()) and c.chain == second.chain, what="the renewal")
    renewed = watched.certificate()
    assert renewed is not None
    assert renewed.name == "secret/docs/web-tls"
    assert renewed.key == second.key
    other = watched.certificate(SiteKey("docs", "other"))
    assert other is not None
    assert other.chain == second.chain
    assert len(watched.sets) > count
    changed = set().union(*(s.changed or () for s in watched.sets[count:]))
    assert {KEY, SiteKey("docs", "other")} <= changed
    assert watched.latest.invalid == {}


async def test_a_missing_secret_makes_the_site_invalid_until_it_is_created(
    cluster: Cluster, watching: Any, ca: trustme.CA, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="staticsite_xds.kubernetes")
    watched: Watching = await watching()
    await cluster.create_site("docs", "main", "docs.example.com", **TLS_SPEC)  # read with a GET: 404
    await eventually(lambda: watched.problems(), what="the problem")
    (problem,) = watched.problems()
    assert problem.field == SECRET_FIELD == "spec.tls.secretName"
    assert problem.reason == SECRET_NOT_FOUND == "SecretNotFound"
    assert "Secret docs/web-tls not found" in problem.message
    assert problem.origin == "StaticSite docs/main"
    assert watched.site() is None, "a new site whose Secret is missing is not served"
    assert secret_gets(cluster, "web-tls") == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("docs/main" in m and "docs/web-tls" in m for m in warnings), warnings

    pair = issue(ca)
    await create_secret(cluster, "docs", "web-tls", pair)  # the watch brings it: the site is named
    await eventually(lambda: watched.certificate(), what="the site served once its Secret exists")
    assert watched.certificate() == Certificate(
        "secret/docs/web-tls", pair.chain, pair.key, watched.certificate().not_after
    )
    assert watched.problems() == ()
    notes = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any("docs/main" in m and "docs/web-tls" in m and "again" in m for m in notes), notes


@pytest.mark.parametrize(
    ("case", "why"),
    [
        ("wrong-type", "its type is 'Opaque', not kubernetes.io/tls"),
        ("foreign-key", "the private key does not belong to the certificate"),
        ("no-key", "it has no tls.key"),
        ("not-base64", "its tls.crt is not base64"),
        ("not-pem", "the certificate is not a PEM certificate chain"),
    ],
)
async def test_a_malformed_secret_makes_the_site_invalid(
    cluster: Cluster, watching: Any, ca: trustme.CA, case: str, why: str
) -> None:
    pair, stranger = issue(ca), issue(ca)
    bodies: dict[str, dict[str, Any]] = {
        "wrong-type": {"pair": pair, "kind": "Opaque"},
        "foreign-key": {"data": {"tls.crt": b64(pair.chain), "tls.key": b64(stranger.key)}},
        "no-key": {"data": {"tls.crt": b64(pair.chain)}},
        "not-base64": {"data": {"tls.crt": "not base64!", "tls.key": b64(pair.key)}},
        "not-pem": {"data": {"tls.crt": b64(b"hello"), "tls.key": b64(pair.key)}},
    }
    await create_secret(cluster, "docs", "web-tls", **bodies[case])
    await cluster.create_site("docs", "main", "docs.example.com", **TLS_SPEC)
    watched: Watching = await watching()
    (problem,) = watched.problems()
    assert (problem.field, problem.reason) == (SECRET_FIELD, INVALID_SECRET)
    assert problem.message.startswith("Secret docs/web-tls cannot be used: ")
    assert why in problem.message
    assert watched.site() is None

    await renew_secret(cluster, "docs", "web-tls", pair)  # fixed (the type is another matter)
    if case == "wrong-type":
        await asyncio.sleep(0.3)
        assert watched.problems() == (problem,)
    else:
        await eventually(lambda: watched.certificate(), what="the fixed Secret served")
        assert watched.problems() == ()


def test_load_secret_reads_string_data_and_refuses_what_it_cannot_serve(ca: trustme.CA) -> None:
    pair = issue(ca)
    ref = ("docs", "web-tls")
    plain = secret_body("docs", "web-tls", data={})
    plain["stringData"] = {"tls.crt": pair.chain.decode(), "tls.key": pair.key.decode()}
    loaded = load_secret(ref, plain)
    assert isinstance(loaded, Certificate)
    assert (loaded.name, loaded.chain, loaded.key) == ("secret/docs/web-tls", pair.chain, pair.key)
    for body, why in [
        ({"type": TLS}, "it has no tls.crt"),
        ({"type": TLS, "data": {"tls.crt": 12, "tls.key": "x"}}, "its tls.crt is not base64"),
        ({"type": TLS, "data": {"tls.crt": "", "tls.key": ""}}, "the certificate is empty"),
        ({"data": {}}, "its type is None"),
    ]:
        problem = load_secret(ref, body)
        assert isinstance(problem, Problem)
        assert problem.reason == INVALID_SECRET
        assert why in problem.message, problem.message


async def test_only_the_secrets_sites_name_are_held(cluster: Cluster, watching: Any, ca: trustme.CA) -> None:
    pair = issue(ca)
    for i in range(12):
        await create_secret(cluster, "docs", f"unrelated-{i}", pair)
    watched = await watch_a_tls_site(cluster, watching, pair)
    assert watched.held == {("docs", "web-tls")}

    # events of other Secrets are dropped as they arrive
    for i in range(12, 20):
        await create_secret(cluster, "docs", f"unrelated-{i}", pair)
    renewed = issue(ca)
    await renew_secret(cluster, "docs", "web-tls", renewed)
    await eventually(lambda: (c := watched.certificate()) and c.chain == renewed.chain, what="the renewal")
    await asyncio.sleep(0.2)  # kopf hands each object's events over in a task of its own
    assert watched.held == {("docs", "web-tls")}
    # and so are the other Secrets of a listing
    await watched.source.relist()
    assert watched.held == {("docs", "web-tls")}

    # a Secret there before any site named it (dropped by every listing) is read when named
    gets = secret_gets(cluster, "unrelated-3")
    await cluster.create_site("docs", "late", "late.example.com", **{"tls": {"secretName": "unrelated-3"}})
    late = SiteKey("docs", "late")
    await eventually(lambda: watched.certificate(late), what="the Secret read once named")
    assert secret_gets(cluster, "unrelated-3") == gets + 1
    assert watched.held == {("docs", "web-tls"), ("docs", "unrelated-3")}
    assert all(late not in s.invalid for s in watched.sets), "never 'not found' while it was read"

    # a Secret no site names any more is dropped
    await cluster.delete_site("docs", "late")
    await eventually(lambda: watched.held == {("docs", "web-tls")}, what="the Secret dropped")
    await cluster.update_spec("docs", "main", {"tls": None})  # the merge patch removes spec.tls
    await eventually(lambda: (s := watched.site()) and s.tls is None, what="the site without TLS")
    assert watched.held == set()
    site = watched.site()
    assert site is not None
    assert (site.tls, site.certificate) == (None, None)
    ours = cluster.requests_by("staticsite-xds/") + cluster.requests_by("kopf/")
    writes = [r for r in ours if "/secrets" in r.url.path and not str(r.method).upper().endswith("GET")]
    assert writes == [], "Secrets are only read"


def secret_reads(cluster: Cluster) -> list[Any]:
    """Every listing and watch of Secrets the source (or its kopf) asked for."""
    kinds = (cluster.kmock.action.LIST, cluster.kmock.action.WATCH)
    ours = cluster.requests_by("staticsite-xds/") + cluster.requests_by("kopf/")
    return [r for r in ours if r.action in kinds and r.url.path.endswith("/secrets")]


async def test_only_tls_secrets_are_listed_and_watched(
    cluster: Cluster, watching: Any, ca: trustme.CA
) -> None:
    """The API server sends no Secret of another type: every listing and watch selects the type,
    and a named Secret of another type is read by its own GET, held without its data."""
    pair = issue(ca)
    await create_secret(cluster, "docs", "opaque", pair, kind="Opaque")
    await create_secret(cluster, "docs", "web-tls", pair)
    await cluster.create_site("docs", "other", "other.example.com", **{"tls": {"secretName": "opaque"}})
    await cluster.create_site("docs", "main", "docs.example.com", **TLS_SPEC)
    watched: Watching = await watching()
    assert watched.certificate() is not None
    (problem,) = watched.problems(SiteKey("docs", "other"))
    assert "its type is 'Opaque', not kubernetes.io/tls" in problem.message
    held = watched.source.cache.secret("docs", "opaque")
    assert held is not None
    assert "data" not in held, "of a Secret of another type, only its metadata and type are held"
    assert secret_gets(cluster, "opaque") == 1
    assert secret_gets(cluster, "web-tls") == 0

    # the watch brings no event of a Secret of another type, even one a site names
    watches = len([r for r in secret_reads(cluster) if r.action == cluster.kmock.action.WATCH])
    assert watches >= 1
    patch = cluster._stamp({"data": {"extra": b64(b"x")}}, new=False)
    await cluster.api.patch(SECRETS, "docs", "opaque", patch)
    await renew_secret(cluster, "docs", "web-tls", issue(ca))
    await eventually(lambda: watched.certificate().chain != pair.chain, what="the renewal")  # type: ignore[union-attr]
    await watched.source.relist()
    assert "data" not in (watched.source.cache.secret("docs", "opaque") or {})
    reads = secret_reads(cluster)
    assert reads
    assert all(r.params.get("fieldSelector") == "type=kubernetes.io/tls" for r in reads), [
        (r.url.path, dict(r.params)) for r in reads
    ]


async def test_the_emulator_selects_secrets_by_type_as_an_api_server_does(
    cluster: Cluster, ca: trustme.CA
) -> None:
    """Without this, a test could not tell a listing of every Secret from one of TLS Secrets."""
    pair = issue(ca)
    await create_secret(cluster, "docs", "opaque", pair, kind="Opaque")
    await create_secret(cluster, "docs", "web-tls", pair)
    every = await cluster.api.list_objects(SECRETS)
    tls = await cluster.api.list_objects(SECRETS, field_selector="type=kubernetes.io/tls")
    other = await cluster.api.list_objects(SECRETS, "docs", field_selector="type!=kubernetes.io/tls")
    assert sorted(b["metadata"]["name"] for b in every) == ["opaque", "web-tls"]
    assert [b["metadata"]["name"] for b in tls] == ["web-tls"]
    assert [b["metadata"]["name"] for b in other] == ["opaque"]
    with pytest.raises(ApiError) as refused:
        await cluster.api.list_objects(SECRETS, field_selector="data.x=y")
    assert refused.value.status == 400


async def test_a_site_that_comes_to_name_a_secret_keeps_its_version_while_it_is_read(
    cluster: Cluster, watching: Any, ca: trustme.CA
) -> None:
    first, second = issue(ca), issue(ca)
    watched = await watch_a_tls_site(cluster, watching, first)
    put_secret_silently(cluster, "docs", "next-tls", second)  # not named: never held
    answered = asyncio.Event()

    async def slow_answer() -> Any:
        await asyncio.sleep(0.5)
        answered.set()
        return NotImplemented  # the emulator answers, late

    secrets = cluster.kmock.resource("", "v1", "secrets")
    cluster.kmock[cluster.kmock.action.FETCH, secrets] << slow_answer
    count = len(watched.sets)
    await cluster.update_spec("docs", "main", {"tls": {"secretName": "next-tls"}})
    await eventually(lambda: answered.is_set(), what="the GET answered")
    await eventually(lambda: (c := watched.certificate()) and c.chain == second.chain, what="the new Secret")
    assert watched.certificate().name == "secret/docs/next-tls"  # type: ignore[union-attr]
    for sites in watched.sets[count:]:  # meanwhile: the old version, never a problem
        assert KEY in sites.sites
        assert KEY not in sites.invalid
    assert watched.held == {("docs", "next-tls")}, "the Secret no longer named is dropped"


async def test_deleting_the_secret_keeps_the_last_good_version_served(
    cluster: Cluster, watching: Any, ca: trustme.CA
) -> None:
    pair = issue(ca)
    watched = await watch_a_tls_site(cluster, watching, pair)
    served = watched.certificate()
    assert served is not None

    await delete_secret(cluster, "docs", "web-tls")
    await eventually(lambda: watched.problems(), what="the problem")
    (problem,) = watched.problems()
    assert problem.reason == SECRET_NOT_FOUND
    assert "Secret docs/web-tls" in problem.message
    assert watched.certificate() == served, "the last good version stays, with its certificate"
    assert watched.held == set()

    renewed = issue(ca)
    await create_secret(cluster, "docs", "web-tls", renewed)
    await eventually(lambda: (c := watched.certificate()) and c.chain == renewed.chain, what="back")
    assert watched.problems() == ()


async def test_a_renewal_reaches_the_last_good_version_while_the_newer_one_is_invalid(
    cluster: Cluster, watching: Any, ca: trustme.CA
) -> None:
    first, second = issue(ca), issue(ca)
    watched = await watch_a_tls_site(cluster, watching, first)
    served = watched.certificate()
    assert served is not None
    assert served.chain == first.chain

    await cluster.update_spec("docs", "main", {"requestTimeout": "soon"})
    await eventually(lambda: watched.problems(), what="the invalid version")
    assert [p.field for p in watched.problems()] == ["spec.requestTimeout"]
    assert watched.held == {("docs", "web-tls")}, "the served version's Secret is still followed"

    await renew_secret(cluster, "docs", "web-tls", second)
    await eventually(lambda: (c := watched.certificate()) and c.chain == second.chain, what="the renewal")
    assert watched.certificate() == Certificate(
        "secret/docs/web-tls", second.chain, second.key, watched.certificate().not_after
    )
    assert [p.field for p in watched.problems()] == ["spec.requestTimeout"], "still invalid"
    site = watched.site()
    assert site is not None
    assert site.request_timeout_ms is None, "the last good version, renewed"


async def test_the_served_versions_secret_is_followed_until_the_one_a_newer_version_names_exists(
    cluster: Cluster, watching: Any, ca: trustme.CA
) -> None:
    first, second, third = issue(ca), issue(ca), issue(ca)
    watched = await watch_a_tls_site(cluster, watching, first)
    assert watched.certificate() is not None

    await cluster.update_spec("docs", "main", {"tls": {"secretName": "new-tls"}})
    await eventually(lambda: watched.problems(), what="the missing Secret")
    assert [p.reason for p in watched.problems()] == [SECRET_NOT_FOUND]
    await renew_secret(cluster, "docs", "web-tls", second)
    await eventually(lambda: (c := watched.certificate()) and c.chain == second.chain, what="the renewal")
    assert watched.held == {("docs", "web-tls")}

    await create_secret(cluster, "docs", "new-tls", third)
    await eventually(lambda: (c := watched.certificate()) and c.chain == third.chain, what="the new Secret")
    assert watched.certificate().name == "secret/docs/new-tls"
    assert watched.problems() == ()
    await eventually(lambda: watched.held == {("docs", "new-tls")}, what="the old Secret let go")


async def test_certificate_files_are_refused_in_a_cluster(cluster: Cluster, watching: Any) -> None:
    await cluster.create_site(
        "docs", "main", "docs.example.com", tls={"certificateFile": "/tls/crt", "keyFile": "/tls/key"}
    )
    watched: Watching = await watching()
    (problem,) = watched.problems()
    assert problem.field == "spec.tls.certificateFile"
    assert problem.reason == ""  # InvalidSpec
    assert "secretName" in problem.message
    assert watched.site() is None
    listings = [r for r in cluster.requests_by("staticsite-xds/") if "/secrets" in r.url.path]
    assert listings == [], "no site names a Secret: none is listed"


async def test_the_status_names_the_secret_and_its_reason(cluster: Cluster, ca: trustme.CA) -> None:
    await create_secret(cluster, "docs", "bad-tls", issue(ca), kind="Opaque")
    await cluster.create_site("docs", "missing", "missing.example.com", **TLS_SPEC)
    await cluster.create_site("docs", "bad", "bad.example.com", **{"tls": {"secretName": "bad-tls"}})
    replica = await start_replica(cluster)
    try:

        async def reasons() -> dict[str, tuple[str, str]] | None:
            found: dict[str, tuple[str, str]] = {}
            for name in ("missing", "bad"):
                status = await cluster.status("docs", name)
                ready = [c for c in status.get("conditions") or [] if c.get("type") == "Ready"]
                if not ready:
                    return None
                found[name] = (ready[0].get("reason"), ready[0].get("message"))
            return found

        await eventually(reasons, what="both statuses written")
        found = await reasons()
        assert found is not None
        assert found["missing"][0] == "SecretNotFound"
        assert "Secret docs/web-tls not found" in found["missing"][1]
        assert found["bad"][0] == "InvalidSecret"
        assert "Secret docs/bad-tls cannot be used" in found["bad"][1]
        await eventually(lambda: secret_watches(cluster), what="kopf watching (it stops fast then)")
    finally:
        await replica.close()
