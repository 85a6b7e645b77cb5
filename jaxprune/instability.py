r"""Linear mode connectivity and instability (Frankle, Dziugaite, Roy & Carbin, ICML 2020).

From a network at step k — the dense network, or an IMP subnetwork (the weights at step k with
its mask) — train two copies with different SGD noise (data order, augmentation), then evaluate
the error along the straight line between the two trained copies:

.. math::

   \theta(\alpha) = (1 - \alpha)\,\theta_a + \alpha\,\theta_b, \qquad \alpha \in [0, 1]

   \mathrm{instability} = \max_\alpha \mathrm{err}(\theta(\alpha))
       - \tfrac12\big(\mathrm{err}(\theta_a) + \mathrm{err}(\theta_b)\big)

The paper evaluates 30 evenly spaced α (:func:`alphas`) and calls a network *stable* when its
instability is below 2%; IMP subnetworks reach the dense accuracy only when they are stable.

* :func:`interpolate` — the point θ(α) of two pytrees;
* :func:`path_errors` — error (1 − accuracy) of the masked network at every α, ``vmap``-ed over
  α (one compiled program for the whole path; also over tickets);
* :func:`instability` — the barrier of error curves (any leading axes);
* :func:`trajectory` — one training run, its full states kept at given steps (the spawn points);
* :func:`train_copies` — two copies of every spawn point, trained as tickets of one vmapped
  :func:`jaxprune.train.fit`, each with its own data order;
* :func:`analyse` — both, then the path errors and the instability of every spawn point;
* :func:`stop_after` — an optimizer that stops updating at a given step, so that copies spawned
  at different k all train "to completion" at the same final step in one fit.

**What a copy starts from.** A copy continues the full training state at step k — weights,
optimizer state (momentum, Adam moments, step count: a learning-rate schedule continues from k)
and, for batch-norm models, the running statistics. An IMP subnetwork starts from the same state
with its weights masked, :math:`\theta_k \odot m`.

**Batch norm.** For models with running statistics (stateful steps), the running statistics are
interpolated with the weights, :math:`s(\alpha) = (1-\alpha) s_a + \alpha s_b`, and θ(α) is
evaluated with them; they are not recomputed on training data. (Interpolated statistics can
overstate the barrier of batch-norm networks: the statistics of θ(α) are not the interpolation
of the end points' — recomputing them is the alternative, not done here.)

Example — a network and itself are connected by a flat path:
  >>> import jax, jax.numpy as jnp
  >>> from jaxprune import instability
  >>> def apply_fn(p, x):
  ...     return x @ p["w"]
  >>> params = {"w": jax.random.normal(jax.random.key(0), (4, 3))}
  >>> mask = {"w": jnp.ones((4, 3), bool)}
  >>> x, y = jax.random.normal(jax.random.key(1), (50, 4)), jnp.arange(50) % 3
  >>> err = instability.path_errors(apply_fn, params, params, mask, x, y, instability.alphas(5))
  >>> err.shape, float(instability.instability(err))
  ((5,), 0.0)
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

from jaxprune import _checks
from jaxprune import train as train_
from jaxprune._types import Array, Key, Mask, Params, PyTree

__all__ = [
    "Analysis",
    "alphas",
    "analyse",
    "instability",
    "interpolate",
    "path_errors",
    "stop_after",
    "train_copies",
    "trajectory",
]

STABLE = 0.02
"""The paper's threshold: a network whose instability is below 2% is *stable*."""

# Steps built for evaluation only (an apply_fn given to path_errors): one optimizer object, so
# that equal apply functions give equal steps and share the compiled path program.
_EVAL_ONLY = optax.identity()


def alphas(count: int = 30) -> np.ndarray:
    r"""``count`` evenly spaced interpolation points :math:`\alpha_i = i / (count - 1)`, from 0 to 1
    (the paper evaluates 30).

    Example:
      >>> from jaxprune import instability
      >>> instability.alphas(5).tolist()
      [0.0, 0.25, 0.5, 0.75, 1.0]
    """
    if isinstance(count, bool) or not isinstance(count, int | np.integer) or count < 2:
        raise ValueError(
            f"count (the number of α on the path) must be an int ≥ 2 (the two end points at "
            f"least), got {count!r}."
        )
    return np.linspace(0.0, 1.0, int(count), dtype=np.float32)


def interpolate(a: PyTree, b: PyTree, alpha: ArrayLike) -> PyTree:
    r"""The point :math:`(1 - \alpha)\,a + \alpha\,b` of the line between two pytrees, leafwise.

    Every leaf keeps ``a``'s dtype. ``alpha`` is a scalar (traced values welcome: :func:`jax.vmap`
    over it gives the whole path).

    Raises:
      ValueError: ``b`` has not ``a``'s structure and leaf shapes (the first differing path named).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import instability
      >>> a, b = {"w": jnp.array([0.0, 2.0])}, {"w": jnp.array([4.0, 2.0])}
      >>> instability.interpolate(a, b, 0.25)["w"].tolist()
      [1.0, 2.0]
    """
    _checks.check_like(b, a, name="b", ref_name="a")
    return jax.tree.map(lambda u, v: ((1 - alpha) * u + alpha * v).astype(u.dtype), a, b)


def instability(errors: ArrayLike) -> Array:
    r"""The error barrier of paths: :math:`\max_\alpha e(\alpha) - \tfrac12 (e(0) + e(1))`.

    ``errors[..., i]`` is the error at the ``i``-th α of a path that starts at α = 0 and ends at
    α = 1 (as :func:`alphas` gives them): the first and last entries are the end points. Leading
    axes (tickets, seeds) are kept.

    Example:
      >>> import numpy as np
      >>> from jaxprune import instability
      >>> errors = np.array([[0.10, 0.30, 0.12], [0.05, 0.05, 0.05]])
      >>> [round(float(v), 6) for v in instability.instability(errors)]
      [0.19, 0.0]
    """
    e = jnp.asarray(errors)
    if e.ndim < 1 or e.shape[-1] < 2:
        raise ValueError(
            f"errors must have a last axis of at least 2 α (the two end points), got shape "
            f"{list(e.shape)}."
        )
    return jnp.max(e, axis=-1) - 0.5 * (e[..., 0] + e[..., -1])


def _check_alphas(values: ArrayLike, *, ends: bool = False) -> jax.Array:
    """The α of a path as a float32 vector: at least 2, each in [0, 1] (and from 0 to 1 when
    ``ends``), checked before anything is trained or evaluated."""
    a = np.asarray(values, dtype=np.float64)
    if a.ndim != 1 or a.size < 2:
        raise ValueError(
            f"alphas must be a 1-D array of at least 2 interpolation points (the two end points "
            f"at least; the paper uses 30), got {a.size} of shape {list(a.shape)}."
        )
    bad = ~np.isfinite(a) | (a < 0) | (a > 1)
    if bad.any():
        raise ValueError(
            f"alphas must lie in [0, 1] (θ(α) = (1−α)·θ_a + α·θ_b between the two copies), got "
            f"{a[bad][:3].tolist()}."
        )
    if ends and (a[0] != 0.0 or a[-1] != 1.0):
        raise ValueError(
            f"alphas must start at 0 and end at 1 (the instability compares the path with its end "
            f"points, the two trained copies), got {a[0]:g} … {a[-1]:g}; use "
            "instability.alphas(count)."
        )
    return jnp.asarray(a, jnp.float32)


def _as_steps(steps_or_apply_fn: Any, stateful: bool) -> train_.Steps:
    if hasattr(steps_or_apply_fn, "eval_step"):
        return steps_or_apply_fn
    _checks.check_apply_fn(steps_or_apply_fn)
    return train_.make_steps(steps_or_apply_fn, _EVAL_ONLY, stateful=stateful)


@functools.partial(jax.jit, static_argnames=("steps", "eval_batch", "tickets"))
def _path(
    steps: train_.Steps, params_a: Params, params_b: Params, mask: Mask, frozen: PyTree | None,
    state_a: PyTree | None, state_b: PyTree | None, x: Array, y: Array, alphas: Array, *,
    eval_batch: int, tickets: bool,
) -> Array:  # fmt: skip
    def one(pa: Params, pb: Params, m: Mask, f: PyTree, sa: PyTree, sb: PyTree) -> Array:
        def at(alpha: Array) -> Array:
            ms = None if sa is None else interpolate(sa, sb, alpha)
            _, acc = train_.evaluate(
                steps, interpolate(pa, pb, alpha), m, f, x, y, eval_batch=eval_batch,
                model_state=ms,
            )  # fmt: skip
            return 1.0 - acc

        return jax.vmap(at)(alphas)

    if tickets:
        return jax.vmap(one)(params_a, params_b, mask, frozen, state_a, state_b)
    return one(params_a, params_b, mask, frozen, state_a, state_b)


def path_errors(
    steps_or_apply_fn: Any,
    params_a: Params,
    params_b: Params,
    mask: Mask,
    x: ArrayLike,
    y: ArrayLike,
    alphas: ArrayLike,
    *,
    model_state_a: PyTree | None = None,
    model_state_b: PyTree | None = None,
    frozen: PyTree | None = None,
    tickets: bool = False,
    eval_batch: int = 1000,
) -> Array:
    r"""Error :math:`1 - \mathrm{acc}(\theta(\alpha))` of the masked network at every α on ``(x, y)``.

    :math:`\theta(\alpha) = (1-\alpha)\theta_a + \alpha\theta_b` (:func:`interpolate`), evaluated
    as :func:`jaxprune.train.evaluate` does (the forward pass sees :math:`m \odot \theta(\alpha)`,
    plus :math:`(1-m) \odot` ``frozen`` when given). The α are a ``vmap`` axis: the whole path is
    one compiled program.

    Args:
      steps_or_apply_fn: :class:`jaxprune.train.Steps` (e.g. :func:`jaxprune.train.make_steps`),
        or a pure ``apply_fn(params, x) -> logits`` — with model states given, a stateful
        ``apply_fn(params, model_state, x, *, train)`` (:func:`jaxprune.models.stateful`).
      params_a, params_b: the two end points (same structure and shapes).
      mask: the mask both share.
      x, y: the evaluation split (inputs, integer labels).
      alphas: at least 2 points in [0, 1] (:func:`alphas`).
      model_state_a, model_state_b: the end points' running statistics (batch norm), interpolated
        like the weights (module docstring); both or neither.
      frozen: pruned-weight values for ``"forward"`` masking (``None``: zeros).
      tickets: every tree carries a leading ticket axis (one path per ticket).
      eval_batch: examples per evaluation batch.

    Returns:
      Errors of shape ``[len(alphas)]``, or ``[tickets, len(alphas)]``.

    Raises:
      ValueError: fewer than 2 α, an α outside [0, 1], end points or mask of another structure or
        shape, one model state without the other.
    """
    a = _check_alphas(alphas)
    _checks.check_like(params_b, params_a, name="params_b", ref_name="params_a")
    _checks.check_mask(mask, params_a)
    if (model_state_a is None) != (model_state_b is None):
        raise ValueError(
            "model_state_a and model_state_b must be given together (the running statistics of "
            f"both end points) or not at all, got {'only model_state_a' if model_state_b is None else 'only model_state_b'}."
        )
    if model_state_a is not None:
        _checks.check_like(
            model_state_b, model_state_a, name="model_state_b", ref_name="model_state_a"
        )
    steps = _as_steps(steps_or_apply_fn, stateful=model_state_a is not None)
    xs, ys = _checks.check_batch((x, y), name="(x, y)")
    _checks.check_positive_int(eval_batch, name="eval_batch")
    return _path(
        steps, params_a, params_b, mask, frozen, model_state_a, model_state_b, xs, ys, a,
        eval_batch=eval_batch, tickets=tickets,
    )  # fmt: skip


def stop_after(
    optimizer: optax.GradientTransformation, iterations: int
) -> optax.GradientTransformation:
    r"""``optimizer`` whose updates are multiplied by :math:`[t < T]` (t its own step count,
    T = ``iterations``): the weights stop changing after step T.

    Copies spawned at different k then all end at step T ("trained to completion") although one
    vmapped fit trains every ticket the same number of steps. The wrapper's state is part of the
    optimizer state, so the spawning run must use the wrapped optimizer too (it changes nothing
    before T). Batch-norm running statistics still follow the batches after T.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> from jaxprune import instability
      >>> opt = instability.stop_after(optax.sgd(1.0), 2)
      >>> p, s = jnp.zeros(()), opt.init(jnp.zeros(()))
      >>> for _ in range(4):
      ...     u, s = opt.update(jnp.ones(()), s)
      ...     p = optax.apply_updates(p, u)
      >>> float(p)
      -2.0
    """
    _checks.check_positive_int(iterations, name="iterations")
    return optax.chain(
        optimizer,
        optax.scale_by_schedule(optax.piecewise_constant_schedule(1.0, {iterations: 0.0})),
    )


def _check_steps_at(at: Sequence[int]) -> list[int]:
    ks = list(at)
    if not ks or any(
        isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 0 for k in ks
    ):
        raise ValueError(f"at must be a non-empty sequence of step counts ≥ 0, got {ks!r}.")
    if any(b <= a for a, b in itertools.pairwise(ks)):
        raise ValueError(f"at must be strictly increasing, got {ks!r}.")
    return [int(k) for k in ks]


def trajectory(
    steps: train_.Steps,
    state: train_.TrainState,
    mask: Mask,
    train: tuple[ArrayLike, ArrayLike],
    *,
    at: Sequence[int],
    batch_size: int,
    data_key: Key,
    frozen: PyTree | None = None,
    augment: Any | None = None,
) -> train_.TrainState:
    """One training run from ``state`` (one network), its full states kept at the steps ``at``.

    The run is trained in pieces between consecutive steps of ``at``, each piece starting at its
    global step (:func:`jaxprune.train.train_chunk` with ``start``), so every state is the one an
    uninterrupted run with ``data_key`` reaches at that step: the batch of step t is a pure
    function of ``data_key`` and t (:mod:`jaxprune.train.loop`), and so are its augmentations
    with ``augment`` (a :class:`jaxprune.data.Augment`; key ``fold_in(data_key, AUGMENT_STREAM)``,
    as :func:`jaxprune.train.fit` draws them by default). ``at`` = [0, …] keeps ``state``.

    Returns:
      The states at ``at``, stacked on a leading axis (params, optimizer state, step count, model
      state): spawn points for :func:`train_copies`.

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> from jaxprune import instability, train
      >>> steps = train.make_steps(lambda p, x: x @ p["w"], optax.sgd(0.1))
      >>> mask = {"w": jnp.ones((4, 3), bool)}
      >>> data = (jax.random.normal(jax.random.key(0), (40, 4)), jnp.arange(40) % 3)
      >>> states = instability.trajectory(steps, steps.init({"w": jnp.zeros((4, 3))}), mask,
      ...     data, at=[0, 3, 5], batch_size=8, data_key=jax.random.key(1))
      >>> states.step.tolist()
      [0, 3, 5]
    """
    ks = _check_steps_at(at)
    _checks.check_positive_int(batch_size, name="batch_size")
    _checks.check_mask(mask, state.params)
    _checks.check_keys(data_key, name="data_key", count=None)
    x, y = _checks.check_batch(train, name="train")
    if batch_size > x.shape[0]:
        raise ValueError(
            f"batch_size must be at most the {x.shape[0]} training examples, got {batch_size}."
        )
    kept, done = [], 0
    for k in ks:
        if k > done:
            state, _ = train_.train_chunk(
                steps, state, mask, frozen, x, y, data_key, jnp.int32(done), length=k - done,
                batch_size=batch_size, augment=augment,
            )  # fmt: skip
            done = k
        kept.append(state)
    return train_.stack(kept)


def _copy_keys(key: Key, n: int) -> Key:
    """Data keys of the ``2n`` copies: copy a of every spawn point first, then copy b."""
    _checks.check_keys(key, name="key", count=n)
    per = jnp.broadcast_to(key, (n,)) if np.shape(key) == () else key
    pairs = jax.vmap(jax.random.split)(per)  # [n, 2]
    return jnp.concatenate([pairs[:, 0], pairs[:, 1]])


def train_copies(
    steps: train_.Steps,
    state: train_.TrainState,
    mask: Mask,
    dataset: Any,
    *,
    iterations: int,
    batch_size: int,
    key: Key,
    frozen: PyTree | None = None,
    augment: Any | None = None,
    eval_every: int | None = None,
    progress: bool = False,
    desc: str = "copies",
    check_finite: bool = True,
) -> tuple[train_.TrainState, train_.TrainState, train_.History]:
    """Train two copies of every spawn point, all as tickets of one vmapped :func:`jaxprune.train.fit`.

    Args:
      steps: the training steps (stateful for batch-norm models).
      state: the spawn points, stacked on a leading axis of ``n`` (e.g. :func:`trajectory`'s
        states, their params masked for subnetworks): each copy continues its full state.
      mask: the masks, stacked likewise (both copies of a spawn point share its mask).
      dataset: a :class:`jaxprune.data.Dataset` (``train``, ``val``, ``test`` splits).
      iterations: training steps of every copy (see :func:`stop_after` for copies that must end
        at one global step).
      batch_size: examples per step.
      key: the copies' SGD noise. One key: every spawn point's copies a and b get the data keys
        ``split(key)`` (the same two data orders for every spawn point: differences between
        spawn points are not noise of the data order); one key per spawn point (shape ``[n]``):
        ``split(key[i])``.
      frozen: pruned-weight values for ``"forward"`` masking, stacked.
      augment: a :class:`jaxprune.data.Augment` passed to :func:`jaxprune.train.fit` (its key
        derived from each copy's data key), or ``None``.
      eval_every: steps between the fit's evaluations (default: once, at the end).
      progress, desc: the fit's progress bar.
      check_finite: as :func:`jaxprune.train.fit`.

    Returns:
      ``(copies_a, copies_b, history)``: the trained states of copies a and b, each stacked over
      the ``n`` spawn points, and the fit's :class:`jaxprune.train.History` over ``2n`` tickets
      (a first).
    """
    n = int(np.shape(state.step)[0]) if np.ndim(state.step) == 1 else 0
    if n == 0:
        raise ValueError(
            f"state must be spawn points stacked on a leading axis (state.step of shape [n]), got "
            f"state.step of shape {list(np.shape(state.step))}; stack them with train.stack."
        )
    data_keys = _copy_keys(key, n)

    def twice(tree: PyTree) -> PyTree:
        return jax.tree.map(lambda leaf: jnp.concatenate([leaf, leaf]), tree)

    extra: dict[str, Any] = {} if augment is None else {"augment": augment}
    both, hist = train_.fit(
        steps, twice(state), twice(mask), dataset.train, dataset.val, dataset.test,
        iterations=iterations, batch_size=batch_size, eval_every=eval_every or iterations,
        data_key=data_keys, frozen=None if frozen is None else twice(frozen), tickets=True,
        mesh=train_.mesh_for(2 * n), progress=progress, desc=desc, check_finite=check_finite,
        **extra,
    )  # fmt: skip
    both = jax.device_put(both, jax.devices()[0])
    a = jax.tree.map(lambda leaf: leaf[:n], both)
    b = jax.tree.map(lambda leaf: leaf[n:], both)
    return a, b, hist


class Analysis(NamedTuple):
    """What :func:`analyse` returns (host arrays; ``n`` spawn points, ``A`` interpolation points).

    ``errors[i, j]``: error of spawn point i's path at ``alphas[j]``; ``instability[i]``: its
    barrier; ``copies``: the trained states ``(a, b)``, each stacked over the spawn points.
    """

    alphas: np.ndarray
    errors: np.ndarray
    instability: np.ndarray
    copies: tuple[train_.TrainState, train_.TrainState]


def analyse(
    steps: train_.Steps,
    state: train_.TrainState,
    mask: Mask,
    dataset: Any,
    *,
    alphas: ArrayLike,
    iterations: int,
    batch_size: int,
    key: Key,
    split: str = "test",
    frozen: PyTree | None = None,
    augment: Any | None = None,
    eval_batch: int = 1000,
    progress: bool = False,
    desc: str = "copies",
) -> Analysis:
    """Instability analysis of every spawn point: :func:`train_copies`, then :func:`path_errors`
    on ``split`` (``"test"`` or ``"val"``) and :func:`instability`.

    ``alphas`` must run from 0 to 1 (the end points are the copies themselves); it is checked,
    with ``split``, before anything is trained. The other arguments are :func:`train_copies`'.

    Example — two copies of one LeNet-like MLP on digits, spawned at initialisation:
      >>> import jax, optax
      >>> from jaxprune import data, instability, masks, models, train
      >>> ds = data.load("digits")
      >>> apply_fn, params = models.functional(models.build("mlp", input_shape=ds.input_shape,
      ...     num_classes=10, hidden=(32,)))[:2]
      >>> steps = train.make_steps(apply_fn, optax.adam(1e-2))
      >>> spawn = train.stack([steps.init(params)])
      >>> out = instability.analyse(steps, spawn, train.stack([masks.ones(params)]), ds,
      ...     alphas=instability.alphas(5), iterations=50, batch_size=32, key=jax.random.key(0))
      >>> out.errors.shape, out.instability.shape
      ((1, 5), (1,))
    """
    a = _check_alphas(alphas, ends=True)
    if split not in ("test", "val"):
        raise ValueError(f"split must be 'test' or 'val', got {split!r}.")
    copy_a, copy_b, _ = train_copies(
        steps, state, mask, dataset, iterations=iterations, batch_size=batch_size, key=key,
        frozen=frozen, augment=augment, progress=progress, desc=desc,
    )  # fmt: skip
    x, y = getattr(dataset, split)
    stateful = bool(getattr(steps, "stateful", False))
    errors = path_errors(
        steps, copy_a.params, copy_b.params, mask, x, y, a, frozen=frozen, tickets=True,
        model_state_a=copy_a.model_state if stateful else None,
        model_state_b=copy_b.model_state if stateful else None, eval_batch=eval_batch,
    )  # fmt: skip
    host = np.asarray(errors)
    return Analysis(np.asarray(a), host, np.asarray(instability(host)), (copy_a, copy_b))
