"""Gateway groups and domain grants: parsing, patterns, selectors, ownership and the verdicts."""

from __future__ import annotations

import timeit
from typing import Any

import pytest

from snapshot import snapshot as snapshot_module
from snapshot.model import API_VERSION, SiteKey, StaticSite, parse_site
from snapshot.tenancy import (
    DEFAULT_GROUP,
    OPEN,
    DomainPattern,
    GatewayGroup,
    InvalidGatewayGroup,
    InvalidNamespace,
    LabelSelector,
    PatternKind,
    Tenancy,
    default_client_name,
    is_gateway_group,
    parse_gateway_group,
    parse_namespace,
    parse_pattern,
    parse_selector,
)

pytestmark = pytest.mark.unit


def group_doc(name: str = "default", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "GatewayGroup", "metadata": {"name": name}, "spec": spec}


def grant(domains: list[Any], names: list[str] | None = None, selector: Any = None) -> dict[str, Any]:
    namespaces: dict[str, Any] = {}
    if names is not None:
        namespaces["names"] = names
    if selector is not None:
        namespaces["selector"] = selector
    return {"namespaces": namespaces, "domains": domains}


def site(namespace: str, domain: str, *, group: str | None = None, **spec: Any) -> StaticSite:
    body: dict[str, Any] = {"domain": domain, "backend": {"serviceName": "web", "servicePort": 80}, **spec}
    if group is not None:
        body["gatewayGroup"] = group
    return parse_site(
        {
            "apiVersion": API_VERSION,
            "kind": "StaticSite",
            "metadata": {"name": "site", "namespace": namespace},
            "spec": body,
        }
    )


def tenancy(*grants: dict[str, Any], labels: dict[str, dict[str, str]] | None = None) -> Tenancy:
    return Tenancy.of([parse_gateway_group(group_doc(grants=list(grants)), "g.yaml")], labels or {})


def problems_of(doc: dict[str, Any]) -> list[tuple[str, str]]:
    return [(p.field, p.message) for p in parse_gateway_group(doc, "g.yaml").problems]


def fields_of(doc: dict[str, Any]) -> list[str]:
    return [field for field, _ in problems_of(doc)]


# -- the names ---------------------------------------------------------------------------------


def test_the_default_group_is_the_snapshots() -> None:
    assert DEFAULT_GROUP is snapshot_module.DEFAULT_GROUP
    assert default_client_name("edge") == "edge.gateway-group.staticsite-xds.dev"


# -- patterns ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind", "suffix"),
    [
        ("docs.my-company.com", PatternKind.EXACT, "docs.my-company.com"),
        ("Docs.My-Company.com", PatternKind.EXACT, "docs.my-company.com"),
        ("*.docs.my-company.com", PatternKind.ONE_LABEL, "docs.my-company.com"),
        ("**.my-company.com", PatternKind.ANY_DEPTH, "my-company.com"),
        ("*", PatternKind.EVERY, ""),
        ("**.x.co.uk", PatternKind.ANY_DEPTH, "x.co.uk"),
        ("me.github.io", PatternKind.EXACT, "me.github.io"),
    ],
)
def test_patterns(text: str, kind: PatternKind, suffix: str) -> None:
    pattern = parse_pattern(text, "f", lambda field, message: pytest.fail(message))
    assert pattern is not None
    assert (pattern.kind, pattern.suffix) == (kind, suffix)


@pytest.mark.parametrize(
    "text", ["*.com", "co.uk", "**.co.uk", "github.io", "com", "*.github.io", "**.com", "localhost"]
)
def test_public_suffixes_are_refused(text: str) -> None:
    found: list[tuple[str, str]] = []
    assert parse_pattern(text, "spec.grants[0].domains[0]", lambda f, m: found.append((f, m))) is None
    ((field, message),) = found
    assert field == "spec.grants[0].domains[0]"
    assert "public suffix" in message


@pytest.mark.parametrize(
    "text", ["", "a..b.com", "*.*.x.com", "a.*.x.com", "x*.com", "a.com.", 7, "é.x.com", "***.x.com"]
)
def test_bad_patterns_are_refused(text: Any) -> None:
    found: list[str] = []
    assert parse_pattern(text, "f", lambda f, m: found.append(f)) is None
    assert found == ["f"]


@pytest.mark.parametrize(
    ("pattern", "host", "matches"),
    [
        ("a.x.com", "a.x.com", True),
        ("a.x.com", "b.a.x.com", False),
        ("*.x.com", "a.x.com", True),
        ("*.x.com", "a.b.x.com", False),
        ("*.x.com", "x.com", False),
        ("*.x.com", "*.x.com", True),
        ("*.a.x.com", "*.a.x.com", True),
        ("**.x.com", "a.x.com", True),
        ("**.x.com", "a.b.x.com", True),
        ("**.x.com", "x.com", False),
        ("**.x.com", "ax.com", False),
        ("**.x.com", "*.a.x.com", True),
        ("*", "anything.test", True),
        ("a.x.com", "*.x.com", False),
    ],
)
def test_pattern_matches(pattern: str, host: str, matches: bool) -> None:
    parsed = parse_pattern(pattern, "f", lambda f, m: pytest.fail(m))
    assert isinstance(parsed, DomainPattern)
    assert parsed.matches(host) is matches


# -- selectors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("selector", "labels", "matches"),
    [
        ({}, {}, True),
        ({"matchLabels": {"team": "docs"}}, {"team": "docs", "x": "y"}, True),
        ({"matchLabels": {"team": "docs"}}, {"team": "api"}, False),
        (
            {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["public"]}]},
            {"tier": "public"},
            True,
        ),
        ({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["public"]}]}, {}, False),
        ({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["public"]}]}, {}, True),
        (
            {"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["public"]}]},
            {"tier": "public"},
            False,
        ),
        ({"matchExpressions": [{"key": "tier", "operator": "Exists"}]}, {"tier": ""}, True),
        ({"matchExpressions": [{"key": "tier", "operator": "Exists"}]}, {}, False),
        ({"matchExpressions": [{"key": "example.com/tier", "operator": "DoesNotExist"}]}, {}, True),
        ({"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}, {"tier": "x"}, False),
        (
            {"matchLabels": {"team": "docs"}, "matchExpressions": [{"key": "tier", "operator": "Exists"}]},
            {"team": "docs"},
            False,
        ),
    ],
)
def test_selectors(selector: dict[str, Any], labels: dict[str, str], matches: bool) -> None:
    parsed = parse_selector(selector, "s", lambda f, m: pytest.fail(f"{f}: {m}"))
    assert isinstance(parsed, LabelSelector)
    assert parsed.matches(labels) is matches


@pytest.mark.parametrize(
    ("selector", "field"),
    [
        ([], "s"),
        ({"matchLabel": {}}, "s.matchLabel"),
        ({"matchLabels": {"bad key!": "x"}}, "s.matchLabels.'bad key!'"),
        ({"matchLabels": {"team": "not ok"}}, "s.matchLabels.team"),
        ({"matchLabels": []}, "s.matchLabels"),
        ({"matchExpressions": {}}, "s.matchExpressions"),
        ({"matchExpressions": ["x"]}, "s.matchExpressions[0]"),
        ({"matchExpressions": [{"key": "t", "operator": "Is"}]}, "s.matchExpressions[0].operator"),
        ({"matchExpressions": [{"operator": "Exists"}]}, "s.matchExpressions[0].key"),
        ({"matchExpressions": [{"key": "t", "operator": "In"}]}, "s.matchExpressions[0].values"),
        (
            {"matchExpressions": [{"key": "t", "operator": "In", "values": ["a b"]}]},
            "s.matchExpressions[0].values[0]",
        ),
        (
            {"matchExpressions": [{"key": "t", "operator": "Exists", "values": ["a"]}]},
            "s.matchExpressions[0].values",
        ),
        (
            {"matchExpressions": [{"key": "t", "operator": "Exists", "value": 1}]},
            "s.matchExpressions[0].value",
        ),
    ],
)
def test_a_bad_selector_matches_nothing_and_names_its_field(selector: Any, field: str) -> None:
    found: list[str] = []
    assert parse_selector(selector, "s", lambda f, m: found.append(f)) is None
    assert field in found


# -- parsing a group ---------------------------------------------------------------------------


def test_a_group_with_every_field() -> None:
    doc = group_doc(
        "edge",
        clientNames=["gw.example.com", "spiffe://cluster/ns/edge/sa/envoy"],
        grants=[
            grant(["docs.my-company.com", "*.docs.my-company.com"], names=["docs", "api"]),
            grant(["*"], selector={"matchLabels": {"team": "docs"}}),
        ],
    )
    doc["metadata"]["generation"] = 3
    group = parse_gateway_group(doc, "g.yaml")
    assert group.name == "edge"
    assert group.generation == 3
    assert group.origin == "g.yaml"
    assert group.problems == ()
    assert group.client_names == ("gw.example.com", "spiffe://cluster/ns/edge/sa/envoy")
    assert [g.names for g in group.grants] == [frozenset({"docs", "api"}), frozenset()]
    assert group.grants[1].selector == LabelSelector((("team", "docs"),))
    assert is_gateway_group(doc)


@pytest.mark.parametrize("names", [None, []])
def test_client_names_default_to_the_groups_certificate_name(names: Any) -> None:
    doc = group_doc("edge", grants=[]) if names is None else group_doc("edge", clientNames=names)
    assert parse_gateway_group(doc).client_names == ("edge.gateway-group.staticsite-xds.dev",)


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ("a string", ""),
        ({**group_doc(), "kind": "StaticSite"}, "kind"),
        ({**group_doc(), "apiVersion": "v1"}, "apiVersion"),
        ({**group_doc(), "metadata": None}, "metadata"),
        ({**group_doc(), "metadata": {}}, "metadata.name"),
        ({**group_doc(), "metadata": {"name": "Edge"}}, "metadata.name"),
        ({**group_doc(), "metadata": {"name": "a.b"}}, "metadata.name"),
        ({**group_doc(), "metadata": {"name": "a" * 64}}, "metadata.name"),
        ({**group_doc(), "spec": None}, "spec"),
        ({**group_doc(), "spec": []}, "spec"),
    ],
)
def test_an_unreadable_group_raises_naming_the_field(doc: Any, field: str) -> None:
    with pytest.raises(InvalidGatewayGroup) as raised:
        parse_gateway_group(doc, "g.yaml")
    assert field in [p.field for p in raised.value.problems]
    assert all(p.origin == "g.yaml" for p in raised.value.problems)


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"grant": []}, "spec.grant"),
        ({"clientNames": "x"}, "spec.clientNames"),
        ({"clientNames": ["ok", "not ok"]}, "spec.clientNames[1]"),
        ({"clientNames": ["ok", 3]}, "spec.clientNames[1]"),
        ({"grants": {}}, "spec.grants"),
        ({"grants": ["x"]}, "spec.grants[0]"),
        ({"grants": [{"domains": ["a.x.com"]}]}, "spec.grants[0].namespaces"),
        ({"grants": [{"namespaces": [], "domains": ["a.x.com"]}]}, "spec.grants[0].namespaces"),
        ({"grants": [grant(["a.x.com"])]}, "spec.grants[0].namespaces"),
        ({"grants": [grant(["a.x.com"], names=["Docs"])]}, "spec.grants[0].namespaces.names[0]"),
        ({"grants": [grant(["a.x.com"], names="docs")]}, "spec.grants[0].namespaces.names"),
        ({"grants": [{**grant(["a.x.com"], names=["d"]), "domain": 1}]}, "spec.grants[0].domain"),
        (
            {"grants": [grant(["a.x.com"], selector={"matchLabels": 1})]},
            "spec.grants[0].namespaces.selector.matchLabels",
        ),
        ({"grants": [{"namespaces": {"names": ["d"]}}]}, "spec.grants[0].domains"),
        ({"grants": [grant([], names=["d"])]}, "spec.grants[0].domains"),
        ({"grants": [grant(["a.x.com", "*.com"], names=["d"])]}, "spec.grants[0].domains[1]"),
        (
            {"grants": [grant(["ok.x.com"], names=["d"]), grant(["bad..x.com"], names=["d"])]},
            "spec.grants[1].domains[0]",
        ),
        ({"grants": [grant(["a.x.com", "*"], names=["d"])]}, "spec.grants[0].domains[1]"),
    ],
)
def test_a_bad_part_is_left_out_with_a_problem_naming_its_field(spec: dict[str, Any], field: str) -> None:
    assert field in fields_of(group_doc(**spec))


def test_one_bad_pattern_leaves_the_rest_of_the_group_in_force() -> None:
    t = tenancy(
        grant(["docs.x.com", "*.com", "api.x.com"], names=["docs"]), grant(["**.y.com"], names=["web"])
    )
    assert t.judge(site("docs", "docs.x.com")) is None
    assert t.judge(site("docs", "api.x.com")) is None
    assert t.judge(site("web", "a.y.com")) is None
    assert [p.field for p in t.problems] == ["spec.grants[0].domains[1]"]
    assert t.problems[0].origin == "g.yaml"


def test_a_namespace_in_the_metadata_is_a_problem_not_a_failure() -> None:
    doc = group_doc()
    doc["metadata"]["namespace"] = "docs"
    assert fields_of(doc) == ["metadata.namespace"]


# -- ownership ---------------------------------------------------------------------------------


def test_the_most_specific_pattern_owns_a_host() -> None:
    t = tenancy(
        grant(["docs.x.com"], names=["docs"]),
        grant(["*.api.x.com"], names=["api"]),
        grant(["**.internal.x.com"], names=["internal"]),
        grant(["**.x.com"], selector={}),
        grant(["*"], names=["catchall"]),
    )
    everyone = ["docs", "api", "internal", "web", "catchall"]
    owners = {
        "docs.x.com": {"docs"},
        "v1.api.x.com": {"api"},
        "a.b.api.x.com": set(everyone),  # two labels: not *.api.x.com, so **.x.com
        "a.internal.x.com": {"internal"},
        "a.b.internal.x.com": {"internal"},
        "www.x.com": set(everyone),
        "x.com": {"catchall"},
        "other.test": {"catchall"},
        "*.api.x.com": {"api"},
        "*.internal.x.com": {"internal"},
        "*.x.com": set(everyone),
    }
    for host, allowed in owners.items():
        for namespace in everyone:
            verdict = t.judge(site(namespace, host))
            assert (verdict is None) is (namespace in allowed), (host, namespace, verdict)


@pytest.mark.parametrize("a_has_a_site", [True, False])
def test_a_domain_granted_exactly_never_passes_to_another_namespace(a_has_a_site: bool) -> None:
    # Whether or not team-a serves docs.x.com now (deleted, about to be re-created), the
    # exact grant keeps it: **.x.com granted to everyone does not hand it to team-b.
    t = tenancy(grant(["docs.x.com"], names=["team-a"]), grant(["**.x.com"], selector={}))
    if a_has_a_site:
        assert t.judge(site("team-a", "docs.x.com")) is None
    refused = t.judge(site("team-b", "docs.x.com"))
    assert refused is not None
    assert refused.reason == "DomainNotPermitted"
    assert refused.message == (
        "domain docs.x.com is not granted to namespace team-b in gateway group default (it is granted to: team-a)"
    )
    assert t.judge(site("team-b", "www.x.com")) is None


def test_a_bad_grants_domains_still_count_for_ownership() -> None:
    t = tenancy(grant(["docs.x.com"], names=["Team A"]), grant(["**.x.com"], selector={}))
    refused = t.judge(site("team-b", "docs.x.com"))
    assert refused is not None
    assert refused.message.endswith("(it is granted to no namespace that exists)")


def test_two_grants_with_the_same_pattern_both_own_it() -> None:
    t = tenancy(grant(["docs.x.com"], names=["a"]), grant(["docs.x.com"], names=["b"]))
    assert t.judge(site("a", "docs.x.com")) is None
    assert t.judge(site("b", "docs.x.com")) is None
    refused = t.judge(site("c", "docs.x.com"))
    assert refused is not None
    assert refused.message.endswith("(it is granted to: a, b)")


def test_every_host_of_a_site_must_be_permitted() -> None:
    t = tenancy(grant(["**.x.com"], names=["docs"]), grant(["login.x.com"], names=["security"]))
    assert t.judge(site("docs", "a.x.com", aliases=["b.x.com"], redirectFrom=["c.x.com"])) is None
    for spec in ({"aliases": ["login.x.com"]}, {"redirectFrom": ["login.x.com"]}):
        refused = t.judge(site("docs", "a.x.com", **spec))
        assert refused is not None
        assert refused.message == (
            "domain login.x.com is not granted to namespace docs in gateway group default "
            "(it is granted to: security)"
        )


def test_selectors_see_the_namespaces_labels() -> None:
    t = tenancy(
        grant(["**.x.com"], selector={"matchLabels": {"team": "docs"}}),
        labels={"docs": {"team": "docs"}, "docs-2": {"team": "docs"}, "api": {"team": "api"}},
    )
    assert t.judge(site("docs", "a.x.com")) is None
    refused = t.judge(site("api", "a.x.com"))
    assert refused is not None
    assert refused.message.endswith("(it is granted to: docs, docs-2)")
    unknown = t.judge(site("nowhere", "a.x.com"))  # no Namespace: no labels
    assert unknown is not None


def test_a_host_no_grant_covers() -> None:
    refused = tenancy(grant(["**.x.com"], names=["docs"])).judge(site("docs", "a.y.com"))
    assert refused is not None
    assert refused.message == (
        "domain a.y.com is not granted to namespace docs in gateway group default (no grant of the group covers it)"
    )


def test_judging_is_fast_whatever_the_number_of_grants() -> None:
    grants = [grant([f"site-{i}.x.com", f"*.team-{i}.x.com"], names=[f"team-{i}"]) for i in range(1000)]
    t = tenancy(*grants, grant(["**.x.com"], selector={}))
    deep = site("team-7", "a.b.c.team-999.x.com")
    exact = site("team-500", "site-500.x.com")
    assert t.judge(deep) is None
    assert t.judge(exact) is None
    seconds = min(timeit.repeat(lambda: (t.judge(deep), t.judge(exact)), number=2000, repeat=3)) / 4000
    assert seconds < 50e-6  # a scan of 2000 patterns would take far longer


# -- groups ------------------------------------------------------------------------------------


def test_open_serves_the_default_group_and_refuses_any_other() -> None:
    assert OPEN.judge(site("docs", "anything.test")) is None
    assert OPEN.names() == (DEFAULT_GROUP,)
    assert OPEN.client_group(["whatever"]) == DEFAULT_GROUP
    refused = OPEN.judge(site("docs", "a.test", group="edge"))
    assert refused is not None
    assert refused.reason == "GatewayGroupNotFound"
    assert OPEN.group_of(site("docs", "a.test")) == "default"
    assert OPEN.group_of(site("docs", "a.test", group="edge")) == "edge"


def test_enforced_with_no_group_serves_nothing() -> None:
    t = Tenancy.of([], {})
    assert t.names() == ()
    refused = t.judge(site("docs", "a.test"))
    assert refused is not None
    assert refused.reason == "GatewayGroupNotFound"
    assert "no GatewayGroup exists" in refused.message


def test_a_site_names_its_group() -> None:
    edge = parse_gateway_group(group_doc("edge", grants=[grant(["*"], names=["docs"])]))
    default = parse_gateway_group(group_doc("default", grants=[grant(["a.x.com"], names=["web"])]))
    t = Tenancy.of([edge, default], {})
    assert t.names() == ("default", "edge")
    assert t.judge(site("docs", "a.x.com", group="edge")) is None
    assert t.judge(site("docs", "a.x.com")) is not None  # the default group does not grant it
    missing = t.judge(site("docs", "a.x.com", group="internal"))
    assert missing is not None
    assert missing.message == "gateway group internal does not exist (the groups: default, edge)"


def test_client_names_put_a_client_in_one_group() -> None:
    a = parse_gateway_group(group_doc("a", clientNames=["a.gw", "shared.gw"]), "a.yaml")
    b = parse_gateway_group(group_doc("b", clientNames=["b.gw", "shared.gw"]), "b.yaml")
    c = parse_gateway_group(group_doc("c"), "c.yaml")
    t = Tenancy.of([a, b, c], {})
    assert t.client_group(["a.gw"]) == "a"
    assert t.client_group(["x", "b.gw"]) == "b"
    assert t.client_group(["c.gateway-group.staticsite-xds.dev"]) == "c"
    assert t.client_group(["shared.gw"]) is None  # listed by two groups: neither gets it
    assert t.client_group(["a.gw", "b.gw"]) is None  # names of two groups
    assert t.client_group(["nobody"]) is None
    ((problem,),) = [[p for p in t.problems if p.field == "spec.clientNames"]]
    assert "shared.gw" in problem.message
    assert "a, b" in problem.message


def test_a_group_declared_twice_keeps_the_first() -> None:
    first = parse_gateway_group(group_doc("edge", grants=[grant(["a.x.com"], names=["a"])]), "1.yaml")
    second = parse_gateway_group(group_doc("edge"), "2.yaml")
    t = Tenancy.of([first, second], {})
    assert t.groups["edge"] is first
    assert [(p.origin, p.field) for p in t.problems] == [("2.yaml", "metadata.name")]


def test_groups_compare_by_content() -> None:
    doc = group_doc("edge", grants=[grant(["a.x.com"], names=["a"])])
    assert parse_gateway_group(doc, "g") == parse_gateway_group(doc, "g")
    assert isinstance(parse_gateway_group(doc), GatewayGroup)
    assert Tenancy.of([parse_gateway_group(doc)], {"a": {"x": "y"}}) == Tenancy.of(
        [parse_gateway_group(doc)], {"a": {"x": "y"}}
    )


# -- namespaces --------------------------------------------------------------------------------


def test_namespace_documents() -> None:
    doc = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "docs", "labels": {"team": "docs"}}}
    assert parse_namespace(doc) == ("docs", {"team": "docs"})
    assert parse_namespace({"metadata": {"name": "docs"}}) == ("docs", {})
    for bad, field in (
        ({"metadata": {"name": "Docs"}}, "metadata.name"),
        ({"metadata": {"name": "docs", "labels": []}}, "metadata.labels"),
        ({"metadata": {"name": "docs", "labels": {"team": "a b"}}}, "metadata.labels.team"),
    ):
        with pytest.raises(InvalidNamespace) as raised:
            parse_namespace(bad, "ns.yaml")
        assert (raised.value.problem.origin, raised.value.problem.field) == ("ns.yaml", field)


def test_the_site_field() -> None:
    assert site("docs", "a.test").gateway_group is None
    assert site("docs", "a.test", group="edge").gateway_group == "edge"
    assert site("docs", "a.test").key == SiteKey("docs", "site")


# -- the CRD -----------------------------------------------------------------------------------


def test_the_gateway_group_crd_mirrors_the_parser() -> None:
    from pathlib import Path

    import yaml

    from snapshot import tenancy as t
    from snapshot.model import DNS1123_LABEL_PATTERN, GROUP, VERSION

    crd = yaml.safe_load((Path(__file__).parents[1] / "crds" / "gatewaygroup.yaml").read_text())
    assert crd["metadata"]["name"] == f"{t.GATEWAY_GROUP_PLURAL}.{GROUP}"
    assert crd["spec"]["scope"] == "Cluster"
    assert crd["spec"]["names"]["kind"] == t.GATEWAY_GROUP_KIND
    (version,) = crd["spec"]["versions"]
    assert version["name"] == VERSION
    schema = version["schema"]["openAPIV3Schema"]["properties"]
    assert schema["metadata"]["properties"]["name"]["pattern"] == f"^{DNS1123_LABEL_PATTERN}$"
    spec = schema["spec"]["properties"]
    assert spec["clientNames"]["maxItems"] == t.MAX_CLIENT_NAMES
    assert spec["clientNames"]["items"]["pattern"] == f"^{t.CLIENT_NAME_PATTERN}$"
    assert spec["clientNames"]["items"]["maxLength"] == t.MAX_CLIENT_NAME_LENGTH
    assert spec["grants"]["maxItems"] == t.MAX_GRANTS
    grant = spec["grants"]["items"]["properties"]
    assert grant["domains"]["maxItems"] == t.MAX_GRANT_DOMAINS
    names = grant["namespaces"]["properties"]["names"]
    assert names["maxItems"] == t.MAX_GRANT_NAMESPACES
    assert names["items"]["pattern"] == f"^{DNS1123_LABEL_PATTERN}$"
    selector = grant["namespaces"]["properties"]["selector"]["properties"]
    expression = selector["matchExpressions"]["items"]["properties"]
    assert tuple(expression["operator"]["enum"]) == t.OPERATORS
    assert selector["matchExpressions"]["maxItems"] == t.MAX_SELECTOR_TERMS
    assert expression["values"]["maxItems"] == t.MAX_SELECTOR_VALUES
