"""Process setup for entry points: host devices for the ticket axis, and the compilation cache.

On a CPU, XLA sees one device by default and runs a vmapped ticket batch on it. Splitting the CPU
into several *host devices* and sharding the ticket axis over them is the largest CPU speed-up
measured for small models (``../shared/PERFORMANCE.md``: 1.3–2.4× for LeNet tickets), and it is
exactly the code path that spreads tickets over the chips of a GPU or TPU machine.

The count must be chosen before JAX starts its backend (its first computation), so it cannot be
a side effect of importing a library module: the entry points — the studies' ``main``, the
benchmarks, the test suite's ``conftest.py`` — call :func:`use_host_devices` first thing.

The rule: ``count`` host devices when given, else one per CPU core (``os.cpu_count()``). A count
already set by the user wins — ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` or
``jax.config.update("jax_num_cpu_devices", N)`` — and so does a backend that has already started
(nothing can change it then); both are reported, not overridden. Only the CPU platform is split:
on a GPU or TPU machine the real chips are the devices.

:func:`use_compile_cache` turns on JAX's persistent compilation cache, so that a study run again
(other seeds, rates or levels of the same shapes, or a resumed run) loads its XLA programs from
disk instead of compiling them: on this 2-core machine the Deconstructing quick preset spends
about 25 s compiling when cold and a few seconds when warm.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
from jax.sharding import Mesh

from jaxprune.train import loop

__all__ = ["mesh_for", "use_compile_cache", "use_host_devices"]

_FLAG = "xla_force_host_platform_device_count"


def _backend_started() -> bool:
    from jax._src import xla_bridge  # no public way to ask without starting it

    return bool(xla_bridge.backends_are_initialized())


def use_host_devices(count: int | None = None) -> int:
    """Ask XLA for ``count`` host (CPU) devices, default one per core; returns what was asked.

    Call it before the first JAX computation. Returns the count in force: the one asked for, the
    user's own setting (``XLA_FLAGS`` or ``jax_num_cpu_devices``, which win), or — when the
    backend has already started — ``jax.local_device_count()``.

    Example:
      >>> from jaxprune import train
      >>> train.use_host_devices() >= 1  # in a test run the suite has already chosen 8
      True
    """
    if count is not None and (not isinstance(count, int) or count < 1):
        raise ValueError(f"count must be a positive integer or None, got {count!r}.")
    if _backend_started():
        return jax.local_device_count()
    flags = os.environ.get("XLA_FLAGS", "")
    if _FLAG in flags:
        value = flags.split(_FLAG + "=", 1)[1].split()[0]
        return int(value) if value.isdigit() else 1
    chosen = int(getattr(jax.config, "jax_num_cpu_devices"))  # noqa: B009 (untyped in jax's stubs)
    if chosen > 0:
        return chosen
    wanted = count if count is not None else max(os.cpu_count() or 1, 1)
    jax.config.update("jax_num_cpu_devices", wanted)
    return wanted


def mesh_for(n: int, devices: Sequence[Any] | None = None) -> Mesh | None:
    """A ticket mesh over the most devices that divide ``n`` tickets, or ``None`` for one device.

    Example:
      >>> import jax
      >>> from jaxprune import train
      >>> train.mesh_for(1) is None  # one ticket: no mesh
      True
      >>> m = train.mesh_for(jax.device_count() * 3)  # every device gets 3 tickets
      >>> m is None or m.devices.size == jax.device_count()
      True
    """
    if n < 1:
        raise ValueError(f"n (the number of tickets) must be positive, got {n}.")
    devs = list(jax.devices() if devices is None else devices)
    d = max(k for k in range(1, len(devs) + 1) if n % k == 0)
    return None if d == 1 else loop.ticket_mesh(devs[:d])


def use_compile_cache(directory: str | os.PathLike[str] | None = None) -> Path | None:
    """Keep compiled XLA programs on disk and reuse them in later runs; returns the folder.

    The folder: ``directory`` when given, else ``$JAXPRUNE_COMPILE_CACHE``, else
    ``$XDG_CACHE_HOME/jaxprune/xla`` (``~/.cache/jaxprune/xla``). ``JAXPRUNE_COMPILE_CACHE=off``
    (or ``0``, ``none``) turns it off and returns ``None``; a cache folder the user already gave
    JAX (``JAX_COMPILATION_CACHE_DIR``) wins. Every program is cached, however fast it compiled:
    on a CPU most of a short study's compile time is many small programs. Entries are keyed by
    the program, the compile options, the JAX version and the device, so a stale entry is never
    used.

    Example (a test suite keeps it off, as ``tests/conftest.py`` does):
      >>> import os
      >>> from jaxprune import train
      >>> os.environ["JAXPRUNE_COMPILE_CACHE"] = "off"
      >>> train.use_compile_cache() is None
      True
    """
    given = os.environ.get("JAXPRUNE_COMPILE_CACHE", "")
    if directory is None and given.lower() in ("off", "0", "none", "false"):
        return None
    current = getattr(jax.config, "jax_compilation_cache_dir")  # noqa: B009
    if current:
        return Path(current)
    if directory is None:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        directory = given or os.path.join(base, "jaxprune", "xla")
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return path
