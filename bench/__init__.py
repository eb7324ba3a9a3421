"""Benchmarks of staticsite-xds against its targets and against nginx and file-fed Envoy.

Run `python -m bench --help`. Every scenario runs in a child process of its own (so memory
figures and crashes stay separate), on 127.0.0.1 and ports chosen free at run time; every
process a scenario starts is stopped when it ends, also on error or Ctrl-C.
"""

from __future__ import annotations

SCENARIOS = (
    "change",
    "load",
    "nginx",
    "envoy-files",
    "cold",
    "share",
    "groups",
    "fanout",
    "memory",
    "burst",
    "kubernetes",
    "shards",
)
