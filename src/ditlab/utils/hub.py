"""One resolver for every weights argument: a local path, or a Hugging Face Hub id read through the Hub cache.

A source is either an existing local file or folder, or ``owner/name[@revision][/path/in/repo]``:

- ``facebook/DiT-XL-2-256``: the repository's snapshot folder (a whole ``DiTPipeline``);
- ``facebook/DiT-XL-2-256/vae``: one subfolder of it (the VAE);
- ``owner/name/DiT-XL-2-256x256.pt``: one file (a path ending in a weights/config suffix).

Hub ids go through ``huggingface_hub`` and its cache (``HF_HUB_CACHE``, else ``HF_HOME/hub``, read when called,
not at import), so files downloaded once by ``hf download`` or by diffusers are found again. Nothing is
downloaded unless the caller allows it, and never with ``HF_HUB_OFFLINE=1``: library code does not reach the
network behind the user's back. A missing path that is plainly local (``./``, ``../``, a trailing separator, or a
first part that exists here) is reported as missing and never looked up on the Hub.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

# owner/name, then an optional @revision, then an optional path inside the repository.
_HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<rev>[\w.-]+))?(?:/(?P<path>.+))?$")
# A path inside a repository that names a file rather than a subfolder.
FILE_SUFFIXES = (".pt", ".pth", ".ckpt", ".safetensors", ".bin", ".json", ".npz")
_TRUE = ("1", "true", "yes", "on")


@dataclass(frozen=True)
class HubId:
    """A parsed Hub source: repository, revision (None = the cached ``main``) and path inside it ("" = root)."""

    repo: str
    revision: str | None
    path: str

    @property
    def is_file(self) -> bool:
        return self.path.endswith(FILE_SUFFIXES)


def parse_hub_id(source: str) -> HubId | None:
    """The :class:`HubId` of ``owner/name[@rev][/path]``, or None when ``source`` cannot be one."""
    if source.startswith((".", "/", "~")) or "\\" in source:
        return None
    match = _HUB_ID.match(source)
    if match is None:
        return None
    return HubId(match["repo"], match["rev"], (match["path"] or "").strip("/"))


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` as set now (huggingface_hub itself reads it once, at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def hub_cache_dir() -> str | None:
    """The Hub cache folder as the environment says now; None leaves huggingface_hub's own default."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    return None


def _download(hub: HubId, local_only: bool) -> Path:
    import huggingface_hub

    common = {"revision": hub.revision, "cache_dir": hub_cache_dir(), "local_files_only": local_only}
    if hub.is_file:
        return Path(huggingface_hub.hf_hub_download(hub.repo, hub.path, **common))
    patterns = f"{hub.path}/*" if hub.path else None
    snapshot = Path(huggingface_hub.snapshot_download(hub.repo, allow_patterns=patterns, **common))
    return snapshot / hub.path if hub.path else snapshot


def _meant_as_local(text: str) -> bool:
    """A missing path that is plainly local: ./ or ../, a trailing separator, or a first part that exists here
    (``runs/x/checkpoints/step_1.safetensors`` must not be looked up as Hub repo ``runs/x``)."""
    separators = ("/", os.sep)
    if text.startswith(("./", "../", f".{os.sep}", f"..{os.sep}")) or text.endswith(separators):
        return True
    first = re.split(r"[/\\]", text, maxsplit=1)[0]
    return bool(first) and Path(first).expanduser().exists()


def resolve_weights(source: str | Path, what: str = "weights", allow_download: bool = False) -> Path:
    """A local path for ``source``: the path itself when it exists, else a Hub id resolved through the cache.

    ``what`` names the argument in errors ("checkpoint", "VAE", ...). ``allow_download`` lets a Hub id missing
    from the cache be fetched, unless ``HF_HUB_OFFLINE`` is set. Raises FileNotFoundError (one line) when the
    source is neither an existing path nor a resolvable Hub id.
    """
    text = str(source)
    local = Path(text).expanduser()
    if local.exists():
        return local
    if _meant_as_local(text):
        raise FileNotFoundError(f"{what} {text} does not exist")
    hub = parse_hub_id(text)
    if hub is None:
        raise FileNotFoundError(f"{what} {text!r} is neither an existing file or folder nor a Hub id like "
                                "owner/name[/path in the repo]")
    local_only = not allow_download or hub_offline()
    try:
        resolved = _download(hub, local_only)
    except (OSError, ValueError) as err:  # LocalEntryNotFound, HTTP errors, offline mode, bad repo names
        why = "HF_HUB_OFFLINE is set" if hub_offline() and allow_download else (
            "downloads are off; allow them to fetch it" if local_only else "the download failed")
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FileNotFoundError(
            f"{what} {text!r} is not a local path, and Hub repo {hub.repo!r} is not in the local cache ({why}): "
            f"{first}"
        ) from err
    if not resolved.exists():
        raise FileNotFoundError(f"{what} {text!r}: Hub repo {hub.repo!r} has no {hub.path!r} in its cached snapshot")
    return resolved
