r"""Early-Bird tickets (You et al. 2020): draw the structured ticket when its channel mask settles.

You et al., "Drawing Early-Bird Tickets: Toward More Efficient Training of Deep Networks", ICLR
2020 (arXiv:1909.11957; code: github.com/GATECH-EIC/Early-Bird-Tickets, ``main.py``). The ticket
is Network Slimming's (Liu et al. 2017): channels ranked by the batch-norm scale :math:`|\gamma|`
under the L1 penalty on γ, pruned at one global threshold. You et al. observe that this channel
mask stops changing early in training, at a large learning rate, and prune there instead of after
full training.

**Search.** The dense batch-norm network trains with SGD (momentum 0.9, weight decay 1e-4), lr
0.1 ÷10 at 50% and 75% of the run, and the slimming penalty (:func:`jaxprune.structured.slimming_penalty`),
all seeds as one vmapped program. Every ``mask_every`` iterations (default: one epoch) it draws,
per seed and prune ratio ``p``, the mask keeping the channels above the global ``p``-quantile of
:math:`|\gamma|` (:func:`jaxprune.structured.select_channels`, ``scope="global"``, at least one
channel per layer). Masks are compared by the normalised Hamming distance

.. math:: d(m_a, m_b) = \frac{1}{C} \sum_{c=1}^{C} [m_{a,c} \ne m_{b,c}]

over the ``C`` scored channels. A FIFO keeps the last ``window`` (5) masks; the Early-Bird
ticket has *emerged* at the first mask point ``k`` where the newest mask is within ε of each of
the ``window − 1`` before it (the official code's rule, ``EarlyBird.early_bird_emerge``):

.. math:: \max_{1 \le j < w} d(m_k, m_{k-j}) \le \varepsilon \qquad (\varepsilon = 0.1,\ w = 5).

The weights and BN statistics of each (ratio, seed) are snapshot at its emergence; the dense
network trains on to the end, so its accuracy and the whole mask history are known. If no
ticket emerges, the ticket is drawn from the final mask and its rows say ``emerged=False``.

**Retraining** (compacted: :func:`jaxprune.structured.compact`, a physically smaller network):

* ``eb_continue`` — the EB weights, trained from the emergence iteration ``t_EB`` to the end of
  the schedule at the learning rate the schedule has there (the official ``--start-epoch``);
* ``eb_scratch`` — the EB architecture freshly initialised (:func:`jaxprune.structured.scratch`),
  the whole schedule.

Seeds whose tickets keep the same widths (and, for ``eb_continue``, start at the same iteration)
train as one vmapped program; others train one by one (each architecture compiles anew).

**Cost.** Training cost relative to dense training, in forward FLOPs per example (a proxy: a
training step costs about three forward passes in either network), with ``F`` the FLOPs of the
dense and pruned networks and ``T`` the iterations:

.. math:: \text{eb\_continue}: \frac{t_{EB} F_{dense} + (T - t_{EB}) F_{pruned}}{T F_{dense}},
          \qquad \text{eb\_scratch}: \frac{t_{EB} F_{dense} + T F_{pruned}}{T F_{dense}}.

Differences from the official code, on purpose: the first mask is drawn after ``mask_every``
iterations, not at initialisation (there every γ is 0.5 and the mask is only a tie-break);
``select_channels`` keeps exactly ``C − round(p C)`` channels and at least one per layer (the
code keeps those strictly above the ``int(p C)``-th smallest |γ|); retraining uses no penalty
unless ``--retrain-penalty`` is set (the official retrain scripts keep ``-sr`` on: 1e-4).
Only the BN scales after convolutions are scored, as the code's ``BatchNorm2d`` loop: the hidden
layer of ``vgg16``'s classifier (Li et al.'s head, not the code's single linear layer) is kept
whole; in ResNets only each block's first conv is scored, the residual-stream group is kept whole
(see :mod:`jaxprune.structured`).

Presets (``--preset``; any setting can be overridden, see ``--help``):

* ``quick`` — digits, VGG-11 at width 0.125, 2 seeds, batch 64 (18 iterations per epoch),
  30 epochs (540 iterations), ratios 0.3 / 0.5 / 0.7, ε = 0.1, window 5: ≈ 205 s on 2 CPU
  cores, more than half of it compiling the programs of each pruned architecture
  (docs/early_bird.md has the figures).
  ``python -m experiments.early_bird``.
* ``cifar10_vgg16`` — You et al.'s VGG-16 / CIFAR-10 setting: 160 epochs of batch 256
  (45,000 training images after the 5,000 validation ones: 175 iterations per epoch,
  28,000 iterations), lr 0.1 ÷10 at epochs 80 and 120, penalty 1e-4, p ∈ {0.3, 0.5, 0.7},
  ε = 0.1, FIFO of 5; random crops after 4-pixel padding and flips on the device, pixels
  standardised per channel, as the paper's.
  cifar10 must be prepared offline (``tfds build cifar10 --file_format=array_record`` on a
  connected machine, then ``--data-dir``).

Run folder: ``runs/early_bird-<preset>-<hash>/`` with ``rows/`` (units ``search`` then one per
ratio and arm; an interrupted run started again resumes), ``state/masks.npz`` (every mask drawn),
``state/eb_tickets`` (the snapshots, orbax), ``results.csv``, ``summary.md``,
``mask_distance.png``, ``mask_distance_matrix.png`` and ``accuracy.png``.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from jaxprune import data, models, plots, results, structured, sweep, train

from . import _channels, _study

ARMS = ("dense", "eb_continue", "eb_scratch")


@dataclasses.dataclass(frozen=True)
class Config:
    """Settings of an Early-Bird run (see ``--help`` for each)."""

    preset: str = "custom"
    dataset: str = "digits"
    model: str = "vgg11"
    width: float = 0.125
    val_size: int | None = None
    ratios: tuple[float, ...] = (0.3, 0.5, 0.7)
    epsilon: float = 0.1
    window: int = 5
    mask_every: int = 0
    iterations: int = 540
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    penalty: float = 1e-4
    retrain_penalty: float = 0.0
    seeds: int = 2
    augment: str = "none"
    normalize: str = "none"
    data_dir: str | None = None

    def to_json(self) -> dict[str, Any]:
        return _study.config_json(self)


HELP = {
    "augment": _study.HELP["augment"],
    "normalize": _study.HELP["normalize"],
    "dataset": f"dataset name, one of {data.names()}",
    "model": "a model with batch norm: vgg11, vgg16, vgg19, vgg16_a, resnet20, resnet56",
    "width": "multiplier of every conv and hidden width",
    "val_size": "validation examples taken from the training pool (default: the dataset's)",
    "ratios": "comma list of channel prune ratios p in (0, 1): the fraction of the scored "
    "channels with the lowest |γ| pruned at one global threshold",
    "epsilon": "the ticket has emerged when the newest mask is within this normalised Hamming "
    "distance of each of the window-1 masks before it, in (0, 1]",
    "window": "masks in the FIFO (5 in the paper); at least 2",
    "mask_every": "iterations between masks and evaluations; 0 = one epoch (training examples "
    "// batch size)",
    "iterations": "training iterations T of the dense run (and of eb_scratch)",
    "batch_size": "examples per step",
    "lr": "initial SGD learning rate, divided by 10 at 50% and 75% of the iterations",
    "momentum": "SGD momentum",
    "weight_decay": "L2 weight decay",
    "penalty": "Network Slimming's L1 strength on BN scales during the search (0 = none)",
    "retrain_penalty": "the same during retraining (0 here; the official retrain scripts keep "
    "1e-4)",
    "seeds": "independent seeds (init and data of the dense run)",
    "data_dir": "tensorflow-datasets folder for cifar10/cifar100 (prepared offline)",
}


def validate(cfg: Config) -> None:
    """Raise ``ValueError`` naming the flag of any bad setting, before anything is trained."""
    _study.check_common(cfg, batch_norm=True)
    _study.check_data_options(cfg)
    _study.check_at_least(cfg, 0, "mask_every")
    # The step schedule's two milestones must lie strictly inside the run.
    _study.check_at_least(cfg, _channels.MIN_ITERATIONS, "iterations")
    _study.check_at_least(cfg, 2, "window")
    if not cfg.width > 0:
        _study.fail("width", "> 0", cfg.width)
    for name in ("weight_decay", "penalty", "retrain_penalty"):
        if not getattr(cfg, name) >= 0:
            _study.fail(name, ">= 0", getattr(cfg, name))
    if not 0 <= cfg.momentum < 1:
        _study.fail("momentum", "in [0, 1)", cfg.momentum)
    if not 0 < cfg.epsilon <= 1:
        _study.fail("epsilon", "a distance in (0, 1]", cfg.epsilon)
    _study.check_fractions(cfg, "ratios", "prune ratios")
    if cfg.mask_every > cfg.iterations:
        _study.fail("mask_every", f"at most --iterations ({cfg.iterations})", cfg.mask_every)


def quick() -> Config:
    """Digits, VGG-11 at width 0.125, 2 seeds, 30 epochs of 18 iterations."""
    return Config(preset="quick")


def cifar10_vgg16() -> Config:
    """You et al.'s VGG-16 on CIFAR-10: 160 epochs of batch 256, ε = 0.1, FIFO of 5."""
    return Config(
        preset="cifar10_vgg16", dataset="cifar10", model="vgg16", width=1.0,
        iterations=160 * 175, batch_size=256, augment="crop_flip", normalize="per_channel",
    )  # fmt: skip


PRESETS: dict[str, Callable[[], Config]] = {"quick": quick, "cifar10_vgg16": cifar10_vgg16}


# ---- the emergence rule (pure numpy) -----------------------------------------------------------


def distance_matrix(masks: ArrayLike) -> np.ndarray:
    r"""Normalised Hamming distances between every two of ``K`` flat channel masks.

    .. math:: D_{ab} = \frac{1}{C} \sum_c [m_{a,c} \ne m_{b,c}]

    Args:
      masks: bool ``[K, C]``, one mask per row.

    Returns:
      float64 ``[K, K]``, symmetric with a zero diagonal.

    Example:
      >>> distance_matrix([[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 1]])
      array([[0.  , 0.25, 1.  ],
             [0.25, 0.  , 0.75],
             [1.  , 0.75, 0.  ]])
    """
    m = np.asarray(masks, bool)
    if m.ndim != 2 or m.shape[1] == 0:
        raise ValueError(f"masks must be [K, C] with C >= 1, got shape {m.shape}.")
    a = m.astype(np.int64)
    diff = a @ (1 - a).T + (1 - a) @ a.T  # exact counts of the channels that differ
    return diff / m.shape[1]


def window_distances(masks: ArrayLike, window: int) -> np.ndarray:
    r"""At each mask point, the largest distance from the newest mask to the ``window − 1`` before it.

    .. math:: w_k = \max_{1 \le j < w} d(m_k, m_{k-j}) \quad (k \ge w - 1), \qquad
              w_k = \text{NaN} \quad (k < w - 1: \text{the FIFO is not full yet})

    Args:
      masks: bool ``[K, ..., C]``: mask points first, channels last, any batch axes between.
      window: the FIFO length ``w`` (at least 2).

    Returns:
      float64 ``[K, ...]``.

    Example:
      >>> m = [[1, 1, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0], [1, 0, 0, 1]]
      >>> window_distances(m, 2)
      array([ nan, 0.25, 0.  , 0.25])
      >>> window_distances(m, 3)
      array([ nan,  nan, 0.25, 0.25])
    """
    m = np.asarray(masks, bool)
    if not isinstance(window, int) or window < 2:
        raise ValueError(f"window must be an int >= 2, got {window!r}.")
    if m.ndim < 2:
        raise ValueError(f"masks must be [K, ..., C], got shape {m.shape}.")
    out = np.full(m.shape[:-1], np.nan)
    for k in range(window - 1, m.shape[0]):
        back = m[k - window + 1 : k]  # the window − 1 masks before m_k
        out[k] = np.mean(back != m[k][None], axis=-1).max(axis=0)
    return out


def first_emergence(masks: ArrayLike, window: int, epsilon: float) -> np.ndarray:
    """The first mask point whose window distance is at most ``epsilon``, or -1 (never).

    Args:
      masks, window: as for :func:`window_distances`.
      epsilon: the threshold ε.

    Returns:
      int64 ``[...]`` (the batch axes of ``masks``): an index into the ``K`` mask points.

    Example:
      >>> first_emergence([[1, 1, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0], [1, 0, 0, 1]], 2, 0.1)
      array(2)
    """
    hit = window_distances(masks, window) <= epsilon  # NaN (FIFO not full) is never a hit
    return np.where(hit.any(axis=0), np.argmax(hit, axis=0), -1)


# ---- schedules and masks -----------------------------------------------------------------------


def mask_interval(cfg: Config, ds: data.Dataset) -> int:
    """Iterations between masks: ``mask_every``, or one epoch (training examples // batch size)."""
    return cfg.mask_every or max(len(ds.train.y) // cfg.batch_size, 1)


def scored_groups(groups: Sequence[structured.ChannelGroup]) -> tuple[structured.ChannelGroup, ...]:
    """The groups produced by one convolution: the official code ranks ``BatchNorm2d`` scales only,
    and prunes a ResNet's blocks' first convs, never the residual stream (several producers)."""
    return tuple(g for g in groups if g.kernel[-2].startswith("conv") and len(g.producers) <= 1)


def mask_drawer(
    groups: Sequence[structured.ChannelGroup],
) -> Callable[[Any, Sequence[float]], np.ndarray]:
    """``draw(params, ratios) -> bool[seeds, ratios, C]``: every seed's global-|γ| mask per ratio.

    ``params`` is stacked over seeds; ``C`` runs over ``groups`` in order. One compiled program
    (ratios are traced, so any ratios reuse it).
    """
    groups = tuple(groups)

    def one(params: Any, ratio: jax.Array) -> jax.Array:
        scores = structured.channel_scores(params, groups, "bn")
        keep = structured.select_channels(scores, ratio, scope="global", min_keep=1)
        return jnp.concatenate([keep[g.name] for g in groups])

    program = jax.jit(jax.vmap(jax.vmap(one, (None, 0)), (0, None)))
    return lambda params, ratios: np.asarray(program(params, jnp.asarray(ratios, jnp.float32)))


def keep_vectors(
    flat: np.ndarray,
    groups: Sequence[structured.ChannelGroup],
    scored: Sequence[structured.ChannelGroup],
) -> dict[str, np.ndarray]:
    """Keep vectors for :func:`jaxprune.structured.compact`: the flat mask cut into the scored
    groups, every other group kept whole."""
    out = {g.name: np.ones(g.size, bool) for g in groups}
    start = 0
    for g in scored:
        out[g.name] = np.asarray(flat[start : start + g.size], bool)
        start += g.size
    return out


# ---- the search --------------------------------------------------------------------------------


class Search(NamedTuple):
    """The mask history of the dense run and where each (seed, ratio) drew its ticket."""

    masks: np.ndarray  # bool [K, seeds, ratios, C]: every mask drawn
    iterations: np.ndarray  # int [K]: the iteration of each mask point
    ticket_point: np.ndarray  # int [seeds, ratios]: the mask point of the ticket
    emerged: np.ndarray  # bool [seeds, ratios]: False = no EB ticket, drawn from the final mask


def _search(
    cfg: Config, ds: data.Dataset, nets: _channels.Nets, scored: Sequence[Any], every: int,
    root: Any, progress: bool,
) -> tuple[Search, Any, train.History, np.ndarray]:  # fmt: skip
    """Train the dense nets to the end, drawing masks and snapshotting each ticket as it emerges.

    Returns the search, the snapshots ``{"params", "model_state"}`` stacked over (ratio, seed)
    — ratio-major —, the dense history and the steps each seed took.
    """
    s = _channels.steps(nets.apply_fn, cfg.momentum, cfg.weight_decay, cfg.penalty)
    state = _channels.init_state(s, nets)
    draw = mask_drawer(scored)
    n_seeds, n_ratios = cfg.seeds, len(cfg.ratios)
    history: list[np.ndarray] = []
    points: list[int] = []
    found = np.full((n_seeds, n_ratios), -1)
    snaps: dict[tuple[int, int], Any] = {}

    def on_eval(st: train.TrainState, iteration: int) -> None:
        history.append(draw(st.params, cfg.ratios))
        points.append(iteration)
        if len(history) < cfg.window:
            return
        latest = window_distances(np.stack(history[-cfg.window :]), cfg.window)[-1]
        for seed, r in zip(*np.nonzero((latest <= cfg.epsilon) & (found < 0)), strict=True):
            found[seed, r] = len(history) - 1
            snaps[(int(seed), int(r))] = _snapshot(st, int(seed))

    state, hist = _channels.fit(
        s, state, ds, _channels.schedule(cfg.iterations, cfg.lr), batch_size=cfg.batch_size, eval_every=every,
        data_key=jax.random.fold_in(root, 0), progress=progress,
        desc=f"search: dense ({n_seeds} seeds)", on_eval=on_eval,
        augment=_study.augmentation(cfg, ds),
    )  # fmt: skip
    masks = np.stack(history)
    emerged = found >= 0
    for seed, r in zip(*np.nonzero(~emerged), strict=True):  # no EB ticket: the final mask
        snaps[(int(seed), int(r))] = _snapshot(state, int(seed))
    ticket_point = np.where(emerged, found, len(history) - 1)
    # The online FIFO and the offline rule on the whole history must agree.
    offline = first_emergence(masks, cfg.window, cfg.epsilon)
    assert np.array_equal(np.where(emerged, found, -1), offline), (found, offline)
    order = [snaps[(seed, r)] for r in range(n_ratios) for seed in range(n_seeds)]
    tickets = jax.tree.map(lambda *a: np.stack(a), *order)
    search = Search(masks, np.asarray(points), ticket_point, emerged)
    return search, tickets, hist, np.asarray(state.step)


def _snapshot(state: train.TrainState, seed: int) -> dict[str, Any]:
    """A host copy of one seed's params and BN statistics (device buffers get reused)."""
    return jax.device_get(
        {"params": _channels.ticket(state.params, seed),
         "model_state": _channels.ticket(state.model_state, seed)}
    )  # fmt: skip


def _save_search(folder: Path, search: Search, tickets: Any) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    train.checkpoint.save(folder / "eb_tickets", tickets, overwrite=True)
    tmp = folder / ".tmp-masks.npz"
    np.savez_compressed(tmp, **search._asdict())
    os.replace(tmp, folder / "masks.npz")


def read_search(path: Path) -> Search:
    """The masks of a run's search (``state/masks.npz``); a damaged or missing file is a
    ``ValueError`` naming it."""
    try:
        with np.load(path, allow_pickle=False) as f:
            return Search(*(f[name] for name in Search._fields))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(
            f"{path} is damaged or missing ({type(err).__name__}: {err}); run the study again on "
            "this folder: the search is recomputed."
        ) from None


def _load_search(folder: Path, nets: _channels.Nets, n_tickets: int) -> tuple[Search, Any]:
    search = read_search(folder / "masks.npz")
    like = {"params": nets.params, "model_state": nets.model_state}
    like = jax.tree.map(lambda a: np.zeros((n_tickets, *np.shape(a)[1:]), a.dtype), like)
    return search, train.checkpoint.restore(folder / "eb_tickets", like=like)


# ---- rows --------------------------------------------------------------------------------------


class _Ctx(NamedTuple):
    """What every unit of a run shares."""

    cfg: Config
    ds: data.Dataset
    nets: _channels.Nets
    groups: tuple[structured.ChannelGroup, ...]
    scored: tuple[structured.ChannelGroup, ...]
    every: int
    epoch: int  # iterations per epoch
    dense_flops: float
    dense_params: int
    root: Any
    progress: bool


def _ticket_cols(ctx: _Ctx, search: Search, seed: int, r: int) -> dict[str, Any]:
    """The columns of one (ratio, seed) ticket that every arm's row repeats."""
    cfg = ctx.cfg
    k = int(search.ticket_point[seed, r])
    emerged = bool(search.emerged[seed, r])
    t = int(search.iterations[k])
    mask, final = search.masks[k, seed, r], search.masks[-1, seed, r]
    return {
        "study": "early_bird", "preset": cfg.preset, "dataset": cfg.dataset, "model": cfg.model,
        "width": cfg.width, "seed": seed, "ratio": cfg.ratios[r], "emerged": emerged,
        "emergence_iteration": t if emerged else None,
        "emergence_epoch": t / ctx.epoch if emerged else None,
        "ticket_iteration": t,
        "channel_density": float(mask.mean()),
        "eb_final_distance": float(np.mean(mask != final)),
        "iterations_per_epoch": ctx.epoch,
    }  # fmt: skip


def _dense_rows(
    ctx: _Ctx, search: Search, hist: train.History, steps_taken: np.ndarray
) -> list[dict[str, Any]]:
    rows = []
    for r in range(len(ctx.cfg.ratios)):
        for seed in range(ctx.cfg.seeds):
            rows.append({
                **_ticket_cols(ctx, search, seed, r), "arm": "dense", "params": ctx.dense_params,
                "flops": ctx.dense_flops, "flops_ratio": 1.0, "start_iteration": 0,
                "iterations": ctx.cfg.iterations, "steps_taken": int(steps_taken[seed]),
                "train_cost": 1.0, **sweep.history_columns(hist, seed),
            })  # fmt: skip
    return rows


def train_cost(arm: str, t_eb: int, total: int, f_dense: float, f_pruned: float) -> float:
    r"""Training cost relative to dense training, in forward FLOPs (a proxy for compute).

    .. math:: \text{eb\_continue}: \frac{t_{EB} F_d + (T - t_{EB}) F_p}{T F_d}, \qquad
              \text{eb\_scratch}: \frac{t_{EB} F_d + T F_p}{T F_d}, \qquad \text{dense}: 1

    Example:
      >>> train_cost("eb_continue", 100, 1000, 4.0, 1.0), train_cost("eb_scratch", 100, 1000, 4.0, 1.0)
      (0.325, 0.35)
    """
    if arm not in ARMS:
        raise ValueError(f"arm must be one of {ARMS}, got {arm!r}.")
    if arm == "dense":
        return 1.0
    pruned = total - t_eb if arm == "eb_continue" else total
    return (t_eb * f_dense + pruned * f_pruned) / (total * f_dense)


def fit_groups(
    keeps: Sequence[Mapping[str, Any]], starts: Sequence[int], arm: str
) -> dict[tuple[Any, int], list[int]]:
    """The seeds that train as one vmapped program: equal kept widths (:func:`_channels.arch_key`)
    and, for ``eb_continue``, the same start iteration (``eb_scratch`` starts at 0).

    Returns ``{(arch key, start): [seed, ...]}`` in order of first seed.

    Example:
      >>> import numpy as np
      >>> keeps = [{"conv1": np.array([1, 0, 1])}, {"conv1": np.array([0, 1, 1])},
      ...          {"conv1": np.array([1, 1, 1])}]
      >>> list(fit_groups(keeps, [36, 54, 36], "eb_scratch").values())
      [[0, 1], [2]]
      >>> list(fit_groups(keeps, [36, 54, 36], "eb_continue").values())
      [[0], [1], [2]]
    """
    out: dict[tuple[Any, int], list[int]] = {}
    for seed, (keep, start) in enumerate(zip(keeps, starts, strict=True)):
        key = (_channels.arch_key(dict(keep)), start if arm == "eb_continue" else 0)
        out.setdefault(key, []).append(seed)
    return out


def _retrain(ctx: _Ctx, search: Search, tickets: Any, r: int, arm: str,
             apply_of: dict[Any, Any]) -> list[dict[str, Any]]:  # fmt: skip
    """Train the compacted tickets of ratio ``r`` in ``arm``; one fit per architecture (and start)."""
    cfg = ctx.cfg
    keeps = [
        keep_vectors(search.masks[search.ticket_point[s, r], s, r], ctx.groups, ctx.scored)
        for s in range(cfg.seeds)
    ]
    starts = [int(search.iterations[search.ticket_point[s, r]]) for s in range(cfg.seeds)]
    rows = []
    for (arch, start), members in fit_groups(keeps, starts, arm).items():
        modules, params, states = [], [], []
        for s in members:
            if arm == "eb_continue":
                snap = _channels.ticket(tickets, r * cfg.seeds + s)
                c = structured.compact(ctx.nets.modules[s], keeps[s], params=snap["params"],
                                       model_state=snap["model_state"])  # fmt: skip
                modules.append(c.model)
                params.append(c.params)
                states.append(c.model_state)
            else:
                m = structured.scratch(ctx.nets.modules[s], keeps[s], seed=10_000 + 100 * r + s)
                _, p, st = models.stateful(m)
                modules.append(m)
                params.append(p)
                states.append(st)
        # One apply_fn per architecture: both arms then share its compiled programs.
        apply_fn = apply_of.setdefault(arch, models.stateful(modules[0])[0])
        nets = _channels.Nets(modules, apply_fn, train.stack(params), train.stack(states))
        steps = _channels.steps(apply_fn, cfg.momentum, cfg.weight_decay, cfg.retrain_penalty)
        state = _channels.init_state(steps, nets)
        if start < cfg.iterations:
            # A resumed run: the schedule goes on at its rate of step `start` (the count in the
            # optimizer state), the data in the order of one run from 0.
            state, hist = _channels.fit(
                steps, state, ctx.ds, _channels.schedule(cfg.iterations, cfg.lr),
                batch_size=cfg.batch_size, eval_every=ctx.every,
                data_key=jax.random.fold_in(ctx.root, 1 + (arm == "eb_scratch")),
                progress=ctx.progress, desc=f"p={cfg.ratios[r]:g} {arm} ({len(members)} seeds)",
                start=start, augment=_study.augmentation(cfg, ctx.ds),
            )  # fmt: skip
            cols = [sweep.history_columns(hist, i) for i in range(len(members))]
        else:  # the ticket was drawn at the last iteration: nothing left to train
            acc = _channels.test_accuracy(steps, state, ctx.ds)
            cols = [_untrained_cols(float(a), start) for a in acc]
        for i, s in enumerate(members):
            f = _channels.flops(modules[i], ctx.ds.input_shape)
            rows.append({
                **_ticket_cols(ctx, search, s, r), "arm": arm,
                "params": models.param_count(params[i]), "flops": f,
                "flops_ratio": f / ctx.dense_flops, "start_iteration": start,
                "iterations": cfg.iterations - start, "steps_taken": int(state.step[i]),
                "train_cost": train_cost(arm, starts[s], cfg.iterations, ctx.dense_flops, f),
                **cols[i],
            })  # fmt: skip
    return sorted(rows, key=lambda row: row["seed"])


def _untrained_cols(acc: float, at: int) -> dict[str, Any]:
    return {
        "final_test_acc": acc, "final_val_acc": None, "early_stop_iteration": at,
        "early_stop_test_acc": acc, "first_eval_iteration": at, "first_eval_test_acc": acc,
    }  # fmt: skip


# ---- the run -----------------------------------------------------------------------------------


def run(cfg: Config, *, out: str | os.PathLike[str] = "runs", progress: bool = True) -> Path:
    """Search, then retrain every ratio's tickets in both arms, one committed unit at a time.

    Returns the run folder; a folder that already holds some units resumes after them.
    """
    validate(cfg)
    ds = _study.prepared_data(cfg)
    _study.augmentation(cfg, ds)  # its checks, before anything is written
    n_train = len(ds.train.y)
    every = mask_interval(cfg, ds)
    if every > cfg.iterations:
        _study.fail("iterations", f"at least one mask interval ({every} iterations: one epoch of "
                    f"{n_train} examples at batch {cfg.batch_size})", cfg.iterations)  # fmt: skip
    nets = _channels.build(cfg.model, ds, range(cfg.seeds), width=cfg.width)
    store = results.Store(results.run_dir(out, "early_bird", cfg.to_json()), cfg.to_json())
    groups = structured.channel_groups(nets.modules[0])
    ctx = _Ctx(
        cfg, ds, nets, groups, scored_groups(groups), every,
        max(n_train // cfg.batch_size, 1), _channels.flops(nets.modules[0], ds.input_shape),
        models.param_count(_channels.ticket(nets.params, 0)), jax.random.key(20200426), progress,
    )  # fmt: skip
    done = set(store.done())
    start = time.time()
    state_dir = store.path / "state"
    n_tickets = cfg.seeds * len(cfg.ratios)
    units = [(r, arm) for r in range(len(cfg.ratios)) for arm in ARMS[1:]]
    missing = [u for u in units if f"p{cfg.ratios[u[0]]:g}_{u[1]}" not in done]
    if "search" in done and missing:  # a finished run restores nothing
        try:
            search, tickets = _load_search(state_dir, nets, n_tickets)
        except (ValueError, OSError) as err:  # recomputed: the same program gives the same masks
            store.discard("search", f"its state in {state_dir} is unreadable ({err})")
            done.discard("search")
    if "search" not in done:
        search, tickets, hist, taken = _search(cfg, ds, nets, ctx.scored, every, ctx.root, progress)
        _save_search(state_dir, search, tickets)  # before the commit: a committed unit has state
        store.write("search", _dense_rows(ctx, search, hist, taken))
    apply_of: dict[Any, Any] = {}
    bar = tqdm(units, desc="early_bird: retraining", unit="arm", disable=not progress)
    for r, arm in bar:
        unit = f"p{cfg.ratios[r]:g}_{arm}"
        bar.set_postfix(unit=unit)
        if (r, arm) in missing:
            store.write(unit, _retrain(ctx, search, tickets, r, arm, apply_of))
    bar.close()
    store.write_csv()
    (store.path / "elapsed.txt").write_text(f"{time.time() - start:.1f} s (this invocation)\n")
    store.close()  # the run's lock: another process may take the folder now
    return store.path


# ---- report ------------------------------------------------------------------------------------


def _cell(stats: Mapping[str, Any] | None, value: str, fmt: str, scale: float = 1.0) -> str:
    if stats is None or stats[f"{value}_mean"] is None:
        return "—"
    mean, std = stats[f"{value}_mean"] * scale, stats[f"{value}_std"] * scale
    return f"{mean:{fmt}}" if stats[f"{value}_n"] == 1 else f"{mean:{fmt}} ± {std:{fmt}}"


def arm_table(rows: Sequence[Mapping[str, Any]], value: str, fmt: str = ".1f",
              scale: float = 100.0) -> str:  # fmt: skip
    """A markdown table: one line per ratio, one column per arm, mean ± std over seeds."""
    stats = {(s["ratio"], s["arm"]): s for s in results.summarize(rows, ["ratio", "arm"], [value])}
    ratios = sorted({r["ratio"] for r in rows})
    lines = ["| p | " + " | ".join(ARMS) + " |", "|---:|" + "---:|" * len(ARMS)]
    for p in ratios:
        cells = [_cell(stats.get((p, arm)), value, fmt, scale) for arm in ARMS]
        lines.append(f"| {p:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def emergence_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Per ratio: how many seeds found an EB ticket, when (epoch and iteration, mean ± std over
    those seeds), the channels it keeps and its distance to the final mask."""
    dense = [r for r in rows if r["arm"] == "dense"]
    values = ["emergence_epoch", "emergence_iteration", "channel_density", "eb_final_distance"]
    lines = [
        "| p | emerged | epoch | iteration | channels kept | distance EB → final mask |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for s in results.summarize(dense, ["ratio"], values):
        found = sum(bool(r["emerged"]) for r in dense if r["ratio"] == s["ratio"])
        lines.append(
            f"| {s['ratio']:g} | {found}/{s['n']} | {_cell(s, 'emergence_epoch', '.1f')} | "
            f"{_cell(s, 'emergence_iteration', '.0f')} | {_cell(s, 'channel_density', '.3f')} | "
            f"{_cell(s, 'eb_final_distance', '.3f')} |"
        )
    return "\n".join(lines)


def cost_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Per ratio: the compacted ticket's params and FLOPs, and each arm's training cost."""
    values = ["params", "flops", "flops_ratio", "train_cost"]
    stats = {(s["ratio"], s["arm"]): s for s in results.summarize(rows, ["ratio", "arm"], values)}
    lines = [
        "| p | params | FLOPs / example | FLOPs vs dense | cost eb_continue | cost eb_scratch |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for p in sorted({r["ratio"] for r in rows}):
        c, sc = stats.get((p, "eb_continue")), stats.get((p, "eb_scratch"))
        lines.append(
            f"| {p:g} | {_cell(c, 'params', ',.0f')} | {_cell(c, 'flops', ',.0f')} | "
            f"{_cell(c, 'flops_ratio', '.3f')} | {_cell(c, 'train_cost', '.3f')} | "
            f"{_cell(sc, 'train_cost', '.3f')} |"
        )
    return "\n".join(lines)


def summary(rows: Sequence[Mapping[str, Any]], cfg: Config) -> str:
    """The emergence, accuracy and cost tables of a run."""
    dense = next(r for r in rows if r["arm"] == "dense")
    return (
        f"# Early-Bird tickets — preset `{cfg.preset}` ({cfg.dataset}, {cfg.model} × {cfg.width:g})"
        f"\n\n{cfg.seeds} seeds, mean ± std. Dense search: {cfg.iterations} iterations "
        f"({cfg.iterations / dense['iterations_per_epoch']:.3g} epochs of "
        f"{dense['iterations_per_epoch']}), penalty {cfg.penalty:g}; a mask every "
        f"{f'{cfg.mask_every} iterations' if cfg.mask_every else 'epoch'}; emergence: "
        f"the newest mask within ε = {cfg.epsilon:g} of the {cfg.window - 1} before it.\n\n"
        "### Emergence (EB ticket per ratio p)\n\n"
        + emergence_table(rows)
        + "\n\n### Test accuracy (%) at the end of training\n\n"
        + arm_table(rows, "final_test_acc")
        + "\n\n### Test accuracy (%) at the early-stop iteration\n\n"
        + arm_table(rows, "early_stop_test_acc")
        + "\n\n### Size and training cost (forward-FLOPs proxy, relative to dense training)\n\n"
        + f"Dense: {dense['params']:,} params, {dense['flops']:,.0f} FLOPs per example.\n\n"
        + cost_table(rows)
        + "\n"
    )


def distance_rows(search: Search, ratios: Sequence[float], epoch: int) -> list[dict[str, Any]]:
    """One row per (ratio, seed, mask point k ≥ 1): the distance d(m_k, m_{k−1}), the epoch, and
    whether the ticket emerged there."""
    rows = []
    for r, p in enumerate(ratios):
        for s in range(search.masks.shape[1]):
            d = distance_matrix(search.masks[:, s, r])
            eb = int(search.ticket_point[s, r]) if search.emerged[s, r] else -1
            for k in range(1, len(search.iterations)):
                rows.append({"ratio": p, "seed": s, "epoch": search.iterations[k] / epoch,
                             "distance": float(d[k, k - 1]), "EB ticket": k == eb})  # fmt: skip
    return rows


def matrix_plot(search: Search, r: int, seed: int, epoch: int, path: Path, title: str) -> Path:
    """The pairwise mask distances of one (ratio, seed) over the whole run, as an image."""
    d = distance_matrix(search.masks[:, seed, r])
    ep = search.iterations / epoch
    half = (ep[1] - ep[0]) / 2 if len(ep) > 1 else 0.5
    fig = Figure(figsize=(5.2, 4.4), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(d, cmap="viridis", origin="upper", vmin=0.0,
                      extent=(ep[0] - half, ep[-1] + half, ep[-1] + half, ep[0] - half))  # fmt: skip
    fig.colorbar(image, ax=ax, label="normalised Hamming distance")
    if search.emerged[seed, r]:
        at = ep[int(search.ticket_point[seed, r])]
        ax.axvline(at, color="white", linestyle="--", linewidth=1)
        ax.axhline(
            at, color="white", linestyle="--", linewidth=1, label=f"EB ticket (epoch {at:g})"
        )
        ax.legend(loc="lower left", fontsize="small")
    ax.set_xlabel("epoch")
    ax.set_ylabel("epoch")
    ax.set_title(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def report(folder: Path, cfg: Config) -> dict[str, Path]:
    """Write ``summary.md`` and the plots of a finished run folder; returns their paths."""
    rows = results.Store(folder, cfg.to_json(), readonly=True).rows()
    search = read_search(folder / "state" / "masks.npz")
    epoch = int(rows[0]["iterations_per_epoch"])  # type: ignore[arg-type]
    out = {}
    out["mask_distance"] = plots.line_plot(
        distance_rows(search, cfg.ratios, epoch), x="epoch", y="distance", series="ratio",
        mark="EB ticket", path=folder / "mask_distance.png", xlabel="epoch",
        ylabel="distance to the previous mask", legend_title="prune ratio p",
        title="Channel mask: distance to the previous one",
    )  # fmt: skip
    r = sorted(range(len(cfg.ratios)), key=lambda i: cfg.ratios[i])[len(cfg.ratios) // 2]
    out["mask_distance_matrix"] = matrix_plot(
        search, r, 0, epoch, folder / "mask_distance_matrix.png",
        f"Pairwise mask distance, p = {cfg.ratios[r]:g}, seed 0",
    )  # fmt: skip
    out["accuracy"] = plots.line_plot(
        rows, x="ratio", y="final_test_acc", series="arm", path=folder / "accuracy.png",
        xlabel="channel prune ratio p", ylabel="test accuracy (end of training)",
        title="Dense vs Early-Bird tickets", styles={"dense": {"linestyle": "--"}},
    )  # fmt: skip
    (folder / "summary.md").write_text(summary(rows, cfg))
    out["summary"] = folder / "summary.md"
    return out


def main(argv: Sequence[str] | None = None) -> int:
    return _study.cli(
        argv, __doc__ or "", PRESETS, study="early_bird", help=HELP, check=validate, run=run,
        report=report,
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
