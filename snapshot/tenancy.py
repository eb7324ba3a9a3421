"""Gateway groups and domain grants: which fleet of gateways serves a site, and whether the
site's namespace may serve its domains there.

A `GatewayGroup` (cluster-scoped, owned by an admin) names one fleet of Envoy gateways, says
which client certificates are that fleet's (`clientNames`), and grants namespaces the domains
they may serve through it. `parse_gateway_group` is its one parser, whichever source read it;
`Tenancy` is every group and every namespace's labels, and judges each site.

Ownership: for one host, among all the (grant, pattern) pairs of the group that match it, only
the most specific patterns count (exact > `*.suffix` > `**.suffix` > `*`; between two
`**.suffix`, the longer suffix). The host is permitted to a namespace iff a grant admitting it
holds one of those. So a domain granted exactly to one namespace is never served by another,
whether or not the first has a site on it now. A grant whose `namespaces` cannot be read
admits no namespace, but its domains still count for ownership: a typo never hands a domain
to somebody else.
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from publicsuffixlist import PublicSuffixList

from .model import (
    InvalidDeclaration,
    Problem,
    Reporter,
    StaticSite,
    check_kind,
    check_unknown,
    describe,
    field_name,
    is_collection,
    is_dns1123_label,
    is_dns1123_subdomain,
    metadata_generation,
    normalize_domain,
    parse_host,
    parse_metadata_name,
    type_name,
)
from .snapshot import DEFAULT_GROUP
from .verdict import SiteState, domain_not_permitted, gateway_group_not_found

__all__ = [
    "CLIENT_NAME_SUFFIX",
    "DEFAULT_GROUP",
    "GATEWAY_GROUP_KIND",
    "GATEWAY_GROUP_PLURAL",
    "NAMESPACE_KIND",
    "OPEN",
    "DomainPattern",
    "GatewayGroup",
    "Grant",
    "InvalidGatewayGroup",
    "InvalidNamespace",
    "LabelExpression",
    "LabelSelector",
    "PatternKind",
    "Tenancy",
    "default_client_name",
    "is_gateway_group",
    "is_namespace",
    "parse_gateway_group",
    "parse_namespace",
]

GATEWAY_GROUP_KIND: Final = "GatewayGroup"
GATEWAY_GROUP_PLURAL: Final = "gatewaygroups"
NAMESPACE_KIND: Final = "Namespace"
CLIENT_NAME_SUFFIX: Final = ".gateway-group.staticsite-xds.dev"

# Limits of one GatewayGroup (the CRD, crds/gatewaygroup.yaml, carries the same).
MAX_CLIENT_NAMES: Final = 64
MAX_CLIENT_NAME_LENGTH: Final = 1024
MAX_GRANTS: Final = 1024
MAX_GRANT_NAMESPACES: Final = 1024
MAX_GRANT_DOMAINS: Final = 256
MAX_SELECTOR_TERMS: Final = 32  # labels of matchLabels, and expressions of matchExpressions
MAX_SELECTOR_VALUES: Final = 64
# A client name: printable ASCII, no spaces (a DNS name, a URI, a common name).
CLIENT_NAME_PATTERN: Final = r"[!-~]+"
# A Kubernetes label key: an optional DNS-subdomain prefix and '/', then a name of 1-63.
_LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
OPERATORS: Final = ("In", "NotIn", "Exists", "DoesNotExist")

_TOP_FIELDS = frozenset({"apiVersion", "kind", "metadata", "spec", "status"})
_SPEC_FIELDS = frozenset({"clientNames", "grants"})
_GRANT_FIELDS = frozenset({"namespaces", "domains"})
_NAMESPACES_FIELDS = frozenset({"names", "selector"})
_SELECTOR_FIELDS = frozenset({"matchLabels", "matchExpressions"})
_EXPRESSION_FIELDS = frozenset({"key", "operator", "values"})


def default_client_name(group: str) -> str:
    """The client name of a group's gateways when its `clientNames` is unset or empty."""
    return f"{group}{CLIENT_NAME_SUFFIX}"


def is_gateway_group(doc: Mapping[str, Any]) -> bool:
    """True when a parsed document declares itself a GatewayGroup (of any API version)."""
    return doc.get("kind") == GATEWAY_GROUP_KIND


def is_namespace(doc: Mapping[str, Any]) -> bool:
    """True when a parsed document is a Kubernetes Namespace."""
    return doc.get("kind") == NAMESPACE_KIND and doc.get("apiVersion") == "v1"


@functools.cache
def _public_suffixes() -> PublicSuffixList:
    return PublicSuffixList()  # the Mozilla list the package ships: read once, no network


def is_public_suffix(domain: str) -> bool:
    """Whether anyone may register names directly below `domain` (`com`, `co.uk`, `github.io`)."""
    return bool(_public_suffixes().is_public(domain))


_NO_LABELS: Final[Mapping[str, str]] = MappingProxyType({})


# -- patterns ---------------------------------------------------------------------------------


class PatternKind(enum.IntEnum):
    """What a domain pattern stands for, the most specific first."""

    EXACT = 0  # docs.example.com
    ONE_LABEL = 1  # *.example.com: one label below the suffix
    ANY_DEPTH = 2  # **.example.com: any number of labels below the suffix
    EVERY = 3  # *: every domain


@dataclass(frozen=True, slots=True)
class DomainPattern:
    """One entry of a grant's `domains`: `suffix` is the domain itself for an exact pattern,
    and empty for `*`."""

    text: str
    kind: PatternKind
    suffix: str

    def matches(self, host: str) -> bool:
        """Whether the pattern covers `host` (a site's domain, which may be a wildcard `*.s`)."""
        if self.kind is PatternKind.EXACT:
            return host == self.suffix
        if self.kind is PatternKind.ONE_LABEL:
            label, dot, rest = host.partition(".")
            return bool(dot and label) and rest == self.suffix
        if self.kind is PatternKind.ANY_DEPTH:
            return len(host) > len(self.suffix) + 1 and host.endswith("." + self.suffix)
        return True


EVERY_DOMAIN: Final = DomainPattern("*", PatternKind.EVERY, "")


def parse_pattern(value: Any, where: str, bad: Reporter) -> DomainPattern | None:
    """A domain pattern, or None with a problem (bad syntax, or a public suffix)."""
    if not isinstance(value, str):
        bad(where, f"must be a string, got {type_name(value)}")
        return None
    text = normalize_domain(value)
    if text == "*":
        return EVERY_DOMAIN
    kind, prefix = PatternKind.EXACT, ""
    for candidate, wildcard in (("**.", PatternKind.ANY_DEPTH), ("*.", PatternKind.ONE_LABEL)):
        if text.startswith(candidate):
            kind, prefix = wildcard, candidate
            break
    suffix = text[len(prefix) :]
    if "*" in suffix:
        bad(
            where,
            f"{describe(value)}: a wildcard is only allowed as the whole pattern '*' or as its "
            "first label ('*.example.com', '**.example.com')",
        )
        return None
    problems: list[str] = []
    if not parse_host(suffix, where, lambda _field, message: problems.append(message), required=True):
        bad(where, f"{describe(value)} is not a domain pattern: {problems[0] if problems else 'empty'}")
        return None
    if is_public_suffix(suffix):
        if kind is PatternKind.EXACT:
            bad(
                where,
                f"{suffix} is a public suffix (anyone may register names below it); grant a domain below it",
            )
        else:
            bad(
                where,
                f"{describe(value)} would grant every domain below the public suffix {suffix} "
                "(anyone may register names there); grant the domains below a domain of your own",
            )
        return None
    return DomainPattern(text, kind, suffix)


# -- label selectors --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LabelExpression:
    """One term of `matchExpressions`: `key` with `operator` (In, NotIn, Exists, DoesNotExist)."""

    key: str
    operator: str
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "In":
            return labels.get(self.key) in self.values
        if self.operator == "NotIn":
            return self.key not in labels or labels[self.key] not in self.values
        if self.operator == "Exists":
            return self.key in labels
        return self.key not in labels  # DoesNotExist


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """A Kubernetes LabelSelector on a namespace's labels; an empty one matches every namespace."""

    match_labels: tuple[tuple[str, str], ...] = ()
    expressions: tuple[LabelExpression, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(key) == value for key, value in self.match_labels) and all(
            expression.matches(labels) for expression in self.expressions
        )

    def __str__(self) -> str:
        terms = [f"{key}={value}" for key, value in self.match_labels]
        for e in self.expressions:
            values = f" ({', '.join(sorted(e.values))})" if e.values else ""
            terms.append(f"{e.key} {e.operator}{values}")
        return ", ".join(terms) or "every namespace"


def _is_label_key(key: Any) -> bool:
    if not isinstance(key, str):
        return False
    prefix, slash, name = key.rpartition("/")
    if slash and not is_dns1123_subdomain(prefix):
        return False
    return _LABEL_NAME.fullmatch(name) is not None


def _is_label_value(value: Any) -> bool:
    return isinstance(value, str) and (value == "" or _LABEL_NAME.fullmatch(value) is not None)


def parse_selector(value: Any, where: str, bad: Reporter) -> LabelSelector | None:
    """A label selector, or None (with problems) if any part of it is wrong: a selector read in
    part could match more namespaces than was meant."""
    if not isinstance(value, Mapping):
        bad(where, f"must be a mapping (a label selector), got {type_name(value)}")
        return None
    ok = True

    def wrong(at: str, message: str) -> None:
        nonlocal ok
        ok = False
        bad(at, message)

    check_unknown(value, _SELECTOR_FIELDS, f"{where}.", wrong)
    labels: list[tuple[str, str]] = []
    match_labels = value.get("matchLabels")
    at = f"{where}.matchLabels"
    expected = "a mapping of label keys to values"
    if is_collection(match_labels, Mapping, at, expected, "labels", MAX_SELECTOR_TERMS, wrong):
        for key, label in match_labels.items():
            if not _is_label_key(key):
                wrong(f"{at}.{field_name(key)}", f"{describe(key)} is not a label key")
            elif not _is_label_value(label):
                wrong(f"{at}.{field_name(key)}", f"{describe(label)} is not a label value")
            else:
                labels.append((key, label))
    expressions: list[LabelExpression] = []
    listed = value.get("matchExpressions")
    at = f"{where}.matchExpressions"
    if is_collection(listed, list, at, "a list of expressions", "expressions", MAX_SELECTOR_TERMS, wrong):
        for index, item in enumerate(listed):
            expression = _parse_expression(item, f"{at}[{index}]", wrong)
            if expression is not None:
                expressions.append(expression)
    return LabelSelector(tuple(sorted(labels)), tuple(expressions)) if ok else None


def _parse_expression(item: Any, where: str, bad: Reporter) -> LabelExpression | None:
    if not isinstance(item, Mapping):
        bad(where, f"must be a mapping (key, operator, values), got {type_name(item)}")
        return None
    check_unknown(item, _EXPRESSION_FIELDS, f"{where}.", bad)
    key, operator, values = item.get("key"), item.get("operator"), item.get("values")
    ok = True
    if key is None:
        bad(f"{where}.key", "is required")
        ok = False
    elif not _is_label_key(key):
        bad(f"{where}.key", f"{describe(key)} is not a label key")
        ok = False
    if operator not in OPERATORS:
        bad(f"{where}.operator", f"must be one of {', '.join(OPERATORS)}, got {describe(operator)}")
        return None
    chosen: frozenset[str] = frozenset()
    if operator in ("In", "NotIn"):
        if not isinstance(values, list) or not values:
            bad(f"{where}.values", f"must be a non-empty list of label values with {operator}")
            return None
        if len(values) > MAX_SELECTOR_VALUES:
            bad(f"{where}.values", f"has {len(values)} values; at most {MAX_SELECTOR_VALUES} are allowed")
            return None
        for index, label in enumerate(values):
            if not _is_label_value(label):
                bad(f"{where}.values[{index}]", f"{describe(label)} is not a label value")
                ok = False
        chosen = frozenset(v for v in values if isinstance(v, str))
    elif values:  # null or [] is absent, as in the API
        bad(f"{where}.values", f"must be empty with {operator}")
        ok = False
    return LabelExpression(key, operator, chosen) if ok and isinstance(key, str) else None


# -- grants and groups ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Grant:
    """Domains granted to namespaces: those named, and those whose labels `selector` matches.
    A grant that admits no namespace (its `namespaces` could not be read) still owns its
    domains (see the module's text)."""

    names: frozenset[str]
    selector: LabelSelector | None
    domains: tuple[DomainPattern, ...]

    def admits(self, namespace: str, labels: Mapping[str, str]) -> bool:
        return namespace in self.names or (self.selector is not None and self.selector.matches(labels))


_Holders = tuple[int, ...]  # the places of the grants (in the group) that hold one pattern


@dataclass(frozen=True, slots=True)
class _GrantIndex:
    """A group's patterns by suffix, so that a host's most specific patterns are a few lookups."""

    exact: Mapping[str, _Holders]
    one_label: Mapping[str, _Holders]
    any_depth: Mapping[str, _Holders]
    every: _Holders

    @classmethod
    def of(cls, grants: tuple[Grant, ...]) -> _GrantIndex:
        tables: tuple[dict[str, list[int]], ...] = ({}, {}, {})
        every: list[int] = []
        for place, grant in enumerate(grants):
            for pattern in grant.domains:
                if pattern.kind is PatternKind.EVERY:
                    holders = every
                else:
                    holders = tables[pattern.kind].setdefault(pattern.suffix, [])
                if not holders or holders[-1] != place:
                    holders.append(place)
        exact, one_label, any_depth = ({k: tuple(v) for k, v in t.items()} for t in tables)
        return cls(exact, one_label, any_depth, tuple(every))

    def holders(self, host: str) -> _Holders:
        """The grants that hold the most specific patterns matching `host` (empty: none match)."""
        found = self.exact.get(host)
        if found is not None:
            return found
        _, dot, suffix = host.partition(".")
        if dot:
            found = self.one_label.get(suffix)
            if found is not None:
                return found
            if self.any_depth:
                while dot:  # the longest suffix first
                    found = self.any_depth.get(suffix)
                    if found is not None:
                        return found
                    _, dot, suffix = suffix.partition(".")
        return self.every


@dataclass(frozen=True, slots=True)
class GatewayGroup:
    """One fleet of gateways: the client names that are its own, and its grants.

    `problems` are those of the parts left out (a bad pattern, a bad client name...); the rest
    of the group is in force.
    """

    name: str
    client_names: tuple[str, ...]
    grants: tuple[Grant, ...]
    generation: int = 0
    origin: str = ""
    problems: tuple[Problem, ...] = ()
    _index: _GrantIndex = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", _GrantIndex.of(self.grants))

    def holders(self, host: str) -> tuple[Grant, ...]:
        """The grants holding the most specific patterns that match `host`."""
        return tuple(self.grants[place] for place in self._index.holders(host))


class InvalidGatewayGroup(InvalidDeclaration):
    """A GatewayGroup that cannot be read at all; `problems` lists why. The group is absent."""

    def __init__(self, problems: list[Problem], name: str | None = None) -> None:
        super().__init__(problems)
        self.name = name


def parse_gateway_group(doc: Any, origin: str = "") -> GatewayGroup:
    """Validate one GatewayGroup document; raise `InvalidGatewayGroup` if it cannot stand.

    What makes the object unreadable (not a mapping, another kind or API version, a bad
    metadata.name, a spec that is no mapping) raises; a bad part of the spec (a client name,
    a grant's namespaces, a domain pattern) is left out with a problem naming its field.
    """
    if not isinstance(doc, Mapping):
        raise InvalidGatewayGroup([Problem(origin, "", f"expected a mapping, got {type_name(doc)}")])
    fatal: list[Problem] = []  # the object cannot stand
    problems: list[Problem] = []  # a part is left out

    def stop(where: str, message: str) -> None:
        fatal.append(Problem(origin, where, message))

    def bad(where: str, message: str) -> None:
        problems.append(Problem(origin, where, message))

    check_unknown(doc, _TOP_FIELDS, "", bad)
    check_kind(doc, GATEWAY_GROUP_KIND, stop)
    name, generation = _parse_metadata(doc.get("metadata"), stop, bad)
    spec = doc.get("spec")
    if not isinstance(spec, Mapping):
        stop("spec", "is required" if spec is None else f"must be a mapping, got {type_name(spec)}")
    if fatal or not isinstance(spec, Mapping):
        raise InvalidGatewayGroup(fatal + problems, name or None)
    check_unknown(spec, _SPEC_FIELDS, "spec.", bad)
    client_names = _parse_client_names(spec.get("clientNames"), name, bad)
    grants = _parse_grants(spec.get("grants"), bad)
    return GatewayGroup(name, client_names, grants, generation, origin, tuple(problems))


def _parse_metadata(meta: Any, stop: Reporter, bad: Reporter) -> tuple[str, int]:
    name = parse_metadata_name(
        meta,
        stop,
        is_dns1123_label,
        "a valid gateway group name (a DNS-1123 label: lower-case letters, digits and '-', "
        "starting and ending with a letter or digit, at most 63 characters)",
    )
    if name is None:
        return "", 0
    if meta.get("namespace") not in (None, ""):
        bad("metadata.namespace", "a GatewayGroup is cluster-scoped: it has no namespace (ignored)")
    return name, metadata_generation(meta)


def _parse_client_names(value: Any, group: str, bad: Reporter) -> tuple[str, ...]:
    where = "spec.clientNames"
    if value is None or value == []:
        return (default_client_name(group),)
    if not isinstance(value, list):
        bad(where, f"must be a list of names, got {type_name(value)}; no client is in this group")
        return ()
    if len(value) > MAX_CLIENT_NAMES:
        bad(
            where,
            f"has {len(value)} names; at most {MAX_CLIENT_NAMES} are allowed; no client is in this group",
        )
        return ()
    names: list[str] = []
    for index, name in enumerate(value):
        if (
            not isinstance(name, str)
            or len(name) > MAX_CLIENT_NAME_LENGTH
            or not re.fullmatch(CLIENT_NAME_PATTERN, name)
        ):
            bad(
                f"{where}[{index}]",
                f"{describe(name)} is not a client name (a DNS name, URI or common name: printable "
                f"ASCII without spaces, at most {MAX_CLIENT_NAME_LENGTH} characters)",
            )
        elif name not in names:
            names.append(name)
    return tuple(names)


def _parse_grants(value: Any, bad: Reporter) -> tuple[Grant, ...]:
    where = "spec.grants"
    if not is_collection(value, list, where, "a list of grants", "grants", MAX_GRANTS, bad):
        return ()
    grants = (_parse_grant(item, f"{where}[{index}]", bad) for index, item in enumerate(value))
    return tuple(grant for grant in grants if grant is not None)


def _parse_grant(item: Any, where: str, bad: Reporter) -> Grant | None:
    if not isinstance(item, Mapping):
        bad(where, f"must be a mapping (namespaces, domains), got {type_name(item)}")
        return None
    check_unknown(item, _GRANT_FIELDS, f"{where}.", bad)
    names, selector = _parse_namespaces(item.get("namespaces"), f"{where}.namespaces", bad)
    domains = _parse_domains(item.get("domains"), f"{where}.domains", bad)
    return Grant(names, selector, domains) if domains else None


def _parse_namespaces(value: Any, where: str, bad: Reporter) -> tuple[frozenset[str], LabelSelector | None]:
    """The namespaces a grant admits; when they cannot be read, none (the grant still owns its
    domains)."""
    nobody: tuple[frozenset[str], None] = (frozenset(), None)
    if value is None:
        bad(where, "is required (names and/or selector); this grant admits no namespace")
        return nobody
    if not isinstance(value, Mapping):
        bad(
            where,
            f"must be a mapping (names, selector), got {type_name(value)}; this grant admits no namespace",
        )
        return nobody
    check_unknown(value, _NAMESPACES_FIELDS, f"{where}.", bad)
    listed, given = value.get("names"), value.get("selector")
    if listed is None and given is None:
        bad(where, "needs names or a selector (or both); this grant admits no namespace")
        return nobody
    names: set[str] = set()
    expected = "a list of namespace names"
    if is_collection(listed, list, f"{where}.names", expected, "names", MAX_GRANT_NAMESPACES, bad):
        for index, name in enumerate(listed):
            if isinstance(name, str) and is_dns1123_label(name):
                names.add(name)
            else:
                bad(
                    f"{where}.names[{index}]",
                    f"{describe(name)} is not a namespace name (a DNS-1123 label)",
                )
    selector = parse_selector(given, f"{where}.selector", bad) if given is not None else None
    return frozenset(names), selector


def _parse_domains(value: Any, where: str, bad: Reporter) -> tuple[DomainPattern, ...]:
    if value is None:
        bad(where, "is required: the domains this grant gives")
        return ()
    if not isinstance(value, list) or not value:
        bad(where, f"must be a non-empty list of domain patterns, got {describe(value)}")
        return ()
    if len(value) > MAX_GRANT_DOMAINS:
        bad(where, f"has {len(value)} patterns; at most {MAX_GRANT_DOMAINS} are allowed")
        return ()
    patterns: list[DomainPattern] = []
    for index, item in enumerate(value):
        pattern = parse_pattern(item, f"{where}[{index}]", bad)
        if pattern is None:
            continue
        if pattern.kind is PatternKind.EVERY and len(value) > 1:
            bad(
                f"{where}[{index}]", "'*' grants every domain: it must be the grant's only pattern (left out)"
            )
            continue
        if pattern not in patterns:
            patterns.append(pattern)
    return tuple(patterns)


# -- namespaces -------------------------------------------------------------------------------


class InvalidNamespace(ValueError):
    """A Namespace document whose name or labels cannot be read; `problem` says which field."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(str(problem))
        self.problem = problem


def parse_namespace(doc: Mapping[str, Any], origin: str = "") -> tuple[str, Mapping[str, str]]:
    """A Namespace document's name and labels (what grant selectors see); or `InvalidNamespace`.

    A label that cannot be read refuses the whole document: a selector that saw only some of
    the labels could admit the namespace where it was not meant to.
    """
    meta = doc.get("metadata")
    if not isinstance(meta, Mapping):
        raise InvalidNamespace(Problem(origin, "metadata", f"must be a mapping, got {type_name(meta)}"))
    name = meta.get("name")
    if not isinstance(name, str) or not is_dns1123_label(name):
        raise InvalidNamespace(
            Problem(origin, "metadata.name", f"{describe(name)} is not a namespace name (a DNS-1123 label)")
        )
    labels = meta.get("labels")
    if labels is None:
        return name, _NO_LABELS
    if not isinstance(labels, Mapping):
        raise InvalidNamespace(
            Problem(origin, "metadata.labels", f"must be a mapping, got {type_name(labels)}")
        )
    for key, label in labels.items():
        if not _is_label_key(key):
            raise InvalidNamespace(
                Problem(origin, f"metadata.labels.{field_name(key)}", "is not a label key")
            )
        if not _is_label_value(label):
            raise InvalidNamespace(
                Problem(
                    origin, f"metadata.labels.{field_name(key)}", f"{describe(label)} is not a label value"
                )
            )
    return name, MappingProxyType(dict(labels))


# -- the tenancy ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tenancy:
    """Every gateway group, every namespace known with its labels, and the problems of their
    declarations. Unenforced (`OPEN`): one implicit default group, every domain permitted."""

    groups: Mapping[str, GatewayGroup]
    namespace_labels: Mapping[str, Mapping[str, str]]
    enforced: bool = True
    problems: tuple[Problem, ...] = ()
    _clients: Mapping[str, str] = field(init=False, repr=False, compare=False)
    # (group, namespace) -> the places of the group's grants that admit the namespace
    _admitted: dict[tuple[str, str], frozenset[int]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        clients: dict[str, str] = {}
        shared: set[str] = set()
        for group in self.groups.values():
            for name in group.client_names:
                if clients.setdefault(name, group.name) != group.name:
                    shared.add(name)
        for name in shared:
            del clients[name]
        object.__setattr__(self, "_clients", clients)
        object.__setattr__(self, "_admitted", {})

    @classmethod
    def of(
        cls,
        groups: Iterable[GatewayGroup],
        namespace_labels: Mapping[str, Mapping[str, str]],
        problems: Iterable[Problem] = (),
    ) -> Tenancy:
        """An enforced tenancy of these groups (the first of two with one name stands) and
        labels; its problems: `problems` (of groups that could not be read), each group's, a
        group declared twice, and each client name listed by two groups."""
        found: list[Problem] = list(problems)
        by_name: dict[str, GatewayGroup] = {}
        for group in groups:
            first = by_name.setdefault(group.name, group)
            if first is not group:
                found.append(
                    Problem(
                        group.origin,
                        "metadata.name",
                        f"gateway group {group.name} is already declared in {first.origin or 'another object'}; "
                        "this declaration is ignored",
                    )
                )
            else:
                found.extend(group.problems)
        listed: dict[str, list[str]] = {}
        for group in by_name.values():
            for name in group.client_names:
                listed.setdefault(name, []).append(group.name)
        for name, owners in sorted(listed.items()):
            if len(owners) > 1:
                found.append(
                    Problem(
                        by_name[owners[1]].origin,
                        "spec.clientNames",
                        f"client name {name} is listed by gateway groups {', '.join(sorted(owners))}: "
                        "no group gets it",
                    )
                )
        labels = {ns: MappingProxyType(dict(values)) for ns, values in namespace_labels.items()}
        return cls(MappingProxyType(by_name), MappingProxyType(labels), True, tuple(found))

    def group_of(self, site: StaticSite) -> str:
        """The gateway group a site asks for: its spec.gatewayGroup, else the default group."""
        return site.gateway_group or DEFAULT_GROUP

    def names(self) -> tuple[str, ...]:
        """The groups that exist, sorted (unenforced: the default group too)."""
        if self.enforced:
            return tuple(sorted(self.groups))
        return tuple(sorted({DEFAULT_GROUP, *self.groups}))

    def client_group(self, names: Iterable[str]) -> str | None:
        """The group whose clientNames meet `names` (a client certificate's DNS and URI names,
        or its common name); None when none does, or more than one. Unenforced: every client
        is in the default group."""
        if not self.enforced:
            return DEFAULT_GROUP
        found = {self._clients[name] for name in names if name in self._clients}
        return found.pop() if len(found) == 1 else None

    def judge(self, site: StaticSite) -> SiteState | None:
        """None: the site is served in `group_of(site)`; else the verdict that refuses it.

        Every host of the site (domain, aliases, redirectFrom) must be permitted to its
        namespace in its group.
        """
        name = site.gateway_group or DEFAULT_GROUP
        if not self.enforced:
            if name == DEFAULT_GROUP or name in self.groups:
                return None
            return gateway_group_not_found(site.key, name, self.names())
        group = self.groups.get(name)
        if group is None:
            return gateway_group_not_found(site.key, name, self.names())
        namespace = site.key.namespace
        admitted = self._admitted.get((name, namespace))
        if admitted is None:
            labels = self.namespace_labels.get(namespace, _NO_LABELS)
            admitted = frozenset(
                place for place, grant in enumerate(group.grants) if grant.admits(namespace, labels)
            )
            self._admitted[name, namespace] = admitted
        index = group._index
        for host in (site.domain, *site.aliases, *site.redirect_from):
            holders = index.holders(host)
            if admitted.isdisjoint(holders):
                return domain_not_permitted(site.key, host, name, self._owners(group, holders))
        return None

    def _owners(self, group: GatewayGroup, holders: tuple[int, ...]) -> list[str] | None:
        """The namespaces the grants at `holders` admit, of those known (None: no grant)."""
        if not holders:
            return None
        owners: set[str] = set()
        for place in holders:
            grant = group.grants[place]
            owners |= grant.names
            if grant.selector is not None:
                owners.update(
                    ns for ns, labels in self.namespace_labels.items() if grant.selector.matches(labels)
                )
        return sorted(owners)


OPEN: Final = Tenancy(MappingProxyType({}), MappingProxyType({}), enforced=False)
