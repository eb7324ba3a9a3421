"""The StaticSite CRD: a valid CustomResourceDefinition whose schema rejects what the model rejects.

The API server checks a custom resource against the CRD's OpenAPI schema with Go's regular
expressions (RE2: `$` is the end of the text) and refuses unknown fields (kubectl's strict
field validation). This test judges the same way: the schema's patterns get `\\Z` for `$`,
and every object with `properties` gets `additionalProperties: false`.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from snapshot.model import API_VERSION, GROUP, KIND, PLURAL, VERSION, InvalidSite, parse_site

CRD_PATH = Path(__file__).resolve().parents[1] / "crds" / "staticsite.yaml"


def _crd() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(CRD_PATH.read_text())
    return data


def _as_api_server(schema: Any) -> Any:
    """The schema as the API server applies it (RE2 anchors, unknown fields refused)."""
    if isinstance(schema, dict):
        out = {k: _as_api_server(v) for k, v in schema.items()}
        if isinstance(out.get("pattern"), str):
            out["pattern"] = out["pattern"].replace("$", r"\Z")
        if "properties" in out and "metadata" not in out["properties"]:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_as_api_server(v) for v in schema]
    return schema


VALIDATOR = jsonschema.Draft7Validator(
    _as_api_server(_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
)


def _doc(spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": "site", "namespace": "docs"},
        "spec": spec,
    }


def _model_accepts(spec: Any) -> bool:
    try:
        parse_site(_doc(spec))
    except InvalidSite:
        return False
    return True


def _crd_accepts(spec: Any) -> bool:
    return VALIDATOR.is_valid(_doc(spec))


def test_crd_names_match_the_model() -> None:
    crd = _crd()
    assert crd["metadata"]["name"] == f"{PLURAL}.{GROUP}"
    assert crd["spec"]["group"] == GROUP
    assert crd["spec"]["names"]["kind"] == KIND
    assert crd["spec"]["names"]["plural"] == PLURAL
    (version,) = crd["spec"]["versions"]
    assert version["name"] == VERSION
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns == ["Domain", "Service", "Port", "Ready", "Reason", "Age"]


def test_crd_is_a_valid_custom_resource_definition() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    kubernetes_validate.validate(_crd(), "1.30", strict=True)


GOOD = {"domain": "docs.example.com", "backend": {"serviceName": "web", "servicePort": 80}}


@pytest.mark.parametrize(
    ("spec", "accepted"),
    [
        (GOOD, True),
        ({**GOOD, "domain": "Docs.Example.COM"}, True),
        ({**GOOD, "domain": "a" * 63 + ".com"}, True),
        ({**GOOD, "domain": "a" * 64 + ".com"}, False),
        ({**GOOD, "domain": ".".join(["a" * 63] * 4)[:253]}, True),
        ({**GOOD, "domain": ".".join(["a" * 63] * 4)}, False),
        ({**GOOD, "domain": "example.com."}, False),
        ({**GOOD, "domain": "example.com\n"}, False),
        ({**GOOD, "domain": "-a.com"}, False),
        ({**GOOD, "domain": "*.example.com"}, False),
        ({**GOOD, "domain": "a_b.com"}, False),
        ({**GOOD, "domain": ""}, False),
        ({"backend": GOOD["backend"]}, False),
        ({"domain": "a.com"}, False),
        ({**GOOD, "backend": {"serviceName": "Web", "servicePort": 80}}, False),
        ({**GOOD, "backend": {"serviceName": "9web", "servicePort": 80}}, False),
        ({**GOOD, "backend": {"serviceName": "w" * 64, "servicePort": 80}}, False),
        ({**GOOD, "backend": {"serviceName": "web", "servicePort": 0}}, False),
        ({**GOOD, "backend": {"serviceName": "web", "servicePort": 65536}}, False),
        ({**GOOD, "backend": {"serviceName": "web", "servicePort": "80"}}, False),
        ({**GOOD, "backend": {"serviceName": "web", "servicePrt": 80}}, False),
        ({**GOOD, "domian": "a.com"}, False),
    ],
)
def test_crd_and_model_agree_on_examples(spec: dict[str, Any], accepted: bool) -> None:
    assert _model_accepts(copy.deepcopy(spec)) is accepted
    assert _crd_accepts(copy.deepcopy(spec)) is accepted


_label = st.text(alphabet="aZ09-_", min_size=0, max_size=66)
_domain = st.one_of(
    st.lists(_label, min_size=1, max_size=6).map(".".join),
    st.lists(st.text(alphabet="abc", min_size=1, max_size=63), min_size=3, max_size=6).map(".".join),
    st.text(alphabet="ab.-*\n é", max_size=20),
)
_service = st.one_of(st.text(alphabet="aZ9-", min_size=0, max_size=66), st.just("web"))
_port = st.one_of(st.integers(min_value=-2, max_value=70000), st.just("80"), st.booleans())


@settings(max_examples=400, deadline=None)
@given(_domain, _service, _port)
def test_crd_rejects_exactly_what_the_model_rejects(domain: str, service: str, port: object) -> None:
    spec = {"domain": domain, "backend": {"serviceName": service, "servicePort": port}}
    assert _model_accepts(copy.deepcopy(spec)) == _crd_accepts(copy.deepcopy(spec)), spec
