"""AdmissionReviews of StaticSites and GatewayGroups, and the webhook's certificate files."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import trustme

from snapshot.model import API_VERSION

SERVER_NAME = "staticsite-xds.staticsite-xds.svc"  # the name the API server calls the webhook by

Review = dict[str, Any]


def group_body(
    name: str = "default", *grants: dict[str, Any], client_names: list[str] | None = None
) -> Review:
    spec: dict[str, Any] = {"grants": list(grants)}
    if client_names is not None:
        spec["clientNames"] = client_names
    return {"apiVersion": API_VERSION, "kind": "GatewayGroup", "metadata": {"name": name}, "spec": spec}


def grant(domains: list[str], *names: str) -> dict[str, Any]:
    return {"namespaces": {"names": list(names)}, "domains": domains}


def site_body(namespace: str, name: str, domain: str, **spec: Any) -> Review:
    return {
        "apiVersion": API_VERSION,
        "kind": "StaticSite",
        "metadata": {"name": name, "namespace": namespace, "uid": str(uuid.uuid4()), "generation": 1},
        "spec": {"domain": domain, "backend": {"serviceName": "web", "servicePort": 80}, **spec},
    }


def review(obj: Review | None, operation: str = "CREATE", old: Review | None = None) -> Review:
    meta = (obj or old or {}).get("metadata", {})
    request: Review = {
        "uid": str(uuid.uuid4()),
        "kind": {
            "group": "staticsite-xds.dev",
            "version": "v1alpha1",
            "kind": (obj or old or {}).get("kind"),
        },
        "operation": operation,
        "name": meta.get("name", ""),
        "object": obj,
        "oldObject": old,
        "userInfo": {"username": "someone"},
    }
    if "namespace" in meta:
        request["namespace"] = meta["namespace"]
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


def write_pair(folder: Path, leaf: trustme.LeafCert, ca: trustme.CA) -> None:
    """The server's files, each replaced in one rename (as a rotation does)."""
    files = {
        "tls.crt": leaf.cert_chain_pems[0].bytes(),
        "tls.key": leaf.private_key_pem.bytes(),
        "ca.crt": ca.cert_pem.bytes(),
    }
    for name, data in files.items():
        staged = folder / f".{name}.new"
        staged.write_bytes(data)
        os.replace(staged, folder / name)
