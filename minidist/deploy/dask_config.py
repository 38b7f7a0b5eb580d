"""dask's configuration, where a program set it: ``dask.config.set({"distributed.worker.memory.pause": 0.7})``.

A program written for dask.distributed tunes it through ``dask.config`` (``set``, YAML files, ``DASK_*``
environment variables, all loaded by dask). minidist reads the keys below when a cluster is made, and
only if dask is already imported: a program that never imported dask set nothing there, and minidist
does not pay dask's import to find that out. Keyword arguments win over configuration, as in dask::

    distributed.worker.memory.pause / .terminate   default memory_pause/terminate_fraction (False: off)
    distributed.scheduler.allowed-failures         default scheduler_kwargs={"allowed_failures": n}
    distributed.scheduler.work-stealing            False: idle workers never take queued tasks
    distributed.dashboard.link                     the template of cluster.dashboard_link

Other ``distributed.*`` keys configure machinery minidist does not have (spilling, comms, the nanny...).
"""

from __future__ import annotations

import os
import sys
from typing import Any, Optional

# dask's own default link template: minidist's link (with its access token) stands for it
DASK_DEFAULT_LINK = "{scheme}://{host}:{port}/status"


def dask_setting(key: str, default: Any) -> Any:
    """The value of ``key`` in dask's configuration, or ``default`` (also when dask is not imported)."""
    config = sys.modules.get("dask.config")
    if config is None:
        return default
    try:
        return config.get(key, default)
    except Exception:  # a malformed configuration is dask's to report, not a reason to fail here
        return default


def dashboard_link(link: Optional[str]) -> Optional[str]:
    """``link`` (``http://host:port/prefix/status?token=...``) rewritten by a configured template,
    formatted as dask does with ``scheme``, ``host``, ``port`` and the environment's variables."""
    template = dask_setting("distributed.dashboard.link", DASK_DEFAULT_LINK)
    if link is None or not isinstance(template, str) or template == DASK_DEFAULT_LINK:
        return link
    from urllib.parse import urlsplit

    parts = urlsplit(link)
    fields = {**os.environ, "scheme": parts.scheme, "host": parts.hostname, "port": parts.port}
    try:
        formatted = template.format(**fields)
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(
            f"distributed.dashboard.link {template!r} names {exc} that is neither scheme, host, "
            "port nor an environment variable"
        ) from None
    return formatted + (f"?{parts.query}" if parts.query else "")
