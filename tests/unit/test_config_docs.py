"""The README's Configuration table documents every setting the one loader knows, with its real default."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from mlxserve.services.common.config import Settings

README = Path(__file__).resolve().parents[2] / "README.md"
ROW = re.compile(r"^\| `([a-z0-9_]+)` \| ([^|]*) \|")


def documented() -> dict[str, str]:
    text = README.read_text()
    section = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    return {m.group(1): m.group(2).strip() for line in section.splitlines() if (m := ROW.match(line))}


def test_every_setting_is_documented_and_nothing_else_is():
    fields = {f.name for f in dataclasses.fields(Settings)}
    docs = documented()
    assert set(docs) == fields, f"missing from README: {sorted(fields - set(docs))}; stale: {sorted(set(docs) - fields)}"


def test_documented_scalar_defaults_are_the_real_ones():
    defaults = Settings()
    for name, shown in documented().items():
        value = getattr(defaults, name)
        if isinstance(value, bool):
            assert shown == f"`{str(value).lower()}`", name
        elif isinstance(value, (int, float)):
            assert float(shown.strip("`")) == float(value), f"{name}: README says {shown}, the default is {value}"
        elif isinstance(value, str) and value:
            assert shown == f"`{value}`", name
        elif not value:  # empty string, list or table
            assert shown == "none", f"{name}: README says {shown} for an empty default"
