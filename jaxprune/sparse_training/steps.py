r"""The training engine runs the sparse-training methods: :func:`make_steps` and :func:`train_tickets`.

:func:`make_steps` builds :class:`SparseSteps`, which follow :class:`jaxprune.train.Steps`, so
:func:`jaxprune.train.fit` trains any method of :mod:`jaxprune.sparse_training.core` — one ticket,
or many stacked and ``vmap``-ed, sharded over devices — with its mask updates inside the scanned
chunk. One step is the step of the drop-in API (a few lines in anyone's loop):

.. math::

   g = \nabla_w L(f(w)),\quad g \leftarrow \mathrm{gradients}(g),\quad
   w \leftarrow w + \mathrm{keep\_zero}(\mathrm{opt})(g;\ m),\quad
   (s, w, \mathrm{opt}) \leftarrow \mathrm{update}(s, w, g, \mathrm{opt})

with :math:`f` = ``forward_params`` (the masked weights; STE / SR-STE: straight through the mask),
``keep_zero`` keeping pruned weights exactly 0 (STE / SR-STE train their dense weights with the
plain optimizer), and ``update`` the method's mask update at its update steps (a ``lax.cond``: no
host sync, no recompile). The method's state lives in ``TrainState.sparse`` (a
:class:`~jaxprune.sparse_training.core.SparseState`): sparsity, drop fraction, ΔT, schedule and key
are arrays in it, so tickets with other values share one compiled program.

Under the engine's ticket ``vmap`` (axis :data:`jaxprune.train.loop.TICKET_AXIS`) ``update`` is
called with that ``axis_name``: the update branch runs at the steps where *some* ticket updates,
each ticket keeping its old values where its own schedule says no; one ticket alone (or tickets
in ``lax.map`` chunks, ``ticket_batch_size``) runs it only at its own update steps.

The ``mask`` that :func:`jaxprune.train.fit` passes (the *outer* mask) bounds the method: weights
outside it are never active: the optimizer (``keep_zero`` under the method's mask and the outer
one) sets them to 0 at the first step and keeps them there. (The zero-mode forward pass sees the
params themselves, so that first step's forward pass still sees weights outside the outer mask
that ``init`` left non-zero: pass params already zero there, ``masks.apply(params, mask)``, to
leave them out from the start. STE / SR-STE mask their forward pass by it at every step.) The method's counts are over all prunable weights, so pass
``masks.ones(params)`` (what :func:`train_tickets` does) for exact target counts; a partial outer
mask leaves fewer active weights than the target wherever the method picks weights outside it.

Example (RigL at 90% on an MLP, two steps):
  >>> import jax, jax.numpy as jnp, optax
  >>> from jaxprune import masks
  >>> from jaxprune.sparse_training import core, steps as sparse_steps
  >>> def apply_fn(p, x):
  ...     return jnp.tanh(x @ p["w1"]) @ p["w2"]
  >>> k1, k2 = jax.random.split(jax.random.key(0))
  >>> params = {"w1": jax.random.normal(k1, (8, 16)), "w2": jax.random.normal(k2, (16, 3))}
  >>> s = sparse_steps.make_steps(apply_fn, optax.adam(1e-2), core.method("rigl"))
  >>> state = s.init(params, key=jax.random.key(1), sparsity=0.9, delta_t=1, end=100)
  >>> batch = (jnp.ones((4, 8)), jnp.array([0, 1, 2, 0]))
  >>> for _ in range(2):
  ...     state, out = jax.jit(s.train_step)(state, masks.ones(params), batch)
  >>> int(masks.count(state.sparse.masks)), int(state.sparse.step)  # 10% of 176, every update
  (18, 2)
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh
from jax.typing import ArrayLike, DTypeLike

from jaxprune import _checks, masks, models
from jaxprune import train as train_
from jaxprune._types import Array, Key, Mask, Params, PyTree
from jaxprune.sparse_training import core
from jaxprune.train import loop, step

__all__ = ["SparseRun", "SparseSteps", "make_steps", "train_tickets"]


def _bound_ticket_axis() -> str | None:
    """The engine's ticket axis name when it is bound here (inside its ``vmap``), else ``None``.

    Decided at trace time: ``lax.axis_size`` raises ``NameError`` for an unbound axis name.
    """
    try:
        jax.lax.axis_size(loop.TICKET_AXIS)
    except NameError:
        return None
    return loop.TICKET_AXIS


def _and(a: Mask, b: Mask) -> Mask:
    return jax.tree.map(jnp.logical_and, a, b)


def _zero_outside(tree: PyTree, mask: Mask) -> PyTree:
    return jax.tree.map(lambda t, m: jnp.where(m, t, jnp.zeros_like(t)), tree, mask)


def make_steps(
    apply_fn: step.ApplyFn | step.StatefulApplyFn,
    optimizer: optax.GradientTransformation,
    method: core.Method,
    *,
    loss_fn: step.LossFn = step.cross_entropy,
    stateful: bool = False,
    compute_dtype: DTypeLike | None = None,
) -> SparseSteps:
    """Steps that train the weights with a sparse-training method: ``init``, ``train_step``,
    ``eval_step``, ``eval_params`` (the :class:`jaxprune.train.Steps` protocol).

    Args:
      apply_fn: ``apply_fn(params, x) -> logits`` (:func:`jaxprune.models.functional`), or with
        ``stateful=True`` ``apply_fn(params, model_state, x, *, train)`` (batch norm;
        :func:`jaxprune.models.stateful`).
      optimizer: any optax transformation; wrapped in
        :func:`~jaxprune.sparse_training.core.keep_zero` (pruned weights exactly 0, whatever it
        does) except for STE / SR-STE, which train dense weights with it as it is.
      method: a :class:`~jaxprune.sparse_training.core.Method` (``core.method("rigl", ...)``).
      loss_fn, stateful, compute_dtype: as in :func:`jaxprune.train.make_steps`.

    Returns:
      :class:`SparseSteps`: ``init(params, model_state=None, *, key, sparsity,
      drop_fraction=0.3, delta_t=100, begin=0, end=None)`` gives the :class:`~jaxprune.train.TrainState`
      with ``sparse`` = the method's state and the params zeroed outside its mask (STE / SR-STE:
      dense); ``train_step(state, mask, batch)`` one step (module docstring); ``eval_step`` as
      :func:`jaxprune.train.make_steps`'; ``eval_params(state)`` the params under the current mask.
      Equal when built from the same objects and options: they share compiled programs.

    Example:
      >>> import optax
      >>> from jaxprune.sparse_training import core, steps
      >>> def apply_fn(p, x):
      ...     return x @ p["w"]
      >>> opt, m = optax.sgd(0.1), core.method("set")
      >>> steps.make_steps(apply_fn, opt, m) == steps.make_steps(apply_fn, opt, m)
      True
    """
    return SparseSteps(apply_fn, optimizer, method, loss_fn, stateful, compute_dtype)


@dataclasses.dataclass(frozen=True)
class SparseSteps:
    """The :class:`~jaxprune.train.Steps` of :func:`make_steps`: weights trained by a
    sparse-training method, its state in ``TrainState.sparse``.

    A frozen dataclass of what it is built from (see :func:`make_steps`): equal, with equal hashes,
    when built from the same ``apply_fn``, optimizer object, method and options.
    """

    apply_fn: step.ApplyFn | step.StatefulApplyFn
    optimizer: optax.GradientTransformation
    method: core.Method
    loss_fn: step.LossFn = step.cross_entropy
    stateful: bool = False
    compute_dtype: DTypeLike | None = None
    # Derived (not compared: a function of the fields above).
    _masked: step.MaskedSteps = dataclasses.field(init=False, repr=False, compare=False)
    _tx: optax.GradientTransformation = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.method, core.Method):
            raise ValueError(
                "method must be a jaxprune.sparse_training.core.Method (core.method(name, ...)), "
                f"got {type(self.method).__name__}: {self.method!r}."
            )
        step.check_hashable(self.method, name="method")
        # MaskedSteps checks apply_fn, optimizer, loss_fn and compute_dtype.
        masked = step.make_steps(
            self.apply_fn,
            self.optimizer,
            mode="zero",
            loss_fn=self.loss_fn,
            stateful=self.stateful,
            compute_dtype=self.compute_dtype,
        )
        object.__setattr__(self, "compute_dtype", masked.compute_dtype)
        object.__setattr__(self, "_masked", masked)
        tx = self.optimizer if self.dense_weights else core.keep_zero(self.optimizer)
        object.__setattr__(self, "_tx", tx)

    @property
    def dense_weights(self) -> bool:
        """Whether the method keeps dense weights (STE / SR-STE) instead of zeroing pruned ones."""
        return core.METHODS[self.method.name].dense_weights

    def init(
        self,
        params: Params,
        model_state: PyTree | None = None,
        *,
        key: Key | None = None,
        sparsity: ArrayLike | None = None,
        drop_fraction: ArrayLike = 0.3,
        delta_t: ArrayLike = 100,
        begin: ArrayLike = 0,
        end: ArrayLike | None = None,
    ) -> step.TrainState:
        """The state at step 0: ``sparse`` = ``core.init(method, params, key, ...)``, the params
        zeroed outside its mask (STE / SR-STE: unchanged), the optimizer state of those params.

        ``key`` (required, typed) draws the method's random masks and regrowth; the numeric
        arguments may be traced (``jax.vmap`` over tickets). ``end`` is required by gradual, SET
        and RigL (``core.init``).
        """
        step.check_model_state(self.stateful, model_state, name="model_state")
        if key is None:
            raise ValueError(
                "key is required by sparse-training steps (random masks, SET's regrowth): pass "
                "key=jax.random.key(seed), one per ticket."
            )
        _checks.check_key(key)
        _checks.require(sparsity, name="sparsity", why="by sparse-training steps' init")
        _check_schedule(sparsity, drop_fraction, delta_t, begin, end)
        # Compiled once per method and shapes (core.init op by op compiles every small op).
        sp = _core_init(
            self.method,
            params,
            key,
            sparsity=sparsity,
            drop_fraction=drop_fraction,
            delta_t=delta_t,
            begin=begin,
            end=end,
        )
        if not self.dense_weights:
            params = core.apply(params, sp)
        return step.TrainState(
            params,
            self._tx.init(params),
            jnp.zeros((), jnp.int32),
            () if model_state is None else model_state,
            sp,
        )

    def _sparse_of(self, state: step.TrainState) -> core.SparseState:
        if not isinstance(state.sparse, core.SparseState):
            raise ValueError(
                "state.sparse must be the SparseState of a sparse-training method (build the "
                f"state with these steps' init), got {type(state.sparse).__name__}: a state of "
                "train.make_steps or supermask.make_steps cannot be trained by SparseSteps."
            )
        return state.sparse

    @staticmethod
    def _refuse_frozen(frozen: PyTree | None) -> None:
        if frozen is not None:
            raise ValueError(
                "frozen must be None for sparse-training steps: pruned weights are exactly 0 "
                "(or, for STE / SR-STE, dense weights outside the forward mask), never frozen "
                f"values; got a {type(frozen).__name__}."
            )

    def train_step(
        self, state: step.TrainState, mask: Mask, batch: step.Batch, frozen: PyTree | None = None
    ) -> tuple[step.TrainState, dict[str, Array]]:
        """One step: masked (or straight-through) forward, gradients, optimizer, mask update.

        ``mask`` is the outer mask (module docstring): weights outside it stay inactive and 0.
        """
        self._refuse_frozen(frozen)
        sp = self._sparse_of(state)
        x, y = batch

        def loss_of(params: Params) -> tuple[Array, PyTree]:
            seen = core.forward_params(self.method, sp, params)
            if self.dense_weights:  # zero-mode params are already 0 outside sp.masks & mask
                seen = _zero_outside(seen, mask)
            logits, model_state = self._masked._forward(seen, state.model_state, x, True)
            return self.loss_fn(logits, y), model_state

        (loss, model_state), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
        grads = core.gradients(self.method, sp, state.params, grads)
        if self.dense_weights:
            grads = _zero_outside(grads, mask)
            updates, opt_state = self._tx.update(grads, state.opt_state, state.params)
            params = _zero_outside(optax.apply_updates(state.params, updates), mask)
        else:
            tx = cast(optax.GradientTransformationExtraArgs, self._tx)
            updates, opt_state = tx.update(
                grads, state.opt_state, state.params, mask=_and(sp.masks, mask)
            )
            params = optax.apply_updates(state.params, updates)
        sp, params, opt_state = core.update(
            self.method, sp, params, grads, opt_state, axis_name=_bound_ticket_axis()
        )
        new = step.TrainState(params, opt_state, state.step + 1, model_state, sp)
        return new, {"loss": loss}

    def eval_step(
        self,
        params: Params,
        mask: Mask,
        batch: step.Batch,
        frozen: PyTree | None = None,
        valid: Array | None = None,
        *,
        model_state: PyTree | None = None,
    ) -> dict[str, Array]:
        """Summed cross-entropy ``loss`` and ``correct`` count of ``params`` under ``mask`` (as
        :func:`jaxprune.train.make_steps`'); give it :meth:`eval_params`."""
        self._refuse_frozen(frozen)
        return self._masked.eval_step(params, mask, batch, None, valid, model_state=model_state)

    def eval_params(self, state: step.TrainState) -> Params:
        """The network the state stands for: ``core.apply(state.params, state.sparse)`` (the
        weights zeroed outside the current mask; for STE / SR-STE the pruned dense weights).
        Elementwise, so it works on a stacked state too."""
        return core.apply(state.params, self._sparse_of(state))


class SparseRun(NamedTuple):
    """What :func:`train_tickets` returns, per ticket (sparsity-major order) where stacked.

    ``state``: the final stacked :class:`~jaxprune.train.TrainState` (``state.sparse.masks``:
    the final masks); ``history``: the :class:`~jaxprune.train.History` of the fit;
    ``sparsity``, ``seed``: the target sparsity and seed of each ticket; ``density``: the
    measured final density of each ticket's mask over the prunable leaves (numpy).
    """

    state: step.TrainState
    history: loop.History
    sparsity: np.ndarray
    seed: np.ndarray
    density: np.ndarray


_core_init = jax.jit(core.init, static_argnames=("method",))


def _check_schedule(
    sparsity: Any, drop_fraction: Any, delta_t: Any, begin: Any, end: Any, *, name: str = "sparsity"
) -> None:
    """``core.init``'s checks of the numeric arguments, on the concrete ones (under ``jit`` they
    are traced there); ``name``: what the sparsity is called."""
    _checks.check_in_range(sparsity, name=name)
    _checks.check_in_range(drop_fraction, name="drop_fraction")
    for name, value in (("delta_t", delta_t), ("begin", begin), ("end", end)):
        if value is None or _checks.is_traced(value):
            continue
        arr = np.asarray(value)
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{name} must be an int step count, got {value!r}.")
        if name == "delta_t" and np.any(arr < 1):
            raise ValueError(f"delta_t must be a positive number of steps, got {value!r}.")
    if not (end is None or _checks.is_traced(end) or _checks.is_traced(begin)):
        if not np.all(np.asarray(end) > np.asarray(begin)):
            raise ValueError(f"end must be > begin, got begin={begin!r} and end={end!r}.")


@functools.partial(jax.jit, static_argnames=("steps",))
def _init_tickets(
    steps: SparseSteps,
    params: Params,
    model_state: PyTree | None,
    keys: Key,
    sparsity: Array,
    drop_fraction: Array,
    delta_t: Array,
    begin: Array,
    end: Array,
) -> step.TrainState:
    """Every ticket's initial state, ``vmap``-ed over keys and per-ticket hyper-parameters (one
    compiled program for every value)."""

    def one(k: Key, s: Array, d: Array, t: Array) -> step.TrainState:
        return steps.init(
            params, model_state, key=k, sparsity=s, drop_fraction=d, delta_t=t, begin=begin, end=end
        )

    return jax.vmap(one)(keys, sparsity, drop_fraction, delta_t)


def _per_ticket(value: ArrayLike, n: int, dtype: Any, *, name: str) -> np.ndarray:
    """``value`` broadcast to one entry per ticket (a scalar, or exactly ``n`` values)."""
    arr = np.asarray(value)
    if arr.ndim == 0:
        arr = np.full((n,), arr)
    if arr.shape != (n,):
        raise ValueError(
            f"{name} must be one value or one per ticket ({n} = len(sparsities) · len(seeds), "
            f"sparsity-major), got shape {list(arr.shape)}."
        )
    return arr.astype(dtype)


def _model_parts(
    model_or_apply: nnx.Module | Callable[..., Any],
    params: Params | None,
    model_state: PyTree | None,
) -> tuple[Callable[..., Any], Params, PyTree | None, bool]:
    """``(apply_fn, params, model_state, stateful)`` from an NNX model or an apply function."""
    if isinstance(model_or_apply, nnx.Module):
        if params is not None or model_state is not None:
            raise ValueError(
                "params and model_state must be None when model_or_apply is a Flax NNX model "
                "(they are split from it), got "
                f"{'params' if params is not None else 'model_state'} as well."
            )
        if jax.tree.leaves(nnx.state(model_or_apply, nnx.BatchStat)):
            stateful_fn, params, model_state = models.stateful(model_or_apply)
            return stateful_fn, params, model_state, True
        plain_fn, params, _ = models.functional(model_or_apply)
        return plain_fn, params, None, False
    _checks.check_apply_fn(model_or_apply)
    if params is None:
        raise ValueError(
            "params is required with an apply function (model_or_apply is not an NNX model), "
            "got None."
        )
    return model_or_apply, params, model_state, model_state is not None


def train_tickets(
    model_or_apply: nnx.Module | Callable[..., Any],
    params: Params | None,
    method: core.Method | str,
    *,
    sparsities: Sequence[float],
    seeds: Sequence[int],
    data: Any,
    optimizer: optax.GradientTransformation,
    iterations: int,
    batch_size: int,
    eval_every: int,
    drop_fraction: ArrayLike = 0.3,
    delta_t: ArrayLike = 100,
    begin: int = 0,
    end: int | None = None,
    mesh: Mesh | None = None,
    progress: bool = True,
    model_state: PyTree | None = None,
) -> SparseRun:
    r"""Train one method at every sparsity × seed as ONE vmapped :func:`jaxprune.train.fit`.

    The tickets are the product of ``sparsities`` and ``seeds``, sparsity-major (ticket
    ``i·len(seeds) + j`` has ``sparsities[i]``, ``seeds[j]``). All start from the same weights;
    a ticket's seed ``r`` gives its method key ``fold_in(key(r), 0)`` (random masks, SET's
    regrowth) and its data order ``fold_in(key(r), 1)``. ``drop_fraction`` and ``delta_t`` are
    one value or one per ticket. The per-ticket values are arrays of the stacked
    :class:`~jaxprune.sparse_training.core.SparseState`, so other sparsities, seeds, drop
    fractions or ΔT reuse the compiled programs.

    Args:
      model_or_apply: a Flax NNX model (split with :func:`jaxprune.models.functional`, or
        :func:`jaxprune.models.stateful` when it has batch norm; ``params`` must then be
        ``None``), or a pure ``apply_fn(params, x)`` (with ``model_state``: the stateful
        ``apply_fn(params, model_state, x, *, train)``).
      params: the initial params for an apply function; ``None`` for a model.
      method: a :class:`~jaxprune.sparse_training.core.Method` or a method name.
      sparsities, seeds: the target sparsities and the seeds (non-empty).
      data: a :class:`jaxprune.data.Dataset` (``train``, ``val``, ``test`` ``(x, y)`` splits).
      optimizer, iterations, batch_size, eval_every, mesh, progress: as in
        :func:`jaxprune.train.fit` (``mesh``: the tickets are sharded over it, so their number
        must be a multiple of its devices).
      drop_fraction, delta_t, begin, end: the method's schedule (``core.init``); ``end=None``
        means ``iterations``.
      model_state: the running statistics of a stateful apply function.

    Returns:
      :class:`SparseRun`: final state, history, each ticket's sparsity, seed and measured
      density :math:`\sum_{\ell\ \mathrm{prunable}} |m_\ell| / \sum_{\ell\ \mathrm{prunable}} n_\ell`.

    Example:
      >>> import optax
      >>> from jaxprune import data, models
      >>> from jaxprune.sparse_training import steps
      >>> net = models.build("mlp", input_shape=(8, 8, 1), num_classes=4)
      >>> run = steps.train_tickets(
      ...     net, None, "set", sparsities=[0.5, 0.8], seeds=[0, 1], data=data.load("synthetic"),
      ...     optimizer=optax.adam(1e-2), iterations=20, batch_size=32, eval_every=10,
      ...     delta_t=5, progress=False)
      >>> run.sparsity.tolist(), run.seed.tolist(), run.history.val_acc.shape
      ([0.5, 0.5, 0.8, 0.8], [0, 1, 0, 1], (4, 2))
      >>> [round(float(d), 2) for d in run.density]
      [0.5, 0.5, 0.2, 0.2]
    """
    if isinstance(method, str):
        method = core.method(method)
    for name, values in (("sparsities", sparsities), ("seeds", seeds)):
        if len(values) == 0:
            raise ValueError(f"{name} must hold at least one value, got an empty sequence.")
    for r in seeds:
        _checks.check_nonnegative_int(r, name="seeds' entries")
    splits = {}
    for name in ("train", "val", "test"):
        if not hasattr(data, name):
            raise ValueError(
                f"data must be a jaxprune.data.Dataset (with train, val and test splits), got "
                f"{type(data).__name__} without {name!r}."
            )
        splits[name] = tuple(getattr(data, name))
    apply_fn, params, model_state, stateful = _model_parts(model_or_apply, params, model_state)
    steps = make_steps(apply_fn, optimizer, method, stateful=stateful)

    grid = list(itertools.product(sparsities, seeds))
    n = len(grid)
    sparsity = np.array([s for s, _ in grid], np.float64)
    seed = np.array([r for _, r in grid], np.int64)
    base = jnp.stack([jax.random.key(int(r)) for r in seed])
    method_keys = jax.vmap(lambda k: jax.random.fold_in(k, 0))(base)
    data_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(base)
    end = iterations if end is None else end
    drop = _per_ticket(drop_fraction, n, np.float32, name="drop_fraction")
    every = _per_ticket(delta_t, n, np.int32, name="delta_t")
    # Checked here, concretely: core.init sees them traced under the vmapped init.
    _check_schedule(sparsity, drop, np.asarray(delta_t), begin, end, name="sparsities")
    state = _init_tickets(
        steps,
        params,
        model_state,
        method_keys,
        jnp.asarray(sparsity, jnp.float32),
        jnp.asarray(drop),
        jnp.asarray(every),
        jnp.asarray(begin, jnp.int32),
        jnp.asarray(end, jnp.int32),
    )
    outer = jax.tree.map(lambda p: jnp.ones(p.shape, bool), state.params)
    state, history = train_.fit(
        steps,
        state,
        outer,
        splits["train"],
        splits["val"],
        splits["test"],
        iterations=iterations,
        batch_size=batch_size,
        eval_every=eval_every,
        data_key=data_keys,
        tickets=True,
        mesh=mesh,
        progress=progress,
        desc=f"{method.name} ×{n}",
    )
    prunable = masks.prunable_leaves(params, method.prunable)
    flags = jax.tree.leaves(masks.is_prunable(params, method.prunable))
    kept = [m for m, f in zip(jax.tree.leaves(state.sparse.masks), flags, strict=True) if f]
    counts = np.sum([np.asarray(m).reshape(n, -1).sum(1) for m in kept], axis=0)
    total = sum(int(np.size(p)) for p in prunable.values())
    return SparseRun(state, history, sparsity, seed, counts / total)
