"""The black-box audit's requests and the append-only, checksummed cache of their answers."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import threading
from pathlib import Path

from logitleak.data.probeset import ProbeSet
from logitleak.integrity import is_sealed, seal

RESPONSES_FILE = "responses.jsonl"


# ----------------------------------------------------------------------------- requests

def image_data_url(image) -> str:
    """A PIL image as a lossless PNG data URL (same pixels -> same bytes)."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def request_messages(probeset: ProbeSet, i: int) -> list[dict]:
    """The sample's conversation (one user turn, or its chat turns): the image part first in the
    first user turn, then the question (the order a white-box capture uses)."""
    turns = probeset.conversation(i)
    if probeset.images is None:
        return turns
    first_user = next(j for j, t in enumerate(turns) if t["role"] == "user")
    turns[first_user] = {"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": image_data_url(probeset.images[i])}},
        {"type": "text", "text": turns[first_user]["content"]},
    ]}
    return turns


def request_settings(k: int, max_tokens: int = 1) -> dict:
    return {"logprobs": True, "top_logprobs": k, "max_tokens": int(max_tokens), "temperature": 0}


def request_key(endpoint: str, served_model: str, messages: list[dict], settings: dict) -> str:
    h = hashlib.sha256(json.dumps({"endpoint": endpoint.rstrip("/"), "model": served_model, "settings": settings},
                                  sort_keys=True).encode())
    h.update(json.dumps(messages, sort_keys=True).encode())
    return h.hexdigest()[:32]


# ----------------------------------------------------------------------------- cache

class ResponseCache:
    """Append-only JSONL of answered samples (one fsync'd line each, with its own checksum)."""

    def __init__(self, cache_dir: str | Path):
        self.dir = Path(cache_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / RESPONSES_FILE
        self._lock = threading.Lock()
        self._fh = None

    def load(self, keys: dict[int, str]) -> dict[int, dict]:
        """Cached records whose request key matches ``keys[index]`` (the last such line wins)."""
        found: dict[int, dict] = {}
        if not self.path.exists():
            return found
        with open(self.path, "rb") as fh:
            for raw in fh:
                try:
                    rec = json.loads(raw)
                    idx = int(rec["index"])
                except (ValueError, KeyError, TypeError):
                    continue  # a torn line from an interrupted write
                if not is_sealed(rec):
                    continue  # damaged (or written without a checksum): asked again, never used
                if keys.get(idx) == rec.get("key"):
                    found[idx] = rec
        return found

    def append(self, record: dict) -> None:
        line = (json.dumps(seal(record), separators=(",", ":")) + "\n").encode()
        with self._lock:
            if self._fh is None:
                needs_newline = self.path.exists() and self.path.stat().st_size > 0 and not _ends_with_newline(self.path)
                self._fh = open(self.path, "ab")
                if needs_newline:
                    self._fh.write(b"\n")
            self._fh.write(line)
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) == b"\n"
