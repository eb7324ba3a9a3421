"""The xDS port's certificates, made in the cluster with nothing external: `staticsite-xds certificates`.

A CA of the install's own signs a server certificate for the control plane's Service names
and a client certificate for the gateways of each gateway group: the default group's in
`staticsite-xds-gateway`, group G's in `staticsite-xds-gateway-G`, each naming its group by
the DNS name `G.gateway-group.staticsite-xds.dev` (what puts a gateway in its group). Each lands in a Secret of type kubernetes.io/tls
with `tls.crt`, `tls.key` and `ca.crt` (what the control plane and the gateways mount); the
CA's key stays in a Secret of its own that only the certificates Job mounts or reads.

A run looks at the three Secrets and writes only what needs it: a Secret that is missing,
that cannot be parsed, whose key does not match its certificate, whose certificate another
CA signed, names other DNS names (a gateway certificate without its group's name, say), or expires within the renewal window. With valid
certificates it writes nothing. A renewed CA reissues both certificates; `ca.crt` then holds
the new CA and the old one while that one is valid, so a side that still presents a
certificate from the old CA is accepted until the kubelet has refreshed every mount.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import re
import sys
from base64 import b64decode, b64encode
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from snapshot.snapshot import DEFAULT_GROUP
from watcher.k8s_api import SECRETS, ApiError, KubeApi

from ..ads.membership import default_client_name

log = logging.getLogger("staticsite_xds.certificates")

TLS_SECRET_TYPE = "kubernetes.io/tls"
CERTIFICATE_KEY, PRIVATE_KEY_KEY, CA_KEY = "tls.crt", "tls.key", "ca.crt"
DEFAULT_SERVICE = "staticsite-xds"
DEFAULT_SERVER_SECRET = "staticsite-xds-server"
DEFAULT_CLIENT_SECRET = "staticsite-xds-gateway"
DEFAULT_CA_SECRET = "staticsite-xds-ca"
DEFAULT_CLIENT_NAME = "staticsite-gateway"
DEFAULT_DAYS = 365
DEFAULT_CA_DAYS = 3650
DEFAULT_RENEW_BEFORE_DAYS = 30
MAX_GROUP_NAME = 63  # a group's name is a DNS label of the client name
CLOCK_SKEW = datetime.timedelta(minutes=5)  # certificates are valid from a little before now
MANAGED_BY = {"app.kubernetes.io/managed-by": "staticsite-xds-certificates"}

Data = Mapping[str, str]  # a Secret's data, base64 values
_GROUP_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def service_dns_names(namespace: str, service: str = DEFAULT_SERVICE) -> tuple[str, ...]:
    """The names a pod in the cluster reaches a Service by."""
    return (
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
        f"{service}.{namespace}",
        service,
    )


class CertificateError(Exception):
    """The certificates cannot be kept as planned (the message says what to do)."""


@dataclass(frozen=True, slots=True)
class CertificatePlan:
    """What `staticsite-xds certificates` keeps valid in one namespace."""

    namespace: str
    dns_names: tuple[str, ...]  # the server certificate's names
    server_secret: str = DEFAULT_SERVER_SECRET
    client_secret: str = DEFAULT_CLIENT_SECRET
    ca_secret: str = DEFAULT_CA_SECRET
    client_name: str = DEFAULT_CLIENT_NAME  # the gateways' certificates' common name
    gateway_groups: tuple[str, ...] = (DEFAULT_GROUP,)  # a gateway certificate for each
    days: int = DEFAULT_DAYS
    ca_days: int = DEFAULT_CA_DAYS
    renew_before_days: int = DEFAULT_RENEW_BEFORE_DAYS

    def __post_init__(self) -> None:
        if not self.dns_names:
            raise ValueError("--dns-name: the server certificate needs at least one name")
        if self.renew_before_days >= self.days:
            raise ValueError(
                f"--renew-before {self.renew_before_days} must be shorter than --days {self.days}"
            )
        if self.renew_before_days >= self.ca_days:
            raise ValueError(
                f"--renew-before {self.renew_before_days} must be shorter than --ca-days {self.ca_days}"
            )
        if not self.gateway_groups:
            raise ValueError("--gateway-group: at least one group needs a gateway certificate")
        for group in self.gateway_groups:
            if not _GROUP_NAME.fullmatch(group) or len(group) > MAX_GROUP_NAME:
                raise ValueError(
                    f"--gateway-group {group!r} is not a gateway group's name (a DNS label: "
                    f"lower-case letters, digits and '-', at most {MAX_GROUP_NAME})"
                )
        if len(set(self.gateway_groups)) != len(self.gateway_groups):
            raise ValueError("--gateway-group: each group once")
        names = (self.server_secret, self.ca_secret, *(self.gateway_secret(g) for g in self.gateway_groups))
        if len(set(names)) != len(names):
            raise ValueError("the CA, server and client Secrets need three different names")

    def gateway_secret(self, group: str) -> str:
        """The Secret of a group's gateway certificate: the client Secret, suffixed but for the
        default group."""
        return self.client_secret if group == DEFAULT_GROUP else f"{self.client_secret}-{group}"

    @property
    def renew_before(self) -> datetime.timedelta:
        return datetime.timedelta(days=self.renew_before_days)


@dataclass(frozen=True, slots=True)
class KeyPair:
    """A certificate and its private key, as PEM."""

    certificate: bytes
    key: bytes

    def __repr__(self) -> str:  # a key must never reach a log through a repr
        return f"KeyPair({self.parsed().subject.rfc4514_string()})"

    def parsed(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.certificate)

    def private_key(self) -> ec.EllipticCurvePrivateKey:
        key = serialization.load_pem_private_key(self.key, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("not an EC private key")
        return key


@dataclass(frozen=True, slots=True)
class Written:
    """One Secret a run created or replaced, and why."""

    secret: str
    reason: str


# -- making certificates --------------------------------------------------------------------------


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _certificate_pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def _serial() -> int:
    return x509.random_serial_number()


def _key_usage(*, signs_certificates: bool) -> x509.KeyUsage:
    """Signatures (an ECDSA key's TLS handshake), and certificates and CRLs for a CA."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        encipher_only=False,
        decipher_only=False,
    )


def make_ca(now: datetime.datetime, days: int, name: str = "staticsite-xds CA") -> KeyPair:
    key = _new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    public = key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(_serial())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(signs_certificates=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(_certificate_pem(certificate), _key_pem(key))


def make_leaf(
    ca: KeyPair,
    now: datetime.datetime,
    days: int,
    *,
    common_name: str,
    dns_names: Sequence[str] = (),
    server: bool,
) -> KeyPair:
    """A certificate signed by `ca`: for a TLS server (`server`) or a TLS client; never past the CA."""
    key = _new_key()
    ca_certificate = ca.parsed()
    public = key.public_key()
    not_after = min(now + datetime.timedelta(days=days), ca_certificate.not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_certificate.subject)
        .public_key(public)
        .serial_number(_serial())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(signs_certificates=False), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.private_key().public_key()), critical=False
        )
    )
    if dns_names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(name) for name in dns_names]), critical=False
        )
    return KeyPair(_certificate_pem(builder.sign(ca.private_key(), hashes.SHA256())), _key_pem(key))


# -- judging what a Secret holds ------------------------------------------------------------------


def _decoded(data: Data, key: str) -> bytes:
    value = data.get(key)
    if not value:
        raise ValueError(f"no {key}")
    return b64decode(value, validate=True)


def _pair(data: Data) -> KeyPair:
    pair = KeyPair(_decoded(data, CERTIFICATE_KEY), _decoded(data, PRIVATE_KEY_KEY))
    public = pair.parsed().public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey) or public.public_numbers() != (
        pair.private_key().public_key().public_numbers()
    ):
        raise ValueError(f"{PRIVATE_KEY_KEY} does not belong to {CERTIFICATE_KEY}")
    return pair


def _expiring(certificate: x509.Certificate, now: datetime.datetime, plan: CertificatePlan) -> str | None:
    if certificate.not_valid_before_utc > now + CLOCK_SKEW:
        return "not valid yet"
    if certificate.not_valid_after_utc - now <= plan.renew_before:
        return f"expires {certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
    return None


def ca_problem(
    secret: dict[str, Any] | None, now: datetime.datetime, plan: CertificatePlan
) -> tuple[KeyPair | None, str]:
    """The CA the Secret holds, or None and why a new one is needed."""
    if secret is None:
        return None, "missing"
    try:
        pair = _pair(secret.get("data") or {})
        certificate = pair.parsed()
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
        if not constraints.ca:
            return None, "not a CA certificate"
    except (ValueError, TypeError, x509.ExtensionNotFound) as exc:
        return None, f"unusable ({exc})"
    expiring = _expiring(certificate, now, plan)
    if expiring is not None:
        return None, expiring
    return pair, ""


def leaf_problem(
    secret: dict[str, Any] | None,
    ca: KeyPair,
    now: datetime.datetime,
    plan: CertificatePlan,
    dns_names: Sequence[str],
) -> str | None:
    """Why the Secret's certificate must be issued again, or None when it serves as it is."""
    if secret is None:
        return "missing"
    if secret.get("type") != TLS_SECRET_TYPE:
        return f"of type {secret.get('type')!r}, not {TLS_SECRET_TYPE}"
    data = secret.get("data") or {}
    try:
        pair = _pair(data)
        certificate = pair.parsed()
        bundle = _decoded(data, CA_KEY)
        trusted = x509.load_pem_x509_certificates(bundle)
    except (ValueError, TypeError) as exc:
        return f"unusable ({exc})"
    ca_certificate = ca.parsed()
    if ca_certificate not in trusted:
        return f"its {CA_KEY} does not hold the current CA"
    try:
        certificate.verify_directly_issued_by(ca_certificate)
    except (ValueError, TypeError, InvalidSignature):
        return "not signed by the current CA"
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        present = sorted(names.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        present = []
    if present != sorted(dns_names):
        return f"names {', '.join(present) or 'no DNS name'}, not {', '.join(sorted(dns_names)) or 'none'}"
    return _expiring(certificate, now, plan)


# -- the run --------------------------------------------------------------------------------------


def _encoded(files: Mapping[str, bytes]) -> dict[str, str]:
    return {name: b64encode(data).decode("ascii") for name, data in files.items()}


async def _write(
    api: KubeApi,
    plan: CertificatePlan,
    name: str,
    existing: dict[str, Any] | None,
    files: Mapping[str, bytes],
) -> None:
    """Create the Secret, or replace its data (failing with 409 if it changed since it was read)."""
    if existing is None:
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": plan.namespace, "labels": dict(MANAGED_BY)},
            "type": TLS_SECRET_TYPE,
            "data": _encoded(files),
        }
        await api.create(SECRETS, plan.namespace, body)
        return
    if existing.get("type") != TLS_SECRET_TYPE:  # the type of a Secret cannot change
        raise CertificateError(
            f"Secret {plan.namespace}/{name} exists with type {existing.get('type')!r}, not "
            f"{TLS_SECRET_TYPE}; delete it and run again"
        )
    stale = {key: None for key in (existing.get("data") or {}) if key not in files}
    metadata: dict[str, Any] = {"labels": dict(MANAGED_BY)}
    version = (existing.get("metadata") or {}).get("resourceVersion")
    if version:
        metadata["resourceVersion"] = version
    await api.patch(
        SECRETS, plan.namespace, name, {"metadata": metadata, "data": {**stale, **_encoded(files)}}
    )


async def keep_certificates(
    api: KubeApi, plan: CertificatePlan, now: datetime.datetime | None = None
) -> list[Written]:
    """Bring the CA, server and gateway Secrets to valid certificates; what was written, in order."""
    now = now or datetime.datetime.now(datetime.UTC)
    written: list[Written] = []
    ca_secret = await api.get(SECRETS, plan.namespace, plan.ca_secret)
    ca, why = ca_problem(ca_secret, now, plan)
    previous_ca: bytes | None = None
    if ca is None:
        if ca_secret is not None:  # the old CA stays trusted while it is valid
            try:
                old = _pair(ca_secret.get("data") or {}).parsed()
                if old.not_valid_after_utc > now:
                    previous_ca = _certificate_pem(old)
            except (ValueError, TypeError):
                previous_ca = None
        ca = make_ca(now, plan.ca_days)
        files = {CERTIFICATE_KEY: ca.certificate, PRIVATE_KEY_KEY: ca.key}
        await _write(api, plan, plan.ca_secret, ca_secret, files)
        written.append(Written(plan.ca_secret, why))
    bundle = ca.certificate + (previous_ca or b"")
    leaves = [
        (plan.server_secret, plan.dns_names[0], plan.dns_names, True),
        *(
            (plan.gateway_secret(group), plan.client_name, (default_client_name(group),), False)
            for group in plan.gateway_groups
        ),
    ]
    for name, common_name, dns_names, server in leaves:
        secret = await api.get(SECRETS, plan.namespace, name)
        problem = leaf_problem(secret, ca, now, plan, dns_names)
        if problem is None:
            continue
        leaf = make_leaf(ca, now, plan.days, common_name=common_name, dns_names=dns_names, server=server)
        files = {CERTIFICATE_KEY: leaf.certificate, PRIVATE_KEY_KEY: leaf.key, CA_KEY: bundle}
        await _write(api, plan, name, secret, files)
        written.append(Written(name, problem))
    return written


def keep_certificates_in_cluster(plan: CertificatePlan) -> int:
    """`staticsite-xds certificates`: one run against the cluster; the process's exit status."""

    async def run() -> list[Written]:
        api = KubeApi.from_environment(user_agent="staticsite-xds/certificates")
        try:
            return await keep_certificates(api, plan)
        finally:
            api.close()

    try:
        written = asyncio.run(run())
    except (ApiError, CertificateError) as exc:
        print(f"staticsite-xds: {exc}", file=sys.stderr)
        return 1
    for secret in written:
        log.info("Secret %s/%s written: it was %s", plan.namespace, secret.secret, secret.reason)
    if not written:
        log.info("the certificates in %s are valid; nothing written", plan.namespace)
    return 0
