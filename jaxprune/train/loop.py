"""Fitting on on-device data: ``lax.scan`` over steps, many tickets at once, sharded over devices.

The training split lives on the device. Step ``t`` of a run trains on the batch
``perm_e[j·B : (j+1)·B]`` with ``e = t // S``, ``j = t mod S`` (``S`` = batches per epoch, the last
partial batch dropped) and ``perm_e = permutation(fold_in(data_key, e), n_train)``: the data order
is a pure function of the data key and the step, so a run resumed at any step sees the same data.
:func:`fit` counts steps from ``start`` (default 0): a fit of ``n`` steps with ``start=s`` from
the state a fit of ``s`` steps returned continues it exactly.

Augmentation (``fit(..., augment=data.Augment())``) happens on the device inside the scanned
step: the batch of step ``t`` is transformed by :func:`jaxprune.data.augment_batch` with the
draws of ``fold_in(augment_key, t)`` (default ``augment_key``: ``fold_in(data_key, 2**31 - 1)``,
so per-ticket data keys also give per-ticket augmentation), again a pure function of the key and
the step. Evaluation never augments. ``augment=None`` (or the identity ``Augment(0, False)``)
adds nothing to the step.

A fit is a host loop over *chunks* of ``eval_every`` steps; each chunk is one compiled program
(a ``lax.scan``) that trains every ticket, followed by an evaluation on validation and test. The
programs are cached on their static shape, so changing masks, keys, rates or data never
recompiles (invariant 6). With ``tickets=True`` every argument carries a leading ticket axis and
the programs are ``vmap``-ed over it (or run in ``lax.map`` chunks of ``ticket_batch_size``);
the data are shared by all tickets, and so is the data order unless ``data_keys`` has one key per
ticket.

Models with batch norm (steps from ``make_steps(..., stateful=True)``) carry their running
statistics in ``TrainState.model_state``, per ticket like the params: the scan updates them,
:func:`evaluate` takes them as ``model_state=``, and :func:`fit` passes ``state.model_state``.

:func:`fit` checks its inputs before it computes anything (a ``ValueError`` naming the argument):
the splits are non-empty ``(x, y)`` pairs of one label per example (or, for sequence logits
``[batch, T, classes]``, one per position: ``y`` of shape ``[n, T]``), with labels in
``[0, classes)`` (the width of the model's logits, from one abstract evaluation, when the steps
have an ``apply_fn``); the ``tickets`` flag matches the state (one ``state.step`` per ticket on a
leading axis); the data key is typed; the params are floats; the counts are ints; an ``augment``
setting suits the training images (NHWC, the padding smaller than the height and width), and an
``augment_key`` comes only with it, typed, one key or one per ticket. With
``check_finite=True`` (the default) it also refuses non-finite weights at the start and stops at
the first chunk whose training loss is not finite (read from the chunk's mean loss, which the
:class:`History` records anyway, where the loop waits for the chunk).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from jaxprune import _checks
from jaxprune._types import Array, Key, Mask, PyTree
from jaxprune.data import augment as augment_lib
from jaxprune.train import step
from jaxprune.train.step import Steps, TrainState

__all__ = [
    "History",
    "evaluate",
    "fit",
    "shard_tickets",
    "stack",
    "ticket_mesh",
    "train_chunk",
    "unstack",
]

TICKET_AXIS = "tickets"
AUGMENT_STREAM = 2**31 - 1
"""``fold_in(data_key, AUGMENT_STREAM)`` is the default augmentation key: a stream apart from the
epochs' permutation keys ``fold_in(data_key, e)``, which a run never reaches ``e = 2**31 - 1``."""


class History(NamedTuple):
    """Evaluation record of a fit; arrays are ``(evals,)`` or, for tickets, ``(tickets, evals)``.

    ``early_stop_*`` follow the Lottery-Ticket papers: the iteration of minimum validation loss
    and the test accuracy there.
    """

    iteration: np.ndarray
    train_loss: np.ndarray
    val_loss: np.ndarray
    val_acc: np.ndarray
    test_loss: np.ndarray
    test_acc: np.ndarray
    early_stop_iteration: np.ndarray
    early_stop_test_acc: np.ndarray


def stack(trees: Sequence[PyTree]) -> PyTree:
    """Stack same-structure pytrees on a new leading ticket axis."""
    if not trees:
        raise ValueError("stack needs at least one tree, got an empty sequence.")
    for i, t in enumerate(trees[1:], start=1):
        _checks.check_like(t, trees[0], name=f"trees[{i}]", ref_name="trees[0]")
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def unstack(tree: PyTree) -> list[PyTree]:
    """Split a stacked pytree into one pytree per ticket."""
    n = jax.tree.leaves(tree)[0].shape[0]
    return [jax.tree.map(lambda x, i=i: x[i], tree) for i in range(n)]


def ticket_mesh(devices: Sequence[Any] | None = None) -> Mesh:
    """A 1-D mesh named ``"tickets"`` over ``devices`` (default: all devices)."""
    devs = list(jax.devices() if devices is None else devices)
    return Mesh(np.array(devs), (TICKET_AXIS,))


def shard_tickets(tree: PyTree, mesh: Mesh) -> PyTree:
    """Place a stacked pytree with its ticket axis split over ``mesh`` (one group per device)."""
    n_dev = mesh.devices.size
    sharding = NamedSharding(mesh, P(TICKET_AXIS))
    for path, leaf in _checks.leaves_with_paths(tree):
        if np.ndim(leaf) == 0 or np.shape(leaf)[0] % n_dev:
            raise ValueError(
                f"cannot shard{path} of shape {list(np.shape(leaf))} over {n_dev} devices: the "
                f"ticket axis must be a multiple of {n_dev}."
            )
    return jax.device_put(tree, sharding)


def _chunk_impl(
    steps: Steps,
    state: TrainState,
    mask: Mask,
    frozen: PyTree | None,
    x: Array,
    y: Array,
    data_key: Key,
    start: Array,
    augment_key: Key | None,
    length: int,
    batch_size: int,
    augment: augment_lib.Augment | None,
) -> tuple[TrainState, Array]:
    n_train = x.shape[0]
    augmenting = augment is not None and not augment.is_identity
    if augmenting and augment_key is None:
        augment_key = jax.random.fold_in(data_key, AUGMENT_STREAM)
    per_epoch = n_train // batch_size
    # The permutations of every epoch this chunk touches, drawn once per chunk, not once per step.
    n_epochs = math.ceil(length / per_epoch) + 1
    first = start // per_epoch
    perms = jax.vmap(
        lambda e: jax.random.permutation(jax.random.fold_in(data_key, first + e), n_train)
    )(jnp.arange(n_epochs))

    def body(st: TrainState, t: Array) -> tuple[TrainState, Array]:
        perm = perms[t // per_epoch - first]
        idx = jax.lax.dynamic_slice(perm, ((t % per_epoch) * batch_size,), (batch_size,))
        xb = x[idx]
        if augmenting:
            assert augment is not None and augment_key is not None  # for the type checker
            xb = augment_lib.augment_batch(augment, jax.random.fold_in(augment_key, t), xb)
        st, metrics = steps.train_step(st, mask, (xb, y[idx]), frozen)
        return st, metrics["loss"]

    return jax.lax.scan(body, state, start + jnp.arange(length))


def _eval_impl(
    steps: Steps,
    params: PyTree,
    mask: Mask,
    frozen: PyTree | None,
    model_state: PyTree | None,
    x: Array,
    y: Array,
    eval_batch: int,
) -> tuple[Array, Array]:
    n = x.shape[0]
    n_batches = math.ceil(n / eval_batch)
    pad = n_batches * eval_batch - n
    xs = jnp.concatenate([x, jnp.zeros((pad, *x.shape[1:]), x.dtype)])
    ys = jnp.concatenate([y, jnp.zeros((pad, *y.shape[1:]), y.dtype)])
    valid = jnp.arange(n_batches * eval_batch) < n

    def one(args: tuple[Array, Array, Array]) -> tuple[Array, Array]:
        xb, yb, vb = args
        out = steps.eval_step(params, mask, (xb, yb), frozen, vb, model_state=model_state)
        return out["loss"], out["correct"]

    split = (
        xs.reshape(n_batches, eval_batch, *x.shape[1:]),
        ys.reshape(n_batches, eval_batch, *y.shape[1:]),
        valid.reshape(n_batches, eval_batch),
    )
    loss, correct = jax.lax.map(one, split)
    return jnp.sum(loss) / n, jnp.sum(correct) / n


def _vectorise(fn: Any, in_axes: tuple[Any, ...], ticket_batch_size: int | None) -> Any:
    """``vmap`` over the ticket axis, or a ``lax.map`` over chunks of ``ticket_batch_size``
    tickets, each chunk ``vmap``-ed; the ``vmap`` axis is named :data:`TICKET_AXIS` either way.

    Named, so that steps may reduce over the tickets they run with (sparse training's "does any
    ticket update its mask at this step?", which keeps the update a ``lax.cond`` rather than a
    select that does the update work at every step); steps that use no collective are unaffected.
    (``lax.map(..., batch_size=)`` would ``vmap`` its chunks without a name, hence the chunks here.)
    """
    vmapped = jax.vmap(fn, in_axes=in_axes, axis_name=TICKET_AXIS)
    if ticket_batch_size is None:
        return vmapped
    mapped_at = [i for i, ax in enumerate(in_axes) if ax == 0]

    def mapped(*args: Any) -> Any:
        n = next(jnp.shape(leaf)[0] for i in mapped_at for leaf in jax.tree.leaves(args[i]))
        size = min(ticket_batch_size, n)
        full, rest = divmod(n, size)

        def run(sub: tuple[Any, ...]) -> Any:
            every = list(args)
            for i, a in zip(mapped_at, sub, strict=True):
                every[i] = a
            return vmapped(*every)

        def part(lo: int, hi: int, shape: tuple[int, ...]) -> tuple[Any, ...]:
            return tuple(
                jax.tree.map(lambda a: a[lo:hi].reshape(*shape, *a.shape[1:]), args[i])
                for i in mapped_at
            )

        out = jax.lax.map(run, part(0, full * size, (full, size)))
        out = jax.tree.map(lambda a: a.reshape(full * size, *a.shape[2:]), out)
        if rest:
            tail = run(part(full * size, n, (rest,)))
            out = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), out, tail)
        return out

    return mapped


@functools.partial(
    jax.jit,
    static_argnames=("steps", "length", "batch_size", "tickets", "ticket_batch_size", "augment"),
)
def train_chunk(
    steps: Steps,
    state: TrainState,
    mask: Mask,
    frozen: PyTree | None,
    x: Array,
    y: Array,
    data_key: Key,
    start: Array,
    *,
    length: int,
    batch_size: int,
    tickets: bool = False,
    ticket_batch_size: int | None = None,
    augment: augment_lib.Augment | None = None,
    augment_key: Key | None = None,
) -> tuple[TrainState, Array]:
    """Train ``length`` steps from step ``start`` (one compiled ``lax.scan``); returns the losses.

    With ``tickets=True``, ``state``, ``mask`` and ``frozen`` carry a leading ticket axis, and so
    does ``data_key`` when it holds one key per ticket (per-ticket data order), and
    ``augment_key`` likewise. ``augment`` (static) augments the batch of step ``t`` with the
    draws of ``fold_in(augment_key, t)`` (``augment_key=None``: ``fold_in(data_key,
    AUGMENT_STREAM)``); the inputs are not checked here (:func:`fit` checks them).
    """
    impl = functools.partial(
        _chunk_impl, steps, length=length, batch_size=batch_size, augment=augment
    )
    if not tickets:
        return impl(state, mask, frozen, x, y, data_key, start, augment_key)
    key_axis = 0 if jnp.ndim(data_key) == 1 else None
    aug_axis = 0 if augment_key is not None and jnp.ndim(augment_key) == 1 else None
    in_axes = (0, 0, 0, None, None, key_axis, None, aug_axis)
    return _vectorise(impl, in_axes, ticket_batch_size)(
        state, mask, frozen, x, y, data_key, start, augment_key
    )


@functools.partial(jax.jit, static_argnames=("steps", "eval_batch", "tickets", "ticket_batch_size"))
def evaluate(
    steps: Steps,
    params: PyTree,
    mask: Mask,
    frozen: PyTree | None,
    x: Array,
    y: Array,
    *,
    eval_batch: int = 1000,
    tickets: bool = False,
    ticket_batch_size: int | None = None,
    model_state: PyTree | None = None,
) -> tuple[Array, Array]:
    """Mean cross-entropy and accuracy of the masked network on ``(x, y)``, in batches.

    ``model_state`` (e.g. ``state.model_state``; stacked with ``tickets=True``) is required for
    stateful steps — the model is evaluated with its running statistics — and must be ``None`` or
    empty otherwise. Returns ``(loss, accuracy)`` scalars, or ``(tickets,)`` arrays with
    ``tickets=True``.
    """
    step.check_model_state(steps.stateful, model_state, name="model_state")
    if not tickets:
        return _eval_impl(steps, params, mask, frozen, model_state, x, y, eval_batch)
    fn = _vectorise(
        lambda p, m, f, s, xx, yy: _eval_impl(steps, p, m, f, s, xx, yy, eval_batch),
        (0, 0, 0, 0, None, None),
        ticket_batch_size,
    )
    return fn(params, mask, frozen, model_state, x, y)


def _ticket_count(state: TrainState, trees: dict[str, PyTree], tickets: bool) -> int | None:
    """The number of tickets on the leading axis (``None`` when ``tickets=False``), or raise.

    ``state.step`` is one step count per ticket: shape ``[]`` for one ticket (``steps.init``),
    ``[n]`` for a stack (``train.stack``, ``jax.vmap(steps.init)``); every other leaf of a
    stack has the same leading axis.
    """
    step_shape = tuple(np.shape(state.step))
    if not tickets:
        if step_shape:
            raise ValueError(
                f"tickets=False, but the state is stacked over tickets: state.step has shape "
                f"{list(step_shape)} (one step count per ticket) where one ticket's has shape []; "
                "pass tickets=True to train the stack, or one ticket's state (train.unstack)."
            )
        return None
    if len(step_shape) != 1:
        raise ValueError(
            f"tickets=True needs a state stacked over tickets (train.stack or "
            f"jax.vmap(steps.init)), whose state.step has shape [tickets], but it has shape "
            f"{list(step_shape)}: one ticket's state. Pass tickets=False, or stack the tickets."
        )
    n = step_shape[0]
    for name, tree in trees.items():
        for path, leaf in _checks.leaves_with_paths(tree):
            if np.shape(leaf)[:1] != (n,):
                raise ValueError(
                    f"tickets=True: every leaf needs the leading ticket axis of the {n} tickets "
                    f"of state.step, but {name}{path} has shape {list(np.shape(leaf))}; stack "
                    "every ticket's state, mask and frozen values with train.stack."
                )
    return n


def _logits_width(
    steps: Steps, state: TrainState, splits: dict[str, tuple[Array, Array]], tickets: bool
) -> int | None:
    """The number of classes: the width (last axis) of the logits of the steps' ``apply_fn`` on
    one example, from an abstract evaluation (a trace on shapes, nothing computed); ``None`` for
    steps without an ``apply_fn`` (the :class:`Steps` protocol does not require one). Refuses
    labels whose shape does not match the logits': ``[n]`` for logits ``[1, C]``, ``[n, T]``
    for sequence logits ``[1, T, V]``."""
    x = splits["train"][0]
    apply_fn = getattr(steps, "apply_fn", None)
    if not callable(apply_fn):
        return None
    params, model_state = state.params, state.model_state
    if tickets:  # one ticket's shapes
        params, model_state = jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(np.shape(a)[1:], a.dtype), (params, model_state)
        )
    one = jax.ShapeDtypeStruct((1, *x.shape[1:]), x.dtype)
    if steps.stateful:
        out = jax.eval_shape(
            lambda p, s, xx: apply_fn(p, s, xx, train=False)[0], params, model_state, one
        )
    else:
        out = jax.eval_shape(apply_fn, params, one)
    shape = tuple(getattr(out, "shape", ()))
    if len(shape) < 2:
        return None
    for name, (_, y) in splits.items():
        if tuple(y.shape[1:]) != shape[1:-1]:
            want = [int(y.shape[0]), *shape[1:-1]]
            raise ValueError(
                f"{name}[1] (y) must have shape {want} (one label per position of the model's "
                f"logits, of shape [batch, {', '.join(map(str, shape[1:]))}] for one example), "
                f"got {list(y.shape)}."
            )
    return shape[-1]


def _check_labels(splits: dict[str, tuple[Array, Array]], classes: int | None) -> None:
    """Labels in ``[0, classes)``: an out-of-range label gives a NaN loss and 0 accuracy.

    Read on the host (one int per example; no copy on a CPU): a device reduction would compile
    a program per split size.
    """
    labels = jax.device_get([y for _, y in splits.values()])
    for name, y in zip(splits, labels, strict=True):
        low, high = np.min(y), np.max(y)
        if low < 0 or (classes is not None and high >= classes):
            expected = "class labels >= 0" if classes is None else f"class labels in [0, {classes})"
            raise ValueError(
                f"{name}[1] (y) must hold {expected}"
                + ("" if classes is None else " (the width of the model's logits)")
                + f", got labels from {int(low)} to {int(high)}; an out-of-range label gives a "
                "NaN loss and an accuracy of 0."
            )


def _tickets_text(bad: np.ndarray, n: int | None) -> str:
    if n is None:
        return ""
    shown = np.flatnonzero(bad)
    return f" in ticket(s) {shown[:10].tolist()}{' …' if shown.size > 10 else ''} of {n}"


def _check_finite_start(trees: dict[str, PyTree], n: int | None) -> None:
    """Refuse params (frozen values, running statistics) holding NaN or inf before iteration 1.

    Checked on the host: no compiled program (a fresh one would cost more than the check), and
    no copy on a CPU, whose arrays numpy reads in place; on an accelerator, one copy of the
    weights per fit.
    """
    named = [
        (f"{name}{path}", leaf)
        for name, tree in trees.items()
        for path, leaf in _checks.leaves_with_paths(tree)
        if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)
    ]
    bad = []
    for (name, _), arr in zip(named, jax.device_get([leaf for _, leaf in named]), strict=True):
        arr = np.asarray(arr)
        finite = np.isfinite(arr).all(axis=tuple(range(0 if n is None else 1, arr.ndim)))
        if not finite.all():
            bad.append((name, ~finite))
    if bad:
        tickets = np.any([b for _, b in bad], axis=0)
        others = f" and {len(bad) - 1} more leaves" if len(bad) > 1 else ""
        raise ValueError(
            f"the weights hold NaN or inf at the start (iteration 0){_tickets_text(tickets, n)}: "
            f"{bad[0][0]}{others}. Such a network trains to NaN and evaluates to a meaningless "
            "accuracy; check where the weights came from (a diverged run? a bad reset?). "
            "check_finite=False skips this check."
        )


def _check_finite_losses(train_loss: Array, losses: Array, start: int, n: int | None) -> None:
    """Refuse a chunk (from iteration ``start``) whose training loss went NaN or inf.

    Reads the chunk's mean loss, which the :class:`History` records anyway (a NaN or inf loss
    makes it NaN or inf), so the check adds no computation; the losses of the chunk are fetched
    only to name the iteration of a failure.
    """
    mean = np.asarray(jax.device_get(train_loss))
    if np.isfinite(mean).all():
        return
    host = np.asarray(jax.device_get(losses))
    diverged = ~np.isfinite(mean)
    bad = ~np.isfinite(host[diverged] if n is not None else host[None])
    # A run of finite losses too large to sum (a mean of inf) counts from the chunk's last step.
    first = np.where(bad.any(axis=-1), bad.argmax(axis=-1), host.shape[-1] - 1)
    raise ValueError(
        f"the training loss is NaN or inf{_tickets_text(diverged, n)}, first at iteration "
        f"{start + 1 + int(first.min())}: training diverged (too high a learning rate? a NaN in "
        "the data?) and every later step and evaluation would be NaN. check_finite=False trains "
        "on regardless."
    )


def fit(
    steps: Steps,
    state: TrainState,
    mask: Mask,
    train: tuple[Any, Any],
    val: tuple[Any, Any],
    test: tuple[Any, Any],
    *,
    iterations: int,
    batch_size: int,
    eval_every: int,
    data_key: Key,
    frozen: PyTree | None = None,
    tickets: bool = False,
    ticket_batch_size: int | None = None,
    mesh: Mesh | None = None,
    eval_batch: int = 1000,
    progress: bool = True,
    desc: str = "train",
    check_finite: bool = True,
    augment: augment_lib.Augment | None = None,
    augment_key: Key | None = None,
    start: int = 0,
) -> tuple[TrainState, History]:
    """Train for ``iterations`` steps, evaluating on ``val`` and ``test`` every ``eval_every``.

    Args:
      steps: any :class:`~jaxprune.train.Steps` (:func:`jaxprune.train.make_steps`,
        :func:`jaxprune.supermask.make_steps`); equal steps reuse the compiled programs.
      state: a :class:`TrainState` (stacked over tickets when ``tickets=True``), with the
        model's running statistics in ``state.model_state`` for stateful steps (and a
        sparse-training method's state in ``state.sparse``). The evaluations see
        ``steps.eval_params(state)``.
      mask: the mask (stacked likewise).
      train, val, test: ``(x, y)`` arrays, each non-empty, with one integer label in
        ``[0, classes)`` per example, or sequence targets ``y`` of shape ``[n, T]`` for logits
        ``[batch, T, classes]`` (next-token windows: the loss is then the mean token
        cross-entropy and the accuracy the token accuracy); put on the device once and shared
        by all tickets.
      iterations: total training steps; ``eval_every``: steps between evaluations.
      batch_size: examples per step; the data order is a pure function of ``data_key``.
      data_key: one typed key (``jax.random.key``; the same data order for every ticket) or one
        per ticket.
      frozen: pruned-weight values for ``"forward"`` mode (``None``: zeros).
      tickets: whether the arguments carry a leading ticket axis (then ``state.step`` has shape
        ``[tickets]``, as :func:`stack` and ``jax.vmap(steps.init)`` make it).
      ticket_batch_size: run tickets in ``lax.map`` chunks of this many instead of one ``vmap``.
      mesh: shard the ticket axis over this mesh (see :func:`ticket_mesh`); data replicated.
      progress: show a progress bar.
      check_finite: refuse params (and ``frozen``, ``state.model_state``) that hold NaN or inf
        at the start, and stop with a ``ValueError`` naming the tickets and the iteration after
        the first chunk whose training loss is NaN or inf. Nothing is compiled for it: the start
        is checked on the host (no copy on a CPU), and each chunk by the mean loss the
        :class:`History` records anyway, read where the loop waits for the chunk. ``False``
        trains on regardless (the :class:`History` then records the NaNs).
      augment: random crops and flips of the training batches (:class:`jaxprune.data.Augment`),
        done on the device inside the step; the batch of step ``t`` uses the draws of
        ``fold_in(augment_key, t)``. ``train[0]`` must then be an NHWC batch of images larger
        than the padding (checked before anything is computed). ``None``: no augmentation.
        Evaluation never augments.
      augment_key: one typed key (every ticket draws the same augmentations) or one per ticket;
        ``None``: ``fold_in(data_key, AUGMENT_STREAM)`` (per ticket when ``data_key`` is). Only
        with ``augment``.
      start: the global index of this fit's first step, for the data order and the
        augmentation (``History.iteration`` counts from it too). A fit of ``n`` steps with
        ``start=s`` from the state a fit of ``s`` steps returned is the continuation of that
        fit: the state carries everything else (params, optimizer state with its step counts
        and schedules, ``state.step``, running statistics). Results equal those of one
        uninterrupted fit up to floating-point rounding when the chunks differ (``eval_every``
        not dividing ``s``: XLA may compile a scan of another length differently), and the
        :class:`History` (early stopping included) covers this fit's evaluations only.

    Returns:
      The final state and the :class:`History` of evaluations (host numpy arrays).

    Raises:
      ValueError: before anything is computed, for inputs that would give a raw JAX error or
        silent garbage (see the module docstring); with ``check_finite``, for a diverged run.
    """
    for name, value in (
        ("iterations", iterations),
        ("batch_size", batch_size),
        ("eval_every", eval_every),
        ("eval_batch", eval_batch),
    ):
        _checks.check_positive_int(value, name=name)
    _checks.check_nonnegative_int(start, name="start")
    if ticket_batch_size is not None:
        _checks.check_positive_int(ticket_batch_size, name="ticket_batch_size")
    _checks.check_params(state.params, name="state.params")
    _checks.check_mask(mask, state.params)
    step.check_model_state(steps.stateful, state.model_state, name="state.model_state")
    if frozen is not None:
        _checks.check_like(frozen, state.params, name="frozen")
    trees = {"state.params": state.params, "frozen": frozen, "state.model_state": state.model_state}
    n = _ticket_count(state, {**trees, "mask": mask, "state.sparse": state.sparse}, tickets)
    _checks.check_keys(data_key, name="data_key", count=n)
    _check_augment(augment, augment_key, train, n)
    splits = {
        name: _check_split(pair, name=name)
        for name, pair in (("train", train), ("val", val), ("test", test))
    }
    n_train = int(splits["train"][0].shape[0])
    if batch_size > n_train:
        raise ValueError(
            f"batch_size must be at most the {n_train} training examples, got {batch_size}."
        )
    _check_labels(splits, _logits_width(steps, state, splits, tickets))
    if check_finite:
        _check_finite_start(trees, n)
    if mesh is not None:
        replicated = NamedSharding(mesh, P())
        splits = {k: jax.device_put(pair, replicated) for k, pair in splits.items()}
        state, mask, frozen = shard_tickets((state, mask, frozen), mesh)
        if jnp.ndim(data_key) == 1:
            data_key = shard_tickets(data_key, mesh)
        if augment_key is not None and jnp.ndim(augment_key) == 1:
            augment_key = shard_tickets(augment_key, mesh)
    (xt, yt), (xv, yv), (xs, ys) = splits.values()
    common = {"tickets": tickets, "ticket_batch_size": ticket_batch_size}
    if augment is not None:  # passed only when set: the programs of a plain fit stay unchanged
        augmenting = {"augment": augment, "augment_key": augment_key}
    else:
        augmenting = {}
    records: list[tuple[int, Array, Array, Array, Array, Array]] = []
    done = 0
    with tqdm(total=iterations, desc=desc, unit="step", disable=not progress, leave=False) as bar:
        while done < iterations:
            length = min(eval_every, iterations - done)
            state, losses = train_chunk(
                steps,
                state,
                mask,
                frozen,
                xt,
                yt,
                data_key,
                jnp.int32(start + done),
                length=length,
                batch_size=batch_size,
                **common,
                **augmenting,
            )
            # Dispatched before the evaluations, so that check_finite, reading it, waits for the
            # chunk only (as block_until_ready does), not for the evaluations.
            train_loss = jnp.mean(losses, axis=-1)
            ev = {"eval_batch": eval_batch, **common}
            if steps.stateful:
                ev["model_state"] = state.model_state
            params = _eval_params(steps, state)
            v = evaluate(steps, params, mask, frozen, xv, yv, **ev)
            t = evaluate(steps, params, mask, frozen, xs, ys, **ev)
            records.append((start + done + length, train_loss, *v, *t))
            if check_finite:
                _check_finite_losses(train_loss, losses, start + done, n)
            else:
                jax.block_until_ready(losses)
            done += length
            bar.update(length)
    return state, _history(records)


def _check_split(pair: Any, *, name: str) -> tuple[Array, Array]:
    """:func:`jaxprune._checks.check_batch`, also accepting sequence targets: ``y`` of shape
    ``[n, T, ...]`` (one label per position, e.g. next-token windows) as well as ``[n]``."""
    if isinstance(pair, tuple | list) and len(pair) == 2 and np.ndim(pair[1]) > 1:
        y = jnp.asarray(pair[1])
        if 0 in y.shape[1:]:
            raise ValueError(f"{name}[1] (y) must have no empty axis, got {list(y.shape)}.")
        rows = np.shape(pair[0])[:1]
        if rows and y.shape[0] != rows[0]:
            raise ValueError(
                f"{name}[1] (y) must have {rows[0]} rows (the labels of each example of x), got "
                f"shape {list(y.shape)}."
            )
        # The checks of one label per example, on the labels of the first position.
        x, _ = _checks.check_batch((pair[0], y[:, 0]), name=name)
        return x, y
    return _checks.check_batch(pair, name=name)


def _eval_params(steps: Steps, state: TrainState) -> PyTree:
    """``steps.eval_params(state)``: what the evaluations see; ``state.params`` for steps written
    before the protocol had the method."""
    eval_params = getattr(steps, "eval_params", None)
    return state.params if eval_params is None else eval_params(state)


def _check_augment(
    augment: Any, augment_key: Key | None, train: tuple[Any, Any], n: int | None
) -> None:
    """Refuse an augmentation setting that does not suit the training images, before training."""
    if augment is None:
        if augment_key is not None:
            raise ValueError(
                "augment_key was given but augment is None: the key would go unused; pass "
                "augment=jaxprune.data.Augment(...) or drop augment_key."
            )
        return
    if not isinstance(augment, augment_lib.Augment):
        raise ValueError(
            f"augment must be a jaxprune.data.Augment or None, got {type(augment).__name__}."
        )
    if augment_key is not None:
        _checks.check_keys(augment_key, name="augment_key", count=n)
    if isinstance(train, tuple | list) and len(train) == 2:
        augment.check_images(np.shape(train[0]), name="train[0] (x)")


def _history(records: list[tuple[int, Array, Array, Array, Array, Array]]) -> History:
    host = jax.device_get(records)
    it = np.array([r[0] for r in host])
    cols = [np.stack([np.asarray(r[i]) for r in host], axis=-1) for i in range(1, 6)]
    train_loss, val_loss, val_acc, test_loss, test_acc = cols
    best = np.argmin(val_loss, axis=-1)
    return History(
        iteration=it,
        train_loss=train_loss,
        val_loss=val_loss,
        val_acc=val_acc,
        test_loss=test_loss,
        test_acc=test_acc,
        early_stop_iteration=it[best],
        early_stop_test_acc=np.take_along_axis(test_acc, best[..., None], axis=-1)[..., 0],
    )
