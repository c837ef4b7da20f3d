"""Reading ``torch.distributed.checkpoint`` folders without running pickled code.

torch's ``FileSystemReader`` loads a folder's ``.metadata`` with plain ``pickle.load`` and its non-tensor items
(the optimizer's param groups) with ``torch.load(weights_only=False)``: a crafted file in a run folder would run
code on every rank at ``--resume``. Here the metadata goes through an unpickler that admits only the checkpoint
metadata types, and every non-tensor item is loaded only under ``weights_only=True`` (tensors already are).
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

from .checkpoint import CorruptCheckpointError

_METADATA_TYPES = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata", "TensorProperties",
        "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING"},
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},  # maps a layout's name to the torch.layout object, nothing else
    "torch": {"Size"},
    "pathlib": {"Path", "PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath"},
    "collections": {"OrderedDict"},
}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if name in _METADATA_TYPES.get(module, ()):
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not a checkpoint metadata type")


def read_metadata(path: Path) -> Metadata:
    """Unpickle a DCP ``.metadata`` file admitting only metadata types; anything else is refused in one line."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            metadata = _MetadataUnpickler(f).load()
    except OSError as err:
        raise CorruptCheckpointError(f"{path} cannot be read ({err.strerror or err})") from None
    except Exception as err:  # UnpicklingError, EOFError, a class called with wrong arguments, ...
        raise CorruptCheckpointError(f"{path} is refused: {str(err).splitlines()[0] or type(err).__name__}") \
            from None
    if not isinstance(metadata, Metadata):
        raise CorruptCheckpointError(f"{path} is refused: it holds a {type(metadata).__name__}, not DCP metadata")
    for info in (metadata.storage_data or {}).values():  # shard files must lie inside the folder
        relative = getattr(info, "relative_path", "")
        if not isinstance(relative, str) or "/" in relative or "\\" in relative or relative in ("", ".", ".."):
            raise CorruptCheckpointError(f"{path} is refused: shard file {relative!r} is outside its folder")
    return metadata


class SafeFileSystemReader(FileSystemReader):
    """``FileSystemReader`` whose metadata comes from :func:`read_metadata`."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        metadata = read_metadata(Path(self._get_metadata_path(kwargs.get("rank"))))
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafeLoadPlanner(DefaultLoadPlanner):
    """``DefaultLoadPlanner`` whose non-tensor items are unpickled only by ``torch.load(weights_only=True)``.

    torch's own ``load_bytes`` runs ``torch.load(weights_only=False)``, a second, unrestricted unpickler; here the
    object the weights-only load returns is the one stored, placed exactly where the parent would place it.
    """

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        fqn = read_item.dest_index.fqn
        try:
            obj = torch.load(value, weights_only=True)
        except Exception as err:
            raise CorruptCheckpointError(f"checkpoint item {fqn!r} is refused: {str(err).splitlines()[0]}") \
                from None
        if self.flatten_state_dict:  # as DefaultLoadPlanner.load_bytes, without its weights_only=False load
            set_element(self.original_state_dict, self.mappings[fqn], obj)
        else:
            self.state_dict[fqn] = obj


def first_failure(err: BaseException) -> BaseException:
    """The first rank's own exception inside torch's ``CheckpointException`` (``err`` itself otherwise)."""
    failures = getattr(err, "failures", None)
    if failures:
        return next(iter(failures.values()))[0]
    return err
