"""The one configuration loader: defaults < config file < environment < command-line flags.

Every knob is a field of `Settings`. The file is TOML at `$MLXSERVE_HOME/config.toml` (or
`$MLXSERVE_CONFIG`); each field can be set in the environment as `MLXSERVE_<FIELD>` (upper case);
flags arrive as a dict of overrides from the entry point that parsed them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .addresses import parse_pattern
from .errors import InvalidArgument

DEFAULT_PORT = 11435
CPU_FLOAT32_CHOICES = ("auto", "always", "never")
# Not a setting: the supervisor tells each worker the bytes it may use (its share of
# memory_budget) in this variable, so that cpu_float32=auto can decide.
WORKER_MEMORY_BUDGET_ENV = "MLXSERVE_WORKER_MEMORY_BUDGET"

# Ollama's default origins: pages served from this machine, and desktop/editor app shells.
DEFAULT_CORS_ORIGINS: tuple[str, ...] = (
    *(f"{scheme}://{host}{port}" for host in ("localhost", "127.0.0.1", "[::1]")
      for scheme in ("http", "https") for port in ("", ":*")),
    "app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*",
)


@dataclass(frozen=True)
class Settings:
    home: Path = field(default_factory=lambda: Path.home() / ".mlxserve")
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    keep_alive: float = 300.0        # seconds a model stays loaded after its last request
    # Requests decoded together per model (batch size). 16: on a 2-core CPU, 16 concurrent SmolLM2
    # requests get 1.28x the aggregate tok/s of 8 and 2.1x that of 4, worst TTFT 5 s vs 10 s and 19 s
    # (tests/bench/results/num-parallel-cpu.json); GPUs keep scaling to 32 (gpu-*.json). Each
    # running request holds its own KV cache.
    num_parallel: int = 16
    max_queue: int = 64              # requests waiting per model beyond num_parallel
    prefix_cache_bytes: int = 1 << 30  # KV caches kept per worker for reuse by later prompts
    prefix_cache_entries: int = 64     # ... and at most this many of them (0: no prefix cache)
    # Long prefixes also go to $MLXSERVE_HOME/cache/prefix, for the next worker of the model:
    # bytes all models' files may take together (least recently used go first; 0: off) ...
    prefix_cache_disk_bytes: int = 10 << 30
    prefix_cache_disk_min_tokens: int = 1024  # ... and the shortest sequence written or read there
    load_timeout: float = 300.0      # seconds a worker may take to load its model (and a load may wait for room)
    max_loaded_models: int = 3       # models resident at once (0: no limit); Ollama's per-GPU default
    memory_budget: int = 0           # bytes all workers may use together; 0: 75% of physical memory
    # CPU backend: compute quantized / half-precision models in float32 (BLAS-backed, much faster):
    # "auto" when the float32 weights fit the memory budget, "always", or "never".
    cpu_float32: str = "auto"
    # CPU backend on Linux: the BLAS workers preload for their matmuls: "auto" (an optimized one,
    # e.g. Debian's libopenblas0-pthread, when installed), "off", or the path of a BLAS library.
    cpu_blas: str = "auto"
    wedge_timeout: float = 60.0      # seconds a worker with work outstanding may make no progress (0: never)
    restart_backoff: float = 1.0     # seconds before retrying a model whose load failed; doubles per failure
    restart_backoff_max: float = 60.0  # ... up to this
    request_timeout: float = 600.0   # seconds one generation may take end to end
    log_level: str = "info"
    max_body_bytes: int = 32 * 1024 * 1024
    # Bytes of request bodies over 1 MiB the gateway holds at once (each is parsed and copied a few
    # times while its request runs); one that would pass it is refused as busy (503, Retry-After).
    max_inflight_body_bytes: int = 256 * 1024 * 1024
    body_timeout: float = 60.0       # seconds a client may take to send a request's headers and JSON body
    # Exposure (README "Exposing the server"). api_key: the Bearer token every HTTP request must
    # carry (except GET/HEAD / and GET /api/health); required to listen beyond loopback unless
    # insecure_no_auth waives it (logged loudly at every start).
    api_key: str = field(default="", repr=False)  # kept out of reprs, tracebacks and logs
    insecure_no_auth: bool = False
    # Browser origins allowed to call the API (`*` matches any run of characters but `/`); a
    # request with any other Origin is refused. In the environment: comma-separated.
    cors_origins: tuple[str, ...] = field(default_factory=lambda: DEFAULT_CORS_ORIGINS)
    # Host header values accepted besides localhost/127.0.0.1/[::1] while bound to loopback
    # (the DNS-rebinding guard); `name` allows any port, `name:port` only that one.
    allowed_hosts: tuple[str, ...] = ()
    # Registry credentials for pull/push, by registry host ("host[:port]"): a table with
    # `username` and `password`, or `auth` (base64 of "user:password", as in Docker's config).
    # [registry_auth."registry.example.com"]
    # username = "me"
    # password = "secret"
    registry_auth: dict[str, dict[str, str]] = field(default_factory=dict)
    # Where `pull` fetches bare names (Ollama's library: `gemma3:270m`) from: Ollama's registry, or
    # a mirror of it as "host[:port]" (https) or "http://host[:port]" (plain http: an explicit choice).
    # The names and where they are stored do not change with it.
    default_registry: str = "registry.ollama.ai"
    # Hosts that pull/push may reach over plain http (`insecure`) besides loopback, which always may:
    # "host", "host:port", "*.lan", or a network "192.168.1.0/24" (as Docker's insecure-registries).
    # Link-local and cloud metadata addresses are never reached, whatever this says (addresses.py).
    insecure_registries: tuple[str, ...] = ()
    # The Hugging Face hub that hf.co/ORG/REPO names are pulled from: "" means $HF_ENDPOINT, else
    # https://huggingface.co. An http:// endpoint (a local mirror) is an explicit choice.
    hf_endpoint: str = ""
    # A file holding a Hugging Face token (gated or private repos): "" means $HF_TOKEN, else the
    # token `hf auth login` saved.
    hf_token_file: str = field(default="", repr=False)
    # Models served by a group of MLX processes (mx.distributed; README "Models larger than one
    # machine"). `distributed`: the group a model goes to when it fits no single host's memory
    # budget (keys as in services/common/placement.py: hosts or hostfile, strategy, backend,
    # python, rank_memory, port). `placements`: a group per model name, used whatever its size.
    # [distributed]
    # hosts = ["127.0.0.1", "10.0.0.2"]
    # strategy = "pipeline"
    # [placements."llama3.3:70b"]
    # hostfile = "~/.mlxserve/hosts.json"
    distributed: dict[str, Any] = field(default_factory=dict)
    placements: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def prefix_cache_dir(self) -> Path:
        return self.home / "cache" / "prefix"

    @property
    def store_socket(self) -> Path:
        return self.run_dir / "store.sock"

    @property
    def supervisor_socket(self) -> Path:
        return self.run_dir / "supervisor.sock"

    @property
    def store_target(self) -> str:
        return f"unix://{self.store_socket}"

    @property
    def supervisor_target(self) -> str:
        return f"unix://{self.supervisor_socket}"

    @property
    def base_url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    def ensure_dirs(self) -> None:
        """Create home, models, run (0700: internal sockets live there) and logs directories."""
        for d in (self.home, self.models_dir, self.logs_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.run_dir, 0o700)

    def to_env(self) -> dict[str, str]:
        """The environment that makes a child process load these same settings.

        Registry credentials stay out of it: the store reads them from the config file itself.
        The API key does travel: a key given to `mlxctl serve` exists nowhere else, and a
        process's environment is readable only by its own user (/proc/PID/environ is 0400),
        the same people who can read the config file.
        """
        return {
            f"MLXSERVE_{f.name.upper()}": _env_text(getattr(self, f.name))
            for f in dataclasses.fields(self) if f.name not in _SECRET_FIELDS
        }


_SECRET_FIELDS = {"registry_auth"}
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _env_text(value: Any) -> str:
    """A value as `_coerce` reads it back: booleans as true/false, lists and tables as JSON (so () survives)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return json.dumps(list(value))
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


def _string_list(name: str, raw: Any) -> tuple[str, ...]:
    """A list of strings: a TOML array, or in the environment comma-separated text (or a JSON array)."""
    if isinstance(raw, str):
        text = raw.strip()
        if text.startswith("["):
            try:
                raw = json.loads(text)
            except ValueError as e:
                raise InvalidArgument(f"config: {name} is not a valid JSON list: {e}") from e
        else:
            raw = [part.strip() for part in text.split(",") if part.strip()]
    if not isinstance(raw, (list, tuple)) or not all(isinstance(v, str) for v in raw):
        raise InvalidArgument(f"config: {name} must be a list of strings (comma-separated in the environment), got {raw!r}")
    return tuple(raw)


def _bool(name: str, raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise InvalidArgument(f"config: {name} must be true or false (or 1/0, yes/no), got {raw!r}")
_REGISTRY_AUTH_KEYS = {"username", "password", "auth", "identitytoken"}


def _registry_auth(raw: Any) -> dict[str, dict[str, str]]:
    """Validate the registry_auth table (TOML table, or JSON text from the environment)."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError as e:
            raise InvalidArgument(f"config: registry_auth must be a table (JSON in the environment): {e}") from e
    if not isinstance(raw, Mapping):
        raise InvalidArgument("config: registry_auth must be a table of registry host -> credentials")
    out: dict[str, dict[str, str]] = {}
    for host, creds in raw.items():
        if not isinstance(creds, Mapping) or not creds:
            raise InvalidArgument(f"config: registry_auth.{host} must be a table with username/password or auth")
        unknown = set(creds) - _REGISTRY_AUTH_KEYS
        if unknown:
            raise InvalidArgument(f"config: registry_auth.{host} has unknown keys {sorted(unknown)}; "
                                  f"use {sorted(_REGISTRY_AUTH_KEYS)}")
        if not all(isinstance(v, str) for v in creds.values()):
            raise InvalidArgument(f"config: registry_auth.{host} values must be strings")
        out[str(host).lower()] = dict(creds)
    return out


def _placement_table(name: str, raw: Any, *, per_model: bool) -> dict[str, Any]:
    """Validate `distributed` (one placement) or `placements` (name -> placement); JSON text in the environment."""
    from .placement import parse_placement  # placement imports errors only; kept local to keep config's imports lean

    if isinstance(raw, str):
        try:
            raw = json.loads(raw) if raw.strip() else {}
        except ValueError as e:
            raise InvalidArgument(f"config: {name} must be a table (JSON in the environment): {e}") from e
    if not isinstance(raw, Mapping):
        raise InvalidArgument(f"config: {name} must be a table")
    if not per_model:
        if raw:
            parse_placement(raw, source=f"config: {name}")
        return dict(raw)
    out: dict[str, dict[str, Any]] = {}
    for model, table in raw.items():
        parse_placement(table, source=f"config: placements.{model}")
        out[str(model)] = dict(table)
    return out


def _coerce(name: str, raw: Any) -> Any:
    types = {f.name: f.type for f in dataclasses.fields(Settings)}
    kind = types[name]
    if name == "registry_auth":
        return _registry_auth(raw)
    if name in ("distributed", "placements"):
        return _placement_table(name, raw, per_model=name == "placements")
    if kind == "bool":
        return _bool(name, raw)
    if kind == "tuple[str, ...]":
        return _string_list(name, raw)
    try:
        if kind in ("Path",):
            return Path(str(raw)).expanduser()
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        return str(raw)
    except (TypeError, ValueError) as e:
        raise InvalidArgument(f"config: {name} must be {kind}, got {raw!r}") from e


def load_settings(overrides: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from defaults, the config file, the environment and `overrides` (flags).

    `None` values in `overrides` mean "flag not given" and are skipped.
    """
    env = os.environ if env is None else env
    names = {f.name for f in dataclasses.fields(Settings)}
    values: dict[str, Any] = {}

    home = Path(env.get("MLXSERVE_HOME", "") or Path.home() / ".mlxserve").expanduser()
    if overrides and overrides.get("home"):
        home = Path(overrides["home"]).expanduser()
    cfg_path = Path(env.get("MLXSERVE_CONFIG", "") or home / "config.toml")
    if cfg_path.is_file():
        try:
            data = tomllib.loads(cfg_path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise InvalidArgument(f"config file {cfg_path}: {e}") from e
        for key, raw in data.items():
            if key not in names:
                raise InvalidArgument(f"config file {cfg_path}: unknown setting {key!r}")
            values[key] = _coerce(key, raw)
    for name in names:
        raw = env.get(f"MLXSERVE_{name.upper()}")
        if raw not in (None, ""):
            values[name] = _coerce(name, raw)
    for name, raw in (overrides or {}).items():
        if raw is None:
            continue
        if name not in names:
            raise InvalidArgument(f"unknown setting {name!r}")
        values[name] = _coerce(name, raw)
    values["home"] = home if "home" not in values else values["home"]
    if values.get("cpu_float32", "auto") not in CPU_FLOAT32_CHOICES:
        raise InvalidArgument(f"config: cpu_float32 must be one of {', '.join(CPU_FLOAT32_CHOICES)}, got {values['cpu_float32']!r}")
    for pattern in values.get("insecure_registries", ()):
        try:
            parse_pattern(pattern)
        except ValueError as e:
            raise InvalidArgument(f"config: insecure_registries: {e}") from None
    if "default_registry" in values:
        _check_endpoint("default_registry", values["default_registry"], bare_host=True)
    if values.get("hf_endpoint"):
        _check_endpoint("hf_endpoint", values["hf_endpoint"], bare_host=False)
    return Settings(**values)


_ENDPOINT = re.compile(r"(?:(https?)://)?([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::(\d{1,5}))?/?")


def _check_endpoint(name: str, value: str, *, bare_host: bool) -> None:
    """`host[:port]` (when `bare_host`) or `http(s)://host[:port]`: where a pull goes."""
    m = _ENDPOINT.fullmatch(value.strip())
    if not m or (not bare_host and not m.group(1)) or (m.group(3) and not 0 < int(m.group(3)) < 65536):
        form = "host[:port], https://host[:port] or http://host[:port]" if bare_host else "https://host[:port] or http://host[:port]"
        raise InvalidArgument(f"config: {name} must be {form}, got {value!r}")


def worker_memory_budget(env: Mapping[str, str] | None = None) -> int:
    """The bytes this worker may use, as its supervisor set WORKER_MEMORY_BUDGET_ENV (0: unknown)."""
    raw = (os.environ if env is None else env).get(WORKER_MEMORY_BUDGET_ENV, "")
    if not raw:
        return 0
    try:
        return max(0, int(raw))
    except ValueError as e:
        raise InvalidArgument(f"{WORKER_MEMORY_BUDGET_ENV} must be a number of bytes, got {raw!r}") from e
