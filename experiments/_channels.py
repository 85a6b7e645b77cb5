"""Shared pieces of the structured-pruning studies (``rethinking``, ``early_bird``).

Models with batch norm (``vgg*``, ``resnet*``) trained by SGD with momentum, weight decay and a
step schedule (the CIFAR recipe of Liu et al. 2017/2019 and You et al. 2020: the learning rate
divided by 10 at 50% and 75% of the run), several seeds as one vmapped program.

The schedule lives inside the optimizer (:func:`jaxprune.train.sgd` of a
:func:`jaxprune.train.step_decay`): the rate of every step is computed in the compiled step from
the step count in the optimizer state, so a run is one fit, with no host-side phases. The
schedule's numbers (rate, milestones, factor) are data in that state, set at the start of each
run (:func:`jaxprune.train.set_schedule`), so one compiled training program serves every arm
(fine-tune, Scratch-E, Scratch-B: runs of different lengths and rates) of an architecture; only
a new architecture (another set of kept widths) compiles anew.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
import optax

from jaxprune import data, masks, metrics, models, structured, train

MILESTONES = (0.5, 0.75)
"""Fractions of a run at which the learning rate is divided by 10 (Liu et al.; You et al.)."""

MIN_ITERATIONS = 3
"""The shortest run whose two milestones fit strictly inside it (steps 1 and 2 of 3)."""


class Nets(NamedTuple):
    """Models of one architecture, one per seed, and their stacked pure forms."""

    modules: list[Any]  # nnx modules, one per ticket (structure for compaction)
    apply_fn: Any  # stateful apply_fn(params, model_state, x, *, train)
    params: Any  # stacked over tickets
    model_state: Any  # stacked over tickets


def milestones(iterations: int) -> tuple[int, ...]:
    """The steps of :data:`MILESTONES` in a run of ``iterations``: ``⌊f · iterations⌋``.

    Example:
      >>> milestones(800), milestones(300)
      ((400, 600), (150, 225))
    """
    return tuple(int(f * iterations) for f in MILESTONES)


def schedule(iterations: int, lr: float) -> train.StepDecay:
    """The step schedule of a run: ``lr``, ÷10 at each of :data:`MILESTONES` (a
    :func:`jaxprune.train.step_decay`; refused for runs shorter than :data:`MIN_ITERATIONS`).

    Example:
      >>> s = schedule(8, 0.1)
      >>> [round(float(s(t)), 6) for t in range(8)]
      [0.1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
    """
    return train.step_decay(lr, milestones(iterations), iterations=iterations)


def constant(iterations: int, lr: float) -> train.StepDecay:
    """A constant rate ``lr`` for ``iterations`` steps, as a step schedule of factor 1: the same
    form (two milestones) as :func:`schedule`, so fine-tuning shares the training program."""
    return train.step_decay(lr, milestones(iterations), iterations=iterations, factor=1.0)


# Any schedule of this form serves to build the optimizer: each fit sets its own run's schedule
# in the state (with_schedule) before training.
_FORM = train.step_decay(1.0, milestones(MIN_ITERATIONS), iterations=MIN_ITERATIONS)


def optimizer(
    momentum: float, weight_decay: float, penalty: float = 0.0
) -> optax.GradientTransformation:
    """SGD with momentum and coupled weight decay (:func:`jaxprune.train.sgd`), and Network
    Slimming's penalty on BN scales when ``penalty > 0``; its step schedule is set per run by
    :func:`with_schedule`."""
    sgd = train.sgd(_FORM, momentum=momentum, weight_decay=weight_decay)
    if penalty > 0:
        return optax.chain(structured.slimming_penalty(penalty), sgd)
    return sgd


def with_schedule(
    state: train.TrainState, schedule: train.StepDecay, step: int = 0
) -> train.TrainState:
    """The same state with every ticket's schedule set to ``schedule``, its count to ``step``."""
    opt_state = train.set_schedule(state.opt_state, schedule, step=step)
    # Committed arrays on the first device, like the states fits return: every run then hits the
    # same compiled training program.
    return state._replace(opt_state=jax.device_put(opt_state, jax.devices()[0]))


@functools.cache
def _optimizer_for(
    momentum: float, weight_decay: float, penalty: float
) -> optax.GradientTransformation:
    # One optax object per setting: optax transformations are closures, equal only to themselves,
    # and steps are equal (and share compiled programs) when built from the same optimizer object.
    return optimizer(momentum, weight_decay, penalty)


def steps(apply_fn: Any, momentum: float, weight_decay: float, penalty: float = 0.0) -> train.Steps:
    """Stateful steps for ``apply_fn``: equal for equal settings, so compiled programs are reused."""
    return train.make_steps(
        apply_fn, _optimizer_for(momentum, weight_decay, penalty), stateful=True
    )


def build(
    model: str, ds: data.Dataset, seeds: Sequence[int], *, width: float, conv_grad: str = "auto"
) -> Nets:
    """One model per seed, stacked."""
    modules = [
        models.build(
            model,
            input_shape=ds.input_shape,
            num_classes=ds.num_classes,
            seed=s,
            width=width,
            conv_grad=conv_grad,
        )
        for s in seeds
    ]
    return stack(modules)


def stack(modules: Sequence[Any]) -> Nets:
    """The pure forms of models of one architecture, params and model state stacked."""
    forms = [models.stateful(m) for m in modules]
    return Nets(
        list(modules),
        forms[0][0],
        train.stack([f[1] for f in forms]),
        train.stack([f[2] for f in forms]),
    )


def fit(
    s: train.Steps,
    state: train.TrainState,
    ds: data.Dataset,
    schedule: train.StepDecay,
    *,
    batch_size: int,
    eval_every: int,
    data_key: Any,
    progress: bool,
    desc: str,
    on_eval: Callable[[train.TrainState, int], None] | None = None,
    start: int = 0,
    augment: data.Augment | None = None,
) -> tuple[train.TrainState, train.History]:
    """Train stacked tickets from step ``start`` to the end of ``schedule`` (its
    ``iterations``): one run, its rate set by the schedule inside the step.

    ``augment`` augments the training batches on the device (``train.fit``'s, per step from the
    data key). ``start > 0`` resumes a run there: the schedule continues at its rate of step ``start`` and
    the data order is that of one uninterrupted run (``train.fit(..., start=)``).
    ``on_eval(state, iteration)`` is called at every evaluation when given (then each
    evaluation interval is its own fit call, still one compiled chunk; the schedule's count, in
    the optimizer state, carries on across them). The history counts iterations from 0 of the
    whole run; early stop is over the evaluations of this call.
    """
    n = int(jax.tree.leaves(state.params)[0].shape[0])
    mesh = train.mesh_for(n)
    ones = jax.vmap(masks.ones)(state.params)
    state = with_schedule(state, schedule, start)
    total = schedule.iterations - start
    pieces = [total] if on_eval is None else _pieces(total, eval_every)
    hists: list[train.History] = []
    done = start
    for length in pieces:
        state, hist = train.fit(
            s, state, ones, ds.train, ds.val, ds.test, iterations=length,
            batch_size=batch_size, eval_every=min(eval_every, length), data_key=data_key,
            start=done, tickets=True, mesh=mesh, progress=progress, desc=desc, augment=augment,
        )  # fmt: skip
        state = jax.device_put(state, jax.devices()[0])
        hists.append(hist)
        done += length
        if on_eval is not None:
            on_eval(state, done)
    return state, join(hists)


def _pieces(iterations: int, every: int) -> list[int]:
    return [every] * (iterations // every) + [iterations % every] * (iterations % every > 0)


def join(hists: Sequence[train.History]) -> train.History:
    """Histories of consecutive fits as one; early stop = the evaluation of least validation
    loss over all of them."""
    it = np.concatenate([h.iteration for h in hists])
    cols = {
        f: np.concatenate([getattr(h, f) for h in hists], axis=-1)
        for f in ("train_loss", "val_loss", "val_acc", "test_loss", "test_acc")
    }
    best = np.argmin(cols["val_loss"], axis=-1)
    return train.History(
        iteration=it,
        early_stop_iteration=it[best],
        early_stop_test_acc=np.take_along_axis(cols["test_acc"], best[..., None], axis=-1)[..., 0],
        **cols,
    )


def init_state(s: train.Steps, nets: Nets) -> train.TrainState:
    """Stacked fresh train states, placed on the first device like the states fits return."""
    state = jax.jit(jax.vmap(s.init))(nets.params, nets.model_state)
    return jax.device_put(state, jax.devices()[0])


def test_accuracy(s: train.Steps, state: train.TrainState, ds: data.Dataset) -> np.ndarray:
    """Per ticket test accuracy in evaluation mode (running statistics)."""
    ones = jax.vmap(masks.ones)(state.params)
    xs, ys = ds.test
    acc = train.evaluate(
        s, state.params, ones, None, xs, ys, tickets=True, model_state=state.model_state
    )[1]
    return np.asarray(acc)


def flops(nets_or_module: Any, input_shape: tuple[int, ...]) -> float:
    """FLOPs per example of one model in evaluation mode (:mod:`jaxprune.metrics`)."""
    apply_fn, params, model_state = models.stateful(nets_or_module)
    counts = metrics.layer_flops(
        lambda p, x: apply_fn(p, model_state, x, train=False)[0], params, input_shape
    )
    return float(sum(float(v) for v in counts.values()))


def ticket(tree: Any, i: int) -> Any:
    """Ticket ``i`` of a stacked tree."""
    return jax.tree.map(lambda a: a[i], tree)


def arch_key(keep: dict[str, Any]) -> tuple[tuple[str, int], ...]:
    """The kept width of every group: tickets with equal keys share an architecture."""
    return tuple(sorted((n, int(np.sum(np.asarray(v)))) for n, v in keep.items()))
