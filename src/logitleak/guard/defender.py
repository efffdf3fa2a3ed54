"""The output-side defence applied at each known log-probability position of a parsed response.

:class:`ResponseDefender` rewrites, in place, the formats servers return: chat ``logprobs.content``
(and ``refusal``, and the Responses API's lists of the same entries), legacy completions
``token_logprobs`` / ``top_logprobs``, vLLM's ``prompt_logprobs`` and llama.cpp's native
``completion_probabilities`` (log-probabilities, or probabilities, which are defended as their
logarithms). Every value goes through :func:`logitleak.defenses.output.defend_view` (the same
transforms, order and seed rule as the project's own server and ``defend``). Every other number
inside those positions must pass :func:`~logitleak.guard.allowlist.check_numbers`; a value of the
wrong type, an unknown layout or an unlisted number raises
:class:`~logitleak.guard.allowlist.UndefendedLogprobs`.
"""

from __future__ import annotations

import math
import secrets

import torch

from logitleak.defenses.output import ApiView, content_seed, defend_view
from logitleak.defenses.spec import Defense
from logitleak.errors import LogitleakError
from logitleak.guard.allowlist import UndefendedLogprobs, check_numbers, is_number, pattern_of, render_path
from logitleak.wire.bodies import HIDDEN_TOKEN, wire_logprob

LEGACY_FIELDS = ("tokens", "token_logprobs", "top_logprobs", "text_offset")
# llama.cpp's native entries: (value key, list key, token key of a listed item, key of the chosen token, space)
LLAMACPP_LAYOUTS = (("logprob", "top_logprobs", "token", "token", "log"), ("prob", "top_probs", "token", "token", "p"),
                    (None, "probs", "tok_str", "content", "p"))


def check_guard_defense(defense: Defense) -> None:
    """A defence the guard can apply to returned log-probabilities (no temperature, nothing model-side)."""
    if defense.model_side:
        raise LogitleakError(f"Defence {defense.label()!r} acts inside the model; the guard applies output-side "
                             "defences only.")
    if any(t.name == "temperature" for t in defense.transforms):
        raise LogitleakError(f"Defence {defense.label()!r} needs the model's full distribution, which the guard "
                             "never sees (only the top log-probabilities); use round, gauss, laplace, topk, "
                             "values_only or ranks_only, or apply temperature in the upstream server.")


def _logprob(value, path: tuple) -> float:
    """A log-probability read from the wire: a number, ``-inf`` allowed (a zero probability)."""
    if not is_number(value):
        raise UndefendedLogprobs(f"the log-probability at {render_path(path)} is {type(value).__name__}, not a number")
    v = float(value)
    if math.isnan(v) or v == math.inf:
        raise UndefendedLogprobs(f"the log-probability at {render_path(path)} is not finite")
    return v


def _prob(value, path: tuple) -> float:
    """A probability read from the wire, as its logarithm."""
    if not is_number(value) or not 0.0 <= float(value) <= 1.0:
        raise UndefendedLogprobs(f"the probability at {render_path(path)} is not a number in [0, 1]")
    return math.log(value) if value > 0 else -math.inf


def _token(value, path: tuple):
    if value is not None and not isinstance(value, str):
        raise UndefendedLogprobs(f"the token at {render_path(path)} is {type(value).__name__}, not a string")
    return value


def _check_rest(obj: dict, known: tuple[str, ...], path: tuple, pattern: tuple[str, ...] | None = None) -> None:
    """Every field of ``obj`` (at ``path``; ``pattern``: generalised, when known) the defender does
    not rewrite holds no number the allowlist refuses."""
    for k, v in obj.items():
        if k not in known:
            check_numbers(v, path + (k,), None if pattern is None else pattern + (k,))


def _dict(value, path: tuple, what: str) -> dict:
    if not isinstance(value, dict):
        raise UndefendedLogprobs(f"{what} at {render_path(path)} is {type(value).__name__}, not an object")
    return value


def _list(value, path: tuple, what: str) -> list:
    if not isinstance(value, list):
        raise UndefendedLogprobs(f"{what} at {render_path(path)} is {type(value).__name__}, not a list")
    return value


class ResponseDefender:
    """Applies ``defense`` to parsed responses; ``secret`` seeds the noise (random by default)."""

    def __init__(self, defense: Defense, secret: int | None = None):
        check_guard_defense(defense)
        self.defense = defense
        self.secret = secrets.randbits(62) if secret is None else int(secret)
        self.active = bool(defense.output_side)

    # -------------------------------------------------------------- positions
    def choice(self, parent: dict, path: tuple, request_key: bytes, offsets: dict) -> None:
        """``choices[i].logprobs``: chat (``content`` / ``refusal``) or legacy completions, in place."""
        lp = parent["logprobs"]
        if lp is None:
            return
        lp = _dict(lp, path, "logprobs")
        index = parent.get("index", path[-2])
        index = index if isinstance(index, int) and not isinstance(index, bool) else path[-2]
        start = offsets.get(index, 0)

        def seed_of(part: str) -> int:
            return content_seed(self.secret, request_key, str(index).encode(), part.encode(), str(start).encode())

        n = 0
        if "content" in lp or "refusal" in lp:
            _check_rest(lp, ("content", "refusal"), path)
            for part in ("content", "refusal"):
                if lp.get(part) is not None:
                    n = max(n, self.entries(lp[part], path + (part,), seed_of(part)))
        elif any(f in lp for f in LEGACY_FIELDS):
            n = self.legacy(lp, path, seed_of("text"))
        else:
            raise UndefendedLogprobs(f"the logprobs at {render_path(path)} have unknown fields {sorted(lp)[:5]}")
        offsets[index] = start + n

    def other(self, kind: str, value, path: tuple, request_key: bytes, offsets: dict) -> None:
        """A position other than a choice's ``logprobs`` (``kind``: entries, prompt or llamacpp), in place."""
        if value is None:
            return
        where = "/".join(str(s) for s in path)
        start = offsets.get(where, 0)
        seed = content_seed(self.secret, request_key, where.encode(), str(start).encode())
        handler = {"entries": self.entries, "prompt": self.prompt_logprobs, "llamacpp": self.llamacpp}[kind]
        offsets[where] = start + handler(value, path, seed)

    # -------------------------------------------------------------- chat entries
    def entries(self, entries, path: tuple, seed: int) -> int:
        """``[{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]`` rewritten in place."""
        _list(entries, path, "a list of logprobs entries")
        rows, chosen = [], []
        entry_pattern = pattern_of(path) + ("[]",)
        item_pattern = entry_pattern + ("top_logprobs", "[]")
        for i, e in enumerate(entries):
            at = path + (i,)
            _dict(e, at, "a logprobs entry")
            top = _list(e.get("top_logprobs") or [], at + ("top_logprobs",), "top_logprobs")
            row = []
            for j, a in enumerate(top):
                aj = at + ("top_logprobs", j)
                _dict(a, aj, "a top_logprobs item")
                _check_rest(a, ("token", "logprob"), aj, item_pattern)
                row.append((_token(a.get("token"), aj + ("token",)), _logprob(a.get("logprob"), aj + ("logprob",))))
            _check_rest(e, ("token", "logprob", "top_logprobs"), at, entry_pattern)
            rows.append(row)
            chosen.append((_token(e.get("token"), at + ("token",)), _logprob(e.get("logprob"), at + ("logprob",))))
        for e, (listed, value) in zip(entries, self._defend(rows, chosen, seed)):
            top = e.get("top_logprobs") or []
            keys = ("token", "logprob", "bytes") if any("bytes" in a for a in top) else ("token", "logprob")
            e["top_logprobs"] = [dict(zip(keys, (HIDDEN_TOKEN, v, None) if j < 0 else
                                          (top[j].get("token"), v, top[j].get("bytes")))) for j, v in listed]
            e["logprob"] = value
        return len(entries)

    # -------------------------------------------------------------- legacy completions
    def legacy(self, lp: dict, path: tuple, seed: int) -> int:
        """``{tokens, token_logprobs, top_logprobs: [{token: logprob}], text_offset}`` rewritten in place."""
        tokens = _list(lp.get("tokens") or [], path + ("tokens",), "tokens")
        values = _list(lp.get("token_logprobs") or [], path + ("token_logprobs",), "token_logprobs")
        tops = _list(lp.get("top_logprobs") or [], path + ("top_logprobs",), "top_logprobs")
        _check_rest(lp, ("tokens", "token_logprobs", "top_logprobs"), path)
        n = max(len(tokens), len(values), len(tops))
        rows, chosen, known = [], [], []
        for i in range(n):
            top = tops[i] if i < len(tops) and tops[i] is not None else {}
            _dict(top, path + ("top_logprobs", i), "a top_logprobs item")
            rows.append([(tok, _logprob(v, path + ("top_logprobs", i, tok))) for tok, v in top.items()])
            value = values[i] if i < len(values) else None
            known.append(value is not None)
            tok = _token(tokens[i], path + ("tokens", i)) if i < len(tokens) else None
            chosen.append((tok, _logprob(value, path + ("token_logprobs", i)) if value is not None else 0.0))
        view = self._defend(rows, chosen, seed)
        if values:
            lp["token_logprobs"] = [view[i][1] if known[i] else None for i in range(len(values))]
        if tops:
            out = []
            for i, top in enumerate(tops):
                names, hidden, row = list(top or {}), 0, {}
                for j, v in view[i][0]:
                    if j < 0:
                        name, hidden = f"<hidden-{hidden}>", hidden + 1
                    else:
                        name = names[j]
                    row[name] = v
                out.append(None if top is None else row)
            lp["top_logprobs"] = out
        return n

    # -------------------------------------------------------------- vLLM prompt_logprobs
    def prompt_logprobs(self, rows, path: tuple, seed: int) -> int:
        """``[null | {token_id: {logprob, rank, decoded_token}}]`` rewritten in place.

        The listed tokens hold ranks 1..m; a token beside them (the prompt's own, outside the list)
        keeps its defended value, and its rank, a fact about the whole distribution, becomes null.
        """
        _list(rows, path, "prompt_logprobs")
        alts, chosen, layout = [], [], []
        for i, row in enumerate(rows):
            if row is None:
                continue
            entries = []
            for tok_id, item in _dict(row, path + (i,), "a prompt_logprobs item").items():
                at = path + (i, tok_id)
                _dict(item, at, "a prompt log-probability")
                rank = item.get("rank")
                if rank is not None and not (isinstance(rank, int) and not isinstance(rank, bool)):
                    raise UndefendedLogprobs(f"the rank at {render_path(at + ('rank',))} is not an integer")
                _token(item.get("decoded_token"), at + ("decoded_token",))
                _check_rest(item, ("logprob", "rank", "decoded_token"), at)
                entries.append((tok_id, _logprob(item.get("logprob"), at + ("logprob",)), rank, item))
            if any(e[2] is None for e in entries):
                listed, extra = sorted(entries, key=lambda e: -e[1]), None
            else:
                listed, extra = [], None
                for e in sorted(entries, key=lambda e: e[2]):
                    if e[2] == len(listed) + 1:
                        listed.append(e)
                    elif extra is None:
                        extra = e
                    else:
                        raise UndefendedLogprobs(f"the prompt_logprobs at {render_path(path + (i,))} list two "
                                                 "tokens outside their ranks")
            alts.append([(e[0], e[1]) for e in listed])
            chosen.append((extra[0], extra[1]) if extra else (None, 0.0))
            layout.append((i, listed, extra))
        for (i, listed, extra), (kept, value) in zip(layout, self._defend(alts, chosen, seed)):
            out, hidden = {}, 0
            for rank, (j, v) in enumerate(kept, start=1):
                if j < 0:
                    out[f"<hidden-{hidden}>"], hidden = {"logprob": v, "rank": rank, "decoded_token": HIDDEN_TOKEN}, hidden + 1
                else:
                    out[listed[j][0]] = {"logprob": v, "rank": rank, "decoded_token": listed[j][3].get("decoded_token")}
            if extra is not None:
                out[extra[0]] = {"logprob": value, "rank": None, "decoded_token": extra[3].get("decoded_token")}
            rows[i] = out
        return len(rows)

    # -------------------------------------------------------------- llama.cpp's native format
    def llamacpp(self, entries, path: tuple, seed: int) -> int:
        """llama.cpp's ``completion_probabilities``: ``[{id, token, bytes, logprob, top_logprobs}]``,
        ``[{..., prob, top_probs}]`` (probabilities) or the older ``[{content, probs: [{tok_str, prob}]}]``."""
        _list(entries, path, "completion_probabilities")
        rows, chosen, layouts = [], [], []
        for i, e in enumerate(entries):
            at = path + (i,)
            _dict(e, at, "a completion_probabilities entry")
            layout = next((lay for lay in LLAMACPP_LAYOUTS if lay[1] in e or (lay[0] and lay[0] in e)), None)
            if layout is None:
                raise UndefendedLogprobs(f"the entry at {render_path(at)} has unknown fields {sorted(e)[:5]}")
            value_key, list_key, item_token, chosen_token, space = layout
            read = _logprob if space == "log" else _prob
            row = []
            for j, a in enumerate(_list(e.get(list_key) or [], at + (list_key,), list_key)):
                aj = at + (list_key, j)
                _dict(a, aj, "a listed token")
                _check_rest(a, (item_token, "prob" if value_key is None else value_key), aj)
                row.append((_token(a.get(item_token), aj + (item_token,)),
                            read(a.get("prob" if value_key is None else value_key), aj)))
            _check_rest(e, (chosen_token, list_key) + ((value_key,) if value_key else ()), at)
            tok = _token(e.get(chosen_token), at + (chosen_token,))
            chosen.append((tok, read(e.get(value_key), at + (value_key,)) if value_key else 0.0))
            rows.append(row)
            layouts.append(layout)
        for e, layout, (listed, value) in zip(entries, layouts, self._defend(rows, chosen, seed)):
            value_key, list_key, item_token, _, space = layout
            item_value = "prob" if value_key is None else value_key
            wire = (lambda v: v) if space == "log" else math.exp
            top = e.get(list_key) or []
            keys = [k for k in ("id", item_token, "bytes") if top and k in top[0]]  # a listed token's identity
            out = []
            for j, v in listed:
                item = {k: (HIDDEN_TOKEN if k == item_token else None) for k in keys} if j < 0 else \
                    {k: top[j].get(k) for k in keys}
                item[item_value] = wire(v)
                out.append(item)
            e[list_key] = out
            if value_key:
                e[value_key] = wire(value)
        return len(entries)

    # -------------------------------------------------------------- the one transform
    def _defend(self, rows: list[list[tuple]], chosen: list[tuple], seed: int) -> list[tuple[list[tuple], float]]:
        """Rows of listed ``(token, logprob)`` and each row's generated ``(token, logprob)`` -> per row,
        the defended list as ``(position in the row, or -1 once hidden, value)`` in its new order, and
        the generated token's defended value."""
        n, k = len(rows), max((len(r) for r in rows), default=0)
        values = torch.tensor([[v for _, v in row] + [-math.inf] * (k - len(row)) for row in rows],
                              dtype=torch.float64).reshape(n, k)
        ids = torch.tensor([list(range(len(row))) + [-1] * (k - len(row)) for row in rows], dtype=torch.long).reshape(n, k)
        pick = [next((j for j, a in enumerate(row) if tok is not None and a[0] == tok), k)
                for row, (tok, _) in zip(rows, chosen)]  # the generated token's place in its list (k: not listed)
        extra = torch.tensor([[c[1]] for c in chosen], dtype=torch.float64).reshape(n, 1)
        if any(row != sorted(row, key=lambda a: -a[1]) for row in rows):  # an API's list is sorted; make sure
            order = torch.argsort(values, dim=1, descending=True, stable=True)
            values, ids = values.gather(1, order), ids.gather(1, order)
        view = defend_view(ApiView(values, ids), self.defense, seed=seed,
                           extra_ids=torch.tensor(pick, dtype=torch.long).reshape(n, 1), extra=extra)
        out_values, out_ids, out_extra = view.logprobs.tolist(), view.ids.tolist(), view.extra[:, 0].tolist()
        return [([(j, wire_logprob(v)) for v, j in zip(out_values[i][:min(len(row), view.k)], out_ids[i])],
                 wire_logprob(out_extra[i])) for i, row in enumerate(rows)]
