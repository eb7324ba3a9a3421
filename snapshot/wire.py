"""Protobuf wire-format framing, so that serialized resources are reused, never re-encoded.

A protobuf message is the concatenation of its encoded fields, and a repeated or embedded
message field is a tag, a length and the embedded bytes. That lets a RouteConfiguration of
ten thousand virtual hosts be assembled from the cached bytes of each host, and a
DiscoveryResponse from the cached bytes of each resource, without building message objects.
"""

from __future__ import annotations

from collections.abc import Iterable

_WIRE_LEN = 2


def _encode_varint(value: int) -> bytes:
    if value < 0:
        raise ValueError("varint takes a non-negative integer")
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


_SMALL = [_encode_varint(i) for i in range(1 << 14)]


def varint(value: int) -> bytes:
    """Encode a non-negative integer as a protobuf varint."""
    if 0 <= value < 16384:
        return _SMALL[value]
    return _encode_varint(value)


def field_bytes(number: int, payload: bytes) -> bytes:
    """One length-delimited field (bytes, string or embedded message) with its tag."""
    return varint((number << 3) | _WIRE_LEN) + varint(len(payload)) + payload


def field_string(number: int, text: str) -> bytes:
    """One string field; empty strings are omitted, as proto3 does."""
    return field_bytes(number, text.encode()) if text else b""


def repeated(number: int, payloads: Iterable[bytes]) -> bytes:
    """A repeated embedded-message field from already serialized messages."""
    tag = varint((number << 3) | _WIRE_LEN)
    return b"".join(tag + varint(len(p)) + p for p in payloads)


def any_bytes(type_url: str, value: bytes) -> bytes:
    """A serialized google.protobuf.Any holding `value` (field 1 type_url, field 2 value)."""
    return field_string(1, type_url) + field_bytes(2, value)
