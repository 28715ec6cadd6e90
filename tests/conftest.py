import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def pairs(request, tmp_path_factory):
    """Teacher pairs made once per test module with that module's ``recipe()`` (its own fast settings)."""
    from fluxsr.training.pairs import generate_pairs

    out = tmp_path_factory.mktemp("pairs")
    generate_pairs(request.module.recipe(), out, device="cpu", progress=False)
    return out


def put_in_hub_cache(cache, repo_id: str, folder, revision: str = "main") -> str:
    """Lay ``folder`` out in ``cache`` as huggingface_hub's own cache does after a download (``models--org--name``:
    content-addressed ``blobs/``, ``snapshots/<commit>/`` of relative links to them, ``refs/<revision>``);
    returns the (made-up, 40 hex digits) commit."""
    import hashlib
    from pathlib import Path

    folder, repo = Path(folder), Path(cache) / ("models--" + repo_id.replace("/", "--"))
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    digest = hashlib.sha1(revision.encode())
    for f in files:
        digest.update(str(f.relative_to(folder)).encode() + f.read_bytes())
    commit = digest.hexdigest()
    for f in files:
        data = f.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / commit / f.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    return commit


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache in ``tmp_path`` (HF_HOME / HF_HUB_CACHE, for this process and its children),
    offline: fill it with :func:`put_in_hub_cache`."""
    import huggingface_hub

    home = tmp_path / "hf_home"
    cache = home / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache
