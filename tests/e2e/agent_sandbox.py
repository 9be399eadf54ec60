"""Run a coding-agent CLI (Claude Code, Codex) offline against the system, and see what it sent.

`AgentSandbox` puts three things around one CLI run:
- a relay: a reverse proxy in front of the gateway that records every exchange (method, path,
  status, request body, response body), so a test can check that the CLI printed what the server
  answered, and how many prompt tokens came from the cache;
- an egress trap: HTTP_PROXY, HTTPS_PROXY and ALL_PROXY point at a listener that records the
  target of every request sent to it (`CONNECT api.anthropic.com:443`) and refuses it; NO_PROXY
  lets loopback through. Both CLIs honour these variables, so anything they try to reach past the
  machine shows up in `AgentRun.egress` and the test fails naming it;
- where `unshare -n` works (Linux as root, or with user namespaces), a network namespace of its
  own whose only interface is loopback: the CLI reaches the relay and the trap through Unix
  sockets that this file, run as a script inside the namespace, forwards to the same loopback
  ports. There, a connection that ignores the proxy variables fails instead of leaving.

The CLI gets a scratch HOME and a small environment (PATH, HOME, locale and what the test
passes), never the caller's: a developer's ANTHROPIC_API_KEY or ~/.codex stays out of it.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

CLIENTS = Path(__file__).resolve().parents[1] / "clients"
NODE_BIN = CLIENTS / "node_modules" / ".bin"
LOOPBACK = "127.0.0.1"


@dataclass
class Exchange:
    """One request the CLI sent through the relay, and the gateway's answer."""

    method: str
    path: str
    request: bytes
    status: int = 0
    response: bytes = b""

    def json(self) -> Any:
        return json.loads(self.request) if self.request else None

    def sse(self) -> list[tuple[str, dict]]:
        """The response as (event, data) pairs, for a streamed answer."""
        events, name = [], ""
        for line in self.response.decode(errors="replace").splitlines():
            if line.startswith("event:"):
                name = line[len("event:"):].strip()
            elif line.startswith("data:") and line[len("data:"):].strip() not in ("", "[DONE]"):
                events.append((name, json.loads(line[len("data:"):])))
        return events


@dataclass
class AgentRun:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    exchanges: list[Exchange]
    egress: list[str]
    isolated: bool  # ran in a network namespace of its own

    def posts(self, path: str) -> list[Exchange]:
        return [e for e in self.exchanges if e.method == "POST" and e.path.split("?")[0] == path]

    def describe(self) -> str:
        """What a failing assertion should show: the exit, the output, what was sent."""
        sent = "\n".join(f"  {e.method} {e.path} -> {e.status} {e.response[:300]!r}" for e in self.exchanges)
        return (f"exit {self.returncode} after {self.seconds:.1f}s\n--- stdout\n{self.stdout[-2000:]}\n"
                f"--- stderr\n{self.stderr[-3000:]}\n--- requests\n{sent or '  none'}\n--- egress {self.egress}")


def cli_binary(name: str) -> Path:
    """tests/clients' `name` (claude, codex); the test fails, naming the install step, without it."""
    path = NODE_BIN / name
    if not path.exists():
        pytest.fail(f"{name} is not installed: run `npm ci --prefix {CLIENTS}` (make install-test does)")
    return path


@functools.lru_cache(maxsize=1)
def unshare_prefix() -> tuple[str, ...]:
    """The `unshare` command that gives a process a network namespace of its own, or () where
    none can be made (macOS, a container without the privilege)."""
    for prefix in (("unshare", "-n"), ("unshare", "-rn")):
        try:
            if subprocess.run([*prefix, "true"], check=False, capture_output=True, timeout=10).returncode == 0:
                return prefix
        except (OSError, subprocess.TimeoutExpired):
            continue
    return ()


class AgentSandbox:
    """The relay to `gateway` and the egress trap, served from a thread while the tests run."""

    def __init__(self, gateway: str, workdir: Path) -> None:
        self.gateway = gateway.rstrip("/")
        self.workdir = workdir
        self.sockets = workdir / "sockets"
        self.sockets.mkdir(parents=True, exist_ok=True)
        self.exchanges: list[Exchange] = []
        self.egress: list[str] = []
        self.relay_port = 0
        self.trap_port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="agent-sandbox", daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the agent sandbox's relay did not start")

    @property
    def url(self) -> str:
        """The gateway as the CLI sees it (the relay)."""
        return f"http://{LOOPBACK}:{self.relay_port}"

    # -- serving --------------------------------------------------------------------------

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._start())
        self._ready.set()
        self._loop.run_forever()

    async def _start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_read=900))
        app = web.Application(client_max_size=64 << 20)
        app.router.add_route("*", "/{tail:.*}", self._relay)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind((LOOPBACK, 0))
        self.relay_port = listener.getsockname()[1]
        await web.SockSite(self._runner, listener).start()
        await web.UnixSite(self._runner, str(self.sockets / "relay")).start()
        trap = await asyncio.start_server(self._trap, LOOPBACK, 0)
        self.trap_port = trap.sockets[0].getsockname()[1]
        await asyncio.start_unix_server(self._trap, str(self.sockets / "trap"))

    async def _relay(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        exchange = Exchange(request.method, request.path_qs, body)
        self.exchanges.append(exchange)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length", "accept-encoding")}
        async with self._session.request(request.method, self.gateway + request.path_qs, data=body, headers=headers) as up:
            exchange.status = up.status
            relayed = {k: v for k, v in up.headers.items()
                       if k.lower() not in ("content-length", "transfer-encoding", "content-encoding", "connection", "date", "server")}
            response = web.StreamResponse(status=up.status, headers=relayed)
            await response.prepare(request)
            async for chunk in up.content.iter_any():
                exchange.response += chunk
                await response.write(chunk)
            await response.write_eof()
            return response

    async def _trap(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 10)
            parts = line.decode(errors="replace").split()
            self.egress.append(parts[1] if len(parts) > 1 else line.decode(errors="replace").strip())
            writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    def close(self) -> None:
        async def stop() -> None:
            await self._session.close()
            await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    # -- running a CLI --------------------------------------------------------------------

    def run(self, argv: list[str], *, home: Path, env: dict[str, str], cwd: Path, timeout: float) -> AgentRun:
        """Run `argv` with a scratch `home`, `env` on top of a minimal environment, the proxies
        set to the trap; isolated in a network namespace where one can be made."""
        home.mkdir(parents=True, exist_ok=True)
        cwd.mkdir(parents=True, exist_ok=True)
        trap = f"http://{LOOPBACK}:{self.trap_port}"
        full_env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LANG": "C.UTF-8", "TERM": "dumb",
            "HTTP_PROXY": trap, "HTTPS_PROXY": trap, "ALL_PROXY": trap,
            "http_proxy": trap, "https_proxy": trap, "all_proxy": trap,
            "NO_PROXY": f"{LOOPBACK},localhost", "no_proxy": f"{LOOPBACK},localhost",
            **env,
        }
        prefix = unshare_prefix()
        command = list(argv)
        if prefix:
            command = [*prefix, sys.executable, __file__,
                       f"{self.relay_port}={self.sockets / 'relay'}", f"{self.trap_port}={self.sockets / 'trap'}",
                       "--", *argv]
        seen = len(self.exchanges), len(self.egress)
        started = time.monotonic()
        proc = subprocess.Popen(command, env=full_env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
            stderr += f"\n[killed after {timeout:.0f}s]"
        return AgentRun(proc.returncode, stdout, stderr, time.monotonic() - started,
                        self.exchanges[seen[0]:], self.egress[seen[1]:], bool(prefix))


# -- inside the namespace -----------------------------------------------------------------------


def _loopback_up() -> None:
    """`ip link set lo up`, without needing iproute2."""
    import fcntl
    import struct

    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(s, siocgifflags, ifreq))[1]
        fcntl.ioctl(s, siocsifflags, struct.pack("16sH22x", b"lo", flags | iff_up))


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _forward(port: int, unix_path: str) -> None:
    """Accept on loopback `port` and carry each connection to the Unix socket `unix_path`."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((LOOPBACK, port))
    listener.listen(64)

    def accept() -> None:
        while True:
            inside, _ = listener.accept()
            outside = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                outside.connect(unix_path)
            except OSError:
                inside.close()
                continue
            for a, b in ((inside, outside), (outside, inside)):
                threading.Thread(target=_pump, args=(a, b), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()


def _main(args: list[str]) -> int:
    """`agent_sandbox.py PORT=SOCKET... -- COMMAND...`: bring loopback up, forward each PORT to
    its SOCKET, run COMMAND and exit with its status."""
    split = args.index("--")
    _loopback_up()
    for spec in args[:split]:
        port, unix_path = spec.split("=", 1)
        _forward(int(port), unix_path)
    proc = subprocess.Popen(args[split + 1:])
    signal.signal(signal.SIGTERM, lambda *_: proc.terminate())
    return proc.wait()


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
