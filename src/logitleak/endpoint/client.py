"""Queries to an OpenAI-compatible endpoint through the official ``openai`` client.

Retries with exponential backoff, a patience window for a server that is restarting, a request
budget, and errors that say what to do.

Every HTTP attempt counts against the budget (the ``openai`` client's own retries are off so the
count is exact): a retry costs what a first try costs.
"""

from __future__ import annotations

import os
import random
import threading
import time
from dataclasses import dataclass

from logitleak.errors import LogitleakError

RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
DUMMY_KEY = "EMPTY"


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try.

    - ``attempts``: tries per request on 429 / 5xx / timeouts before the sample counts as failed.
    - ``backoff_s`` doubling up to ``max_backoff_s`` (with jitter); a 429's ``Retry-After`` wins.
    - ``connect_patience_s``: how long a refused / dropped connection is retried (a server that
      restarts comes back within it) before the whole run stops as unreachable;
      ``first_connect_patience_s`` for the run's first request (a wrong URL fails fast).
    - ``timeout_s``: per-request timeout.
    """

    attempts: int = 6
    backoff_s: float = 0.5
    max_backoff_s: float = 20.0
    connect_patience_s: float = 120.0
    first_connect_patience_s: float = 10.0
    timeout_s: float = 120.0

    def delay(self, attempt: int) -> float:
        base = min(self.max_backoff_s, self.backoff_s * (2 ** attempt))
        return base * (0.75 + 0.5 * random.random())


class Budget:
    """A thread-safe request counter with an optional limit."""

    def __init__(self, limit: int | None):
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self.limit is not None and self.used >= self.limit:
                return False
            self.used += 1
            return True

    @property
    def exhausted(self) -> bool:
        with self._lock:
            return self.limit is not None and self.used >= self.limit


class BudgetExhausted(Exception):
    """The request budget is spent; the run stops and a rerun resumes."""


class SampleFailed(Exception):
    """This request failed for good (after retries, or a non-retryable 4xx)."""

    def __init__(self, reason: str, status: int | None = None):
        super().__init__(reason)
        self.reason, self.status = reason, status


class EndpointError(LogitleakError):
    """The endpoint cannot serve this audit at all (unreachable, bad key, unknown model)."""


class Stopped(Exception):
    """The run is stopping (another request hit a fatal error or the budget)."""


def resolve_api_key(api_key_env: str | None) -> str:
    """The key from the named environment variable, or a dummy when none is named.

    The user's ``OPENAI_API_KEY`` is never sent implicitly to an arbitrary endpoint.
    """
    if not api_key_env:
        return DUMMY_KEY
    key = os.environ.get(api_key_env, "")
    if not key.strip():
        raise LogitleakError(f"The environment variable {api_key_env} named by --api-key-env is not set or empty; "
                             "export it with the endpoint's API key.")
    return key.strip()


def _server_message(err) -> str:
    body = getattr(err, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
        if isinstance(body.get("detail"), str):
            return body["detail"]
    return str(getattr(err, "message", "") or err).strip().splitlines()[0][:300]


class EndpointClient:
    """One ``openai.OpenAI`` client shared by the worker threads (it is thread-safe)."""

    def __init__(self, endpoint: str, served_model: str, api_key_env: str | None = None,
                 policy: RetryPolicy | None = None, budget: Budget | None = None,
                 stop: threading.Event | None = None):
        from openai import OpenAI

        self.endpoint = endpoint.rstrip("/")
        self.served_model = served_model
        self.api_key_env = api_key_env
        self.policy = policy or RetryPolicy()
        self.budget = budget or Budget(None)
        self.stop = stop or threading.Event()
        self.client = OpenAI(base_url=self.endpoint, api_key=resolve_api_key(api_key_env), max_retries=0,
                             timeout=self.policy.timeout_s)
        self._count_lock = threading.Lock()
        self.sent = 0     # HTTP attempts made
        self.retried = 0  # attempts that were retries

    def models(self) -> dict | None:
        """``GET /v1/models`` as a plain dict (which server this is), or ``None`` when it does not
        answer one; not counted in :attr:`sent` (the chat requests) nor against the budget."""
        try:
            return self.client.with_options(timeout=min(10.0, self.policy.timeout_s)).models.with_raw_response.list().http_response.json()
        except Exception:  # noqa: BLE001 - a server without /v1/models is audited all the same
            return None

    def chat(self, patience_s: float | None = None, **payload) -> dict:
        """POST one chat completion; the response as a plain dict.

        Raises :class:`BudgetExhausted`, :class:`Stopped`, :class:`SampleFailed` (this request
        failed for good) or :class:`EndpointError` (nothing will work: fix and rerun).
        ``patience_s`` overrides the policy's connection patience.
        """
        import openai

        attempt = 0
        first_refused: float | None = None
        last = ""
        patience = self.policy.connect_patience_s if patience_s is None else patience_s
        while True:
            if self.stop.is_set():
                raise Stopped()
            if not self.budget.take():
                raise BudgetExhausted()
            with self._count_lock:
                self.sent += 1
                if attempt or first_refused is not None:
                    self.retried += 1
            try:
                resp = self.client.chat.completions.create(model=self.served_model, **payload)
                return resp.model_dump()
            except openai.APITimeoutError:
                last = f"timed out after {self.policy.timeout_s:g} s"
            except openai.APIConnectionError as err:
                now = time.monotonic()
                first_refused = first_refused if first_refused is not None else now
                if now - first_refused >= patience:
                    cause = _server_message(err.__cause__) if err.__cause__ else "connection failed"
                    raise EndpointError(f"Could not connect to the endpoint {self.endpoint} for "
                                        f"{patience:g} s ({cause}); start the server "
                                        "(or fix --endpoint) and rerun.") from None
                left = patience - (now - first_refused)
                self._sleep(min(self.policy.max_backoff_s, self.policy.backoff_s * (2 ** min(attempt, 6)), max(0.05, left)))
                attempt += 1
                continue
            except openai.APIStatusError as err:
                status = err.status_code
                msg = _server_message(err)
                if status in (401, 403):
                    hint = (f"set the environment variable {self.api_key_env} to a valid key" if self.api_key_env
                            else "pass --api-key-env NAME with the variable that holds the key")
                    raise EndpointError(f"The endpoint {self.endpoint} refused the request (HTTP {status}: {msg}); "
                                        f"{hint}.") from None
                if status == 404:
                    raise EndpointError(f"The endpoint {self.endpoint} answered 404 for model {self.served_model!r} "
                                        f"({msg}); check --endpoint (it ends in /v1) and pass a model name that "
                                        "/v1/models lists with --served-model.") from None
                if status not in RETRYABLE_STATUS and status < 500:
                    raise SampleFailed(f"HTTP {status}: {msg}", status) from None
                last = f"HTTP {status}: {msg}"
                if attempt + 1 < self.policy.attempts:
                    retry_after = _retry_after(err)
                    self._sleep(retry_after if retry_after is not None else self.policy.delay(attempt))
                attempt += 1
                if attempt >= self.policy.attempts:
                    raise SampleFailed(f"{last} (after {attempt} attempts)", status) from None
                continue
            attempt += 1
            if attempt >= self.policy.attempts:
                raise SampleFailed(f"{last} (after {attempt} attempts)")
            self._sleep(self.policy.delay(attempt - 1))

    def _sleep(self, seconds: float) -> None:
        if self.stop.wait(max(0.0, seconds)):
            raise Stopped()


def _retry_after(err) -> float | None:
    try:
        value = err.response.headers.get("retry-after")
        return None if value is None else min(60.0, max(0.0, float(value)))
    except (AttributeError, TypeError, ValueError):
        return None
