"""A site's verdict: each reason from the fact that calls for it, and the precedence of facts."""

from __future__ import annotations

import pytest

from snapshot import verdict as v
from snapshot.builder import SnapshotBuilder
from snapshot.model import Backend, Certificate, Problem, SiteKey, StaticSite, TlsSpec
from snapshot.verdict import Phase, SiteState

pytestmark = pytest.mark.unit

KEY = SiteKey("docs", "site")
OTHER = SiteKey("docs", "older")
BACKEND = Backend("docs", "web", 80)
CERT = Certificate("secret/docs/tls", b"chain", b"key", names=("a.test", "*.a.test"))
ORIGIN = "sites/site.yaml"


def problem(reason: str = "", field: str = "spec.domain") -> Problem:
    return Problem(ORIGIN, field, "is wrong", reason)


def built_accepted() -> SiteState:
    return v.accepted(KEY)


def envoy_rejected(served_last_good: bool = False) -> SiteState:
    return v.rejected(
        KEY, "gateway-1", "type.googleapis.com/envoy.config.cluster.v3.Cluster", "bad", served_last_good
    )


# -- every reason, from its fact ---------------------------------------------------------------


def test_accepted() -> None:
    assert v.accepted(KEY) == SiteState(KEY, Phase.PROVISIONED, "Accepted", "sent to the gateways")
    assert v.claimed(KEY, [], 1) == v.accepted(KEY)


def test_missing_certificate() -> None:
    assert v.missing_certificate(KEY) == SiteState(
        KEY, Phase.INVALID, "MissingCertificate", "spec.tls: no certificate was found"
    )


def test_domain_conflict_names_each_claim_lost_and_whether_others_are_served() -> None:
    lost = [("a.test", "/", OTHER), ("b.test", "/api", OTHER)]
    message = "domain a.test is already served by site docs/older; domain b.test path /api is already served by site docs/older"
    assert v.claimed(KEY, lost, 0) == SiteState(KEY, Phase.CONFLICT, "DomainConflict", message)
    assert v.claimed(KEY, lost, 1).message == message + " (its other domains are served)"


def test_a_conflict_says_nothing_of_certificates() -> None:
    state = v.claimed(KEY, [("a.test", "/", OTHER)], 0, CERT, [("a.test", "other")], ["b.test"])
    assert state.message == "domain a.test is already served by site docs/older"


def test_accepted_with_notes_on_certificates() -> None:
    state = v.claimed(
        KEY, [], 3, CERT, [("z.test", "secret/x"), ("c.test", "secret/y")], ["b.test", "d.test"]
    )
    assert state.reason == "Accepted"
    assert state.message == (
        "sent to the gateways"
        "; domain c.test is served with certificate secret/y, of an older TLS site on it"
        "; domain z.test is served with certificate secret/x, of an older TLS site on it"
        "; certificate secret/docs/tls is not for b.test, d.test (it names a.test, *.a.test): "
        "HTTPS clients refuse the connection for those domains"
    )


def test_a_certificate_note_lists_five_names_at_most() -> None:
    many = Certificate("c", b"", b"", names=tuple(f"n{i}.test" for i in range(7)))
    assert (
        "(it names n0.test, n1.test, n2.test, n3.test, n4.test and 2 more)"
        in v.claimed(KEY, [], 1, many, (), ["x.test"]).message
    )
    bare = Certificate("c", b"", b"", names=())
    assert "(it names no DNS name)" in v.claimed(KEY, [], 1, bare, (), ["x.test"]).message


def test_envoy_rejected_quotes_envoy_within_a_limit() -> None:
    assert envoy_rejected() == SiteState(
        KEY, Phase.REJECTED, "EnvoyRejected", "Envoy gateway-1 rejected its Cluster: bad"
    )
    assert envoy_rejected(True).message.endswith("bad (the last good version is still served)")
    long = v.rejected(KEY, "", "Listener", "x" * 2000, False)
    assert long.message == "Envoy (unnamed node) rejected its Listener: " + "x" * v.MESSAGE_LIMIT + "…"


@pytest.mark.parametrize(
    "reason", [v.SECRET_NOT_FOUND, v.INVALID_SECRET, v.INVALID_CERTIFICATE, v.SITE_LIMIT_REACHED]
)
def test_invalid_takes_the_reason_its_first_problem_names(reason: str) -> None:
    state = v.invalid(KEY, (problem(), problem(reason, ""), problem(v.INVALID_SECRET)), False)
    assert (state.phase, state.reason) == (Phase.INVALID, reason)
    assert state.message == f"{ORIGIN}: spec.domain: is wrong; is wrong; spec.domain: is wrong"


def test_invalid_spec_when_no_problem_names_a_reason() -> None:
    state = v.invalid(KEY, (problem(),), True)
    assert state == SiteState(
        KEY,
        Phase.INVALID,
        "InvalidSpec",
        f"{ORIGIN}: spec.domain: is wrong (the last good version is still served)",
    )
    assert v.invalid(KEY, (Problem("", "", "no origin"),), False).message == "no origin"


def test_site_limit_problem() -> None:
    refused = v.site_limit_problem(ORIGIN, 3)
    assert refused == Problem(
        ORIGIN,
        "metadata.name",
        "not served: the limit of 3 sites (--max-sites) is reached",
        "SiteLimitReached",
    )
    assert v.invalid(KEY, (refused,), False).reason == "SiteLimitReached"


def test_backend_not_found() -> None:
    state = v.with_backend(built_accepted(), "a.test", BACKEND, v.BackendSeen(False))
    assert state == SiteState(
        KEY,
        Phase.INVALID,
        "BackendNotFound",
        "Service docs/web does not exist; the gateways answer 503 for a.test until it does",
    )


def test_backend_port_not_found_lists_the_ports() -> None:
    state = v.with_backend(built_accepted(), "a.test", BACKEND, v.BackendSeen(True, (8080, 9090)))
    assert state == SiteState(
        KEY,
        Phase.INVALID,
        "BackendPortNotFound",
        "Service docs/web has no port 80 (its ports: 8080, 9090); the gateways answer 503 for a.test until it has",
    )
    none = v.with_backend(built_accepted(), "a.test", BACKEND, v.BackendSeen(True, ()))
    assert "(its ports: none)" in none.message


def test_a_backend_with_the_port_or_any_port_keeps_the_state() -> None:
    accepted = built_accepted()
    assert v.with_backend(accepted, "a.test", BACKEND, v.BackendSeen(True, (80,))) is accepted
    assert v.with_backend(accepted, "a.test", BACKEND, v.BackendSeen(True, None)) is accepted


def test_domain_not_permitted_names_the_host_namespace_group_and_owners() -> None:
    state = v.domain_not_permitted(KEY, "login.x.com", "default", ["security"])
    assert state == SiteState(
        KEY,
        Phase.INVALID,
        "DomainNotPermitted",
        "domain login.x.com is not granted to namespace docs in gateway group default (it is granted to: security)",
    )
    assert v.domain_not_permitted(KEY, "a.test", "edge").message == (
        "domain a.test is not granted to namespace docs in gateway group edge (no grant of the group covers it)"
    )
    assert v.domain_not_permitted(KEY, "a.test", "edge", []).message.endswith(
        "(it is granted to no namespace that exists)"
    )
    many = [f"team-{i}" for i in range(7)]
    assert v.domain_not_permitted(KEY, "a.test", "edge", many).message.endswith(
        "(it is granted to: team-0, team-1, team-2, team-3, team-4 and 2 more)"
    )


def test_gateway_group_not_found_lists_the_groups_or_says_none_exists() -> None:
    state = v.gateway_group_not_found(KEY, "edge", ["default", "internal"])
    assert state == SiteState(
        KEY,
        Phase.INVALID,
        "GatewayGroupNotFound",
        "gateway group edge does not exist (the groups: default, internal)",
    )
    none = v.gateway_group_not_found(KEY, "default", [])
    assert none.reason == "GatewayGroupNotFound"
    assert "no GatewayGroup exists" in none.message
    assert "deploy/gateway-group.yaml" in none.message


def test_every_reason_is_covered_here() -> None:
    produced = {
        v.accepted(KEY).reason,
        v.missing_certificate(KEY).reason,
        v.claimed(KEY, [("a.test", "/", OTHER)], 0).reason,
        envoy_rejected().reason,
        v.invalid(KEY, (problem(),), False).reason,
        v.SECRET_NOT_FOUND,
        v.INVALID_SECRET,
        v.INVALID_CERTIFICATE,
        v.site_limit_problem(ORIGIN, 1).reason,
        v.with_backend(built_accepted(), "a.test", BACKEND, v.BackendSeen(False)).reason,
        v.with_backend(built_accepted(), "a.test", BACKEND, v.BackendSeen(True, ())).reason,
        v.domain_not_permitted(KEY, "a.test", "default").reason,
        v.gateway_group_not_found(KEY, "edge", []).reason,
    }
    assert produced == v.REASONS
    assert {"BackendNotFound", "BackendPortNotFound"} == v.BACKEND_REASONS


# -- precedence --------------------------------------------------------------------------------


def test_the_sources_problems_come_first_and_say_whether_the_last_good_version_is_served() -> None:
    problems = (problem(v.SECRET_NOT_FOUND),)
    state = v.site_state(KEY, problems, built_accepted(), envoy_rejected())
    assert state is not None
    assert (state.phase, state.reason) == (Phase.INVALID, "SecretNotFound")
    assert state.message.endswith("(the last good version is still served)")
    conflict = v.claimed(KEY, [("a.test", "/", OTHER)], 0)
    for built in (conflict, None):
        state = v.site_state(KEY, problems, built)
        assert state is not None
        assert not state.message.endswith("still served)")


def test_envoys_rejection_comes_before_the_builders_state() -> None:
    rejection = envoy_rejected(True)
    assert v.site_state(KEY, None, built_accepted(), rejection) is rejection
    assert v.site_state(KEY, None, None, rejection) is rejection


def test_the_builders_state_comes_last() -> None:
    accepted = built_accepted()
    assert v.site_state(KEY, None, accepted) is accepted
    assert v.site_state(KEY, None, accepted, None) is accepted
    assert v.site_state(KEY, None, None) is None


@pytest.mark.parametrize(
    "state",
    [
        v.missing_certificate(KEY),
        v.claimed(KEY, [("a.test", "/", OTHER)], 0),
        v.rejected(KEY, "g", "Cluster", "bad", False),
        v.invalid(KEY, (problem(),), True),
    ],
)
def test_a_missing_backend_overrides_only_a_provisioned_state(state: SiteState) -> None:
    assert v.with_backend(state, "a.test", BACKEND, v.BackendSeen(False)) is state


def test_the_builder_hands_its_facts_to_the_verdict() -> None:
    """Within the builder: no certificate first, then a lost claim, then notes on certificates."""
    old = StaticSite(OTHER, "a.test", BACKEND, creation_timestamp="2024-01-01T00:00:00Z")
    new = StaticSite(KEY, "b.test", BACKEND, creation_timestamp="2025-01-01T00:00:00Z", aliases=("a.test",))
    untrusted = StaticSite(
        SiteKey("docs", "tls"), "a.test", BACKEND, creation_timestamp="2026-01-01T00:00:00Z", tls=TlsSpec("s")
    )
    states = SnapshotBuilder().build([old, new, untrusted]).sites
    assert states[OTHER] == v.accepted(OTHER)
    assert states[KEY] == v.claimed(KEY, [("a.test", "/", OTHER)], 1)
    assert states[untrusted.key] == v.missing_certificate(untrusted.key)
