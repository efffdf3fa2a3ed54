"""An output-side defence applied to the ``logprobs`` of OpenAI-format responses someone else computed.

:class:`ResponseDefender` rewrites, in place, every generated token's log-probability and its
``top_logprobs`` in a chat completion, a chat-completion stream chunk or a legacy text
completion, through :func:`logitleak.defenses.output.defend_view` (the same transforms, order
and seed rule as the project's own server and ``defend``). Anything it cannot read is refused
(:class:`UndefendedLogprobs`), never passed on undefended.
"""

from __future__ import annotations

import secrets

import torch

from logitleak.defenses.output import ApiView, content_seed, defend_view
from logitleak.defenses.spec import Defense
from logitleak.errors import LogitleakError
from logitleak.wire.bodies import HIDDEN_TOKEN, wire_logprob


class UndefendedLogprobs(Exception):
    """A response carries log-probabilities in a shape the defender cannot rewrite."""


def check_guard_defense(defense: Defense) -> None:
    """A defence the guard can apply to returned log-probabilities (no temperature, nothing model-side)."""
    if defense.erasure_layers:
        raise LogitleakError(f"Defence {defense.label()!r} acts inside the model; the guard applies output-side "
                             "defences only.")
    if any(t.name == "temperature" for t in defense.transforms):
        raise LogitleakError(f"Defence {defense.label()!r} needs the model's full distribution, which the guard "
                             "never sees (only the top log-probabilities); use round, gauss, laplace, topk, "
                             "values_only or ranks_only, or apply temperature in the upstream server.")


def _number(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UndefendedLogprobs(f"a logprob is {type(value).__name__}, not a number")
    return float(value)


class ResponseDefender:
    """Applies ``defense`` to responses; ``secret`` seeds the noise (random by default)."""

    def __init__(self, defense: Defense, secret: int | None = None):
        check_guard_defense(defense)
        self.defense = defense
        self.secret = secrets.randbits(62) if secret is None else int(secret)
        self.active = bool(defense.output_side)

    # -------------------------------------------------------------- whole bodies
    def body(self, obj, request_key: bytes, offsets: dict[int, int] | None = None) -> None:
        """Rewrite a response (or stream chunk) in place. ``offsets``: tokens already seen per
        choice in this stream (updated), so each chunk's noise seed differs."""
        if not self.active or not isinstance(obj, dict):
            return
        choices = obj.get("choices")
        if choices is None:
            return
        if not isinstance(choices, list):
            raise UndefendedLogprobs("choices is not a list")
        for pos, choice in enumerate(choices):
            if not isinstance(choice, dict) or choice.get("logprobs") is None:
                continue
            index = choice.get("index", pos)
            index = index if isinstance(index, int) and not isinstance(index, bool) else pos
            start = 0 if offsets is None else offsets.get(index, 0)
            seed_of = lambda part: content_seed(self.secret, request_key, str(index).encode(), part.encode(),  # noqa: E731
                                                str(start).encode())
            lp = choice["logprobs"]
            if not isinstance(lp, dict):
                raise UndefendedLogprobs("logprobs is not an object")
            n = 0
            if "content" in lp or "refusal" in lp:
                for part in ("content", "refusal"):
                    if lp.get(part) is not None:
                        n = max(n, self.chat_entries(lp[part], seed_of(part)))
            elif "token_logprobs" in lp or "top_logprobs" in lp:
                n = self.legacy(lp, seed_of("text"))
            else:
                raise UndefendedLogprobs(f"unknown logprobs fields {sorted(lp)}")
            if offsets is not None:
                offsets[index] = start + n

    # -------------------------------------------------------------- chat format
    def chat_entries(self, entries, seed: int) -> int:
        """``[{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]`` rewritten in place."""
        if not isinstance(entries, list):
            raise UndefendedLogprobs("logprobs.content is not a list")
        if not entries:
            return 0
        alts, chosen = [], []
        for e in entries:
            if not isinstance(e, dict):
                raise UndefendedLogprobs("a logprobs entry is not an object")
            top = e.get("top_logprobs") or []
            if not isinstance(top, list) or not all(isinstance(a, dict) for a in top):
                raise UndefendedLogprobs("top_logprobs is not a list of objects")
            alts.append([(a.get("token"), _number(a.get("logprob")), a.get("bytes")) for a in top])
            chosen.append((e.get("token"), _number(e.get("logprob"))))
        view = self._defend(alts, chosen, seed)
        for i, e in enumerate(entries):
            e["top_logprobs"] = [{"token": tok, "logprob": v, "bytes": raw} for tok, v, raw in view[i][0]]
            e["logprob"] = view[i][1]
        return len(entries)

    # -------------------------------------------------------------- legacy completions format
    def legacy(self, lp: dict, seed: int) -> int:
        """``{tokens, token_logprobs, top_logprobs: [{token: logprob}], text_offset}`` rewritten in place."""
        tokens = lp.get("tokens") or []
        values = lp.get("token_logprobs") or []
        tops = lp.get("top_logprobs") or []
        if not all(isinstance(x, list) for x in (tokens, values, tops)):
            raise UndefendedLogprobs("legacy logprobs fields are not lists")
        n = max(len(tokens), len(values), len(tops))
        alts, chosen, known = [], [], []
        for i in range(n):
            top = tops[i] if i < len(tops) and tops[i] is not None else {}
            if not isinstance(top, dict):
                raise UndefendedLogprobs("a legacy top_logprobs item is not an object")
            alts.append([(tok, _number(v), None) for tok, v in top.items()])
            value = values[i] if i < len(values) else None
            known.append(value is not None)
            chosen.append((tokens[i] if i < len(tokens) else None, _number(value) if value is not None else 0.0))
        view = self._defend(alts, chosen, seed)
        if values:
            lp["token_logprobs"] = [view[i][1] if known[i] else None for i in range(len(values))]
        if tops:
            out = []
            for i in range(len(tops)):
                if tops[i] is None:
                    out.append(None)
                    continue
                hidden = 0
                row = {}
                for tok, v, _ in view[i][0]:
                    if tok == HIDDEN_TOKEN:
                        tok, hidden = f"<hidden-{hidden}>", hidden + 1
                    row[tok] = v
                out.append(row)
            lp["top_logprobs"] = out
        return n

    # -------------------------------------------------------------- the one transform
    def _defend(self, alts: list[list[tuple]], chosen: list[tuple], seed: int) -> list[tuple[list[tuple], float]]:
        """Rows of alternatives ``(token, logprob, bytes)`` and the generated ``(token, logprob)``
        -> the defended rows (in their new order) and the generated token's defended value."""
        n, k = len(alts), max((len(a) for a in alts), default=0)
        ninf = float("-inf")
        values = torch.tensor([[v for _, v, _ in row] + [ninf] * (k - len(row)) for row in alts],
                              dtype=torch.float64).reshape(n, k)
        ids = torch.tensor([list(range(len(row))) + [-1] * (k - len(row)) for row in alts],
                           dtype=torch.long).reshape(n, k)
        pick = []
        for row, (tok, _) in zip(alts, chosen):  # the generated token's place in its list (k: not listed)
            pick.append(next((j for j, a in enumerate(row) if tok is not None and a[0] == tok), k))
        extra_ids = torch.tensor(pick, dtype=torch.long)[:, None]
        extra = torch.tensor([[c[1]] for c in chosen], dtype=torch.float64)
        if any(row != sorted(row, key=lambda a: -a[1]) for row in alts):  # an API's list is sorted; make sure
            order = torch.argsort(values, dim=1, descending=True, stable=True)
            values, ids = values.gather(1, order), ids.gather(1, order)
        view = defend_view(ApiView(values, ids), self.defense, seed=seed, extra_ids=extra_ids, extra=extra)
        kept = view.k
        out_values, out_ids, out_extra = view.logprobs.tolist(), view.ids.tolist(), view.extra[:, 0].tolist()
        out = []
        for i, row in enumerate(alts):
            listed = []
            for v, a in zip(out_values[i][:min(len(row), kept)], out_ids[i]):
                tok, raw = (HIDDEN_TOKEN, None) if a < 0 else (row[a][0], row[a][2])
                listed.append((tok, wire_logprob(v), raw))
            out.append((listed, wire_logprob(out_extra[i])))
        return out
