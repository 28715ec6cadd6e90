"""Hugging Face Hub repo ids as model names: ``org/name`` or ``org/name@revision``.

:func:`hub_model_path` turns such a name into a folder of the local Hub cache (``$HF_HUB_CACHE``, by default
``~/.cache/huggingface/hub``) through ``huggingface_hub.snapshot_download``, fetching only the files fluxsr reads for
that kind of folder (:func:`folder_files`): a fluxsr model folder (``fluxsr.json`` with ``transformer/`` and
``vae/``), a LoRA-only fluxsr folder (``fluxsr.json`` naming its ``base``: the LoRA, the embeddings and the spec, no
transformer) or a diffusers FLUX.1-dev folder (``transformer/`` and ``vae/`` only: no text encoders, no single files).
With ``HF_HUB_OFFLINE=1`` nothing is fetched: the cached snapshot is used or the error says how to get it.

A local path always wins: a name that exists on disk, or a preset (``bundled``, ``tiny``, ...), is returned as it is.
huggingface_hub is imported only once a name is shaped like a repo id: loading a local model, and starting the
command line, do not import it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .cache import read_json

SPEC_FILE = "fluxsr.json"
"""The spec file of a fluxsr model folder; its presence makes a fluxsr folder (the model layer uses these names)."""
EMBEDS_FILE = "prompt_embeds.safetensors"
"""The cached prompt embeddings of a fluxsr model folder or a FLUX.1-dev folder."""
LORA_FILE = "lora.safetensors"
"""The LoRA a fluxsr model folder keeps apart from its transformer."""
SPEC_EXPECTED = "a JSON object of model settings (t_l, guidance, name, ...)"
"""What a spec file holds, for the error that names a damaged one."""
WEIGHT_FILES = (
    "transformer/config.json",
    "transformer/*.safetensors",
    "transformer/*.safetensors.index.json",
    "vae/config.json",
    "vae/*.safetensors",
)
"""A diffusers transformer and VAE as fluxsr loads them: configs and safetensors (never pickles)."""
HEAD_FILES = (SPEC_FILE, "model_index.json")
"""Fetched first, alone: they tell a fluxsr folder (and its kind) from a diffusers one (``model_index.json``)."""
LORA_FOLDER_FILES = (SPEC_FILE, EMBEDS_FILE, LORA_FILE)
MODEL_FOLDER_FILES = LORA_FOLDER_FILES + WEIGHT_FILES
FLUX_FOLDER_FILES = (*WEIGHT_FILES, EMBEDS_FILE)

REPO_REF = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<revision>[^\s@]+))?")


@dataclass(frozen=True)
class RepoRef:
    """A Hub model repo and the revision asked for (a branch, tag or commit; None: the default branch)."""

    repo_id: str
    revision: str | None = None

    def __str__(self) -> str:
        return self.repo_id + (f"@{self.revision}" if self.revision else "")


def parse_repo_ref(text: str) -> RepoRef | None:
    """``org/name`` or ``org/name@revision`` as a :class:`RepoRef`; None for text of any other shape."""
    match = REPO_REF.fullmatch(text)
    if match is None:
        return None
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(match["repo"])
    except HFValidationError:
        return None
    return RepoRef(match["repo"], match["revision"])


def is_offline() -> bool:
    """True when huggingface_hub may not reach the network (``HF_HUB_OFFLINE=1`` when it was imported)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def folder_files(head: Path) -> tuple[str, ...]:
    """The file patterns fluxsr reads from a repo whose spec file (if any) has been fetched into ``head``."""
    spec = head / SPEC_FILE
    if not spec.is_file():
        return FLUX_FOLDER_FILES
    data = read_json(spec, expected=SPEC_EXPECTED)
    return LORA_FOLDER_FILES if isinstance(data, dict) and data.get("base") else MODEL_FOLDER_FILES


def not_cached_message(name: str, ref: RepoRef) -> str:
    """One line for a name that is neither a local path nor a repo in the cache while offline."""
    from huggingface_hub import constants

    return (
        f"model {name!r}: no such file or folder, and Hugging Face repo {ref} is not in the local cache "
        f"({constants.HF_HUB_CACHE}) while offline (HF_HUB_OFFLINE=1): fetch it once online (unset "
        f"HF_HUB_OFFLINE; fluxsr downloads only the files it needs) or give a local folder"
    )


def first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def hub_error(name: str, ref: RepoRef, error: Exception) -> FileNotFoundError:
    """The one-line error for a repo that could not be resolved, naming the local-path reading too."""
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    neither = f"model {name!r}: no such file or folder, and"
    if isinstance(error, LocalEntryNotFoundError):
        if is_offline():
            return FileNotFoundError(not_cached_message(name, ref))
        return FileNotFoundError(
            f"{neither} Hugging Face repo {ref} could not be fetched: {first_line(error)}"
        )
    if isinstance(error, RevisionNotFoundError):
        return FileNotFoundError(f"Hugging Face repo {ref.repo_id} has no revision {ref.revision!r}")
    if isinstance(error, GatedRepoError):
        return FileNotFoundError(
            f"Hugging Face repo {ref.repo_id} is gated: accept its terms on "
            f"https://huggingface.co/{ref.repo_id} and log in (`hf auth login`)"
        )
    if isinstance(error, RepositoryNotFoundError):
        return FileNotFoundError(
            f"{neither} no Hugging Face repo {ref.repo_id} (a private one needs `hf auth login`)"
        )
    return FileNotFoundError(f"{neither} Hugging Face repo {ref} could not be fetched: {first_line(error)}")


def snapshot(ref: RepoRef, patterns: tuple[str, ...]) -> Path:
    """The cached snapshot folder of ``ref`` holding the files matching ``patterns`` (fetched unless offline)."""
    from huggingface_hub import snapshot_download

    return Path(
        snapshot_download(
            ref.repo_id,
            revision=ref.revision,
            allow_patterns=list(patterns),
            local_files_only=is_offline(),
            library_name="fluxsr",
        )
    )


def fetch_model_folder(name: str, ref: RepoRef) -> Path:
    """The snapshot of ``ref`` with the files its kind of folder needs: first :data:`HEAD_FILES` alone, which
    tell the kind, then those files at the same commit. Errors are one FileNotFoundError line (:func:`hub_error`)."""
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        head = snapshot(ref, HEAD_FILES)
        return snapshot(RepoRef(ref.repo_id, head.name), folder_files(head))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as error:
        raise hub_error(name, ref, error) from None


def hub_model_path(name: str | Path | None, presets: tuple[str, ...] = ()) -> str | Path | None:
    """``name`` itself when it is None, one of ``presets``, an existing path or not shaped like a repo id;
    otherwise the local folder of the Hub repo it names (fetched unless offline)."""
    if name is None or str(name) in presets or Path(name).expanduser().exists():
        return name
    ref = parse_repo_ref(str(name))
    return name if ref is None else fetch_model_folder(str(name), ref)


def base_path(folder: Path, base: str) -> Path:
    """The base weights a LoRA-only model folder names in its spec: a path (absolute, or relative to ``folder``)
    when it exists, else the Hub repo ``base`` names (a diffusers FLUX.1-dev repo such as
    ``black-forest-labs/FLUX.1-dev``), else the path as given (the loader then says what is missing)."""
    local = Path(folder) / Path(base).expanduser()
    ref = parse_repo_ref(base)
    return local if local.exists() or ref is None else fetch_model_folder(base, ref)
