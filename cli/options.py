"""The request flags `mlxctl run` and `mlxctl chat` share: `--option KEY=VALUE` and `--format`."""

from __future__ import annotations

import json

from mlxserve.services.common.errors import InvalidArgument


def parse_options(pairs: list[str]) -> dict:
    """`KEY=VALUE` pairs as an Ollama `options` object; values are JSON where they parse (numbers,
    booleans, lists), else strings. `stop` may repeat and accumulates into a list."""
    options: dict = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise InvalidArgument(f"--option wants KEY=VALUE, got {pair!r}")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        key = key.strip()
        if key == "stop":
            options.setdefault("stop", []).extend(value if isinstance(value, list) else [str(value)])
        else:
            options[key] = value
    return options


def check_format(format_: str | None) -> None:
    """`--format` takes `json` (a JSON schema goes through the API, not the command line)."""
    if format_ is not None and format_ != "json":
        raise InvalidArgument(f"--format takes 'json', got {format_!r}")
