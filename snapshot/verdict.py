"""A site's verdict: where it stands (phase), why (reason) and in whose words (message).

The one owner of that vocabulary. Sources, the builder, the rejection bookkeeping and the
status writers hand in facts; the functions here name the reason and word the message, and
`site_state` and `with_backend` compose them. A new condition is a reason here and the
function that turns its fact into a state.

Precedence, highest first:

1. The source's problems (an invalid declaration, a missing or unusable Secret or
   certificate file, a site over the limit of sites): Invalid, with the reason the first
   problem names (else InvalidSpec), noting when the last good version is still served.
2. Envoy's rejection: Rejected (EnvoyRejected), with Envoy's words.
3. The builder's state, or in its place the tenancy's refusal (a site the tenancy refuses is
   never given to a builder): Invalid when the gateway group the site names does not exist
   (GatewayGroupNotFound) or one of its domains is not granted to its namespace in that group
   (DomainNotPermitted). The builder's state is, in this order: a TLS site without a
   certificate is Invalid (MissingCertificate) and claims nothing; a site that lost a claim is
   in Conflict (DomainConflict); else it is Provisioned (Accepted), with notes on its
   certificate.
4. Where the backends can be seen (Kubernetes), a missing Service or port turns a
   Provisioned state, and only that one, into Invalid (BackendNotFound, BackendPortNotFound).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from .model import Backend, Certificate, Problem, SiteKey


class Phase(enum.StrEnum):
    """Where a site stands, as reported to its owner."""

    PROVISIONED = "Provisioned"
    INVALID = "Invalid"
    CONFLICT = "Conflict"
    REJECTED = "Rejected"


@dataclass(frozen=True, slots=True)
class SiteState:
    key: SiteKey
    phase: Phase
    reason: str
    message: str


# -- reasons, and the fact each one stands for ------------------------------------------------

ACCEPTED: Final = "Accepted"  # the builder sent every claim of the site to the gateways
DOMAIN_CONFLICT: Final = "DomainConflict"  # an older site has one of its (domain, prefix) claims
MISSING_CERTIFICATE: Final = "MissingCertificate"  # spec.tls, but the source found no certificate
ENVOY_REJECTED: Final = "EnvoyRejected"  # an Envoy NACKed what the site gave it
INVALID_SPEC: Final = "InvalidSpec"  # a problem of the declaration that names no reason of its own
SECRET_NOT_FOUND: Final = "SecretNotFound"  # the TLS Secret the site names does not exist
INVALID_SECRET: Final = "InvalidSecret"  # the TLS Secret exists but cannot be served
INVALID_CERTIFICATE: Final = "InvalidCertificate"  # the certificate files cannot be served
SITE_LIMIT_REACHED: Final = "SiteLimitReached"  # a valid site beyond --max-sites
BACKEND_NOT_FOUND: Final = "BackendNotFound"  # the backend's Service does not exist
BACKEND_PORT_NOT_FOUND: Final = "BackendPortNotFound"  # the Service lacks the backend's port
DOMAIN_NOT_PERMITTED: Final = "DomainNotPermitted"  # no grant of its group gives a domain to its namespace
GATEWAY_GROUP_NOT_FOUND: Final = "GatewayGroupNotFound"  # the gateway group it names does not exist

REASONS: Final = frozenset(
    {
        ACCEPTED,
        DOMAIN_CONFLICT,
        MISSING_CERTIFICATE,
        ENVOY_REJECTED,
        INVALID_SPEC,
        SECRET_NOT_FOUND,
        INVALID_SECRET,
        INVALID_CERTIFICATE,
        SITE_LIMIT_REACHED,
        BACKEND_NOT_FOUND,
        BACKEND_PORT_NOT_FOUND,
        DOMAIN_NOT_PERMITTED,
        GATEWAY_GROUP_NOT_FOUND,
    }
)
BACKEND_REASONS: Final = frozenset({BACKEND_NOT_FOUND, BACKEND_PORT_NOT_FOUND})

SENT = "sent to the gateways"
STILL_SERVED = " (the last good version is still served)"
MAX_NAMES_LISTED = 5  # names of a certificate a message lists
MESSAGE_LIMIT = 1024  # characters of Envoy's message kept in a site's state


# -- the builder's facts ----------------------------------------------------------------------


def accepted(key: SiteKey, message: str = SENT) -> SiteState:
    return SiteState(key, Phase.PROVISIONED, ACCEPTED, message)


def missing_certificate(key: SiteKey) -> SiteState:
    return SiteState(key, Phase.INVALID, MISSING_CERTIFICATE, "spec.tls: no certificate was found")


def claimed(
    key: SiteKey,
    lost: Sequence[tuple[str, str, SiteKey]],
    won: int,
    certificate: Certificate | None = None,
    served_with: Iterable[tuple[str, str]] = (),
    uncovered: Sequence[str] = (),
) -> SiteState:
    """The builder's verdict on a site that claimed its domains.

    `lost`: each (domain, prefix, the site that has it) the site did not get; `won`: how
    many claims it got. `served_with`: each (domain, certificate name) of its domains served
    with another site's certificate; `uncovered`: its domains served with its own
    `certificate`, which is not for them.
    """
    if lost:
        message = "; ".join(
            f"{_where(host, prefix)} is already served by site {owner}" for host, prefix, owner in lost
        )
        if won:
            message += " (its other domains are served)"
        return SiteState(key, Phase.CONFLICT, DOMAIN_CONFLICT, message)
    message = SENT
    others = sorted(
        f"domain {host} is served with certificate {name}, of an older TLS site on it"
        for host, name in served_with
    )
    if others:
        message += "; " + "; ".join(others)
    if uncovered and certificate is not None:
        message += "; " + not_covered(certificate, uncovered)
    return accepted(key, message)


def _where(host: str, prefix: str) -> str:
    return f"domain {host}" if prefix == "/" else f"domain {host} path {prefix}"


def not_covered(certificate: Certificate, hosts: Sequence[str]) -> str:
    """A note for a site whose certificate is not for some of its domains."""
    names = certificate.names or ()
    listed = ", ".join(names[:MAX_NAMES_LISTED]) or "no DNS name"
    if len(names) > MAX_NAMES_LISTED:
        listed += f" and {len(names) - MAX_NAMES_LISTED} more"
    return (
        f"certificate {certificate.name} is not for {', '.join(hosts)} (it names {listed}): "
        "HTTPS clients refuse the connection for those domains"
    )


# -- Envoy's facts ----------------------------------------------------------------------------


def rejected(key: SiteKey, node: str, type_url: str, message: str, served_last_good: bool) -> SiteState:
    """A site Envoy `node` refused: its words about the `type_url` resource."""
    kind = type_url.rsplit(".", 1)[-1]
    words = message if len(message) <= MESSAGE_LIMIT else message[:MESSAGE_LIMIT] + "…"
    text = f"Envoy {node or '(unnamed node)'} rejected its {kind}: {words}"
    if served_last_good:
        text += STILL_SERVED
    return SiteState(key, Phase.REJECTED, ENVOY_REJECTED, text)


# -- the sources' facts -----------------------------------------------------------------------


def invalid(key: SiteKey, problems: tuple[Problem, ...], still_served: bool) -> SiteState:
    """The state of a site whose declaration is invalid (or refused), naming where and which field.

    The reason is the first a problem names (a missing Secret: SecretNotFound; a site over the
    limit: SiteLimitReached), else InvalidSpec.
    """
    reason = next((p.reason for p in problems if p.reason), INVALID_SPEC)
    detail = "; ".join(f"{p.field}: {p.message}" if p.field else p.message for p in problems)
    if still_served:
        detail += STILL_SERVED
    where = problems[0].origin if problems else ""
    return SiteState(key, Phase.INVALID, reason, f"{where}: {detail}" if where else detail)


def secret_not_found(namespace: str, name: str) -> Problem:
    """The problem (without origin) of a site whose TLS Secret does not exist."""
    message = f"Secret {namespace}/{name} not found (a kubernetes.io/tls Secret in the site's namespace)"
    return Problem("", "spec.tls.secretName", message, SECRET_NOT_FOUND)


def invalid_secret(namespace: str, name: str, why: str) -> Problem:
    """The problem (without origin) of a site whose TLS Secret cannot be served, and why."""
    return Problem(
        "", "spec.tls.secretName", f"Secret {namespace}/{name} cannot be used: {why}", INVALID_SECRET
    )


def invalid_certificate(origin: str, chain_file: object, key_file: object, why: str) -> Problem:
    """The problem of a site whose certificate files cannot be served, and why."""
    message = f"the certificate {chain_file} and key {key_file} cannot be served: {why}"
    return Problem(origin, "spec.tls", message, INVALID_CERTIFICATE)


def site_limit_problem(origin: str, maximum: int) -> Problem:
    """The problem of a valid site that is not served because `maximum` sites already are."""
    return Problem(
        origin,
        "metadata.name",
        f"not served: the limit of {maximum} sites (--max-sites) is reached",
        SITE_LIMIT_REACHED,
    )


# -- the tenancy's facts ----------------------------------------------------------------------


def domain_not_permitted(
    key: SiteKey, host: str, group: str, owners: Sequence[str] | None = None
) -> SiteState:
    """A site refused because `host` is not granted to its namespace in gateway group `group`.

    `owners`: the namespaces it is granted to (None: no grant of the group covers it; empty:
    a grant covers it, but admits no namespace that exists).
    """
    message = f"domain {host} is not granted to namespace {key.namespace} in gateway group {group}"
    if owners is None:
        message += " (no grant of the group covers it)"
    elif not owners:
        message += " (it is granted to no namespace that exists)"
    else:
        listed = ", ".join(owners[:MAX_NAMES_LISTED])
        if len(owners) > MAX_NAMES_LISTED:
            listed += f" and {len(owners) - MAX_NAMES_LISTED} more"
        message += f" (it is granted to: {listed})"
    return SiteState(key, Phase.INVALID, DOMAIN_NOT_PERMITTED, message)


def wildcard_not_permitted(
    key: SiteKey, wildcard: str, pattern: str, group: str, owners: Sequence[str]
) -> SiteState:
    """A site refused because its wildcard domain would also answer for `pattern`, which
    gateway group `group` grants to other namespaces (`owners`) than the site's."""
    listed = ", ".join(owners[:MAX_NAMES_LISTED]) or "no namespace that exists"
    if len(owners) > MAX_NAMES_LISTED:
        listed += f" and {len(owners) - MAX_NAMES_LISTED} more"
    message = (
        f"domain {wildcard} would also answer for {pattern}, which gateway group {group} grants to "
        f"{listed}, not to namespace {key.namespace}: name the domains you own instead"
    )
    return SiteState(key, Phase.INVALID, DOMAIN_NOT_PERMITTED, message)


def gateway_group_not_found(key: SiteKey, group: str, existing: Sequence[str]) -> SiteState:
    """A site refused because the gateway group it names is not among `existing` (maybe none)."""
    if not existing:
        message = (
            f"no GatewayGroup exists (the site asks for {group}): nothing is served until an admin "
            "creates one (see deploy/gateway-group.yaml)"
        )
    else:
        listed = ", ".join(existing[:MAX_NAMES_LISTED])
        if len(existing) > MAX_NAMES_LISTED:
            listed += f" and {len(existing) - MAX_NAMES_LISTED} more"
        message = f"gateway group {group} does not exist (the groups: {listed})"
    return SiteState(key, Phase.INVALID, GATEWAY_GROUP_NOT_FOUND, message)


# -- composition ------------------------------------------------------------------------------


def site_state(
    key: SiteKey,
    problems: tuple[Problem, ...] | None,
    built: SiteState | None,
    refused: SiteState | None = None,
) -> SiteState | None:
    """A site's state: the source's problems first, then Envoy's rejection, then the builder's.

    `problems` are the source's for the site's current declaration (None: it is valid);
    `built` is the builder's state (None: not built); `refused` is Envoy's rejection of it.
    """
    if problems is not None:
        return invalid(key, problems, built is not None and built.phase is Phase.PROVISIONED)
    if refused is not None:
        return refused
    return built


@dataclass(frozen=True, slots=True)
class BackendSeen:
    """What the control plane sees of a site's backend: whether its Service exists, and the
    ports it has (None: any port may be right, as for a name that resolves elsewhere)."""

    exists: bool
    ports: tuple[object, ...] | None = None


def with_backend(state: SiteState, domain: str, backend: Backend, seen: BackendSeen) -> SiteState:
    """A Provisioned state turned Invalid when its backend cannot answer; any other as it is."""
    if state.phase is not Phase.PROVISIONED:
        return state
    where = f"Service {backend.namespace}/{backend.service_name}"
    if not seen.exists:
        message = f"{where} does not exist; the gateways answer 503 for {domain} until it does"
        return SiteState(state.key, Phase.INVALID, BACKEND_NOT_FOUND, message)
    if seen.ports is None or backend.service_port in seen.ports:
        return state
    listed = ", ".join(str(p) for p in seen.ports) or "none"
    message = (
        f"{where} has no port {backend.service_port} (its ports: {listed}); "
        f"the gateways answer 503 for {domain} until it has"
    )
    return SiteState(state.key, Phase.INVALID, BACKEND_PORT_NOT_FOUND, message)
