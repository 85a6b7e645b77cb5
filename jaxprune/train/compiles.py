"""Count what XLA compiles: how many programs and how long, from JAX's own monitoring events.

Invariant 6 (one compiled program per study shape) is a claim about compile counts; this makes it
measurable. Every program JAX hands to XLA records a ``/jax/core/compile/backend_compile_duration``
event (:mod:`jax.monitoring`); tracing and lowering record their own durations. Cached programs
record nothing.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from jaxprune import train
  >>> f = jax.jit(lambda x: x * 3 + 1)
  >>> x = jnp.arange(4.0)
  >>> with train.count_compiles() as c:
  ...     _ = f(x), f(x + 1)  # the second call and the eager add reuse or add programs
  >>> with train.count_compiles() as again:
  ...     _ = f(x), f(x + 1)
  >>> c.programs >= 1, again.programs  # everything is cached the second time
  (True, 0)
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import jax

__all__ = ["CompileCount", "count_compiles"]

_BACKEND = "/jax/core/compile/backend_compile_duration"
_COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    _BACKEND,
)


@dataclasses.dataclass(eq=False)  # counters are told apart by identity
class CompileCount:
    """Programs compiled by XLA and seconds spent tracing, lowering and compiling (live totals)."""

    programs: int = 0
    seconds: float = 0.0


_lock = threading.Lock()
_active: list[CompileCount] = []


def _listener(event: str, duration_secs: float, **_: str | int) -> None:
    if event not in _COMPILE_EVENTS:
        return
    with _lock:
        for c in _active:
            c.seconds += duration_secs
            c.programs += event == _BACKEND


@contextmanager
def count_compiles() -> Iterator[CompileCount]:
    """Count, inside the ``with`` block, the XLA programs compiled and the seconds it took.

    Nested and concurrent counters each see every compile made while they are open.
    """
    count = CompileCount()
    with _lock:
        first = not _active
        _active.append(count)
    if first:
        jax.monitoring.register_event_duration_secs_listener(_listener)
    try:
        yield count
    finally:
        with _lock:
            _active.remove(count)
            last = not _active
        if last:
            jax.monitoring.unregister_event_duration_listener(_listener)
