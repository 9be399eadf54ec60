"""The Hugging Face hub client: a repo's snapshot (files, commit) from its metadata, and its files' bytes."""

from __future__ import annotations

import http.client
import os
import ssl
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from mlxserve import __version__
from mlxserve.services.common.errors import (
    Forbidden,
    InvalidArgument,
    MlxServeError,
    NotFound,
    Unauthenticated,
    Unavailable,
)


from .hf_refs import RepoFile



DEFAULT_ENDPOINT = "https://huggingface.co"
MAX_REDIRECTS = 5
TIMEOUT_S = 60.0



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

    def __init__(self, endpoint: str, token: str | None, token_source: str) -> None:
        self.endpoint = endpoint.rstrip("/")
        parts = urllib.parse.urlsplit(self.endpoint)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise InvalidArgument(f"the Hugging Face endpoint {endpoint!r} is not an http(s):// URL")
        self.origin = (parts.scheme, parts.netloc)
        self.token, self.token_source = token, token_source

    @classmethod
    def from_settings(cls, hf_endpoint: str, hf_token_file: str) -> Hub:
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
            return cls(endpoint, token, f"hf_token_file {path}")
        from huggingface_hub import get_token

        token = get_token()
        source = "HF_TOKEN" if os.environ.get("HF_TOKEN") else "the token `hf auth login` saved"
        return cls(endpoint, token or None, source)

    def snapshot(self, repo_id: str, revision: str | None) -> Snapshot:
        """The files of `repo_id` at `revision` (its default branch if None), with their hashes."""
        from huggingface_hub import HfApi
        from huggingface_hub.errors import HFValidationError, HfHubHTTPError, OfflineModeIsEnabled

        api = HfApi(endpoint=self.endpoint, token=self.token or False, library_name="mlxserve",
                    library_version=__version__)
        try:
            info = api.model_info(repo_id, revision=revision, files_metadata=True, timeout=TIMEOUT_S)
        except HFValidationError as e:
            raise InvalidArgument(f"'{repo_id}' is not a valid Hugging Face repo id: {e}") from None
        except HfHubHTTPError as e:
            raise self.error_for(e, repo_id, revision=revision) from None
        except OfflineModeIsEnabled:
            raise Unavailable("HF_HUB_OFFLINE is set, so the Hugging Face hub is not contacted; unset it to pull "
                              "hf.co names") from None
        except Exception as e:
            if type(e).__module__.split(".")[0] in ("httpx", "httpx2", "httpcore"):  # the client's transport errors
                raise Unavailable(f"cannot reach the Hugging Face hub at {self.endpoint}: {e}") from None
            raise
        files = [RepoFile(s.rfilename, int(s.size or 0), s.blob_id or "", s.lfs.sha256 if s.lfs else None)
                 for s in info.siblings or []]
        return Snapshot(info.id or repo_id, info.sha or revision or "main", files, bool(info.gated))

    # ------------------------------------------------------------------ files

    def open_file(self, repo_id: str, commit: str, path: str, offset: int = 0) -> _Response:
        """GET a file of the repo at `commit` from `offset`: 200, 206 (resumed) or 416."""
        from huggingface_hub import hf_hub_url

        url = hf_hub_url(repo_id, path, revision=commit, endpoint=self.endpoint)
        headers = {"User-Agent": f"mlxserve/{__version__}"}
        if offset > 0:
            headers["Range"] = f"bytes={offset}-"
        for _ in range(MAX_REDIRECTS + 1):
            parts = urllib.parse.urlsplit(url)
            hop = dict(headers)
            if self.token and (parts.scheme, parts.netloc) == self.origin:
                hop["Authorization"] = f"Bearer {self.token}"
            resp = self._send(url, hop)
            if resp.status in (200, 206, 416):
                return resp
            location = resp.headers.get("Location")
            if resp.status in (301, 302, 303, 307, 308) and location:
                resp.close()
                nxt = urllib.parse.urljoin(url, location)
                if self.origin[0] == "https" and not nxt.startswith("https://"):
                    raise Unavailable(f"the Hugging Face hub sent the download of {path} to a plain-http address; "
                                      "refusing it")
                url = nxt
                continue
            detail = resp.read(2048)
            resp.close()
            raise self.error_for_status(resp.status, resp.headers.get("X-Error-Code"),
                                        resp.headers.get("X-Error-Message") or detail.decode(errors="replace")[:200],
                                        repo_id, path=path, storage=(parts.scheme, parts.netloc) != self.origin)
        raise Unavailable(f"too many redirects downloading {path} of hf.co/{repo_id} from {self.endpoint}")

    def _send(self, url: str, headers: dict[str, str]) -> _Response:
        parts = urllib.parse.urlsplit(url)
        conn: http.client.HTTPConnection
        if parts.scheme == "https":
            conn = http.client.HTTPSConnection(parts.netloc, timeout=TIMEOUT_S, context=ssl.create_default_context())
        else:
            conn = http.client.HTTPConnection(parts.netloc, timeout=TIMEOUT_S)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        try:
            conn.request("GET", target, headers=headers)
            return _Response(conn, conn.getresponse())
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            hub = (parts.scheme, parts.netloc) == self.origin
            where = "the Hugging Face hub" if hub else f"the hub's storage ({parts.netloc})"
            raise Unavailable(f"cannot reach {where} at {parts.scheme}://{parts.netloc}: {e}") from e

    # ------------------------------------------------------------------ errors

    def error_for(self, e: Exception, repo_id: str, *, revision: str | None = None) -> MlxServeError:
        """Our error for one of huggingface_hub's (it read the hub's X-Error-Code for us)."""
        from huggingface_hub.errors import (
            DisabledRepoError,
            GatedRepoError,
            RemoteEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        response = getattr(e, "response", None)
        status = getattr(response, "status_code", 0) or 0
        message = getattr(e, "server_message", None) or ""
        headers = getattr(response, "headers", {}) or {}
        if isinstance(e, GatedRepoError):
            code = "GatedRepo"
        elif isinstance(e, RepositoryNotFoundError):
            code = "RepoNotFound"
        elif isinstance(e, RevisionNotFoundError):
            code = "RevisionNotFound"
        elif isinstance(e, RemoteEntryNotFoundError):
            code = "EntryNotFound"
        elif isinstance(e, DisabledRepoError):
            code = "DisabledRepo"
        else:
            code = headers.get("X-Error-Code")
        return self.error_for_status(status, code, headers.get("X-Error-Message") or message, repo_id,
                                     revision=revision)

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
            return Unavailable(f"the Hugging Face hub ({self.endpoint}) answered {status or 'nothing'} for {name}: "
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


class HubFiles:
    """The LFS files of one commit as a downloads.BlobSource, by their sha256."""

    def __init__(self, hub: Hub, snap: Snapshot) -> None:
        self.hub, self.snap = hub, snap
        self.where = f"the Hugging Face hub ({hub.endpoint})"
        self._paths = {f"sha256:{f.sha256}": f.path for f in snap.files if f.sha256}

    def open(self, digest: str, offset: int) -> _Response:
        return self.hub.open_file(self.snap.repo_id, self.snap.commit, self._paths[digest], offset)


