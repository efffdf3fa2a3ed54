"""Black-box capture: what an attacker sees from an OpenAI-compatible endpoint with ``logprobs``.

For every probe sample, one chat request (the image as a PNG data URL, then the prompt text;
``logprobs=True, top_logprobs=max(k), max_tokens=1`` (``N`` with ``--generate N``),
``temperature=0``) is sent through the official ``openai`` client; the top-k log-probabilities
of the first answer token fill a :class:`~logitleak.capture.source.Capture`
(:mod:`logitleak.endpoint.assemble`), which the rest of the audit consumes unchanged.

The cache (``cache_dir``):

- ``responses.jsonl``: append-only, one JSON line per answered sample, written under a lock,
  flushed and fsync'd as each response arrives: ``{"index", "key", "first", "n_tokens",
  "content", "finish_reason"}`` where ``key`` hashes the request (endpoint, served model, prompt,
  image bytes, settings) and ``first`` is the first token's logprob entry as the endpoint sent
  it (with ``--generate N`` also ``"tokens"``: every returned token's entry). A rerun reads it
  and sends only the samples without a line whose key matches, so an interrupted audit resumes
  with no sample lost or sent twice; a torn last line (a crash mid-write) is skipped. Failed
  requests are not cached, so a rerun retries them.
- ``server.json``: which server answered (:mod:`logitleak.endpoint.server`, from ``/v1/models``,
  asked once per run that sends requests).
- ``vocab.json``: the run's token vocabulary ``{token key: id}``.

Answers that cannot serve the audit are asked again: through vLLM, an answer with alternatives
it left unidentified (restarted with ``--return-tokens-as-token-ids``, vLLM names them exactly),
and once any answer names tokens ``token_id:N``, every answer that names them by string (one
audit never mixes the two, which would give one token two ids).
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

from logitleak.capture.source import Capture
from logitleak.config import AuditConfig
from logitleak.data.probeset import ProbeSet
from logitleak.endpoint.assemble import FAILED_FRACTION_LIMIT, build_capture, unidentified_count
from logitleak.endpoint.cache import ResponseCache, request_key, request_messages, request_settings
from logitleak.endpoint.client import (
    Budget,
    BudgetExhausted,
    EndpointClient,
    EndpointError,
    RetryPolicy,
    SampleFailed,
    Stopped,
)
from logitleak.endpoint.responses import alternatives, first_token_entry, names_token_ids
from logitleak.endpoint.server import UNKNOWN, VLLM, server_from_answers, server_from_models
from logitleak.errors import LogitleakError, first_line
from logitleak.integrity import write_json
from logitleak.progress import PhaseBar

MAX_API_TOP_LOGPROBS = 20
SERVER_FILE = "server.json"


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
    cache_dir = Path(cache_dir)
    cache = ResponseCache(cache_dir)
    done = cache.load(keys)
    server = _saved_server(cache_dir)
    for i in stale_answers(done, server, k, cfg.generate):
        del done[i]
    cached = len(done)
    failures: dict[int, str] = {}
    client = None
    try:
        for _ in range(2):  # a second pass asks again what the first showed to be stale
            todo = [i for i in range(n) if i not in done]
            if not todo:
                break
            if client is None:
                client = EndpointClient(cfg.endpoint, cfg.served_model, cfg.api_key_env, policy=policy,
                                        budget=Budget(cfg.max_requests))
                server = server_from_models(client.models()) or server
            failures.update(_query(client, probeset, todo, keys, settings, cache, done, cfg, progress))
            server = server_from_answers(done.values()) or server
            write_json(cache_dir / SERVER_FILE, {"server": server})
            stale = stale_answers(done, server, k, cfg.generate, unidentified=False)  # (just asked: same answer again)
            if not stale:
                break
            for i in stale:
                del done[i]
    finally:
        cache.close()
    return build_capture(cfg, n, done, failures, cache_dir, k, server=server, cached=cached,
                         sent=client.sent if client else 0)


def _saved_server(cache_dir: Path) -> str:
    try:
        return str(json.loads((cache_dir / SERVER_FILE).read_text())["server"])
    except (OSError, ValueError, KeyError, TypeError):
        return UNKNOWN


def stale_answers(records: dict[int, dict], server: str, k: int, generate: int | None, *,
                  unidentified: bool = True) -> list[int]:
    """The answers to ask again: those naming tokens by string once any answer names token ids;
    with ``unidentified``, through vLLM, those with alternatives it left unidentified."""
    by_id = any(names_token_ids(r) for r in records.values())
    out = []
    for i, rec in records.items():
        if names_token_ids(rec):
            continue
        if by_id or (unidentified and server == VLLM and unidentified_count(rec, k, server, generate)[0]):
            out.append(i)
    return sorted(out)


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
