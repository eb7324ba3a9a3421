"""RouteConfigurations kept as the cached bytes of their virtual hosts, sorted by domain: one
per listener, or one per route shard of each listener."""

from __future__ import annotations

import bisect
import hashlib

from . import resources as rs
from .snapshot import Resource, content_hash


def _digest(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class RouteTable:
    """The virtual hosts of one RouteConfiguration, as cached bytes sorted by domain.

    The version is the XOR of a digest of each virtual host, so a change costs what changed,
    not a hash of megabytes of routes.
    """

    def __init__(self, name: str, fallback: bytes, sharded: bool = False) -> None:
        self.name = name
        self.sharded = sharded
        self.vhosts: dict[str, bytes] = {}  # domain -> virtual host, framed as a route field
        self.domains: list[str] = []  # sorted
        self.framed: list[bytes] = []  # in the same order
        self.digest = 0
        self.fallback = fallback
        self.touched: set[str] = set()

    def set(self, domain: str, framed: bytes | None) -> None:
        before = self.vhosts.get(domain)
        if before == framed:
            return
        if before is not None:
            self.digest ^= _digest(before)
        if framed is None:
            del self.vhosts[domain]
        else:
            self.digest ^= _digest(framed)
            self.vhosts[domain] = framed
        self.touched.add(domain)

    def settle(self) -> bool:
        """Bring the sorted lists up to date; whether anything changed since the last call."""
        touched, self.touched = self.touched, set()
        if not touched:
            return False
        vhosts = self.vhosts
        if len(touched) > 64 or not self.domains:
            self.domains = sorted(vhosts)
            self.framed = [vhosts[d] for d in self.domains]
            return True
        for domain in touched:
            at = bisect.bisect_left(self.domains, domain)
            listed = at < len(self.domains) and self.domains[at] == domain
            framed = vhosts.get(domain)
            if framed is not None and listed:
                self.framed[at] = framed
            elif framed is not None:
                self.domains.insert(at, domain)
                self.framed.insert(at, framed)
            elif listed:
                del self.domains[at]
                del self.framed[at]
        return True

    def resource(self) -> Resource:
        header = rs.route_configuration_header(self.name, self.sharded).SerializeToString(deterministic=True)
        body = b"".join([header, *self.framed, self.fallback])
        version = content_hash(header, self.fallback, self.digest.to_bytes(8, "big"))
        return Resource.of(rs.ROUTE_TYPE, self.name, body, version)


class ListenerRoutes:
    """The virtual hosts of one listener: one RouteTable, or `shards` of them, each domain in
    the shard of its hash and each wildcard domain in every shard (a wildcard matches hosts of
    any shard), so a change rebuilds in Envoy the shard of its domain only."""

    def __init__(self, name: str, fallback: bytes, shards: int = 1) -> None:
        self.name = name
        self.shards = shards
        if shards > 1:
            self.sharded = True
            self.tables = [
                RouteTable(rs.shard_route_name(name, k), fallback, sharded=True) for k in range(shards)
            ]
        else:
            self.sharded = False
            self.tables = [RouteTable(name, fallback)]

    def tables_of(self, domain: str) -> list[RouteTable]:
        if not self.sharded:
            return self.tables
        if domain.startswith("*"):
            return self.tables
        return [self.tables[rs.shard_of(domain, self.shards)]]

    def get(self, domain: str) -> bytes | None:
        """The virtual host of `domain`, framed, or None."""
        return self.tables_of(domain)[0].vhosts.get(domain)

    def set(self, domain: str, framed: bytes | None) -> None:
        for table in self.tables_of(domain):
            table.set(domain, framed)

    def __bool__(self) -> bool:
        """Whether it serves any domain."""
        return any(table.vhosts for table in self.tables)

    def settle(self) -> list[RouteTable]:
        """The tables that changed since the last call, their sorted lists brought up to date."""
        return [table for table in self.tables if table.settle()]

    @property
    def route_names(self) -> tuple[str, ...]:
        return tuple(table.name for table in self.tables)

    def scopes(self) -> list[Resource]:
        """The route scopes (SRDS) of the shards; none without shards."""
        if not self.sharded:
            return []
        return [
            Resource.from_message(rs.SCOPED_ROUTE_TYPE, table.name, rs.route_scope(self.name, k))
            for k, table in enumerate(self.tables)
        ]
