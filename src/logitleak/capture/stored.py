"""A capture on disk, read lazily one array at a time: the activation store's read side."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from logitleak.capture.source import NO_RESPONSE, Capture, check_layer
from logitleak.errors import LogitleakError
from logitleak.integrity import matches
from logitleak.levels.table import HIDDEN, IMAGE_HIDDEN, LOGITS, PROJECTOR, RESPONSE, RESPONSE_HIDDEN, VISION

MANIFEST = "manifest.json"
SAFETENSORS_DTYPES = {"float16": "F16", "bfloat16": "BF16", "float32": "F32"}
"""Store dtype -> how safetensors names it in a shard's header."""


def read_manifest(path: Path) -> dict | None:
    """The manifest, or ``None`` when it is missing or damaged (then no shard is trusted)."""
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("shards"), list):
        return None
    if not all(isinstance(s, dict) and "file" in s for s in manifest["shards"]):
        return None
    return manifest


class StoredCapture:
    """A capture on disk, read lazily: :meth:`layer` reads one layer from every shard,
    :meth:`logits` the final logits, :meth:`to_capture` builds an in-memory :class:`Capture`.
    Levels read it through :class:`~logitleak.capture.source.CaptureSource` (``contents``,
    ``read_*``), the interface an in-memory capture has too."""

    def __init__(self, path: str | Path, verify: bool = True) -> None:
        self.path = Path(path)
        mf = self.path / MANIFEST
        if not mf.is_file():
            raise LogitleakError(f"No stored capture at {str(self.path)!r} (manifest.json missing); extract it first.")
        self.manifest = read_manifest(mf)
        if self.manifest is None:
            raise LogitleakError(f"The manifest {mf} of a stored capture is damaged; rerun the extraction (the same "
                                 "command) to recompute the capture.")
        if not self.manifest.get("complete"):
            raise LogitleakError(f"The stored capture at {str(self.path)!r} is incomplete; run the extraction again to "
                                 "resume it.")
        if verify:
            for shard in self.manifest["shards"]:
                if not matches(self.path / shard["file"], shard):
                    raise LogitleakError(f"Shard {self.path / shard['file']} of a stored capture is damaged or missing "
                                         "(its checksum does not match the manifest); rerun the extraction (the same "
                                         "command) to recompute it.")

    @property
    def meta(self) -> dict:
        return dict(self.manifest["meta"])

    @property
    def store_dtype(self) -> str:
        """The declared dtype of the stored hidden states (``float16``, ``bfloat16`` or ``float32``)."""
        return str(self.manifest.get("store_dtype") or self.manifest["meta"].get("hidden_dtype") or "float16")

    @property
    def state_dtype(self) -> type:
        """The numpy dtype hidden-state features are held in: float16 for a float16 store (exact), else
        float32 (numpy has no bfloat16); the probes upcast per batch."""
        return np.float16 if self.store_dtype == "float16" else np.float32

    def __len__(self) -> int:
        return int(self.manifest["n"])

    @property
    def n_layers(self) -> int:
        return int(self.manifest["meta"]["n_layers"])

    @property
    def d_model(self) -> int:
        return int(self.manifest["meta"]["d_model"])

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["meta"]["vocab_size"])

    @property
    def extra_keys(self) -> list[str]:
        """Tensors stored beside ``hidden.*`` / ``logits`` (vision tower, projector, image positions)."""
        return list(self.manifest.get("extra_keys", []))

    @property
    def n_vision_layers(self) -> int:
        return sum(1 for k in self.extra_keys if k.startswith("vision.")) - 1 if self.has_vision else 0

    @property
    def has_vision(self) -> bool:
        return "vision.0" in self.extra_keys

    @property
    def has_projector(self) -> bool:
        return "projector" in self.extra_keys

    @property
    def has_image_hidden(self) -> bool:
        return "image.0" in self.extra_keys

    def extra(self, name: str) -> np.ndarray:
        """``(N, ·)`` one stored extra tensor (``vision.j``, ``projector``, ``image.l``), stored dtype."""
        if name not in self.extra_keys:
            raise LogitleakError(f"This capture holds no {name!r} states (available: {', '.join(self.extra_keys) or 'none'}); "
                                 "vision levels need a vision-language model whose family declares its vision tower.")
        return self._read(name)

    def _files(self) -> list[Path]:
        return [self.path / s["file"] for s in sorted(self.manifest["shards"], key=lambda s: int(s.get("index", 0)))]

    def _read(self, name: str) -> np.ndarray:
        from safetensors import safe_open

        parts = []
        declared = SAFETENSORS_DTYPES.get(self.store_dtype) if name.startswith("hidden.") else None
        for f in self._files():
            with safe_open(str(f), framework="pt") as fh:
                if declared is not None and fh.get_slice(name).get_dtype() != declared:
                    raise LogitleakError(f"Shard {f} holds {name} as {fh.get_slice(name).get_dtype()}, but the manifest "
                                         f"declares {self.store_dtype}; rerun the extraction (the same command) to "
                                         "recompute the capture.")
                t = fh.get_tensor(name)
            parts.append((t.float() if t.dtype == torch.bfloat16 else t).numpy())
        return np.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]

    def layer_shards(self, layer: int) -> Iterator[np.ndarray]:
        """The raw residual at ``layer`` one shard at a time (stored dtype): memory holds one shard."""
        from safetensors import safe_open

        name = f"hidden.{check_layer(layer, self.n_layers)}"
        for f in self._files():
            with safe_open(str(f), framework="pt") as fh:
                t = fh.get_tensor(name)
            yield (t.float() if t.dtype == torch.bfloat16 else t).numpy()

    def layer(self, layer: int, dtype=None) -> np.ndarray:
        """``(N, D)`` raw residual at ``layer`` (the store dtype, bfloat16 read as float32, unless ``dtype``)."""
        x = self._read(f"hidden.{check_layer(layer, self.n_layers)}")
        return x.astype(dtype) if dtype is not None else x

    def logits(self) -> np.ndarray:
        """``(N, V)`` float32 final logits."""
        return self._read("logits")

    @property
    def generated(self) -> int | None:
        """Number of generated positions stored (``--generate N``), ``None`` for a first-token capture."""
        g = self.manifest["meta"].get("generate")
        return int(g) if g else None

    def _gen(self, name: str) -> np.ndarray:
        if not self.generated:
            raise LogitleakError(NO_RESPONSE)
        return self._read(f"gen.{name}")

    def gen_layer(self, layer: int) -> np.ndarray:
        """``(N, G, D)`` raw residual at ``layer`` at every generated position (zeros past the end)."""
        return self._gen(f"hidden.{check_layer(layer, self.n_layers)}")

    def gen_topk(self) -> tuple[np.ndarray, np.ndarray]:
        """``(N, G, K)`` top-k log-probabilities and ids at every generated position (nan / -1 past the end)."""
        return self._gen("topk_logprobs"), self._gen("topk_ids")

    def gen_tokens(self) -> np.ndarray:
        return self._gen("tokens")

    def gen_mask(self) -> np.ndarray:
        return self._gen("mask").astype(bool)

    # ------------------------------------------------------------------ CaptureSource

    @property
    def contents(self) -> frozenset[str]:
        out = {HIDDEN, LOGITS}
        for name, held in ((VISION, self.has_vision), (PROJECTOR, self.has_projector),
                           (IMAGE_HIDDEN, self.has_image_hidden), (RESPONSE, bool(self.generated)),
                           (RESPONSE_HIDDEN, bool(self.generated))):
            if held:
                out.add(name)
        return frozenset(out)

    @property
    def n_vision_states(self) -> int:
        return self.n_vision_layers + 1 if self.has_vision else 0

    def read_hidden(self, layer: int) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.layer(layer))).to(torch.float32)

    def read_logits(self) -> torch.Tensor:
        return torch.from_numpy(self.logits()).to(torch.float32)

    def read_api_topk(self) -> None:
        return None  # a stored capture is white-box: its top-k comes from the logits

    def read_extra(self, name: str) -> np.ndarray:
        return np.ascontiguousarray(self.extra(name), dtype=np.float32)

    def read_response_hidden(self, layer: int) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.gen_layer(layer))).float()

    def read_response_topk(self) -> tuple[torch.Tensor, torch.Tensor]:
        lp, ids = self.gen_topk()
        return torch.from_numpy(np.asarray(lp)).float(), torch.from_numpy(np.asarray(ids)).long()

    def read_response_mask(self) -> torch.Tensor:
        return torch.from_numpy(self.gen_mask())

    def read_response_tokens(self) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.gen_tokens())).long()

    def to_capture(self, hidden_dtype: torch.dtype = torch.float32) -> Capture:
        """Everything in memory: hidden ``(N, L+1, D)`` in ``hidden_dtype``, logits ``(N, V)`` float32."""
        n, L, D = len(self), self.n_layers, self.d_model
        hidden = torch.empty((n, L + 1, D), dtype=hidden_dtype)
        for layer in range(L + 1):
            hidden[:, layer] = torch.from_numpy(self.layer(layer)).to(hidden_dtype)
        cap = Capture(hidden=hidden, logits=torch.from_numpy(self.logits()), meta=self.meta)

        def stack(prefix: str, count: int):
            return torch.stack([torch.from_numpy(self.extra(f"{prefix}.{j}")).to(hidden_dtype) for j in range(count)], 1)

        if self.has_vision:
            cap.vision = stack("vision", self.n_vision_layers + 1)
        if self.has_projector:
            cap.projector = torch.from_numpy(self.extra("projector")).to(hidden_dtype)
        if self.has_image_hidden:
            cap.image_hidden = stack("image", L + 1)
        return cap

    def __repr__(self) -> str:
        return f"StoredCapture({str(self.path)!r}, n={len(self)}, layers={self.n_layers}, d_model={self.d_model})"
