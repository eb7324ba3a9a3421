"""The StaticSite model: the one parser and validator of StaticSite manifests.

Every source (a folder of YAML files, the Kubernetes API) hands the raw object to
`parse_site`, which returns a `StaticSite` or raises `InvalidSite` carrying every problem
found, each naming the field at fault.
"""

from __future__ import annotations

import difflib
import itertools
import re
import reprlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, NamedTuple

GROUP = "staticsite-xds.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "StaticSite"
PLURAL = "staticsites"

DEFAULT_NAMESPACE = "default"

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")

# ObjectMeta fields a manifest may carry (the API server adds most of them itself).
_METADATA_FIELDS = frozenset(
    {
        "name",
        "namespace",
        "labels",
        "annotations",
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "managedFields",
        "finalizers",
        "ownerReferences",
        "generateName",
        "selfLink",
    }
)
_TOP_FIELDS = frozenset({"apiVersion", "kind", "metadata", "spec", "status"})
_SPEC_FIELDS = frozenset({"domain", "backend"})
_BACKEND_FIELDS = frozenset({"serviceName", "servicePort"})

# At most this many unknown fields of one mapping are reported one by one; the rest in one line.
MAX_UNKNOWN_FIELDS = 10

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_MAX_SHOWN = 200  # characters of a value shown in a message

_Reporter = Callable[[str, str], None]


class SiteKey(NamedTuple):
    """The identity of a site: its namespace and name (a tuple: hashed and compared in C)."""

    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


class Backend(NamedTuple):
    """The Kubernetes Service (in the site's namespace) and port that serve a site."""

    namespace: str
    service_name: str
    service_port: int

    def __str__(self) -> str:
        return f"{self.namespace}/{self.service_name}:{self.service_port}"


@dataclass(frozen=True, slots=True)
class StaticSite:
    """One valid StaticSite, as every source produces it."""

    key: SiteKey
    domain: str
    backend: Backend
    generation: int = 0
    creation_timestamp: str | None = None
    origin: str = ""


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with one manifest: where it came from, which field, and why."""

    origin: str
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.origin}: " if self.origin else ""
        field = f"{self.field}: " if self.field else ""
        return f"{where}{field}{self.message}"


class InvalidSite(ValueError):
    """A StaticSite manifest failed validation; `problems` lists every problem found."""

    def __init__(self, problems: list[Problem], key: SiteKey | None = None) -> None:
        super().__init__("; ".join(str(p) for p in problems))
        self.problems = problems
        self.key = key


def is_static_site(doc: Mapping[str, Any]) -> bool:
    """True when a parsed document declares itself a StaticSite (of any API version)."""
    return doc.get("kind") == KIND


def site_key_of(doc: Mapping[str, Any]) -> SiteKey | None:
    """The identity a document claims, if it names one; used to keep the last good version."""
    meta = doc.get("metadata")
    if not isinstance(meta, Mapping):
        return None
    name = meta.get("name")
    namespace = meta.get("namespace", DEFAULT_NAMESPACE)
    if isinstance(name, str) and name and isinstance(namespace, str) and namespace:
        return SiteKey(namespace, name)
    return None


def normalize_domain(domain: str) -> str:
    """Domains compare case-insensitively; this is the one spelling we keep and emit.

    Only ASCII letters are folded: `str.lower` would also turn the Kelvin sign (U+212A) into
    a `k`, letting a non-ASCII spelling pass as an ASCII domain.
    """
    return domain.translate(_ASCII_LOWER)


class _Shown(reprlib.Repr):
    """A value as a problem message shows it: short, escaped, and cheap whatever its size.

    A manifest value may be a string of a megabyte, a structure nested or shared a million
    times over (YAML aliases), or an integer too long to print; its display is bounded.
    Mappings and sets are shown in their own order: sorting a huge one would cost more than
    the display is worth.
    """

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel = 3
        self.maxstring = 80
        self.maxother = 80
        self.maxlong = 40
        self.maxlist = self.maxtuple = self.maxdict = self.maxset = self.maxfrozenset = 4

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 128:
            return f"<an integer of {x.bit_length()} bits>"
        return super().repr_int(x, level)

    def repr_dict(self, x: dict[Any, Any], level: int) -> str:
        if not x:
            return "{}"
        if level <= 0:
            return "{...}"
        pieces = [
            f"{self.repr1(k, level - 1)}: {self.repr1(v, level - 1)}"
            for k, v in itertools.islice(x.items(), self.maxdict)
        ]
        more = ", ..." if len(x) > self.maxdict else ""
        return "{" + ", ".join(pieces) + more + "}"

    def repr_set(self, x: set[Any], level: int) -> str:
        if not x:
            return "set()"
        if level <= 0:
            return "{...}"
        pieces = [self.repr1(v, level - 1) for v in itertools.islice(x, self.maxset)]
        return "{" + ", ".join(pieces) + (", ..." if len(x) > self.maxset else "") + "}"


_shown = _Shown()


def describe(value: Any) -> str:
    """A bounded, escaped display of any manifest value, for messages and logs."""
    text = _shown.repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def parse_site(doc: Any, origin: str = "") -> StaticSite:
    """Validate one StaticSite document and return the site, or raise `InvalidSite`."""
    problems: list[Problem] = []

    def bad(field: str, message: str) -> None:
        problems.append(Problem(origin, field, message))

    if not isinstance(doc, Mapping):
        raise InvalidSite([Problem(origin, "", f"expected a mapping, got {_type_name(doc)}")])

    _check_unknown(doc, _TOP_FIELDS, "", bad)
    if doc.get("kind") != KIND:
        bad("kind", f"must be {KIND!r}, got {describe(doc.get('kind'))}")
    if doc.get("apiVersion") != API_VERSION:
        bad("apiVersion", f"must be {API_VERSION!r}, got {describe(doc.get('apiVersion'))}")

    name, namespace, generation, created = _parse_metadata(doc.get("metadata"), bad)
    key = SiteKey(namespace, name) if name and namespace else None

    spec = doc.get("spec")
    domain = ""
    backend: Backend | None = None
    if not isinstance(spec, Mapping):
        bad("spec", "is required" if spec is None else f"must be a mapping, got {_type_name(spec)}")
    else:
        _check_unknown(spec, _SPEC_FIELDS, "spec.", bad)
        domain = _parse_domain(spec.get("domain"), bad)
        backend = _parse_backend(spec.get("backend"), namespace, bad)

    if problems or key is None or backend is None:
        raise InvalidSite(problems, key)
    return StaticSite(
        key=key,
        domain=domain,
        backend=backend,
        generation=generation,
        creation_timestamp=created,
        origin=origin,
    )


def _parse_metadata(meta: Any, bad: _Reporter) -> tuple[str, str, int, str | None]:
    if not isinstance(meta, Mapping):
        bad("metadata", "is required" if meta is None else f"must be a mapping, got {_type_name(meta)}")
        return "", "", 0, None
    _check_unknown(meta, _METADATA_FIELDS, "metadata.", bad)
    name = meta.get("name")
    if name is None:
        bad("metadata.name", "is required")
        name = ""
    elif not isinstance(name, str) or not _is_dns1123_subdomain(name):
        bad(
            "metadata.name",
            f"{describe(name)} is not a valid name (lower-case letters, digits, '-' and '.', "
            "starting and ending with a letter or digit, at most 253 characters)",
        )
        name = ""
    namespace = meta.get("namespace", DEFAULT_NAMESPACE)
    if not isinstance(namespace, str) or not _is_label(namespace, _DNS1123_LABEL):
        bad(
            "metadata.namespace",
            f"{describe(namespace)} is not a valid namespace (a DNS-1123 label: lower-case "
            "letters, digits and '-', at most 63 characters)",
        )
        namespace = ""
    generation = meta.get("generation", 0)
    if not isinstance(generation, int) or isinstance(generation, bool):
        generation = 0
    return name, namespace, generation, _timestamp(meta.get("creationTimestamp"), bad)


def _timestamp(value: Any, bad: _Reporter) -> str | None:
    """A creationTimestamp as the API server writes it (RFC 3339, UTC, to the second).

    Conflicts compare timestamps as text, so every spelling must be the same: YAML reads an
    unquoted timestamp as a datetime (whose str() has a space and an offset, and sorts before
    a same-day "...T...Z" string), and a hand-written one may carry another offset. A string
    that is no timestamp is kept as it is; a value of another type is a problem.
    """
    field = "metadata.creationTimestamp"
    if value is None:
        return None
    if isinstance(value, str):
        text: str = value
        try:
            value = datetime.fromisoformat(text)
        except ValueError:
            return text
    if isinstance(value, datetime):
        moment = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        try:
            return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        except OverflowError:  # 0001-01-01T00:00:00+01:00 is before the first representable UTC
            bad(field, f"{value.isoformat()} is out of range")
            return None
    if isinstance(value, date):
        return f"{value.isoformat()}T00:00:00Z"
    bad(field, f"must be a timestamp (RFC 3339), got {_type_name(value)}")
    return None


def _parse_domain(value: Any, bad: _Reporter) -> str:
    field = "spec.domain"
    if value is None:
        bad(field, "is required")
        return ""
    if not isinstance(value, str):
        bad(field, f"must be a string, got {_type_name(value)}")
        return ""
    domain = normalize_domain(value)
    shown = describe(value)
    if not domain:
        bad(field, "must not be empty")
    elif len(domain) > 253:
        bad(field, f"is {len(domain)} characters long; a domain has at most 253")
    elif domain != domain.strip():
        bad(field, f"{shown} must not have spaces or line breaks around it")
    elif domain.endswith("."):
        bad(field, f"{shown} must not end with a dot")
    elif not domain.isascii():
        bad(
            field,
            f"{shown} has characters other than ASCII letters, digits, '-' and '.'; write an "
            "internationalized domain in its IDNA form (labels starting with 'xn--')",
        )
    else:
        for label in domain.split("."):
            if not _is_label(label, _DNS1123_LABEL):
                bad(
                    field,
                    f"{shown} is not a DNS name: label {describe(label)} must be 1-63 letters, "
                    "digits or '-', starting and ending with a letter or digit",
                )
                break
    return domain


def _parse_backend(value: Any, namespace: str, bad: _Reporter) -> Backend | None:
    if value is None:
        bad("spec.backend", "is required")
        return None
    if not isinstance(value, Mapping):
        bad("spec.backend", f"must be a mapping, got {_type_name(value)}")
        return None
    _check_unknown(value, _BACKEND_FIELDS, "spec.backend.", bad)
    ok = True
    service = value.get("serviceName")
    if service is None:
        bad("spec.backend.serviceName", "is required")
        ok = False
    elif not isinstance(service, str) or not _is_label(service, _DNS1035_LABEL):
        bad(
            "spec.backend.serviceName",
            f"{describe(service)} is not a valid Service name (a DNS-1035 label: lower-case "
            "letters, digits and '-', starting with a letter, at most 63 characters)",
        )
        ok = False
    port = value.get("servicePort")
    if port is None:
        bad("spec.backend.servicePort", "is required")
        ok = False
    elif not isinstance(port, int) or isinstance(port, bool):
        bad("spec.backend.servicePort", f"must be an integer from 1 to 65535, got {describe(port)}")
        ok = False
    elif not 1 <= port <= 65535:
        bad("spec.backend.servicePort", f"must be from 1 to 65535, got {describe(port)}")
        ok = False
    if not ok or not namespace or not isinstance(service, str) or not isinstance(port, int):
        return None
    return Backend(namespace, service, port)


def _check_unknown(doc: Mapping[Any, Any], known: frozenset[str], prefix: str, bad: _Reporter) -> None:
    unknown = [field for field in doc if not (isinstance(field, str) and field in known)]
    for field in unknown[:MAX_UNKNOWN_FIELDS]:
        plain = isinstance(field, str) and len(field) <= 64  # no known field is longer
        hint = difflib.get_close_matches(field, sorted(known), n=1) if plain else []
        suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
        bad(f"{prefix}{field_name(field)}", f"unknown field{suggestion}")
    if len(unknown) > MAX_UNKNOWN_FIELDS:
        more = len(unknown) - MAX_UNKNOWN_FIELDS - 1
        bad(
            f"{prefix}{field_name(unknown[MAX_UNKNOWN_FIELDS])}", f"unknown field, and {more} more not listed"
        )


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_$@-][A-Za-z0-9_$@/-]{0,62}")


def field_name(key: Any) -> str:
    """A mapping key as one step of a field path: as it is when plain, else quoted and bounded."""
    if isinstance(key, str) and _PLAIN_KEY.fullmatch(key):
        return key
    return describe(key)


def _is_label(value: str, pattern: re.Pattern[str]) -> bool:
    # fullmatch, not match: `$` also matches before a trailing newline ("web\n").
    return len(value) <= 63 and pattern.fullmatch(value) is not None


def _is_dns1123_subdomain(value: str) -> bool:
    return 0 < len(value) <= 253 and all(_is_label(part, _DNS1123_LABEL) for part in value.split("."))


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "an integer"}.get(
        type(value), type(value).__name__
    )
