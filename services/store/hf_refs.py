"""Hugging Face hub references (`hf.co/ORG/REPO[:TAG]`), the files of a repo, and picking a GGUF quant by its tag."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from mlxserve.services.common.errors import InvalidArgument, NotFound

from .names import HF_HOST, HOST_ALIASES



DEFAULT_QUANT = "Q4_K_M"

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


