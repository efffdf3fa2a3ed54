"""Token id -> (string, UTF-8 bytes) as an OpenAI-compatible server reports it."""

from __future__ import annotations

import re


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte <-> printable-character map (byte-level BPE vocabularies)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


class TokenTable:
    """Token id -> (string, UTF-8 bytes) as an OpenAI-compatible server reports it.

    Word-level vocabularies: the vocabulary word itself. Byte-level BPE: the piece's bytes
    (decoded, with U+FFFD where a piece is a partial UTF-8 character; ``bytes`` are exact).
    SentencePiece: ``▁`` becomes a space and ``<0xNN>`` byte pieces carry their byte.
    """

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self._cache: dict[int, tuple[str, list[int] | None]] = {}
        backend = getattr(tokenizer, "backend_tokenizer", None)
        model_kind = type(getattr(backend, "model", None)).__name__
        decoder_kind = type(getattr(backend, "decoder", None)).__name__
        self.word_level = model_kind == "WordLevel"
        self.byte_level = "ByteLevel" in decoder_kind
        self._byte_decoder = {c: b for b, c in _bytes_to_unicode().items()} if self.byte_level else {}

    def __call__(self, token_id: int) -> tuple[str, list[int] | None]:
        hit = self._cache.get(token_id)
        if hit is None:
            hit = self._compute(int(token_id))
            self._cache[token_id] = hit
        return hit

    def _compute(self, token_id: int) -> tuple[str, list[int] | None]:
        piece = self.tok.convert_ids_to_tokens(token_id)
        if piece is None:
            return f"<id:{token_id}>", None
        if self.word_level:
            return piece, list(piece.encode("utf-8"))
        if self.byte_level and all(c in self._byte_decoder for c in piece):
            raw = bytes(self._byte_decoder[c] for c in piece)
            return raw.decode("utf-8", errors="replace"), list(raw)
        m = _BYTE_PIECE.match(piece)
        if m:
            raw = bytes([int(m.group(1), 16)])
            return raw.decode("utf-8", errors="replace"), list(raw)
        text = piece.replace("▁", " ")
        return text, list(text.encode("utf-8"))
