"""Mutual TLS on the xDS port for tests: the shipped mTLS bootstrap pointed at files here, and
the files of a cert-manager Secret."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trustme
import yaml

from xds_server.local.gateway import REPO_ROOT

SERVER_NAME = "staticsite-xds.staticsite-xds.svc"  # what the shipped mTLS bootstrap expects
MTLS_BOOTSTRAP = REPO_ROOT / "envoy" / "bootstrap-mtls.yaml"
CLIENT_SECRET = REPO_ROOT / "envoy" / "xds-client-certificate.yaml"
SECRET_MOUNT = "/etc/staticsite-xds/tls"
BOOTSTRAP_MOUNT = "/etc/envoy"


def secret_files(ca: trustme.CA, leaf: trustme.LeafCert, key: bytes | None = None) -> dict[str, bytes]:
    """A cert-manager Secret's files: tls.crt, tls.key and ca.crt."""
    return {
        "tls.crt": leaf.cert_chain_pems[0].bytes(),
        "tls.key": leaf.private_key_pem.bytes() if key is None else key,
        "ca.crt": ca.cert_pem.bytes(),
    }


def mtls_bootstrap(
    workdir: Path,
    client_tls: Path,
    xds_port: int,
    admin_port: int,
    node: str,
    *,
    gateway_group: str = "gateways",
) -> dict[str, Any]:
    """The shipped mTLS bootstrap and its client secret, with the mounts moved to `client_tls`
    and `workdir`, the node `node` of the cluster `gateway_group`, and the control plane on
    127.0.0.1:`xds_port`."""
    workdir.mkdir(parents=True, exist_ok=True)
    secret = CLIENT_SECRET.read_text().replace(SECRET_MOUNT, str(client_tls))
    (workdir / CLIENT_SECRET.name).write_text(secret)
    text = (
        MTLS_BOOTSTRAP.read_text()
        .replace(SECRET_MOUNT, str(client_tls))
        .replace(BOOTSTRAP_MOUNT, str(workdir))
    )
    boot: dict[str, Any] = yaml.safe_load(text)
    boot["node"] = {"id": node, "cluster": gateway_group}
    boot["admin"]["address"]["socket_address"].update(address="127.0.0.1", port_value=admin_port)
    (xds,) = boot["static_resources"]["clusters"]
    endpoint = xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    endpoint["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": xds_port}
    return boot
