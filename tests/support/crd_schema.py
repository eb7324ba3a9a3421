"""The StaticSite CRD's schema as the API server applies it, and the model's verdict on a spec."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import yaml

from snapshot.model import API_VERSION, KIND, InvalidSite, parse_site

CRD_PATH = Path(__file__).resolve().parents[2] / "crds" / "staticsite.yaml"


def load_crd() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(CRD_PATH.read_text())
    return data


def root_schema() -> dict[str, Any]:
    schema: dict[str, Any] = load_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def re2_anchors(pattern: str) -> str:
    """`$` outside a character class, unescaped, as RE2 reads it: the end of the text."""
    out: list[str] = []
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if char == "\\":
            out.append(pattern[index : index + 2])
            index += 2
            continue
        if char == "[":  # copy the class whole: a first "]" (after an optional "^") is literal
            end = index + 1
            if pattern.startswith("^", end):
                end += 1
            if pattern.startswith("]", end):
                end += 1
            while end < len(pattern) and pattern[end] != "]":
                end += 2 if pattern[end] == "\\" else 1
            out.append(pattern[index : end + 1])
            index = end + 1
            continue
        out.append(r"\Z" if char == "$" else char)
        index += 1
    return "".join(out)


def as_api_server(schema: Any) -> Any:
    """The schema as the API server applies it (RE2 anchors, unknown fields refused, sets)."""
    if isinstance(schema, dict):
        out = {k: as_api_server(v) for k, v in schema.items()}
        if isinstance(out.get("pattern"), str):
            out["pattern"] = re2_anchors(out["pattern"])
        if "properties" in out and "metadata" not in out["properties"]:
            out["additionalProperties"] = False
        if out.get("x-kubernetes-list-type") == "set":
            out["uniqueItems"] = True
        return out
    if isinstance(schema, list):
        return [as_api_server(v) for v in schema]
    return schema


VALIDATOR = jsonschema.Draft7Validator(as_api_server(root_schema()))


def site_doc(spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": "site", "namespace": "docs"},
        "spec": spec,
    }


def model_accepts(spec: Any) -> bool:
    try:
        parse_site(site_doc(spec))
    except InvalidSite:
        return False
    return True


def crd_accepts(spec: Any) -> bool:
    """The OpenAPI schema's verdict (the CEL rules aside)."""
    valid: bool = VALIDATOR.is_valid(site_doc(spec))
    return valid
