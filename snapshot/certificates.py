"""Certificates for HTTPS sites: read a PEM chain and key, and check them before Envoy sees them.

Both sources (a folder's certificate files, a Kubernetes TLS Secret) hand the bytes to
`load_certificate`, which returns a `Certificate` or raises `BadCertificate` with a message a
person can act on. A pair Envoy would refuse (not PEM, an encrypted key, a key that does not
belong to the certificate) is refused here, so it is reported on the site that names it and
never reaches the gateways.
"""

from __future__ import annotations

import dataclasses

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from .model import Certificate, StaticSite

# A PEM file (a chain, a key, a CA bundle) larger than this is not one: a Secret is at most
# 1 MiB anyway. The one limit for the sites' certificates and the xDS server's own files.
MAX_PEM_BYTES = 1024 * 1024

_KEY_TYPES = (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)


class BadCertificate(ValueError):
    """The chain or key cannot be served; the message says why."""


def secret_certificate_name(namespace: str, name: str) -> str:
    """The SDS name of the certificate of a Kubernetes TLS Secret: the same across its renewals."""
    return f"secret/{namespace}/{name}"


def load_certificate(name: str, chain: bytes, key: bytes) -> Certificate:
    """Check a PEM certificate chain and its private key; the certificate served under `name`."""
    if not chain.strip():
        raise BadCertificate("the certificate is empty")
    if not key.strip():
        raise BadCertificate("the private key is empty")
    if len(chain) > MAX_PEM_BYTES or len(key) > MAX_PEM_BYTES:
        raise BadCertificate(f"the certificate or key is larger than {MAX_PEM_BYTES} bytes")
    try:
        certs = x509.load_pem_x509_certificates(chain)
    except ValueError:
        raise BadCertificate("the certificate is not a PEM certificate chain") from None
    try:
        private = serialization.load_pem_private_key(key, password=None)
    except TypeError:
        raise BadCertificate("the private key is encrypted; the gateways need it unencrypted") from None
    except (ValueError, UnsupportedAlgorithm):
        raise BadCertificate("the private key is not a PEM private key") from None
    if not isinstance(private, _KEY_TYPES):
        raise BadCertificate(f"the private key's type ({type(private).__name__}) is not supported")
    leaf = certs[0]
    if _public(leaf.public_key()) != _public(private.public_key()):
        raise BadCertificate("the private key does not belong to the certificate (the first of the chain)")
    expiry = leaf.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    return Certificate(name, chain, key, expiry, _dns_names(leaf))


def _dns_names(leaf: x509.Certificate) -> tuple[str, ...]:
    """The DNS names of a certificate's subjectAltName (clients no longer read the subject's
    common name), lower-cased and without a trailing dot."""
    try:
        extension = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except (x509.ExtensionNotFound, ValueError):  # ValueError: a malformed extension
        return ()
    names = extension.value.get_values_for_type(x509.DNSName)
    return tuple(sorted({name.lower().rstrip(".") for name in names}))


def _public(key: object) -> bytes:
    assert hasattr(key, "public_bytes")
    data: bytes = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return data


def with_certificate(site: StaticSite, certificate: Certificate) -> StaticSite:
    """The site as served: with the certificate its `spec.tls` names."""
    if site.certificate == certificate:
        return site
    return dataclasses.replace(site, certificate=certificate)
