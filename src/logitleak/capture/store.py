"""The activation store: captures streamed to disk as safetensors shards, resumable.

Layout, one directory per (model fingerprint, probe-set fingerprint, capture settings)::

    root/<model_fp>/<probeset_fp>/<settings_fp>/
        manifest.json             what was captured, how, and which shards are finished
        shard-00000.safetensors   hidden.0 .. hidden.L: (n, D) in the store dtype;  logits: (n, V) float32
                                  (VLMs) vision.0 .. vision.Lv: (n, Dv); projector: (n, Dp);
                                  image.0 .. image.L: (n, D) residual pooled over image tokens

The store keeps hidden states in one declared dtype (:func:`store_dtype_for`: float16 for a
model on a GPU, float32 on the CPU, unless asked): the manifest names it, every shard record carries
it beside its checksum, and a shard holding another dtype is never reused or read. The forward pass
runs in the model's own dtype; states are cast once, on their way to disk, and a cast that overflows
(float16 tops out at 65,504) stops with the layer and the fix. Probes upcast per batch.

Each shard covers samples ``[i * shard_size, (i + 1) * shard_size)`` and is written to a temp
file, then renamed; the manifest is rewritten (atomically) after every shard with the shard's
SHA-256 and size. A shard whose bytes do not match its checksum (truncated, deleted, flipped
bits) or a damaged manifest is never used: extraction recomputes it, and opening it names it. An interrupted
extraction resumes at the first missing shard with the same batches, so it yields the same
arrays as an uninterrupted run. Memory stays bounded by one shard: the probe set is read in
chunks and the stored arrays are read back lazily, one layer at a time.
"""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError

from logitleak.capture.forward import capture_meta, iter_capture, wants_vision
from logitleak.capture.source import Capture
from logitleak.capture.prompt_length import check_prompt_lengths
from logitleak.capture.stored import MANIFEST, SAFETENSORS_DTYPES, StoredCapture, read_manifest
from logitleak.errors import LogitleakError
from logitleak.integrity import atomic_write, file_record, matches, write_json
from logitleak.progress import PhaseBar

if TYPE_CHECKING:
    from logitleak.data.probeset import ProbeSet
    from logitleak.models.adapter import ModelAdapter

STORE_VERSION = 1
STORE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def store_dtype_for(requested: str | None, device: torch.device | str) -> str:
    """The dtype the store keeps hidden states in: ``requested`` when given, else float16 for a
    model on a GPU (half the bytes; the probes upcast per batch) and float32 on the CPU."""
    if requested is not None:
        if requested not in STORE_DTYPES:
            raise LogitleakError(f"Store dtype {requested!r} is not supported; pass --store-dtype "
                                 f"{' | '.join(STORE_DTYPES)}.")
        return requested
    return "float32" if torch.device(device).type == "cpu" else "float16"


def check_store_range(part: Capture, dtype: torch.dtype, offset: int = 0) -> None:
    """One sentence naming the first layer whose states overflowed the store dtype (e.g. a
    bfloat16 model's activations above float16's 65,504), instead of storing infinities."""
    if dtype != torch.float16 or part.hidden is None:
        return
    bad = torch.isinf(part.hidden).any(dim=(0, 2))
    if bool(bad.any()):
        layer = int(bad.nonzero()[0, 0])
        raise LogitleakError(f"Hidden states at layer {layer} (samples from {offset}) exceed float16's range "
                             "(65,504); pass --store-dtype bfloat16 or float32.")


def _shard_name(i: int) -> str:
    return f"shard-{i:05d}.safetensors"


def _extra_keys(adapter, probeset, vision_pool, generate: int | None = None) -> list[str]:
    """Names of the extra tensors a capture of ``probeset`` stores (empty for a first-token text
    capture): the vision-to-language states, or with ``generate`` the response's ``gen.*`` arrays."""
    if generate:
        return ([f"gen.hidden.{layer}" for layer in range(adapter.n_layers + 1)]
                + [f"gen.{x}" for x in ("topk_logprobs", "topk_ids", "tokens", "mask")])
    if not wants_vision(adapter, probeset.has_images, vision_pool):
        return []
    keys = [f"vision.{j}" for j in range(adapter.n_vision_layers + 1)]
    if adapter.projector is not None:
        keys.append("projector")
    if adapter.image_token_id is not None:
        keys += [f"image.{layer}" for layer in range(adapter.n_layers + 1)]
    return keys


def _extra_of(part: Capture, key: str, adapter) -> torch.Tensor:
    """One extra tensor of a batch capture, with a clear error when the pass did not produce it."""
    name, _, idx = key.partition(".")
    if name == "gen":  # gen.hidden.<layer> (B, G, D), gen.topk_logprobs / topk_ids (B, G, K), gen.tokens / mask (B, G)
        field, _, layer = idx.partition(".")
        src = getattr(part, f"gen_{field}")
        if src is None:
            raise LogitleakError(f"The capture pass of {adapter.name!r} produced no response; extract with generate=N.")
        src = src[:, :, int(layer)] if layer else src
        return src.to(torch.uint8) if field == "mask" else src
    src = {"vision": part.vision, "projector": part.projector, "image": part.image_hidden}[name]
    if src is None:
        raise LogitleakError(f"The capture pass of {adapter.name!r} produced no {name!r} states (e.g. a prompt without "
                             "image tokens); extract with vision_pool=None.")
    return src if not idx else src[:, int(idx)]


def store_settings(adapter: ModelAdapter, probeset: ProbeSet, *, read_position: str | int, hidden_dtype: str,
                   edit_key: str | None, transform_key: str | None, vision_pool: str | None, generate: int | None,
                   gen_k: int) -> dict:
    """The capture settings that key a stored capture (with the model's and the probe set's
    fingerprints): the one place the key is made, for :meth:`ActivationStore.extract` and
    :meth:`ActivationStore.open`. The vision pooling enters only when vision states are stored, the
    generation only when generating, so the keys of other captures never change."""
    settings = {"read_position": read_position, "hidden_dtype": hidden_dtype, "padding_side": adapter.padding_side,
                "edit": edit_key, "transform": transform_key, "version": STORE_VERSION}
    if _extra_keys(adapter, probeset, vision_pool, generate) and not generate:
        settings["vision_pool"] = vision_pool
    if generate:
        settings.update(generate=int(generate), gen_k=int(gen_k))
    return settings


def sample_bytes(adapter, extras: list[str], hidden_dtype: torch.dtype, generate: int | None, gen_k: int) -> int:
    """Bytes one sample takes in a shard, at least: its hidden states and logits, the decoder-width
    extras (image states, generated states) and the generated top-k; the vision tower's states are
    not counted (their width is known only once they are captured)."""
    width = torch.tensor([], dtype=hidden_dtype).element_size() * adapter.d_model
    total = (adapter.n_layers + 1) * width + 4 * adapter.vocab_size
    for key in extras:
        if key.startswith("image."):
            total += width
        elif key.startswith("gen.hidden."):
            total += int(generate or 0) * width
        elif key in ("gen.topk_logprobs", "gen.topk_ids"):
            total += int(generate or 0) * gen_k * 8
    return total


def disk_full(err: BaseException) -> bool:
    """Whether a write failed because the disk (or the user's quota) is full."""
    if isinstance(err, OSError):
        return err.errno in (errno.ENOSPC, errno.EDQUOT)
    return "os error 28)" in str(err) or "os error 122)" in str(err) or "No space left" in str(err)


def _free(path: Path) -> int:
    return shutil.disk_usage(path).free


def check_free_space(path: Path, needed: int) -> None:
    """Refuse a capture whose shards cannot fit on the disk holding ``path``, naming both sizes."""
    free = _free(path)
    if needed > free:
        raise LogitleakError(f"The capture needs about {needed:,} bytes in {path} and its disk has {free:,} free; free "
                             "some space, or choose an --out on another disk or fewer --samples.")


@dataclass(frozen=True)
class ShardSpec:
    """How every shard of one capture is made (the same for each writer, so any replica writes the
    same bytes): batching, read position, store dtype, edits, extras, generation."""

    batch_size: int
    read_position: str | int
    hidden_dtype: str
    edit_hooks: Mapping[int, Callable] | None = None
    logits_transform: Callable | None = None
    extras: tuple[str, ...] = ()
    vision_pool: str | None = None
    generate: int | None = None
    gen_k: int = 20


ShardJob = tuple[int, int, int]
"""``(index, start, stop)``: one shard to write, samples ``[start, stop)``."""
ShardWriter = Callable[[Path, list[ShardJob], ShardSpec], Iterator[tuple[int, dict]]]
"""Writes the shards ``jobs`` of the capture at a path and yields ``(index, file_record)`` as each lands."""


def local_writer(adapter: ModelAdapter, probeset: ProbeSet, on_batch: Callable[[int], None] | None = None) -> ShardWriter:
    """The default :data:`ShardWriter`: this process, one shard after another."""
    def write(path: Path, jobs: list[ShardJob], spec: ShardSpec) -> Iterator[tuple[int, dict]]:
        for i, start, stop in jobs:
            yield i, write_shard(path, i, adapter, probeset, start, stop, spec, on_batch=on_batch)
    return write


def write_shard(path: Path, i: int, adapter: ModelAdapter, probeset: ProbeSet, start: int, stop: int, spec: ShardSpec,
                on_batch: Callable[[int], None] | None = None) -> dict:
    """Capture samples ``[start, stop)`` into shard ``i`` under ``path`` (atomically) and return its
    file record (SHA-256 and size) for the manifest."""
    from safetensors.torch import save_file

    L, D, V = adapter.n_layers, adapter.d_model, adapter.vocab_size
    dtype = STORE_DTYPES[spec.hidden_dtype]
    hidden = torch.empty((stop - start, L + 1, D), dtype=dtype)
    logits = torch.empty((stop - start, V), dtype=torch.float32)
    extra_parts: dict[str, list[torch.Tensor]] = {k: [] for k in spec.extras}
    for part in iter_capture(adapter, probeset, batch_size=spec.batch_size, read_position=spec.read_position,
                             edit_hooks=spec.edit_hooks, logits_transform=spec.logits_transform, hidden_dtype=dtype,
                             progress=False, start=start, stop=stop, vision_pool=spec.vision_pool,
                             generate=spec.generate, gen_k=spec.gen_k, on_batch=on_batch):
        a, b = part.meta["start"] - start, part.meta["stop"] - start
        hidden[a:b] = part.hidden
        check_store_range(part, dtype, part.meta["start"])
        logits[a:b] = part.logits
        for key in spec.extras:
            extra_parts[key].append(_extra_of(part, key, adapter))
    tensors = {f"hidden.{layer}": hidden[:, layer].contiguous() for layer in range(L + 1)}
    tensors["logits"] = logits
    for key, parts in extra_parts.items():
        tensors[key] = torch.cat(parts, dim=0).contiguous()
    meta = {"start": str(start), "stop": str(stop), "index": str(i)}
    atomic_write(path / _shard_name(i), lambda tmp: save_file(tensors, tmp, metadata=meta))
    return file_record(path / _shard_name(i))


def _shard_entry(i: int, shard_size: int, n: int, record: Mapping, dtype: str) -> dict:
    """Shard ``i``'s line in the manifest: its samples, file, checksum and store dtype."""
    return {"index": i, "file": _shard_name(i), "start": i * shard_size, "stop": min((i + 1) * shard_size, n),
            "sha256": record["sha256"], "size": record["size"], "dtype": dtype}


class ActivationStore:
    """Captures on disk under ``root``, keyed by model, probe set and capture settings."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path_for(self, adapter: ModelAdapter, probeset: ProbeSet | str, settings: Mapping) -> Path:
        """The directory of one capture: model fingerprint / probe-set fingerprint / settings hash."""
        sfp = hashlib.sha256(json.dumps(dict(settings), sort_keys=True, default=str).encode()).hexdigest()[:16]
        pfp = probeset if isinstance(probeset, str) else probeset.fingerprint()
        return self.root / adapter.fingerprint() / pfp / sfp

    def extract(self, adapter: ModelAdapter, probeset: ProbeSet, *, shard_size: int = 1024, batch_size: int = 32,
                read_position: str | int = "last", hidden_dtype: str | None = None,
                edit_hooks: Mapping[int, Callable] | None = None, edit_key: str | None = None,
                logits_transform: Callable | None = None, transform_key: str | None = None,
                progress: bool = True, on_shard: Callable[[int, Path], None] | None = None,
                vision_pool: str | None = "mean", generate: int | None = None, gen_k: int = 20,
                writer: ShardWriter | None = None) -> StoredCapture:
        """Capture ``probeset`` into the store (or reuse / resume what is there) and return it.

        ``shard_size`` samples per shard (memory holds one shard). ``hidden_dtype``: the store
        dtype of the hidden states (``None``: :func:`store_dtype_for` the model's device). Edits and logit transforms
        are functions, so they need a name for the key: ``edit_key`` / ``transform_key``.
        ``on_shard(index, path)`` is called after each shard is safely on disk. ``vision_pool``:
        how a VLM's vision-tower states are pooled per sample (``None``: not stored).
        ``generate=N`` stores one greedy generation pass instead (the first token as usual, plus
        ``gen.*`` arrays for every generated position, top ``gen_k``; see :mod:`logitleak.capture.generation`;
        no vision states then). ``writer``: who writes the missing shards (default
        :func:`local_writer`, this process, in order; :mod:`logitleak.capture.ray_capture`: model
        replicas on a Ray cluster); the manifest merges their checksums as each shard lands.
        """
        hidden_dtype = store_dtype_for(hidden_dtype, adapter.device)
        if shard_size < 1:
            raise LogitleakError(f"Shard size {shard_size} must be at least 1.")
        if edit_hooks and not edit_key:
            raise LogitleakError("Edit hooks change the capture, so the store needs a name for them; pass edit_key='...'.")
        if logits_transform is not None and not transform_key:
            raise LogitleakError("A logits transform changes the capture, so the store needs a name for it; pass "
                                 "transform_key='...'.")
        if len(probeset) == 0:
            raise LogitleakError(f"Probe set {probeset.name!r} is empty; give it at least one sample.")
        settings = store_settings(adapter, probeset, read_position=read_position, hidden_dtype=hidden_dtype,
                                  edit_key=edit_key if edit_hooks else None,
                                  transform_key=transform_key if logits_transform else None,
                                  vision_pool=vision_pool, generate=generate, gen_k=gen_k)
        extras = _extra_keys(adapter, probeset, vision_pool, generate)
        pfp = probeset.fingerprint()
        path = self.path_for(adapter, pfp, settings)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob(".*.tmp"):  # a temp file left by a killed run: never a finished shard
            stale.unlink(missing_ok=True)
        mf_path = path / MANIFEST
        manifest = read_manifest(mf_path)
        recorded: dict[int, dict] = {}
        if manifest:  # resuming: keep the original sharding and batching so the arrays are identical
            try:
                shard_size, batch_size = int(manifest["shard_size"]), int(manifest["batch_size"])
                # only shards whose bytes match the checksum recorded when they were written are reused
                recorded = {int(sh["index"]): sh for sh in manifest["shards"] if matches(path / sh["file"], sh)}
            except (KeyError, TypeError, ValueError):
                manifest, recorded = None, {}
            if manifest and manifest.get("complete") and len(recorded) == len(manifest["shards"]):
                return StoredCapture(path, verify=False)
        n = len(probeset)
        n_shards = (n + shard_size - 1) // shard_size
        manifest = {
            "version": STORE_VERSION, "n": n, "shard_size": shard_size, "batch_size": batch_size,
            "n_shards": n_shards, "settings": settings, "probeset_fingerprint": pfp,
            "meta": {**capture_meta(adapter, probeset, read_position=read_position, edit_hooks=edit_hooks,
                                    logits_transform=logits_transform),
                     "hidden_dtype": hidden_dtype, "edit_key": settings["edit"], "transform_key": settings["transform"],
                     "generate": settings.get("generate"), "gen_k": settings.get("gen_k")},
            "shards": [], "complete": False, "extra_keys": extras, "store_dtype": hidden_dtype,
        }
        done = {i for i in range(n_shards)
                if i in recorded and self._shard_ok(path, i, shard_size, n, adapter, extras, hidden_dtype)}
        todo = [i for i in range(n_shards) if i not in done]
        needed = sum(min(shard_size, n - i * shard_size) for i in todo) * sample_bytes(
            adapter, extras, STORE_DTYPES[hidden_dtype], generate, gen_k)
        if todo:  # before the first forward pass: a prompt too long, or a disk too small, fails now
            check_prompt_lengths(adapter, probeset, new_tokens=int(generate or 0))
            check_free_space(path, needed)
        spec = ShardSpec(batch_size=batch_size, read_position=read_position, hidden_dtype=hidden_dtype,
                         edit_hooks=edit_hooks, logits_transform=logits_transform, extras=tuple(extras),
                         vision_pool=vision_pool if extras and not generate else None, generate=generate, gen_k=gen_k)
        jobs = [(i, i * shard_size, min((i + 1) * shard_size, n)) for i in todo]
        finished = {i: recorded[i] for i in done}
        bar = PhaseBar(progress, "extract", n, completed=sum(min(shard_size, n - i * shard_size) for i in done))
        write = writer or local_writer(adapter, probeset, on_batch=bar.advance)
        try:
            for i, record in write(path, jobs, spec):  # shards may finish in any order (one writer per replica)
                finished[i] = record
                manifest["shards"] = [_shard_entry(j, shard_size, n, finished[j], hidden_dtype) for j in sorted(finished)]
                write_json(mf_path, manifest, indent=1)
                if writer is not None:
                    bar.advance(min(shard_size, n - i * shard_size))
                if on_shard is not None:
                    on_shard(i, path / _shard_name(i))
            manifest["shards"] = [_shard_entry(j, shard_size, n, finished[j], hidden_dtype) for j in sorted(finished)]
            missing = sorted(set(range(n_shards)) - set(finished))
            if missing:
                raise LogitleakError(f"The capture writer finished without shard {missing[0]} of {path}; rerun the "
                                     "extraction (the same command) to resume it.")
            manifest["complete"] = True
            write_json(mf_path, manifest, indent=1)
        except (OSError, SafetensorError) as err:
            if not disk_full(err):
                raise
            raise LogitleakError(f"The disk holding {path} is full: the capture needs about {needed:,} bytes there "
                                 f"({_free(path):,} are free now); free some space, or choose an --out on another disk "
                                 "or fewer --samples. Finished shards are kept, so the rerun resumes.") from None
        finally:
            bar.close()
        return StoredCapture(path, verify=False)

    @staticmethod
    def _shard_ok(path: Path, i: int, shard_size: int, n: int, adapter: ModelAdapter, extras: list[str] = (),
                  dtype: str = "float16") -> bool:
        """A finished shard: present, readable, covering the right samples with the right shapes and
        its hidden states in the store's ``dtype``."""
        from safetensors import safe_open

        f = path / _shard_name(i)
        if not f.is_file():
            return False
        start, stop = i * shard_size, min((i + 1) * shard_size, n)
        try:
            with safe_open(str(f), framework="numpy") as fh:
                md = fh.metadata() or {}
                keys = set(fh.keys())
                if int(md.get("start", -1)) != start or int(md.get("stop", -1)) != stop:
                    return False
                want = {f"hidden.{layer}" for layer in range(adapter.n_layers + 1)} | {"logits"} | set(extras)
                if keys != want or fh.get_slice("hidden.0").get_dtype() != SAFETENSORS_DTYPES[dtype]:
                    return False
                return tuple(fh.get_slice("logits").get_shape()) == (stop - start, adapter.vocab_size)
        except Exception:  # noqa: BLE001 - unreadable means unfinished: it is recomputed
            return False

    def open(self, adapter: ModelAdapter, probeset: ProbeSet, *, read_position: str | int = "last",
             hidden_dtype: str | None = None, edit_key: str | None = None, transform_key: str | None = None,
             vision_pool: str | None = "mean", generate: int | None = None, gen_k: int = 20) -> StoredCapture:
        """The finished stored capture :meth:`extract` made with these settings (the same key, the
        same defaults; an edit or a transform is named by its key), without running the model."""
        settings = store_settings(adapter, probeset, read_position=read_position,
                                  hidden_dtype=store_dtype_for(hidden_dtype, adapter.device),
                                  edit_key=edit_key, transform_key=transform_key, vision_pool=vision_pool,
                                  generate=generate, gen_k=gen_k)
        return StoredCapture(self.path_for(adapter, probeset, settings))
