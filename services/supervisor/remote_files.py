"""The model's files on a remote rank's host: copied there once per model digest, over ssh.

A remote rank loads the same weights as rank 0, from its own disk. The supervisor copies the
model's view (config, tokenizer, safetensors: the symlinks followed) with `rsync` over `ssh` into
`<remote_dir>/<digest>/` on that host, then writes a marker file; a later load of the same digest
finds the marker and copies nothing. A copy cut short resumes (rsync --partial) at the next load.
The remote directory is relative to the remote user's home unless absolute.
"""

from __future__ import annotations

import asyncio
import shlex
from pathlib import Path

from mlxserve.services.common import logs
from mlxserve.services.common.errors import Unavailable
from mlxserve.services.common.placement import DEFAULT_MODEL_DIR

from .group import SSH_OPTIONS, ssh_command

COMPLETE_MARKER = ".mlxserve-complete"
CHECK_TIMEOUT_S = 30.0

log = logs.get_logger(component="pool")


def remote_model_path(remote_dir: str, digest: str) -> str:
    return f"{remote_dir.rstrip('/') or '.'}/{digest}"


def check_command(host: str, path: str) -> list[str]:
    """Prints "ok PATH" (the absolute path there) when the copy at `path` is complete, else "missing PATH"."""
    q = shlex.quote(path)
    return ssh_command(host, f"cd ~ && p=$(cd {q} 2>/dev/null && pwd) && test -f \"$p\"/{COMPLETE_MARKER} "
                             f"&& echo ok \"$p\" || echo missing {q}")


def rsync_command(host: str, view_path: str | Path, path: str) -> list[str]:
    """Copy the view's files (links followed: they point at blobs) into `path` on `host`."""
    remote_shell = " ".join(["ssh", *SSH_OPTIONS])
    # The folder is made by the remote side's rsync command, not --mkpath: macOS's openrsync lacks it.
    return ["rsync", "-a", "--copy-links", "--partial", "--delete", "-e", remote_shell,
            f"--rsync-path=mkdir -p {shlex.quote(path)} && rsync",
            f"{str(view_path).rstrip('/')}/", f"{host}:{path}/"]


def mark_command(host: str, path: str) -> list[str]:
    return ssh_command(host, f"cd ~ && touch {shlex.quote(path)}/{COMPLETE_MARKER} && cd {shlex.quote(path)} && pwd")


async def _run(cmd: list[str], *, timeout: float | None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(*cmd, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE, start_new_session=True)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except (asyncio.TimeoutError, asyncio.CancelledError):
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")


async def ensure_model_on(host: str, view_path: str | Path, digest: str, remote_dir: str = DEFAULT_MODEL_DIR,
                          *, copy_timeout: float | None = None) -> str:
    """The absolute path of the model's files on `host`, copying them there first if needed.
    Raises Unavailable naming the host and the failing step."""
    path = remote_model_path(remote_dir, digest)
    try:
        rc, out, err = await _run(check_command(host, path), timeout=CHECK_TIMEOUT_S)
    except asyncio.TimeoutError:
        raise Unavailable(f"host {host}: checking for the model's files at {path} timed out") from None
    words = out.strip().splitlines()[-1].split(" ", 1) if out.strip() else []
    if rc == 0 and len(words) == 2 and words[0] == "ok":
        return words[1]
    if rc != 0:
        raise Unavailable(f"host {host}: cannot check for the model's files over ssh: {err.strip()[-300:] or f'exit {rc}'}")
    log.info("group_model_copy", host=host, path=path, digest=digest)
    try:
        rc, out, err = await _run(rsync_command(host, view_path, path), timeout=copy_timeout)
    except FileNotFoundError:
        raise Unavailable("copying the model to the group's hosts needs rsync, which is not installed here") from None
    except asyncio.TimeoutError:
        raise Unavailable(f"host {host}: copying the model's files to {path} did not finish in time (it resumes next time)") from None
    if rc != 0:
        raise Unavailable(f"host {host}: copying the model's files to {path} failed: {err.strip()[-300:] or f'rsync exit {rc}'}")
    rc, out, err = await _run(mark_command(host, path), timeout=CHECK_TIMEOUT_S)
    if rc != 0 or not out.strip():
        raise Unavailable(f"host {host}: cannot finish the model's copy at {path}: {err.strip()[-300:] or f'exit {rc}'}")
    log.info("group_model_copied", host=host, path=out.strip().splitlines()[-1], digest=digest)
    return out.strip().splitlines()[-1]
