"""Black-box audits of an OpenAI-compatible endpoint, and an OpenAI-compatible server for a local model.

- :func:`logitleak.blackbox.audit.blackbox_capture`: query an endpoint for the top-k
  log-probabilities of the first answer token of every probe sample (cached, resumable,
  bounded) and fill a :class:`~logitleak.capture.Capture` with them.
- :func:`logitleak.blackbox.server.create_app`: serve a local model over the OpenAI
  chat-completions API with ``logprobs`` (``logitleak serve``), optionally behind an
  output-side defence.
- :func:`logitleak.blackbox.guard.create_guard_app`: an OpenAI-compatible proxy in front of any
  upstream endpoint that applies an output-side defence to every response's logprobs
  (``logitleak guard``).

Heavy imports stay inside the submodules.
"""
