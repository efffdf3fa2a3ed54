"""Generation with log-probabilities on a local model, behind one worker thread.

Every request goes through a queue to a single worker thread that owns the model: the model is
never called from two threads at once. The worker micro-batches whatever is waiting (up to
``max_batch`` requests that can share one ``generate`` call) into one call of
:func:`logitleak.capture.generation.generate`, the pass a ``--generate`` capture runs (the same
hooks, end-of-sequence ids and stop rule). Inputs are built by the adapter
(:meth:`~logitleak.models.adapter.ModelAdapter.build_chat_inputs`, left-padded), the same path a
white-box capture takes, so the log-probabilities are the capture's by construction.
A batch that fails to encode is encoded request by request, so one malformed request fails
alone (with a 400).

Each row's answer (:mod:`logitleak.serve.answer`) applies the output-side defence with one seed
rule (:func:`~logitleak.defenses.output.content_seed`: a per-server secret and the request's
content, so an identical request gets identical noise). On the wire: ``values_only`` returns
``"<hidden>"`` as every alternative's token (bytes ``null``; the generated token, also visible in
the text, keeps its string); ``ranks_only`` returns ``-9999.0`` (OpenAI's "negligible") as every
log-probability. A request's ``logit_bias`` is added to the model's logits at every step, before
sampling and before the returned log-probabilities (so a client can measure the logit-bias attack).
"""

from __future__ import annotations

import logging
import queue
import secrets
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass

import torch

from logitleak.capture.generation import Decoding, generate
from logitleak.defenses.output import check_defense, content_seed
from logitleak.defenses.spec import Defense
from logitleak.errors import LogitleakError, first_line
from logitleak.models.tokens import eos_ids
from logitleak.serve.answer import answer_row
from logitleak.serve.requests import GenRequest, GenResult, prompt_chars, public_message, text_of
from logitleak.serve.tokens import TokenTable
from logitleak.wire.bodies import RequestError

MAX_NEW_TOKENS = 512
MAX_PROMPT_TOKENS = 16384
CHARS_PER_TOKEN_BOUND = 16  # a prompt longer than context x this many characters is refused untokenised
MAX_IMAGES = 8
_STOP = object()
log = logging.getLogger("logitleak.server")


@dataclass
class _Job:
    request: GenRequest
    future: Future
    n_prompt: int = 0
    seed: int = 0


class Engine:
    """Queue + one worker thread that owns the model; :meth:`submit` returns a ``Future``.

    ``adapter`` is a :class:`logitleak.models.adapter.ModelAdapter` (``load_model``'s result).
    ``threads``: torch CPU threads for the worker (``None``: torch's default).
    ``defense_seed``: the secret behind the defence's noise (random per engine by default).
    """

    def __init__(self, adapter, *, defense: Defense | None = None, max_batch: int = 16,
                 batch_wait_s: float = 0.002, max_queue: int = 1024, defense_seed: int | None = None,
                 max_images: int = MAX_IMAGES, threads: int | None = None, max_prompt_chars: int | None = None):
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.adapter = adapter
        self.model = adapter.model
        self.processor = adapter.processor
        self.tokenizer = adapter.tokenizer
        self.defense = defense or Defense()
        self.vocab = int(adapter.vocab_size)
        check_defense(self.defense, self.vocab)  # topk:k beyond the vocabulary fails at start, not per request
        self.max_batch = int(max_batch)
        self.batch_wait_s = float(batch_wait_s)
        self.max_images = int(max_images)
        self.threads = threads
        self.defense_seed = secrets.randbits(62) if defense_seed is None else int(defense_seed)
        self.tokens = TokenTable(self.tokenizer)
        self.accepts_images = bool(adapter.is_vlm)
        self.max_positions = int(getattr(adapter.text_config, "max_position_embeddings", 0) or MAX_PROMPT_TOKENS)
        self.max_prompt_chars = (int(max_prompt_chars) if max_prompt_chars is not None
                                 else min(self.max_positions, MAX_PROMPT_TOKENS) * CHARS_PER_TOKEN_BOUND)
        self.eos_ids = set(eos_ids(adapter))  # the capture's stop rule (a test may clear it to never stop)
        self.image_token_id = adapter.image_token_id
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.forward_calls = 0   # decoding steps run (a batch of b requests x t tokens = t steps)
        self.batches = 0         # micro-batches run
        self.requests_done = 0

    # -------------------------------------------------------------- lifecycle
    def start(self) -> Engine:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="logitleak-engine", daemon=True)
                self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None and thread.is_alive():
            self._queue.put(_STOP)
            thread.join(timeout)

    def submit(self, request: GenRequest) -> Future:
        """Queue one request; the future resolves to a :class:`GenResult` or raises :class:`RequestError`.

        Checks that need no tokeniser (images allowed, their count, the prompt's length in
        characters) fail here at once, before the request reaches the worker."""
        fut: Future = Future()
        try:
            self.precheck(request)
        except RequestError as err:
            fut.set_exception(err)
            return fut
        if self._thread is None or not self._thread.is_alive():
            self.start()
        try:
            self._queue.put_nowait(_Job(request, fut))
        except queue.Full:
            fut.set_exception(RequestError("The server is overloaded (request queue full); retry later.",
                                           status=429, type="rate_limit_error"))
        return fut

    def generate(self, request: GenRequest, timeout: float | None = None) -> GenResult:
        """Synchronous convenience: submit and wait."""
        return self.submit(request).result(timeout)

    def precheck(self, req: GenRequest) -> None:
        """Refuse, without tokenising, a request this model cannot take."""
        if req.images and not self.accepts_images:
            raise RequestError("This model is a text-only language model; send text content parts only.",
                               param="messages")
        if len(req.images) > self.max_images:
            raise RequestError(f"Too many images in one request ({len(req.images)}); send at most {self.max_images}.",
                               param="messages")
        tok = self.adapter.image_token if self.accepts_images else None
        if tok and not req.images and any(tok in text_of(m) for m in req.messages):
            raise RequestError(f"The text contains the image placeholder {tok!r} but no image was sent; remove it "
                               "or attach the image as an image_url part.", param="messages")
        outside = sorted(t for t in req.logit_bias if not 0 <= t < self.vocab)
        if outside:
            raise RequestError(f"logit_bias names token id {outside[0]}, outside this model's vocabulary (ids 0 to "
                               f"{self.vocab - 1}); bias ids from the model's tokenizer only.", param="logit_bias")
        n = prompt_chars(req.messages)
        if n > self.max_prompt_chars:
            raise RequestError(f"The prompt is {n} characters, more than this server tokenises ({self.max_prompt_chars}: "
                               f"{CHARS_PER_TOKEN_BOUND} per token of the model's context of "
                               f"{min(self.max_positions, MAX_PROMPT_TOKENS)} tokens); shorten the prompt.",
                               param="messages", code="context_length_exceeded")

    # -------------------------------------------------------------- worker
    def _run(self) -> None:
        if self.threads:
            # torch's intra-op thread count (process-wide for threads started later). One thread
            # is often fastest for small models, and far faster on a CPU shared with other work.
            torch.set_num_threads(int(self.threads))
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            jobs = [item]
            deadline = time.monotonic() + self.batch_wait_s
            stop_after = False
            while len(jobs) < self.max_batch:
                try:
                    nxt = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop_after = True
                    break
                jobs.append(nxt)
            self._process(jobs)
            if stop_after:
                return

    def _process(self, jobs: list[_Job]) -> None:
        groups: dict[tuple, list[_Job]] = {}
        for job in jobs:
            if job.future.set_running_or_notify_cancel():
                groups.setdefault(self._batch_key(job), []).append(job)
        for group in groups.values():
            group, inputs = self.encode(group)
            if not group:
                continue
            try:
                results = self._generate(group, inputs)
            except Exception:  # noqa: BLE001 - retry one by one so one bad input fails alone
                if len(group) == 1:
                    self._fail(group[0])
                    continue
                for job in group:
                    try:
                        single, inp = self.encode([job])
                        res = self._generate(single, inp)[0] if single else None
                    except Exception:  # noqa: BLE001
                        self._fail(job)
                        continue
                    if res is not None:
                        job.future.set_result(res)
                continue
            for job, res in zip(group, results):
                job.future.set_result(res)

    @staticmethod
    def _batch_key(job: _Job) -> tuple:
        """Requests that can share one ``generate`` call: the same number of images, and greedy,
        or the same sampling settings without a seed; a seeded sampled request runs alone, so its
        draw depends on its seed only."""
        r = job.request
        if r.temperature <= 0:
            mode: tuple = ("greedy",)
        elif r.seed is not None:
            mode = ("seeded", id(job))
        else:
            mode = ("sample", r.temperature, r.top_p)
        return (len(r.images), mode)

    def _fail(self, job: _Job) -> None:
        log.exception("generation failed")
        job.future.set_exception(RequestError("The model could not process this request (see the server log).",
                                              status=500, type="server_error"))

    # -------------------------------------------------------------- encoding
    def _build(self, jobs: list[_Job]) -> dict[str, torch.Tensor]:
        reqs = [j.request for j in jobs]
        images = [list(r.images) for r in reqs] if any(r.images for r in reqs) else None
        try:
            inputs = self.adapter.build_chat_inputs([r.messages for r in reqs], images, padding_side="left")
        except LogitleakError as err:
            raise RequestError(public_message(str(err), self.adapter.name), param="messages") from None
        except Exception as err:  # noqa: BLE001 - a processor failure is this request's fault
            raise RequestError("The model's processor rejected the request: "
                               + public_message(first_line(err, None), self.adapter.name), param="messages") from None
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        for b, job in enumerate(jobs):
            req, row = job.request, ids[b][mask[b].bool()]
            if self.image_token_id is not None and not req.images and bool((row == self.image_token_id).any()):
                raise RequestError(f"The text contains the image placeholder {self.adapter.image_token!r} but no image "
                                   "was sent; remove it or attach the image as an image_url part.", param="messages")
            n_prompt = int(row.shape[0])
            if n_prompt > MAX_PROMPT_TOKENS or n_prompt + req.max_tokens > self.max_positions:
                raise RequestError(f"The prompt is {n_prompt} tokens and max_tokens is {req.max_tokens}, more than the "
                                   f"model's context of {self.max_positions} tokens; shorten the prompt or lower "
                                   "max_tokens.", param="messages", code="context_length_exceeded")
            job.n_prompt = n_prompt
            job.seed = content_seed(self.defense_seed, row.cpu().numpy().tobytes(),
                                    *(im.tobytes() for im in req.images))
        return inputs

    def encode(self, jobs: list[_Job]) -> tuple[list[_Job], dict[str, torch.Tensor] | None]:
        """Inputs for the jobs that encode (left-padded, one batch); the others' futures fail with
        their 400. Tries the whole group first, then request by request."""
        try:
            return jobs, self._build(jobs)
        except RequestError as err:
            if len(jobs) == 1:
                jobs[0].future.set_exception(err)
                return [], None
        ok = []
        for job in jobs:
            try:
                self._build([job])
            except RequestError as err:
                job.future.set_exception(err)
                continue
            ok.append(job)
        if not ok:
            return [], None
        return ok, self._build(ok)

    # -------------------------------------------------------------- generation
    def _generate(self, jobs: list[_Job], inputs: dict[str, torch.Tensor]) -> list[GenResult]:
        """One :func:`~logitleak.capture.generation.generate` call for the batch (the white-box
        capture's pass), then each row's answer."""
        reqs = [j.request for j in jobs]
        first = reqs[0]
        seed = first.seed if first.seed is not None else secrets.randbits(63)
        out = generate(self.adapter, inputs, max_new_tokens=max(r.max_tokens for r in reqs),
                       decoding=Decoding(first.temperature, first.top_p, seed), eos=self.eos_ids,
                       limits=[r.max_tokens for r in reqs], stops=[r.stop for r in reqs],
                       logit_bias=self._bias(reqs))
        logits = torch.stack(out.logits, dim=1) if out.logits else torch.empty(len(jobs), 0, self.vocab)
        self.forward_calls += len(out.logits)
        self.batches += 1
        self.requests_done += len(jobs)
        return [answer_row(out.tokens[b].tolist(), logits[b], job.request, eos=frozenset(self.eos_ids),
                           tokenizer=self.tokenizer, table=self.tokens, defense=self.defense, seed=job.seed,
                           n_prompt=job.n_prompt) for b, job in enumerate(jobs)]

    def _bias(self, reqs: list[GenRequest]) -> torch.Tensor | None:
        """``(B, V)`` the requests' logit biases (``None`` when no request has one)."""
        if not any(r.logit_bias for r in reqs):
            return None
        bias = torch.zeros(len(reqs), self.vocab)
        for b, r in enumerate(reqs):
            for tid, value in r.logit_bias.items():
                bias[b, tid] = float(value)
        return bias
