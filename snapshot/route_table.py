"""One RouteConfiguration kept as the cached bytes of its virtual hosts, sorted by domain."""

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

    def __init__(self, name: str, fallback: bytes) -> None:
        self.name = name
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
        header = rs.route_configuration_header(self.name).SerializeToString(deterministic=True)
        body = b"".join([header, *self.framed, self.fallback])
        version = content_hash(header, self.fallback, self.digest.to_bytes(8, "big"))
        return Resource.of(rs.ROUTE_TYPE, self.name, body, version)
