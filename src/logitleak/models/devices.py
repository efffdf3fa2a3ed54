"""Where a model and its audit run: the device asked for, or ``auto`` placement across GPUs and CPU.

A device this machine lacks is refused in one sentence; ``auto`` places one model's blocks across
the visible GPUs and CPU memory with accelerate, and the lens and probes then run on the first GPU."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping

from logitleak.errors import LogitleakError

AUTO = "auto"
GPU_SHARE = 0.9
"""``auto`` places weights in this share of each GPU's free memory; the rest holds the activations
(and, on the first GPU, the lens and probes)."""
CPU_SHARE = 0.8
"""... and in this share of the CPU memory available now."""

_DEVICE = re.compile(r"^(cpu|cuda|mps|xpu)(?::(\d+))?$")


def check_device(device: str | None, flag: str = "--device") -> str:
    """``None`` -> ``cuda`` when available, else ``cpu``; ``auto`` stays (placement across the visible
    GPUs and CPU memory, :func:`placement`); an unknown or absent device is an error."""
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    text = str(device).strip()
    if text == AUTO:
        return AUTO
    m = _DEVICE.match(text)
    if not m:
        raise LogitleakError(f"{flag} {device!r} is not a torch device; use auto, cpu, cuda, cuda:N or mps.")
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


def compute_device(device: str | None) -> str:
    """Where the tuned lens and the probes run: under ``auto`` (or no device) the first GPU when one is
    visible, else the CPU; any other device as given."""
    import torch

    if device is None or device == AUTO:
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    return device


def default_max_memory() -> dict[int | str, int]:
    """Bytes ``auto`` may fill: :data:`GPU_SHARE` of each visible GPU's free memory (keys 0, 1, ...)
    and :data:`CPU_SHARE` of the available CPU memory (``"cpu"``)."""
    import psutil
    import torch

    out: dict[int | str, int] = {}
    for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        free, _ = torch.cuda.mem_get_info(i)
        out[i] = int(free * GPU_SHARE)
    out["cpu"] = int(psutil.virtual_memory().available * CPU_SHARE)
    return out


def placement(model, max_memory: Mapping[int | str, int | str] | None = None, dtype=None) -> dict[str, int | str]:
    """accelerate's device map for ``model`` (real, or on the meta device: only sizes are read): its
    blocks, never split (``model._no_split_modules``), balanced over the GPUs in ``max_memory``
    (default :func:`default_max_memory`) in order, what does not fit in CPU memory. One sentence
    when the model would need the disk."""
    from accelerate import infer_auto_device_map
    from accelerate.utils import get_balanced_memory

    memory = dict(default_max_memory() if max_memory is None else max_memory)
    no_split = sorted(getattr(model, "_no_split_modules", None) or [])
    budget = get_balanced_memory(model, max_memory=memory, no_split_module_classes=no_split, dtype=dtype)
    device_map = dict(infer_auto_device_map(model, max_memory=budget, no_split_module_classes=no_split, dtype=dtype))
    if "disk" in device_map.values():
        on_disk = [name for name, where in device_map.items() if where == "disk"]
        raise LogitleakError(f"--device auto: the model does not fit the visible GPUs and CPU memory ({_describe(memory)}); "
                             f"{len(on_disk)} module(s) from {on_disk[0]!r} on would go to disk. Free memory, add GPUs, "
                             "or load it in a smaller --dtype.")
    return device_map


def _describe(memory: Mapping) -> str:
    return ", ".join(f"{'GPU ' + str(k) if isinstance(k, int) else k} {int(v) / 2**30:.1f} GiB"
                     if isinstance(v, (int, float)) else f"{k} {v}" for k, v in memory.items())


@contextlib.contextmanager
def weights_loaded(model, *modules) -> Iterator[None]:
    """Within the block, the weights of ``modules`` (default: the whole ``model``) are readable on
    the CPU even where accelerate offloaded them (a block placed in CPU memory or on disk beside GPUs
    keeps its parameters on the meta device between passes)."""
    if not any(t.device.type == "meta" for t in model.state_dict().values()):
        yield
        return
    from accelerate.utils import align_module_device, has_offloaded_params

    wanted = [m for m in modules] or [model]
    inside = {id(sub) for m in wanted for sub in m.modules()}
    hooked = [m for m in model.modules() if has_offloaded_params(m)
              and (id(m) in inside or any(id(sub) in inside for sub in m.modules()))]
    with contextlib.ExitStack() as stack:
        for m in hooked:
            stack.enter_context(align_module_device(m, "cpu"))
        yield


@contextlib.contextmanager
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
