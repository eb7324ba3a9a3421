"""parse_site: every valid manifest parses, every rule rejects with a problem naming its field."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from snapshot.model import (
    API_VERSION,
    DEFAULT_NAMESPACE,
    MAX_DOMAINS,
    MAX_HEADERS,
    Backend,
    HealthCheck,
    InvalidSite,
    Problem,
    SiteKey,
    StaticSite,
    TlsSpec,
    field_name,
    parse_site,
)

pytestmark = pytest.mark.unit

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
            node.pop(last, None)
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
        "a.*.example.com",
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
        "inner-wildcard",
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
        ("spec.replicas", "spec.replicas", None),
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
            "spec.domain": "*.*.example.com",
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


# -- wildcard domains -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("domain", "expected"),
    [
        ("*.example.com", "*.example.com"),
        ("*.Blog.EXAMPLE.com", "*.blog.example.com"),
        ("*.com", "*.com"),
        ("*." + ".".join(["a" * 63] * 3 + ["a" * 59]), "*." + ".".join(["a" * 63] * 3 + ["a" * 59])),
    ],
    ids=["wildcard", "lower-cased", "one-label", "total-253"],
)
def test_wildcard_domain_is_the_whole_first_label(domain: str, expected: str) -> None:
    assert parse_site(make_doc(**{"spec.domain": domain})).domain == expected


@pytest.mark.parametrize(
    "domain",
    [
        "*",
        "*.",
        "**.example.com",
        "*a.example.com",
        "a*.example.com",
        "a.*.example.com",
        "*.*.example.com",
        "example.*",
        ".*.example.com",
        "*.example.com.",
        "*." + ".".join(["a" * 63] * 3 + ["a" * 60]),  # 254 characters
    ],
    ids=[
        "star",
        "star-dot",
        "double-star",
        "star-prefix",
        "star-suffix",
        "inner",
        "two-wildcards",
        "last-label",
        "leading-dot",
        "trailing-dot",
        "total-254",
    ],
)
def test_invalid_wildcard_domain(domain: str) -> None:
    problems = problems_of(make_doc(**{"spec.domain": domain}))
    assert [p.field for p in problems] == ["spec.domain"]


def test_misplaced_wildcard_is_explained() -> None:
    (problem,) = problems_of(make_doc(**{"spec.domain": "a.*.example.com"}))
    assert "only allowed as the whole first label" in problem.message


# -- aliases and redirectFrom -----------------------------------------------------------------


def test_aliases_and_redirects_are_lower_cased_in_order() -> None:
    doc = make_doc(
        **{
            "spec.aliases": ["Www.Blog.Example.COM", "*.Blog.example.org"],
            "spec.redirectFrom": ["OLD.example.com", "*.old.example.net"],
        }
    )
    site = parse_site(doc)
    assert site.aliases == ("www.blog.example.com", "*.blog.example.org")
    assert site.redirect_from == ("old.example.com", "*.old.example.net")
    assert site.hosts == ("blog.example.com", "www.blog.example.com", "*.blog.example.org")


def test_domain_lists_default_to_empty() -> None:
    site = parse_site(make_doc(**{"spec.aliases": [], "spec.redirectFrom": []}))
    assert site.aliases == site.redirect_from == ()
    assert parse_site(make_doc()).hosts == ("blog.example.com",)


def test_a_wildcard_domain_may_have_aliases() -> None:
    site = parse_site(make_doc(**{"spec.domain": "*.example.com", "spec.aliases": ["example.com"]}))
    assert site.hosts == ("*.example.com", "example.com")


@pytest.mark.parametrize(("field", "attribute"), [("aliases", "aliases"), ("redirectFrom", "redirect_from")])
def test_domain_lists_hold_at_most_the_limit(field: str, attribute: str) -> None:
    hosts = [f"h{i}.example.com" for i in range(MAX_DOMAINS + 1)]
    site = parse_site(make_doc(**{f"spec.{field}": hosts[:-1]}))
    assert getattr(site, attribute) == tuple(hosts[:-1])
    problems = problems_of(make_doc(**{f"spec.{field}": hosts}))
    assert [p.field for p in problems] == [f"spec.{field}"]
    assert f"at most {MAX_DOMAINS}" in problems[0].message


@pytest.mark.parametrize("field", ["aliases", "redirectFrom"])
@pytest.mark.parametrize(
    ("value", "where"),
    [
        (["a.example.com", "bad_host.example.com"], "[1]"),
        (["a.*.example.com"], "[0]"),
        (["a.example.com", ""], "[1]"),
        ([None], "[0]"),
        ([7], "[0]"),
        (["a.example.com."], "[0]"),
        ("a.example.com", ""),
        ({"a.example.com": True}, ""),
    ],
    ids=["bad-host", "inner-wildcard", "empty", "null", "integer", "trailing-dot", "string", "mapping"],
)
def test_invalid_domain_list(field: str, value: Any, where: str) -> None:
    assert fields_of(make_doc(**{f"spec.{field}": value})) == [f"spec.{field}{where}"]


@pytest.mark.parametrize(
    ("changes", "field", "first"),
    [
        ({"spec.aliases": ["Blog.Example.com"]}, "spec.aliases[0]", "spec.domain"),
        ({"spec.aliases": ["a.example.com", "A.EXAMPLE.com"]}, "spec.aliases[1]", "spec.aliases[0]"),
        ({"spec.redirectFrom": ["blog.example.COM"]}, "spec.redirectFrom[0]", "spec.domain"),
        (
            {"spec.aliases": ["a.example.com"], "spec.redirectFrom": ["b.example.com", "A.example.com"]},
            "spec.redirectFrom[1]",
            "spec.aliases[0]",
        ),
        (
            {"spec.redirectFrom": ["b.example.com", "b.example.com"]},
            "spec.redirectFrom[1]",
            "spec.redirectFrom[0]",
        ),
        (
            {"spec.domain": "*.example.com", "spec.aliases": ["*.Example.com"]},
            "spec.aliases[0]",
            "spec.domain",
        ),
    ],
    ids=[
        "alias-is-domain",
        "alias-twice",
        "redirect-is-domain",
        "redirect-is-alias",
        "redirect-twice",
        "wildcard",
    ],
)
def test_a_domain_is_listed_once_in_any_case(changes: dict[str, Any], field: str, first: str) -> None:
    (problem,) = problems_of(make_doc(**changes))
    assert problem.field == field
    assert f"already listed in {first}" in problem.message


def test_no_redirect_to_a_wildcard_domain() -> None:
    doc = make_doc(**{"spec.domain": "*.example.com", "spec.redirectFrom": ["example.com"]})
    (problem,) = problems_of(doc)
    assert problem.field == "spec.redirectFrom"
    assert "wildcard" in problem.message
    # An empty list redirects nothing.
    assert (
        parse_site(make_doc(**{"spec.domain": "*.example.com", "spec.redirectFrom": []})).redirect_from == ()
    )


# -- pathPrefix and rewritePrefix -------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        (_MISSING, "/"),
        ("/", "/"),
        ("/docs", "/docs"),
        ("/docs/", "/docs"),
        ("/a/b/", "/a/b"),
        ("/.well-known", "/.well-known"),
        ("/v1.2/a-b_c~d", "/v1.2/a-b_c~d"),
        ("/a;b=c:@!$&()*+,", "/a;b=c:@!$&()*+,"),
        ("/" + "a" * 255, "/" + "a" * 255),
    ],
    ids=["default", "root", "one", "trailing-slash", "two", "dot-first", "marks", "sub-delims", "256"],
)
def test_path_prefix_is_normalized_without_a_trailing_slash(prefix: Any, expected: str) -> None:
    assert parse_site(make_doc(**{"spec.pathPrefix": prefix})).path_prefix == expected


@pytest.mark.parametrize(
    ("rewrite", "expected"),
    [(_MISSING, None), ("/", "/"), ("/v2", "/v2"), ("/v2/", "/v2")],
    ids=["default", "root", "one", "trailing-slash"],
)
def test_rewrite_prefix_is_normalized(rewrite: Any, expected: str | None) -> None:
    site = parse_site(make_doc(**{"spec.pathPrefix": "/docs", "spec.rewritePrefix": rewrite}))
    assert site.rewrite_prefix == expected


_BAD_PATHS = [
    "",
    "docs",
    "//",
    "/a//b",
    "/.",
    "/..",
    "/a/./b",
    "/a/../b",
    "/a b",
    "/a%20b",
    "/a?b",
    "/a#b",
    "/a'b",
    "/caf\u00e9",
    "/docs\n",
    "/" + "a" * 256,
    5,
    ["/docs"],
]
_BAD_PATH_IDS = [
    "empty",
    "relative",
    "double-slash",
    "empty-segment",
    "dot",
    "dot-dot",
    "inner-dot",
    "inner-dot-dot",
    "space",
    "percent",
    "query",
    "fragment",
    "quote",
    "non-ascii",
    "newline",
    "257",
    "integer",
    "list",
]


@pytest.mark.parametrize("field", ["pathPrefix", "rewritePrefix"])
@pytest.mark.parametrize("value", _BAD_PATHS, ids=_BAD_PATH_IDS)
def test_invalid_path_prefix(field: str, value: Any) -> None:
    assert fields_of(make_doc(**{f"spec.{field}": value})) == [f"spec.{field}"]


# -- tls --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tls", "expected", "https_only"),
    [
        ({"secretName": "blog-tls"}, TlsSpec(secret_name="blog-tls"), True),
        (
            {"secretName": "blog.tls-1", "allowInsecure": True},
            TlsSpec("blog.tls-1", allow_insecure=True),
            False,
        ),
        (
            {"certificateFile": "certs/blog.pem", "keyFile": "/etc/keys/blog.key"},
            TlsSpec(certificate_file="certs/blog.pem", key_file="/etc/keys/blog.key"),
            True,
        ),
        (
            {"certificateFile": "c.pem", "keyFile": "k.pem", "allowInsecure": False},
            TlsSpec(None, "c.pem", "k.pem", False),
            True,
        ),
    ],
    ids=["secret", "secret-insecure", "files", "files-secure"],
)
def test_tls_is_parsed(tls: dict[str, Any], expected: TlsSpec, https_only: bool) -> None:
    site = parse_site(make_doc(**{"spec.tls": tls}))
    assert site.tls == expected
    assert site.https_only is https_only
    assert site.certificate is None  # a source fills it in


def test_no_tls_by_default() -> None:
    site = parse_site(make_doc())
    assert site.tls is None
    assert site.https_only is False


@pytest.mark.parametrize(
    ("tls", "field"),
    [
        ({}, "spec.tls"),
        ({"allowInsecure": True}, "spec.tls"),
        ({"certificateFile": "c.pem"}, "spec.tls"),
        ({"keyFile": "k.pem"}, "spec.tls"),
        ({"secretName": "blog-tls", "certificateFile": "c.pem"}, "spec.tls"),
        ({"secretName": "blog-tls", "certificateFile": "c.pem", "keyFile": "k.pem"}, "spec.tls"),
        ({"secretName": "Blog-TLS"}, "spec.tls.secretName"),
        ({"secretName": ""}, "spec.tls.secretName"),
        ({"secretName": "blog-"}, "spec.tls.secretName"),
        ({"secretName": "a" * 64}, "spec.tls.secretName"),
        ({"secretName": 7}, "spec.tls.secretName"),
        ({"certificateFile": "c.pem\n", "keyFile": "k.pem"}, "spec.tls.certificateFile"),
        ({"certificateFile": "", "keyFile": "k.pem"}, "spec.tls.certificateFile"),
        ({"certificateFile": "c.pem", "keyFile": "k\x00.pem"}, "spec.tls.keyFile"),
        ({"certificateFile": "c.pem", "keyFile": "k" * 1025}, "spec.tls.keyFile"),
        ({"certificateFile": ["c.pem"], "keyFile": "k.pem"}, "spec.tls.certificateFile"),
        ({"secretName": "blog-tls", "allowInsecure": "yes"}, "spec.tls.allowInsecure"),
        ({"secretName": "blog-tls", "secret": "x"}, "spec.tls.secret"),
        ("blog-tls", "spec.tls"),
    ],
    ids=[
        "empty",
        "only-allow-insecure",
        "only-certificate",
        "only-key",
        "secret-and-certificate",
        "secret-and-files",
        "secret-upper-case",
        "secret-empty",
        "secret-trailing-hyphen",
        "secret-label-64",
        "secret-integer",
        "certificate-newline",
        "certificate-empty",
        "key-nul",
        "key-1025",
        "certificate-list",
        "allow-insecure-string",
        "unknown",
        "string",
    ],
)
def test_invalid_tls(tls: Any, field: str) -> None:
    assert fields_of(make_doc(**{"spec.tls": tls})) == [field]


def test_tls_problems_say_what_to_give() -> None:
    (missing,) = problems_of(make_doc(**{"spec.tls": {}}))
    assert "secretName" in missing.message
    assert "certificateFile and keyFile" in missing.message
    (both,) = problems_of(
        make_doc(**{"spec.tls": {"secretName": "s", "certificateFile": "c", "keyFile": "k"}})
    )
    assert "not both" in both.message
    problems = {p.field: p.message for p in problems_of(make_doc(**{"spec.tls": {"secretNam": "s"}}))}
    assert set(problems) == {"spec.tls.secretNam", "spec.tls"}
    assert "did you mean 'secretName'" in problems["spec.tls.secretNam"]


# -- responseHeaders --------------------------------------------------------------------------


def test_response_headers_are_parsed_with_lower_cased_names() -> None:
    doc = make_doc(
        **{
            "spec.responseHeaders": {
                "set": {"Cache-Control": "max-age=3600", "X-Frame-Options": "DENY", "X-Empty": ""},
                "remove": ["Server", "X-Powered-By"],
            }
        }
    )
    site = parse_site(doc)
    assert site.headers_set == (
        ("cache-control", "max-age=3600"),
        ("x-frame-options", "DENY"),
        ("x-empty", ""),
    )
    assert site.headers_remove == ("server", "x-powered-by")


def test_response_headers_default_to_none() -> None:
    site = parse_site(make_doc(**{"spec.responseHeaders": {}}))
    assert site.headers_set == ()
    assert site.headers_remove == ()
    assert parse_site(make_doc(**{"spec.responseHeaders": {"set": {}, "remove": []}})).headers_set == ()


def test_header_values_keep_their_case_and_spaces() -> None:
    site = parse_site(make_doc(**{"spec.responseHeaders": {"set": {"X-A": " Mixed  Case ~ "}}}))
    assert site.headers_set == (("x-a", " Mixed  Case ~ "),)


@pytest.mark.parametrize(
    ("headers", "field"),
    [
        ({"set": {"X-A": "1", "x-a": "2"}}, "spec.responseHeaders.set.x-a"),
        ({"set": {"X-A": "caf\u00e9"}}, "spec.responseHeaders.set.X-A"),
        ({"set": {"X-A": "a\nb"}}, "spec.responseHeaders.set.X-A"),
        ({"set": {"X-A": "\t"}}, "spec.responseHeaders.set.X-A"),
        ({"set": {"X-A": "a" * 4097}}, "spec.responseHeaders.set.X-A"),
        ({"set": {"X-A": 1}}, "spec.responseHeaders.set.X-A"),
        ({"set": {"X-A": None}}, "spec.responseHeaders.set.X-A"),
        ({"set": {"X A": "1"}}, "spec.responseHeaders.set.'X A'"),
        ({"set": {"X:A": "1"}}, "spec.responseHeaders.set.'X:A'"),
        ({"set": {"": "1"}}, "spec.responseHeaders.set.''"),
        ({"set": {"a" * 257: "1"}}, "spec.responseHeaders.set." + field_name("a" * 257)),
        ({"set": {f"X-{i}": "v" for i in range(MAX_HEADERS + 1)}}, "spec.responseHeaders.set"),
        ({"set": ["X-A"]}, "spec.responseHeaders.set"),
        ({"remove": ["Server", "server"]}, "spec.responseHeaders.remove[1]"),
        ({"set": {"Server": "x"}, "remove": ["SERVER"]}, "spec.responseHeaders.remove[0]"),
        ({"remove": ["X-A", "X A"]}, "spec.responseHeaders.remove[1]"),
        ({"remove": [""]}, "spec.responseHeaders.remove[0]"),
        ({"remove": ["caf\u00e9"]}, "spec.responseHeaders.remove[0]"),
        ({"remove": ["a" * 257]}, "spec.responseHeaders.remove[0]"),
        ({"remove": [3]}, "spec.responseHeaders.remove[0]"),
        ({"remove": [f"X-{i}" for i in range(MAX_HEADERS + 1)]}, "spec.responseHeaders.remove"),
        ({"remove": "Server"}, "spec.responseHeaders.remove"),
        ({"add": {"X-A": "1"}}, "spec.responseHeaders.add"),
        (["Server"], "spec.responseHeaders"),
    ],
    ids=[
        "set-twice",
        "value-non-ascii",
        "value-newline",
        "value-tab",
        "value-4097",
        "value-integer",
        "value-null",
        "name-space",
        "name-colon",
        "name-empty",
        "name-257",
        "set-too-many",
        "set-list",
        "removed-twice",
        "set-and-removed",
        "remove-name-space",
        "remove-empty",
        "remove-non-ascii",
        "remove-257",
        "remove-integer",
        "remove-too-many",
        "remove-string",
        "unknown",
        "list",
    ],
)
def test_invalid_response_headers(headers: Any, field: str) -> None:
    assert fields_of(make_doc(**{"spec.responseHeaders": headers})) == [field]
    assert len(field) < 120  # a long header name is shown shortened


def test_a_long_header_name_is_shown_shortened() -> None:
    assert field_name("a" * 257) == "'" + "a" * 37 + "..." + "a" * 38 + "'"


def test_header_conflicts_are_explained() -> None:
    (twice,) = problems_of(make_doc(**{"spec.responseHeaders": {"set": {"X-A": "1", "x-a": "2"}}}))
    assert "set twice" in twice.message
    doc = make_doc(**{"spec.responseHeaders": {"set": {"Server": "x"}, "remove": ["server"]}})
    (both,) = problems_of(doc)
    assert "both set and removed" in both.message


# -- compression, requestTimeout, connectRetries ----------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [(_MISSING, True), (True, True), (False, False)])
def test_compression(value: Any, expected: bool) -> None:
    assert parse_site(make_doc(**{"spec.compression": value})).compression is expected


@pytest.mark.parametrize("value", ["false", 0, 1, "yes"], ids=["string", "zero", "one", "yes"])
def test_invalid_compression(value: Any) -> None:
    assert fields_of(make_doc(**{"spec.compression": value})) == ["spec.compression"]


@pytest.mark.parametrize(
    ("value", "ms"),
    [
        (_MISSING, None),
        ("0s", 0),
        ("0ms", 0),
        ("500ms", 500),
        ("15s", 15_000),
        ("2m", 120_000),
        ("1h", 3_600_000),
        ("999999ms", 999_999),
        ("999999h", 999_999 * 3_600_000),
    ],
)
def test_request_timeout_in_milliseconds(value: Any, ms: int | None) -> None:
    assert parse_site(make_doc(**{"spec.requestTimeout": value})).request_timeout_ms == ms


_BAD_DURATIONS = [
    "1000000s",
    "00s",
    "01s",
    "1.5s",
    "1d",
    "1S",
    "15",
    "s",
    "-1s",
    "1 s",
    "1s\n",
    "",
    "1m30s",
    15,
]


@pytest.mark.parametrize("value", _BAD_DURATIONS)
def test_invalid_request_timeout(value: Any) -> None:
    problems = problems_of(make_doc(**{"spec.requestTimeout": value}))
    assert [p.field for p in problems] == ["spec.requestTimeout"]
    assert "500ms, 15s, 2m or 1h" in problems[0].message


@pytest.mark.parametrize(("value", "expected"), [(_MISSING, 0), (0, 0), (3, 3), (10, 10)])
def test_connect_retries(value: Any, expected: int) -> None:
    assert parse_site(make_doc(**{"spec.connectRetries": value})).connect_retries == expected


@pytest.mark.parametrize(
    "value", [-1, 11, "1", True, 1.0], ids=["negative", "11", "string", "boolean", "float"]
)
def test_invalid_connect_retries(value: Any) -> None:
    assert fields_of(make_doc(**{"spec.connectRetries": value})) == ["spec.connectRetries"]


# -- backend.healthCheck ----------------------------------------------------------------------


def test_health_check_defaults() -> None:
    site = parse_site(make_doc(**{"spec.backend.healthCheck": {"path": "/healthz"}}))
    assert site.backend.health_check == HealthCheck("/healthz", 10_000, 3, 2)
    assert site.backend == Backend("web", "blog", 8080, HealthCheck("/healthz"))


def test_health_check_is_parsed() -> None:
    check = {"path": "/status?full=1", "interval": "500ms", "unhealthyThreshold": 1, "healthyThreshold": 10}
    site = parse_site(make_doc(**{"spec.backend.healthCheck": check}))
    assert site.backend.health_check == HealthCheck("/status?full=1", 500, 1, 10)


def test_no_health_check_by_default() -> None:
    assert parse_site(make_doc()).backend.health_check is None


@pytest.mark.parametrize(
    ("check", "field"),
    [
        ({}, "path"),
        ({"interval": "5s"}, "path"),
        ({"path": "healthz"}, "path"),
        ({"path": ""}, "path"),
        ({"path": "/a b"}, "path"),
        ({"path": "/caf\u00e9"}, "path"),
        ({"path": "/h\n"}, "path"),
        ({"path": "/" + "a" * 256}, "path"),
        ({"path": 7}, "path"),
        ({"path": "/h", "interval": "0s"}, "interval"),
        ({"path": "/h", "interval": "0ms"}, "interval"),
        ({"path": "/h", "interval": "5"}, "interval"),
        ({"path": "/h", "interval": 5}, "interval"),
        ({"path": "/h", "interval": "1000000ms"}, "interval"),
        ({"path": "/h", "unhealthyThreshold": 0}, "unhealthyThreshold"),
        ({"path": "/h", "unhealthyThreshold": 11}, "unhealthyThreshold"),
        ({"path": "/h", "healthyThreshold": 0}, "healthyThreshold"),
        ({"path": "/h", "healthyThreshold": "2"}, "healthyThreshold"),
        ({"path": "/h", "healthyThreshold": True}, "healthyThreshold"),
        ({"path": "/h", "timeout": "1s"}, "timeout"),
    ],
    ids=[
        "empty",
        "no-path",
        "relative-path",
        "empty-path",
        "path-space",
        "path-non-ascii",
        "path-newline",
        "path-257",
        "path-integer",
        "interval-zero",
        "interval-zero-ms",
        "interval-no-unit",
        "interval-integer",
        "interval-seven-digits",
        "unhealthy-zero",
        "unhealthy-11",
        "healthy-zero",
        "healthy-string",
        "healthy-boolean",
        "unknown",
    ],
)
def test_invalid_health_check(check: dict[str, Any], field: str) -> None:
    problems = problems_of(make_doc(**{"spec.backend.healthCheck": check}))
    assert [p.field for p in problems] == [f"spec.backend.healthCheck.{field}"]


def test_zero_interval_is_explained() -> None:
    doc = make_doc(**{"spec.backend.healthCheck": {"path": "/h", "interval": "0s"}})
    (problem,) = problems_of(doc)
    assert "more than 0" in problem.message


def test_health_check_must_be_a_mapping() -> None:
    assert fields_of(make_doc(**{"spec.backend.healthCheck": "/healthz"})) == ["spec.backend.healthCheck"]


# -- everything at once -----------------------------------------------------------------------


def test_every_field_at_once() -> None:
    doc = make_doc(
        **{
            "spec.domain": "*.Blog.example.com",
            "spec.aliases": ["blog.example.org"],
            "spec.pathPrefix": "/guide/",
            "spec.rewritePrefix": "/",
            "spec.tls": {"secretName": "blog-tls", "allowInsecure": True},
            "spec.responseHeaders": {"set": {"Cache-Control": "no-cache"}, "remove": ["Server"]},
            "spec.compression": False,
            "spec.requestTimeout": "30s",
            "spec.connectRetries": 2,
            "spec.backend.healthCheck": {"path": "/healthz", "interval": "5s"},
        }
    )
    assert parse_site(doc, ORIGIN) == StaticSite(
        key=SiteKey("web", "blog"),
        domain="*.blog.example.com",
        backend=Backend("web", "blog", 8080, HealthCheck("/healthz", 5_000)),
        origin=ORIGIN,
        aliases=("blog.example.org",),
        path_prefix="/guide",
        rewrite_prefix="/",
        tls=TlsSpec(secret_name="blog-tls", allow_insecure=True),
        headers_set=(("cache-control", "no-cache"),),
        headers_remove=("server",),
        compression=False,
        request_timeout_ms=30_000,
        connect_retries=2,
    )


def test_every_new_field_reports_its_own_problem() -> None:
    doc = make_doc(
        **{
            "spec.aliases": ["ok.example.com", "bad_alias"],
            "spec.redirectFrom": ["x.*.example.com"],
            "spec.pathPrefix": "docs",
            "spec.rewritePrefix": "//",
            "spec.tls": {},
            "spec.responseHeaders": {"set": {"X-A": "\n"}},
            "spec.compression": "no",
            "spec.requestTimeout": "soon",
            "spec.connectRetries": 99,
            "spec.backend.healthCheck": {"path": "/h", "interval": "0s"},
        }
    )
    assert sorted(fields_of(doc)) == sorted(
        [
            "spec.aliases[1]",
            "spec.redirectFrom[0]",
            "spec.pathPrefix",
            "spec.rewritePrefix",
            "spec.tls",
            "spec.responseHeaders.set.X-A",
            "spec.compression",
            "spec.requestTimeout",
            "spec.connectRetries",
            "spec.backend.healthCheck.interval",
        ]
    )


def test_a_null_tls_field_is_absent_as_in_the_api() -> None:
    spec = make_doc()["spec"]
    for tls in ({"secretName": None}, {"certificateFile": None, "keyFile": None}):
        assert "spec.tls" in fields_of(make_doc(spec={**spec, "tls": tls}))
    site = parse_site(
        make_doc(spec={**spec, "tls": {"secretName": None, "certificateFile": "a", "keyFile": "b"}})
    )
    assert site.tls is not None
    assert site.tls.certificate_file == "a"


def test_duplicate_domains_are_named_at_their_positions_after_a_bad_entry() -> None:
    spec = {**make_doc()["spec"], "aliases": ["bad_host", "b.example.com", "b.example.com"]}
    found = {p.field: p.message for p in problems_of(make_doc(spec=spec))}
    assert "spec.aliases[0]" in found
    assert "already listed in spec.aliases[1]" in found["spec.aliases[2]"]


@pytest.mark.parametrize("where", ["set", "remove"])
def test_the_host_header_cannot_be_changed(where: str) -> None:
    headers: dict[str, Any] = {"set": {"HOST": "x"}} if where == "set" else {"remove": ["Host"]}
    spec = {**make_doc()["spec"], "responseHeaders": headers}
    assert any(f.startswith(f"spec.responseHeaders.{where}") for f in fields_of(make_doc(spec=spec)))


def test_an_out_of_range_number_is_shown_bounded() -> None:
    spec = {**make_doc()["spec"], "connectRetries": 10**4000}
    (problem,) = problems_of(make_doc(spec=spec))
    assert problem.field == "spec.connectRetries"
    assert len(problem.message) < 300
