"""A black-box audit's cached answers -> one Capture: token ids across the whole audit, every problem in words.

Token ids are assigned to token keys (:func:`~logitleak.endpoint.responses.token_key`) in
sample order then rank order, after loading the saved vocabulary (``vocab.json``), so ids are
stable across reruns and independent of the order answers arrived in. Alternatives the
endpoint left unidentified (no usable string, no bytes) are counted over the whole audit, not
only where two of them share one sample: through vLLM, whose fix is known (restart it with
``--return-tokens-as-token-ids``), they stop an audit that reads token ids; elsewhere they
are named in the problems.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from logitleak.capture.source import Capture
from logitleak.config import AuditConfig
from logitleak.endpoint.responses import alternatives, is_unidentified, response_arrays, token_key
from logitleak.endpoint.server import VLLM, VLLM_FIX, response_entries
from logitleak.errors import LogitleakError
from logitleak.integrity import write_json

FAILED_FRACTION_LIMIT = 0.05  # more failed samples than this -> the audit stops with an error
VOCAB_FILE = "vocab.json"
ID_LEVELS = ("topk_ids", "response_topk_ids")


def unidentified_count(record: dict, k: int, server: str, positions: int | None) -> tuple[int, bool]:
    """How many of an answer's alternatives the audit reads (the first token's top ``k``, and
    each of the first ``positions`` response positions') name no one token, and whether the
    first token's top-1 is one of them."""
    entries = [record["first"], *response_entries(record, server)[1:positions or 1]]
    n = sum(is_unidentified(key) for e in entries for key, _ in alternatives(e)[:k])
    first = alternatives(record["first"])
    return n, bool(first) and is_unidentified(first[0][0])


def _load_vocab(path: Path) -> dict[str, int]:
    if not path.exists():
        return {}
    try:
        return {str(t): int(i) for t, i in json.loads(path.read_text()).items()}
    except (ValueError, AttributeError):
        return {}


def _missing_problem(cfg: AuditConfig, n: int, done: dict, failures: dict[int, str], cache_dir: Path) -> list[str]:
    missing = [i for i in range(n) if i not in done]
    if not missing:
        return []
    reasons = {i: failures.get(i, "not sent (the run stopped early)") for i in missing}
    first = missing[0]
    if len(missing) > FAILED_FRACTION_LIMIT * n:
        raise LogitleakError(
            f"{len(missing)} of {n} samples got no usable answer from {cfg.endpoint} after retries "
            f"(e.g. sample {first}: {reasons[first]}); fix the endpoint and rerun to resume "
            f"({len(done)} answered samples are cached in {cache_dir}).")
    shown = ", ".join(str(i) for i in missing[:20]) + (" ..." if len(missing) > 20 else "")
    return [f"{len(missing)} of {n} samples failed after retries and are left empty in the capture "
            f"(samples {shown}; e.g. sample {first}: {reasons[first]}); rerun to retry them."]


def _unidentified_problem(cfg: AuditConfig, server: str, done: dict, k: int, cache_dir: Path) -> list[str]:
    counts = {i: unidentified_count(rec, k, server, cfg.generate) for i, rec in done.items()}
    total = sum(c for c, _ in counts.values())
    if not total:
        return []
    samples = sum(c > 0 for c, _ in counts.values())
    top1 = sum(t for _, t in counts.values())
    what = (f"{total} alternatives in {samples} of {len(done)} samples (the top-1 in {top1}) came back from "
            f"{cfg.endpoint} with no token string or bytes, so different tokens among them cannot be told apart")
    if server == VLLM and any(lv in cfg.levels for lv in ID_LEVELS):
        raise LogitleakError(f"{what}; restart vLLM with {VLLM_FIX} and rerun the same audit, which asks again for "
                             f"the answers without token ids (the {len(done)} answers so far are cached in {cache_dir}).")
    hint = f" (restart vLLM with {VLLM_FIX} for exact ids)" if server == VLLM else ""
    return [f"{what}: the token-id levels count them as one token{hint}."]


def build_capture(cfg: AuditConfig, n: int, done: dict[int, dict], failures: dict[int, str], cache_dir: Path,
                  k: int, *, server: str, cached: int, sent: int) -> tuple[Capture, list[str]]:
    """The capture of ``n`` samples from their answers ``done`` (index -> cached record) and
    the problems a report names."""
    problems = _missing_problem(cfg, n, done, failures, cache_dir)
    problems += _unidentified_problem(cfg, server, done, k, cache_dir)
    vocab_path = cache_dir / VOCAB_FILE
    vocab = _load_vocab(vocab_path)
    values = torch.full((n, k), float("nan"), dtype=torch.float32)
    ids = torch.full((n, k), -1, dtype=torch.long)
    answers: list[str | None] = [None] * n
    fewer, dup_samples, dup_total, extra_tokens = [], 0, 0, 0
    for i in range(n):
        rec = done.get(i)
        if rec is None:
            continue
        entry = rec["first"]
        alts = alternatives(entry)
        answers[i] = token_key(entry.get("token"), entry.get("bytes"))
        if int(rec.get("n_tokens", 1)) > 1:
            extra_tokens += 1
        seen: set[str] = set()
        dups = 0
        for r, (key, lp) in enumerate(alts[:k]):
            if key in seen:
                dups += 1
            seen.add(key)
            values[i, r] = lp
            ids[i, r] = vocab.setdefault(key, len(vocab))
        if dups:
            dup_samples += 1
            dup_total += dups
        if len(alts) < k:
            fewer.append(i)
    if fewer:
        got = sorted({len(alternatives(done[i]["first"])) for i in fewer})
        problems.append(f"{len(fewer)} samples had fewer than {k} alternatives (the endpoint returned "
                        f"{', '.join(map(str, got))} instead of top_logprobs={k}); the missing ranks are empty (nan).")
    if dup_samples:
        problems.append(f"{dup_samples} samples had alternatives with the same token string ({dup_total} collapsed "
                        "onto one token id; their values are kept).")
    gen = {}
    if cfg.generate:
        entries = {i: response_entries(rec, server) for i, rec in done.items()}
        gen = response_arrays(entries, n, k, int(cfg.generate), vocab)
    elif extra_tokens:
        problems.append(f"{extra_tokens} responses carried more than max_tokens=1 tokens; only the first was used.")
    cache_dir.mkdir(parents=True, exist_ok=True)
    write_json(vocab_path, vocab)
    tokens = [None] * len(vocab)
    for key, idx in vocab.items():
        if 0 <= idx < len(tokens):
            tokens[idx] = key
    meta = {
        "source": "blackbox", "endpoint": cfg.endpoint, "served_model": cfg.served_model, "server": server, "k": k,
        "tokens": tokens, "answers": answers, "answered": len(done), "failed": [i for i in range(n) if i not in done],
        "fewer_than_k": len(fewer), "duplicate_samples": dup_samples, "cached": cached, "requests_sent": sent,
    }
    if cfg.generate:
        meta["responses"] = [None if done.get(i) is None else done[i].get("content") for i in range(n)]
        short = int((gen["gen_mask"].sum(1) < cfg.generate).sum())
        if short:
            problems.append(f"{short} responses ended before max_tokens={cfg.generate} tokens; their later positions are "
                            "empty in the response levels.")
    return Capture(topk_logprobs=values, topk_ids=ids, meta=meta, **gen), problems
