"""Pure masked train and eval steps: ``train_step(state, mask, batch)`` and ``eval_step(...)``.

Two masking modes (ARCHITECTURE invariant 5):

* ``"zero"`` — pruned weights are exactly 0 and stay 0. Gradients are masked before the optimizer
  (so no momentum or Adam moment ever builds up on a pruned weight) and updates and params are
  masked after it (so weight decay and any other transformation cannot revive one). The forward
  pass uses the params as they are: no extra work per step.
* ``"forward"`` — the forward pass uses :math:`m \\odot w + (1 - m) \\odot w_{frozen}`, so pruned
  weights can hold a frozen non-zero value (freeze-at-init variants, supermasks). Gradients reach
  only the kept weights; updates are masked the same way.

The mask (and ``frozen``) is an argument of every step, never hidden in optimizer state, so one
compiled step serves every mask, and rewinding is just passing other params.

Every kind of steps follows one protocol, :class:`Steps` (what :func:`jaxprune.train.fit` calls):
:func:`make_steps` builds :class:`MaskedSteps`, which train the weights;
:func:`jaxprune.supermask.make_steps` builds steps that train a mask over frozen weights. Steps
are frozen dataclasses equal when built from the same things, so that equal steps, passed to the
engine as a static jit argument, reuse its compiled programs.

Models with state (batch norm): build the steps with ``stateful=True`` from
``apply_fn(params, model_state, x, *, train) -> (logits, new_model_state)`` (e.g.
:func:`jaxprune.models.stateful`). The running statistics then live in
``TrainState.model_state``: ``train_step`` runs the model in training mode (batch statistics) and
keeps the updated running statistics; ``eval_step(..., model_state=)`` runs it in evaluation mode
(running statistics). Masks cover ``params`` only; the model state is never masked or optimised.

Example:
  >>> import jax, jax.numpy as jnp, optax
  >>> from jaxprune import masks
  >>> from jaxprune.train import step
  >>> def apply_fn(p, x):
  ...     return x @ p["w"]
  >>> params = {"w": jnp.ones((3, 2))}
  >>> steps = step.make_steps(apply_fn, optax.sgd(0.1))
  >>> mask = {"w": jnp.array([[True, False], [True, True], [False, True]])}
  >>> state = steps.init(masks.apply(params, mask))
  >>> batch = (jnp.ones((4, 3)), jnp.array([0, 1, 0, 1]))
  >>> state, metrics = steps.train_step(state, mask, batch)
  >>> bool(jnp.all(jnp.where(mask["w"], True, state.params["w"] == 0)))
  True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Literal, NamedTuple, Protocol, cast

import jax
import jax.numpy as jnp
import optax
from jax.typing import DTypeLike

from jaxprune import _checks
from jaxprune._types import Array, Key, Mask, Params, PyTree

__all__ = [
    "MODES",
    "Batch",
    "MaskedSteps",
    "StatefulApplyFn",
    "Steps",
    "TrainState",
    "check_hashable",
    "check_model_state",
    "cross_entropy",
    "effective_params",
    "make_steps",
    "summed_eval",
]

MODES = ("zero", "forward")
Mode = Literal["zero", "forward"]
Batch = tuple[Array, Array]
ApplyFn = Callable[[Params, Array], Array]
StatefulApplyFn = Callable[..., tuple[Array, PyTree]]
"""``apply_fn(params, model_state, x, *, train: bool) -> (logits, new_model_state)``."""
LossFn = Callable[[Array, Array], Array]


class TrainState(NamedTuple):
    """What changes during training, for one ticket (or, stacked, for many).

    ``model_state`` is the model's non-trained state — batch-norm running statistics — or ``()``
    for a model without any (the default, so ``TrainState(params, opt_state, step)`` still works).
    ``sparse`` is the state of a sparse-training method (the
    :class:`jaxprune.sparse_training.SparseState` of
    :func:`jaxprune.sparse_training.make_steps`: its current mask, schedule and key), ``()`` for
    every other kind of steps.
    """

    params: Params
    opt_state: optax.OptState
    step: Array
    model_state: PyTree = ()
    sparse: PyTree = ()


class Steps(Protocol):
    """The protocol of every kind of training steps: what :func:`jaxprune.train.fit`,
    :func:`~jaxprune.train.train_chunk` and :func:`~jaxprune.train.evaluate` call.

    * ``init(params, model_state=None, *, key=None) -> TrainState``: the state of one ticket.
      ``model_state`` is the model's running statistics (required by stateful steps, ``None`` or
      empty otherwise); ``key`` the randomness of steps that draw it (supermask samples), given
      exactly when the steps use one — steps that draw none raise if given a key, steps that do
      raise without one, so a key is never silently unused.
    * ``train_step(state, mask, batch, frozen=None) -> (state, {"loss": ...})``: one step.
    * ``eval_step(params, mask, batch, frozen=None, valid=None, *, model_state=None)``:
      ``{"loss": ..., "correct": ...}``, sums over the rows where ``valid``.
    * ``eval_params(state) -> Params``: the params that ``eval_step`` evaluates for ``state``
      (what :func:`jaxprune.train.fit` evaluates): ``state.params`` for the masked and supermask
      steps, the params under the current sparse mask for sparse-training steps. It must work on a
      stacked state too (elementwise, or ``state.params`` itself).
    * ``stateful``: whether the engine must pass ``model_state=`` to ``eval_step``.

    Steps are passed to the engine as a static jit argument, so they must be hashable, and equal
    exactly when they compute the same thing: the steps here are frozen dataclasses of what they
    were built from (apply function, optimizer object, options), so two constructions from the
    same objects are equal and share compiled programs. (optax transformations are closures:
    build the optimizer once and reuse the object.)

    Example:
      >>> import optax
      >>> from jaxprune import train
      >>> def apply_fn(p, x):
      ...     return x @ p["w"]
      >>> opt = optax.sgd(0.1)
      >>> train.make_steps(apply_fn, opt) == train.make_steps(apply_fn, opt)
      True
      >>> train.make_steps(apply_fn, opt) == train.make_steps(apply_fn, optax.sgd(0.1))
      False
    """

    @property
    def stateful(self) -> bool: ...

    def init(
        self, params: Params, model_state: PyTree | None = None, *, key: Key | None = None
    ) -> TrainState: ...

    def train_step(
        self, state: TrainState, mask: Mask, batch: Batch, frozen: PyTree | None = None
    ) -> tuple[TrainState, dict[str, Array]]: ...

    def eval_step(
        self,
        params: Params,
        mask: Mask,
        batch: Batch,
        frozen: PyTree | None = None,
        valid: Array | None = None,
        *,
        model_state: PyTree | None = None,
    ) -> dict[str, Array]: ...

    def eval_params(self, state: TrainState) -> Params: ...


def cross_entropy(logits: Array, labels: Array) -> Array:
    r"""Mean softmax cross-entropy with integer labels.

    .. math:: -\frac{1}{B}\sum_b \log \mathrm{softmax}(z_b)_{y_b}

    With sequence targets (logits ``(B, T, V)``, labels ``(B, T)``) the mean runs over every
    position of every example: the mean token cross-entropy.
    """
    return jnp.mean(optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels))


def effective_params(
    params: Params, mask: Mask, frozen: PyTree | None = None, mode: Mode = "zero"
) -> Params:
    r"""The weights the forward pass sees.

    ``zero``: ``params`` unchanged (they are already 0 where pruned). ``forward``:
    :math:`m \odot w + (1-m) \odot w_{frozen}` (``frozen=None`` means zeros).
    """
    if mode == "zero":
        return params
    if frozen is None:
        return jax.tree.map(lambda p, m: jnp.where(m, p, jnp.zeros_like(p)), params, mask)
    return jax.tree.map(lambda p, m, f: jnp.where(m, p, f.astype(p.dtype)), params, mask, frozen)


def check_model_state(stateful: bool, model_state: PyTree | None, *, name: str) -> None:
    """Raise unless ``model_state`` suits steps built with ``stateful``.

    Stateful steps need it (the batch-norm running statistics); other steps take ``None`` or an
    empty tree.
    """
    if stateful and model_state is None:
        raise ValueError(
            f"{name} is required for steps built with stateful=True (the batch-norm running "
            "statistics: the third value of jaxprune.models.stateful(model), or "
            "state.model_state), got None."
        )
    if not stateful and model_state is not None and jax.tree.leaves(model_state):
        raise ValueError(
            f"{name} must be None or empty for steps built with stateful=False, got a tree with "
            f"{len(jax.tree.leaves(model_state))} leaves; build the steps with "
            "make_steps(..., stateful=True) from jaxprune.models.stateful(model)."
        )


def check_hashable(value: object, *, name: str) -> None:
    """Raise unless ``value`` is hashable: what steps are built from is part of a static jit
    argument (the steps), hashed to find the compiled program.

    Example:
      >>> check_hashable(["kernel"], name="prunable")
      Traceback (most recent call last):
      ...
      ValueError: prunable must be hashable (steps are a static jit argument, hashed to find the compiled program), got ['kernel'] of type list.
    """
    try:
        hash(value)
    except TypeError:
        raise ValueError(
            f"{name} must be hashable (steps are a static jit argument, hashed to find the "
            f"compiled program), got {value!r} of type {type(value).__name__}."
        ) from None


def _cast_floats(tree: PyTree, dtype: DTypeLike) -> PyTree:
    """Floating leaves cast to ``dtype``; others (token ids, counts) unchanged."""
    return jax.tree.map(
        lambda a: a.astype(dtype) if jnp.issubdtype(jnp.result_type(a), jnp.floating) else a, tree
    )


def _mask_tree(tree: PyTree, mask: Mask) -> PyTree:
    return jax.tree.map(lambda t, m: jnp.where(m, t, jnp.zeros_like(t)), tree, mask)


def make_steps(
    apply_fn: ApplyFn | StatefulApplyFn,
    optimizer: optax.GradientTransformation,
    *,
    mode: Mode = "zero",
    loss_fn: LossFn = cross_entropy,
    stateful: bool = False,
    compute_dtype: DTypeLike | None = None,
) -> MaskedSteps:
    """Steps that train the weights under a mask: ``init``, ``train_step`` and ``eval_step``.

    Args:
      apply_fn: pure ``apply_fn(params, x) -> logits`` (e.g. from
        :func:`jaxprune.models.functional`), or with ``stateful=True``
        ``apply_fn(params, model_state, x, *, train) -> (logits, new_model_state)`` (e.g. from
        :func:`jaxprune.models.stateful`).
      optimizer: any optax transformation (Adam, SGD with momentum, weight decay, schedules...).
      mode: ``"zero"`` or ``"forward"`` (see the module docstring).
      loss_fn: ``loss_fn(logits, labels) -> scalar``; default :func:`cross_entropy`.
      stateful: whether ``apply_fn`` has the stateful signature (models with batch norm).
      compute_dtype: mixed precision, e.g. ``jnp.bfloat16``: the forward and backward passes
        (training and evaluation) run on the floating params and inputs cast to this dtype, and
        the logits are cast back to float32 for the loss. The params, the gradients handed to
        the optimizer (the cast's derivative returns them in the params' dtype) and the optimizer
        state stay in the params' dtype (float32 master weights); the model state (batch-norm
        statistics) keeps its dtype. ``None``: no cast.

    Returns:
      :class:`MaskedSteps`, following the :class:`Steps` protocol. ``init(params,
      model_state=None)`` (``model_state`` required when ``stateful``; no ``key``: these steps
      draw no random numbers) gives the :class:`TrainState`. ``train_step`` returns
      ``(new_state, {"loss": ...})``, the model run with ``train=True`` and
      ``new_state.model_state`` its updated state. ``eval_step(params, mask, batch, frozen=None,
      valid=None, *, model_state=None)`` runs it with ``train=False`` and returns the summed
      softmax cross-entropy ``loss`` and ``correct`` count over the batch rows where ``valid``
      (sums, so that the batches of an evaluation add up exactly; the eval loss is cross-entropy
      whatever ``loss_fn`` is). Two calls with the same ``apply_fn`` and optimizer object and
      equal options give equal steps, which share compiled programs.

    Example (``stateful=True``; a toy model whose state is a running mean of its inputs, as batch
    norm keeps one):
      >>> import jax.numpy as jnp, optax
      >>> def apply_fn(p, s, x, *, train):
      ...     mean = jnp.mean(x, 0) if train else s["mean"]
      ...     new = {"mean": 0.9 * s["mean"] + 0.1 * jnp.mean(x, 0)} if train else s
      ...     return (x - mean[None]) @ p["w"], new
      >>> steps = make_steps(apply_fn, optax.sgd(0.1), stateful=True)
      >>> state = steps.init({"w": jnp.ones((3, 2))}, {"mean": jnp.zeros(3)})
      >>> mask, batch = {"w": jnp.ones((3, 2), bool)}, (jnp.ones((4, 3)), jnp.array([0, 1, 0, 1]))
      >>> state, _ = steps.train_step(state, mask, batch)
      >>> state.model_state["mean"]
      Array([0.1, 0.1, 0.1], dtype=float32)
      >>> sorted(steps.eval_step(state.params, mask, batch, model_state=state.model_state))
      ['correct', 'loss']
    """
    return MaskedSteps(apply_fn, optimizer, mode, loss_fn, stateful, compute_dtype)


@dataclasses.dataclass(frozen=True)
class MaskedSteps:
    """The :class:`Steps` of :func:`make_steps`: the weights trained under a mask.

    A frozen dataclass of what it is built from (see :func:`make_steps` for the fields): equal,
    with equal hashes, when built from the same ``apply_fn``, optimizer object and options.
    """

    apply_fn: ApplyFn | StatefulApplyFn
    optimizer: optax.GradientTransformation
    mode: Mode = "zero"
    loss_fn: LossFn = cross_entropy
    stateful: bool = False
    compute_dtype: DTypeLike | None = None

    def __post_init__(self) -> None:
        _checks.check_choice(self.mode, MODES, name="mode")
        for name in ("apply_fn", "optimizer", "loss_fn"):
            check_hashable(getattr(self, name), name=name)
        if self.compute_dtype is not None:
            # One canonical value (np.dtype), so jnp.bfloat16 and "bfloat16" give equal steps.
            dtype = jnp.dtype(self.compute_dtype)
            if not jnp.issubdtype(dtype, jnp.floating):
                raise ValueError(
                    "compute_dtype must be a floating dtype (e.g. jnp.bfloat16) or None, got "
                    f"{self.compute_dtype!r}."
                )
            object.__setattr__(self, "compute_dtype", dtype)

    def _forward(
        self, params: Params, model_state: PyTree, x: Array, train: bool
    ) -> tuple[Array, PyTree]:
        if self.compute_dtype is not None:
            params, x = _cast_floats((params, x), self.compute_dtype)
        if self.stateful:
            logits, new_state = cast(StatefulApplyFn, self.apply_fn)(
                params, model_state, x, train=train
            )
            if self.compute_dtype is not None:
                # The running statistics keep their dtype (the scan's carry must not change).
                new_state = jax.tree.map(
                    lambda n, o: n.astype(jnp.result_type(o)), new_state, model_state
                )
        else:
            logits = cast(ApplyFn, self.apply_fn)(params, x)
            new_state = model_state
        if self.compute_dtype is not None:
            logits = logits.astype(jnp.float32)
        return logits, new_state

    def init(
        self, params: Params, model_state: PyTree | None = None, *, key: Key | None = None
    ) -> TrainState:
        """The :class:`TrainState` at step 0; ``key`` must be ``None`` (nothing is sampled)."""
        if key is not None:
            raise ValueError(
                "key must be None for the steps of train.make_steps: they draw no random "
                f"numbers, so a key would go unused (got {key!r}); keys are for steps that "
                "sample, e.g. supermask.make_steps'."
            )
        check_model_state(self.stateful, model_state, name="model_state")
        return TrainState(
            params,
            self.optimizer.init(params),
            jnp.zeros((), jnp.int32),
            () if model_state is None else model_state,
        )

    def _loss(
        self, params: Params, model_state: PyTree, mask: Mask, frozen: PyTree | None, batch: Batch
    ) -> tuple[Array, PyTree]:
        x, y = batch
        eff = effective_params(params, mask, frozen, self.mode)
        logits, model_state = self._forward(eff, model_state, x, True)
        return self.loss_fn(logits, y), model_state

    def train_step(
        self, state: TrainState, mask: Mask, batch: Batch, frozen: PyTree | None = None
    ) -> tuple[TrainState, dict[str, Array]]:
        """One step on ``batch``: masked gradients, optimizer, masked updates (module docstring)."""
        (loss, model_state), grads = jax.value_and_grad(self._loss, has_aux=True)(
            state.params, state.model_state, mask, frozen, batch
        )
        grads = _mask_tree(grads, mask)
        updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, _mask_tree(updates, mask))
        if self.mode == "zero":
            # Exactly zero, whatever the optimizer did (e.g. decoupled weight decay).
            params = _mask_tree(params, mask)
        return TrainState(params, opt_state, state.step + 1, model_state), {"loss": loss}

    def eval_step(
        self,
        params: Params,
        mask: Mask,
        batch: Batch,
        frozen: PyTree | None = None,
        valid: Array | None = None,
        *,
        model_state: PyTree | None = None,
    ) -> dict[str, Array]:
        """Summed cross-entropy ``loss`` and ``correct`` count over the rows where ``valid``."""
        check_model_state(self.stateful, model_state, name="model_state")
        x, y = batch
        # Evaluation always sees m·w + (1-m)·frozen (frozen=None: zeros), so an untrained or
        # unmasked params tree evaluates as the masked network it stands for.
        eff = effective_params(params, mask, frozen, "forward")
        logits, _ = self._forward(eff, model_state, x, False)
        return summed_eval(logits, y, valid)

    def eval_params(self, state: TrainState) -> Params:
        """The params :func:`jaxprune.train.fit` evaluates: ``state.params`` (the mask and
        ``frozen`` are applied by :meth:`eval_step`)."""
        return state.params


def summed_eval(logits: Array, labels: Array, valid: Array | None = None) -> dict[str, Array]:
    r"""Summed softmax cross-entropy ``loss`` and ``correct`` count over the rows where ``valid``.

    Sums over examples, not means, so that the batches of an evaluation add up exactly. An
    example with sequence targets (logits ``(B, T, V)``, labels ``(B, T)``; any trailing axes)
    counts once, by the mean over its positions:

    .. math:: \text{loss} = \sum_b v_b \frac{1}{T}\sum_t -\log \mathrm{softmax}(z_{bt})_{y_{bt}},
       \qquad \text{correct} = \sum_b v_b \frac{1}{T}\sum_t [\arg\max z_{bt} = y_{bt}]

    so an evaluation's mean loss is the mean token cross-entropy and its accuracy the token
    accuracy (every window having ``T`` tokens).

    Example:
      >>> import jax.numpy as jnp
      >>> out = summed_eval(jnp.array([[2.0, 0.0], [0.0, 2.0]]), jnp.array([0, 0]))
      >>> float(out["correct"])
      1.0
      >>> seq = jnp.array([[[2.0, 0.0], [0.0, 2.0]], [[2.0, 0.0], [2.0, 0.0]]])  # (B, T, V)
      >>> float(summed_eval(seq, jnp.array([[0, 0], [0, 0]]))["correct"])  # 1/2 + 2/2
      1.5
    """
    losses = optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels)
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    if losses.ndim > 1:  # sequence targets: each example's mean over its positions
        positions = tuple(range(1, losses.ndim))
        losses, correct = jnp.mean(losses, positions), jnp.mean(correct, positions)
    w = jnp.ones_like(losses) if valid is None else valid.astype(losses.dtype)
    return {"loss": jnp.sum(losses * w), "correct": jnp.sum(correct * w)}
