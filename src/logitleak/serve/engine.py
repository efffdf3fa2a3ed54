"""Generation with log-probabilities on a local model, behind one worker thread.

Every request goes through a queue to a single worker thread that owns the model: the model is
never called from two threads at once. The worker micro-batches whatever is waiting (up to
``max_batch`` requests that can share one ``generate`` call) into one call of transformers' own
``model.generate`` (``output_logits=True``). Inputs are built by the adapter
(:meth:`~logitleak.models.adapter.ModelAdapter.build_chat_inputs`, left-padded), the same path a
white-box capture takes, so the first generated token's log-probabilities are the capture's.
A batch that fails to encode is encoded request by request, so one malformed request fails
alone (with a 400).

Output-side defences act only through :func:`logitleak.defenses.output.apply_output_defense`,
on the log-probabilities the server returns (never on the tokens it generates), for every
generated token, with one seed rule (:func:`~logitleak.defenses.output.content_seed`: a
per-server secret and the request's content, so an identical request gets identical noise).
On the wire: ``values_only`` returns ``"<hidden>"`` as every alternative's token (bytes
``null``; the generated token, also visible in the text, keeps its string); ``ranks_only``
returns ``-9999.0`` (OpenAI's "negligible") as every log-probability.
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

from logitleak.defenses.output import apply_output_defense, check_defense, content_seed
from logitleak.defenses.spec import Defense
from logitleak.errors import LogitleakError, first_line
from logitleak.serve.hf_generate import run_generate, stop_cut
from logitleak.serve.requests import Alternative, GenRequest, GenResult, Step, prompt_chars, text_of
from logitleak.serve.tokens import TokenTable
from logitleak.wire.bodies import HIDDEN_TOKEN, RequestError, wire_logprob

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
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        eos: set[int] = set()
        for src in (getattr(self.model, "generation_config", None), self.tokenizer):
            val = getattr(src, "eos_token_id", None) if src is not None else None
            if isinstance(val, int):
                eos.add(val)
            elif isinstance(val, (list, tuple)):
                eos.update(int(v) for v in val)
        self.eos_ids = eos
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
            raise RequestError(str(err), param="messages") from None
        except Exception as err:  # noqa: BLE001 - a processor failure is this request's fault
            raise RequestError(f"The model's processor rejected the request: {first_line(err, None)}",
                               param="messages") from None
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
    @torch.inference_mode()
    def _generate(self, jobs: list[_Job], inputs: dict[str, torch.Tensor]) -> list[GenResult]:
        from transformers import GenerationConfig

        reqs = [j.request for j in jobs]
        t0 = int(inputs["input_ids"].shape[1])
        eos = sorted(self.eos_ids)
        sample = reqs[0].temperature > 0
        config = GenerationConfig(
            max_new_tokens=max(r.max_tokens for r in reqs), do_sample=sample, num_beams=1,
            temperature=reqs[0].temperature if sample else 1.0, top_p=reqs[0].top_p if sample else 1.0,
            top_k=0 if sample else None, pad_token_id=self.pad_id, eos_token_id=eos or None, output_logits=True, return_dict_in_generate=True)
        seed = (reqs[0].seed if reqs[0].seed is not None else secrets.randbits(63)) % 2**64
        out = run_generate(self.model, inputs, config, reqs, self.tokenizer, self.eos_ids, seed, self.adapter.device)
        new = out.sequences[:, t0:].cpu()
        logits = torch.stack(out.logits, dim=1).float().cpu() if out.logits else torch.empty(len(jobs), 0, self.vocab)
        self.forward_calls += int(new.shape[1])
        self.batches += 1
        self.requests_done += len(jobs)
        return [self._result(job, new[b].tolist(), logits[b]) for b, job in enumerate(jobs)]

    def _result(self, job: _Job, tokens: list[int], logits: torch.Tensor) -> GenResult:
        """One row of a ``generate`` call -> the request's result (tokens up to its stop rule)."""
        req = job.request
        kept, text, finish = [], "", "length"
        for tid in tokens:
            kept.append(tid)
            if tid in self.eos_ids:
                finish = "stop"
                break
            text = self.tokenizer.decode([t for t in kept if t not in self.eos_ids], skip_special_tokens=True)
            cut = stop_cut(text, req.stop)
            if cut is not None:
                text, finish = text[:cut], "stop"
                break
            if len(kept) >= req.max_tokens:
                break
        steps = self._steps(job, kept, logits[:len(kept)]) if req.top_logprobs is not None else []
        return GenResult(text=text, finish_reason=finish, steps=steps, prompt_tokens=job.n_prompt,
                         completion_tokens=len(kept), logprobs=req.top_logprobs is not None)

    def _steps(self, job: _Job, tokens: list[int], logits: torch.Tensor) -> list[Step]:
        """The defended log-probabilities of every generated token and its top alternatives."""
        if not tokens:
            return []
        k = min(int(job.request.top_logprobs), logits.shape[-1])
        chosen = torch.tensor(tokens, dtype=torch.long)[:, None]
        # float64: a rounded value goes on the wire as the short decimal it is (-0.1, not -0.10000000149)
        view = apply_output_defense(logits.double(), self.defense, k, seed=job.seed, extra_ids=chosen)
        steps = []
        for i, tid in enumerate(tokens):
            top = []
            for v, a in zip(view.logprobs[i].tolist(), view.ids[i].tolist()):
                tok, raw = (HIDDEN_TOKEN, None) if a < 0 else self.tokens(a)
                top.append(Alternative(tok, wire_logprob(v), raw))
            tok, raw = self.tokens(tid)
            steps.append(Step(tid, tok, raw, wire_logprob(float(view.extra[i, 0])), top))
        return steps
