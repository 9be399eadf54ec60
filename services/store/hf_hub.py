"""Pull from the Hugging Face hub: `hf.co/ORG/REPO[:TAG]` (also `huggingface.co/...`).

What the repo holds decides what is made of it:
- an MLX / safetensors repo (config.json, model*.safetensors, tokenizer files, as mlx-community
  publishes): imported as it is, any architecture mlx-lm loads, with only the files mlx-lm needs
  (`MLX_FILES`, the weight shards, LICENSE*). TAG, if given, is a branch, tag or commit;
- a GGUF repo: TAG picks the quant by its name, case-insensitive (`Q4_K_M`, `q8_0`) or by file
  name (`Model-Q4_K_M.gguf`); without one, Q4_K_M, else the nearest quant (`pick_gguf`, the order
  the hub's own libraries use). The file is converted by the GGUF importer, then removed. A
  split GGUF (-00001-of-0000N) is refused, naming the way out.

huggingface_hub gives the endpoint's metadata (`HfApi.model_info` with `files_metadata`: file
names, sizes, git blob ids, LFS sha256s, the commit) and its errors, mapped to ours with a
sentence that says what to do. The bytes come through downloads.fetch_blob (resumable, hashed
as they arrive, adopted only if the sha256 is the hub's), fetched at the commit the metadata
named, so a branch that moves mid-pull cannot mix two versions. Files kept in git rather than
LFS (config.json, tokenizer files: at most a few MB) have no sha256 on the hub, only their git
blob id: they are read into memory (bounded), checked against sha1("blob <size>\\0" + bytes),
and written into the staging folder the create pipeline imports from.

Where: `hf_endpoint` (the store's setting), else $HF_ENDPOINT, else https://huggingface.co. An
http:// endpoint is an explicit choice (a local mirror) and needs no --insecure. The token:
`hf_token_file`, else $HF_TOKEN, else the one `hf auth login` saved; it is sent to the
endpoint's host only, never to the storage host that LFS downloads are redirected to.

A name that already holds this very source (the provenance annotations: the repo and file, and
the commit; for a GGUF, the same file bytes at a later commit too) is up to date: nothing is
downloaded.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import ssl
import tempfile
import threading
import urllib.parse
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from mlxserve import __version__
from mlxserve.services.common.errors import (
    Cancelled,
    Forbidden,
    Internal,
    InvalidArgument,
    MlxServeError,
    NotFound,
    Unauthenticated,
    Unavailable,
    Unsupported,
)

from .blobs import remove_tree
from .downloads import fetch_blob, source_blob
from .manifest import (
    ANN_SOURCE,
    ANN_SOURCE_DIGEST,
    ANN_SOURCE_MANIFEST,
    ANN_SOURCE_REF,
    Descriptor,
    Manifest,
    media_type_for,
)
from .names import HF_HOST, HOST_ALIASES, ModelName
from .progress import ProgressCallback, ProgressEvent
from .recipes import CreateSpec
from .store import ModelStore, ModelSummary

if TYPE_CHECKING:
    from .transfer import Remotes

__all__ = ["DEFAULT_ENDPOINT", "DEFAULT_QUANT", "QUANT_ORDER", "pick_gguf", "pull", "quant_label"]

DEFAULT_ENDPOINT = "https://huggingface.co"
DEFAULT_QUANT = "Q4_K_M"
# Files of a safetensors repo that mlx-lm (and our sentence-transformers encoder) read, besides
# the weights and LICENSE*; everything else in the repo (README, images, .pth/.bin copies,
# ONNX exports) is not downloaded.
MLX_FILES = frozenset({
    "config.json", "model.safetensors.index.json", "generation_config.json",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "added_tokens.json",
    "vocab.json", "vocab.txt", "merges.txt", "chat_template.jinja", "chat_template.json",
    "modules.json", "sentence_bert_config.json",
})
_POOLING_CONFIG = re.compile(r"\d+_Pooling/config\.json")
MAX_GIT_FILE = 64 * 1024 * 1024  # git (non-LFS) files on the hub are at most 10 MB
MAX_REDIRECTS = 5
TIMEOUT_S = 60.0

# GGUF quant labels, largest to smallest: GGUF_QUANT_ORDER of the hub's own libraries
# (huggingface.js, packages/tasks/src/gguf.ts), which its GGUF viewer and local-app snippets use.
QUANT_ORDER = (
    "F32", "BF16", "F16", "Q8_K_XL", "Q8_0",
    "Q6_K_XL", "Q6_K",
    "Q5_K_XL", "Q5_K_M", "Q5_K_S", "Q5_0", "Q5_1",
    "Q4_K_XL", "Q4_K_M", "Q4_K_S", "IQ4_NL", "IQ4_XS", "Q4_0_4_4", "Q4_0_4_8", "Q4_0_8_8", "Q4_1_SOME_F16",
    "Q4_0", "Q4_1", "Q4_2", "Q4_3", "MXFP4_MOE", "NVFP4",
    "Q3_K_XL", "Q3_K_L", "Q3_K_M", "Q3_K_S", "IQ3_M", "IQ3_S", "IQ3_XS", "IQ3_XXS",
    "Q2_K_XL", "Q2_K", "Q2_K_S", "IQ2_M", "IQ2_S", "IQ2_XS", "IQ2_XXS",
    "IQ1_S", "IQ1_M", "TQ1_0", "TQ2_0", "Q1_0",
)
_RANK = {q: i for i, q in enumerate(QUANT_ORDER)}
# A label in a file name (upper-cased), as the hub's parseGGUFQuantLabel finds it: a known type,
# an optional unsloth "UD-" prefix and size variant ("Q6_K_L"); the last one in the name wins.
# Longest names first, so that Q4_0_4_4 is not read as Q4_0.
_QUANT = re.compile(r"(?<![A-Z0-9])(UD-)?(" + "|".join(sorted(QUANT_ORDER, key=len, reverse=True))
                    + r")(?:_([A-Z]+))?(?![A-Z0-9])")
_SPLIT = re.compile(r"(?P<prefix>.+)-(?P<part>\d{5})-of-(?P<total>\d{5})\.gguf", re.IGNORECASE)


# ---------------------------------------------------------------------- names and quants


@dataclass(frozen=True)
class HubRef:
    repo_id: str     # "ORG/REPO", as the user typed it (the hub's ids are case-sensitive in URLs)
    tag: str | None  # as typed; None for none or "latest"


def parse_ref(ref: str) -> HubRef:
    """ORG/REPO and TAG of an `hf.co/...` name, with their case kept (the name parser lower-cases)."""
    text = ref.strip()
    if "@" in text:
        raise InvalidArgument(f"'{ref}': a Hugging Face name cannot pin an mlxserve digest; an MLX repo takes "
                              "a branch, tag or commit as its tag (hf.co/ORG/REPO:<commit>)")
    parts = text.split("/")
    if len(parts) != 3 or HOST_ALIASES.get(parts[0].lower(), parts[0].lower()) != HF_HOST:
        raise InvalidArgument(f"'{ref}' is not a Hugging Face name; expected hf.co/ORG/REPO[:TAG]")
    repo, _, tag = parts[2].partition(":")
    return HubRef(f"{parts[1]}/{repo}", tag if tag and tag.lower() != "latest" else None)


def quant_label(filename: str) -> str | None:
    """The quant a GGUF file name says it holds ("Q4_K_M", "UD-Q4_K_XL", "Q6_K_L"), or None."""
    found = list(_QUANT.finditer(PurePosixPath(filename).name.upper()))
    return found[-1].group(0) if found else None


def _rank(label: str) -> int | None:
    m = _QUANT.fullmatch(label)
    return _RANK.get(m.group(2)) if m else None


@dataclass(frozen=True)
class RepoFile:
    path: str
    size: int
    blob_id: str           # the git blob id (of the LFS pointer, for an LFS file)
    sha256: str | None     # the LFS sha256, None for a file kept in git

    @property
    def name(self) -> str:
        return PurePosixPath(self.path).name


@dataclass(frozen=True)
class GgufChoice:
    """One quant of a GGUF repo: a file, or the parts of a split one."""

    label: str | None
    files: tuple[RepoFile, ...]

    @property
    def display(self) -> str:
        if len(self.files) > 1:
            return f"{self.label or self.files[0].name} (split in {len(self.files)} files)"
        return self.label or self.files[0].name


def gguf_choices(files: list[RepoFile]) -> list[GgufChoice]:
    """The quants a repo offers: its .gguf files (a split file's parts as one), projectors left out."""
    groups: dict[str, list[RepoFile]] = {}
    for f in files:
        if not f.name.lower().endswith(".gguf") or f.name.lower().startswith("mmproj"):
            continue
        m = _SPLIT.fullmatch(f.name)
        key = str(PurePosixPath(f.path).parent / m.group("prefix")) if m else f.path
        groups.setdefault(key, []).append(f)
    return [GgufChoice(quant_label(parts[0].name), tuple(sorted(parts, key=lambda p: p.path)))
            for _, parts in sorted(groups.items())]


def pick_gguf(choices: list[GgufChoice], tag: str | None, where: str) -> GgufChoice:
    """The quant `tag` names (a label or a file name, case-insensitive), or the default one.

    Default: Q4_K_M if the repo has it; else, as the hub's findNearestQuantType does, the
    largest quant at or below Q4_K_M in QUANT_ORDER, and if all are larger, the smallest of them.
    """
    if not choices:
        raise NotFound(f"{where} has no GGUF file")
    if tag is not None:
        wanted = tag.upper()
        if wanted.endswith(".GGUF"):
            found = [c for c in choices if any(f.name.upper() == wanted for f in c.files)]
        else:
            found = [c for c in choices if c.label == wanted]
        if len(found) > 1:
            raise InvalidArgument(f"{where} has several {tag} files: {', '.join(c.files[0].path for c in found)}; "
                                  "pull one by its file name (hf.co/ORG/REPO:FILE.gguf)")
        if not found:
            raise NotFound(f"{where} has no {tag} GGUF; it has {_listing(choices)}")
        return found[0]
    labelled = sorted((c for c in choices if c.label and _rank(c.label) is not None), key=lambda c: _rank(c.label))
    target = _RANK[DEFAULT_QUANT]
    for c in labelled:
        if c.label == DEFAULT_QUANT:
            return c
    for c in labelled:
        if _rank(c.label) >= target:  # type: ignore[arg-type]
            return c
    if labelled:
        return labelled[-1]
    if len(choices) == 1:
        return choices[0]
    raise InvalidArgument(f"{where} has several GGUF files and none says its quant: {_listing(choices)}; "
                          "pull one by its file name (hf.co/ORG/REPO:FILE.gguf)")


def _listing(choices: list[GgufChoice]) -> str:
    return ", ".join(c.display for c in choices)


# ---------------------------------------------------------------------- the hub


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


# ---------------------------------------------------------------------- pull


def pull(store: ModelStore, ref: str, target: ModelName, *, remotes: Remotes, progress: ProgressCallback,
         cancel: threading.Event | None) -> ModelSummary:
    """Pull `ref` (`hf.co/ORG/REPO[:TAG]`, as typed) from the hub into `store` as `target`; see the module."""
    if target.digest:
        raise InvalidArgument(f"cannot store a pull from the hub under the digest-pinned name '{target}'")
    hub_ref = parse_ref(ref)
    hub = Hub.from_settings(remotes.hf_endpoint, remotes.hf_token_file)
    progress(ProgressEvent("pulling manifest"))
    snap = hub.snapshot(hub_ref.repo_id, None)
    where = f"hf.co/{snap.repo_id}"
    choices = gguf_choices(snap.files)
    has_weights = any(f.path == "config.json" for f in snap.files) and any(
        fnmatch(f.path, "*.safetensors") and "/" not in f.path for f in snap.files)
    if choices and (not has_weights or hub_ref.tag is not None):
        return _pull_gguf(store, hub, snap, pick_gguf(choices, hub_ref.tag, where), target, progress, cancel)
    if has_weights:
        if hub_ref.tag is not None:
            snap = hub.snapshot(hub_ref.repo_id, hub_ref.tag)
        return _pull_folder(store, hub, snap, hub_ref.tag, target, progress, cancel)
    raise Unsupported(f"{where} holds neither GGUF files nor an MLX / safetensors model (config.json and "
                      f"model*.safetensors); it has {', '.join(f.path for f in snap.files[:12]) or 'no files'}")


def _check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled("pull cancelled")


def _up_to_date(store: ModelStore, target: ModelName, source_ref: str, commit: str,
                sha256: str | None = None) -> ModelSummary | None:
    """The stored `target` if it was made from this source at this commit (or, for a GGUF, from
    the very same file bytes at another commit), with all its blobs present."""
    try:
        found = store.find(target)
        manifest = Manifest.from_bytes(found.data)
    except (NotFound, Internal, InvalidArgument):
        return None
    ann = manifest.annotations
    if ann.get(ANN_SOURCE_REF) != source_ref:
        return None
    same = ann.get(ANN_SOURCE_MANIFEST) == f"git:{commit}" or (
        sha256 is not None and ann.get(ANN_SOURCE_DIGEST) == f"sha256:{sha256}")
    if not same or not all(store.blobs.exists(d) for d in manifest.digests()):
        return None
    return store.summary(found.name, found.path, found.data, manifest)


def _fetch(store: ModelStore, hub: Hub, snap: Snapshot, f: RepoFile, dest: Path,
           progress: ProgressCallback, cancel: threading.Event | None) -> None:
    """Make repo file `f` readable at `dest`: an LFS file becomes a verified blob (dest links to
    it); a git file is read into memory, checked against its git blob id, and written to dest."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if f.sha256:
        digest = f"sha256:{f.sha256}"
        fetch_blob(store, HubFiles(hub, snap), Descriptor(media_type_for(f.name) or "application/octet-stream",
                                                          digest, f.size, f.name), progress, cancel)
        os.symlink(store.blobs.path(digest), dest)
        return
    where = f"{f.path} of hf.co/{snap.repo_id}"
    if f.size > MAX_GIT_FILE:
        raise Unsupported(f"{where} is {f.size} bytes but not in LFS, so the hub gives no sha256 to check it by; "
                          f"mlxserve reads such files only up to {MAX_GIT_FILE} bytes")
    status = f"pulling {f.blob_id[:12]}"
    progress(ProgressEvent(status, "", f.size, 0))
    data = bytearray()
    try:
        with hub.open_file(snap.repo_id, snap.commit, f.path) as resp:
            if resp.status != 200:
                raise Unavailable(f"the Hugging Face hub answered {resp.status} for {where}")
            while len(data) <= f.size:  # one byte more than listed is enough to know it is wrong
                _check_cancel(cancel)
                chunk = resp.read(f.size + 1 - len(data))
                if not chunk:
                    break
                data += chunk
    except OSError as e:
        raise Unavailable(f"download of {where} broke off ({e}); pull again") from e
    actual = hashlib.sha1(b"blob %d\0" % len(data) + bytes(data)).hexdigest()
    if len(data) != f.size or actual != f.blob_id:
        raise Internal(f"{where} failed verification: the hub lists {f.size} bytes with git blob id {f.blob_id}, "
                       f"it sent {len(data)} bytes whose id is {actual}; nothing was stored")
    dest.write_bytes(bytes(data))
    progress(ProgressEvent(status, "", f.size, f.size))


class _Relay:
    """The create pipeline's progress, passed on: its "success" is held back (the pull says it
    last) and a cancelled pull stops the import at its next event (create cleans up its staging)."""

    def __init__(self, progress: ProgressCallback, cancel: threading.Event | None) -> None:
        self.progress, self.cancel = progress, cancel

    def __call__(self, event: ProgressEvent) -> None:
        if event.status == "success":
            return
        _check_cancel(self.cancel)
        self.progress(event)


def _annotations(source_ref: str, commit: str) -> dict[str, str]:
    return {ANN_SOURCE: source_ref, ANN_SOURCE_REF: source_ref, ANN_SOURCE_MANIFEST: f"git:{commit}"}


# ---------------------------------------------------------------------- MLX / safetensors repos


def mlx_files(snap: Snapshot) -> list[RepoFile]:
    """The repo files to download: MLX_FILES, LICENSE*, a pooling config, and the weights
    (the shards the index lists, else every root model*.safetensors, which is what mlx-lm loads)."""
    where = f"hf.co/{snap.repo_id}"
    by_path = {f.path: f for f in snap.files}
    keep = [f for f in snap.files if f.path in MLX_FILES or _POOLING_CONFIG.fullmatch(f.path)
            or ("/" not in f.path and f.path.startswith("LICENSE"))]
    weights = [f for f in snap.files if "/" not in f.path and fnmatch(f.path, "model*.safetensors")]
    if not weights:
        others = [f.path for f in snap.files if f.path.endswith(".safetensors")]
        raise Unsupported(f"{where} has no model*.safetensors weights at its top level, which is what mlx-lm loads "
                          f"(it has {', '.join(others[:6]) or 'none'})")
    if "tokenizer.json" not in by_path and "tokenizer.model" not in by_path:
        raise Unsupported(f"{where} has no tokenizer (tokenizer.json or tokenizer.model)")
    return keep + weights


def _pull_folder(store: ModelStore, hub: Hub, snap: Snapshot, revision: str | None, target: ModelName,
                 progress: ProgressCallback, cancel: threading.Event | None) -> ModelSummary:
    source_ref = f"hf.co/{snap.repo_id}" + (f":{revision}" if revision else "")
    if (done := _up_to_date(store, target, source_ref, snap.commit)) is not None:
        progress(ProgressEvent("success"))
        return done
    files = mlx_files(snap)
    if snap.gated and not hub.token:
        raise hub.error_for_status(401, "GatedRepo", "", snap.repo_id)
    skipped = len(snap.files) - len(files)
    if skipped:
        progress(ProgressEvent(f"skipping {skipped} files mlx-lm does not need"))
    with store.in_flight():
        staging = Path(tempfile.mkdtemp(dir=store.tmp_dir, prefix="create-hf-"))
        try:
            folder = staging / PurePosixPath(snap.repo_id).name
            folder.mkdir()
            weights = [f for f in files if f.path.endswith(".safetensors")]
            for f in [f for f in files if f not in weights]:  # the small files first: a bad token fails early
                _check_cancel(cancel)
                _fetch(store, hub, snap, f, folder / f.path, progress, cancel)
            index = folder / "model.safetensors.index.json"
            if index.is_file():
                weights = _indexed_shards(index, weights, f"hf.co/{snap.repo_id}")
            for f in weights:
                _check_cancel(cancel)
                _fetch(store, hub, snap, f, folder / f.path, progress, cancel)
            # Each LFS file was hashed as it arrived and adopted only if it matched; each git file was checked.
            progress(ProgressEvent("verifying sha256 digest"))
            _check_cancel(cancel)
            # The LFS files are verified blobs already: the import links them instead of copying.
            spec = CreateSpec(from_path=folder, annotations=_annotations(source_ref, snap.commit),
                              model_info={"hf.source": source_ref, "hf.commit": snap.commit},
                              source_digests={f.path: f"sha256:{f.sha256}" for f in files if f.sha256})
            summary = store.create(target.full, spec, _Relay(progress, cancel))
        finally:
            remove_tree(staging)
    progress(ProgressEvent("success"))
    return summary


def _indexed_shards(index: Path, weights: list[RepoFile], where: str) -> list[RepoFile]:
    """The shards model.safetensors.index.json lists (a repo may hold other model*.safetensors too)."""
    try:
        listed = set(json.loads(index.read_text()).get("weight_map", {}).values())
    except (ValueError, AttributeError) as e:
        raise Unsupported(f"{where}: model.safetensors.index.json is not a valid index ({e})") from None
    missing = sorted(listed - {f.path for f in weights})
    if missing:
        raise Unsupported(f"{where}: the weight index lists shards the repo does not have: {', '.join(missing)}")
    return [f for f in weights if f.path in listed]


# ---------------------------------------------------------------------- GGUF repos




def _pull_gguf(store: ModelStore, hub: Hub, snap: Snapshot, choice: GgufChoice, target: ModelName,
               progress: ProgressCallback, cancel: threading.Event | None) -> ModelSummary:
    where = f"hf.co/{snap.repo_id}"
    if len(choice.files) > 1:
        singles = [c.display for c in gguf_choices(snap.files) if len(c.files) == 1]
        raise Unsupported(
            f"{where}: {choice.display} is a split GGUF ({choice.files[0].name} ...), which mlxserve does not "
            "import; merge the parts with llama.cpp's `llama-gguf-split --merge` and `mlxctl create NAME --from "
            f"merged.gguf`" + (f", or pull a quant kept in one file: {', '.join(singles)}" if singles else ""))
    f = choice.files[0]
    source_ref = f"{where}/{f.path}"
    if (done := _up_to_date(store, target, source_ref, snap.commit, f.sha256)) is not None:
        progress(ProgressEvent("success"))
        return done
    if snap.gated and not hub.token:
        raise hub.error_for_status(401, "GatedRepo", "", snap.repo_id)
    progress(ProgressEvent(f"pulling {choice.display} ({f.path})"))
    with source_blob(store, f"sha256:{f.sha256}" if f.sha256 else None) as finished:
        try:
            with store.in_flight():
                staging = Path(tempfile.mkdtemp(dir=store.tmp_dir, prefix="create-hf-"))
                try:
                    # A link named like the file: the importer's messages then name it, not "sha256-<hex>".
                    link = staging / f.name
                    _fetch(store, hub, snap, f, link, progress, cancel)
                    progress(ProgressEvent("verifying sha256 digest"))
                    _check_cancel(cancel)
                    spec = CreateSpec(from_path=link, source_digest=f"sha256:{f.sha256}" if f.sha256 else None,
                                      annotations=_annotations(source_ref, snap.commit),
                                      model_info={"hf.source": source_ref, "hf.commit": snap.commit})
                    summary = store.create(target.full, spec, _Relay(progress, cancel))
                    finished()
                finally:
                    remove_tree(staging)
        except (Cancelled, Unavailable, OSError):
            raise  # interrupted: the GGUF (or its partial download) stays, so the next pull goes on from it
        except Exception:
            finished()  # refused or failed on these bytes: downloading them again would not help
            raise
    progress(ProgressEvent("success"))
    return summary
