"""`render` and `validate` judge the grants declared among the manifests, as `serve` does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.manifests import manifest, write

from snapshot.builder import BuildOptions
from xds_server.process.offline import render, validate

pytestmark = pytest.mark.unit


def group(name: str, domains: str) -> str:
    return (
        f"apiVersion: staticsite-xds.dev/v1alpha1\nkind: GatewayGroup\nmetadata: {{name: {name}}}\n"
        f"spec:\n  grants:\n  - namespaces: {{names: [docs]}}\n    domains: [{domains!r}]\n"
    )


GROUPS = group("default", "**.docs.example.com") + "---\n" + group("internal", "**.internal.example.com")


def domains(snapshot: dict[str, object]) -> set[str]:
    routes = snapshot["RouteConfiguration"]
    assert isinstance(routes, list)
    return {d for route in routes for vhost in route.get("virtualHosts", []) for d in vhost["domains"]} - {
        "*"
    }


def sites(root: Path) -> None:
    write(root / "groups.yaml", GROUPS)
    write(root / "a.yaml", manifest("a", "a.docs.example.com", "web", 80, namespace="docs"))
    internal = manifest("i", "i.internal.example.com", "web", 80, namespace="docs")
    write(root / "i.yaml", internal.replace("spec:\n", "spec:\n  gatewayGroup: internal\n"))
    write(root / "stray.yaml", manifest("stray", "stray.example.com", "web", 80, namespace="docs"))


def test_render_shows_each_groups_resources_and_the_sites_outside_their_grants(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sites(tmp_path)
    assert render(tmp_path, BuildOptions()) == 1
    out, err = capsys.readouterr()
    shown = json.loads(out)["groups"]
    assert domains(shown["default"]) == {"a.docs.example.com"}
    assert domains(shown["internal"]) == {"i.internal.example.com"}
    assert err.splitlines() == [
        f"{tmp_path / 'stray.yaml'}: spec.domain: domain stray.example.com is not granted to namespace docs "
        "in gateway group default (no grant of the group covers it)"
    ]


def test_validate_reports_a_site_outside_its_grant_and_a_group_that_does_not_exist(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sites(tmp_path)
    lost = manifest("lost", "lost.docs.example.com", "web", 80, namespace="docs")
    write(tmp_path / "lost.yaml", lost.replace("spec:\n", "spec:\n  gatewayGroup: nowhere\n"))
    assert validate([tmp_path]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        f"{tmp_path / 'lost.yaml'}: spec.gatewayGroup: gateway group nowhere does not exist "
        "(the groups: default, internal)",
        f"{tmp_path / 'stray.yaml'}: spec.domain: domain stray.example.com is not granted to namespace docs "
        "in gateway group default (no grant of the group covers it)",
    ]


def test_without_groups_render_shows_one_snapshot_as_before(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(tmp_path / "a.yaml", manifest("a", "a.example.com", "web", 80))
    assert render(tmp_path, BuildOptions()) == 0
    shown = json.loads(capsys.readouterr().out)
    assert "groups" not in shown
    assert domains(shown) == {"a.example.com"}


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [
        (
            manifest("a", "a.example.com", "web", 80).replace("kind: StaticSite", "kind: Staticsite"),
            "kind",
            "'StaticSite'",
        ),
        (
            manifest("a", "a.example.com", "web", 80).replace("kind: StaticSite", "kind: StaticSites"),
            "kind",
            "'StaticSite'",
        ),
        (group("default", "*").replace("kind: GatewayGroup", "kind: gatewaygroup"), "kind", "'GatewayGroup'"),
        (
            manifest("a", "a.example.com", "web", 80).replace("kind: StaticSite", "kind: Site"),
            "kind",
            "has the kinds",
        ),
        ("just some words, not YAML of ours\n", "", "is not a manifest"),
    ],
)
def test_a_mistaken_kind_or_a_plain_file_is_a_problem_of_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, field: str, words: str
) -> None:
    path = write(tmp_path / "x.yaml", text)
    assert validate([path]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"{path}: {field + ': ' if field else ''}")
    assert words in lines[0]


def test_a_document_of_another_kind_is_still_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(tmp_path / "cm.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {a: b}\n")
    write(tmp_path / "a.yaml", manifest("a", "a.example.com", "web", 80))
    assert validate([tmp_path]) == 0
