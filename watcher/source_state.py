"""Whether the site source can be read: one log line per change, and a Prometheus gauge.

Both sources report the outcome of every read of their source here (the folder source each
time it lists the folder; the Kubernetes source each time it lists or checks the API). While
the source cannot be read the control plane keeps serving the last good sites, so what an
operator needs is to learn that it happened, once, and that it ended, once; and a metric to
alert on:

- `staticsite_xds_source_up{source}`: 1 while the source can be read, 0 while it cannot.
- `staticsite_xds_source_errors_total{source}`: reads of the source that failed.
"""

from __future__ import annotations

import logging
import threading

import prometheus_client

SOURCE_UP = prometheus_client.Gauge(
    "staticsite_xds_source_up",
    "1 while the site source (the sites folder, or the Kubernetes API) can be read, 0 while it cannot",
    ["source"],
)
SOURCE_ERRORS = prometheus_client.Counter(
    "staticsite_xds_source_errors_total",
    "Reads of the site source that failed (the last good sites are served meanwhile)",
    ["source"],
)


class SourceState:
    """Where one source stands: readable, or not since some read, and why.

    `source` is the metric's label ("folder" or "kubernetes"); `name` is how the log names
    the source to an operator, such as "the sites folder /srv/sites".
    """

    def __init__(self, source: str, name: str, logger: logging.Logger) -> None:
        self.source = source
        self.name = name
        self.log = logger
        self.up: bool | None = None  # None until the first read
        self.problem: str | None = None  # why the last read failed
        self._ever_up = False
        self._lock = threading.Lock()  # a report may come from another thread than a read

    def report(self, problem: str | None) -> None:
        """Record one read of the source: None if it succeeded, else what went wrong.

        Logs a warning when the source stops being readable and a note when it can be read
        again, never on a read that changes nothing, and sets the gauge.
        """
        with self._lock:
            was = self.up
            self.up = problem is None
            self.problem = problem
            ever_up, self._ever_up = self._ever_up, self._ever_up or problem is None
        SOURCE_UP.labels(self.source).set(1 if problem is None else 0)
        if problem is not None:
            SOURCE_ERRORS.labels(self.source).inc()
            if was is not False:
                kept = "keeping the last good sites" if ever_up else "nothing is read from it yet"
                self.log.warning("%s cannot be read (%s); %s, and retrying", self.name, problem, kept)
            else:
                self.log.debug("%s still cannot be read: %s", self.name, problem)
        elif was is False:
            self.log.info("%s can be read again; following its changes", self.name)
