"""Enough of PromQL to find the metric names an expression reads, for checking shipped alerts
and dashboards against what the control plane exports.

`metric_names` tokenizes an expression and returns every name of a series it selects. It
raises `PromQLError` for what Prometheus would refuse in the same way: a bracket that does not
close, a string that does not end, a character PromQL has no use for, a function it does not
have. It is no full parser (operator precedence is not checked); Prometheus itself is not
available to the tests. `exported` lists the series names the control plane exports.
"""

from __future__ import annotations

import functools
import re

import prometheus_client

from snapshot.builder import BuildOptions
from watcher.k8s_status import LEADER, STATUS_PENDING, STATUS_WRITES
from watcher.source_state import SOURCE_ERRORS, SOURCE_UP
from xds_server.operations.metrics import Metrics
from xds_server.process.control_plane import ControlPlane

# Functions and aggregations of PromQL (Prometheus 2.x and 3.x), by name.
FUNCTIONS = frozenset(
    [
        "abs",
        "absent",
        "absent_over_time",
        "avg_over_time",
        "ceil",
        "changes",
        "clamp",
        "clamp_max",
        "clamp_min",
        "count_over_time",
        "day_of_month",
        "day_of_week",
        "day_of_year",
        "days_in_month",
        "delta",
        "deriv",
        "exp",
        "floor",
        "histogram_avg",
        "histogram_count",
        "histogram_fraction",
        "histogram_quantile",
        "histogram_stddev",
        "histogram_stdvar",
        "histogram_sum",
        "holt_winters",
        "hour",
        "idelta",
        "increase",
        "irate",
        "label_join",
        "label_replace",
        "last_over_time",
        "ln",
        "log10",
        "log2",
        "max_over_time",
        "min_over_time",
        "minute",
        "month",
        "predict_linear",
        "present_over_time",
        "quantile_over_time",
        "rate",
        "resets",
        "round",
        "scalar",
        "sgn",
        "sort",
        "sort_by_label",
        "sort_by_label_desc",
        "sort_desc",
        "sqrt",
        "stddev_over_time",
        "stdvar_over_time",
        "sum_over_time",
        "time",
        "timestamp",
        "vector",
        "year",
    ]
)
AGGREGATIONS = frozenset(
    [
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    ]
)
KEYWORDS = frozenset(
    [
        "and",
        "or",
        "unless",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "offset",
        "atan2",
        "inf",
        "nan",
    ]
)
# Words after which a parenthesised list names labels, not series.
LABEL_LISTS = frozenset(["by", "without", "on", "ignoring", "group_left", "group_right"])

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<duration>\d+(?:ms|s|m|h|d|w|y)(?:\d+(?:ms|s|m|h|d|w|y))*)
  | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|0x[0-9a-fA-F]+)
  | (?P<name>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<open>[({\[])
  | (?P<close>[)}\]])
  | (?P<operator>==|!=|>=|<=|=~|!~|[-+*/%^<>=,@:])
    """,
    re.VERBOSE,
)
_PAIRS = {"(": ")", "{": "}", "[": "]"}


class PromQLError(ValueError):
    """The expression is not PromQL Prometheus would accept."""


def tokens(expr: str) -> list[tuple[str, str]]:
    """The expression's tokens, as (kind, text), spaces dropped."""
    out: list[tuple[str, str]] = []
    at = 0
    while at < len(expr):
        match = _TOKEN.match(expr, at)
        if match is None:
            if expr[at] in "\"'`":
                raise PromQLError(f"a string that does not end, at {at}: {expr[at : at + 20]!r}")
            raise PromQLError(f"unexpected {expr[at]!r} at {at}")
        kind = match.lastgroup
        assert kind is not None
        if kind != "space":
            out.append((kind, match.group()))
        at = match.end()
    return out


def metric_names(expr: str) -> set[str]:
    """The name of every series `expr` selects."""
    found: set[str] = set()
    stack: list[tuple[str, bool]] = []  # open brackets, and whether each holds label names
    toks = tokens(expr)
    for i, (kind, text) in enumerate(toks):
        following = toks[i + 1][1] if i + 1 < len(toks) else ""
        previous = toks[i - 1][1] if i > 0 else ""
        inside_labels = any(labels for _, labels in stack)
        if kind == "open":
            labels = text in "{[" or (text == "(" and previous in LABEL_LISTS)
            stack.append((text, labels))
        elif kind == "close":
            if not stack or _PAIRS[stack[-1][0]] != text:
                raise PromQLError(f"{text!r} closes nothing open in {expr!r}")
            stack.pop()
        elif kind == "name" and not inside_labels:
            if text in KEYWORDS or text in AGGREGATIONS:
                continue
            if following == "(":
                if text not in FUNCTIONS:
                    raise PromQLError(f"no PromQL function is named {text!r}")
                continue
            found.add(text)
    if stack:
        raise PromQLError(f"{stack[-1][0]!r} is never closed in {expr!r}")
    return found


@functools.cache
def exported() -> frozenset[str]:
    """Every series name the control plane exports: its metrics as Prometheus scrapes them
    (made once: a control plane with its metrics is built for it)."""
    registry = prometheus_client.CollectorRegistry()
    metrics = Metrics(registry)
    metrics.export(ControlPlane(BuildOptions(), observers=[metrics]), serving_expiry=lambda: 0.0)
    own = (SOURCE_UP, SOURCE_ERRORS, LEADER, STATUS_PENDING, STATUS_WRITES)  # the sources' own metrics
    families = [*registry.collect(), *(f for metric in own for f in metric.collect())]
    names = set()
    for family in families:
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(family.type, [""])
        names.update(family.name + suffix for suffix in suffixes)
    return frozenset(names)
