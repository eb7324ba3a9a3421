"""Mutual TLS on the xDS port: real Envoys and gRPC clients against the `serve` process,
certificate rotation through a Kubernetes-style Secret folder, and the errors of bad files.

Certificates are made for each test by a throwaway CA. The server's files live in a folder
laid out as Kubernetes mounts a Secret (every file a symlink through `..data`, which a change
swaps at once), so a rotation here is what cert-manager and the kubelet do in a cluster.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import shutil
import socket
import ssl
import subprocess
import threading
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import trustme
import yaml
from cryptography import x509
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from support.manifests import manifest
from support.mutual_tls import (
    BOOTSTRAP_MOUNT,
    CLIENT_SECRET,
    MTLS_BOOTSTRAP,
    SECRET_MOUNT,
    SERVER_NAME,
    mtls_bootstrap,
    secret_files,
)
from support.processes import Response, free_port, run_cli, try_get
from support.waiting import eventually, wait_until

from snapshot.certificates import MAX_PEM_BYTES
from snapshot.resources import CLUSTER_TYPE
from xds_server.cli import DEFAULT_XDS_ADDRESS, _parser
from xds_server.local.control_plane import ControlPlaneProcess
from xds_server.local.gateway import LocalEnvoy, validate_config
from xds_server.local.sample_backend import SampleBackend
from xds_server.operations.tls import PemFile, ServingCertificate, TlsFileError, channel_credentials

ADS_SOTW = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
GARBAGE_KEY = b"-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----\n"

Backends = Callable[[str], SampleBackend]


# -- certificates and files ---------------------------------------------------------------------


class SecretVolume:
    """A folder laid out as the kubelet mounts a Secret: `name -> ..data/name`, and `..data`
    a symlink to a timestamped folder that every change replaces in one rename."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True)
        self.generation = 0

    def path(self, name: str) -> Path:
        return self.root / name

    def write(self, files: Mapping[str, bytes]) -> None:
        self.generation += 1
        version = self.root / f"..2026_11_22_{self.generation:04d}"
        version.mkdir()
        for name, data in files.items():
            (version / name).write_bytes(data)
        data_link = self.root / "..data"
        previous = data_link.resolve() if data_link.is_symlink() else None
        staged = self.root / "..data_tmp"
        os.symlink(version.name, staged)
        os.replace(staged, data_link)
        for name in files:
            if not self.path(name).is_symlink():
                os.symlink(f"..data/{name}", self.path(name))
        if previous is not None:
            shutil.rmtree(previous)  # the kubelet removes the old version at once


def key_chunks(*keys: bytes) -> list[str]:
    """A recognisable piece of each key's base64 body (the line after the PEM header)."""
    return [key.decode().splitlines()[1][:32] for key in keys]


def fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def pem_fingerprint(leaf: trustme.LeafCert) -> str:
    return fingerprint(ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode()))


def serial(leaf: trustme.LeafCert) -> int:
    return x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()).serial_number


@dataclass
class Pki:
    """The CA of the xDS port, the server's Secret folder and a gateway's client pair."""

    ca: trustme.CA
    server: SecretVolume
    server_leaf: trustme.LeafCert
    client_dir: Path

    def issue_server(self) -> trustme.LeafCert:
        return self.ca.issue_cert(SERVER_NAME, "127.0.0.1")

    @property
    def serve_flags(self) -> list[str]:
        return [
            "--tls-cert",
            str(self.server.path("tls.crt")),
            "--tls-key",
            str(self.server.path("tls.key")),
            "--tls-client-ca",
            str(self.server.path("ca.crt")),
        ]

    def client_credentials(self) -> grpc.ChannelCredentials:
        return channel_credentials(
            self.client_dir / "ca.crt", self.client_dir / "tls.crt", self.client_dir / "tls.key"
        )


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = trustme.CA()
    server = SecretVolume(tmp_path / "server-tls")
    leaf = ca.issue_cert(SERVER_NAME, "127.0.0.1")
    server.write(secret_files(ca, leaf))
    client_dir = tmp_path / "client-tls"
    client_dir.mkdir()
    for name, data in secret_files(ca, ca.issue_cert("probe.gateways")).items():
        (client_dir / name).write_bytes(data)
    return Pki(ca, server, leaf, client_dir)


@pytest.fixture
def control_plane(tmp_path: Path, pki: Pki) -> Iterator[ControlPlaneProcess]:
    """`serve` over mutual TLS with the files of `pki`, on free loopback ports."""
    sites = tmp_path / "sites"
    sites.mkdir()
    plane = ControlPlaneProcess(sites, tmp_path, free_port(), free_port(), extra=pki.serve_flags)
    try:
        yield plane.start()
    finally:
        plane.stop()


# -- clients ------------------------------------------------------------------------------------


def served_certificate(port: int, pki: Pki) -> bytes:
    """The certificate a new TLS connection to the port gets (DER), the server checked too."""
    context = ssl.create_default_context(cafile=str(pki.client_dir / "ca.crt"))
    context.load_cert_chain(pki.client_dir / "tls.crt", pki.client_dir / "tls.key")
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=SERVER_NAME) as connection,
    ):
        der = connection.getpeercert(binary_form=True)
    assert der is not None
    return der


def ads_call(port: int, credentials: grpc.ChannelCredentials | None) -> Any:
    """Open an ADS stream, ask for clusters and return the first response (or raise RpcError)."""
    target = f"127.0.0.1:{port}"
    if credentials is None:
        channel = grpc.insecure_channel(target)
    else:
        channel = grpc.secure_channel(
            target, credentials, options=[("grpc.ssl_target_name_override", SERVER_NAME)]
        )
    done = threading.Event()

    def requests() -> Iterator[Any]:
        yield discovery_pb2.DiscoveryRequest(type_url=CLUSTER_TYPE, node=base_pb2.Node(id="probe"))
        done.wait(10)  # keep the stream open until the answer is read

    with channel:
        call = channel.stream_stream(
            ADS_SOTW,
            request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
            response_deserializer=discovery_pb2.DiscoveryResponse.FromString,
        )
        responses = call(requests(), timeout=5)
        try:
            return next(responses)
        finally:
            done.set()
            responses.cancel()


def refused(port: int, credentials: grpc.ChannelCredentials | None) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        ads_call(port, credentials)
    error = caught.value
    assert isinstance(error, grpc.Call)
    assert error.code() == grpc.StatusCode.UNAVAILABLE, error
    return error


def assert_no_key_material(log: str, *keys: bytes) -> None:
    assert "PRIVATE KEY" not in log
    for chunk in key_chunks(*keys):
        assert chunk not in log


# -- Envoy --------------------------------------------------------------------------------------


def envoy_client_serial(envoy: LocalEnvoy) -> str | None:
    """The serial number of the client certificate Envoy holds (it has only the one)."""
    for entry in json.loads(envoy.admin("/certs")).get("certificates", []):
        for cert in entry.get("cert_chain", []):
            return str(cert["serial_number"])
    return None


def served_by(plane: ControlPlaneProcess, name: str) -> Response | None:
    """The gateway's answer for `name`.example.test, once the backend `name` gives it."""
    response = try_get(plane.http_port, f"{name}.example.test")
    return response if response is not None and response.backend == name else None


@pytest.mark.envoy
def test_shipped_mtls_bootstrap_is_valid(tmp_path: Path, pki: Pki) -> None:
    boot = MTLS_BOOTSTRAP.read_text()
    assert f"{SECRET_MOUNT}/ca.crt" in boot
    assert f"{BOOTSTRAP_MOUNT}/{CLIENT_SECRET.name}" in boot
    secret = yaml.safe_load(CLIENT_SECRET.read_text())["resources"][0]["tls_certificate"]
    assert secret["private_key"] == {"filename": f"{SECRET_MOUNT}/tls.key"}
    assert secret["watched_directory"] == {"path": SECRET_MOUNT}  # the kubelet swaps `..data` there
    # Envoy checks that the files exist: point the mounts at real ones.
    config = tmp_path / "bootstrap.yaml"
    config.write_text(yaml.safe_dump(mtls_bootstrap(tmp_path, pki.client_dir, 9000, 9901, "gateway")))
    result = validate_config(config)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.envoy
def test_envoy_over_mutual_tls_through_a_rotation(
    tmp_path: Path, pki: Pki, control_plane: ControlPlaneProcess
) -> None:
    plane = control_plane
    with SampleBackend("docs") as docs, SampleBackend("blog") as blog:
        (plane.sites / "docs.yaml").write_text(manifest("docs", "docs.example.test", "docs", docs.port))
        gateway_tls = SecretVolume(tmp_path / "gateway-tls")
        gateway_tls.write(secret_files(pki.ca, pki.ca.issue_cert("gateway-1.gateways")))
        boot = mtls_bootstrap(
            tmp_path / "envoy-1", gateway_tls.root, plane.xds_port, free_port(), "gateway-1"
        )
        with LocalEnvoy(boot, tmp_path / "envoy-1") as envoy:
            response = wait_until(lambda: served_by(plane, "docs"), 20, what="docs over mTLS")
            assert response.status == 200
            assert pem_fingerprint(pki.server_leaf) == fingerprint(served_certificate(plane.xds_port, pki))

            # cert-manager renews the server's certificate: same process, new connections get it.
            pid = plane.pid
            renewed = pki.issue_server()
            pki.server.write(secret_files(pki.ca, renewed))
            wait_until(
                lambda: fingerprint(served_certificate(plane.xds_port, pki)) == pem_fingerprint(renewed),
                what="the renewed certificate to be served",
            )
            seen = x509.load_der_x509_certificate(served_certificate(plane.xds_port, pki))
            assert seen.serial_number == serial(renewed) != serial(pki.server_leaf)
            assert plane.alive()
            assert plane.pid == pid
            wait_until(lambda: pem_fingerprint(renewed) in plane.log(), what="the rotation to be logged")

            # The open stream goes on: a new site reaches the first gateway.
            (plane.sites / "blog.yaml").write_text(manifest("blog", "blog.example.test", "blog", blog.port))
            wait_until(lambda: served_by(plane, "blog"), what="blog through the first gateway")

            # The gateway's own certificate is renewed too: Envoy takes it without a restart.
            before = envoy_client_serial(envoy)
            gateway_tls.write(secret_files(pki.ca, pki.ca.issue_cert("gateway-1.gateways")))
            wait_until(
                lambda: (held := envoy_client_serial(envoy)) is not None and held != before,
                what="Envoy to take its renewed client certificate",
            )

        # A gateway connecting now verifies the renewed certificate and is configured.
        boot = mtls_bootstrap(
            tmp_path / "envoy-2", gateway_tls.root, plane.xds_port, free_port(), "gateway-2"
        )
        with LocalEnvoy(boot, tmp_path / "envoy-2") as envoy:
            response = wait_until(lambda: served_by(plane, "blog"), 20, what="blog through the second")
            assert envoy.ready()
            assert response.status == 200
            assert envoy.stat("cluster.staticsite-xds.ssl.handshake") >= 1
    assert_no_key_material(
        plane.log(), pki.server_leaf.private_key_pem.bytes(), renewed.private_key_pem.bytes()
    )


# -- who gets in --------------------------------------------------------------------------------


@pytest.mark.envoy
def test_only_clients_with_a_certificate_from_the_client_ca_get_in(
    tmp_path: Path, pki: Pki, control_plane: ControlPlaneProcess
) -> None:
    port = control_plane.xds_port
    response = ads_call(port, pki.client_credentials())
    assert response.type_url == CLUSTER_TYPE

    ca = pki.client_dir / "ca.crt"
    refused(port, channel_credentials(ca))  # no client certificate
    stranger = trustme.CA().issue_cert("stranger.gateways")
    for name, data in secret_files(pki.ca, stranger).items():
        (tmp_path / f"stranger-{name}").write_bytes(data)
    refused(port, channel_credentials(ca, tmp_path / "stranger-tls.crt", tmp_path / "stranger-tls.key"))
    refused(port, None)  # plain text
    assert ads_call(port, pki.client_credentials()).type_url == CLUSTER_TYPE
    assert control_plane.alive()


@pytest.mark.envoy
def test_without_the_flags_the_port_is_plain_text_and_local_by_default(tmp_path: Path) -> None:
    assert DEFAULT_XDS_ADDRESS.rpartition(":")[0] == "127.0.0.1"
    args = _parser().parse_args(["serve", "--sites", str(tmp_path)])
    assert args.xds_address == DEFAULT_XDS_ADDRESS
    assert (args.tls_cert, args.tls_key, args.tls_client_ca) == (None, None, None)
    sites = tmp_path / "sites"
    sites.mkdir()
    plane = ControlPlaneProcess(sites, tmp_path, free_port(), free_port()).start()
    try:
        assert ads_call(plane.xds_port, None).type_url == CLUSTER_TYPE
        assert "mutual TLS" not in plane.log()
    finally:
        plane.stop()


# -- rotation that goes wrong -------------------------------------------------------------------


def logged_after_a_connection(plane: ControlPlaneProcess, pki: Pki, text: str) -> Callable[[], bool]:
    """A check: connect (the server looks at its files before the handshake), then read the log."""

    def check() -> bool:
        served_certificate(plane.xds_port, pki)
        return text in plane.log()

    return check


@pytest.mark.envoy
def test_a_broken_rotation_keeps_the_last_good_certificate(
    pki: Pki, control_plane: ControlPlaneProcess
) -> None:
    plane = control_plane
    port = plane.xds_port
    good = pem_fingerprint(pki.server_leaf)
    assert f"sha256 {good}" in plane.log()  # the start-up line names what is served

    # A renewed certificate with a garbage key.
    renewed = pki.issue_server()
    pki.server.write(secret_files(pki.ca, renewed, key=GARBAGE_KEY))
    key_error = f"--tls-key {pki.server.path('tls.key')}: not a valid PEM private key"
    wait_until(logged_after_a_connection(plane, pki, key_error), what="the bad key to be logged")
    assert fingerprint(served_certificate(port, pki)) == good
    assert ads_call(port, pki.client_credentials()).type_url == CLUSTER_TYPE

    # A pair that does not belong together: the key of another certificate.
    other = pki.issue_server()
    pki.server.write(secret_files(pki.ca, renewed, key=other.private_key_pem.bytes()))
    mismatch = (
        f"--tls-key {pki.server.path('tls.key')}: the private key does not belong to the certificate "
        f"in --tls-cert {pki.server.path('tls.crt')}"
    )
    wait_until(logged_after_a_connection(plane, pki, mismatch), what="the mismatch to be logged")
    assert fingerprint(served_certificate(port, pki)) == good

    # The certificate file cut short while it is written in place.
    chain = pki.server.path("tls.crt").resolve()
    chain.write_bytes(renewed.cert_chain_pems[0].bytes()[:200])
    cut = f"--tls-cert {pki.server.path('tls.crt')}: not a valid PEM certificate"
    wait_until(logged_after_a_connection(plane, pki, cut), what="the cut file to be logged")
    assert fingerprint(served_certificate(port, pki)) == good

    # Fixed: the next good pair is taken.
    pki.server.write(secret_files(pki.ca, renewed))
    wait_until(lambda: fingerprint(served_certificate(port, pki)) == pem_fingerprint(renewed))
    assert plane.alive()
    log = plane.log()
    assert "Traceback" not in log
    assert_no_key_material(
        log,
        pki.server_leaf.private_key_pem.bytes(),
        renewed.private_key_pem.bytes(),
        other.private_key_pem.bytes(),
        GARBAGE_KEY,
    )


# -- the files, in process ----------------------------------------------------------------------


def serving(pki: Pki) -> ServingCertificate:
    return ServingCertificate.from_paths(
        pki.server.path("tls.crt"), pki.server.path("tls.key"), pki.server.path("ca.crt")
    )


@pytest.mark.unit
def test_a_new_configuration_is_handed_over_only_when_the_files_changed(pki: Pki) -> None:
    certificate = serving(pki)
    certificate.server_credentials()
    assert certificate.configuration_for_handshake() is None
    pki.server.write(secret_files(pki.ca, pki.server_leaf))  # the same content, new files
    assert certificate.configuration_for_handshake() is None
    renewed = pki.issue_server()
    pki.server.write(secret_files(pki.ca, renewed))
    assert certificate.configuration_for_handshake() is not None
    assert certificate.current.fingerprint == pem_fingerprint(renewed)
    assert certificate.configuration_for_handshake() is None
    # Taken by the periodic check first: still handed over at the next handshake.
    again = pki.issue_server()
    pki.server.write(secret_files(pki.ca, again))
    assert certificate.check()
    assert certificate.configuration_for_handshake() is not None
    assert certificate.configuration_for_handshake() is None
    assert certificate.rotations == 2


@pytest.mark.unit
def test_a_half_written_key_is_reported_once_and_the_finished_one_taken(
    pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    certificate = serving(pki)
    before = certificate.current
    renewed = pki.issue_server()
    key = pki.server.path("tls.key").resolve()
    chain = pki.server.path("tls.crt").resolve()
    chain.write_bytes(renewed.cert_chain_pems[0].bytes())
    key.write_bytes(renewed.private_key_pem.bytes()[:60])
    with caplog.at_level(logging.ERROR, logger="staticsite_xds.tls"):
        assert not certificate.check()
        assert not certificate.check()  # nothing changed since: not logged again
    (record,) = caplog.records
    assert f"--tls-key {pki.server.path('tls.key')}" in record.getMessage()
    assert certificate.current is before
    key.write_bytes(renewed.private_key_pem.bytes())
    assert certificate.check()
    assert certificate.current.fingerprint == pem_fingerprint(renewed)
    assert key_chunks(renewed.private_key_pem.bytes())[0] not in repr(certificate.current)


@pytest.mark.unit
async def test_the_files_are_followed_while_nobody_connects(pki: Pki) -> None:
    certificate = serving(pki)
    stop = asyncio.Event()
    follower = asyncio.create_task(certificate.follow(stop, interval=0.02))
    try:
        renewed = pki.issue_server()
        pki.server.write(secret_files(pki.ca, renewed))
        await eventually(lambda: certificate.current.fingerprint == pem_fingerprint(renewed))
    finally:
        stop.set()
        await asyncio.wait_for(follower, timeout=5)


@pytest.mark.parametrize(
    ("flag", "damage", "message"),
    [
        ("--tls-cert", "missing", "no such file"),
        ("--tls-key", "folder", "a folder, not a file"),
        ("--tls-client-ca", "fifo", "not a regular file (a FIFO or a device)"),
        ("--tls-cert", "huge", "larger than 1024 KiB, not a PEM file"),
        ("--tls-client-ca", "empty", "empty"),
        ("--tls-cert", "garbage", "no PEM certificate in it"),
        ("--tls-client-ca", "cut", "not a valid PEM certificate"),
        ("--tls-key", "garbage", "not a valid PEM private key"),
        ("--tls-key", "other", "does not belong to the certificate in --tls-cert"),
    ],
)
@pytest.mark.unit
def test_files_that_cannot_serve_are_named_at_start(
    tmp_path: Path, pki: Pki, flag: str, damage: str, message: str
) -> None:
    files = {"--tls-cert": "tls.crt", "--tls-key": "tls.key", "--tls-client-ca": "ca.crt"}
    paths = {f: tmp_path / name for f, name in files.items()}
    for f, name in files.items():
        paths[f].write_bytes(pki.server.path(name).read_bytes())
    target = paths[flag]
    if damage == "missing":
        target.unlink()
    elif damage == "folder":
        target.unlink()
        target.mkdir()
    elif damage == "fifo":  # opened with no writer: refused at once, never waited on
        target.unlink()
        os.mkfifo(target)
    elif damage == "huge":
        target.write_bytes(target.read_bytes() + b"\n" * MAX_PEM_BYTES)
    elif damage == "empty":
        target.write_bytes(b"\n")
    elif damage == "garbage":
        target.write_bytes(GARBAGE_KEY if flag == "--tls-key" else b"hello\n")
    elif damage == "cut":
        target.write_bytes(target.read_bytes()[:300])
    else:
        target.write_bytes(pki.issue_server().private_key_pem.bytes())
    with pytest.raises(TlsFileError) as caught:
        ServingCertificate(*(PemFile(f, p) for f, p in paths.items()))
    assert str(caught.value).startswith(f"{flag} {target}: ")
    assert message in str(caught.value)


@pytest.mark.unit
def test_client_credentials_need_the_certificate_and_key_together(pki: Pki) -> None:
    with pytest.raises(TlsFileError, match="--tls-cert and --tls-key go together"):
        channel_credentials(pki.client_dir / "ca.crt", pki.client_dir / "tls.crt")
    with pytest.raises(TlsFileError, match=r"^--tls-ca .*: no such file"):
        channel_credentials(pki.client_dir / "missing.crt")


# -- the command line ---------------------------------------------------------------------------


def serve(tmp_path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    sites = tmp_path / "sites"
    sites.mkdir(exist_ok=True)
    return run_cli("serve", "--sites", sites, "--xds-address", "127.0.0.1:0", *flags)


@pytest.mark.parametrize(
    ("given", "missing"),
    [
        (["--tls-cert"], "--tls-key and --tls-client-ca"),
        (["--tls-cert", "--tls-key"], "--tls-client-ca"),
        (["--tls-client-ca"], "--tls-cert and --tls-key"),
    ],
)
@pytest.mark.envoy
def test_serve_needs_all_three_tls_flags(tmp_path: Path, pki: Pki, given: list[str], missing: str) -> None:
    flags = dict(zip(pki.serve_flags[::2], pki.serve_flags[1::2], strict=True))
    proc = serve(tmp_path, *(part for flag in given for part in (flag, flags[flag])))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (
        f"staticsite-xds: --tls-cert, --tls-key and --tls-client-ca go together; missing {missing}"
    )


@pytest.mark.envoy
def test_serve_names_the_flag_and_file_that_cannot_be_read(tmp_path: Path, pki: Pki) -> None:
    flags = list(pki.serve_flags)
    missing = tmp_path / "nowhere" / "ca.crt"
    flags[flags.index("--tls-client-ca") + 1] = str(missing)
    proc = serve(tmp_path, *flags)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"staticsite-xds: --tls-client-ca {missing}: no such file"


def status(port: int, *flags: str | Path) -> subprocess.CompletedProcess[str]:
    return run_cli("status", "--xds-address", f"127.0.0.1:{port}", "--json", *flags)


@pytest.mark.envoy
def test_status_reaches_a_mutual_tls_port_with_the_client_flags(
    pki: Pki, control_plane: ControlPlaneProcess
) -> None:
    port = control_plane.xds_port
    client = pki.client_dir
    proc = status(
        port, "--tls-ca", client / "ca.crt", "--tls-cert", client / "tls.crt", "--tls-key", client / "tls.key"
    )
    assert proc.returncode == 0, proc.stderr
    assert isinstance(json.loads(proc.stdout), dict)

    plain = status(port, "--timeout", "2")
    assert plain.returncode == 1
    assert plain.stderr.startswith("staticsite-xds: ")
    half = status(port, "--tls-ca", client / "ca.crt", "--tls-cert", client / "tls.crt")
    assert half.returncode == 2
    assert half.stderr.strip() == "staticsite-xds: --tls-cert and --tls-key go together"


# -- plain text only on loopback, unless asked for by name ----------------------------------------


@pytest.mark.envoy
def test_serve_refuses_plain_text_on_a_reachable_address(tmp_path: Path) -> None:
    proc = serve(tmp_path, "--xds-address", f"0.0.0.0:{free_port()}")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("staticsite-xds: --xds-address 0.0.0.0:")
    assert "--insecure-plaintext" in proc.stderr
    assert "--tls-cert, --tls-key and --tls-client-ca" in proc.stderr


@pytest.mark.envoy
def test_serve_with_insecure_plaintext_warns_at_start_and_in_readyz(tmp_path: Path) -> None:
    sites = tmp_path / "sites"
    sites.mkdir()
    xds_port, metrics_port = free_port(), free_port()
    flags = ["--xds-address", f"0.0.0.0:{xds_port}", "--insecure-plaintext"]
    flags += ["--metrics-address", f"127.0.0.1:{metrics_port}"]
    plane = ControlPlaneProcess(sites, tmp_path, xds_port, free_port(), extra=flags).start()
    try:
        warning = "any client that reaches the port can read every site's private key"
        assert any("WARNING" in line and warning in line for line in plane.log().splitlines())
        assert ads_call(plane.xds_port, None).type_url == CLUSTER_TYPE

        def readyz() -> tuple[int, str] | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/readyz", timeout=2) as r:
                    return int(r.status), r.read().decode()
            except OSError:
                return None

        status_code, body = wait_until(readyz, what="/readyz to answer")
        assert status_code == 200
        assert body.startswith("ready\n")
        assert warning in body
    finally:
        plane.stop()


@pytest.mark.envoy
def test_the_metrics_show_when_the_xds_port_certificate_expires(tmp_path: Path, pki: Pki) -> None:
    sites = tmp_path / "sites"
    sites.mkdir()
    metrics_port = free_port()
    flags = [*pki.serve_flags, "--metrics-address", f"127.0.0.1:{metrics_port}"]
    plane = ControlPlaneProcess(sites, tmp_path, free_port(), free_port(), extra=flags).start()
    try:
        expected = x509.load_pem_x509_certificate(pki.server_leaf.cert_chain_pems[0].bytes())
        line = 'staticsite_xds_certificate_expiry_timestamp_seconds{certificate="xds-server"} '

        def scraped() -> float | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2) as r:
                    text = r.read().decode()
            except OSError:
                return None
            found = [row for row in text.splitlines() if row.startswith(line)]
            return float(found[0][len(line) :]) if found else None

        value = wait_until(scraped, what="the certificate's expiry in /metrics")
        assert value == expected.not_valid_after_utc.timestamp()
    finally:
        plane.stop()
