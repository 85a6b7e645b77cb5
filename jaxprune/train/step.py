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

from collections.abc import Callable
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxprune import _checks
from jaxprune._types import Array, Mask, Params, PyTree

__all__ = [
    "MODES",
    "Batch",
    "Steps",
    "TrainState",
    "cross_entropy",
    "effective_params",
    "make_steps",
]

MODES = ("zero", "forward")
Mode = Literal["zero", "forward"]
Batch = tuple[Array, Array]
ApplyFn = Callable[[Params, Array], Array]
LossFn = Callable[[Array, Array], Array]


class TrainState(NamedTuple):
    """What changes during training, for one ticket (or, stacked, for many)."""

    params: Params
    opt_state: optax.OptState
    step: Array


class Steps(NamedTuple):
    """The pure functions of one training setup (hashable: usable as a static jit argument)."""

    init: Callable[[Params], TrainState]
    train_step: Callable[..., tuple[TrainState, dict[str, Array]]]
    eval_step: Callable[..., dict[str, Array]]
    mode: str


def cross_entropy(logits: Array, labels: Array) -> Array:
    r"""Mean softmax cross-entropy with integer labels.

    .. math:: -\frac{1}{B}\sum_b \log \mathrm{softmax}(z_b)_{y_b}
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


def _mask_tree(tree: PyTree, mask: Mask) -> PyTree:
    return jax.tree.map(lambda t, m: jnp.where(m, t, jnp.zeros_like(t)), tree, mask)


def make_steps(
    apply_fn: ApplyFn,
    optimizer: optax.GradientTransformation,
    *,
    mode: Mode = "zero",
    loss_fn: LossFn = cross_entropy,
) -> Steps:
    """Build ``init``, ``train_step(state, mask, batch, frozen=None)`` and ``eval_step``.

    Args:
      apply_fn: pure ``apply_fn(params, x) -> logits`` (e.g. from
        :func:`jaxprune.models.functional`).
      optimizer: any optax transformation (Adam, SGD with momentum, weight decay, schedules...).
      mode: ``"zero"`` or ``"forward"`` (see the module docstring).
      loss_fn: ``loss_fn(logits, labels) -> scalar``; default :func:`cross_entropy`.

    Returns:
      :class:`Steps`. ``train_step`` returns ``(new_state, {"loss": ...})``; ``eval_step(params,
      mask, batch, frozen=None, valid=None)`` returns the summed softmax cross-entropy ``loss``
      and ``correct`` count over the batch rows where ``valid`` (sums, so that the batches of an
      evaluation add up exactly; the eval loss is cross-entropy whatever ``loss_fn`` is).
    """
    _checks.check_choice(mode, MODES, name="mode")

    def init(params: Params) -> TrainState:
        return TrainState(params, optimizer.init(params), jnp.zeros((), jnp.int32))

    def loss_of(params: Params, mask: Mask, frozen: PyTree | None, batch: Batch) -> Array:
        x, y = batch
        return loss_fn(apply_fn(effective_params(params, mask, frozen, mode), x), y)

    def train_step(
        state: TrainState, mask: Mask, batch: Batch, frozen: PyTree | None = None
    ) -> tuple[TrainState, dict[str, Array]]:
        loss, grads = jax.value_and_grad(loss_of)(state.params, mask, frozen, batch)
        grads = _mask_tree(grads, mask)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, _mask_tree(updates, mask))
        if mode == "zero":
            # Exactly zero, whatever the optimizer did (e.g. decoupled weight decay).
            params = _mask_tree(params, mask)
        return TrainState(params, opt_state, state.step + 1), {"loss": loss}

    def eval_step(
        params: Params,
        mask: Mask,
        batch: Batch,
        frozen: PyTree | None = None,
        valid: Array | None = None,
    ) -> dict[str, Array]:
        x, y = batch
        # Evaluation always sees m·w + (1-m)·frozen (frozen=None: zeros), so an untrained or
        # unmasked params tree evaluates as the masked network it stands for.
        logits = apply_fn(effective_params(params, mask, frozen, "forward"), x)
        losses = optax.losses.softmax_cross_entropy_with_integer_labels(logits, y)
        correct = (jnp.argmax(logits, -1) == y).astype(jnp.float32)
        w = jnp.ones_like(losses) if valid is None else valid.astype(losses.dtype)
        return {"loss": jnp.sum(losses * w), "correct": jnp.sum(correct * w)}

    return Steps(init, train_step, eval_step, mode)
