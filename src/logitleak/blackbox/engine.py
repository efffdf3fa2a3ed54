"""Generation with log-probabilities on a local model, behind one worker thread.

Every request goes through a queue to a single worker thread that owns the model: the model is
never called from two threads at once. The worker micro-batches whatever is waiting (up to
``max_batch`` requests with compatible inputs) into one forward pass per generated token, with a
KV cache; each request is encoded on its own (so one malformed request fails alone, with a 400)
and the encodings are left-padded together, with position ids that follow the attention mask, so
a batched request gets the same logits as a lone one (up to float rounding).

The first generated token is read from the model's logits at the last prompt position, exactly
what a white-box capture reads. Output-side defences
(:func:`logitleak.defenses.output.apply_output_defense`) transform the log-probabilities the
server returns (never the tokens it generates):

- ``round:d`` / ``gauss:s`` / ``laplace:s`` / ``temperature:t`` / ``topk:k`` act on the returned
  numbers and lists. Noise is drawn from a generator seeded by a per-server secret, the request's
  content and the step, so an identical request gets identical noise (repeating a query cannot
  average the noise away) and two different requests get independent noise.
- ``values_only``: the OpenAI schema cannot drop a token field, so every alternative's token is
  the placeholder ``"<hidden>"`` (bytes ``null``); the generated token itself (also visible in
  the message text) keeps its string.
- ``ranks_only``: the schema needs a number, so every returned log-probability is ``-9999.0``
  (OpenAI's own value for "negligible").
"""

from __future__ import annotations

import hashlib
import queue
import re
import secrets
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch

from logitleak.defenses.output import apply_output_defense
from logitleak.defenses.spec import Defense

HIDDEN_TOKEN = "<hidden>"
HIDDEN_LOGPROB = -9999.0
DEFAULT_MAX_TOKENS = 16
MAX_NEW_TOKENS = 512
MAX_PROMPT_TOKENS = 16384
MAX_IMAGES = 8
_PAD_KEYS = ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids")
_STOP = object()


class RequestError(Exception):
    """A request the server refuses; becomes an OpenAI-style JSON error with ``status``."""

    def __init__(self, message: str, status: int = 400, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message, self.status, self.type, self.param, self.code = message, status, type, param, code


@dataclass
class GenRequest:
    """One chat request, already parsed: HF-format messages (``{"type": "image"}`` parts in the
    order the images came), the decoded images, and sampling / logprob settings."""

    messages: list[dict]
    images: list = field(default_factory=list)
    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    top_logprobs: int | None = None  # None: no logprobs; 0..20 alternatives otherwise
    stop: list[str] = field(default_factory=list)


@dataclass
class Alternative:
    token: str
    logprob: float
    bytes: list[int] | None


@dataclass
class Step:
    """One generated token: its string, its (defended) log-probability and the alternatives."""

    token_id: int
    token: str
    bytes: list[int] | None
    logprob: float
    top: list[Alternative]


@dataclass
class GenResult:
    text: str
    finish_reason: str
    steps: list[Step]
    prompt_tokens: int
    completion_tokens: int
    logprobs: bool


# ----------------------------------------------------------------------------- token strings

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


# ----------------------------------------------------------------------------- engine

@dataclass
class _Job:
    request: GenRequest
    future: Future
    enc: dict | None = None
    n_prompt: int = 0
    fingerprint: int = 0


class Engine:
    """Queue + one worker thread that owns the model; :meth:`submit` returns a ``Future``.

    ``adapter`` is a :class:`logitleak.models.adapter.ModelAdapter` (``load_model``'s result):
    the engine uses its ``model``, ``processor``, ``tokenizer``, ``is_vlm``, ``image_token(_id)``,
    ``device``, ``dtype`` and ``position_ids``. ``threads``: torch CPU threads for the worker
    (``None``: torch's default).
    """

    def __init__(self, adapter, *, defense: Defense | None = None, max_batch: int = 16,
                 batch_wait_s: float = 0.002, max_queue: int = 1024, defense_seed: int | None = None,
                 max_images: int = MAX_IMAGES, threads: int | None = None):
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.adapter = adapter
        self.model = adapter.model
        self.processor = adapter.processor
        self.tokenizer = adapter.tokenizer
        self.defense = defense or Defense()
        self._values_defense = Defense(tuple(t for t in self.defense.output_side
                                             if t.name not in ("values_only", "ranks_only")))
        self.hide_tokens = any(t.name == "values_only" for t in self.defense.output_side)
        self.hide_values = any(t.name == "ranks_only" for t in self.defense.output_side)
        self.max_batch = int(max_batch)
        self.batch_wait_s = float(batch_wait_s)
        self.max_images = int(max_images)
        self.threads = threads
        self.defense_seed = secrets.randbits(62) if defense_seed is None else int(defense_seed)
        self.tokens = TokenTable(self.tokenizer)
        self.accepts_images = bool(getattr(adapter, "is_vlm", False))
        text_cfg = getattr(adapter, "text_config", None) or self.model.config
        self.max_positions = int(getattr(text_cfg, "max_position_embeddings", 0) or MAX_PROMPT_TOKENS)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        eos = set()
        for src in (getattr(self.model, "generation_config", None), self.tokenizer):
            val = getattr(src, "eos_token_id", None) if src is not None else None
            if isinstance(val, int):
                eos.add(val)
            elif isinstance(val, (list, tuple)):
                eos.update(int(v) for v in val)
        self.eos_ids = eos
        self.image_token_id = getattr(adapter, "image_token_id", None)
        import inspect

        params = inspect.signature(self.model.forward).parameters
        self._keep_logits = "logits_to_keep" in params
        # transformers >= 5 names the KV cache ``cache``; earlier versions ``past_key_values``.
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        # Decoding with a KV cache needs positions we can continue (the attention-mask rule);
        # families whose model derives its own positions (Qwen2-VL's multimodal RoPE) rerun the
        # whole sequence each step instead.
        family = getattr(adapter, "family", None)
        self._kv_cache = getattr(family, "positions", "mask") == "mask"
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.forward_calls = 0   # forward passes run (a batch of b requests x t tokens = t calls)
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
        """Queue one request; the future resolves to a :class:`GenResult` or raises :class:`RequestError`."""
        if self._thread is None or not self._thread.is_alive():
            self.start()
        fut: Future = Future()
        try:
            self._queue.put_nowait(_Job(request, fut))
        except queue.Full:
            fut.set_exception(RequestError("The server is overloaded (request queue full); retry later.",
                                           status=429, type="rate_limit_error"))
        return fut

    def generate(self, request: GenRequest, timeout: float | None = None) -> GenResult:
        """Synchronous convenience: submit and wait."""
        return self.submit(request).result(timeout)

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
        ready: dict[tuple, list[_Job]] = {}
        for job in jobs:
            if not job.future.set_running_or_notify_cancel():
                continue
            try:
                self._encode(job)
            except RequestError as err:
                job.future.set_exception(err)
                continue
            except Exception as err:  # noqa: BLE001 - a processor failure is this request's fault
                job.future.set_exception(RequestError(f"The model's processor rejected the request: {_first_line(err)}"))
                continue
            ready.setdefault(self._batch_key(job), []).append(job)
        for group in ready.values():
            try:
                results = self._generate(group)
            except Exception:  # noqa: BLE001 - retry one by one so one bad input fails alone
                if len(group) == 1:
                    self._fail(group[0])
                    continue
                for job in group:
                    try:
                        res = self._generate([job])[0]
                    except Exception:  # noqa: BLE001
                        self._fail(job)
                        continue
                    job.future.set_result(res)
                continue
            for job, res in zip(group, results):
                job.future.set_result(res)

    def _fail(self, job: _Job) -> None:
        import logging

        logging.getLogger("logitleak.server").exception("generation failed")
        job.future.set_exception(RequestError("The model could not process this request (see the server log).",
                                              status=500, type="server_error"))

    # -------------------------------------------------------------- encoding
    def render(self, messages: list[dict], n_images: int) -> str:
        """The chat-template text of a conversation (with the generation prompt)."""
        proc_tmpl = getattr(self.processor, "chat_template", None) if self.processor is not None else None
        if proc_tmpl:
            return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        if getattr(self.tokenizer, "chat_template", None):
            flat = [{"role": m["role"], "content": _flatten(m["content"], self._image_token())} for m in messages]
            return self.tokenizer.apply_chat_template(flat, add_generation_prompt=True, tokenize=False)
        # No template: the contents one after another, image placeholders where the images were.
        return "\n".join(_flatten(m["content"], self._image_token()) for m in messages)

    def _image_token(self) -> str:
        return getattr(self.adapter, "image_token", None) or "<image>"

    def _encode(self, job: _Job) -> None:
        req = job.request
        if req.images and not self.accepts_images:
            raise RequestError("This model is a text-only language model; send text content parts only.",
                               param="messages")
        if len(req.images) > self.max_images:
            raise RequestError(f"Too many images in one request ({len(req.images)}); send at most {self.max_images}.",
                               param="messages")
        text = self.render(req.messages, len(req.images))
        if not req.images and self.accepts_images and self._image_token() in text:
            raise RequestError(f"The text contains the image placeholder {self._image_token()!r} but no image "
                               "was sent; remove it or attach the image as an image_url part.", param="messages")
        bos = getattr(self.tokenizer, "bos_token", None)
        kwargs: dict[str, Any] = {"return_tensors": "pt", "add_special_tokens": not (bos and text.startswith(bos))}
        if self.processor is not None and self.accepts_images:
            if req.images:
                enc = self.processor(text=[text], images=list(req.images), **kwargs)
            else:
                enc = self.processor(text=[text], **kwargs)
        else:
            enc = self.tokenizer([text], **kwargs)
        enc = {k: v for k, v in dict(enc).items() if isinstance(v, torch.Tensor) and k != "labels"}
        ids = enc["input_ids"]
        if "attention_mask" not in enc:
            enc["attention_mask"] = torch.ones_like(ids)
        if self.image_token_id is not None:
            n_tok = int((ids == self.image_token_id).sum())
            if req.images and n_tok == 0:
                raise RequestError("The images did not reach the model: the chat template dropped the image parts.")
            if not req.images and n_tok > 0:
                raise RequestError(f"The text contains the image placeholder {self._image_token()!r} but no image "
                                   "was sent; remove it or attach the image as an image_url part.", param="messages")
        n_prompt = int(ids.shape[1])
        if n_prompt > MAX_PROMPT_TOKENS or n_prompt + req.max_tokens > self.max_positions:
            raise RequestError(f"The prompt is {n_prompt} tokens and max_tokens is {req.max_tokens}, more than the "
                               f"model's context of {self.max_positions} tokens; shorten the prompt or lower max_tokens.",
                               param="messages", code="context_length_exceeded")
        h = hashlib.sha256(self.defense_seed.to_bytes(8, "little"))
        h.update(ids.numpy().tobytes())
        for img in req.images:
            h.update(img.tobytes())
        job.enc, job.n_prompt = enc, n_prompt
        job.fingerprint = int.from_bytes(h.digest()[:7], "little")

    @staticmethod
    def _batch_key(job: _Job) -> tuple:
        """Requests whose encodings can be stacked into one batch."""
        parts = []
        for k, v in sorted(job.enc.items()):
            parts.append((k, tuple(v.shape[1:]) if k not in _PAD_KEYS else (), str(v.dtype)))
        return (len(job.request.images), tuple(parts))

    def _collate(self, jobs: list[_Job]) -> dict[str, torch.Tensor]:
        length = max(j.enc["input_ids"].shape[1] for j in jobs)
        out: dict[str, torch.Tensor] = {}
        for key in jobs[0].enc:
            tensors = [j.enc[key] for j in jobs]
            if key in _PAD_KEYS:
                fill = self.pad_id if key == "input_ids" else 0
                padded = []
                for t in tensors:
                    pad = length - t.shape[1]
                    if pad:
                        t = torch.cat([torch.full((t.shape[0], pad), fill, dtype=t.dtype), t], dim=1)
                    padded.append(t)
                out[key] = torch.cat(padded, dim=0)
            else:
                out[key] = torch.cat(tensors, dim=0)
        dev = self.adapter.device
        dtype = getattr(self.adapter, "dtype", None)
        for k, v in out.items():
            v = v.to(dev)
            if v.is_floating_point() and dtype is not None:
                v = v.to(dtype)
            out[k] = v
        return out

    # -------------------------------------------------------------- generation
    @torch.inference_mode()
    def _generate(self, jobs: list[_Job]) -> list[GenResult]:
        inputs = self._collate(jobs)
        mask = inputs["attention_mask"]
        pos = self.adapter.position_ids(mask) if hasattr(self.adapter, "position_ids") else None
        steps = max(j.request.max_tokens for j in jobs)
        kw: dict[str, Any] = dict(inputs)
        if pos is not None:
            kw["position_ids"] = pos
        gens = []
        for j in jobs:
            g = torch.Generator()
            g.manual_seed(j.request.seed if j.request.seed is not None else secrets.randbits(62))
            gens.append(g)
        n = len(jobs)
        done = [False] * n
        out_ids: list[list[int]] = [[] for _ in jobs]
        records: list[list[Step]] = [[] for _ in jobs]
        texts = [""] * n
        finish = ["length"] * n
        for step in range(steps):
            kw["use_cache"] = steps > 1 and self._kv_cache
            if self._keep_logits:
                kw["logits_to_keep"] = 1
            out = self.model(**kw)
            self.forward_calls += 1
            logits = out.logits[:, -1, :].float().cpu()
            next_ids = []
            for b, job in enumerate(jobs):
                if done[b]:
                    next_ids.append(self.pad_id)
                    continue
                req = job.request
                tid = self._choose(logits[b], req, gens[b])
                if req.top_logprobs is not None:
                    records[b].append(self._record(logits[b], tid, req.top_logprobs, job.fingerprint, step))
                out_ids[b].append(tid)
                next_ids.append(tid)
                if tid in self.eos_ids:
                    done[b], finish[b] = True, "stop"
                    continue
                texts[b] = self.tokenizer.decode([t for t in out_ids[b] if t not in self.eos_ids],
                                                 skip_special_tokens=True)
                cut = _stop_cut(texts[b], req.stop)
                if cut is not None:
                    texts[b], done[b], finish[b] = texts[b][:cut], True, "stop"
                elif len(out_ids[b]) >= req.max_tokens:
                    done[b] = True
            if all(done):
                break
            new = torch.tensor(next_ids, dtype=torch.long, device=mask.device)[:, None]
            mask = torch.cat([mask, torch.ones_like(new, dtype=mask.dtype)], dim=1)
            if self._kv_cache:
                kw = {"input_ids": new, "attention_mask": mask, self._cache_kw: _cache_of(out)}
                if pos is not None:
                    pos = pos[:, -1:] + 1
                    kw["position_ids"] = pos
            else:  # the model derives positions itself (multimodal RoPE): run the whole sequence again
                for key in _PAD_KEYS:
                    if key in inputs and key != "attention_mask":
                        extra = new if key == "input_ids" else torch.zeros_like(new, dtype=inputs[key].dtype)
                        inputs[key] = torch.cat([inputs[key], extra], dim=1)
                inputs["attention_mask"] = mask
                kw = dict(inputs)
        self.batches += 1
        self.requests_done += n
        return [GenResult(text=texts[b], finish_reason=finish[b], steps=records[b],
                          prompt_tokens=int(jobs[b].enc["attention_mask"].sum()),
                          completion_tokens=len(out_ids[b]), logprobs=jobs[b].request.top_logprobs is not None)
                for b in range(n)]

    @staticmethod
    def _choose(logits: torch.Tensor, req: GenRequest, gen: torch.Generator) -> int:
        if req.temperature <= 0:
            return int(torch.argmax(logits))
        probs = torch.softmax(logits / req.temperature, dim=-1)
        if req.top_p < 1.0:
            sorted_p, order = torch.sort(probs, descending=True)
            keep = (sorted_p.cumsum(-1) - sorted_p) < req.top_p
            probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
        return int(torch.multinomial(probs, 1, generator=gen))

    def _record(self, logits: torch.Tensor, chosen: int, n_top: int, fingerprint: int, step: int) -> Step:
        vocab = logits.shape[-1]
        k = max(1, min(n_top, vocab))
        seed = (fingerprint * 1_000_003 + step) % (2**62)
        view = apply_output_defense(logits[None], self._values_defense, k, seed=seed)
        values, ids = view.logprobs[0].tolist(), view.ids[0].tolist()
        if chosen in ids:
            chosen_lp = values[ids.index(chosen)]
        else:
            chosen_lp = self._defended_value(logits, chosen, seed)
        top = []
        for v, i in list(zip(values, ids))[:n_top]:
            tok, raw = (HIDDEN_TOKEN, None) if self.hide_tokens else self.tokens(i)
            top.append(Alternative(tok, HIDDEN_LOGPROB if self.hide_values else float(v), raw))
        tok, raw = self.tokens(chosen)
        return Step(chosen, tok, raw, HIDDEN_LOGPROB if self.hide_values else float(chosen_lp), top)

    def _defended_value(self, logits: torch.Tensor, token_id: int, seed: int) -> float:
        """The defended log-probability of a token outside the returned list (a sampled token)."""
        temperature = 1.0
        for t in self._values_defense.output_side:
            if t.name == "temperature":
                temperature *= float(t.value)
        value = torch.log_softmax(logits / temperature, dim=-1)[token_id:token_id + 1]
        gen = torch.Generator().manual_seed(seed + 1)
        for t in self._values_defense.output_side:
            if t.name == "round":
                scale = 10.0 ** int(t.value)
                value = torch.round(value * scale) / scale
            elif t.name == "gauss" and t.value > 0:
                value = (value + float(t.value) * torch.randn(value.shape, generator=gen)).clamp(max=0.0)
            elif t.name == "laplace" and t.value > 0:
                u = torch.rand(value.shape, generator=gen) - 0.5
                value = (value - float(t.value) * torch.sign(u) * torch.log1p(-2 * u.abs())).clamp(max=0.0)
        return float(value[0])


def _cache_of(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


def _flatten(content, image_token: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for p in content:
        parts.append(image_token if p.get("type") == "image" else p.get("text", ""))
    return " ".join(x for x in parts if x)


def _stop_cut(text: str, stops: list[str]) -> int | None:
    hits = [text.find(s) for s in stops if s and s in text]
    return min(hits) if hits else None


def _first_line(err: BaseException) -> str:
    msg = str(err).strip()
    return msg.splitlines()[0] if msg else type(err).__name__
