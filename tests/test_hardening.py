"""Hardened input: whatever a manifest holds, only problems naming the field come out.

Property tests feed the parser and the folder reader arbitrary documents and texts (wrong
types, huge strings, control characters, nesting, aliases), and feed the builder batches of
sites that passed validation, whose snapshot the real Envoy must accept. Then the limits:
bytes per manifest file, the shape of its YAML, and the number of sites served, through the
shared limit, both sources, the status and the `serve` command.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.crd_schema import crd_accepts, model_accepts
from support.kubernetes import Cluster, feed, offline_source, start_replica
from support.manifests import manifest
from support.processes import free_port, run_cli
from support.waiting import eventually, wait_until

from snapshot.builder import BuildOptions, Phase, SnapshotBuilder
from snapshot.model import (
    API_VERSION,
    KIND,
    MAX_UNKNOWN_FIELDS,
    InvalidSite,
    SiteKey,
    StaticSite,
    field_name,
    parse_site,
)
from snapshot.snapshot import Snapshot
from snapshot.verdict import SITE_LIMIT_REACHED as SITE_LIMIT_REASON
from watcher.folder import FolderSource, read_manifests
from watcher.k8s_status import event_name
from watcher.manifest_file import MAX_ALIAS_NODES, MAX_DEPTH, MAX_DOCUMENTS, ManifestRefused, load_documents
from watcher.siteset import SiteLimit, SiteSet
from watcher.status import StatusLog, state_of
from xds_server.local.control_plane import ControlPlaneProcess
from xds_server.local.gateway import validate_config

ORIGIN = "sites/junk.yaml"
TOP_FIELDS = ("apiVersion", "kind", "metadata", "spec", "status")

# Independent oracles of what a served site may look like (not the model's own patterns).
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")


def is_subdomain(text: str) -> bool:
    return len(text) <= 253 and all(DNS_LABEL.fullmatch(label) for label in text.split("."))


def valid_doc(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": "blog", "namespace": "web"},
        "spec": {"domain": "blog.example.com", "backend": {"serviceName": "blog", "servicePort": 80}, **spec},
    }


def valid_doc_with(path: str, value: Any) -> dict[str, Any]:
    """`valid_doc()` with the field at the dotted `path` set to `value`."""
    doc = valid_doc()
    *parents, last = path.split(".")
    node = doc
    for part in parents:
        node = node[part]
    node[last] = value
    return doc


def shared_bomb(levels: int = 40, width: int = 10) -> list[Any]:
    """Lists that hold the same list `width` times, `levels` deep: width**levels leaves once expanded,
    as YAML aliases build them (a "billion laughs")."""
    node: list[Any] = ["lol"]
    for _ in range(levels):
        node = [node] * width
    return node


def self_holding() -> list[Any]:
    node: list[Any] = []
    node.append(node)
    return node


HUGE_VALUES = [
    "a" * 1_000_000,
    "a." * 150_000,
    "\x00\x1b[31m\r\n" * 1000,
    "\u212a" * 300,
    int("f" * 5000, 16),  # what `0xfff…` reads as in YAML: too long to print in decimal
    -(2**20000),
    float("nan"),
    float("inf"),
    shared_bomb(),
    self_holding(),
    datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1))),  # before the first UTC moment
    datetime(9999, 12, 31, 23, 59, tzinfo=timezone(timedelta(hours=-1))),  # after the last
]

# What the property tests draw from: hostile, yet printable when hypothesis shows an example
# (the parametrized test below takes the rest: an integer too long to print, a bomb of 10**40).
HOSTILE_VALUES = [
    "a" * 100_000,
    "\x00\x1b[31m\r\n" * 100,
    "\u212a" * 300,
    float("nan"),
    shared_bomb(levels=6),
    self_holding(),
    HUGE_VALUES[-2],
    HUGE_VALUES[-1],
]


def hostile(index: int) -> Any:
    """One of HOSTILE_VALUES (drawn by index: a strategy's description never prints them)."""
    return HOSTILE_VALUES[index]


def long_key() -> str:
    return "k" * 100_000


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=30),
    st.text(alphabet=st.characters(max_codepoint=0x2FFFF), max_size=10),
    st.binary(max_size=8),
    st.datetimes(timezones=st.one_of(st.none(), st.timezones())),
    st.dates(),
    st.integers(0, len(HOSTILE_VALUES) - 1).map(hostile),
)
_keys = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["name", "namespace", "domain", "backend", "serviceName", "servicePort", "spec"]),
    st.integers(),
    st.none(),
    st.booleans(),
    st.builds(long_key),
)
junk = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_keys, inner, max_size=4)),
    max_leaves=10,
)

_names = st.one_of(junk, st.text(alphabet="abz09-.", max_size=260), st.just("a" * 253), st.just("a" * 254))
_metadata = st.one_of(
    junk,
    st.fixed_dictionaries(
        {},
        optional={
            "name": _names,
            "namespace": st.one_of(junk, st.text(alphabet="ab9-", max_size=66)),
            "creationTimestamp": junk,
            "generation": junk,
            "labels": junk,
        },
    ),
)
_spec = st.one_of(
    junk,
    st.fixed_dictionaries(
        {},
        optional={
            "domain": st.one_of(junk, st.text(alphabet="aZ9-.*_ \t\n\u212a\u00e9", max_size=260)),
            "backend": st.one_of(
                junk,
                st.fixed_dictionaries(
                    {},
                    optional={
                        "serviceName": st.one_of(junk, st.text(alphabet="aZ9-", max_size=66)),
                        "servicePort": st.one_of(junk, st.integers(-1, 70_000)),
                    },
                ),
            ),
        },
    ),
)
documents = st.one_of(
    junk,
    st.fixed_dictionaries(
        {},
        optional={
            "apiVersion": st.one_of(st.just(API_VERSION), junk),
            "kind": st.one_of(st.just(KIND), junk),
            "metadata": _metadata,
            "spec": _spec,
        },
    ),
    st.builds(
        lambda doc, extra: {**extra, **doc}, st.just(valid_doc()), st.dictionaries(_keys, junk, max_size=3)
    ),
)


def check_outcome(doc: Any, origin: str = ORIGIN) -> StaticSite | None:
    """Parse `doc`: a valid site in canonical form, or problems that each name a field, on one line."""
    try:
        site = parse_site(doc, origin)
    except InvalidSite as exc:
        problems = exc.problems
    else:
        check_site(site, origin)
        return site
    assert problems, "InvalidSite must carry a problem"
    roots = set(TOP_FIELDS) | ({field_name(k) for k in doc} if isinstance(doc, Mapping) else set())
    for problem in problems:
        assert problem.origin == origin
        line = str(problem)
        assert "\n" not in line, line
        assert "\r" not in line, line
        assert len(line) < 1500, line[:300]
        if isinstance(doc, Mapping):
            assert any(problem.field == r or problem.field.startswith(r + ".") for r in roots), problem
        else:
            assert problem.field == ""
    return None


def check_site(site: StaticSite, origin: str) -> None:
    assert site.key.name
    assert is_subdomain(site.key.name)
    assert DNS_LABEL.fullmatch(site.key.namespace)
    assert site.domain.isascii()
    assert is_subdomain(site.domain)
    assert DNS1035_LABEL.fullmatch(site.backend.service_name)
    assert 1 <= site.backend.service_port <= 65535
    assert site.origin == origin


# -- the parser, given anything ---------------------------------------------------------------


@pytest.mark.unit
@settings(max_examples=400, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_any_document_gives_a_site_or_problems_naming_fields(doc: Any) -> None:
    check_outcome(doc)


FIELD_PATHS = [
    "apiVersion",
    "kind",
    "metadata",
    "metadata.name",
    "metadata.namespace",
    "metadata.creationTimestamp",
    "metadata.generation",
    "spec",
    "spec.domain",
    "spec.backend",
    "spec.backend.serviceName",
    "spec.backend.servicePort",
]


@pytest.mark.unit
@settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(FIELD_PATHS), junk)
def test_one_wrong_field_is_the_one_named(path: str, value: Any) -> None:
    doc = valid_doc_with(path, value)
    problems = []
    try:
        parse_site(doc, ORIGIN)
    except InvalidSite as exc:
        problems = exc.problems
    assert all(p.field == path or p.field.startswith(path + ".") for p in problems), problems
    check_outcome(doc)


@pytest.mark.unit
@pytest.mark.timeout(20)
@pytest.mark.parametrize("value", HUGE_VALUES, ids=lambda v: type(v).__name__)
@pytest.mark.parametrize("path", FIELD_PATHS)
def test_huge_and_hostile_values_are_reported_in_a_bounded_line(path: str, value: Any) -> None:
    check_outcome(valid_doc_with(path, value))


@pytest.mark.unit
def test_a_timestamp_out_of_range_or_of_another_type_is_named() -> None:
    for value in (HUGE_VALUES[-2], HUGE_VALUES[-1], 1700000000, ["2024-01-01"], shared_bomb()):
        doc = valid_doc()
        doc["metadata"]["creationTimestamp"] = value
        with pytest.raises(InvalidSite) as info:
            parse_site(doc, ORIGIN)
        assert [p.field for p in info.value.problems] == ["metadata.creationTimestamp"]


@pytest.mark.unit
def test_unknown_fields_are_listed_up_to_a_bound() -> None:
    doc = valid_doc()
    doc["spec"].update({f"extra{i}": i for i in range(5000)})
    with pytest.raises(InvalidSite) as info:
        parse_site(doc, ORIGIN)
    problems = info.value.problems
    assert len(problems) == MAX_UNKNOWN_FIELDS + 1
    assert problems[-1].field == f"spec.extra{MAX_UNKNOWN_FIELDS}"
    assert problems[-1].message == f"unknown field, and {5000 - MAX_UNKNOWN_FIELDS - 1} more not listed"


@pytest.mark.unit
def test_odd_keys_are_named_quoted_and_bounded() -> None:
    doc = valid_doc()
    doc["spec"]["do\nmain"] = 1
    doc["spec"]["x" * 100_000] = 2
    doc["spec"][None] = 3
    with pytest.raises(InvalidSite) as info:
        parse_site(doc, ORIGIN)
    fields = [p.field for p in info.value.problems]
    assert fields[0] == "spec.'do\\nmain'"
    assert fields[1].startswith("spec.'xxx")
    assert len(fields[1]) < 250
    assert fields[2] == "spec.None"


# -- domains: one spelling, or a problem ------------------------------------------------------


@pytest.mark.parametrize(
    ("domain", "words"),
    [
        ("blog.example.com.", "must not end with a dot"),
        (" blog.example.com", "must not have spaces or line breaks around it"),
        ("blog.example.com\n", "must not have spaces or line breaks around it"),
        ("b\u00fccher.example", "IDNA form"),
        ("\u212a.example.com", "IDNA form"),  # the Kelvin sign, which str.lower() makes a 'k'
        ("blog.example.com\x00", "is not a DNS name"),
    ],
    ids=["trailing-dot", "leading-space", "trailing-newline", "unicode", "kelvin-sign", "nul"],
)
@pytest.mark.unit
def test_other_spellings_of_a_domain_are_refused_with_a_reason(domain: str, words: str) -> None:
    with pytest.raises(InvalidSite) as info:
        parse_site(valid_doc(domain=domain), ORIGIN)
    (problem,) = info.value.problems
    assert problem.field == "spec.domain"
    assert words in problem.message
    assert not model_accepts(valid_doc(domain=domain)["spec"])
    assert not crd_accepts(valid_doc(domain=domain)["spec"])


@pytest.mark.unit
def test_case_is_the_one_spelling_folded_and_idna_is_kept() -> None:
    assert parse_site(valid_doc(domain="BLOG.Example.COM")).domain == "blog.example.com"
    assert parse_site(valid_doc(domain="XN--bcher-kva.example")).domain == "xn--bcher-kva.example"


_TRICKY = "aZk09-._* \t\n\r\x00\u212a\u0130\u0131\u017f\u00e9\u00df\u3002\uff0e\uff21"
_hostile_domain = st.one_of(
    st.text(alphabet=_TRICKY, max_size=20),
    st.lists(st.text(alphabet=_TRICKY, min_size=1, max_size=4), min_size=1, max_size=4).map(".".join),
    st.text(alphabet=st.characters(), max_size=6),
)
_hostile_service = st.one_of(st.just("web"), st.text(alphabet="azAZ09-\u212a\u017f\n _", max_size=64))


@pytest.mark.unit
@settings(max_examples=300, deadline=None)
@given(_hostile_domain, _hostile_service, st.one_of(st.just(80), st.integers(-1, 70_000)))
def test_the_crd_and_the_model_agree_on_hostile_spellings(domain: str, service: str, port: int) -> None:
    spec = {"domain": domain, "backend": {"serviceName": service, "servicePort": port}}
    assert model_accepts(copy.deepcopy(spec)) == crd_accepts(copy.deepcopy(spec)), spec


# -- the folder reader, given any text --------------------------------------------------------


def _dumped(value: Any, style: bool | None) -> str:
    return yaml.safe_dump(value, default_flow_style=style, allow_unicode=True)


def _alias_bomb(levels: int, width: int) -> str:
    lines = ["a0: &a0 [lol]"]
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def _nested(depth: int, block: bool) -> str:
    return "- " * depth + "x\n" if block else "[" * depth + "x" + "]" * depth + "\n"


_TAGS = [
    "!!timestamp",
    "!!bool",
    "!!int",
    "!!float",
    "!!binary",
    "!!null",
    "!!set",
    "!!omap",
    "!!pairs",
    "!!map",
]
_yaml_texts = st.one_of(
    st.builds(
        lambda tag, value, where: manifest("blog", "blog.example.com", "web", 80).replace(
            where, f"{where} {tag} {value}"
        ),
        st.sampled_from(_TAGS),
        st.text(alphabet="0x:-.'\"[]{}ab1 ", max_size=8),
        st.sampled_from(["kind:", "domain:", "servicePort:", "metadata:"]),
    ),
    st.builds(_dumped, junk.filter(lambda v: v is not HUGE_VALUES[0]), st.sampled_from([None, True, False])),
    st.text(alphabet="[]{}:-?*&!|>'\"#%@,.~ \n\tab01", max_size=200),
    st.builds(_alias_bomb, st.integers(1, 12), st.integers(1, 12)),
    st.builds(_nested, st.integers(0, 200), st.booleans()),
    st.builds(
        lambda text, at, junk_text: text[:at] + junk_text + text[at:],
        st.just(manifest("blog", "blog.example.com", "web", 80)),
        st.integers(0, 150),
        st.text(alphabet="[]{}:-*&!|\"'\n \t\u212a\x00x", max_size=6),
    ),
)


@pytest.mark.unit
@settings(max_examples=250, deadline=3000, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_yaml_texts, min_size=1, max_size=3).map("---\n".join))
def test_any_file_gives_sites_or_problems_naming_the_file(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "site.yaml")
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        sites = read_manifests([path])
    assert isinstance(sites, SiteSet)
    for problem in sites.problems:
        assert problem.origin.startswith(str(path)), problem
        assert "\n" not in str(problem), problem
    for site in sites.sites.values():
        assert site.origin.startswith(str(path))
        check_site(site, site.origin)


@pytest.mark.unit
@settings(max_examples=150, deadline=2000)
@given(st.integers(1, 80), st.sampled_from([None, True, False]), st.booleans())
def test_nesting_is_read_up_to_the_limit_and_refused_beyond_it(
    depth: int, style: bool | None, maps: bool
) -> None:
    value: Any = "x"
    for level in range(depth):
        value = {f"k{level}": value} if maps and level % 2 else [value]
    text = _dumped(value, style)
    if depth <= MAX_DEPTH:
        assert load_documents(text) == [value]
    else:
        with pytest.raises(ManifestRefused, match=f"nested more than {MAX_DEPTH} levels deep"):
            load_documents(text)


@pytest.mark.envoy
@pytest.mark.timeout(20)
@pytest.mark.parametrize("block", [False, True], ids=["flow", "block"])
def test_nesting_deep_enough_to_crash_the_c_parser_is_refused(tmp_path: Path, block: bool) -> None:
    """200,000 levels made the C loader overflow its stack (a crash, not an exception); the
    command runs in a process of its own so that such a crash fails only this test."""
    path = tmp_path / "deep.yaml"
    path.write_text(_nested(200_000, block))
    proc = run_cli("validate", path)
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    assert (
        proc.stdout.strip() == f"{path}: cannot be read: the file is nested more than {MAX_DEPTH} levels deep"
    )


@pytest.mark.unit
def test_a_mistake_after_allowed_nesting_keeps_the_parsers_words() -> None:
    """60 levels (within the limit), a string of 100 dashes and a character no token starts
    with: the C parser stops within its look-ahead, the walk again finds no nesting past the
    limit, and the mistake is told as one."""
    text = "[" * 60 + "'" + "-" * 100 + "' @"
    with pytest.raises(yaml.YAMLError) as caught:
        load_documents(text)
    assert "nested more than" not in str(caught.value)


@pytest.mark.unit
def test_an_alias_bomb_is_refused_and_a_few_aliases_are_not() -> None:
    with pytest.raises(ManifestRefused, match=f"aliases expand to more than {MAX_ALIAS_NODES} nodes"):
        load_documents(_alias_bomb(9, 10))
    shared = "backend: &b {serviceName: web, servicePort: 80}\n" + "".join(f"s{i}: *b\n" for i in range(1000))
    assert len(load_documents(shared)[0]) == 1001


@pytest.mark.unit
def test_too_many_documents_or_list_items_are_refused() -> None:
    assert len(load_documents("---\n" * MAX_DOCUMENTS)) == MAX_DOCUMENTS
    with pytest.raises(ManifestRefused, match=f"more than {MAX_DOCUMENTS} documents"):
        load_documents("--- a\n" * (MAX_DOCUMENTS + 1))
    items = "kind: List\nitems: [" + ", ".join(["{}"] * (MAX_DOCUMENTS + 1)) + "]\n"
    with pytest.raises(ManifestRefused, match=f"more than {MAX_DOCUMENTS} documents"):
        load_documents(items)


@pytest.mark.unit
def test_an_integer_too_long_to_print_is_a_problem_of_its_field(tmp_path: Path) -> None:
    path = tmp_path / "hex.yaml"
    path.write_text(manifest("blog", "blog.example.com", "web", 80).replace("80}", "0x" + "f" * 5000 + "}"))
    sites = read_manifests([path])
    assert not sites.sites
    (problem,) = sites.problems
    assert (problem.origin, problem.field) == (str(path), "spec.backend.servicePort")
    assert "an integer of 20000 bits" in problem.message


# -- the builder: what passed validation, Envoy accepts ---------------------------------------

_ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"


def _label(alnum: str = _ALNUM, first: str = _ALNUM, longest: int = 63) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(first),
        st.builds(
            lambda a, m, z: a + m + z,
            st.sampled_from(first),
            st.text(alnum + "-", max_size=longest - 2),
            st.sampled_from(alnum),
        ),
        st.just(first[0] + "-" * (longest - 2) + alnum[-1]),
    )


def _subdomain(longest: int = 253) -> st.SearchStrategy[str]:
    return st.lists(_label(), min_size=1, max_size=5).map(".".join).map(lambda d: d[:longest].strip(".-"))


_domain = st.one_of(
    _subdomain(),
    st.just(".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])),  # 253: the longest
    st.just("1.2.3.4"),
    st.just("xn--bcher-kva.example"),
)


def _spelling(domain: str, how: str) -> str:
    """A spelling of `domain`: the same host for a human, a problem or a conflict for us."""
    return {
        "same": domain,
        "upper": domain.upper(),
        "title": domain.title(),
        "dot": domain + ".",
        "space": f" {domain} ",
        "kelvin": domain.replace("k", "\u212a"),
        "unicode": "b\u00fccher." + domain,
    }[how]


@st.composite
def site_batches(draw: st.DrawFn) -> list[dict[str, Any]]:
    """A few hundred sites. Hypothesis draws the pools of names and domains (the shapes worth
    exploring: longest labels, digits, hyphens); a seeded random picks each site from them,
    in every spelling, so that many sites claim one domain."""
    domains = draw(st.lists(_domain.filter(lambda d: bool(d) and is_subdomain(d)), min_size=5, max_size=40))
    names = draw(st.lists(_subdomain().filter(bool), min_size=3, max_size=20))
    namespaces = draw(st.lists(_label(), min_size=1, max_size=4))
    services = draw(st.lists(_label(first="abcdefghijklmnopqrstuvwxyz"), min_size=1, max_size=8))
    pick = draw(st.randoms(use_true_random=False))
    namespaces += ["default", "n" * 63]
    services += ["s" * 63]
    spellings = ["same"] * 4 + ["upper", "title", "dot", "space", "kelvin", "unicode"]

    def one(pool: list[Any], index: int) -> Any:  # varied even when the random draws only zeros
        return pool[(index + pick.randrange(len(pool))) % len(pool)]

    docs = []
    for index in range(draw(st.integers(150, 300))):
        meta: dict[str, Any] = {
            "name": one(names, index) if pick.random() > 0.7 else f"site-{index}",
            "namespace": one(namespaces, index),
        }
        if index % 2:
            meta["creationTimestamp"] = f"2024-01-{one(list(range(1, 29)), index):02d}T00:00:00Z"
        docs.append(
            {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "metadata": meta,
                "spec": {
                    "domain": _spelling(one(domains, index), one(spellings, index)),
                    "backend": {
                        "serviceName": one(services, index),
                        "servicePort": one([1, 80, 65535, pick.randint(1, 65535)], index),
                    },
                },
            }
        )
    return docs


def static_bootstrap(snapshot: Snapshot) -> dict[str, Any]:
    """The snapshot as a bootstrap with static resources: its clusters, and its listener with
    the route configuration inline instead of taken over RDS."""
    data = snapshot.to_json()
    (listener,) = data["Listener"]
    (routes,) = data["RouteConfiguration"]
    (chain,) = listener["filterChains"]
    (manager_filter,) = chain["filters"]
    manager = manager_filter["typedConfig"]
    del manager["rds"]
    manager["routeConfig"] = routes
    return {"static_resources": {"clusters": data["Cluster"], "listeners": [listener]}}


def envoy_validate(bootstrap: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "bootstrap.json")
        path.write_text(json.dumps(bootstrap))
        return validate_config(path)


def served_domains(snapshot: Snapshot) -> list[str]:
    (routes,) = snapshot.to_json()["RouteConfiguration"]
    return [d for vhost in routes["virtualHosts"] for d in vhost["domains"] if d != "*"]


@settings(
    max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@pytest.mark.envoy
@given(site_batches(), st.integers(1, 40))
def test_envoy_accepts_the_snapshot_of_every_batch_of_valid_sites(
    docs: list[dict[str, Any]], chunk: int
) -> None:
    sites: dict[SiteKey, StaticSite] = {}
    for index, doc in enumerate(docs):
        site = check_outcome(doc, f"batch document {index}")
        if site is not None:
            sites[site.key] = site
    assert len(sites) >= 50, "most of the batch is valid"

    # Built at once, and built piece by piece with removals: the same snapshot.
    whole = SnapshotBuilder(BuildOptions()).build(sites).snapshot
    builder = SnapshotBuilder(BuildOptions())
    current: dict[SiteKey, StaticSite] = {}
    keys = list(sites)
    for start in range(0, len(keys), chunk):
        part = keys[start : start + chunk]
        current.update((k, sites[k]) for k in part)
        builder.build(dict(current), changed=part)
    gone = keys[::7]
    for key in gone:
        del current[key]
    pieces = builder.build(dict(current), changed=gone).snapshot
    assert pieces.version == SnapshotBuilder(BuildOptions()).build(current).snapshot.version

    for snapshot, expected in ((whole, sites), (pieces, current)):
        domains = served_domains(snapshot)
        assert len(domains) == len(set(domains)) == len({s.domain for s in expected.values()})
        assert all(d.isascii() and d == d.lower() and d == d.strip().rstrip(".") for d in domains)
        result = envoy_validate(static_bootstrap(snapshot))
        assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]


@pytest.mark.envoy
def test_envoy_validation_catches_a_domain_served_twice() -> None:
    """The check above can fail: Envoy refuses two spellings of one domain in a route."""
    sites = [
        parse_site(valid_doc(domain=f"d{i}.example.com") | {"metadata": {"name": f"s{i}"}}) for i in range(3)
    ]
    boot = static_bootstrap(SnapshotBuilder().build(sites).snapshot)
    assert envoy_validate(boot).returncode == 0
    manager = boot["static_resources"]["listeners"][0]["filterChains"][0]["filters"][0]["typedConfig"]
    hosts = manager["routeConfig"]["virtualHosts"]
    hosts[1]["domains"] = [hosts[0]["domains"][0].upper()]
    result = envoy_validate(boot)
    assert result.returncode != 0
    assert hosts[0]["domains"][0] in result.stderr  # the refusal names the domain


@pytest.mark.unit
@settings(max_examples=200, deadline=None)
@given(_subdomain(), st.integers(0, 2**64))
def test_event_names_are_valid_for_every_valid_site_name(name: str, now_ns: int) -> None:
    if not name:
        return
    made = event_name(name, now_ns)
    assert is_subdomain(made), made


@pytest.mark.unit
def test_an_event_name_cut_after_a_hyphen_is_still_valid() -> None:
    assert event_name("a" * 199 + "-b", 255) == "a" * 199 + ".ff"
    assert event_name("a" * 199 + ".b", 255) == "a" * 199 + ".ff"


# -- the size of a manifest file --------------------------------------------------------------


@pytest.mark.unit
def test_an_oversized_file_is_not_read_and_its_sites_keep_their_last_good_version(root: Path) -> None:
    path = root / "blog.yaml"
    path.write_text(manifest("blog", "blog.example.com", "web", 80))
    source = FolderSource(root, max_manifest_bytes=1024)
    first = source.load()
    key = SiteKey("default", "blog")
    assert first.sites[key].domain == "blog.example.com"

    path.write_text(manifest("blog", "moved.example.com", "web", 80) + "# padding\n" * 200)
    size = path.stat().st_size
    sites = source.update([path])
    assert sites.sites[key].domain == "blog.example.com"  # the last good version
    (problem,) = sites.problems
    assert problem.origin == str(path)
    assert problem.message == (
        f"cannot be read: the file is {size} bytes; a manifest file may have at most 1024 (--max-manifest-bytes)"
    )
    assert sites.invalid[key] == (problem,)

    path.write_text(manifest("blog", "moved.example.com", "web", 80))
    assert source.update([path]).sites[key].domain == "moved.example.com"


@pytest.mark.unit
def test_the_limit_is_exact(root: Path) -> None:
    text = manifest("blog", "blog.example.com", "web", 80)
    (root / "blog.yaml").write_text(text)
    assert FolderSource(root, max_manifest_bytes=len(text)).load().problems == ()
    assert not FolderSource(root, max_manifest_bytes=len(text) - 1).load().sites


@pytest.mark.unit
@pytest.mark.timeout(20)
def test_a_fifo_or_a_device_named_like_a_manifest_is_refused_without_waiting(root: Path) -> None:
    os.mkfifo(root / "pipe.yaml")
    (root / "zero.yaml").symlink_to("/dev/zero")
    (root / "blog.yaml").write_text(manifest("blog", "blog.example.com", "web", 80))
    sites = FolderSource(root).load()
    assert [s.domain for s in sites.sites.values()] == ["blog.example.com"]
    assert sorted((p.origin, p.message) for p in sites.problems) == [
        (str(root / "pipe.yaml"), "cannot be read: the file is not a regular file"),
        (str(root / "zero.yaml"), "cannot be read: the file is not a regular file"),
    ]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (_nested(1000, block=False), f"nested more than {MAX_DEPTH} levels deep"),
        (_alias_bomb(9, 10), f"aliases expand to more than {MAX_ALIAS_NODES} nodes"),
        ("--- a\n" * (MAX_DOCUMENTS + 1), f"more than {MAX_DOCUMENTS} documents"),
    ],
    ids=["deep", "aliases", "documents"],
)
@pytest.mark.unit
def test_a_yaml_bomb_keeps_the_last_good_version(root: Path, text: str, reason: str) -> None:
    path = root / "blog.yaml"
    path.write_text(manifest("blog", "blog.example.com", "web", 80))
    source = FolderSource(root)
    source.load()
    path.write_text(manifest("blog", "moved.example.com", "web", 80) + "---\n" + text)
    sites = source.update([path])
    assert [s.domain for s in sites.sites.values()] == ["blog.example.com"]
    (problem,) = sites.problems
    assert problem.origin == str(path)
    assert reason in problem.message


# -- the number of sites ----------------------------------------------------------------------


def make_site(
    name: str, created: str | None = None, origin: str = "", domain: str | None = None
) -> StaticSite:
    doc = valid_doc(domain=domain or f"{name}.example.com")
    doc["metadata"] = {"name": name, "namespace": "default"}
    if created is not None:
        doc["metadata"]["creationTimestamp"] = created
    return parse_site(doc, origin or f"sites/{name}.yaml")


def limit_problem(site: StaticSite, maximum: int) -> tuple[str, str, str]:
    return (
        site.origin,
        "metadata.name",
        f"not served: the limit of {maximum} sites (--max-sites) is reached",
    )


@pytest.mark.unit
def test_the_limit_admits_the_oldest_then_keeps_what_it_serves() -> None:
    limit = SiteLimit(3)
    days = {"a": None, "b": "04", "e": "01", "c": "03", "d": "02"}  # offered in this order
    sites = {n: make_site(n, f"2024-01-{d}T00:00:00Z" if d else None) for n, d in days.items()}
    for site in sites.values():
        limit.offer(site.key, site)
    changed = limit.settle()
    assert sorted(k.name for k in limit.sites) == ["c", "d", "e"]  # the oldest; no timestamp is newest
    assert sorted(k.name for k in limit.refused) == ["a", "b"]
    assert changed == {sites[n].key for n in "cde"}

    late = make_site("f", "2020-01-01T00:00:00Z")  # older, but it came later: it waits behind a, b
    limit.offer(late.key, late)
    assert limit.settle() == set()
    limit.offer(sites["e"].key, None)
    limit.offer(sites["d"].key, None)
    assert limit.settle() == {sites["e"].key, sites["d"].key, sites["b"].key, sites["a"].key}
    assert sorted(k.name for k in limit.sites) == ["a", "b", "c"]
    assert list(limit.refused) == [late.key]

    moved = make_site("c", "2024-01-03T00:00:00Z", domain="moved.example.com")
    limit.offer(moved.key, moved)  # a served site that changes stays served
    assert limit.settle() == {moved.key}
    assert limit.sites[moved.key] is moved
    limit.offer(late.key, None)  # a refused site that goes away leaves no trace
    assert limit.settle() == set()
    assert limit.refused == {}


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, 5),
    st.lists(
        st.one_of(
            st.tuples(st.just("put"), st.integers(0, 9), st.integers(0, 3)),
            st.tuples(st.just("drop"), st.integers(0, 9), st.just(0)),
            st.just(("settle", 0, 0)),
        ),
        max_size=60,
    ),
)
@pytest.mark.unit
def test_the_limit_keeps_its_promises_whatever_happens(
    maximum: int, steps: list[tuple[str, int, int]]
) -> None:
    limit = SiteLimit(maximum)
    declared: dict[SiteKey, StaticSite] = {}
    before: dict[SiteKey, StaticSite] = {}
    for action, number, day in [*steps, ("settle", 0, 0)]:
        key = SiteKey("default", f"s{number}")
        if action == "put":
            site = make_site(f"s{number}", f"2024-01-0{day + 1}T00:00:00Z")
            limit.offer(key, site)
            declared[key] = site
        elif action == "drop":
            limit.offer(key, None)
            declared.pop(key, None)
        else:
            changed = limit.settle()
            served, refused = dict(limit.sites), limit.refused
            assert len(served) <= maximum
            assert served.keys() | refused.keys() == declared.keys()
            assert not served.keys() & refused.keys()
            assert all(declared[k] is s for k, s in (served | dict(refused)).items())
            assert not refused or len(served) == maximum  # nobody waits while there is room
            assert all(k in served for k in before if k in declared)  # served sites stay served
            assert changed == {k for k in served.keys() | before.keys() if served.get(k) is not before.get(k)}
            before = served


@pytest.mark.unit
def test_the_limit_must_allow_a_site() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        SiteLimit(0)


def folder_with(root: Path, *names: str) -> dict[str, Path]:
    paths = {}
    for name in names:
        paths[name] = root / f"{name}.yaml"
        paths[name].write_text(manifest(name, f"{name}.example.com", "web", 80))
    return paths


@pytest.mark.unit
def test_the_folder_source_refuses_sites_beyond_the_limit_and_admits_them_later(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    paths = folder_with(root, "a", "b", "c")
    source = FolderSource(root, max_sites=2)
    sites = source.load()
    a, b, c = (SiteKey("default", n) for n in "abc")
    assert sorted(sites.sites) == [a, b]
    problem = limit_problem(sites_c := make_site("c", origin=str(paths["c"])), 2)
    assert [(p.origin, p.field, p.message) for p in sites.problems] == [problem]
    assert sites.refused == {c}
    assert [(p.origin, p.field, p.message) for p in sites.invalid[c]] == [problem]

    status = StatusLog()
    with caplog.at_level("INFO", logger="staticsite_xds.status"):
        result = SnapshotBuilder().build(sites.sites, sites.changed)
        status.report(sites, result.sites, result.changed)
    state = status.states()[c]
    assert (state.phase, state.reason) == (Phase.INVALID, SITE_LIMIT_REASON)
    assert state.message == f"{sites_c.origin}: metadata.name: {problem[2]}"
    assert f"site {c} is Invalid ({SITE_LIMIT_REASON}): {state.message}" in caplog.text

    paths["a"].unlink()
    sites = source.update([paths["a"]])
    assert sorted(sites.sites) == [b, c]
    assert sites.changed == {a, c}  # what changed, nothing more
    assert sites.problems == ()
    assert sites.refused == frozenset()
    assert state_of(c, sites, {}) is None

    folder_with(root, "d")
    sites = source.update([root / "d.yaml"])
    assert sorted(sites.sites) == [b, c]
    assert sites.refused == {SiteKey("default", "d")}


@pytest.mark.unit
def test_an_invalid_declaration_of_a_refused_site_shows_its_own_problem(root: Path) -> None:
    paths = folder_with(root, "a", "b")
    source = FolderSource(root, max_sites=1)
    source.load()
    b = SiteKey("default", "b")
    paths["b"].write_text(manifest("b", "b.example.com", "web", 0))
    sites = source.update([paths["b"]])
    assert [p.field for p in sites.invalid[b]] == ["spec.backend.servicePort"]
    assert b not in sites.refused
    assert state_of(b, sites, {}).reason == "InvalidSpec"  # type: ignore[union-attr]


def site_object(name: str, generation: int = 1) -> dict[str, Any]:
    body = valid_doc(domain=f"{name}.example.com")
    body["metadata"] = {"name": name, "namespace": "docs", "uid": name, "generation": generation}
    return body


@pytest.mark.unit
def test_the_kubernetes_source_applies_the_same_limit() -> None:
    source = offline_source(max_sites=1)
    a, b = SiteKey("docs", "a"), SiteKey("docs", "b")
    feed(source, "ADDED", site_object("a"))
    feed(source, "ADDED", site_object("b", generation=4))
    sites = source.current(frozenset({a, b}))
    assert list(sites.sites) == [a]
    assert sites.refused == {b}
    assert [(p.origin, p.message) for p in sites.invalid[b]] == [
        ("StaticSite docs/b", "not served: the limit of 1 sites (--max-sites) is reached")
    ]
    assert sites.generation(b) == 4
    source._changed.clear()  # what the watch takes before it yields a set
    feed(source, "DELETED", site_object("a"))
    assert source._changed == {a, b}  # the admitted site is a change the watch will yield
    sites = source.current(frozenset(source._changed))
    assert list(sites.sites) == [b]
    assert sites.invalid == {}


@pytest.mark.kubernetes
async def test_a_refused_site_shows_site_limit_reached_in_its_status(cluster: Cluster) -> None:
    replica = await start_replica(cluster, "replica-a", max_sites=1)
    plane = replica.plane
    try:
        await cluster.create_service("docs", "web")
        await cluster.create_site("docs", "first", "first.example.com")
        await eventually(lambda: list(plane.sites.sites) == [SiteKey("docs", "first")], what="the first site")
        await cluster.create_site("docs", "second", "second.example.com")

        async def reason(name: str, expected: str) -> dict[str, Any] | None:
            status = await cluster.status("docs", name)
            conditions = status.get("conditions") or [{}]
            return status if conditions[-1].get("reason") == expected else None

        status = await eventually(lambda: reason("second", SITE_LIMIT_REASON), what="the refusal in status")
        assert status["phase"] == "Invalid"
        assert status["conditions"][-1]["message"] == (
            "StaticSite docs/second: metadata.name: not served: the limit of 1 sites (--max-sites) is reached"
        )
        assert await reason("first", "Accepted")

        await cluster.delete_site("docs", "first")
        await eventually(lambda: reason("second", "Accepted"), what="the waiting site admitted")
        assert list(plane.sites.sites) == [SiteKey("docs", "second")]
    finally:
        await replica.close()


# -- the serve command ------------------------------------------------------------------------


@pytest.fixture
def plane_process(tmp_path: Path) -> Iterator[ControlPlaneProcess]:
    sites = tmp_path / "sites"
    sites.mkdir()
    (sites / "a.yaml").write_text(manifest("a", "a.example.com", "web", 80))
    (sites / "b.yaml").write_text(manifest("b", "b.example.com", "web", 80))
    (sites / "big.yaml").write_text(manifest("c", "c.example.com", "web", 80) + "#" * 400)
    plane = ControlPlaneProcess(
        sites,
        tmp_path,
        free_port(),
        free_port(),
        log_level="info",
        extra=["--max-sites", "1", "--max-manifest-bytes", "400"],
    )
    plane.start()
    try:
        yield plane
    finally:
        plane.stop()


@pytest.mark.envoy
def test_serve_applies_both_limits_from_its_flags(plane_process: ControlPlaneProcess) -> None:
    sites = plane_process.sites
    refused = (
        f"site default/b is Invalid ({SITE_LIMIT_REASON}): {sites / 'b.yaml'}: metadata.name: "
        "not served: the limit of 1 sites (--max-sites) is reached"
    )
    big = f"{sites / 'big.yaml'}: cannot be read: the file is "
    wait_until(
        lambda: refused in plane_process.log() and big in plane_process.log(), what="both refusals logged"
    )
    assert "a manifest file may have at most 400 (--max-manifest-bytes)" in plane_process.log()


@pytest.mark.envoy
@pytest.mark.parametrize("flag", ["--max-sites", "--max-manifest-bytes"])
@pytest.mark.parametrize("value", ["0", "-3", "many"])
def test_serve_refuses_a_limit_below_one(tmp_path: Path, flag: str, value: str) -> None:
    proc = run_cli("serve", "--sites", tmp_path, flag, value)
    assert proc.returncode == 2
    assert f"argument {flag}:" in proc.stderr


@pytest.mark.unit
def test_date_only_and_aware_timestamps_still_parse() -> None:
    """The timestamp checks refuse only what cannot be a time; these are times."""
    for value, expected in (
        (date(2024, 5, 1), "2024-05-01T00:00:00Z"),
        (datetime(2024, 5, 1, 12, tzinfo=UTC), "2024-05-01T12:00:00Z"),
        ("not a time", "not a time"),
    ):
        doc = valid_doc()
        doc["metadata"]["creationTimestamp"] = value
        assert parse_site(doc).creation_timestamp == expected
