"""The TLS Secrets that sites name: which are held, read when newly named, and what each gives.

A site's `spec.tls.secretName` names a `kubernetes.io/tls` Secret of its namespace; its
certificate is served under the SDS name `secret/<namespace>/<name>`. Only the Secrets some
site names are held: events and listings of the others are dropped as they arrive. A Secret a
site comes to name is read with a GET, and the site is judged once the answer is in (never
"not found" meanwhile). While a site's newer version cannot be served, it names two Secrets:
its current version's and the one of the version still served, whose renewals must still
reach Envoy.

Only Secrets of type `kubernetes.io/tls` are listed and watched (the API server's field
selector `type=kubernetes.io/tls`): the others never reach the control plane. A named Secret
that a listing lacks is read by its own GET, which tells a missing Secret from one of another
type; of one of another type, only its metadata and type are held, never its data.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from snapshot.certificates import BadCertificate, load_certificate, secret_certificate_name
from snapshot.model import Certificate, Problem, SiteKey, StaticSite, describe
from snapshot.verdict import invalid_secret, secret_not_found

from .k8s_api import SECRETS, ApiError, KubeApi
from .k8s_cache import ObjectCache, ObjectKey, object_key, uid_of
from .site_certificates import CertificatePending, CertificateProblems, Resolution

log = logging.getLogger("staticsite_xds.kubernetes")

TLS_SECRET_TYPE = "kubernetes.io/tls"
TLS_SECRET_SELECTOR = f"type={TLS_SECRET_TYPE}"  # the field selector of every listing and watch
SECRET_FIELD = "spec.tls.secretName"
RETRY = (1.0, 2.0, 5.0, 10.0)  # seconds between reads while the API cannot be read

certificate_name = secret_certificate_name  # the SDS name of a TLS Secret's certificate


def secret_ref(body: Mapping[str, Any]) -> ObjectKey | None:
    """The Secret a StaticSite object names in `spec.tls.secretName`, read as it is, unparsed."""
    spec = body.get("spec")
    tls = spec.get("tls") if isinstance(spec, Mapping) else None
    name = tls.get("secretName") if isinstance(tls, Mapping) else None
    namespace = object_key(body)[0]
    return (namespace, name) if isinstance(name, str) and name and namespace else None


def tls_only(body: dict[str, Any]) -> dict[str, Any]:
    """A Secret as held: whole if it is of type kubernetes.io/tls, else its metadata and type
    alone (enough to say why it cannot be used; its data is none of the control plane's)."""
    if body.get("type") == TLS_SECRET_TYPE:
        return body
    return {field: body[field] for field in ("apiVersion", "kind", "metadata", "type") if field in body}


def secret_of(site: StaticSite | None) -> ObjectKey | None:
    """The Secret a version of a site names, if any."""
    if site is None or site.tls is None or site.tls.secret_name is None:
        return None
    return (site.key.namespace, site.tls.secret_name)


def load_secret(key: ObjectKey, body: Mapping[str, Any]) -> Certificate | Problem:
    """The certificate a TLS Secret holds, or the problem (without origin) that keeps it unserved."""
    namespace, name = key

    def invalid(why: str) -> Problem:
        return invalid_secret(namespace, name, why)

    kind = body.get("type")
    if kind != TLS_SECRET_TYPE:
        return invalid(f"its type is {describe(kind)}, not {TLS_SECRET_TYPE}")
    data = body.get("data")
    data = data if isinstance(data, Mapping) else {}
    plain = body.get("stringData")  # only the API server's input, but a stored object may carry it
    plain = plain if isinstance(plain, Mapping) else {}
    pem: dict[str, bytes] = {}
    for field in ("tls.crt", "tls.key"):
        value = data.get(field)
        if value is None and isinstance(plain.get(field), str):
            pem[field] = plain[field].encode()
        elif value is None:
            return invalid(f"it has no {field}")
        else:
            try:
                if not isinstance(value, str):
                    raise ValueError(value)
                pem[field] = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                return invalid(f"its {field} is not base64")
    try:
        return load_certificate(certificate_name(namespace, name), pem["tls.crt"], pem["tls.key"])
    except BadCertificate as exc:
        return invalid(str(exc))


def users_of(index: Mapping[ObjectKey, set[SiteKey]], keys: Iterable[ObjectKey]) -> set[SiteKey]:
    """The sites an index (a Secret's users, a Service's sites) lists under any of these keys."""
    return set().union(*(index.get(key, ()) for key in keys))


def unlink(index: dict[ObjectKey, set[SiteKey]], key: ObjectKey, site: SiteKey) -> bool:
    """Take a site off an index's key; True if no site is left under the key (it is removed)."""
    users = index.get(key)
    if users is None:
        return False
    users.discard(site)
    if users:
        return False
    del index[key]
    return True


class FollowedSecrets:
    """The Secrets sites name, held in `cache` (and no other), and the certificates they give.

    It resolves a site's `secretName` (a `CertificateResolver`). When what a Secret gives may
    have changed (an event, a listing, the answer to a GET), `judge` is called with the sites
    that name it.
    """

    def __init__(
        self,
        api: KubeApi,
        cache: ObjectCache,
        judge: Callable[[set[SiteKey]], None],
        explain: Callable[[ApiError], str] = str,
    ) -> None:
        self.api = api
        self.cache = cache
        self._judge = judge
        self._explain = explain
        self._users: dict[ObjectKey, set[SiteKey]] = {}  # a Secret -> the sites naming it
        # A site -> the Secrets it names: its current version's and, while that version is not
        # served, the one of the version still served (whose renewals must still reach Envoy).
        self._site_secrets: dict[SiteKey, frozenset[ObjectKey]] = {}
        self._absent: set[ObjectKey] = set()  # Secrets named, and known not to exist
        self._loaded: dict[ObjectKey, tuple[dict[str, Any], Certificate | Problem]] = {}
        self._fetches: dict[ObjectKey, asyncio.Task[None]] = {}  # GETs of Secrets in flight
        self._problems: dict[SiteKey, str] = {}  # the Secret problem last logged per site

    # -- which are named -------------------------------------------------------------------

    def named(self, key: ObjectKey) -> bool:
        """Whether some site names this Secret. (A lookup in a dict of tuples of strings is
        atomic: kopf's thread may ask it without a lock.)"""
        return key in self._users

    def all_named(self) -> set[ObjectKey]:
        return set(self._users)

    def users(self, key: ObjectKey) -> frozenset[SiteKey]:
        """The sites whose current declaration names this Secret."""
        return frozenset(self._users.get(key, ()))

    def refer(self, site: SiteKey, *refs: ObjectKey | None) -> None:
        """Record the Secrets a site names (None: none); a Secret no site names is dropped."""
        new = frozenset(ref for ref in refs if ref is not None)
        old = self._site_secrets.get(site, frozenset())
        if old == new:
            return
        for gone in old - new:
            if unlink(self._users, gone, site):
                self._drop(gone)
        for ref in new - old:
            self._users.setdefault(ref, set()).add(site)
        if new:
            self._site_secrets[site] = new
        else:
            self._site_secrets.pop(site, None)
            self._problems.pop(site, None)

    def quiet(self, site: SiteKey) -> None:
        """The site names no Secret now: a problem of one is told afresh if it comes back."""
        self._problems.pop(site, None)

    # -- what they give --------------------------------------------------------------------

    def resolve(self, site: StaticSite) -> Resolution:
        """The certificate of the Secret a site names; pending while it is being read. A
        problem is logged once per site and message."""
        ref = secret_of(site)
        assert ref is not None
        loaded = self.certificate(ref)
        if loaded is None:
            self.request(ref)
            return CertificatePending(*ref)
        if isinstance(loaded, Certificate):
            if self._problems.pop(site.key, None) is not None:
                log.info(
                    "site %s: Secret %s/%s can be used again (its certificate expires %s)",
                    site.key,
                    *ref,
                    loaded.not_after,
                )
            return loaded
        if self._problems.get(site.key) != loaded.message:
            self._problems[site.key] = loaded.message
            log.warning("site %s: %s", site.key, loaded.message)
        return CertificateProblems((Problem(site.origin, loaded.field, loaded.message, loaded.reason),))

    def renewal(self, ref: ObjectKey, served: StaticSite) -> Certificate | None:
        """A renewed certificate of Secret `ref` for the version of a site still served, if it
        has one. A Secret gone or broken leaves it the certificate it has (None)."""
        loaded = self.certificate(ref)
        if loaded is None:
            self.request(ref)
            return None
        if not isinstance(loaded, Certificate) or loaded == served.certificate:
            return None
        return loaded

    def certificate(self, ref: ObjectKey) -> Certificate | Problem | None:
        """What a named Secret gives: its certificate, a problem, or None if not read yet."""
        body = self.cache.get(ref)
        if body is None:
            if ref in self._absent:
                return secret_not_found(*ref)
            return None
        cached = self._loaded.get(ref)
        if cached is not None and cached[0] is body:
            return cached[1]
        loaded = load_secret(ref, body)  # once per version of a Secret, however many sites name it
        self._loaded[ref] = (body, loaded)
        return loaded

    def known(self, key: ObjectKey) -> bool | None:
        """Whether a Secret exists: True (held), False (known missing), None (not read yet)."""
        if self.cache.get(key) is not None:
            return True
        return False if key in self._absent else None

    # -- what the cluster says of them -----------------------------------------------------

    def event(self, kind: str | None, body: dict[str, Any]) -> None:
        """One event of a Secret: kept if a site names it, and those sites judged again."""
        key = object_key(body)
        if key not in self._users:
            return  # no site names it (any more)
        body = tls_only(body)
        now = time.monotonic()
        was = self.known(key)
        changed = self.cache.event(kind, body, now)
        if self.cache.get(key) is not None:
            self._absent.discard(key)
        elif kind == "DELETED":
            self.cache.bury(key, uid_of(body), now)  # a GET in flight may answer with it still
            self._absent.add(key)
        if changed is not None or self.known(key) != was:
            self.changed({key})

    def listed(
        self, named: set[ObjectKey], secrets: Iterable[dict[str, Any]], started: float, now: float
    ) -> set[ObjectKey]:
        """Make the held Secrets agree with a listing requested at `started`, of which only the
        `named` ones were kept; the Secrets whose answer may have changed."""
        changed = self.cache.reconcile(secrets, started, now)
        for key in named | changed:  # what the listing says of each: there, or not
            if key in self._fetches:
                continue  # a GET asked later than the listing began: its answer is newer
            if self.cache.get(key) is not None:
                self._absent.discard(key)
            elif key not in self._absent:
                self._absent.add(key)
                changed.add(key)
        return changed

    async def unlisted(self, named: Iterable[ObjectKey], listed: Iterable[ObjectKey]) -> list[dict[str, Any]]:
        """The named Secrets a listing of TLS Secrets lacks, each read by its own GET: a Secret
        of another type (held without its data), or none (not found). Not read again: those
        known missing, and those a GET in flight reads."""
        seen = set(listed)
        keys = sorted(k for k in named if k not in seen and k not in self._absent and k not in self._fetches)
        gate = asyncio.Semaphore(8)

        async def get(key: ObjectKey) -> dict[str, Any] | None:
            async with gate:
                return await self.api.get(SECRETS, *key)

        found = await asyncio.gather(*(get(key) for key in keys))
        return [tls_only(body) for body in found if body is not None]

    def prune(self) -> None:
        """Drop every Secret no site names (after a listing that judged many sites at once)."""
        users = self._users
        for key in [k for k in self.cache.objects if k not in users]:
            self._drop(key)
        self._absent.intersection_update(users)
        for key in [k for k in self._loaded if k not in users]:
            del self._loaded[key]

    def changed(self, keys: set[ObjectKey]) -> None:
        """Judge again every site that names one of these Secrets."""
        affected = users_of(self._users, keys)
        if affected:
            self._judge(affected)

    def _drop(self, key: ObjectKey) -> None:
        self.cache.forget(key)
        self._absent.discard(key)
        self._loaded.pop(key, None)

    # -- reading one -----------------------------------------------------------------------

    def request(self, key: ObjectKey) -> None:
        """Read a Secret a site names and that is not held, unless a GET of it is in flight."""
        if key in self._fetches:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # a source fed by hand, with no loop: the next listing reads it
        self._fetches[key] = loop.create_task(self._fetch(key), name=f"GET Secret {key[0]}/{key[1]}")

    def cancel(self) -> None:
        """Stop every GET in flight."""
        for fetch in list(self._fetches.values()):
            fetch.cancel()

    async def _fetch(self, key: ObjectKey) -> None:
        """GET one Secret (a 404: it does not exist), then judge the sites that name it again."""
        namespace, name = key
        failures = 0
        try:
            while key in self._users and self.known(key) is None:
                started = time.monotonic()
                try:
                    body = await self.api.get(SECRETS, namespace, name)
                except ApiError as exc:
                    delay = RETRY[min(failures, len(RETRY) - 1)]
                    failures += 1
                    level = logging.WARNING if failures == 1 else logging.DEBUG
                    log.log(
                        level,
                        "cannot read Secret %s/%s, retrying in %gs: %s",
                        namespace,
                        name,
                        delay,
                        self._explain(exc),
                    )
                    await asyncio.sleep(delay)
                    continue
                if key not in self._users:
                    return  # no site names it any more
                held = tls_only(body) if body is not None else None
                self.cache.fetched(key, held, started, time.monotonic())
                if self.cache.get(key) is None:
                    self._absent.add(key)
                else:
                    self._absent.discard(key)
                self.changed({key})
                return
        finally:
            if self._fetches.get(key) is asyncio.current_task():
                del self._fetches[key]
