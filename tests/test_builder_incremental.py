"""An incremental build must equal a fresh build of the same sites, whatever came before."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.sites import site

from snapshot.builder import BuildResult, SnapshotBuilder
from snapshot.model import Backend, Certificate, SiteKey, StaticSite, TlsSpec
from snapshot.resources import TYPE_ORDER
from snapshot.snapshot import ResourceSet

pytestmark = pytest.mark.unit

KEYS = [SiteKey(ns, name) for ns in ("a", "b") for name in ("one", "two", "three")]
DOMAINS = ["x.example.test", "y.example.test", "z.example.test", "w.example.test"]
SERVICES = ["web", "docs"]
TIMES = [None, "2024-01-01T00:00:00Z", "2025-01-01T00:00:00Z"]

HOSTS = [*DOMAINS, "*.example.test"]
PREFIXES = ["/", "/api", "/api/v2"]
# Two certificates by name, the first in two contents (a renewal that covers more names).
CERTIFICATES = [
    None,
    Certificate("secret/a/one", b"chain-1", b"key-1", names=("x.example.test", "y.example.test")),
    Certificate("secret/a/one", b"chain-2", b"key-2", names=("*.example.test", "x.example.test")),
    Certificate("secret/b/two", b"chain-3", b"key-3", names=("w.example.test",)),
]


def _drawn_site(
    key: SiteKey,
    domain: str,
    service: str,
    port: int,
    created: str | None,
    more: list[str],
    redirects: int,
    prefix: str,
    certificate: Certificate | None,
    compression: bool,
) -> StaticSite:
    others = [h for h in dict.fromkeys(more) if h != domain]
    return site(
        key.name,
        domain,
        service,
        port,
        namespace=key.namespace,
        created=created,
        aliases=tuple(others[redirects:]),
        redirect_from=tuple(others[:redirects]) if not domain.startswith("*") else (),
        path_prefix=prefix,
        tls=TlsSpec(secret_name="x") if certificate is not None else None,
        certificate=certificate,
        compression=compression,
    )


site_strategy = st.builds(
    _drawn_site,
    st.sampled_from(KEYS),
    st.sampled_from(HOSTS),
    st.sampled_from(SERVICES),
    st.sampled_from([80, 8080]),
    st.sampled_from(TIMES),
    st.lists(st.sampled_from(HOSTS), max_size=2),
    st.integers(min_value=0, max_value=2),
    st.sampled_from(PREFIXES),
    st.sampled_from(CERTIFICATES),
    st.booleans(),
)
# A step either puts a site (add or replace) or removes a key.
step_strategy = st.one_of(
    st.tuples(st.just("put"), site_strategy), st.tuples(st.just("remove"), st.sampled_from(KEYS))
)


def _same(incremental: BuildResult, fresh: BuildResult) -> None:
    assert incremental.snapshot.version == fresh.snapshot.version
    for type_url in TYPE_ORDER:
        got, want = incremental.snapshot.of_type(type_url), fresh.snapshot.of_type(type_url)
        assert got.version == want.version, type_url
        assert {n: r.body for n, r in got.resources.items()} == {n: r.body for n, r in want.resources.items()}
    assert dict(incremental.sites) == dict(fresh.sites)


def _diff_is_exact(before: ResourceSet, after: ResourceSet) -> None:
    if after is before:
        return
    assert after.base == before.version
    really_changed = {
        n
        for n, r in after.resources.items()
        if n not in before.resources or before.resources[n].version != r.version
    }
    assert after.changed == really_changed
    assert after.removed == set(before.resources) - set(after.resources)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(step_strategy, min_size=1, max_size=25), st.booleans())
def test_incremental_build_equals_fresh_build(steps: list[tuple[str, object]], hinted: bool) -> None:
    """With or without the source's hint of which sites changed."""
    builder = SnapshotBuilder()
    sites: dict[SiteKey, StaticSite] = {}
    previous = builder.build(sites)
    for action, arg in steps:
        if action == "put":
            assert isinstance(arg, StaticSite)
            sites[arg.key] = arg
            key = arg.key
        else:
            assert isinstance(arg, SiteKey)
            sites.pop(arg, None)
            key = arg
        result = builder.build(dict(sites), changed={key} if hinted else None)
        _same(result, SnapshotBuilder().build(dict(sites)))
        for type_url in TYPE_ORDER:
            _diff_is_exact(previous.snapshot.of_type(type_url), result.snapshot.of_type(type_url))
        changed_states = {
            k for k in set(result.sites) | set(previous.sites) if result.sites.get(k) != previous.sites.get(k)
        }
        assert changed_states <= result.changed
        previous = result


def test_unchanged_build_changes_nothing() -> None:
    builder = SnapshotBuilder()
    sites = {k: StaticSite(k, f"{k.name}.{k.namespace}.test", Backend(k.namespace, "web", 80)) for k in KEYS}
    first = builder.build(sites)
    again = builder.build(dict(sites))
    assert again.snapshot.version == first.snapshot.version
    for type_url in TYPE_ORDER:
        assert again.snapshot.of_type(type_url) is first.snapshot.of_type(type_url)
    assert again.changed == frozenset()


def test_served_counts_the_provisioned_sites() -> None:
    from snapshot.builder import Phase

    a, b = (
        StaticSite(KEYS[0], "x.test", Backend("a", "web", 80)),
        StaticSite(KEYS[1], "x.test", Backend("a", "web", 80)),
    )
    c = StaticSite(KEYS[2], "y.test", Backend("a", "web", 80))
    result = SnapshotBuilder().build([a, b, c])
    assert result.served == sum(1 for s in result.sites.values() if s.phase is Phase.PROVISIONED) == 2


def test_what_a_large_build_made_is_left_out_of_later_collections() -> None:
    """A large build's objects are frozen once it is done: the cyclic collector, which would
    rescan every one of them at each full collection, ignores them. A small build freezes
    nothing."""
    import gc

    from snapshot.builder import _LARGE_BUILD

    keys = [SiteKey("docs", f"site-{i}") for i in range(_LARGE_BUILD + 1)]
    sites = {k: StaticSite(k, f"{k.name}.docs.test", Backend("docs", f"web-{k.name}", 80)) for k in keys}
    builder = SnapshotBuilder()
    before = gc.get_freeze_count()
    builder.build(sites)
    assert gc.get_freeze_count() - before >= len(sites), "at least an object per site"
    frozen = gc.get_freeze_count()
    one = SiteKey("docs", "one-more")
    builder.build({**sites, one: StaticSite(one, "one-more.docs.test", Backend("docs", "web", 80))}, [one])
    assert gc.get_freeze_count() <= frozen  # some it froze may be freed since, none is added
