"""Finding checkpoint files (a folder, the Hugging Face cache, the hub) and streaming their
tensors one at a time, shard by shard, so a caller can convert or quantize each as it arrives."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

import torch

# Short names users type -> hub ids.
MODEL_ALIASES = {
    "mpt-7b": "mosaicml/mpt-7b",
    "mpt-7b-instruct": "mosaicml/mpt-7b-instruct",
    "mpt-7b-chat": "mosaicml/mpt-7b-chat",
    "mpt-7b-storywriter": "mosaicml/mpt-7b-storywriter",
    "mpt-7b-8k": "mosaicml/mpt-7b-8k",
    "mpt-7b-8k-instruct": "mosaicml/mpt-7b-8k-instruct",
    "mpt-7b-8k-chat": "mosaicml/mpt-7b-8k-chat",
    "mpt-30b": "mosaicml/mpt-30b",
    "mpt-30b-instruct": "mosaicml/mpt-30b-instruct",
    "mpt-30b-chat": "mosaicml/mpt-30b-chat",
    "mpt-1b-redpajama-200b": "mosaicml/mpt-1b-redpajama-200b",
    "replit-code-v1-3b": "replit/replit-code-v1-3b",
}

SAFE_INDEX = "model.safetensors.index.json"
SAFE_SINGLE = "model.safetensors"
BIN_INDEX = "pytorch_model.bin.index.json"
BIN_SINGLE = "pytorch_model.bin"
HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "tokenizer*"]


def resolve_checkpoint(name_or_path: str | os.PathLike, config_only: bool = False) -> Path:
    """A local folder holding config.json for a folder path, hub id or alias."""
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"expected a model name or folder, got {type(name_or_path).__name__}")
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} has no config.json; is it an MPT checkpoint folder?")
        return path
    if path.exists():
        raise NotADirectoryError(f"{path} is a file; pass the checkpoint folder that holds it")
    name = str(name_or_path)
    repo_id = MODEL_ALIASES.get(name.lower(), name)
    if repo_id.count("/") != 1 or name.startswith((".", "/", "~")):
        known = ", ".join(sorted(MODEL_ALIASES))
        raise FileNotFoundError(f"{name!r} is neither a folder nor a hub id (owner/name) nor a known alias ({known})")
    return _hub_snapshot(repo_id, config_only)


def _hub_snapshot(repo_id: str, config_only: bool) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import HfHubHTTPError

    try:  # the local cache first: no network, no waiting
        return Path(snapshot_download(repo_id, local_files_only=True))
    except (OSError, ValueError):  # not cached (LocalEntryNotFoundError) or not a valid repo id
        pass
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        raise FileNotFoundError(
            f"{repo_id} is not in the Hugging Face cache and HF_HUB_OFFLINE is set; "
            f"download it first (huggingface-cli download {repo_id}) or pass a local folder"
        )
    patterns = ["config.json"] if config_only else HUB_PATTERNS
    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=patterns))
        if not config_only and not _has_weights(folder):  # a repo with only .bin shards
            folder = Path(snapshot_download(repo_id, allow_patterns=patterns + ["*.bin"]))
        return folder
    except HfHubHTTPError as e:
        raise OSError(f"could not download {repo_id} from the hub: {_first_line(e)}") from e
    except Exception as e:  # connection errors, timeouts, missing repos
        raise OSError(f"could not fetch {repo_id}: it is not in the Hugging Face cache and the hub could not be "
                      f"reached ({type(e).__name__}: {_first_line(e)})") from e


def _first_line(e: Exception) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[0] if lines else type(e).__name__


def _has_weights(folder: Path) -> bool:
    return any((folder / n).is_file() for n in (SAFE_INDEX, SAFE_SINGLE, BIN_INDEX, BIN_SINGLE))


def weight_files(folder: Path) -> list[Path]:
    """The weight files of a checkpoint folder, in shard order."""
    folder = Path(folder)
    for index_name in (SAFE_INDEX, BIN_INDEX):
        index = folder / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            except (ValueError, KeyError, TypeError) as e:  # ValueError: bad JSON or not UTF-8
                raise OSError(f"{index} is not a valid shard index ({e})") from e
            shards = sorted(set(weight_map.values()))
            missing = [s for s in shards if not (folder / s).is_file()]
            if missing:
                raise FileNotFoundError(f"{index} names shards that are missing: {', '.join(missing)}")
            return [folder / s for s in shards]
    for single in (SAFE_SINGLE, BIN_SINGLE):
        if (folder / single).is_file():
            return [folder / single]
    found = sorted(p.name for p in folder.iterdir())
    raise FileNotFoundError(
        f"no weights in {folder}: expected {SAFE_SINGLE}, {SAFE_INDEX}, {BIN_SINGLE} or {BIN_INDEX}; found {found}"
    )


def iter_tensors(files: list[Path], reuse_buffer: bool = False, mapped: bool = False
                 ) -> Iterator[tuple[str, torch.Tensor]]:
    """Yields (name, tensor) one at a time; only one shard is open at once.

    reuse_buffer=True (safetensors): every tensor is read into one shared buffer, valid only until the
    next one is yielded, for a consumer that converts each tensor at once (quantizing while loading);
    then no freed source tensor lingers in the allocator's heap and resident memory stays flat.
    mapped=True (safetensors): every tensor is a view of a memory map of its file, for a consumer that
    keeps the tensors as they are (a model saved quantized by mpt_lite): loading copies nothing."""
    from . import progress

    shared = [torch.empty(0, dtype=torch.uint8)] if reuse_buffer and not mapped else None
    for f in files:
        if f.suffix != ".safetensors":
            tensors = _iter_torch_bin(f)
        else:
            tensors = _map_safetensors(f) if mapped else _iter_safetensors(f, shared)
        for item in tensors:
            yield item
            progress.tick()  # advances a progress bar when a caller (the CLI) tracks one


def count_tensors(files: list[Path]) -> int | None:
    """How many tensors the files hold (from the safetensors headers); None for .bin files."""
    from safetensors import safe_open

    n = 0
    for f in files:
        if f.suffix != ".safetensors":
            return None
        try:
            with safe_open(str(f), framework="pt") as sf:
                n += len(list(sf.keys()))
        except Exception as e:
            raise OSError(f"{f} is not a readable safetensors file ({e})") from e
    return n


def safetensors_metadata(path: Path) -> dict:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as sf:
            return dict(sf.metadata() or {})
    except Exception as e:
        raise OSError(f"{path} is not a readable safetensors file ({e})") from e


_SAFE_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


class _Entry:
    """One tensor of a safetensors file: its name, dtype, shape and absolute byte range."""
    __slots__ = ("key", "dtype", "shape", "begin", "nbytes")

    def __init__(self, path: Path, key: str, info: dict, base: int, size: int) -> None:
        try:
            self.dtype = _SAFE_DTYPES[info["dtype"]]
            self.shape = [int(d) for d in info["shape"]]
            start, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as e:
            raise OSError(f"{path}: tensor {key!r} has an unsupported or malformed entry ({e})") from e
        numel = 1
        for d in self.shape:
            numel *= d
        self.key, self.begin, self.nbytes = key, base + start, numel * self.dtype.itemsize
        if min(self.shape, default=0) < 0 or end - start != self.nbytes or start < 0 or base + end > size:
            raise OSError(f"{path}: could not read tensor {key!r} (corrupt or truncated?)")


def _safetensors_entries(f, path: Path) -> list[_Entry]:
    """The tensors of an open safetensors file, in file order, each checked against the file size."""
    import struct

    try:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > 100_000_000:
            raise ValueError(f"header length {n} is implausible")
        header = json.loads(f.read(n))
        items = [(k, v) for k, v in header.items() if k != "__metadata__"]
    except (struct.error, ValueError, KeyError, TypeError, AttributeError) as e:
        raise OSError(f"{path} is not a readable safetensors file (corrupt or truncated?): {e}") from e
    size = os.fstat(f.fileno()).st_size
    entries = [_Entry(path, k, v, 8 + n, size) for k, v in items]
    return sorted(entries, key=lambda e: e.begin)


def _iter_safetensors(path: Path, shared: list | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """Reads each tensor with a plain file read into its own buffer (no memory map), so the pages of
    tensors already consumed are not counted in the process's resident memory while a shard streams."""
    import ctypes

    try:
        f = open(path, "rb")
    except OSError as e:
        raise OSError(f"{path} is not a readable safetensors file: {e}") from e
    with f:
        for e in _safetensors_entries(f, path):
            if shared is None:
                t = torch.empty(e.shape, dtype=e.dtype)
            else:
                if shared[0].numel() < e.nbytes:
                    shared[0] = torch.empty(0, dtype=torch.uint8)  # free the old one first
                    shared[0] = torch.empty(e.nbytes, dtype=torch.uint8)
                t = shared[0][: e.nbytes].view(e.dtype).view(e.shape)
            f.seek(e.begin)
            if e.nbytes and f.readinto((ctypes.c_char * e.nbytes).from_address(t.data_ptr())) != e.nbytes:
                raise OSError(f"{path}: could not read tensor {e.key!r} (truncated)")
            yield e.key, t


def _map_safetensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Yields each tensor as a view of a private memory map of the file: nothing is read or copied
    until a page is used, and the pages stay shared with the page cache. A later rename over the file
    (save_pretrained writes beside it and renames) leaves the mapped file intact. A tensor whose
    offset is not a multiple of its element size (safetensors writers align them; others may not) is
    copied instead."""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise OSError(f"{path} is not a readable safetensors file: {e}") from e
    with f:
        entries = _safetensors_entries(f, path)
        size = os.fstat(f.fileno()).st_size
    whole = torch.empty(0, dtype=torch.uint8)
    if size:
        whole.set_(torch.UntypedStorage.from_file(str(path), shared=False, nbytes=size))
    for e in entries:
        raw = whole[e.begin: e.begin + e.nbytes]
        if e.begin % e.dtype.itemsize:
            raw = raw.clone()
        yield e.key, raw.view(e.dtype).view(e.shape)


def _iter_torch_bin(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        raise OSError(f"{path} is not a readable PyTorch weight file (corrupt or truncated?): {e}") from e
    if not isinstance(state, dict):
        raise OSError(f"{path} does not hold a state dict (found {type(state).__name__})")
    keys = list(state.keys())
    for key in keys:
        tensor = state.pop(key)
        if not isinstance(tensor, torch.Tensor):
            raise OSError(f"{path}: entry {key!r} is not a tensor")
        yield key, tensor
    del state
