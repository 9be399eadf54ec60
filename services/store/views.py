"""Worker views: the read-only folder of links to blobs that a worker loads a model from.

`views/<manifest-hex>/<title> -> ../../blobs/sha256-<hex>` for every layer, plus the model's
defaults file. A view is built once per manifest digest and rebuilt whenever it does not match
its manifest exactly (a link missing, pointing elsewhere, or defaults that changed).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from mlxserve.services.common.errors import Internal

from .blobs import BlobStore, fsync_dir, remove_tree
from .manifest import Manifest, ModelConfig

# The model's defaults (SYSTEM, PARAMETER, MESSAGE) as a file in its view, which the worker
# reads at load (services/worker/defaults.py); a regular file, as it derives from the config blob.
VIEW_DEFAULTS_FILE = "mlxserve-defaults.json"


def view_defaults(config: ModelConfig) -> bytes:
    """The view's defaults file: what the worker applies to every request for this model."""
    doc = {"system": config.system, "parameters": config.parameters, "messages": config.messages}
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False).encode() + b"\n"


def view_ok(view: Path, manifest: Manifest, defaults: bytes, blobs: BlobStore) -> bool:
    """Whether `view` holds exactly the manifest's layers (as links to their blobs) and `defaults`."""
    if not view.is_dir():
        return False
    expected = {layer.title: layer.digest for layer in manifest.layers}
    try:
        names = {p.name for p in view.iterdir()}
    except OSError:
        return False
    # A view built before the defaults file existed lacks it, and so is rebuilt.
    if names != set(expected) | {VIEW_DEFAULTS_FILE}:
        return False
    for title, digest in expected.items():
        link = view / title
        if not link.is_symlink() or link.resolve() != blobs.path(digest).resolve() or not link.exists():
            return False
    defaults_file = view / VIEW_DEFAULTS_FILE
    try:
        return not defaults_file.is_symlink() and defaults_file.read_bytes() == defaults
    except OSError:
        return False


def build_view(view: Path, manifest: Manifest, display_name: str, defaults: bytes, blobs: BlobStore,
               tmp_dir: Path) -> None:
    """(Re)build `view` for `manifest`: links staged in `tmp_dir`, then renamed into place."""
    missing = [layer.title for layer in manifest.layers if not blobs.exists(layer.digest)]
    if missing:
        raise Internal(f"model '{display_name}' is damaged: blobs for {', '.join(missing)} are missing; remove and create it again")
    if any(layer.title == VIEW_DEFAULTS_FILE for layer in manifest.layers):
        # Only a manifest from elsewhere can have one (create never makes that layer).
        raise Internal(f"model '{display_name}' has a layer named {VIEW_DEFAULTS_FILE}, which mlxserve reserves for its own use")
    if view.exists():
        remove_tree(view)
    tmp = Path(tempfile.mkdtemp(dir=tmp_dir, prefix="view-"))
    try:
        for layer in manifest.layers:
            # tmp/<x>/ and views/<x>/ sit at the same depth, so one relative link works in both.
            target = os.path.relpath(blobs.path(layer.digest), view)
            os.symlink(target, tmp / layer.title)
        defaults_file = tmp / VIEW_DEFAULTS_FILE
        defaults_file.write_bytes(defaults)
        os.chmod(defaults_file, 0o444)
        os.chmod(tmp, 0o555)  # read-only: a worker must never write into the store
        os.replace(tmp, view)
        fsync_dir(view.parent)
    except BaseException:
        remove_tree(tmp)
        raise
