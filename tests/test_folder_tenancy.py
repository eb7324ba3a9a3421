"""The folder source's gateway groups and namespaces: read, kept, reported, and watched."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from support.manifests import manifest, write

from snapshot.model import SiteKey
from snapshot.tenancy import OPEN
from watcher.folder import FolderSource, read_manifests

pytestmark = pytest.mark.unit

GROUP = """\
apiVersion: staticsite-xds.dev/v1alpha1
kind: GatewayGroup
metadata: {{name: {name}}}
spec:
  grants:
  - namespaces: {{names: [{namespace}]}}
    domains: [{domains}]
"""

NAMESPACE = """\
apiVersion: v1
kind: Namespace
metadata: {{name: {name}, labels: {{team: {team}}}}}
"""


def group(name: str = "default", namespace: str = "default", domains: str = '"**.example.com"') -> str:
    return GROUP.format(name=name, namespace=namespace, domains=domains)


def test_no_gateway_group_is_open(root: Path) -> None:
    write(root / "a.yaml", manifest("a", "a.example.com", "web", 80))
    write(root / "ns.yaml", NAMESPACE.format(name="docs", team="docs"))
    source = FolderSource(root)
    sites = source.load()
    assert sites.tenancy is OPEN
    assert sites.problems == ()


def test_gateway_groups_and_namespaces_are_read(root: Path) -> None:
    write(root / "a.yaml", manifest("a", "a.example.com", "web", 80))
    path = write(
        root / "groups.yaml", "---\n".join([group(), group("edge"), NAMESPACE.format(name="docs", team="d")])
    )
    sites = FolderSource(root).load()
    tenancy = sites.tenancy
    assert tenancy.enforced
    assert tenancy.names() == ("default", "edge")
    assert tenancy.groups["edge"].origin == f"{path} document 2"
    assert dict(tenancy.namespace_labels) == {"docs": {"team": "d"}}
    assert tenancy.judge(sites.sites[SiteKey("default", "a")]) is None
    assert sites.problems == ()
    assert set(sites.sites) == {SiteKey("default", "a")}  # groups are no sites


def test_the_same_tenancy_while_nothing_of_it_changes(root: Path) -> None:
    write(root / "groups.yaml", group())
    site = write(root / "a.yaml", manifest("a", "a.example.com", "web", 80))
    source = FolderSource(root)
    first = source.load().tenancy
    write(site, manifest("a", "b.example.com", "web", 80))
    assert source.update([site]).tenancy is first
    assert source.load().tenancy is first
    touched = write(root / "groups.yaml", group())  # rewritten, the same content
    assert source.update([touched]).tenancy is first
    write(root / "groups.yaml", group(domains='"*.example.com"'))
    changed = source.update([touched]).tenancy
    assert changed is not first
    assert changed.groups["default"].grants[0].domains[0].text == "*.example.com"


def test_a_bad_gateway_group_is_reported_and_the_others_stand(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write(root / "good.yaml", group("edge"))
    bad = write(root / "bad.yaml", group("Bad_Name"))
    typo = write(root / "typo.yaml", group("default", domains='"ok.example.com", "*.com"'))
    write(root / "a.yaml", manifest("a", "ok.example.com", "web", 80))
    with caplog.at_level(logging.ERROR, "staticsite_xds.watcher.folder"):
        sites = FolderSource(root).load()
    assert sites.tenancy.names() == ("default", "edge")
    assert sites.tenancy.judge(sites.sites[SiteKey("default", "a")]) is None
    where = {(p.origin, p.field) for p in sites.problems}
    assert where == {(str(bad), "metadata.name"), (str(typo), "spec.grants[0].domains[1]")}
    assert sites.tenancy.problems == sites.problems
    logged = caplog.text
    assert f"{bad}: metadata.name" in logged
    assert f"{typo}: spec.grants[0].domains[1]" in logged


def test_only_bad_gateway_groups_still_enforce(root: Path) -> None:
    write(root / "bad.yaml", group("Bad_Name"))
    write(root / "a.yaml", manifest("a", "a.example.com", "web", 80))
    sites = FolderSource(root).load()
    assert sites.tenancy.enforced
    refused = sites.tenancy.judge(sites.sites[SiteKey("default", "a")])
    assert refused is not None
    assert refused.reason == "GatewayGroupNotFound"


def test_a_gateway_group_turned_invalid_keeps_its_last_good_version(root: Path) -> None:
    path = write(root / "groups.yaml", group())
    source = FolderSource(root)
    good = source.load().tenancy.groups["default"]
    write(path, group().replace("grants:", "grants: 3\n  oops:") + "  extra: [\n")  # not YAML
    sites = source.update([path])
    assert sites.tenancy.groups["default"] is good
    assert [p.origin for p in sites.problems] == [str(path)]
    write(
        path,
        group().replace("kind: GatewayGroup\n", "kind: GatewayGroup\nspec: 1\n").replace("spec:\n", "sp:\n"),
    )
    sites = source.update([path])
    assert sites.tenancy.groups["default"] == good
    assert any("last good version" in p.message for p in sites.problems)
    path.unlink()
    assert source.update([path]).tenancy is OPEN


def test_a_group_declared_in_two_files_is_kept_from_the_first(root: Path) -> None:
    first = write(root / "a.yaml", group("edge", domains='"a.example.com"'))
    second = write(root / "b.yaml", group("edge", domains='"b.example.com"'))
    sites = FolderSource(root).load()
    assert sites.tenancy.groups["edge"].origin == str(first)
    assert [(p.origin, p.field) for p in sites.problems] == [(str(second), "metadata.name")]


def test_namespace_labels_feed_selectors(root: Path) -> None:
    write(
        root / "groups.yaml",
        """\
apiVersion: staticsite-xds.dev/v1alpha1
kind: GatewayGroup
metadata: {name: default}
spec:
  grants:
  - namespaces: {selector: {matchLabels: {team: docs}}}
    domains: ["**.example.com"]
""",
    )
    write(root / "ns.yaml", NAMESPACE.format(name="docs", team="docs"))
    write(root / "bad-ns.yaml", NAMESPACE.format(name="api", team="'not ok'"))
    write(root / "a.yaml", manifest("a", "a.example.com", "web", 80, namespace="docs"))
    write(root / "b.yaml", manifest("b", "b.example.com", "web", 80, namespace="api"))
    sites = FolderSource(root).load()
    assert sites.tenancy.judge(sites.sites[SiteKey("docs", "a")]) is None
    refused = sites.tenancy.judge(sites.sites[SiteKey("api", "b")])
    assert refused is not None
    assert refused.message.endswith("(it is granted to: docs)")
    assert [(p.origin, p.field) for p in sites.problems] == [
        (str(root / "bad-ns.yaml"), "metadata.labels.team")
    ]


def test_other_kinds_are_still_ignored(root: Path) -> None:
    write(root / "cm.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\n")
    sites = FolderSource(root).load()
    assert sites.tenancy is OPEN
    assert sites.problems == ()


def test_read_manifests_reads_gateway_groups(root: Path) -> None:
    path = write(root / "groups.yaml", group())
    assert read_manifests([path]).tenancy.names() == ("default",)
