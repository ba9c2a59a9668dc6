"""Checkpoints and weight artifacts that are safe to load and never half-written.

Tensors go to safetensors files and everything else to JSON, so loading a
checkpoint runs no code from it. Every file is written under a temporary name,
fsynced and renamed onto its target, and a checkpoint folder is renamed into
place only once all its files are complete: after a crash the newest complete
checkpoint is still the one found by `latest_checkpoint`.

Layout of one checkpoint, `run_dir/checkpoints/step-<global_step:09d>/`:

    model.safetensors             model.state_dict()
    optimizer-<name>.safetensors  each optimizer's state tensors, named
                                  `state.<param_index>.<key>`
    checkpoint.json               format version, trainer state, scheduler state,
                                  metadata, the rest of each optimizer's state
                                  dict, and the sha256 and size of every file

Values in checkpoint.json that plain JSON cannot hold exactly are written as
one-key objects: `{"__tuple__": [...]}`, `{"__float__": "inf"}`, a dict with
keys other than strings as `{"__dict__": [[key, value], ...]}`, and a tensor
kept in a safetensors file as `{"__tensor__": "<name in that file>"}`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import os
import random
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

logger = logging.getLogger(__name__)

FORMAT = "likely.checkpoint"
FORMAT_VERSION = 1
CHECKPOINTS_DIR = "checkpoints"
MANIFEST = "checkpoint.json"
MODEL_FILE = "model.safetensors"

_STEP_DIR = re.compile(r"step-(\d+)")
_OPTIMIZER_NAME = re.compile(r"[A-Za-z0-9_-]+")
_TAGS = frozenset({"__tensor__", "__tuple__", "__float__", "__dict__"})
_HASH_CHUNK = 1 << 20


class CheckpointError(ValueError):
    """A checkpoint or weight file is missing, damaged or does not fit."""


@dataclass(frozen=True)
class LoadedCheckpoint:
    """The non-tensor parts of a checkpoint, after its tensors are loaded.

    Attributes:
        trainer_state: the dict given to `save_checkpoint` as `trainer_state`.
        scheduler_state: the scheduler's state dict, or None if none was saved.
        metadata: the dict given to `save_checkpoint` as `metadata`.
    """

    trainer_state: dict[str, Any]
    scheduler_state: dict[str, Any] | None
    metadata: dict[str, Any]


# ---------------------------------------------------------------- atomic files


def _temporary_path(path: Path) -> Path:
    return path.parent / f".{path.name}.tmp-{os.getpid()}"


def _fsync_file(path: Path) -> None:
    with path.open("rb+") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    # Directories cannot be opened for fsync on Windows; the rename there is
    # as durable as the filesystem makes it.
    if os.name != "posix":
        return
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _replace_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """Call `write(temporary_path)`, fsync, rename onto `path`, fsync the folder."""
    path = Path(path)
    temporary = _temporary_path(path)
    try:
        write(temporary)
        _fsync_file(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Write `data` to `path` so that the file is always old or new, never partial.

    The bytes go to `.<name>.tmp-<pid>` in the same folder, are fsynced, and the
    temporary file is renamed onto `path`; the folder is then fsynced so the
    rename survives a power loss.

    Args:
        path: the file to write; its folder must exist.
        data: the complete new contents.
    """
    _replace_atomically(Path(path), lambda temporary: temporary.write_bytes(data))


def atomic_write_text(path: Path | str, text: str) -> None:
    """Write `text` as UTF-8 to `path` atomically (see `atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path | str, obj: Any) -> None:
    """Write `obj` as indented JSON to `path` atomically.

    Raises:
        ValueError: `obj` holds NaN or infinity, which JSON cannot represent.
        TypeError: `obj` holds a value JSON cannot represent.
    """
    atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def _write_safetensors(path: Path, tensors: Mapping[str, torch.Tensor]) -> None:
    save_file(_storable(tensors, path.name), path, metadata={"format": "pt"})


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------- tensors


def _storable(tensors: Mapping[str, Any], source: str) -> dict[str, torch.Tensor]:
    """Dense, contiguous tensors with no two sharing memory, as safetensors needs.

    Tied weights appear under several keys of a state dict with one storage;
    every key after the first gets its own copy, and load_state_dict writes the
    same values back into the shared storage.
    """
    storable = {}
    storages = set()
    for key, value in tensors.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"{source}: '{key}' is a {type(value).__name__}, not a tensor; "
                "only tensors can be stored in safetensors"
            )
        if value.layout != torch.strided:
            raise CheckpointError(
                f"{source}: '{key}' is a {value.layout} tensor; only dense tensors "
                "can be stored in safetensors"
            )
        tensor = value.detach().contiguous()
        storage = (tensor.device, tensor.untyped_storage().data_ptr())
        if storage[1] != 0 and storage in storages:
            tensor = tensor.clone()
        storages.add(storage)
        storable[key] = tensor
    return storable


def _load_safetensors(path: Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    try:
        return load_file(path, device=device)
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"cannot read {path}: {error}") from error


def _check_fits(
    tensors: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor],
    source: Path,
) -> None:
    """Raise unless `tensors` has exactly the keys and shapes of `expected`."""
    missing = [key for key in expected if key not in tensors]
    if missing:
        raise CheckpointError(
            f"{source} lacks {len(missing)} keys the model has: {missing[:10]}"
        )
    unexpected = [key for key in tensors if key not in expected]
    if unexpected:
        raise CheckpointError(
            f"{source} has {len(unexpected)} keys the model lacks: {unexpected[:10]}"
        )
    for key, tensor in expected.items():
        found = tuple(tensors[key].shape)
        wanted = tuple(tensor.shape)
        if found != wanted:
            raise CheckpointError(
                f"{source}: '{key}' has shape {found} in the file but {wanted} "
                "in the model"
            )


def _model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return dict(model.state_dict())


def _load_into(model: nn.Module, path: Path, device: str) -> None:
    tensors = _load_safetensors(path, device)
    _check_fits(tensors, _model_state(model), path)
    model.load_state_dict(tensors, strict=True)


def save_weights(path: Path | str, model: nn.Module) -> None:
    """Write the model's state dict, alone, to one safetensors file atomically.

    Args:
        path: the file to write, conventionally ending `.safetensors`.
        model: the model whose parameters and buffers are saved.
    """
    path = Path(path)
    tensors = _model_state(model)
    _replace_atomically(path, lambda temporary: _write_safetensors(temporary, tensors))
    logger.info("saved weights to %s", path)


def load_weights(
    path: Path | str, model: nn.Module, *, device: str | torch.device = "cpu"
) -> None:
    """Load a file written by `save_weights` into `model`.

    Args:
        path: the safetensors file.
        model: a model of the same architecture; its tensors are overwritten.
        device: where the file's tensors are read to before they are copied.

    Raises:
        CheckpointError: the file is missing or unreadable, or its keys or
            shapes differ from the model's.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    _load_into(model, path, str(device))


# ---------------------------------------------------------------- JSON codec


def _join(name: str, key: object) -> str:
    return f"{name}.{key}" if name else str(key)


def _encode(value: Any, name: str, tensors: dict[str, torch.Tensor] | None) -> Any:
    """Turn `value` into plain JSON, moving tensors into `tensors` under `name`.

    Args:
        value: what to encode.
        name: its dotted path, used for tensor names and in errors.
        tensors: where tensors go; None where tensors are not allowed.
    """
    if isinstance(value, torch.Tensor):
        if tensors is None:
            raise CheckpointError(
                f"{name} is a tensor; checkpoint.json holds only numbers, strings, "
                "lists and dicts here"
            )
        if name in tensors:
            raise CheckpointError(f"two tensors would both be stored as '{name}'")
        tensors[name] = value
        return {"__tensor__": name}
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else {"__float__": repr(value)}
    if isinstance(value, tuple):
        items = [_encode(item, _join(name, i), tensors) for i, item in enumerate(value)]
        return {"__tuple__": items}
    if isinstance(value, list):
        return [_encode(item, _join(name, i), tensors) for i, item in enumerate(value)]
    if isinstance(value, Mapping):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: _encode(v, _join(name, k), tensors) for k, v in value.items()}
        pairs = [
            [_encode(k, f"{name} key", None), _encode(v, _join(name, k), tensors)]
            for k, v in value.items()
        ]
        return {"__dict__": pairs}
    raise CheckpointError(
        f"{name} is a {type(value).__name__}, which checkpoint.json cannot hold; "
        "use numbers, strings, lists, tuples and dicts"
    )


def _decode(value: Any, tensors: Mapping[str, torch.Tensor] | None, source: str) -> Any:
    """Invert `_encode`, taking tensors by name from `tensors`."""
    if isinstance(value, list):
        return [_decode(item, tensors, source) for item in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1 and next(iter(value)) in _TAGS:
        ((tag, content),) = value.items()
        if tag == "__tensor__":
            if tensors is None or content not in tensors:
                raise CheckpointError(
                    f"{source} lacks tensor '{content}' that {MANIFEST} refers to"
                )
            return tensors[content]
        if tag == "__tuple__":
            return tuple(_decode(item, tensors, source) for item in content)
        if tag == "__float__":
            return float(content)
        return {
            _decode(k, None, source): _decode(v, tensors, source) for k, v in content
        }
    return {k: _decode(v, tensors, source) for k, v in value.items()}


# ---------------------------------------------------------------- RNG state


def _bytes_to_text(state: torch.Tensor) -> str:
    return base64.b64encode(state.numpy().tobytes()).decode("ascii")


def _text_to_bytes(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)


def rng_state() -> dict[str, Any]:
    """The random generators' states as a JSON-able dict.

    Holds torch's CPU generator (base64 of its byte state), Python's `random`
    module, and every CUDA device's generator when CUDA is available. numpy's
    global generator is left out because likely never draws from it.
    """
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": _bytes_to_text(torch.get_rng_state()),
        "python": {
            "version": version,
            "internal": list(internal),
            "gauss_next": gauss_next,
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = [_bytes_to_text(s) for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore the generators from a dict made by `rng_state`.

    CUDA states are restored for as many devices as both the saved state and
    this machine have; a mismatch is logged, since draws on the other devices
    then differ from the original run.

    Raises:
        CheckpointError: `state` lacks the torch or Python generator state.
    """
    for key in ("torch", "python"):
        if key not in state:
            raise CheckpointError(
                f"RNG state lacks '{key}'; found keys {sorted(state)}"
            )
    torch.set_rng_state(_text_to_bytes(state["torch"]))
    python = state["python"]
    random.setstate(
        (python["version"], tuple(python["internal"]), python["gauss_next"])
    )
    saved_cuda = state.get("cuda", [])
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if len(saved_cuda) != available:
        logger.warning(
            "RNG state has %d CUDA generators but this machine has %d CUDA "
            "devices; restoring %d",
            len(saved_cuda),
            available,
            min(len(saved_cuda), available),
        )
    for device, text in enumerate(saved_cuda[:available]):
        torch.cuda.set_rng_state(_text_to_bytes(text), device)


# ---------------------------------------------------------------- checkpoints


def checkpoint_dir(run_dir: Path | str, global_step: int) -> Path:
    """Where the checkpoint of `global_step` lives in `run_dir`."""
    return Path(run_dir) / CHECKPOINTS_DIR / f"step-{global_step:09d}"


def _optimizer_file(name: str) -> str:
    return f"optimizer-{name}.safetensors"


def save_checkpoint(
    folder: Path | str,
    *,
    model: nn.Module,
    optimizers: Mapping[str, torch.optim.Optimizer],
    scheduler_state: Mapping[str, Any] | None,
    trainer_state: Mapping[str, Any],
    metadata: Mapping[str, Any],
) -> Path:
    """Write a complete checkpoint folder, or nothing that looks like one.

    The files are written into `.<name>.tmp-<pid>` beside `folder`, and that
    folder is renamed to `folder` once checkpoint.json, written last, is on
    disk. An existing `folder` is replaced. A crash leaves at most the hidden
    temporary folder, which `latest_checkpoint` ignores.

    Args:
        folder: the checkpoint folder, normally `checkpoint_dir(run_dir, step)`.
        model: the model; its whole state dict is saved.
        optimizers: optimizers by name (letters, digits, `_` and `-`).
        scheduler_state: a JSON-able scheduler state dict, or None.
        trainer_state: JSON-able loop state: epoch, step, best metric,
            `rng_state()`, and so on.
        metadata: JSON-able facts about the run, kept as given.

    Returns:
        `folder`, as a Path.

    Raises:
        CheckpointError: an optimizer name is not a safe file name part, or a
            state holds a value that cannot be stored.
    """
    folder = Path(folder)
    for name in optimizers:
        if not isinstance(name, str) or not _OPTIMIZER_NAME.fullmatch(name):
            raise CheckpointError(
                f"optimizer name {name!r} must be letters, digits, '_' or '-'"
            )

    # Encode everything before writing, so a state that cannot be stored fails
    # without touching the disk.
    optimizer_json = {}
    optimizer_tensors = {}
    for name, optimizer in optimizers.items():
        tensors: dict[str, torch.Tensor] = {}
        optimizer_json[name] = _encode(optimizer.state_dict(), "", tensors)
        optimizer_tensors[name] = tensors
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "trainer_state": _encode(dict(trainer_state), "trainer_state", None),
        "scheduler_state": (
            None
            if scheduler_state is None
            else _encode(dict(scheduler_state), "scheduler_state", None)
        ),
        "metadata": _encode(dict(metadata), "metadata", None),
        "optimizers": optimizer_json,
    }

    folder.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary_path(folder)
    if temporary.exists():
        shutil.rmtree(temporary)
    temporary.mkdir()
    try:
        _write_safetensors(temporary / MODEL_FILE, _model_state(model))
        for name, tensors in optimizer_tensors.items():
            _write_safetensors(temporary / _optimizer_file(name), tensors)
        for path in temporary.iterdir():
            _fsync_file(path)
        manifest["files"] = {
            path.name: {"sha256": _sha256(path), "bytes": path.stat().st_size}
            for path in sorted(temporary.iterdir())
        }
        atomic_write_json(temporary / MANIFEST, manifest)
        _fsync_dir(temporary)
        _move_into_place(temporary, folder)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    logger.info("saved checkpoint %s", folder)
    return folder


def _move_into_place(temporary: Path, folder: Path) -> None:
    if not folder.exists():
        os.replace(temporary, folder)
        _fsync_dir(folder.parent)
        return
    # A folder cannot be renamed over a non-empty one, so the old one steps
    # aside first. A crash between the two renames leaves neither under
    # `folder`; the previous step's checkpoint is then the latest.
    old = folder.parent / f".{folder.name}.old-{os.getpid()}"
    if old.exists():
        shutil.rmtree(old)
    os.replace(folder, old)
    os.replace(temporary, folder)
    _fsync_dir(folder.parent)
    shutil.rmtree(old)


def _read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist; {folder} is no checkpoint")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a {FORMAT} manifest")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format version {version!r}; this likely reads version "
            f"{FORMAT_VERSION}"
        )
    return manifest


def _verify_files(folder: Path, files: Mapping[str, Any], needed: list[str]) -> None:
    for name in needed:
        if name not in files:
            raise CheckpointError(f"{folder / MANIFEST} lists no hash for {name}")
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"checkpoint file {path} is missing")
        size = path.stat().st_size
        if size != expected["bytes"]:
            raise CheckpointError(
                f"checkpoint file {path} has {size} bytes; expected "
                f"{expected['bytes']}"
            )
        digest = _sha256(path)
        if digest != expected["sha256"]:
            raise CheckpointError(
                f"checkpoint file {path} has sha256 {digest}; expected "
                f"{expected['sha256']}, so it is damaged"
            )


def load_checkpoint(
    folder: Path | str,
    *,
    model: nn.Module,
    optimizers: Mapping[str, torch.optim.Optimizer],
    device: str | torch.device = "cpu",
) -> LoadedCheckpoint:
    """Load a checkpoint written by `save_checkpoint` into `model` and `optimizers`.

    Every file's sha256 is checked before any tensor is loaded, so a damaged
    checkpoint changes nothing. RNG state is returned inside `trainer_state`
    and is not applied here; pass it to `set_rng_state`.

    Args:
        folder: the checkpoint folder.
        model: a model of the architecture that was saved.
        optimizers: optimizers by the names they were saved under, built over
            the same parameters in the same order.
        device: where the model's tensors are read to before they are copied
            into it. Optimizer state is read to the CPU and moved next to its
            parameters by the optimizer.

    Returns:
        The trainer state, scheduler state and metadata.

    Raises:
        CheckpointError: a file is missing or damaged, the format version is
            unknown, the optimizer names differ from the saved ones, or a key or
            shape differs from the model's.
    """
    folder = Path(folder)
    manifest = _read_manifest(folder)
    saved_optimizers = manifest["optimizers"]
    if sorted(saved_optimizers) != sorted(optimizers):
        raise CheckpointError(
            f"{folder} holds optimizers {sorted(saved_optimizers)} but "
            f"{sorted(optimizers)} were given"
        )
    needed = [MODEL_FILE, *(_optimizer_file(name) for name in saved_optimizers)]
    _verify_files(folder, manifest["files"], needed)

    _load_into(model, folder / MODEL_FILE, str(device))
    for name, optimizer in optimizers.items():
        path = folder / _optimizer_file(name)
        tensors = _load_safetensors(path)
        state = _decode(saved_optimizers[name], tensors, str(path))
        try:
            optimizer.load_state_dict(state)
        except (ValueError, KeyError, RuntimeError) as error:
            raise CheckpointError(
                f"optimizer '{name}' does not fit {path}: {error}"
            ) from error

    scheduler_state = manifest["scheduler_state"]
    logger.info("loaded checkpoint %s", folder)
    return LoadedCheckpoint(
        trainer_state=_decode(manifest["trainer_state"], None, MANIFEST),
        scheduler_state=(
            None
            if scheduler_state is None
            else _decode(scheduler_state, None, MANIFEST)
        ),
        metadata=_decode(manifest["metadata"], None, MANIFEST),
    )


def _complete_checkpoints(run_dir: Path | str) -> list[tuple[int, Path]]:
    """Complete checkpoints in `run_dir`, oldest first, with their global steps."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _STEP_DIR.fullmatch(path.name)
        if match and path.is_dir() and (path / MANIFEST).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(run_dir: Path | str) -> Path | None:
    """The newest complete checkpoint in `run_dir/checkpoints`, or None.

    Temporary folders of a save in progress or interrupted, and step folders
    without checkpoint.json, are ignored.
    """
    found = _complete_checkpoints(run_dir)
    return found[-1][1] if found else None


def prune_checkpoints(run_dir: Path | str, keep: int = 2) -> list[Path]:
    """Delete all but the newest `keep` complete checkpoints in `run_dir`.

    Temporary folders left by an interrupted save are not touched: with a
    shared filesystem this process cannot tell one from a save still running
    elsewhere, so they stay until removed by hand and cost their disk space.

    Args:
        run_dir: the run folder holding `checkpoints/`.
        keep: how many of the newest complete checkpoints to keep, at least 1.

    Returns:
        The deleted folders, oldest first.

    Raises:
        ValueError: `keep` is below 1.
    """
    if keep < 1:
        raise ValueError(f"keep must be at least 1; got {keep}")
    found = _complete_checkpoints(run_dir)
    deleted = [path for _, path in found[:-keep]]
    for path in deleted:
        # checkpoint.json goes first, so a crash mid-delete leaves a folder
        # that no longer counts as complete.
        (path / MANIFEST).unlink()
        shutil.rmtree(path)
        logger.info("deleted old checkpoint %s", path)
    return deleted
