"""The store's on-disk format version: `models/store-format.json`, checked before anything is read.

Each mlxserve knows the format it writes (`CURRENT`) and a migration from every older format to
the next one. Opening a store runs the migrations it needs, one step at a time, each logged and
each recorded in the marker as soon as it is done (so an interrupted upgrade resumes at the step
it stopped at). A store written by a newer mlxserve is refused with a message that says what to
do: nothing in it is read or changed.

Format history:
  0  blobs/, manifests/, views/ and tmp/ as first released, with no marker.
  1  the same layout with the marker.
  2  bare names mean Ollama's library: manifests/mlxserve.local/ moved to manifests/registry.ollama.ai/.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from mlxserve import __version__
from mlxserve.services.common import logs
from mlxserve.services.common.errors import InvalidArgument, Unsupported

from .blobs import write_atomic

FORMAT_FILE = "store-format.json"
CURRENT = 2

Migration = Callable[[Path], None]


def _adopt_unversioned(models_dir: Path) -> None:
    """0 -> 1: the layout is unchanged; writing the marker (done by the caller) is the migration."""


OLD_DEFAULT_HOST = "mlxserve.local"
NEW_DEFAULT_HOST = "registry.ollama.ai"


def _bare_names_to_ollama_host(models_dir: Path) -> None:
    """1 -> 2: the default host of bare names became Ollama's registry; move their manifests.

    Each manifest file is renamed on its own (so a step interrupted halfway resumes); a name that
    already exists under the new host keeps that manifest, and the old one stays where it was,
    listed under its full name (mlxserve.local/library/NAME:TAG) instead of being lost.
    """
    log = logs.get_logger(component="store_format")
    old_root = models_dir / "manifests" / OLD_DEFAULT_HOST
    if not old_root.is_dir():
        return
    for path in sorted(p for p in old_root.rglob("*") if p.is_file()):
        target = models_dir / "manifests" / NEW_DEFAULT_HOST / path.relative_to(old_root)
        if target.exists():
            log.warning("store_format_name_kept", manifest=str(path), reason=f"{target} exists")
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        path.rename(target)
    for folder in sorted((p for p in old_root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        if not any(folder.iterdir()):
            folder.rmdir()
    if not any(old_root.iterdir()):
        old_root.rmdir()


# MIGRATIONS[n] turns format n into format n + 1.
MIGRATIONS: dict[int, Migration] = {0: _adopt_unversioned, 1: _bare_names_to_ollama_host}


def read_format(models_dir: Path) -> int | None:
    """The format recorded in `models_dir`, 0 for a pre-marker store, None for a new (empty) one."""
    marker = models_dir / FORMAT_FILE
    try:
        raw = marker.read_bytes()
    except FileNotFoundError:
        has_content = any((models_dir / d).is_dir() and any((models_dir / d).iterdir()) for d in ("blobs", "manifests"))
        return 0 if has_content else None
    try:
        doc = json.loads(raw)
        version = doc["format"]
        if not isinstance(version, int) or isinstance(version, bool) or version < 0:
            raise ValueError(f"format must be a non-negative integer, got {version!r}")
    except (ValueError, KeyError, TypeError) as e:
        raise InvalidArgument(f"the model store's format marker {marker} is damaged ({e}); it should read "
                              f'{{"format": {CURRENT}}} if this store was written by this version of mlxserve') from None
    return version


def write_format(models_dir: Path, version: int) -> None:
    doc = {"format": version, "written_by": f"mlxserve {__version__}"}
    write_atomic(models_dir / FORMAT_FILE, (json.dumps(doc) + "\n").encode(), models_dir)


def ensure_format(models_dir: Path, *, migrations: dict[int, Migration] | None = None, current: int = CURRENT) -> int:
    """Bring `models_dir` to format `current`, or refuse it; returns the format found.

    Raises Unsupported for a store newer than `current` (or one with no migration path).
    `migrations` and `current` are parameters so that tests can exercise a multi-step upgrade.
    """
    migrations = MIGRATIONS if migrations is None else migrations
    models_dir.mkdir(parents=True, exist_ok=True)
    found = read_format(models_dir)
    if found is None:
        write_format(models_dir, current)
        return current
    if found > current:
        raise Unsupported(
            f"the model store at {models_dir} has format {found}, written by a newer mlxserve; this one "
            f"(mlxserve {__version__}) reads format {current} at most. Upgrade mlxserve "
            f"(`pip install -U mlxserve`), or point MLXSERVE_HOME at another folder to start an empty store; "
            f"nothing in this store was changed")
    log = logs.get_logger(component="store_format")
    version = found
    while version < current:
        step = migrations.get(version)
        if step is None:
            raise Unsupported(f"the model store at {models_dir} has format {version}, and this mlxserve has no "
                              f"migration from it; install a mlxserve release that reads format {version} and "
                              f"re-export your models with `mlxctl pack`, or start an empty store elsewhere")
        log.info("store_format_migrating", models_dir=str(models_dir), from_format=version, to_format=version + 1)
        step(models_dir)
        version += 1
        write_format(models_dir, version)
        log.info("store_format_migrated", models_dir=str(models_dir), format=version)
    return found
