"""The Hugging Face hub client: a repo's snapshot (files, commit) from its metadata, and its files' bytes.

Both come over plain http.client through the store's address filter (connections.py), the
metadata from the hub's API as huggingface_hub's `HfApi.model_info(files_metadata=True)` asks
for it; the hub's error codes (`X-Error-Code`) decide our error, and only its short
`X-Error-Message` (cleaned, bounded) is ever shown, never a body.
"""

from __future__ import annotations

import http.client
import json
import os
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlxserve import __version__
from mlxserve.services.common.addresses import Guard
from mlxserve.services.common.errors import (
    Forbidden,
    InvalidArgument,
    MlxServeError,
    NotFound,
    Unauthenticated,
    Unavailable,
)

from .connections import clean_text, describe_failure, open_connection, status_line
from .hf_refs import RepoFile

DEFAULT_ENDPOINT = "https://huggingface.co"
MAX_REDIRECTS = 5
TIMEOUT_S = 60.0
MAX_INFO_BYTES = 64 * 1024 * 1024  # a repo's metadata with every file's hashes: ~200 bytes a file
_OFFLINE = {"1", "ON", "YES", "TRUE"}
_DISABLED = "Access to this resource is disabled."  # how the hub says it (huggingface_hub reads it so)



@dataclass(frozen=True)
class Snapshot:
    repo_id: str   # as the hub spells it
    commit: str
    files: list[RepoFile]
    gated: bool


class Hub:
    """One hub endpoint and the token for it: metadata through huggingface_hub, file bytes
    through plain http.client (streamed into downloads.py; redirects followed by hand so the
    token never leaves the endpoint's host)."""

    def __init__(self, endpoint: str, token: str | None, token_source: str, guard: Guard | None = None) -> None:
        self.endpoint = endpoint.rstrip("/")
        parts = urllib.parse.urlsplit(self.endpoint)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise InvalidArgument(f"the Hugging Face endpoint {endpoint!r} is not an http(s):// URL")
        self.origin = (parts.scheme, parts.netloc)
        self.token, self.token_source = token, token_source
        self.guard = guard or Guard()

    @classmethod
    def from_settings(cls, hf_endpoint: str, hf_token_file: str, guard: Guard | None = None) -> Hub:
        endpoint = (hf_endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).strip()
        if hf_token_file:
            path = Path(hf_token_file).expanduser()
            try:
                token = path.read_text().strip()
            except OSError as e:
                raise InvalidArgument(f"hf_token_file {path} cannot be read ({e.strerror}); fix the setting "
                                      "or remove it to use $HF_TOKEN") from None
            if not token:
                raise InvalidArgument(f"hf_token_file {path} is empty; put a Hugging Face token in it")
            return cls(endpoint, token, f"hf_token_file {path}", guard)
        from huggingface_hub import get_token

        token = get_token()
        source = "HF_TOKEN" if os.environ.get("HF_TOKEN") else "the token `hf auth login` saved"
        return cls(endpoint, token or None, source, guard)

    def snapshot(self, repo_id: str, revision: str | None) -> Snapshot:
        """The files of `repo_id` at `revision` (its default branch if None), with their hashes."""
        if os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in _OFFLINE:
            raise Unavailable("HF_HUB_OFFLINE is set, so the Hugging Face hub is not contacted; unset it to pull "
                              "hf.co names")
        if not _valid_repo_id(repo_id):
            raise InvalidArgument(f"'{repo_id}' is not a valid Hugging Face repo id (ORG/REPO: letters, digits, "
                                  "'-', '_', '.')")
        url = f"{self.endpoint}/api/models/{repo_id}"
        if revision is not None:
            url += f"/revision/{urllib.parse.quote(revision, safe='')}"
        with self._get(url + "?blobs=true", (200,), repo_id, revision=revision) as resp:
            try:
                data = resp.read(MAX_INFO_BYTES + 1)
            except OSError as e:
                raise Unavailable(f"the metadata of hf.co/{repo_id} from {self.endpoint} broke off "
                                  f"({describe_failure(e)}); pull again") from e
        info = _info(data, f"hf.co/{repo_id}", self.endpoint)
        files = []
        for s in info.get("siblings") or []:
            lfs = s.get("lfs") if isinstance(s.get("lfs"), dict) else None
            files.append(RepoFile(str(s.get("rfilename", "")), int(s.get("size") or 0), str(s.get("blobId") or ""),
                                  str(lfs["sha256"]) if lfs and lfs.get("sha256") else None))
        return Snapshot(str(info.get("id") or repo_id), str(info.get("sha") or revision or "main"), files,
                        bool(info.get("gated")))

    # ------------------------------------------------------------------ files

    def open_file(self, repo_id: str, commit: str, path: str, offset: int = 0) -> _Response:
        """GET a file of the repo at `commit` from `offset`: 200, 206 (resumed) or 416."""
        from huggingface_hub import hf_hub_url

        url = hf_hub_url(repo_id, path, revision=commit, endpoint=self.endpoint)
        headers = {"Range": f"bytes={offset}-"} if offset > 0 else {}
        return self._get(url, (200, 206, 416), repo_id, path=path, headers=headers)

    def _get(self, url: str, ok: tuple[int, ...], repo_id: str, *, revision: str | None = None,
             path: str | None = None, headers: dict[str, str] | None = None) -> _Response:
        """GET `url`, following redirects (the token goes to the endpoint's host only); a status
        outside `ok` raises our error for it."""
        headers = {"User-Agent": f"mlxserve/{__version__}", **(headers or {})}
        what = path or "the metadata"
        for _ in range(MAX_REDIRECTS + 1):
            parts = urllib.parse.urlsplit(url)
            hop = dict(headers)
            if self.token and (parts.scheme, parts.netloc) == self.origin:
                hop["Authorization"] = f"Bearer {self.token}"
            resp = self._send(url, hop)
            if resp.status in ok:
                return resp
            location = resp.headers.get("Location")
            if resp.status in (301, 302, 303, 307, 308) and location:
                resp.close()
                nxt = urllib.parse.urljoin(url, location)
                if not nxt.startswith(("https://", "http://")) or (
                        self.origin[0] == "https" and not nxt.startswith("https://")):
                    # An http:// endpoint is an explicit choice (the address filter still decides
                    # where plain http may go); from an https one, plain http is a downgrade.
                    raise Unavailable(f"the Hugging Face hub sent {what} of hf.co/{repo_id} to a plain-http or "
                                      "non-http address; refusing it")
                url = nxt
                continue
            resp.close()  # its body is never quoted back; the hub's short X-Error-Message is
            message = clean_text(resp.headers.get("X-Error-Message") or "") or status_line(resp.status)
            code = resp.headers.get("X-Error-Code") or ("DisabledRepo" if message == _DISABLED else None)
            raise self.error_for_status(resp.status, code, message, repo_id, revision=revision, path=path,
                                        storage=(parts.scheme, parts.netloc) != self.origin)
        raise Unavailable(f"too many redirects getting {what} of hf.co/{repo_id} from {self.endpoint}")

    def _send(self, url: str, headers: dict[str, str]) -> _Response:
        parts = urllib.parse.urlsplit(url)
        conn, target = open_connection(url, self.guard, timeout=TIMEOUT_S)
        try:
            conn.request("GET", target, headers=headers)
            return _Response(conn, conn.getresponse())
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            hub = (parts.scheme, parts.netloc) == self.origin
            where = "the Hugging Face hub" if hub else f"the hub's storage ({clean_text(parts.netloc, 80)})"
            raise Unavailable(f"cannot reach {where}: {describe_failure(e)}") from e
        except BaseException:  # Forbidden from the address filter
            conn.close()
            raise

    # ------------------------------------------------------------------ errors

    def error_for_status(self, status: int, code: str | None, message: str, repo_id: str, *,
                         revision: str | None = None, path: str | None = None, storage: bool = False) -> MlxServeError:
        """Our error for a hub answer: its X-Error-Code, else its status, with what to do about it."""
        name = f"hf.co/{repo_id}"
        token_help = "set HF_TOKEN (or hf_token_file in config.toml) to a token of an account that can read it"
        if storage:
            return Unavailable(f"the hub's storage answered {status} for {path} of {name}; pull again "
                               "(the download resumes)")
        if status == 401 and "invalid credentials" in message.lower():
            return Unauthenticated(f"the Hugging Face hub ({self.endpoint}) refused the token from "
                                   f"{self.token_source}: it is invalid or expired; make a new one at "
                                   f"{self.endpoint}/settings/tokens")
        if code == "GatedRepo":
            if not self.token:
                return Unauthenticated(f"{name} is gated: accept its terms at {self.endpoint}/{repo_id}, "
                                       f"then {token_help}")
            return Forbidden(f"the token from {self.token_source} has no access to gated {name}: accept its terms at "
                             f"{self.endpoint}/{repo_id} with the account the token belongs to (some repos also "
                             "wait for the authors' approval)")
        if code == "RepoNotFound" or (status == 401 and not code):
            private = "" if self.token else f"; if it is private, {token_help}"
            return NotFound(f"{name} was not found on the Hugging Face hub ({self.endpoint}); check the name, "
                            f"which the hub spells case-sensitively{private}")
        if code == "RevisionNotFound":
            return NotFound(f"{name} has no branch, tag or commit '{revision}' (an MLX repo's tag names a "
                            "revision; leave it out for the default branch)")
        if code == "EntryNotFound":
            return NotFound(f"{path or 'a file'} is not in {name}{f' at {revision}' if revision else ''}")
        if code == "DisabledRepo":
            return Forbidden(f"{name} has been disabled on the Hugging Face hub")
        if status == 403:
            return Forbidden(f"the Hugging Face hub refused access to {name} ({message or 'forbidden'}); {token_help}")
        if status == 429:
            return Unavailable(f"the Hugging Face hub is rate-limiting requests ({message or '429'}); "
                               "try again in a few minutes, or set HF_TOKEN (signed-in limits are higher)")
        if status >= 500 or status == 0:
            return Unavailable(f"the Hugging Face hub ({self.endpoint}) answered {status_line(status)} for {name}: "
                               f"{message or 'server error'}; try again later")
        return InvalidArgument(f"the Hugging Face hub ({self.endpoint}) answered {status} for {name}: {message}")


class _Response:
    """A streaming response for downloads.py: a broken connection reads as an OSError."""

    def __init__(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse) -> None:
        self._conn, self._resp = conn, resp
        self.status, self.headers = resp.status, resp.headers

    def read(self, n: int = -1) -> bytes:
        try:
            return self._resp.read(n) if n >= 0 else self._resp.read()
        except http.client.HTTPException as e:  # IncompleteRead and kin: the connection broke
            raise ConnectionError(f"{type(e).__name__}: {e}") from e

    def readinto(self, b: bytearray | memoryview) -> int:
        try:
            return self._resp.readinto(b)
        except http.client.HTTPException as e:
            raise ConnectionError(f"{type(e).__name__}: {e}") from e

    def close(self) -> None:
        self._resp.close()
        self._conn.close()

    def __enter__(self) -> _Response:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _valid_repo_id(repo_id: str) -> bool:
    """ORG/REPO as the hub allows them (huggingface_hub's validate_repo_id, in short)."""
    parts = repo_id.split("/")
    return len(parts) == 2 and all(
        p and len(p) <= 96 and all(c.isascii() and (c.isalnum() or c in "-_.") for c in p)
        and ".." not in p and "--" not in p and not p.startswith(("-", ".")) and not p.endswith((".", "-"))
        for p in parts)


def _info(data: bytes, name: str, endpoint: str) -> dict[str, Any]:
    """The hub's JSON metadata of a repo, checked for the shape we read."""
    if len(data) > MAX_INFO_BYTES:
        raise Unavailable(f"the metadata of {name} from {endpoint} is over {MAX_INFO_BYTES} bytes; refusing it")
    try:
        info = json.loads(data)
    except (ValueError, RecursionError):
        info = None
    siblings = info.get("siblings") if isinstance(info, dict) else None
    if not isinstance(info, dict) or not isinstance(siblings, (list, type(None))) or not all(
            isinstance(s, dict) and isinstance(s.get("rfilename"), str)
            and isinstance(s.get("size", 0), (int, type(None))) for s in siblings or []):
        raise Unavailable(f"{endpoint} did not answer with a Hugging Face repo's metadata for {name}")
    return info


class HubFiles:
    """The LFS files of one commit as a downloads.BlobSource, by their sha256."""

    def __init__(self, hub: Hub, snap: Snapshot) -> None:
        self.hub, self.snap = hub, snap
        self.where = f"the Hugging Face hub ({hub.endpoint})"
        self._paths = {f"sha256:{f.sha256}": f.path for f in snap.files if f.sha256}

    def open(self, digest: str, offset: int) -> _Response:
        return self.hub.open_file(self.snap.repo_id, self.snap.commit, self._paths[digest], offset)


