"""parse_site: every valid manifest parses, every rule rejects with a problem naming its field."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from snapshot.model import (
    API_VERSION,
    DEFAULT_NAMESPACE,
    Backend,
    InvalidSite,
    Problem,
    SiteKey,
    StaticSite,
    parse_site,
)

ORIGIN = "sites/blog.yaml document 2"

_MISSING = object()


def make_doc(**changes: Any) -> dict[str, Any]:
    """A valid manifest, with `changes` applied: dotted path -> value (or _MISSING to delete)."""
    doc: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": "StaticSite",
        "metadata": {"name": "blog", "namespace": "web"},
        "spec": {"domain": "blog.example.com", "backend": {"serviceName": "blog", "servicePort": 8080}},
    }
    doc = copy.deepcopy(doc)
    for path, value in changes.items():
        *parents, last = path.split(".")
        node = doc
        for part in parents:
            node = node[part]
        if value is _MISSING:
            del node[last]
        else:
            node[last] = value
    return doc


def problems_of(doc: Any, origin: str = ORIGIN) -> list[Problem]:
    with pytest.raises(InvalidSite) as info:
        parse_site(doc, origin)
    problems = info.value.problems
    assert problems, "InvalidSite must carry at least one problem"
    assert all(p.origin == origin for p in problems), problems
    return problems


def fields_of(doc: Any) -> list[str]:
    return [p.field for p in problems_of(doc)]


# -- valid manifests --------------------------------------------------------------------------


def test_valid_manifest_parses() -> None:
    site = parse_site(make_doc(), ORIGIN)
    assert site == StaticSite(
        key=SiteKey("web", "blog"),
        domain="blog.example.com",
        backend=Backend("web", "blog", 8080),
        generation=0,
        creation_timestamp=None,
        origin=ORIGIN,
    )


def test_namespace_defaults_to_default() -> None:
    site = parse_site(make_doc(**{"metadata.namespace": _MISSING}))
    assert DEFAULT_NAMESPACE == "default"
    assert site.key == SiteKey("default", "blog")
    assert site.backend == Backend("default", "blog", 8080)


def test_domain_is_lower_cased() -> None:
    site = parse_site(make_doc(**{"spec.domain": "Blog.EXAMPLE.Com"}))
    assert site.domain == "blog.example.com"


def test_generation_and_creation_timestamp_are_kept() -> None:
    doc = make_doc(**{"metadata.generation": 3, "metadata.creationTimestamp": "2024-05-01T10:00:00Z"})
    site = parse_site(doc)
    assert site.generation == 3
    assert site.creation_timestamp == "2024-05-01T10:00:00Z"


def test_server_side_metadata_and_status_are_accepted() -> None:
    doc = make_doc(
        **{
            "metadata.uid": "0b7c",
            "metadata.resourceVersion": "12",
            "metadata.labels": {"team": "web"},
            "metadata.annotations": {"a": "b"},
            "status": {"phase": "Provisioned"},
        }
    )
    assert parse_site(doc).key == SiteKey("web", "blog")


@pytest.mark.parametrize(
    ("yaml_value", "expected"),
    [
        ('"2024-05-01T10:00:00Z"', "2024-05-01T10:00:00Z"),
        ("2024-05-01T10:00:00Z", "2024-05-01T10:00:00Z"),
        ("2024-05-01T12:00:00+02:00", "2024-05-01T10:00:00Z"),
        ('"2024-05-01T12:00:00+02:00"', "2024-05-01T10:00:00Z"),
        ("2024-05-01 10:00:00", "2024-05-01T10:00:00Z"),
        ("2024-05-01T10:00:00.25Z", "2024-05-01T10:00:00Z"),
        ("2024-05-01", "2024-05-01T00:00:00Z"),
        ("yesterday", "yesterday"),
    ],
    ids=["string", "unquoted", "offset", "quoted-offset", "naive", "fraction", "date", "not-a-time"],
)
def test_creation_timestamp_is_normalized(yaml_value: str, expected: str) -> None:
    """YAML reads unquoted timestamps as datetimes; every spelling must compare in time order."""
    created = yaml.safe_load(f"t: {yaml_value}")["t"]
    site = parse_site(make_doc(**{"metadata.creationTimestamp": created}))
    assert site.creation_timestamp == expected


@pytest.mark.parametrize(
    "domain",
    [
        "example",
        "a.b",
        "x-1.example.com",
        "1.2.3.4",
        "a" * 63 + ".com",
        ".".join(["a" * 63] * 3 + ["a" * 61]),  # exactly 253 characters
    ],
    ids=["one-label", "short", "hyphen-digit", "digits", "label-63", "total-253"],
)
def test_valid_domains(domain: str) -> None:
    assert parse_site(make_doc(**{"spec.domain": domain})).domain == domain


@pytest.mark.parametrize(
    "service",
    ["web", "a", "a-1", "a" * 63],
    ids=["word", "one-letter", "hyphen-digit", "63"],
)
def test_valid_service_names(service: str) -> None:
    assert parse_site(make_doc(**{"spec.backend.serviceName": service})).backend.service_name == service


@pytest.mark.parametrize("port", [1, 80, 65535])
def test_valid_service_ports(port: int) -> None:
    assert parse_site(make_doc(**{"spec.backend.servicePort": port})).backend.service_port == port


# -- one rule at a time -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "domain",
    [
        "",
        "a..example.com",
        ".example.com",
        "a" * 64 + ".com",
        "-blog.example.com",
        "blog-.example.com",
        "blog.example.com-",
        "my_blog.example.com",
        ".".join(["a" * 63] * 3 + ["a" * 62]),  # 254 characters, every label valid
        "blog.example.com.",
        "*.example.com",
        "*",
        "blog example.com",
        "blog.example.com\n",
        "bl\u00f6g.example.com",
        42,
        True,
        ["blog.example.com"],
        {"name": "blog.example.com"},
        _MISSING,
        None,
    ],
    ids=[
        "empty",
        "empty-label",
        "leading-dot",
        "label-64",
        "leading-hyphen",
        "trailing-hyphen",
        "trailing-hyphen-last-label",
        "underscore",
        "total-254",
        "trailing-dot",
        "wildcard-label",
        "wildcard",
        "space",
        "trailing-newline",
        "non-ascii",
        "integer",
        "boolean",
        "list",
        "mapping",
        "missing",
        "null",
    ],
)
def test_invalid_domain(domain: Any) -> None:
    problems = problems_of(make_doc(**{"spec.domain": domain}))
    assert [p.field for p in problems] == ["spec.domain"]


@pytest.mark.parametrize(
    "service",
    [
        "1web",
        "-web",
        "web-",
        "Web",
        "WEB",
        "a" * 64,
        "web_1",
        "web.svc",
        "",
        "web\n",
        8080,
        _MISSING,
    ],
    ids=[
        "starts-with-digit",
        "starts-with-hyphen",
        "ends-with-hyphen",
        "capitalized",
        "upper-case",
        "64",
        "underscore",
        "dot",
        "empty",
        "trailing-newline",
        "integer",
        "missing",
    ],
)
def test_invalid_service_name(service: Any) -> None:
    problems = problems_of(make_doc(**{"spec.backend.serviceName": service}))
    assert [p.field for p in problems] == ["spec.backend.serviceName"]


@pytest.mark.parametrize(
    "port",
    [0, 65536, -1, "80", True, False, 80.0, None, [80], _MISSING],
    ids=["zero", "65536", "negative", "string", "true", "false", "float", "null", "list", "missing"],
)
def test_invalid_service_port(port: Any) -> None:
    problems = problems_of(make_doc(**{"spec.backend.servicePort": port}))
    assert [p.field for p in problems] == ["spec.backend.servicePort"]


def test_misspelled_backend_field_is_unknown_with_a_hint() -> None:
    doc = make_doc(**{"spec.backend.servicePort": _MISSING, "spec.backend.servicePrt": 8080})
    problems = {p.field: p for p in problems_of(doc)}
    assert set(problems) == {"spec.backend.servicePrt", "spec.backend.servicePort"}
    unknown = problems["spec.backend.servicePrt"].message
    assert "unknown field" in unknown
    assert "did you mean 'servicePort'" in unknown
    assert "is required" in problems["spec.backend.servicePort"].message


@pytest.mark.parametrize(
    ("path", "field", "hint"),
    [
        ("colour", "colour", None),
        ("specs", "specs", "spec"),
        ("spec.domian", "spec.domian", "domain"),
        ("spec.tls", "spec.tls", None),
        ("metadata.lables", "metadata.lables", "labels"),
        ("spec.backend.weight", "spec.backend.weight", None),
    ],
    ids=["top-level", "top-level-typo", "spec-typo", "spec", "metadata-typo", "backend"],
)
def test_unknown_field_anywhere(path: str, field: str, hint: str | None) -> None:
    problems = problems_of(make_doc(**{path: "x"}))
    assert [p.field for p in problems] == [field]
    assert "unknown field" in problems[0].message
    if hint is None:
        assert "did you mean" not in problems[0].message
    else:
        assert f"did you mean {hint!r}" in problems[0].message


@pytest.mark.parametrize(
    "api_version",
    ["staticsite-xds.dev/v1", "v1", "example.com/v1alpha1", 1, _MISSING],
    ids=["other-version", "core", "other-group", "integer", "missing"],
)
def test_wrong_api_version(api_version: Any) -> None:
    assert fields_of(make_doc(apiVersion=api_version)) == ["apiVersion"]


@pytest.mark.parametrize("kind", ["Website", "staticsite", _MISSING], ids=["other", "lower-case", "missing"])
def test_wrong_kind(kind: Any) -> None:
    assert fields_of(make_doc(kind=kind)) == ["kind"]


def test_missing_metadata_name() -> None:
    problems = problems_of(make_doc(**{"metadata.name": _MISSING}))
    assert [p.field for p in problems] == ["metadata.name"]
    assert "is required" in problems[0].message


@pytest.mark.parametrize(
    "name",
    ["Blog", "blog_1", "-blog", "", "a" * 254, "blog\n", 7],
    ids=["upper-case", "underscore", "leading-hyphen", "empty", "254", "trailing-newline", "integer"],
)
def test_invalid_metadata_name(name: Any) -> None:
    assert fields_of(make_doc(**{"metadata.name": name})) == ["metadata.name"]


@pytest.mark.parametrize(
    "namespace",
    ["Web", "-web", "web-", "web.prod", "web_prod", "a" * 64, "", "web\n", 5, None],
    ids=[
        "upper-case",
        "leading-hyphen",
        "trailing-hyphen",
        "dot",
        "underscore",
        "64",
        "empty",
        "trailing-newline",
        "integer",
        "null",
    ],
)
def test_invalid_namespace(namespace: Any) -> None:
    assert fields_of(make_doc(**{"metadata.namespace": namespace})) == ["metadata.namespace"]


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        ("metadata", _MISSING, "metadata"),
        ("metadata", "blog", "metadata"),
        ("spec", _MISSING, "spec"),
        ("spec", ["blog.example.com"], "spec"),
        ("spec.backend", _MISSING, "spec.backend"),
        ("spec.backend", "blog:8080", "spec.backend"),
    ],
    ids=["no-metadata", "metadata-string", "no-spec", "spec-list", "no-backend", "backend-string"],
)
def test_missing_or_malformed_sections(path: str, value: Any, field: str) -> None:
    assert fields_of(make_doc(**{path: value})) == [field]


@pytest.mark.parametrize("doc", [None, "blog", ["a"], 3], ids=["null", "string", "list", "integer"])
def test_not_a_mapping(doc: Any) -> None:
    problems = problems_of(doc)
    assert len(problems) == 1
    assert problems[0].field == ""
    assert "expected a mapping" in problems[0].message


# -- several problems, origin and key ---------------------------------------------------------


def test_every_problem_in_a_document_is_reported() -> None:
    doc = make_doc(
        kind="Website",
        colour="blue",
        **{
            "metadata.namespace": "Web",
            "spec.domain": "*.example.com",
            "spec.backend.serviceName": "Blog",
            "spec.backend.servicePort": 0,
            "spec.backend.servicePrt": 80,
        },
    )
    with pytest.raises(InvalidSite) as info:
        parse_site(doc, ORIGIN)
    fields = sorted(p.field for p in info.value.problems)
    assert fields == sorted(
        [
            "colour",
            "kind",
            "metadata.namespace",
            "spec.domain",
            "spec.backend.serviceName",
            "spec.backend.servicePort",
            "spec.backend.servicePrt",
        ]
    )
    assert all(p.origin == ORIGIN for p in info.value.problems)
    text = str(info.value)
    for field in fields:
        assert f"{ORIGIN}: {field}: " in text


@pytest.mark.parametrize(
    "doc",
    [
        make_doc(**{"spec.domain": "bad_domain"}),
        make_doc(**{"spec.backend.servicePort": "80"}),
        make_doc(metadata=_MISSING, spec=_MISSING),
        make_doc(apiVersion="v1", kind="Website", extra=1),
        "not a manifest",
    ],
    ids=["domain", "port", "no-metadata-no-spec", "header", "scalar"],
)
@pytest.mark.parametrize("origin", ["sites/a.yaml", "sites/b.yaml document 3", ""])
def test_origin_is_carried_in_every_problem(doc: Any, origin: str) -> None:
    problems = problems_of(doc, origin)
    for problem in problems:
        assert problem.origin == origin
        if origin:
            assert str(problem).startswith(f"{origin}: ")


def test_valid_site_carries_its_origin() -> None:
    assert parse_site(make_doc(), "sites/x.yml").origin == "sites/x.yml"


def test_invalid_site_names_the_key_it_claims() -> None:
    with pytest.raises(InvalidSite) as info:
        parse_site(make_doc(**{"spec.backend.servicePort": 0}))
    assert info.value.key == SiteKey("web", "blog")
    with pytest.raises(InvalidSite) as info:
        parse_site(make_doc(**{"metadata.name": _MISSING}))
    assert info.value.key is None


def test_problem_text_names_origin_and_field() -> None:
    assert str(Problem("a.yaml", "spec.domain", "is required")) == "a.yaml: spec.domain: is required"
    assert str(Problem("", "spec.domain", "is required")) == "spec.domain: is required"
    assert str(Problem("a.yaml", "", "cannot be read")) == "a.yaml: cannot be read"
