"""One statement of the verdict (``Finding``): what it says and the row it rests on."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Finding:
    """One statement of the verdict.

    ``kind`` is one of ``headline``, ``leak``, ``no_leak``, ``task_relevant``, ``not_measured``,
    ``numeric``, ``method``. ``attribute``/``level``/``k``/``probe``/``bits`` describe the row the
    statement rests on, where there is one.
    """

    kind: str
    text: str
    attribute: str | None = None
    level: str | None = None
    k: int | None = None
    probe: str | None = None
    bits: float | None = None
    bits_ci: tuple[float, float] | None = None
    details: dict = field(default_factory=dict, compare=False)

    def __str__(self) -> str:
        return self.text
