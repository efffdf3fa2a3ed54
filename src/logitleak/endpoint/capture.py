"""Black-box capture: what an attacker sees from an OpenAI-compatible endpoint with ``logprobs``.

For every probe sample, one chat request (the image as a PNG data URL, then the prompt text;
``logprobs=True, top_logprobs=max(k), max_tokens=1`` (``N`` with ``--generate N``),
``temperature=0``) is sent through the
official ``openai`` client; the top-k log-probabilities of the first answer token fill a
:class:`~logitleak.capture.source.Capture` (``topk_logprobs`` sorted descending, ``topk_ids`` mapped per
run), which the rest of the audit consumes unchanged.

The cache (``cache_dir``):

- ``responses.jsonl``: append-only, one JSON line per answered sample, written under a lock,
  flushed and fsync'd as each response arrives: ``{"index", "key", "first", "n_tokens",
  "content", "finish_reason"}`` where ``key`` hashes the request (endpoint, served model, prompt,
  image bytes, settings) and ``first`` is the first token's logprob entry as the endpoint sent
  it (with ``--generate N`` also ``"tokens"``: every returned token's entry). A rerun reads it and sends only the samples without a line whose key matches, so an
  interrupted audit resumes with no sample lost or sent twice; a torn last line (a crash
  mid-write) is skipped. Failed requests are not cached, so a rerun retries them.
- ``vocab.json``: the run's token vocabulary ``{token key: id}``. Token ids are assigned to
  token keys in sample order then rank order, after loading the saved vocabulary, so ids are
  stable across reruns and independent of the order responses arrived in.

Token keys: the token string; the token's bytes (``"bytes:<hex>"``) when the string is empty
or holds U+FFFD (a partial UTF-8 character, where different tokens print the same). When two
alternatives of one sample share a key (an engine that prints different tokens alike), both
values are kept and both get the key's id; such samples are counted in the problems.
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

import torch

from logitleak.capture.source import Capture
from logitleak.config import AuditConfig
from logitleak.data.probeset import ProbeSet
from logitleak.endpoint.cache import (
    ResponseCache,
    request_key,
    request_messages,
    request_settings,
)
from logitleak.endpoint.client import (
    Budget,
    BudgetExhausted,
    EndpointClient,
    EndpointError,
    RetryPolicy,
    SampleFailed,
    Stopped,
)
from logitleak.endpoint.responses import alternatives, first_token_entry, response_arrays, token_key
from logitleak.errors import LogitleakError, first_line
from logitleak.integrity import write_json
from logitleak.progress import PhaseBar

MAX_API_TOP_LOGPROBS = 20
FAILED_FRACTION_LIMIT = 0.05  # more failed samples than this -> the audit stops with an error
VOCAB_FILE = "vocab.json"


# ----------------------------------------------------------------------------- capture

def blackbox_capture(cfg: AuditConfig, probeset: ProbeSet, cache_dir: str | Path, progress: bool = True, *,
                     policy: RetryPolicy | None = None) -> tuple[Capture, list[str]]:
    """Query ``cfg.endpoint`` for every sample of ``probeset`` (cached, resumable) and return the
    capture plus plain-English problems for the report."""
    if not cfg.endpoint:
        raise LogitleakError("A black-box capture needs --endpoint URL (an OpenAI-compatible base URL ending in /v1).")
    if not cfg.served_model:
        raise LogitleakError("A black-box audit needs --served-model NAME alongside --endpoint URL.")
    k = max(cfg.k)
    if k > MAX_API_TOP_LOGPROBS:
        raise LogitleakError(f"k={k} is above {MAX_API_TOP_LOGPROBS}, the most top_logprobs the OpenAI API returns; "
                             f"use k values up to {MAX_API_TOP_LOGPROBS} for a black-box audit.")
    n = len(probeset)
    settings = request_settings(k, cfg.generate or 1)
    keys = {i: request_key(cfg.endpoint, cfg.served_model, request_messages(probeset, i), settings) for i in range(n)}
    cache = ResponseCache(cache_dir)
    done = cache.load(keys)
    cached = len(done)
    todo = [i for i in range(n) if i not in done]
    failures: dict[int, str] = {}
    client = None
    try:
        if todo:
            client = EndpointClient(cfg.endpoint, cfg.served_model, cfg.api_key_env, policy=policy,
                                    budget=Budget(cfg.max_requests))
            failures = _query(client, probeset, todo, keys, settings, cache, done, cfg, progress)
    finally:
        cache.close()
    return _build_capture(cfg, probeset, done, failures, Path(cache_dir), k, cached=cached,
                          sent=client.sent if client else 0)


def _query(client: EndpointClient, probeset: ProbeSet, todo: list[int], keys: dict[int, str], settings: dict,
           cache: ResponseCache, done: dict[int, dict], cfg: AuditConfig, progress: bool) -> dict[int, str]:
    n = len(probeset)
    failures: dict[int, str] = {}
    lock = threading.Lock()

    def one(i: int, patience_s: float | None = None) -> None:
        response = client.chat(patience_s, messages=request_messages(probeset, i), **settings)
        entry, n_tokens = first_token_entry(response)
        if entry is None or not alternatives(entry):
            raise SampleFailed("the response carried no logprobs")
        choice = response["choices"][0]
        record = {"index": i, "key": keys[i], "first": entry, "n_tokens": n_tokens,
                  "content": (choice.get("message") or {}).get("content"), "finish_reason": choice.get("finish_reason")}
        if settings["max_tokens"] > 1:  # the whole response: every token's logprob entry
            record["tokens"] = list((choice.get("logprobs") or {}).get("content") or [])
        cache.append(record)
        with lock:
            done[i] = record

    def stopped_message(reason: str) -> str:
        remaining = n - len(done)
        return (f"{reason}: {len(done)} of {n} samples are answered and cached in {cache.path.parent}; "
                f"rerun the same audit to resume (it sends only the {remaining} remaining).")

    bar = PhaseBar(progress, "querying endpoint", n, completed=len(done))
    try:
        # The first request goes alone: an endpoint without logprobs, a bad key or an unknown
        # model stops the audit after one request instead of a budget's worth.
        first = todo[0]
        try:
            one(first, client.policy.first_connect_patience_s)
        except SampleFailed as err:
            if err.reason == "the response carried no logprobs":
                raise LogitleakError(
                    f"The endpoint {cfg.endpoint} does not return logprobs for model {cfg.served_model!r} (asked for "
                    f"logprobs=true, top_logprobs={settings['top_logprobs']}); enable them on the server (e.g. vLLM "
                    "--max-logprobs 20) or audit a server that returns them.") from None
            if err.status is not None and 400 <= err.status < 500:
                raise LogitleakError(f"The endpoint {cfg.endpoint} rejected the audit's request ({err.reason}); "
                                     "check that it supports logprobs / top_logprobs and image inputs.") from None
            failures[first] = err.reason
        except BudgetExhausted:
            raise LogitleakError(stopped_message(f"The request budget (--max-requests {cfg.max_requests}) is spent")) from None
        except EndpointError as err:
            raise LogitleakError(stopped_message(str(err).rstrip("."))) from None
        except Exception as err:  # noqa: BLE001 - an answer the openai client cannot parse
            raise LogitleakError(f"The endpoint {cfg.endpoint} sent a response the openai client cannot read "
                                 f"({type(err).__name__}: {first_line(err, 300)}); check that it speaks the OpenAI "
                                 "chat-completions API (the base URL usually ends in /v1).") from None
        bar.advance()

        fatal: BaseException | None = None
        budget_hit = False
        pool = ThreadPoolExecutor(max_workers=cfg.concurrency, thread_name_prefix="logitleak-query")
        try:
            futures = {pool.submit(one, i): i for i in todo[1:]}
            pending = set(futures)
            while pending:
                finished, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                for fut in finished:
                    i = futures[fut]
                    try:
                        fut.result()
                    except SampleFailed as err:
                        failures[i] = err.reason
                    except BudgetExhausted:
                        budget_hit = True
                        client.stop.set()
                        continue
                    except EndpointError as err:
                        fatal = fatal or err
                        client.stop.set()
                        continue
                    except Stopped:
                        continue
                    except Exception as err:  # noqa: BLE001 - e.g. a response that is not valid JSON
                        failures[i] = f"{type(err).__name__}: {first_line(err, 300)}"
                    bar.advance()
                if len(failures) > max(1, FAILED_FRACTION_LIMIT * n) * 2 and not client.stop.is_set():
                    client.stop.set()  # clearly broken: stop spending requests
        except BaseException:
            client.stop.set()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        if fatal is not None:
            raise LogitleakError(stopped_message(str(fatal).rstrip("."))) from None
        if budget_hit:
            raise LogitleakError(stopped_message(
                f"The request budget (--max-requests {cfg.max_requests}) is spent after {client.sent} requests"))
    finally:
        bar.close()
    return failures


def _build_capture(cfg: AuditConfig, probeset: ProbeSet, done: dict[int, dict], failures: dict[int, str],
                   cache_dir: Path, k: int, *, cached: int, sent: int) -> tuple[Capture, list[str]]:
    n = len(probeset)
    problems: list[str] = []
    missing = [i for i in range(n) if i not in done]
    if missing:
        reasons = {i: failures.get(i, "not sent (the run stopped early)") for i in missing}
        first = missing[0]
        if len(missing) > FAILED_FRACTION_LIMIT * n:
            raise LogitleakError(
                f"{len(missing)} of {n} samples got no usable answer from {cfg.endpoint} after retries "
                f"(e.g. sample {first}: {reasons[first]}); fix the endpoint and rerun to resume "
                f"({len(done)} answered samples are cached in {cache_dir}).")
        shown = ", ".join(str(i) for i in missing[:20]) + (" ..." if len(missing) > 20 else "")
        problems.append(f"{len(missing)} of {n} samples failed after retries and are left empty in the capture "
                        f"(samples {shown}; e.g. sample {first}: {reasons[first]}); rerun to retry them.")

    vocab_path = cache_dir / VOCAB_FILE
    vocab: dict[str, int] = {}
    if vocab_path.exists():
        try:
            vocab = {str(t): int(i) for t, i in json.loads(vocab_path.read_text()).items()}
        except (ValueError, AttributeError):
            vocab = {}
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
            if key not in vocab:
                vocab[key] = len(vocab)
            values[i, r] = lp
            ids[i, r] = vocab[key]
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
    gen = response_arrays(done, n, k, int(cfg.generate), vocab) if cfg.generate else {}
    if extra_tokens and not cfg.generate:
        problems.append(f"{extra_tokens} responses carried more than max_tokens=1 tokens; only the first was used.")
    cache_dir.mkdir(parents=True, exist_ok=True)
    write_json(vocab_path, vocab, indent=None)
    tokens = [None] * len(vocab)
    for key, idx in vocab.items():
        if 0 <= idx < len(tokens):
            tokens[idx] = key
    meta = {
        "source": "blackbox", "endpoint": cfg.endpoint, "served_model": cfg.served_model, "k": k,
        "tokens": tokens, "answers": answers, "answered": len(done), "failed": missing,
        "fewer_than_k": len(fewer), "duplicate_samples": dup_samples, "cached": cached, "requests_sent": sent,
    }
    if cfg.generate:
        meta["responses"] = [None if done.get(i) is None else done[i].get("content") for i in range(n)]
        short = int((gen["gen_mask"].sum(1) < cfg.generate).sum())
        if short:
            problems.append(f"{short} responses ended before max_tokens={cfg.generate} tokens; their later positions are "
                            "empty in the response levels.")
    return Capture(topk_logprobs=values, topk_ids=ids, meta=meta, **gen), problems
