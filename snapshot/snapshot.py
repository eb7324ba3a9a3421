"""Immutable, versioned snapshots of Envoy resources, held as serialized bytes.

Every resource is serialized once, when it is built, and its bytes are shared by every
snapshot that still contains it and by every stream that sends it. Versions are hashes of
content, so the same sites give the same versions in any process.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from google.protobuf import json_format, message

from . import wire
from .resources import MESSAGE_CLASSES, TYPE_ORDER


def content_hash(*parts: bytes) -> str:
    """A short, stable hex digest of some bytes."""
    digest = hashlib.blake2b(digest_size=8)
    for part in parts:
        digest.update(part)
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class Resource:
    """One Envoy resource: its name, its content version, and its bytes (plain and as Any)."""

    type_url: str
    name: str
    body: bytes
    version: str = field(default="")
    any: bytes = field(default=b"", repr=False)

    @classmethod
    def of(cls, type_url: str, name: str, body: bytes) -> Resource:
        return cls(type_url, name, body, content_hash(body), wire.any_bytes(type_url, body))

    @classmethod
    def from_message(cls, type_url: str, name: str, msg: message.Message) -> Resource:
        return cls.of(type_url, name, msg.SerializeToString(deterministic=True))

    def decode(self) -> message.Message:
        msg = MESSAGE_CLASSES[self.type_url]()
        msg.ParseFromString(self.body)
        return msg


@dataclass(frozen=True, slots=True)
class ResourceSet:
    """All resources of one type in a snapshot, by name, with a version over all of them."""

    type_url: str
    version: str
    resources: Mapping[str, Resource]

    @classmethod
    def of(cls, type_url: str, resources: Iterable[Resource]) -> ResourceSet:
        by_name = {r.name: r for r in sorted(resources, key=lambda r: r.name)}
        digest = hashlib.blake2b(digest_size=8)
        digest.update(type_url.encode())
        for res in by_name.values():
            digest.update(res.name.encode() + b"\0" + res.version.encode() + b"\0")
        return cls(type_url, digest.hexdigest(), MappingProxyType(by_name))

    def __len__(self) -> int:
        return len(self.resources)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A self-consistent set of Envoy resources of every type we serve, and its version."""

    version: str
    types: Mapping[str, ResourceSet]

    @classmethod
    def of(cls, sets: Iterable[ResourceSet]) -> Snapshot:
        by_type = {s.type_url: s for s in sets}
        for type_url in TYPE_ORDER:
            by_type.setdefault(type_url, ResourceSet.of(type_url, ()))
        version = content_hash(*(by_type[t].version.encode() for t in TYPE_ORDER))
        return cls(version, MappingProxyType(by_type))

    def of_type(self, type_url: str) -> ResourceSet:
        return self.types[type_url]

    def to_json(self) -> dict[str, Any]:
        """The snapshot as Envoy's JSON, by resource type, for humans and for `render`."""
        out: dict[str, Any] = {"version": self.version}
        for type_url in TYPE_ORDER:
            kind = type_url.rsplit(".", 1)[-1]
            out[kind] = [
                json_format.MessageToDict(res.decode(), preserving_proto_field_name=False)
                for res in self.types[type_url].resources.values()
            ]
        return out


EMPTY = Snapshot.of(())
