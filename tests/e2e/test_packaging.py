"""What an installed mlxserve exposes, seen from a fresh interpreter outside the repository."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_source_folders_are_not_top_level_import_names(tmp_path: Path) -> None:
    # Run a fresh interpreter outside the repo: what an installed mlxserve exposes, nothing else.
    code = (
        "import importlib.util, mlxserve.gateway, mlxserve.cli, mlxserve.services\n"
        "print([n for n in ('cli', 'gateway', 'services', 'protos') if importlib.util.find_spec(n)])"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
