"""What `lvsuser run --metrics/--procfs` start beside the director, and stop with it."""
from __future__ import annotations

import argparse
import logging
from typing import Optional

log = logging.getLogger("lvsuser.run")


class OpsError(Exception):
    """str(exc) is one sentence for the user: why --metrics or --procfs cannot run."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The run command's --metrics and --procfs options."""
    parser.add_argument("--metrics", default=None, metavar="ADDR:PORT",
                        help="serve Prometheus metrics on http://ADDR:PORT/metrics "
                             "(node_exporter's node_ipvs_* plus lvsuser_*)")
    parser.add_argument("--procfs", default=None, metavar="DIR",
                        help="keep DIR/net/ip_vs, ip_vs_stats and ip_vs_conn in the kernel's "
                             "formats, refreshed every second (node_exporter --path.procfs DIR)")


class Extras:
    """The running extras; ``stop()`` is idempotent."""

    def __init__(self) -> None:
        self.metrics = None
        self.procfs = None

    def stop(self) -> None:
        if self.metrics is not None:
            self.metrics.stop()
            self.metrics = None
        if self.procfs is not None:
            self.procfs.stop()
            self.procfs = None


def start(backend, metrics: Optional[str] = None, procfs: Optional[str] = None) -> Extras:
    """Start what was asked for; OpsError (with everything started stopped again) if one fails."""
    extras = Extras()
    try:
        if procfs:
            from lvsuser.ops.procfs import ProcfsWriter
            try:
                extras.procfs = ProcfsWriter(backend, procfs).start()
            except OSError as exc:
                raise OpsError(f"cannot write the --procfs files under {procfs}: "
                               f"{exc.strerror or exc}") from exc
        if metrics:
            try:
                from lvsuser.ops.metrics import MetricsServer
                server = MetricsServer(backend, metrics)
            except ImportError as exc:
                raise OpsError(f"--metrics needs the prometheus-client package ({exc})") from exc
            except ValueError as exc:
                raise OpsError(f"--metrics {metrics}: {exc}") from exc
            try:
                extras.metrics = server.start()
            except ImportError as exc:
                raise OpsError(f"--metrics needs the prometheus-client package ({exc})") from exc
            except OSError as exc:
                raise OpsError(f"cannot serve metrics on {metrics}: {exc.strerror or exc}") from exc
    except BaseException:
        extras.stop()
        raise
    return extras
