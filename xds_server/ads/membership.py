"""Which gateway group a stream belongs to: decided from the Envoy's client certificate.

A stream's group is decided once, at the first request that carries a node. The server asks
its `Membership` with the client's identity (the names of its certificate, or None without
one) and the group the node declares (`node.cluster`); a `NotAMember` refuses the stream.

- `SingleGroup`: every stream in the default group (the server's default).
- `ClientNames`: the shared rule of the tenancy: with a certificate, the group whose client
  names meet the certificate's, and a declared group must be empty or that group; without
  one, the declared group if it exists, else the default group.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from cryptography import x509
from cryptography.x509.oid import NameOID

from snapshot.snapshot import DEFAULT_GROUP

PEM_CERTIFICATE_PROPERTY = "x509_pem_cert"  # the peer's certificate in grpc's auth context


@dataclass(frozen=True, slots=True)
class ClientIdentity:
    """Who a stream's client is: its certificate's DNS and URI subject alternative names,
    then its common name (each once, in that order)."""

    names: tuple[str, ...]

    @classmethod
    def from_certificate(cls, pem: bytes) -> ClientIdentity:
        certificate = x509.load_pem_x509_certificate(pem)
        names: list[str] = []
        try:
            sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            pass
        else:
            names.extend(sans.get_values_for_type(x509.DNSName))
            names.extend(sans.get_values_for_type(x509.UniformResourceIdentifier))
        for attribute in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
            value = attribute.value
            names.append(value if isinstance(value, str) else value.decode())
        return cls(tuple(dict.fromkeys(names)))

    @classmethod
    def from_auth_context(cls, auth: Mapping[str, Iterable[bytes]]) -> ClientIdentity | None:
        """The identity grpc's `context.auth_context()` shows; None without a client certificate."""
        pems = list(auth.get(PEM_CERTIFICATE_PROPERTY, ()))
        if not pems:
            return None
        return cls.from_certificate(pems[0])


class NotAMember(Exception):
    """A stream is refused: the message says why (for the log and the gRPC status)."""


# How a refusal's message begins, for each reason the metrics count apart.
NO_GROUP_CERTIFICATE = "the client certificate is no gateway group's"
ANOTHER_GROUP_DECLARED = "the node declares another gateway group than its client certificate's"
_REFUSAL_LABELS = {
    NO_GROUP_CERTIFICATE: "certificate_of_no_group",
    ANOTHER_GROUP_DECLARED: "declared_another_group",
}


def refusal_label(reason: str) -> str:
    """A refusal's reason as one of a few label values (`other` for any reason not named here)."""
    for beginning, label in _REFUSAL_LABELS.items():
        if reason.startswith(beginning):
            return label
    return "other"


class Membership(Protocol):
    def group_of(self, identity: ClientIdentity | None, declared: str) -> str:
        """The stream's group; `declared` is its node's cluster. Raises `NotAMember`."""
        ...


@dataclass(frozen=True, slots=True)
class SingleGroup:
    """Every stream in one group, whatever it declares or presents."""

    group: str = DEFAULT_GROUP

    def group_of(self, identity: ClientIdentity | None, declared: str) -> str:
        return self.group


@dataclass(frozen=True, slots=True)
class ClientNames:
    """Membership by the client certificate's names.

    `client_group(names)` is the group whose client names meet `names` (None: none does);
    `groups()` the groups that exist now. Both are asked at every decision, so a change of
    the groups is seen by the next stream (and by `AdsServer.recheck`).
    """

    client_group: Callable[[Iterable[str]], str | None]
    groups: Callable[[], Iterable[str]]

    def group_of(self, identity: ClientIdentity | None, declared: str) -> str:
        if identity is None:  # plain text: nothing to check the declaration against
            return declared if declared and declared in set(self.groups()) else DEFAULT_GROUP
        group = self.client_group(identity.names)
        if group is None:
            raise NotAMember(f"{NO_GROUP_CERTIFICATE} (names: {', '.join(identity.names) or 'none'})")
        if declared and declared != group:
            raise NotAMember(f"{ANOTHER_GROUP_DECLARED} ({declared!r}, not {group!r})")
        return group
