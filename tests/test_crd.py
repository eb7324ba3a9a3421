"""The StaticSite CRD: a valid CustomResourceDefinition whose schema rejects what the model rejects.

The API server checks a custom resource against the CRD's OpenAPI schema with Go's regular
expressions (RE2: `$` is the end of the text) and refuses unknown fields (kubectl's strict
field validation). This test judges the same way: the schema's patterns get `\\Z` for `$`,
every object with `properties` gets `additionalProperties: false`, and a list of
`x-kubernetes-list-type: set` gets `uniqueItems: true` (the API server refuses a duplicate).

What the OpenAPI schema cannot state (a domain listed twice in any case, a header both set and
removed, a redirect to a wildcard domain, the names of the headers set) the CRD states as CEL
rules (`x-kubernetes-validations`). The tests run them as the API server does: a CEL
interpreter (cel-python, whose `matches()` is RE2) with Kubernetes' `lowerAscii()`, each rule
on the field it is set on, when that field is present.
"""

from __future__ import annotations

import copy
import functools
import re
import string
from collections.abc import Iterator
from typing import Any

import celpy
import pytest
from celpy import celtypes
from hypothesis import given, settings
from hypothesis import strategies as st
from support.crd_schema import (
    crd_accepts,
    load_crd,
    model_accepts,
    re2_anchors,
    root_schema,
    site_doc,
)

from snapshot.model import (
    _FILE_PATTERN,
    DNS1123_LABEL_PATTERN,
    DURATION_PATTERN,
    GROUP,
    HEADER_NAME_PATTERN,
    HEADER_VALUE_PATTERN,
    HEALTH_PATH_PATTERN,
    HOST_PATTERN,
    KIND,
    MAX_CONNECT_RETRIES,
    MAX_DOMAINS,
    MAX_FILE_PATH,
    MAX_HEADER_NAME,
    MAX_HEADER_VALUE,
    MAX_HEADERS,
    MAX_PATH_PREFIX,
    MAX_THRESHOLD,
    PATH_PREFIX_PATTERN,
    PLURAL,
    VERSION,
    InvalidSite,
    parse_site,
)

pytestmark = pytest.mark.unit

_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def _lower_ascii(text: celtypes.StringType) -> celtypes.StringType:
    """Kubernetes' CEL string extension `lowerAscii()`: ASCII letters lower-cased, no others."""
    return celtypes.StringType(str(text).translate(_ASCII_LOWER))


@functools.cache
def _cel_programs() -> list[tuple[str, dict[str, str], Any]]:
    """Every CEL rule of the CRD, compiled: (the path of its field, the rule, the program)."""
    env = celpy.Environment()
    return [
        (path, rule, env.program(env.compile(rule["rule"]), functions={"lowerAscii": _lower_ascii}))
        for path, rule in _cel_rules(root_schema())
    ]


def _values_at(value: Any, path: str) -> Iterator[Any]:
    """The values of an object at a rule's path ("spec.aliases.[]": each alias); none if absent."""
    if not path:
        yield value
        return
    name, _, rest = path.partition(".")
    if name == "[]" and isinstance(value, list):
        children = list(value)
    elif name == "{}" and isinstance(value, dict):
        children = list(value.values())
    elif isinstance(value, dict) and name in value:
        children = [value[name]]
    else:
        children = []
    for child in children:
        yield from _values_at(child, rest)


def _broken_cel_rules(spec: dict[str, Any]) -> list[dict[str, str]]:
    """The CRD's CEL rules a spec breaks, run as the API server runs them (an evaluation error
    breaks the rule too); only for a spec the OpenAPI schema accepts."""
    doc = {"spec": spec}
    broken = []
    for path, rule, program in _cel_programs():
        for value in _values_at(doc, path):
            result = program.evaluate({"self": celpy.json_to_cel(value)})
            if not (isinstance(result, celtypes.BoolType) and bool(result)):
                broken.append(rule)
    return broken


def _breaks_a_cel_rule(spec: dict[str, Any]) -> bool:
    return bool(_broken_cel_rules(spec))


def _api_server_accepts(spec: Any) -> bool:
    return crd_accepts(spec) and not _breaks_a_cel_rule(spec)


def _schema_at(path: str) -> dict[str, Any]:
    """The schema of a field, by its dotted path from the root ("spec.backend.healthCheck")."""
    node = root_schema()
    for name in path.split("."):
        node = node["items"] if name == "[]" else node["properties"][name]
    return node


def _cel_rules(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, str]]]:
    """Every CEL rule of the schema, with the dotted path of the field it is set on."""
    for rule in schema.get("x-kubernetes-validations", []):
        yield path, rule
    for name, child in schema.get("properties", {}).items():
        yield from _cel_rules(child, f"{path}.{name}" if path else name)
    for key, step in (("items", "[]"), ("additionalProperties", "{}")):
        if isinstance(schema.get(key), dict):
            yield from _cel_rules(schema[key], f"{path}.{step}")


def test_crd_names_match_the_model() -> None:
    crd = load_crd()
    assert crd["metadata"]["name"] == f"{PLURAL}.{GROUP}"
    assert crd["spec"]["group"] == GROUP
    assert crd["spec"]["names"]["kind"] == KIND
    assert crd["spec"]["names"]["plural"] == PLURAL
    (version,) = crd["spec"]["versions"]
    assert version["name"] == VERSION
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns == ["Domain", "Prefix", "Aliases", "Service", "Port", "Group", "Ready", "Reason", "Age"]


def test_crd_is_a_valid_custom_resource_definition() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    kubernetes_validate.validate(load_crd(), "1.30", strict=True)


def test_every_spec_field_is_described() -> None:
    def walk(schema: dict[str, Any], path: str) -> Iterator[str]:
        if "description" not in schema:
            yield path
        for name, child in schema.get("properties", {}).items():
            yield from walk(child, f"{path}.{name}")
        for key in ("items", "additionalProperties"):
            if isinstance(schema.get(key), dict):
                yield from walk(schema[key], f"{path}.{key}")

    assert list(walk(_schema_at("spec"), "spec")) == []


# The model's patterns, and the CRD field(s) that must carry each, anchored.
_NONZERO_DURATION = DURATION_PATTERN.replace("(0|[1-9][0-9]{0,5})", "[1-9][0-9]{0,5}")
_PATTERNS = [
    (HOST_PATTERN, ["spec.domain", "spec.aliases.[]", "spec.redirectFrom.[]"]),
    (PATH_PREFIX_PATTERN, ["spec.pathPrefix", "spec.rewritePrefix"]),
    (DURATION_PATTERN, ["spec.requestTimeout"]),
    (_NONZERO_DURATION, ["spec.backend.healthCheck.interval"]),
    (HEALTH_PATH_PATTERN, ["spec.backend.healthCheck.path"]),
    (HEADER_NAME_PATTERN, ["spec.responseHeaders.remove.[]"]),
    (_FILE_PATTERN, ["spec.tls.certificateFile", "spec.tls.keyFile"]),
    (DNS1123_LABEL_PATTERN, ["spec.gatewayGroup"]),
]


@pytest.mark.parametrize(("pattern", "fields"), _PATTERNS, ids=[f[0] for _, f in _PATTERNS])
def test_crd_patterns_are_the_models(pattern: str, fields: list[str]) -> None:
    assert _NONZERO_DURATION != DURATION_PATTERN
    for field in fields:
        assert _schema_at(field)["pattern"] == f"^{pattern}$", field


def test_crd_limits_are_the_models() -> None:
    assert _schema_at("spec.responseHeaders.set")["additionalProperties"]["pattern"] == (
        f"^{HEADER_VALUE_PATTERN}$"
    )
    # Header names as keys of `set` are checked by a CEL rule (OpenAPI cannot check keys).
    key_rules = [r["rule"] for p, r in _cel_rules(root_schema()) if p == "spec.responseHeaders.set"]
    assert any(f'"^{HEADER_NAME_PATTERN}$"' in r and f"<= {MAX_HEADER_NAME}" in r for r in key_rules)
    assert _schema_at("spec.aliases")["maxItems"] == MAX_DOMAINS
    assert _schema_at("spec.redirectFrom")["maxItems"] == MAX_DOMAINS
    assert _schema_at("spec.pathPrefix")["maxLength"] == MAX_PATH_PREFIX
    assert _schema_at("spec.rewritePrefix")["maxLength"] == MAX_PATH_PREFIX
    assert _schema_at("spec.backend.healthCheck.path")["maxLength"] == MAX_PATH_PREFIX
    assert _schema_at("spec.responseHeaders.set")["maxProperties"] == MAX_HEADERS
    assert _schema_at("spec.responseHeaders.set")["additionalProperties"]["maxLength"] == MAX_HEADER_VALUE
    assert _schema_at("spec.responseHeaders.remove")["maxItems"] == MAX_HEADERS
    assert _schema_at("spec.responseHeaders.remove.[]")["maxLength"] == MAX_HEADER_NAME
    assert _schema_at("spec.tls.certificateFile")["maxLength"] == MAX_FILE_PATH
    assert _schema_at("spec.tls.keyFile")["maxLength"] == MAX_FILE_PATH
    assert _schema_at("spec.connectRetries")["maximum"] == MAX_CONNECT_RETRIES
    for name in ("unhealthyThreshold", "healthyThreshold"):
        assert _schema_at(f"spec.backend.healthCheck.{name}")["maximum"] == MAX_THRESHOLD


def test_re2_anchors_leave_character_classes_alone() -> None:
    assert re2_anchors("^[a$]+$") == r"^[a$]+\Z"
    assert re2_anchors(r"^a\$$") == r"^a\$\Z"
    assert re2_anchors("^[]$]$") == r"^[]$]\Z"
    assert re2_anchors("^[^]$]$") == r"^[^]$]\Z"
    assert re2_anchors(r"^[\]$]$") == r"^[\]$]\Z"
    assert re2_anchors("^(a$|b)$") == r"^(a\Z|b)\Z"


BACKEND: dict[str, Any] = {"serviceName": "web", "servicePort": 80}
GOOD: dict[str, Any] = {"domain": "docs.example.com", "backend": BACKEND}
FULL: dict[str, Any] = {
    **GOOD,
    "domain": "*.docs.example.com",
    "aliases": ["docs.example.org", "*.docs.example.net"],
    "pathPrefix": "/guide/",
    "rewritePrefix": "/",
    "tls": {"secretName": "docs-tls", "allowInsecure": False},
    "responseHeaders": {"set": {"Cache-Control": "max-age=60"}, "remove": ["Server"]},
    "compression": False,
    "requestTimeout": "30s",
    "connectRetries": 2,
    "backend": {
        **BACKEND,
        "healthCheck": {"path": "/healthz", "interval": "5s", "unhealthyThreshold": 2, "healthyThreshold": 1},
    },
}


def _hosts(count: int) -> list[str]:
    return [f"h{i}.example.com" for i in range(count)]


def _header_map(count: int) -> dict[str, str]:
    return {f"X-H{i}": "v" for i in range(count)}


def _check(**fields: Any) -> dict[str, Any]:
    return {**GOOD, "backend": {**BACKEND, "healthCheck": fields}}


_CERT = {"certificateFile": "certs/docs.pem", "keyFile": "/etc/keys/docs.key"}

EXAMPLES: list[tuple[dict[str, Any], bool]] = [
    (GOOD, True),
    (FULL, True),
    # domain
    ({**GOOD, "domain": "Docs.Example.COM"}, True),
    ({**GOOD, "domain": "a" * 63 + ".com"}, True),
    ({**GOOD, "domain": "a" * 64 + ".com"}, False),
    ({**GOOD, "domain": ".".join(["a" * 63] * 4)[:253]}, True),
    ({**GOOD, "domain": ".".join(["a" * 63] * 4)}, False),
    ({**GOOD, "domain": "example.com."}, False),
    ({**GOOD, "domain": "example.com\n"}, False),
    ({**GOOD, "domain": "-a.com"}, False),
    ({**GOOD, "domain": "a_b.com"}, False),
    ({**GOOD, "domain": ""}, False),
    ({"backend": GOOD["backend"]}, False),
    ({"domain": "a.com"}, False),
    # wildcard domains
    ({**GOOD, "domain": "*.example.com"}, True),
    ({**GOOD, "domain": "*.Example.COM"}, True),
    ({**GOOD, "domain": "*.com"}, True),
    ({**GOOD, "domain": "*." + ".".join(["a" * 63] * 3 + ["a" * 59])}, True),  # 253 characters
    ({**GOOD, "domain": "*." + ".".join(["a" * 63] * 3 + ["a" * 60])}, False),  # 254
    ({**GOOD, "domain": "*"}, False),
    ({**GOOD, "domain": "*."}, False),
    ({**GOOD, "domain": "**.example.com"}, False),
    ({**GOOD, "domain": "*a.example.com"}, False),
    ({**GOOD, "domain": "a.*.example.com"}, False),
    ({**GOOD, "domain": "*.*.example.com"}, False),
    ({**GOOD, "domain": "example.*"}, False),
    # backend
    ({**GOOD, "backend": {"serviceName": "Web", "servicePort": 80}}, False),
    ({**GOOD, "backend": {"serviceName": "9web", "servicePort": 80}}, False),
    ({**GOOD, "backend": {"serviceName": "w" * 64, "servicePort": 80}}, False),
    ({**GOOD, "backend": {"serviceName": "web", "servicePort": 0}}, False),
    ({**GOOD, "backend": {"serviceName": "web", "servicePort": 65536}}, False),
    ({**GOOD, "backend": {"serviceName": "web", "servicePort": "80"}}, False),
    ({**GOOD, "backend": {"serviceName": "web", "servicePrt": 80}}, False),
    ({**GOOD, "domian": "a.com"}, False),
    # aliases
    ({**GOOD, "aliases": []}, True),
    ({**GOOD, "aliases": ["docs.example.org", "*.docs.example.org", "DOCS.example.net"]}, True),
    ({**GOOD, "aliases": _hosts(MAX_DOMAINS)}, True),
    ({**GOOD, "aliases": _hosts(MAX_DOMAINS + 1)}, False),
    ({**GOOD, "aliases": ["a.example.com", "a.example.com"]}, False),
    ({**GOOD, "aliases": ["a.example.com", "a_b.example.com"]}, False),
    ({**GOOD, "aliases": ["a.*.example.com"]}, False),
    ({**GOOD, "aliases": [""]}, False),
    ({**GOOD, "aliases": ["a.example.com."]}, False),
    ({**GOOD, "aliases": [7]}, False),
    ({**GOOD, "aliases": "a.example.com"}, False),
    ({**GOOD, "aliases": {"a.example.com": True}}, False),
    # redirectFrom
    ({**GOOD, "redirectFrom": ["www.docs.example.com", "*.old.example.com"]}, True),
    ({**GOOD, "redirectFrom": []}, True),
    ({**GOOD, "domain": "*.example.com", "redirectFrom": []}, True),
    ({**GOOD, "redirectFrom": _hosts(MAX_DOMAINS)}, True),
    ({**GOOD, "redirectFrom": _hosts(MAX_DOMAINS + 1)}, False),
    ({**GOOD, "redirectFrom": ["old.example.com", "old.example.com"]}, False),
    ({**GOOD, "redirectFrom": ["old example.com"]}, False),
    ({**GOOD, "redirectFrom": ["*"]}, False),
    ({**GOOD, "redirectFrom": "old.example.com"}, False),
    # pathPrefix
    ({**GOOD, "pathPrefix": "/"}, True),
    ({**GOOD, "pathPrefix": "/docs"}, True),
    ({**GOOD, "pathPrefix": "/docs/"}, True),
    ({**GOOD, "pathPrefix": "/a/b-c_d~e/F.9"}, True),
    ({**GOOD, "pathPrefix": "/.well-known"}, True),
    ({**GOOD, "pathPrefix": "/a;b=c:@!$&()*+,"}, True),
    ({**GOOD, "pathPrefix": "/" + "a" * (MAX_PATH_PREFIX - 1)}, True),
    ({**GOOD, "pathPrefix": "/" + "a" * MAX_PATH_PREFIX}, False),
    ({**GOOD, "pathPrefix": ""}, False),
    ({**GOOD, "pathPrefix": "docs"}, False),
    ({**GOOD, "pathPrefix": "//"}, False),
    ({**GOOD, "pathPrefix": "/a//b"}, False),
    ({**GOOD, "pathPrefix": "/."}, False),
    ({**GOOD, "pathPrefix": "/.."}, False),
    ({**GOOD, "pathPrefix": "/a/../b"}, False),
    ({**GOOD, "pathPrefix": "/a b"}, False),
    ({**GOOD, "pathPrefix": "/a%20b"}, False),
    ({**GOOD, "pathPrefix": "/a?b"}, False),
    ({**GOOD, "pathPrefix": "/a#b"}, False),
    ({**GOOD, "pathPrefix": "/a'b"}, False),
    ({**GOOD, "pathPrefix": "/caf\u00e9"}, False),
    ({**GOOD, "pathPrefix": "/docs\n"}, False),
    ({**GOOD, "pathPrefix": 5}, False),
    # rewritePrefix
    ({**GOOD, "pathPrefix": "/docs", "rewritePrefix": "/"}, True),
    ({**GOOD, "rewritePrefix": "/v2/"}, True),
    ({**GOOD, "rewritePrefix": ""}, False),
    ({**GOOD, "rewritePrefix": "v2"}, False),
    ({**GOOD, "rewritePrefix": "/v2//"}, False),
    ({**GOOD, "rewritePrefix": "/" + "a" * MAX_PATH_PREFIX}, False),
    # tls
    ({**GOOD, "tls": {"secretName": "docs-tls"}}, True),
    ({**GOOD, "tls": {"secretName": "docs.tls-1", "allowInsecure": True}}, True),
    ({**GOOD, "tls": {"secretName": ".".join(["a" * 63] * 3 + ["a" * 61])}}, True),  # 253
    ({**GOOD, "tls": _CERT}, True),
    ({**GOOD, "tls": {**_CERT, "allowInsecure": False}}, True),
    ({**GOOD, "tls": {"certificateFile": "caf\u00e9/c rt.pem", "keyFile": "k" * MAX_FILE_PATH}}, True),
    ({**GOOD, "tls": {}}, False),
    ({**GOOD, "tls": {"allowInsecure": True}}, False),
    ({**GOOD, "tls": {"secretName": "docs-tls", **_CERT}}, False),
    ({**GOOD, "tls": {"secretName": "docs-tls", "certificateFile": "c.pem"}}, False),
    ({**GOOD, "tls": {"secretName": "docs-tls", "keyFile": "k.pem"}}, False),
    ({**GOOD, "tls": {"certificateFile": "c.pem"}}, False),
    ({**GOOD, "tls": {"keyFile": "k.pem"}}, False),
    ({**GOOD, "tls": {"secretName": "Docs-TLS"}}, False),
    ({**GOOD, "tls": {"secretName": ""}}, False),
    ({**GOOD, "tls": {"secretName": "docs-"}}, False),
    ({**GOOD, "tls": {"secretName": "docs_tls"}}, False),
    ({**GOOD, "tls": {"secretName": "a" * 64}}, False),
    ({**GOOD, "tls": {"secretName": ".".join(["a" * 63] * 3 + ["a" * 62])}}, False),  # 254
    ({**GOOD, "tls": {"secretName": 7}}, False),
    ({**GOOD, "tls": {"certificateFile": "c.pem\n", "keyFile": "k.pem"}}, False),
    ({**GOOD, "tls": {"certificateFile": "c.pem", "keyFile": "k\rey.pem"}}, False),
    ({**GOOD, "tls": {"certificateFile": "c\x00.pem", "keyFile": "k.pem"}}, False),
    ({**GOOD, "tls": {"certificateFile": "", "keyFile": "k.pem"}}, False),
    ({**GOOD, "tls": {"certificateFile": "c.pem", "keyFile": "k" * (MAX_FILE_PATH + 1)}}, False),
    ({**GOOD, "tls": {"secretName": "docs-tls", "allowInsecure": "yes"}}, False),
    ({**GOOD, "tls": {"secretName": "docs-tls", "secret": "x"}}, False),
    ({**GOOD, "tls": "docs-tls"}, False),
    # responseHeaders
    ({**GOOD, "responseHeaders": {}}, True),
    ({**GOOD, "responseHeaders": {"set": {}, "remove": []}}, True),
    (
        {**GOOD, "responseHeaders": {"set": {"Cache-Control": "max-age=3600", "X-Frame-Options": "DENY"}}},
        True,
    ),
    ({**GOOD, "responseHeaders": {"set": {"X-Empty": "", "X-Spaced": " a  b ~"}}}, True),
    ({**GOOD, "responseHeaders": {"set": {"!#$%&'*+.^_`|~-": "v"}}}, True),
    ({**GOOD, "responseHeaders": {"set": {"X-A": "a" * MAX_HEADER_VALUE}}}, True),
    ({**GOOD, "responseHeaders": {"set": {"X-A": "a" * (MAX_HEADER_VALUE + 1)}}}, False),
    ({**GOOD, "responseHeaders": {"set": _header_map(MAX_HEADERS)}}, True),
    ({**GOOD, "responseHeaders": {"set": _header_map(MAX_HEADERS + 1)}}, False),
    ({**GOOD, "responseHeaders": {"set": {"X-A": "caf\u00e9"}}}, False),
    ({**GOOD, "responseHeaders": {"set": {"X-A": "a\nb"}}}, False),
    ({**GOOD, "responseHeaders": {"set": {"X-A": "a\tb"}}}, False),
    ({**GOOD, "responseHeaders": {"set": {"X-A": "\x7f"}}}, False),
    ({**GOOD, "responseHeaders": {"set": {"X-A": 1}}}, False),
    ({**GOOD, "responseHeaders": {"set": {"X-A": True}}}, False),
    ({**GOOD, "responseHeaders": {"set": ["X-A"]}}, False),
    ({**GOOD, "responseHeaders": {"remove": ["Server", "X-Powered-By", "!#$%&'*+.^_`|~-"]}}, True),
    ({**GOOD, "responseHeaders": {"remove": ["a" * MAX_HEADER_NAME]}}, True),
    ({**GOOD, "responseHeaders": {"remove": list(_header_map(MAX_HEADERS))}}, True),
    ({**GOOD, "responseHeaders": {"remove": list(_header_map(MAX_HEADERS + 1))}}, False),
    ({**GOOD, "responseHeaders": {"remove": ["a" * (MAX_HEADER_NAME + 1)]}}, False),
    ({**GOOD, "responseHeaders": {"remove": ["Server", "Server"]}}, False),
    ({**GOOD, "responseHeaders": {"remove": ["X A"]}}, False),
    ({**GOOD, "responseHeaders": {"remove": ["X:A"]}}, False),
    ({**GOOD, "responseHeaders": {"remove": [""]}}, False),
    ({**GOOD, "responseHeaders": {"remove": ["caf\u00e9"]}}, False),
    ({**GOOD, "responseHeaders": {"remove": ["Server\n"]}}, False),
    ({**GOOD, "responseHeaders": {"remove": [3]}}, False),
    ({**GOOD, "responseHeaders": {"remove": "Server"}}, False),
    ({**GOOD, "responseHeaders": {"add": {"X-A": "1"}}}, False),
    ({**GOOD, "responseHeaders": ["Server"]}, False),
    # compression
    ({**GOOD, "compression": True}, True),
    ({**GOOD, "compression": False}, True),
    ({**GOOD, "compression": "false"}, False),
    ({**GOOD, "compression": 0}, False),
    # requestTimeout
    *[({**GOOD, "requestTimeout": t}, True) for t in ["0s", "0ms", "500ms", "15s", "2m", "1h", "999999h"]],
    *[
        ({**GOOD, "requestTimeout": t}, False)
        for t in ["1000000s", "00s", "01s", "1.5s", "1d", "1S", "15", "s", "-1s", "1 s", "1s\n", "", "1m30s"]
    ],
    ({**GOOD, "requestTimeout": 15}, False),
    # connectRetries
    ({**GOOD, "connectRetries": 0}, True),
    ({**GOOD, "connectRetries": MAX_CONNECT_RETRIES}, True),
    ({**GOOD, "connectRetries": MAX_CONNECT_RETRIES + 1}, False),
    ({**GOOD, "connectRetries": -1}, False),
    ({**GOOD, "connectRetries": "1"}, False),
    ({**GOOD, "connectRetries": True}, False),
    # gatewayGroup
    ({**GOOD, "gatewayGroup": "edge-1"}, True),
    ({**GOOD, "gatewayGroup": "a" * 63}, True),
    ({**GOOD, "gatewayGroup": "a" * 64}, False),
    ({**GOOD, "gatewayGroup": "Edge"}, False),
    ({**GOOD, "gatewayGroup": "edge.one"}, False),
    ({**GOOD, "gatewayGroup": "-edge"}, False),
    ({**GOOD, "gatewayGroup": ""}, False),
    ({**GOOD, "gatewayGroup": 1}, False),
    # backend.healthCheck
    (_check(path="/healthz"), True),
    (_check(path="/", interval="1ms", unhealthyThreshold=1, healthyThreshold=MAX_THRESHOLD), True),
    (_check(path="/h?x=1&y=%20#top", interval="999999h"), True),
    (_check(path="/" + "a" * (MAX_PATH_PREFIX - 1)), True),
    (_check(path="/" + "a" * MAX_PATH_PREFIX), False),
    (_check(), False),
    (_check(interval="5s"), False),
    (_check(path="healthz"), False),
    (_check(path=""), False),
    (_check(path="/a b"), False),
    (_check(path="/caf\u00e9"), False),
    (_check(path="/h\n"), False),
    (_check(path=7), False),
    (_check(path="/h", interval="0s"), False),
    (_check(path="/h", interval="0ms"), False),
    (_check(path="/h", interval="5"), False),
    (_check(path="/h", interval="05s"), False),
    (_check(path="/h", interval="1000000ms"), False),
    (_check(path="/h", unhealthyThreshold=0), False),
    (_check(path="/h", unhealthyThreshold=MAX_THRESHOLD + 1), False),
    (_check(path="/h", healthyThreshold=0), False),
    (_check(path="/h", healthyThreshold="2"), False),
    (_check(path="/h", healthyThreshold=True), False),
    (_check(path="/h", timeout="1s"), False),
    ({**GOOD, "backend": {**BACKEND, "healthCheck": "/healthz"}}, False),
]


@pytest.mark.parametrize(("spec", "accepted"), EXAMPLES)
def test_crd_and_model_agree_on_examples(spec: dict[str, Any], accepted: bool) -> None:
    assert model_accepts(copy.deepcopy(spec)) is accepted
    assert crd_accepts(copy.deepcopy(spec)) is accepted


# Specs the OpenAPI schema accepts and a CEL rule rejects, with the field the rule names.
CEL_ONLY: list[tuple[dict[str, Any], str]] = [
    ({**GOOD, "aliases": ["docs.example.com"]}, "spec.aliases"),
    ({**GOOD, "aliases": ["Docs.Example.com"]}, "spec.aliases"),
    ({**GOOD, "aliases": ["a.example.com", "A.example.com"]}, "spec.aliases"),
    ({**GOOD, "domain": "*.example.com", "aliases": ["*.EXAMPLE.com"]}, "spec.aliases"),
    ({**GOOD, "redirectFrom": ["DOCS.example.com"]}, "spec.redirectFrom"),
    ({**GOOD, "aliases": ["a.example.com"], "redirectFrom": ["A.example.com"]}, "spec.redirectFrom"),
    ({**GOOD, "redirectFrom": ["a.example.com", "a.Example.com"]}, "spec.redirectFrom"),
    ({**GOOD, "domain": "*.example.com", "redirectFrom": ["example.com"]}, "spec.redirectFrom"),
    ({**GOOD, "responseHeaders": {"set": {"X-A": "1", "x-a": "2"}}}, "spec.responseHeaders.set"),
    ({**GOOD, "responseHeaders": {"set": {"X A": "1"}}}, "spec.responseHeaders.set"),
    ({**GOOD, "responseHeaders": {"set": {"": "1"}}}, "spec.responseHeaders.set"),
    ({**GOOD, "responseHeaders": {"set": {"X:A": "1"}}}, "spec.responseHeaders.set"),
    ({**GOOD, "responseHeaders": {"set": {"caf\u00e9": "1"}}}, "spec.responseHeaders.set"),
    ({**GOOD, "responseHeaders": {"set": {"a" * (MAX_HEADER_NAME + 1): "1"}}}, "spec.responseHeaders.set"),
    ({**GOOD, "responseHeaders": {"remove": ["X-A", "x-a"]}}, "spec.responseHeaders.remove"),
    ({**GOOD, "responseHeaders": {"set": {"Host": "a"}}}, "spec.responseHeaders.set"),
    ({**GOOD, "responseHeaders": {"remove": ["HOST"]}}, "spec.responseHeaders.remove"),
    ({**GOOD, "responseHeaders": {"set": {"X-A": "1"}, "remove": ["x-A"]}}, "spec.responseHeaders"),
]


@pytest.mark.parametrize(("spec", "field"), CEL_ONLY)
def test_what_only_a_cel_rule_rejects(spec: dict[str, Any], field: str) -> None:
    assert crd_accepts(copy.deepcopy(spec)), "the OpenAPI schema rejects it: it belongs in EXAMPLES"
    broken = _broken_cel_rules(spec)
    assert broken, "no CEL rule rejects it"
    with pytest.raises(InvalidSite) as info:
        parse_site(site_doc(copy.deepcopy(spec)))
    assert [p.field for p in info.value.problems if p.field.startswith(field)], info.value.problems
    # What the API server answers names the field: the message of a rule the spec breaks.
    naming = [rule for rule in broken if re.search(rf"{re.escape(field)}(?![.\w])", rule["message"])]
    assert naming, f"no broken CEL rule names {field}: {broken}"


def test_cel_rules_see_the_fields_they_are_set_on() -> None:
    assert _broken_cel_rules(copy.deepcopy(GOOD)) == []
    programs = _cel_programs()
    assert len(programs) == sum(1 for _ in _cel_rules(root_schema())) >= 10
    for path, _, _ in programs:  # a rule on a field the schema does not have is never run
        _schema_at(path)
    assert _lower_ascii(celtypes.StringType("ÉCOLE.Example")) == "École.example"


# -- property tests: generated values of every field, judged by both ---------------------------

_label = st.text(alphabet="aZ09-_", min_size=0, max_size=66)
_domain = st.one_of(
    st.lists(_label, min_size=1, max_size=6).map(".".join),
    st.lists(st.text(alphabet="abc", min_size=1, max_size=63), min_size=3, max_size=6).map(".".join),
    st.text(alphabet="ab.-*\n é", max_size=20),
)
_host = st.one_of(
    _domain,
    st.tuples(st.sampled_from(["*.", "*", "**.", "a*.", "*.*.", "*-a."]), _domain).map("".join),
    st.sampled_from(["docs.example.com", "DOCS.example.com", "*.example.com", "a.com", "A.com"]),
)
_hosts_list = st.one_of(st.lists(_host, max_size=4), st.just("a.com"))
_service = st.one_of(st.text(alphabet="aZ9-", min_size=0, max_size=66), st.just("web"))
_port = st.one_of(st.integers(min_value=-2, max_value=70000), st.just("80"), st.booleans())

_segment = st.text(alphabet="aZ9-_~.!$&()*+,;=:@", min_size=1, max_size=4)
_path = st.one_of(
    st.lists(_segment, min_size=0, max_size=4).map(lambda parts: "/" + "/".join(parts)),
    st.lists(
        st.sampled_from(
            ["/", "/", "a", "Z9", ".", "..", "-_~", "!$&()*+,;=:@", "'", "%", " ", "?", "\u00e9"]
        ),
        max_size=8,
    ).map("".join),
    st.integers(MAX_PATH_PREFIX - 3, MAX_PATH_PREFIX + 2).map(lambda n: "/" + "a" * (n - 1)),
    st.integers(),
)
_duration = st.one_of(
    st.from_regex(r"(0|00|0?[1-9][0-9]{0,7})(ms|s|m|h|d|us|S|)", fullmatch=True),
    st.text(alphabet="01sm \n.", max_size=5),
    st.integers(-1, 10),
)
_header_name = st.one_of(
    st.text(alphabet="aZ0-_!#$%&'*+.^`|~", min_size=1, max_size=5),
    st.text(alphabet='aZ0-:"( \n\u00e9', max_size=4),
    st.integers(MAX_HEADER_NAME - 1, MAX_HEADER_NAME + 1).map(lambda n: "x" * n),
)
_header_value = st.one_of(
    st.text(alphabet='aZ ~%"', max_size=6),
    st.text(alphabet="a \t\x7f\n\u00e9", max_size=4),
    st.integers(MAX_HEADER_VALUE - 1, MAX_HEADER_VALUE + 1).map(lambda n: "v" * n),
    st.integers(0, 1),
)
_response_headers = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "set": st.dictionaries(_header_name, _header_value, max_size=3),
            "remove": st.lists(_header_name, max_size=3),
        },
    ),
    st.sampled_from([{"set": ["X-A"]}, {"remove": "Server"}, {"add": {"X-A": "1"}}, "Server"]),
)
_file = st.one_of(
    st.text(alphabet="ab/. \u00e9", min_size=1, max_size=5),
    st.text(alphabet="a\n\r\x00", max_size=3),
    st.integers(MAX_FILE_PATH, MAX_FILE_PATH + 1).map(lambda n: "k" * n),
)
_secret_name = st.one_of(
    st.lists(st.text(alphabet="a9-", min_size=1, max_size=4), min_size=1, max_size=3).map(".".join),
    st.text(alphabet="a.-Z_", max_size=5),
    st.integers(63, 64).map(lambda n: "a" * n),
)
_tls = st.one_of(
    st.fixed_dictionaries({"secretName": _secret_name}, optional={"allowInsecure": st.booleans()}),
    st.fixed_dictionaries(
        {"certificateFile": _file, "keyFile": _file}, optional={"allowInsecure": st.booleans()}
    ),
    st.fixed_dictionaries(
        {},
        optional={
            "secretName": _secret_name,
            "certificateFile": _file,
            "keyFile": _file,
            "allowInsecure": st.one_of(st.booleans(), st.just("yes")),
        },
    ),
    st.sampled_from([{"secretName": "docs-tls", "secret": "x"}, "docs-tls"]),
)
_small_int = st.one_of(st.integers(-1, MAX_THRESHOLD + 2), st.just("3"), st.booleans())
_health_path = st.one_of(
    st.text(alphabet="/a~!?#%", max_size=5).map(lambda rest: "/" + rest),
    st.text(alphabet="/a \t\u00e9", max_size=4),
    st.integers(MAX_PATH_PREFIX - 1, MAX_PATH_PREFIX + 1).map(lambda n: "/" + "a" * (n - 1)),
)
_health_check = st.one_of(
    st.fixed_dictionaries(
        {"path": _health_path},
        optional={"interval": _duration, "unhealthyThreshold": _small_int, "healthyThreshold": _small_int},
    ),
    st.fixed_dictionaries({}, optional={"interval": _duration, "healthyThreshold": _small_int}),
    st.sampled_from([{"path": "/h", "timeout": "1s"}, "/healthz"]),
)

# One strategy per spec field; each test varies one field of a valid spec.
_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "domain": _host,
    "aliases": _hosts_list,
    "redirectFrom": _hosts_list,
    "pathPrefix": _path,
    "rewritePrefix": _path,
    "tls": _tls,
    "responseHeaders": _response_headers,
    "compression": st.one_of(st.booleans(), st.just("false"), st.integers(0, 1)),
    "requestTimeout": _duration,
    "connectRetries": st.one_of(st.integers(-2, MAX_CONNECT_RETRIES + 2), st.just("1"), st.booleans()),
    "gatewayGroup": st.one_of(
        st.text(alphabet="a9-.A", max_size=5), st.integers(63, 64).map(lambda n: "g" * n), st.just(7)
    ),
    "backend": st.builds(lambda check: {**BACKEND, "healthCheck": check}, _health_check),
}


@settings(max_examples=400, deadline=None)
@given(_domain, _service, _port)
def test_crd_rejects_exactly_what_the_model_rejects(domain: str, service: str, port: object) -> None:
    spec = {"domain": domain, "backend": {"serviceName": service, "servicePort": port}}
    assert model_accepts(copy.deepcopy(spec)) == crd_accepts(copy.deepcopy(spec)), spec


@pytest.mark.parametrize("field", sorted(_FIELDS))
@settings(max_examples=250, deadline=None)
@given(data=st.data())
def test_crd_and_model_agree_on_every_field(field: str, data: st.DataObject) -> None:
    spec = {**GOOD, field: data.draw(_FIELDS[field], label=field)}
    assert model_accepts(copy.deepcopy(spec)) == _api_server_accepts(copy.deepcopy(spec)), spec


# Domains and headers from small pools, so that duplicates and conflicts are common.
_crossing = st.fixed_dictionaries(
    {"domain": st.sampled_from(["docs.example.com", "*.example.com"]), "backend": st.just(BACKEND)},
    optional={
        "aliases": st.lists(
            st.sampled_from(["a.example.com", "A.example.com", "docs.example.com"]), max_size=3
        ),
        "redirectFrom": st.lists(
            st.sampled_from(["b.example.com", "a.example.com", "*.b.example.com"]), max_size=3
        ),
        "responseHeaders": st.fixed_dictionaries(
            {},
            optional={
                "set": st.dictionaries(
                    st.sampled_from(["X-A", "x-a", "X-B", "X B"]), st.just("v"), max_size=3
                ),
                "remove": st.lists(st.sampled_from(["X-A", "x-b", "X-C", "x-c"]), max_size=3),
            },
        ),
    },
)


@settings(max_examples=300, deadline=None)
@given(_crossing)
def test_crd_and_model_agree_across_fields(spec: dict[str, Any]) -> None:
    assert model_accepts(copy.deepcopy(spec)) == _api_server_accepts(copy.deepcopy(spec)), spec
