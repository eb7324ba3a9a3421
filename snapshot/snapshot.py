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

import immutables
from google.protobuf import json_format, message

from . import wire
from .resources import MESSAGE_CLASSES, SECRET_TYPE, TYPE_ORDER

REDACTED = "[redacted]"


def content_hash(*parts: bytes) -> str:
    """A short, stable hex digest of some bytes."""
    digest = hashlib.blake2b(digest_size=8)
    for part in parts:
        digest.update(part)
    return digest.hexdigest()


class Resource:
    """One Envoy resource: its name, its content version, and its bytes.

    Immutable by convention. The two wire forms (inside an Any for state of the world, inside
    a discovery Resource for delta) are made the first time a stream needs them, then kept.
    """

    __slots__ = ("_any", "_delta", "body", "name", "type_url", "version")

    def __init__(self, type_url: str, name: str, body: bytes, version: str) -> None:
        self.type_url = type_url
        self.name = name
        self.body = body
        self.version = version
        self._any: bytes | None = None
        self._delta: bytes | None = None

    @classmethod
    def of(cls, type_url: str, name: str, body: bytes, version: str | None = None) -> Resource:
        """A resource; its version is a hash of `body` unless the caller derived one from content."""
        return cls(type_url, name, body, version or content_hash(body))

    @property
    def any(self) -> bytes:
        """As a google.protobuf.Any (what state-of-the-world responses carry)."""
        if self._any is None:
            self._any = wire.any_bytes(self.type_url, self.body)
        return self._any

    @property
    def delta(self) -> bytes:
        """As an envoy.service.discovery.v3.Resource (version 1, resource 2, name 3)."""
        if self._delta is None:
            self._delta = (
                wire.field_string(1, self.version)
                + wire.field_bytes(2, self.any)
                + wire.field_string(3, self.name)
            )
        return self._delta

    def __repr__(self) -> str:
        return f"Resource({self.name!r}, version={self.version!r}, {len(self.body)} bytes)"

    @classmethod
    def from_message(cls, type_url: str, name: str, msg: message.Message) -> Resource:
        return cls.of(type_url, name, msg.SerializeToString(deterministic=True))

    def decode(self) -> message.Message:
        msg = MESSAGE_CLASSES[self.type_url]()
        msg.ParseFromString(self.body)
        return msg


def _entry_digest(name: str, version: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{name}\0{version}".encode(), digest_size=8).digest(), "big")


@dataclass(frozen=True, slots=True)
class ResourceSet:
    """All resources of one type in a snapshot, by name, with a version over all of them.

    The version is the XOR of a digest of each (name, version) pair: it depends on the
    content only (not on order or history), and a set derived from another with a few
    changes gets its version, and its resources (a persistent map that shares all it did not
    change with the set it came from), in time proportional to the changes. A derived set also says
    what changed since the set it came from (`base`), so streams that hold the base send
    just that.
    """

    type_url: str
    version: str
    resources: Mapping[str, Resource]
    digest: int = field(default=0, repr=False)
    base: str | None = None  # the version of the set this one was derived from
    changed: frozenset[str] = frozenset()  # names added or changed since `base`
    removed: frozenset[str] = frozenset()  # names removed since `base`

    @classmethod
    def of(cls, type_url: str, resources: Iterable[Resource]) -> ResourceSet:
        by_name = {r.name: r for r in resources}
        digest = 0
        for res in by_name.values():
            digest ^= _entry_digest(res.name, res.version)
        return cls(type_url, _set_version(type_url, digest), immutables.Map(by_name), digest)

    def evolve(self, upserts: Iterable[Resource], removals: Iterable[str] = ()) -> ResourceSet:
        """A new set with `upserts` added or replaced and `removals` gone; self if no change."""
        current = self.resources
        base = current if isinstance(current, immutables.Map) else immutables.Map(current)
        by_name = base.mutate()
        digest = self.digest
        changed: set[str] = set()
        removed: set[str] = set()
        for name in removals:
            old = by_name.pop(name, None)
            if old is not None:
                digest ^= _entry_digest(name, old.version)
                removed.add(name)
        for res in upserts:
            old = by_name.get(res.name)
            if old is not None and old.version == res.version:
                continue
            if old is not None:
                digest ^= _entry_digest(old.name, old.version)
            digest ^= _entry_digest(res.name, res.version)
            by_name[res.name] = res
            changed.add(res.name)
            removed.discard(res.name)
        if not changed and not removed:
            return self
        return ResourceSet(
            self.type_url,
            _set_version(self.type_url, digest),
            by_name.finish(),
            digest,
            self.version,
            frozenset(changed),
            frozenset(removed),
        )

    def __len__(self) -> int:
        return len(self.resources)


def _set_version(type_url: str, digest: int) -> str:
    return content_hash(type_url.encode(), digest.to_bytes(8, "big"))


DEFAULT_GROUP = "default"  # the gateway group of a site that names none


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A self-consistent set of Envoy resources of every type we serve, and its version.

    Each gateway group is served a snapshot of its own; `group` names it. The version is the
    content's alone: two groups served the same resources have snapshots of the same version.
    """

    version: str
    types: Mapping[str, ResourceSet]
    group: str = DEFAULT_GROUP

    @classmethod
    def of(cls, sets: Iterable[ResourceSet], group: str = DEFAULT_GROUP) -> Snapshot:
        by_type = {s.type_url: s for s in sets}
        for type_url in TYPE_ORDER:
            by_type.setdefault(type_url, ResourceSet.of(type_url, ()))
        version = content_hash(*(by_type[t].version.encode() for t in TYPE_ORDER))
        return cls(version, MappingProxyType(by_type), group)

    def of_type(self, type_url: str) -> ResourceSet:
        return self.types[type_url]

    def to_json(self) -> dict[str, Any]:
        """The snapshot as Envoy's JSON, by resource type, for humans and for `render`."""
        out: dict[str, Any] = {"version": self.version}
        for type_url in TYPE_ORDER:
            kind = type_url.rsplit(".", 1)[-1]
            out[kind] = [
                _redacted(
                    type_url, json_format.MessageToDict(res.decode(), preserving_proto_field_name=False)
                )
                for _, res in sorted(self.types[type_url].resources.items())
            ]
        return out


def _redacted(type_url: str, resource: dict[str, Any]) -> dict[str, Any]:
    """A resource for display: a certificate's private key is never shown."""
    if type_url == SECRET_TYPE and "privateKey" in resource.get("tlsCertificate", {}):
        resource["tlsCertificate"]["privateKey"] = REDACTED
    return resource


EMPTY = Snapshot.of(())
