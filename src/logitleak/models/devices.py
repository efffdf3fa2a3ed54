"""The torch device a user asked for: resolved, and refused in one sentence when this machine lacks it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

from logitleak.errors import LogitleakError

_DEVICE = re.compile(r"^(cpu|cuda|mps|xpu)(?::(\d+))?$")


def check_device(device: str | None, flag: str = "--device") -> str:
    """``None`` -> ``cuda`` when available, else ``cpu``; an unknown or absent device is an error."""
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    text = str(device).strip()
    m = _DEVICE.match(text)
    if not m:
        raise LogitleakError(f"{flag} {device!r} is not a torch device; use cpu, cuda, cuda:N or mps.")
    kind, index = m.group(1), m.group(2)
    if kind == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise LogitleakError(f"{flag} {text} was given but this machine has no usable CUDA GPU (torch "
                                 f"{torch.__version__}); pass --device cpu or leave it out.")
        if index is not None and int(index) >= count:
            raise LogitleakError(f"{flag} {text} names GPU {index}, but this machine has {count} "
                                 f"(cuda:0..cuda:{count - 1}); pick one of those.")
    elif kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise LogitleakError(f"{flag} mps was given but Apple's Metal backend is not available here; pass --device cpu.")
    elif kind == "xpu" and not (hasattr(torch, "xpu") and torch.xpu.is_available()):
        raise LogitleakError(f"{flag} xpu was given but no Intel GPU is available here; pass --device cpu.")
    return text


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run a block on ``n`` torch threads (at least one), then restore the caller's count: seeded
    CPU training is bit-identical for a fixed thread count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(before)
