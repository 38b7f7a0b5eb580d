"""Version information of this interpreter, for ``client.get_versions()`` (run here and on workers).

Shaped like dask's: ``{"host": {...}, "packages": {name: version or None}}``. Required packages are
those every part of a cluster must agree on (pickles cross between them); ``check=True`` compares them.
"""

from __future__ import annotations

import platform
import sys

REQUIRED = ("python", "minidist", "cloudpickle")
OPTIONAL = ("numpy", "dask", "distributed", "psutil", "joblib")


def package_versions(packages=(), dask_worker=None) -> dict:
    """Host facts and the versions of the required, optional and asked-for packages."""
    from importlib import metadata

    from . import __version__

    versions: dict = {"python": ".".join(map(str, sys.version_info[:3])), "minidist": __version__}
    for name in (*REQUIRED[2:], *OPTIONAL, *packages):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "host": {
            "python": sys.version,
            "python-bits": 64 if sys.maxsize > 2**32 else 32,
            "OS": platform.system(),
            "OS-release": platform.release(),
            "machine": platform.machine(),
            "byteorder": sys.byteorder,
        },
        "packages": versions,
    }


def mismatches(versions: dict) -> list:
    """Lines naming required packages whose versions differ between client, scheduler and workers."""
    parts = {"client": versions["client"], "scheduler": versions["scheduler"]}
    parts.update({f"worker {a}": v for a, v in versions["workers"].items()})
    lines = []
    for name in REQUIRED:
        seen = {where: info["packages"].get(name) for where, info in parts.items()}
        if len(set(seen.values())) > 1:
            detail = ", ".join(f"{where}: {version}" for where, version in seen.items())
            lines.append(f"{name} differs ({detail})")
    return lines
