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
import subprocess
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.dockerfile import Instruction, build_stages

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
CLUSTER_SCOPED = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}

Object = dict[str, Any]


# --- reading the manifests -------------------------------------------------------------------


def _documents(path: Path) -> list[Object]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _kustomization(folder: Path) -> Object:
    data: Object = yaml.safe_load((folder / KUSTOMIZATION).read_text())
    return data


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


def _validate(obj: Object) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.absolute_path)
        pytest.fail(f"{obj['kind']}/{obj['metadata'].get('name')}: {path}: {exc.message}")


# --- the pods ----------------------------------------------------------------------------------


def _pod_spec(deployment: Object) -> Object:
    spec: Object = deployment["spec"]["template"]["spec"]
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
    assert listed == present


@pytest.mark.unit
def test_deploy_includes_the_crd_and_the_gateway_bootstrap() -> None:
    resources = _kustomization(DEPLOY)["resources"]
    assert "../crds" in resources
    assert "../envoy" in resources
    (generator,) = _kustomization(ENVOY)["configMapGenerator"]
    assert generator["name"] == BOOTSTRAP_CONFIG_MAP
    assert generator["files"] == ["bootstrap.yaml"]
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
    | {(NAMESPACE, "coordination.k8s.io", "leases", "create", None)}
    | {(NAMESPACE, "coordination.k8s.io", "leases", v, LEADER_LEASE) for v in ("get", "update", "patch")}
)


def _grants(objects: list[Object]) -> set[Grant]:
    """Everything the control plane's ServiceAccount may do, through every binding that names it."""
    grants: set[Grant] = set()
    for binding in _kinds(objects, "ClusterRoleBinding", "RoleBinding"):
        subjects = binding.get("subjects", [])
        ours = {"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": NAMESPACE}
        assert subjects == [ours], f"{binding['metadata']['name']} binds {subjects}"
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
    assert set(ports) == {"grpc-xds", "metrics"}
    assert ports["grpc-xds"]["appProtocol"] == "grpc"
    assert _container_port(container, ports["grpc-xds"]["targetPort"]) == xds_port
    assert _container_port(container, ports["metrics"]["targetPort"]) == metrics_port


@pytest.mark.unit
def test_gateway_bootstrap_reaches_the_control_plane_service() -> None:
    objects = _objects()
    service = _one(objects, "Service", CONTROL_PLANE)
    (bootstrap,) = _documents(ENVOY / "bootstrap.yaml")
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
        (ENVOY / "bootstrap.yaml").read_text()
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


@pytest.mark.unit
@pytest.mark.parametrize("deployment", _deployments(), ids=lambda d: d["metadata"]["name"])
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


@pytest.mark.unit
def test_control_plane_resources_and_writable_tmp() -> None:
    deployment = _one(_objects(), "Deployment", CONTROL_PLANE)
    pod = _pod_spec(deployment)
    container = _container(deployment)
    assert container["resources"] == {
        "requests": {"cpu": "100m", "memory": "128Mi"},
        "limits": {"memory": "512Mi"},
    }
    for key in ("runAsUser", "runAsGroup", "fsGroup"):
        assert pod["securityContext"][key] == 10001, key
    volumes = {v["name"]: v for v in pod["volumes"]}
    (tmp,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert "emptyDir" in volumes[tmp["name"]]
    assert pod["serviceAccountName"] == SERVICE_ACCOUNT
    _one(_objects(), "ServiceAccount", SERVICE_ACCOUNT)


# --- the rendering, with kubectl's kustomize ---------------------------------------------------


def _kustomize(folder: Path) -> list[Object]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    result = subprocess.run(
        [kubectl, "kustomize", str(folder)], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc is not None]


@pytest.fixture(scope="module")
def rendered() -> list[Object]:
    return _kustomize(DEPLOY)


@pytest.mark.unit
def test_rendering_is_valid_and_complete(rendered: list[Object]) -> None:
    for obj in rendered:
        _validate(obj)
    hashed = re.compile(rf"^{BOOTSTRAP_CONFIG_MAP}-[a-z0-9]{{10}}$")
    names = {(o["kind"], hashed.sub(BOOTSTRAP_CONFIG_MAP, o["metadata"]["name"])) for o in rendered}
    assert names == {(o["kind"], o["metadata"]["name"]) for o in _objects()}
    assert len(names) == len(rendered)


@pytest.mark.envoy
def test_rendering_mounts_the_generated_bootstrap(rendered: list[Object]) -> None:
    gateway = _one(rendered, "Deployment", GATEWAY)
    (volume,) = [v for v in _pod_spec(gateway)["volumes"] if "configMap" in v]
    name = volume["configMap"]["name"]
    assert re.fullmatch(rf"{BOOTSTRAP_CONFIG_MAP}-[a-z0-9]{{10}}", name), name
    config_map = _one(rendered, "ConfigMap", name)
    assert config_map["metadata"]["namespace"] == gateway["metadata"]["namespace"]
    assert config_map["data"]["bootstrap.yaml"] == (ENVOY / "bootstrap.yaml").read_text()


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
        assert (subject["name"], subject["namespace"]) == (
            account["metadata"]["name"],
            account["metadata"]["namespace"],
        )
    role = _one(rendered, "Role", "staticsite-xds-leader-election")
    assert role["metadata"]["namespace"] == deployment["metadata"]["namespace"]
    assert _grants(rendered) == EXPECTED_GRANTS


def _images(objects: list[Object]) -> dict[str, str]:
    return {d["metadata"]["name"]: _container(d)["image"] for d in _kinds(objects, "Deployment")}


@pytest.mark.envoy
def test_rendering_images_are_pinned_and_retargetable(rendered: list[Object], tmp_path: Path) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert _images(rendered) == {
        CONTROL_PLANE: f"staticsite-xds:{version}",
        GATEWAY: "envoyproxy/envoy:v1.40-latest",
    }
    overlay = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(DEPLOY, tmp_path)],
        "images": [
            {"name": "staticsite-xds", "newName": "registry.example/team/staticsite-xds", "newTag": "9.9.9"},
            {"name": "envoyproxy/envoy", "newName": "mirror.example/envoy", "newTag": "v1.40.1"},
        ],
    }
    (tmp_path / KUSTOMIZATION).write_text(yaml.safe_dump(overlay))
    assert _images(_kustomize(tmp_path)) == {
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
        assert stage[0].value.split()[0] == "python:3.11-slim"
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
    assert exposed == {_host_port(args.xds_address)[1], _host_port(args.metrics_address)[1]}


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
