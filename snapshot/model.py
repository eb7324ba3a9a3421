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
from dataclasses import field as _field
from datetime import UTC, date, datetime
from typing import Any, NamedTuple, TypeGuard

GROUP = "staticsite-xds.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "StaticSite"
PLURAL = "staticsites"

DEFAULT_NAMESPACE = "default"

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")

# ObjectMeta fields a manifest may carry (the API server adds most of them itself).
METADATA_FIELDS = frozenset(
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
_SPEC_FIELDS = frozenset(
    {
        "domain",
        "backend",
        "aliases",
        "redirectFrom",
        "pathPrefix",
        "rewritePrefix",
        "tls",
        "responseHeaders",
        "compression",
        "requestTimeout",
        "connectRetries",
        "gatewayGroup",
    }
)
_BACKEND_FIELDS = frozenset({"serviceName", "servicePort", "healthCheck"})
_HEALTH_CHECK_FIELDS = frozenset({"path", "interval", "unhealthyThreshold", "healthyThreshold"})
_TLS_FIELDS = frozenset({"secretName", "certificateFile", "keyFile", "allowInsecure"})
_HEADERS_FIELDS = frozenset({"set", "remove"})

# The same patterns are in the CRD's schema (crds/staticsite.yaml); a test holds them equal.
_LABEL = r"[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?"
HOST_PATTERN = rf"(\*\.)?{_LABEL}(\.{_LABEL})*"
# A DNS-1123 label (a namespace, a gateway group): lower case, at most 63 characters.
DNS1123_LABEL_PATTERN = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
_SEGMENT_CHAR = r"A-Za-z0-9_~!$&()*+,;=:@-"
# "/" or "/a/b" (a trailing "/" is allowed and ignored); a segment is not only dots.
PATH_PREFIX_PATTERN = rf"(/[.{_SEGMENT_CHAR}]*[{_SEGMENT_CHAR}][.{_SEGMENT_CHAR}]*)*/?"
MAX_PATH_PREFIX = 256
HEALTH_PATH_PATTERN = r"/[!-~]*"  # printable ASCII without spaces
DURATION_PATTERN = r"(0|[1-9][0-9]{0,5})(ms|s|m|h)"
_DURATION_UNITS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}
HEADER_NAME_PATTERN = r"[A-Za-z0-9!#$%&'*+.^_`|~-]+"
HEADER_VALUE_PATTERN = r"[ -~]*"  # printable ASCII, spaces included
MAX_HEADER_NAME = 256
MAX_HEADER_VALUE = 4096
MAX_HEADERS = 32
MAX_DOMAINS = 16  # in each of aliases and redirectFrom
MAX_CONNECT_RETRIES = 10
MAX_THRESHOLD = 10
_FILE_PATTERN = r"[^\x00\n\r]+"
MAX_FILE_PATH = 1024

# At most this many unknown fields of one mapping are reported one by one; the rest in one line.
MAX_UNKNOWN_FIELDS = 10

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_MAX_SHOWN = 200  # characters of a value shown in a message

Reporter = Callable[[str, str], None]


class SiteKey(NamedTuple):
    """The identity of a site: its namespace and name (a tuple: hashed and compared in C)."""

    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


class HealthCheck(NamedTuple):
    """An active HTTP health check of a backend: GET `path` every `interval_ms`."""

    path: str
    interval_ms: int = 10_000
    unhealthy_threshold: int = 3
    healthy_threshold: int = 2


class Backend(NamedTuple):
    """The Kubernetes Service (in the site's namespace) and port that serve a site."""

    namespace: str
    service_name: str
    service_port: int
    health_check: HealthCheck | None = None

    def __str__(self) -> str:
        return f"{self.namespace}/{self.service_name}:{self.service_port}"


class TlsSpec(NamedTuple):
    """Where a site's certificate comes from: a Kubernetes Secret, or two files (folder source)."""

    secret_name: str | None = None
    certificate_file: str | None = None
    key_file: str | None = None
    allow_insecure: bool = False


@dataclass(frozen=True, slots=True)
class Certificate:
    """A certificate chain and its private key (PEM), as the gateways receive them over SDS.

    `name` is the SDS resource name; it stays the same when the content is renewed, so that a
    renewal reaches Envoy as a new secret under the old name, with no listener change.
    """

    name: str
    chain: bytes = _field(repr=False)
    key: bytes = _field(repr=False)
    not_after: str = ""  # the leaf certificate's expiry (RFC 3339), for messages
    # The DNS names the leaf certificate is for (its subjectAltName), lower-cased; None: not
    # known (not read). Made from the chain, so not compared.
    names: tuple[str, ...] | None = _field(default=None, compare=False)

    def covers(self, host: str) -> bool:
        """Whether clients accept this certificate for `host` (RFC 6125): one of its names, or
        a wildcard `*.rest` standing for one whole label before `rest`. A wildcard host
        (`*.docs.example.com`) needs that same wildcard. True when the names are not known."""
        if self.names is None:
            return True
        host = host.lower()
        label, _, rest = host.partition(".")
        return any(
            name == host or (name.startswith("*.") and label not in ("", "*") and rest == name[2:])
            for name in self.names
        )


@dataclass(frozen=True, slots=True)
class NamedCertificate(Certificate):
    """A certificate known by its SDS name alone: its content is held elsewhere (a Secret in
    the cluster, when manifests are checked offline). Enough to judge a site (which domains
    share a certificate), never to serve one: it has no chain and no key, and its DNS names
    are not known."""

    chain: bytes = _field(default=b"", repr=False)
    key: bytes = _field(default=b"", repr=False)


FIRST_SEEN = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def recorded_first_seen(value: object) -> str | None:
    """A `status.firstSeen` as the control plane writes it, or None for anything else (the
    status is the control plane's own; one it did not write is not trusted for order)."""
    return value if isinstance(value, str) and FIRST_SEEN.match(value) else None


def seniority(site: StaticSite) -> tuple[bool, str, bool, str, str, str]:
    """The order of age among sites, the oldest first: by creationTimestamp (whole seconds
    on a real API server), then by when a control plane first saw the site (which orders
    sites created in the same second, and the sites of a folder), then by namespace/name.
    A site without a creation time or a first sighting is younger than any with one."""
    created = site.creation_timestamp
    seen = site.first_seen
    return (created is None, created or "", seen is None, seen or "", site.key.namespace, site.key.name)


@dataclass(frozen=True, slots=True)
class StaticSite:
    """One valid StaticSite, as every source produces it."""

    key: SiteKey
    domain: str
    backend: Backend
    generation: int = 0
    creation_timestamp: str | None = None
    # When a control plane first saw the site (RFC 3339, microseconds, UTC): orders sites
    # declared in the same second (see `seniority`). Kept in the status (`firstSeen`) in a
    # cluster; filled in by the source.
    first_seen: str | None = None
    origin: str = ""
    aliases: tuple[str, ...] = ()  # more domains served the same way
    redirect_from: tuple[str, ...] = ()  # domains answered with a 301 to `domain`
    path_prefix: str = "/"  # "/" or "/a/b": no trailing slash
    rewrite_prefix: str | None = None  # what the backend sees in place of `path_prefix`
    tls: TlsSpec | None = None
    certificate: Certificate | None = None  # filled in by the source from `tls`
    headers_set: tuple[tuple[str, str], ...] = ()  # response headers set (name lower-cased, value)
    headers_remove: tuple[str, ...] = ()  # response headers removed (lower-cased)
    compression: bool = True
    request_timeout_ms: int | None = None  # None: Envoy's default (15 s); 0: no timeout
    connect_retries: int = 0  # retries when the backend cannot be connected to
    gateway_group: str | None = None  # the gateway group that serves it; None: the default group

    @property
    def hosts(self) -> tuple[str, ...]:
        """The domains that serve the site's content: `domain`, then `aliases`."""
        return (self.domain, *self.aliases)

    @property
    def https_only(self) -> bool:
        """Plain HTTP answers with a redirect to HTTPS."""
        return self.tls is not None and not self.tls.allow_insecure


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with one manifest: where it came from, which field, and why."""

    origin: str
    field: str
    message: str
    reason: str = ""  # the status reason it calls for, when not the default (InvalidSpec)

    def __str__(self) -> str:
        where = f"{self.origin}: " if self.origin else ""
        field = f"{self.field}: " if self.field else ""
        return f"{where}{field}{self.message}"


class InvalidDeclaration(ValueError):
    """A manifest failed validation; `problems` lists every problem found."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(str(p) for p in problems))
        self.problems = problems


class InvalidSite(InvalidDeclaration):
    """A StaticSite manifest failed validation; `key`: the identity it claims, if any."""

    def __init__(self, problems: list[Problem], key: SiteKey | None = None) -> None:
        super().__init__(problems)
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
        raise InvalidSite([Problem(origin, "", f"expected a mapping, got {type_name(doc)}")])

    check_unknown(doc, _TOP_FIELDS, "", bad)
    check_kind(doc, KIND, bad)

    name, namespace, generation, created = _parse_metadata(doc.get("metadata"), bad)
    key = SiteKey(namespace, name) if name and namespace else None
    status = doc.get("status")
    first_seen = recorded_first_seen(status.get("firstSeen") if isinstance(status, dict) else None)

    spec = doc.get("spec")
    if not isinstance(spec, Mapping):
        bad("spec", "is required" if spec is None else f"must be a mapping, got {type_name(spec)}")
        raise InvalidSite(problems, key)
    check_unknown(spec, _SPEC_FIELDS, "spec.", bad)
    domain = parse_host(spec.get("domain"), "spec.domain", bad, required=True)
    backend = _parse_backend(spec.get("backend"), namespace, bad)
    aliases = _parse_hosts(spec.get("aliases"), "spec.aliases", bad)
    redirect_from = _parse_hosts(spec.get("redirectFrom"), "spec.redirectFrom", bad)
    _check_distinct(domain, aliases, redirect_from, bad)
    if redirect_from and domain.startswith("*."):
        bad("spec.redirectFrom", f"cannot redirect to the wildcard domain {domain}; name one domain")
    prefix = _parse_path(spec.get("pathPrefix"), "spec.pathPrefix", bad) or "/"
    rewrite = _parse_path(spec.get("rewritePrefix"), "spec.rewritePrefix", bad)
    tls = _parse_tls(spec.get("tls"), bad)
    headers_set, headers_remove = _parse_headers(spec.get("responseHeaders"), bad)
    compression = _parse_bool(spec.get("compression"), "spec.compression", bad, default=True)
    timeout = _parse_duration(spec.get("requestTimeout"), "spec.requestTimeout", bad)
    retries = _parse_int(spec.get("connectRetries"), "spec.connectRetries", 0, MAX_CONNECT_RETRIES, bad)
    group = _parse_gateway_group_name(spec.get("gatewayGroup"), bad)

    if problems or key is None or backend is None:
        raise InvalidSite(problems, key)
    return StaticSite(
        key=key,
        domain=domain,
        backend=backend,
        generation=generation,
        creation_timestamp=created,
        first_seen=first_seen,
        origin=origin,
        aliases=aliases,
        redirect_from=redirect_from,
        path_prefix=prefix,
        rewrite_prefix=rewrite,
        tls=tls,
        headers_set=headers_set,
        headers_remove=headers_remove,
        compression=compression,
        request_timeout_ms=timeout,
        connect_retries=retries or 0,
        gateway_group=group,
    )


def check_kind(doc: Mapping[Any, Any], kind: str, bad: Reporter) -> None:
    """A manifest declares `kind`, of this project's API version."""
    if doc.get("kind") != kind:
        bad("kind", f"must be {kind!r}, got {describe(doc.get('kind'))}")
    if doc.get("apiVersion") != API_VERSION:
        bad("apiVersion", f"must be {API_VERSION!r}, got {describe(doc.get('apiVersion'))}")


def parse_metadata_name(meta: Any, bad: Reporter, valid: Callable[[str], bool], rule: str) -> str | None:
    """A manifest's metadata.name ("" with a problem when it is missing or not `valid`, and
    `rule` says what a name is); None when the metadata is no mapping. Unknown metadata
    fields are problems too."""
    if not isinstance(meta, Mapping):
        bad("metadata", "is required" if meta is None else f"must be a mapping, got {type_name(meta)}")
        return None
    check_unknown(meta, METADATA_FIELDS, "metadata.", bad)
    name = meta.get("name")
    if name is None:
        bad("metadata.name", "is required")
        return ""
    if not isinstance(name, str) or not valid(name):
        bad("metadata.name", f"{describe(name)} is not {rule}")
        return ""
    return name


def metadata_generation(meta: Mapping[str, Any]) -> int:
    """metadata.generation, or 0 when it has none (a file, not the API server, wrote it)."""
    generation = meta.get("generation", 0)
    return 0 if not isinstance(generation, int) or isinstance(generation, bool) else generation


def _parse_metadata(meta: Any, bad: Reporter) -> tuple[str, str, int, str | None]:
    name = parse_metadata_name(
        meta,
        bad,
        is_dns1123_subdomain,
        "a valid name (lower-case letters, digits, '-' and '.', "
        "starting and ending with a letter or digit, at most 253 characters)",
    )
    if name is None:
        return "", "", 0, None
    namespace = meta.get("namespace", DEFAULT_NAMESPACE)
    if not isinstance(namespace, str) or not _is_label(namespace, _DNS1123_LABEL):
        bad(
            "metadata.namespace",
            f"{describe(namespace)} is not a valid namespace (a DNS-1123 label: lower-case "
            "letters, digits and '-', at most 63 characters)",
        )
        namespace = ""
    return name, namespace, metadata_generation(meta), _timestamp(meta.get("creationTimestamp"), bad)


def _timestamp(value: Any, bad: Reporter) -> str | None:
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
    bad(field, f"must be a timestamp (RFC 3339), got {type_name(value)}")
    return None


def parse_host(value: Any, field: str, bad: Reporter, *, required: bool = False) -> str:
    """A domain: a DNS name, or a wildcard `*.` followed by one; compared in lower case."""
    if value is None:
        if required:
            bad(field, "is required")
        return ""
    if not isinstance(value, str):
        bad(field, f"must be a string, got {type_name(value)}")
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
        labels = domain.split(".")
        if labels[0] == "*" and len(labels) > 1:
            labels = labels[1:]
        for label in labels:
            if label == "*" or "*" in label:
                bad(field, f"{shown}: a wildcard is only allowed as the whole first label ('*.example.com')")
                return ""
            if not _is_label(label, _DNS1123_LABEL):
                bad(
                    field,
                    f"{shown} is not a DNS name: label {describe(label)} must be 1-63 letters, "
                    "digits or '-', starting and ending with a letter or digit",
                )
                return ""
        return domain
    return ""


def _parse_hosts(value: Any, field: str, bad: Reporter) -> tuple[str, ...]:
    if not is_collection(value, list, field, "a list of domains", "domains", MAX_DOMAINS, bad):
        return ()
    # An invalid entry stays in place (empty), so later messages name the right positions.
    return tuple(
        parse_host(item, f"{field}[{index}]", bad, required=True) for index, item in enumerate(value)
    )


def _check_distinct(
    domain: str, aliases: tuple[str, ...], redirect_from: tuple[str, ...], bad: Reporter
) -> None:
    """Each domain appears once among spec.domain, spec.aliases and spec.redirectFrom."""
    seen: dict[str, str] = {domain: "spec.domain"} if domain else {}
    for name, hosts in (("spec.aliases", aliases), ("spec.redirectFrom", redirect_from)):
        for index, host in enumerate(hosts):
            where = f"{name}[{index}]"
            if not host:
                continue
            if host in seen:
                bad(where, f"{host} is already listed in {seen[host]}")
            else:
                seen[host] = where


def _parse_path(value: Any, field: str, bad: Reporter) -> str | None:
    """A path prefix: "/" or "/a/b" (normalized without a trailing slash); None if absent."""
    if value is None:
        return None
    if not isinstance(value, str):
        bad(field, f"must be a string, got {type_name(value)}")
        return None
    if not value or len(value) > MAX_PATH_PREFIX or not re.fullmatch(PATH_PREFIX_PATTERN, value):
        bad(
            field,
            f"{describe(value)} is not a path prefix: it starts with '/', has segments of letters, "
            f"digits and -._~!$&()*+,;=:@ (not only dots), and is at most {MAX_PATH_PREFIX} characters",
        )
        return None
    return value.rstrip("/") or "/"


def _parse_tls(value: Any, bad: Reporter) -> TlsSpec | None:
    field = "spec.tls"
    if value is None:
        return None
    if not isinstance(value, Mapping):
        bad(field, f"must be a mapping, got {type_name(value)}")
        return None
    check_unknown(value, _TLS_FIELDS, "spec.tls.", bad)
    secret = value.get("secretName")
    if secret is not None and (not isinstance(secret, str) or not is_dns1123_subdomain(secret)):
        bad("spec.tls.secretName", f"{describe(secret)} is not a valid Secret name")
        secret = None
    files: list[str | None] = []
    for name in ("certificateFile", "keyFile"):
        path = value.get(name)
        if path is not None and (
            not isinstance(path, str) or len(path) > MAX_FILE_PATH or not re.fullmatch(_FILE_PATTERN, path)
        ):
            bad(f"spec.tls.{name}", f"{describe(path)} is not a file path")
            path = None
        files.append(path)
    certificate_file, key_file = files
    given = {name for name in _TLS_FIELDS if value.get(name) is not None}  # null is absent, as in the API
    has_files = bool(given & {"certificateFile", "keyFile"})
    if "secretName" in given and has_files:
        bad(field, "give either secretName or certificateFile and keyFile, not both")
    elif "secretName" not in given and not {"certificateFile", "keyFile"} <= given:
        bad(field, "needs secretName (Kubernetes) or both certificateFile and keyFile (a folder of sites)")
    allow = _parse_bool(value.get("allowInsecure"), "spec.tls.allowInsecure", bad, default=False)
    return TlsSpec(secret, certificate_file, key_file, allow)


def _parse_headers(value: Any, bad: Reporter) -> tuple[tuple[tuple[str, str], ...], tuple[str, ...]]:
    if value is None:
        return (), ()
    if not isinstance(value, Mapping):
        bad("spec.responseHeaders", f"must be a mapping, got {type_name(value)}")
        return (), ()
    check_unknown(value, _HEADERS_FIELDS, "spec.responseHeaders.", bad)
    set_value = value.get("set")
    chosen: dict[str, str] = {}  # lower-cased name -> value
    field = "spec.responseHeaders.set"
    if is_collection(
        set_value, Mapping, field, "a mapping of header names to values", "headers", MAX_HEADERS, bad
    ):
        for name, header in set_value.items():
            where = f"{field}.{field_name(name)}"
            if not _header_name_ok(name, where, bad):
                continue
            if not isinstance(header, str):
                bad(where, f"must be a string, got {type_name(header)}")
            elif len(header) > MAX_HEADER_VALUE or not re.fullmatch(HEADER_VALUE_PATTERN, header):
                bad(
                    where,
                    f"{describe(header)} is not a header value (printable ASCII, at most "
                    f"{MAX_HEADER_VALUE} characters)",
                )
            elif name.lower() in chosen:
                bad(where, f"header {name} is set twice (header names ignore case)")
            else:
                chosen[name.lower()] = header
    remove_value = value.get("remove")
    removed: list[str] = []
    field = "spec.responseHeaders.remove"
    if is_collection(remove_value, list, field, "a list of header names", "headers", MAX_HEADERS, bad):
        for index, name in enumerate(remove_value):
            where = f"{field}[{index}]"
            if not _header_name_ok(name, where, bad):
                continue
            lower = name.lower()
            if lower in chosen:
                bad(where, f"header {name} is both set and removed")
            elif lower in removed:
                bad(where, f"header {name} is listed twice")
            else:
                removed.append(lower)
    return tuple(chosen.items()), tuple(removed)


def is_collection(
    value: Any,
    kind: type[list[Any]] | type[Mapping[Any, Any]],
    field: str,
    expected: str,
    noun: str,
    limit: int,
    bad: Reporter,
) -> TypeGuard[Any]:
    """Whether an optional list or mapping is given, of the right kind and within its limit."""
    if value is None:
        return False
    if not isinstance(value, kind):
        bad(field, f"must be {expected}, got {type_name(value)}")
        return False
    if len(value) > limit:
        bad(field, f"has {len(value)} {noun}; at most {limit} are allowed")
        return False
    return True


def _header_name_ok(name: Any, where: str, bad: Reporter) -> bool:
    if isinstance(name, str) and name.lower() == "host":
        bad(where, "the host header cannot be set or removed in a response")
        return False
    if (
        not isinstance(name, str)
        or not name
        or len(name) > MAX_HEADER_NAME
        or not re.fullmatch(HEADER_NAME_PATTERN, name)
    ):
        bad(where, f"{describe(name)} is not a header name (letters, digits and !#$%&'*+.^_`|~-)")
        return False
    return True


def _parse_bool(value: Any, field: str, bad: Reporter, *, default: bool) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        bad(field, f"must be true or false, got {describe(value)}")
        return default
    return value


def _parse_int(value: Any, field: str, low: int, high: int, bad: Reporter) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        bad(field, f"must be an integer from {low} to {high}, got {describe(value)}")
        return None
    if not low <= value <= high:
        bad(field, f"must be from {low} to {high}, got {describe(value)}")
        return None
    return value


def _parse_duration(value: Any, field: str, bad: Reporter, *, positive: bool = False) -> int | None:
    """A duration such as 500ms, 15s, 2m or 1h, in milliseconds; None if absent."""
    if value is None:
        return None
    match = re.fullmatch(DURATION_PATTERN, value) if isinstance(value, str) else None
    if match is None or (positive and match.group(1) == "0"):
        least = "more than 0, " if positive else ""
        bad(
            field, f"must be a duration such as 500ms, 15s, 2m or 1h ({least}one unit), got {describe(value)}"
        )
        return None
    return int(match.group(1)) * _DURATION_UNITS[match.group(2)]


def _parse_gateway_group_name(value: Any, bad: Reporter) -> str | None:
    field = "spec.gatewayGroup"
    if value is None:
        return None
    if not isinstance(value, str) or not is_dns1123_label(value):
        bad(
            field,
            f"{describe(value)} is not a gateway group name (a DNS-1123 label: lower-case "
            "letters, digits and '-', starting and ending with a letter or digit, at most 63 characters)",
        )
        return None
    return value


def _parse_backend(value: Any, namespace: str, bad: Reporter) -> Backend | None:
    if value is None:
        bad("spec.backend", "is required")
        return None
    if not isinstance(value, Mapping):
        bad("spec.backend", f"must be a mapping, got {type_name(value)}")
        return None
    check_unknown(value, _BACKEND_FIELDS, "spec.backend.", bad)
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
    check = _parse_health_check(value.get("healthCheck"), bad)
    if not ok or not namespace or not isinstance(service, str) or not isinstance(port, int):
        return None
    return Backend(namespace, service, port, check)


def _parse_health_check(value: Any, bad: Reporter) -> HealthCheck | None:
    field = "spec.backend.healthCheck"
    if value is None:
        return None
    if not isinstance(value, Mapping):
        bad(field, f"must be a mapping, got {type_name(value)}")
        return None
    check_unknown(value, _HEALTH_CHECK_FIELDS, f"{field}.", bad)
    path = value.get("path")
    if path is None:
        bad(f"{field}.path", "is required")
    elif (
        not isinstance(path, str)
        or not re.fullmatch(HEALTH_PATH_PATTERN, path)
        or len(path) > MAX_PATH_PREFIX
    ):
        bad(
            f"{field}.path",
            f"{describe(path)} is not a path (it starts with '/', printable ASCII, no spaces)",
        )
        path = None
    interval = _parse_duration(value.get("interval"), f"{field}.interval", bad, positive=True)
    unhealthy = _parse_int(
        value.get("unhealthyThreshold"), f"{field}.unhealthyThreshold", 1, MAX_THRESHOLD, bad
    )
    healthy = _parse_int(value.get("healthyThreshold"), f"{field}.healthyThreshold", 1, MAX_THRESHOLD, bad)
    if not isinstance(path, str):
        return None
    return HealthCheck(path, interval or 10_000, unhealthy or 3, healthy or 2)


def check_unknown(doc: Mapping[Any, Any], known: frozenset[str], prefix: str, bad: Reporter) -> None:
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


def is_dns1123_label(value: str) -> bool:
    """A namespace's or a gateway group's name: lower-case letters, digits and '-', at most 63."""
    return _is_label(value, _DNS1123_LABEL)


def is_dns1123_subdomain(value: str) -> bool:
    return 0 < len(value) <= 253 and all(_is_label(part, _DNS1123_LABEL) for part in value.split("."))


def type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "an integer"}.get(
        type(value), type(value).__name__
    )
