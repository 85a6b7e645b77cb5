r"""Weight-agnostic neural networks (Gaier & Ha 2019): search architectures that work with ONE shared weight.

Instead of pruning a trained network, :func:`jaxprune.wann.search` evolves masks over one parent
feed-forward network — every input (and a bias node) may feed every hidden node and output,
hidden nodes feed later hidden nodes and the outputs — together with one activation per hidden
node (from ``--activations``). Every member of the population is evaluated with every shared
weight of ``--weights`` (each connection carries the same value :math:`w`), the whole population
× weights in one vmapped program, and ranked on Pareto fronts
(:func:`jaxprune.wann.pareto_rank`) of mean accuracy over the weights and, alternating as the WANN
code does, connection count (probability ``--conn-prob``) or best accuracy. Children come from
mutations: add a connection, insert a node on a connection, change a node's activation.
The search starts from minimal networks (``--links`` random input→output connections).

At the end the best network (the best-ranked member of the last generation: the highest mean
accuracy) is measured on the test split (:func:`jaxprune.wann.final_columns`):

* **random shared weight** — one weight drawn from U(−2, 2) on every connection (mean over
  ``--random-draws`` draws): what the paper's MNIST table most likely calls "random weight";
* **random weights** — every connection its own weight drawn from U(−2, 2) (mean over
  ``--random-draws`` draws);
* **best shared weight** — the one shared weight of ``--weights`` with the best validation
  accuracy;
* **ensemble** — the shared-weight networks together, their softmax outputs summed;
* **trained** — one weight per connection trained with Adam (``--iterations``, ``--lr``) under
  the network's mask, starting from the best shared weight; the final test accuracy (the
  early-stop one is in the rows).

Gaier & Ha's MNIST figures, quoted second-hand: ≈ 82% with a random weight, ≈ 92% with the
ensemble or the tuned shared weight, ≈ 94% trained. The summary says plainly which orderings
held.

Presets (``--preset``; any setting can be overridden, see ``--help``):

* ``quick`` — digits (8×8 = 64 inputs), 48 hidden slots, population 128, 600 generations
  ranked on 300 training examples each, 40 starting links, mutations add / insert / change at
  0.5 : 0.3 : 0.2, the six shared weights, every activation: 3.7 minutes measured on 2 idle CPU
  cores (6 CPU-minutes; longer when the cores are shared). ``python -m
  experiments.weight_agnostic``.
* ``mnist`` — MNIST pooled 2×2 to 14×14 = 196 inputs, 128 hidden slots, population 128,
  500 generations ranked on 1,000 examples each (a GPU run; not measured). MNIST must be
  prepared offline (``tfds build mnist`` on a connected machine, then ``--data-dir``); without
  it the run stops before searching with the command to run.

Run folder: ``runs/weight_agnostic-<preset>-<hash>/`` with ``rows/`` (one committed unit per
``--chunk`` generations of a seed, its rows one per generation, and a final unit per seed with
the columns and the best network), ``state/`` (the search state after each committed chunk:
an interrupted run started again continues from the first unfinished generation and ends with
the rows of an uninterrupted run), ``results.csv``, ``summary.md``, ``accuracy.png``,
``connections.png`` and ``network_seed<k>.png`` (the best network).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from jaxprune import data, plots, results, wann

from . import _study

IMAGE_SETS = tuple(n for n in data.names() if n not in data.TEXT_SETS)
"""The datasets the study reads: images, flattened to one input node per pixel (and channel)."""


@dataclasses.dataclass(frozen=True)
class Config:
    """Every setting of a weight-agnostic search; a preset fills them, the command line overrides them."""

    preset: str = "custom"
    dataset: str = "digits"
    val_size: int | None = None
    pool: int = 1
    hidden: int = 48
    links: int = 40
    activations: tuple[str, ...] = wann.ACTIVATIONS
    weights: tuple[float, ...] = wann.SHARED_WEIGHTS
    population: int = 128
    generations: int = 600
    elite: int = 8
    tournament: int = 4
    probs: tuple[float, ...] = (0.5, 0.3, 0.2)
    conn_prob: float = 0.8
    search_batch: int | None = 300
    seeds: int = 1
    chunk: int = 20
    random_draws: int = 10
    iterations: int = 2000
    batch_size: int = 64
    lr: float = 0.01
    eval_every: int = 100
    data_dir: str | None = None

    def to_json(self) -> dict[str, Any]:
        return _study.config_json(self)


HELP = {
    **_study.HELP,
    "dataset": f"image dataset, one of {IMAGE_SETS} (mnist / fashion_mnist / cifar: prepared "
    "offline)",
    "pool": "average-pool the images by this factor before flattening (2: 28×28 → 14×14)",
    "hidden": "hidden-node slots of the parent network (a node exists once a connection uses it)",
    "links": "random input→output connections of every starting (minimal) network",
    "activations": f"comma list of the hidden nodes' activations, from {wann.ACTIVATIONS}",
    "weights": "comma list of the shared weight values every network is evaluated with",
    "population": "networks per generation",
    "generations": "generations of the search",
    "elite": "best networks copied unchanged into the next generation",
    "tournament": "networks drawn per tournament when choosing a parent",
    "probs": f"relative rates of the mutations {wann.MUTATIONS} (3 numbers ≥ 0)",
    "conn_prob": "probability that a generation ranks by (mean accuracy, connections) rather "
    "than (mean accuracy, max accuracy), as the WANN code alternates",
    "search_batch": "training examples drawn afresh each generation to rank the population "
    "(default: the whole training split)",
    "seeds": "independent searches (seed 0, 1, …)",
    "chunk": "generations per committed unit (a killed run resumes at the first unfinished one)",
    "random_draws": "draws of per-connection U(-2, 2) weights for the random-weights column",
    "iterations": "Adam steps training the best network's per-connection weights",
    "batch_size": "examples per training step",
    "lr": "Adam learning rate of the trained column",
    "eval_every": "steps between evaluations of the trained column (early stopping)",
    "data_dir": "tensorflow-datasets folder for mnist / fashion_mnist / cifar (prepared offline)",
}


def quick() -> Config:
    """digits, 48 hidden slots, population 128, 600 generations: about 4 minutes on 2 cores."""
    return Config(preset="quick")


def mnist() -> Config:
    """MNIST pooled to 14×14, 128 hidden slots, population 128, 500 generations (a GPU run)."""
    return Config(
        preset="mnist", dataset="mnist", pool=2, hidden=128, links=100, population=128,
        generations=500, elite=16, search_batch=1000, chunk=25, iterations=5000,
        batch_size=128, eval_every=500,
    )  # fmt: skip


PRESETS: dict[str, Callable[[], Config]] = {"quick": quick, "mnist": mnist}


def validate(cfg: Config) -> None:
    """Refuse a bad setting before anything runs (``ValueError`` naming it)."""
    _study.check_finite(cfg)
    _study.check_at_least(
        cfg, 1, "pool", "links", "generations", "elite", "tournament", "seeds", "chunk",
        "random_draws", "iterations", "batch_size", "eval_every",
    )  # fmt: skip
    _study.check_at_least(cfg, 0, "hidden")
    _study.check_at_least(cfg, 2, "population")
    for name in ("val_size", "search_batch"):
        if getattr(cfg, name) is not None:
            _study.check_at_least(cfg, 1, name)
    if cfg.dataset not in IMAGE_SETS:
        _study.fail("dataset", f"an image dataset, one of {IMAGE_SETS}", cfg.dataset)
    if cfg.data_dir is not None and cfg.dataset not in _study.READS_DATA_DIR:
        _study.fail("data_dir", f"unset for {cfg.dataset!r} (built into jaxprune)", cfg.data_dir)
    _study.check_names(cfg, "activations", wann.ACTIVATIONS)
    if len(set(cfg.activations)) != len(cfg.activations):
        _study.fail("activations", "distinct names, each given once", ",".join(cfg.activations))
    if not cfg.weights:
        _study.fail("weights", "a non-empty comma list of shared weight values", "")
    if len(set(cfg.weights)) != len(cfg.weights):
        _study.fail("weights", "distinct values, each given once",
                    ",".join(f"{w:g}" for w in cfg.weights))  # fmt: skip
    if 0.0 in cfg.weights:
        _study.fail("weights", "non-zero values (a zero weight disconnects every network)", 0.0)
    if cfg.elite >= cfg.population:
        _study.fail("elite", f"fewer than --population = {cfg.population}", cfg.elite)
    if cfg.tournament > cfg.population:
        _study.fail("tournament", f"at most --population = {cfg.population}", cfg.tournament)
    if len(cfg.probs) != len(wann.MUTATIONS) or min(cfg.probs) < 0 or not sum(cfg.probs) > 0:
        _study.fail("probs", f"{len(wann.MUTATIONS)} numbers ≥ 0 with a positive sum, for "
                    f"{wann.MUTATIONS}", ",".join(f"{p:g}" for p in cfg.probs))  # fmt: skip
    if not 0.0 <= cfg.conn_prob <= 1.0:
        _study.fail("conn_prob", "a probability in [0, 1]", cfg.conn_prob)
    if not cfg.lr > 0:
        _study.fail("lr", "> 0", cfg.lr)


def check_data(cfg: Config, splits: Mapping[str, tuple[np.ndarray, np.ndarray]],
               n_out: int) -> None:  # fmt: skip
    """The settings that need the data: ``--links`` at most the input → output edges,
    ``--batch-size`` and ``--search-batch`` at most the training examples."""
    n_in, n = splits["train"][0].shape[1], len(splits["train"][1])
    if cfg.links > (n_in + 1) * n_out:
        _study.fail("links", f"at most the {(n_in + 1) * n_out} input → output connections "
                    f"((inputs + bias) × outputs)", cfg.links)  # fmt: skip
    for name in ("batch_size", "search_batch"):
        if (getattr(cfg, name) or 0) > n:
            _study.fail(name, f"at most the {n} training examples of {cfg.dataset!r}",
                        getattr(cfg, name))  # fmt: skip


def inputs(cfg: Config, ds: data.Dataset) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The splits as ``(x, y)`` with ``x`` float32 ``(n, pixels)``: each image average-pooled
    over ``--pool`` × ``--pool`` blocks, then flattened (one input node per pooled pixel and
    channel)."""
    h, w, c = ds.input_shape
    p = cfg.pool
    if h % p or w % p:
        _study.fail("pool", f"a divisor of the {h}×{w} images of {cfg.dataset!r}", p)
    out = {}
    for name in ("train", "val", "test"):
        x, y = getattr(ds, name)
        pooled = x.reshape(len(x), h // p, p, w // p, p, c).mean(axis=(2, 4))
        out[name] = (np.ascontiguousarray(pooled.reshape(len(x), -1), np.float32), y)
    return out


# ---- network description (rows hold the best network as text) ---------------------------------


def node_names(n_in: int, hidden: int, n_out: int) -> list[str]:
    """Names of the parent's nodes in node order: ``x0 … x{n_in-1}``, ``bias``, ``h0 …``,
    ``o0 …`` (as :mod:`jaxprune.wann` orders them).

    Example:
      >>> node_names(2, 1, 2)
      ['x0', 'x1', 'bias', 'h0', 'o0', 'o1']
    """
    return ([f"x{i}" for i in range(n_in)] + ["bias"] + [f"h{k}" for k in range(hidden)]
            + [f"o{c}" for c in range(n_out)])  # fmt: skip


def describe(genome: wann.Genome, n_in: int, n_out: int) -> dict[str, str]:
    """A genome as two strings a row can hold: ``edges`` (``"x3>h0;h0>o2"``, in node order) and
    ``nodes`` (every used hidden node with its activation, ``"h0:tanh"``).

    Example:
      >>> import numpy as np
      >>> conn = np.zeros((6, 6), bool); conn[0, 3] = conn[3, 5] = conn[2, 4] = True
      >>> act = np.array([wann.ACTIVATIONS.index("sin")], np.int32)
      >>> describe(wann.Genome(conn, act), n_in=2, n_out=2)
      {'edges': 'x0>h0;bias>o0;h0>o1', 'nodes': 'h0:sin'}
    """
    conn = np.asarray(genome.conn, bool)
    hidden = conn.shape[0] - n_in - 1 - n_out
    names = node_names(n_in, hidden, n_out)
    src, dst = np.nonzero(conn)
    edges = ";".join(f"{names[i]}>{names[j]}" for i, j in zip(src, dst, strict=True))
    used = np.flatnonzero(wann.used_hidden(genome, n_in=n_in, n_out=n_out))
    act = np.asarray(genome.act)
    nodes = ";".join(f"h{k}:{wann.ACTIVATIONS[int(act[k])]}" for k in used)
    return {"edges": edges, "nodes": nodes}


def parse_edges(edges: str) -> list[tuple[str, str]]:
    """``"x3>h0;h0>o2"`` → ``[("x3", "h0"), ("h0", "o2")]``."""
    return [tuple(e.split(">", 1)) for e in edges.split(";") if e]  # type: ignore[misc]


def layers(edges: Sequence[tuple[str, str]]) -> dict[str, int]:
    """The column of every node of a drawing: inputs (and the bias) 0, a hidden node one more
    than its deepest source, the outputs one past the deepest hidden node.

    Example:
      >>> layers([("x0", "h1"), ("h1", "h4"), ("x1", "h4"), ("h4", "o0"), ("bias", "o1")])
      {'x0': 0, 'h1': 1, 'h4': 2, 'x1': 0, 'o0': 3, 'bias': 0, 'o1': 3}
    """
    nodes = list(dict.fromkeys(n for e in edges for n in e))
    # Hidden nodes in slot order are a topological order (edges go from lower to higher slots).
    hidden = sorted((n for n in nodes if n.startswith("h")), key=lambda n: int(n[1:]))
    depth = {n: 0 for n in nodes if not n.startswith(("h", "o"))}
    for h in hidden:
        depth[h] = 1 + max((depth[a] for a, b in edges if b == h), default=0)
    last = 1 + max((depth[h] for h in hidden), default=0)
    return {n: depth.get(n, last) for n in nodes}


def draw_network(edges: str, nodes: str, path: str | os.PathLike[str], *,
                 title: str = "") -> Path:  # fmt: skip
    """Draw a network from its row strings (:func:`describe`): inputs on the left (only those
    connected), hidden nodes in columns by depth and labelled by activation, outputs on the
    right; one line per connection."""
    pairs = parse_edges(edges)
    col = layers(pairs)
    act = dict(part.split(":", 1) for part in nodes.split(";") if part)
    by_col: dict[int, list[str]] = {}
    for n in sorted(col, key=_node_order):
        by_col.setdefault(col[n], []).append(n)
    pos = {}
    for c, members in by_col.items():
        for i, n in enumerate(members):
            pos[n] = (float(c), 1.0 - (i + 0.5) / len(members))
    tall = max((len(m) for m in by_col.values()), default=1)
    fig = Figure(figsize=(2.0 + 1.6 * len(by_col), max(3.0, 0.15 * tall)), layout="constrained")
    ax = fig.add_subplot()
    for a, b in pairs:
        (x0, y0), (x1, y1) = pos[a], pos[b]
        ax.plot([x0, x1], [y0, y1], color="0.55", linewidth=0.6, alpha=0.7, zorder=1)
    small = "x-small" if tall > 20 else "small"
    for n, (x, y) in pos.items():
        kind = "input" if col[n] == 0 else ("output" if n.startswith("o") else "hidden")
        color = {"input": "C0", "hidden": "C1", "output": "C2"}[kind]
        ax.scatter([x], [y], s=40, color=color, zorder=2)
        label = {"input": n, "output": n[1:], "hidden": act.get(n, n)}[kind]
        ha = "right" if kind == "input" else ("left" if kind == "output" else "center")
        dx = {"right": -0.08, "left": 0.08, "center": 0.0}[ha]
        dy = 0.02 if kind == "hidden" else 0.0
        ax.text(x + dx, y + dy, label, ha=ha, va="bottom" if dy else "center", fontsize=small,
                zorder=3)  # fmt: skip
    ax.set_xlim(-0.7, max(by_col, default=0) + 0.7)
    ax.set_ylim(-0.03, 1.05)
    ax.axis("off")
    ax.set_title(title or f"{len(pairs)} connections, {len(act)} hidden nodes", fontsize="small")
    out = Path(path)
    fig.savefig(out, dpi=90)
    return out


def _node_order(name: str) -> tuple[int, int]:
    kind = {"x": 0, "b": 1, "h": 2, "o": 3}[name[0]]
    return kind, int(name[1:]) if name[1:].isdigit() else 0


# ---- run ---------------------------------------------------------------------------------------


def chunks(cfg: Config) -> list[tuple[int, int]]:
    """The generations of each committed unit: ``[(0, chunk), (chunk, 2·chunk), …]`` up to
    ``--generations``.

    Example:
      >>> chunks(Config(generations=25, chunk=10))
      [(0, 10), (10, 20), (20, 25)]
    """
    return [(a, min(a + cfg.chunk, cfg.generations)) for a in range(0, cfg.generations, cfg.chunk)]


def unit_name(seed: int, start: int, stop: int) -> str:
    return f"seed{seed}_gen{start:04d}-{stop:04d}"


def _state_file(store: results.Store, seed: int, stop: int) -> Path:
    return store.path / "state" / f"seed{seed}_gen{stop:04d}.json"


def _save_state(path: Path, state: wann.SearchState) -> None:
    """Write a search state atomically (temp file, fsync, replace) before its unit commits."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    with open(tmp, "w") as f:
        json.dump(state.to_json(), f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _resume_point(store: results.Store, cfg: Config,
                  seed: int) -> tuple[int, wann.SearchState | None]:  # fmt: skip
    """``(next chunk index, state to continue from)``: the state after the last committed chunk
    of ``seed`` (``None``: from the start). A committed chunk whose state file is unreadable is
    discarded and computed again (the same program, the same rows)."""
    spans = chunks(cfg)
    while True:
        done = {i for i, (a, b) in enumerate(spans) if store.has(unit_name(seed, a, b))}
        first = next((i for i in range(len(spans)) if i not in done), len(spans))
        if first == 0:
            return 0, None
        path = _state_file(store, seed, spans[first - 1][1])
        try:
            state = wann.SearchState.from_json(json.loads(path.read_text()))
            if state.generation != spans[first - 1][1]:
                raise ValueError(f"it holds generation {state.generation}")
            return first, state
        except (OSError, ValueError, KeyError, TypeError) as err:
            store.discard(unit_name(seed, *spans[first - 1]),
                          f"its search state {path} is unreadable ({err})")  # fmt: skip


GENERATION_COLUMNS = {
    "best_mean_acc": "mean_acc", "best_max_acc": "max_acc", "best_connections": "connections",
    "pop_max_acc": "pop_max_acc", "mean_connections": "pop_mean_connections",
}  # fmt: skip
"""Row column → :class:`jaxprune.wann.SearchState` history key, per generation (training split):
the best-ranked network's mean and max accuracy over the shared weights and its connections,
the population's best max accuracy and its mean connections."""


def search_seed(cfg: Config, x: np.ndarray, y: np.ndarray, n_out: int, seed: int,
                store: results.Store, progress: bool) -> wann.SearchState:  # fmt: skip
    """Every uncommitted chunk of one seed's search (:func:`jaxprune.wann.search` resumed from
    the last committed state), each committed with one row per generation after its state is
    saved; returns the final state."""
    first, state = _resume_point(store, cfg, seed)
    for start, stop in chunks(cfg)[first:]:
        state = wann.search(
            x, y, population=cfg.population, generations=stop, hidden=cfg.hidden,
            activations=cfg.activations, weights=cfg.weights, seed=seed, elite=cfg.elite,
            tournament=cfg.tournament, links=cfg.links, probs=cfg.probs,
            conn_prob=cfg.conn_prob, batch_size=cfg.search_batch, classes=n_out, progress=progress, resume=state,
        ).state  # fmt: skip
        rows = [
            {"part": "generation", "seed": seed, "generation": g + 1,
             **{col: state.history[key][g] for col, key in GENERATION_COLUMNS.items()}}
            for g in range(start, stop)
        ]  # fmt: skip
        _save_state(_state_file(store, seed, stop), state)
        store.write(unit_name(seed, start, stop), rows)
    assert state is not None  # at least one chunk: --generations ≥ 1
    return state


def final_rows(cfg: Config, splits: Mapping[str, tuple[np.ndarray, np.ndarray]], n_out: int,
               seed: int, state: wann.SearchState, progress: bool) -> list[dict[str, Any]]:  # fmt: skip
    """The four columns (:func:`jaxprune.wann.final_columns`, test split) of the best network
    of a finished search — the best-ranked member of its last generation —, its connections
    and used hidden nodes, and the network as text (:func:`describe`)."""
    best = wann.Genome(state.best_conn, state.best_act)
    n_in = splits["train"][0].shape[1]
    cols = wann.final_columns(
        best, splits, activations=cfg.activations, weights=cfg.weights, seed=seed,
        random_draws=cfg.random_draws, iterations=cfg.iterations, batch_size=cfg.batch_size,
        learning_rate=cfg.lr, eval_every=cfg.eval_every, progress=progress,
    )  # fmt: skip
    return [{
        "part": "final", "seed": seed, "connections": int(np.sum(best.conn)),
        "hidden_used": int(wann.used_hidden(best, n_in=n_in, n_out=n_out).sum()),
        "random_shared_acc": cols["random_shared"],
        "random_shared_std": cols["random_shared_std"],
        "random_acc": cols["random"], "random_std": cols["random_std"],
        "shared_weight": cols["shared_weight"], "shared_acc": cols["shared"],
        "ensemble_acc": cols["ensemble"], "trained_acc": cols["trained"],
        "trained_early_stop_acc": cols["trained_early_stop"],
        **describe(best, n_in, n_out),
    }]  # fmt: skip


def run(cfg: Config, *, out: str = "runs", progress: bool = True) -> Path:
    """Search every seed (one committed unit per chunk of generations), then measure each
    seed's best network; returns the run folder. A finished run computes nothing; an
    interrupted one continues from the first unfinished chunk."""
    validate(cfg)
    ds = data.load(cfg.dataset, seed=0, val_size=cfg.val_size, data_dir=cfg.data_dir)
    splits = inputs(cfg, ds)
    check_data(cfg, splits, ds.num_classes)
    store = results.Store(results.run_dir(out, "weight_agnostic", cfg.to_json()), cfg.to_json())
    start = time.time()
    bar = tqdm(range(cfg.seeds), desc="weight_agnostic", unit="seed", disable=not progress)
    for seed in bar:
        if store.has(f"seed{seed}_final"):
            continue
        x, y = splits["train"]
        state = search_seed(cfg, x, y, ds.num_classes, seed, store, progress)
        rows = final_rows(cfg, splits, ds.num_classes, seed, state, progress)
        store.write(f"seed{seed}_final", rows)
    bar.close()
    store.write_csv()
    (store.path / "elapsed.txt").write_text(f"{time.time() - start:.1f} s (this invocation)\n")
    store.close()  # the run's lock: another process may take the folder now
    return store.path


# ---- report ------------------------------------------------------------------------------------

PAPER = "MNIST (Gaier & Ha 2019, second-hand): random ≈ 82%, ensemble / tuned shared ≈ 92%, trained ≈ 94%"


def _pct(v: Any) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def generation_table(rows: Sequence[Mapping[str, Any]], lines: int | None = None) -> str:
    """One line per generation (training split): the best-ranked network's mean and max
    accuracy over the shared weights and its connections, the population's best max accuracy
    and mean connections; the mean over seeds when there are several. With ``lines``, at most
    about that many lines: every k-th generation from the first, and the last.

    Example:
      >>> rows = [{"part": "generation", "seed": s, "generation": g, "best_mean_acc": a,
      ...          "best_max_acc": a + 0.1, "best_connections": c, "pop_max_acc": a + 0.2,
      ...          "mean_connections": c + 2}
      ...         for s, g, a, c in ((0, 1, 0.2, 10), (0, 2, 0.3, 12), (1, 1, 0.4, 11))]
      >>> print(generation_table(rows))
      | generation | best mean acc (%) | best max acc (%) | connections | population max acc (%) | population mean connections |
      |---:|---:|---:|---:|---:|---:|
      | 1 | 30.0 | 40.0 | 10.5 | 50.0 | 12.5 |
      | 2 | 30.0 | 40.0 | 12 | 50.0 | 14 |
    """
    gens = [r for r in rows if r.get("part") == "generation"]
    stats = results.summarize(gens, ["generation"], list(GENERATION_COLUMNS))
    table = ["| generation | best mean acc (%) | best max acc (%) | connections | population "
             "max acc (%) | population mean connections |", "|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    stats = sorted(stats, key=lambda s: s["generation"])
    if lines is not None and len(stats) > lines:  # every k-th generation, and the last
        step = math.ceil(len(stats) / lines)
        stats = stats[::step] + ([stats[-1]] if (len(stats) - 1) % step else [])
    for s in stats:
        table.append(
            f"| {s['generation']} | {_pct(s['best_mean_acc_mean'])} | "
            f"{_pct(s['best_max_acc_mean'])} | {s['best_connections_mean']:.3g} | "
            f"{_pct(s['pop_max_acc_mean'])} | {s['mean_connections_mean']:.3g} |"
        )
    return "\n".join(table)


FOUR = (("random_acc", "random weights"), ("shared_acc", "best shared weight"),
        ("ensemble_acc", "ensemble"), ("trained_acc", "trained"))  # fmt: skip
"""The four columns: row key and heading (test accuracy)."""
COLUMNS = (("random_shared_acc", "random shared weight"), *FOUR)
"""The table's columns: a random shared weight (what the paper's MNIST table most likely calls
"random weight") before the four."""


def final_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The columns per seed: test accuracy with a random shared weight, with random weights,
    with the best shared weight (its value), of the ensemble and trained, with the network's
    connections and used hidden nodes; mean ± std over seeds when there are several.

    Example:
      >>> rows = [{"part": "final", "seed": 0, "connections": 31, "hidden_used": 4,
      ...          "random_shared_acc": 0.6, "random_acc": 0.5, "shared_weight": -1.0,
      ...          "shared_acc": 0.7, "ensemble_acc": 0.72, "trained_acc": 0.9}]
      >>> print(final_table(rows))
      | seed | connections | hidden nodes | random shared weight | random weights | best shared weight | ensemble | trained |
      |---:|---:|---:|---:|---:|---:|---:|---:|
      | 0 | 31 | 4 | 60.0 | 50.0 | 70.0 (w = -1) | 72.0 | 90.0 |
    """
    finals = sorted((r for r in rows if r.get("part") == "final"), key=lambda r: r["seed"])
    lines = ["| seed | connections | hidden nodes | " + " | ".join(h for _, h in COLUMNS) + " |",
             "|---:|---:|---:|" + "---:|" * len(COLUMNS)]  # fmt: skip
    for r in finals:
        cells = [_pct(r.get(k)) for k, _ in COLUMNS]
        cells[2] += f" (w = {r['shared_weight']:g})"
        lines.append(f"| {r['seed']} | {r['connections']} | {r['hidden_used']} | "
                     + " | ".join(cells) + " |")  # fmt: skip
    if len(finals) > 1:
        s = results.summarize(finals, ["part"], ["connections", "hidden_used",
                                                 *(k for k, _ in COLUMNS)])[0]  # fmt: skip
        cells = [f"{_pct(s[f'{k}_mean'])} ± {_pct(s[f'{k}_std'])}" for k, _ in COLUMNS]
        lines.append(f"| mean | {s['connections_mean']:.1f} | {s['hidden_used_mean']:.1f} | "
                     + " | ".join(cells) + " |")  # fmt: skip
    return "\n".join(lines)


def verdicts(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Whether the paper's ordering held on the mean over seeds, in words: random < best shared
    weight < trained, ensemble < trained (and random shared weight < best shared weight, when
    the rows have it).

    Example:
      >>> rows = [{"part": "final", "random_acc": 0.8, "shared_acc": 0.7, "ensemble_acc": 0.9,
      ...          "trained_acc": 0.95}]
      >>> for line in verdicts(rows): print(line)
      random weights < best shared weight: did NOT hold (80.0 vs 70.0).
      best shared weight < trained: held (70.0 vs 95.0).
      ensemble < trained: held (90.0 vs 95.0).
    """
    finals = [r for r in rows if r.get("part") == "final"]
    if not finals:
        return []
    keys = [k for k, _ in COLUMNS if all(r.get(k) is not None for r in finals)]
    mean = {k: float(np.mean([r[k] for r in finals])) for k in keys}
    name = dict(COLUMNS)
    pairs = [("random_acc", "shared_acc"), ("shared_acc", "trained_acc"),
             ("ensemble_acc", "trained_acc")]  # fmt: skip
    if "random_shared_acc" in mean:
        pairs.insert(0, ("random_shared_acc", "shared_acc"))
    out = []
    for a, b in pairs:
        held = "held" if mean[a] < mean[b] else "did NOT hold"
        out.append(f"{name[a]} < {name[b]}: {held} ({_pct(mean[a])} vs {_pct(mean[b])}).")
    return out


def summary(rows: Sequence[Mapping[str, Any]], cfg: Config) -> str:
    """The four-column table, the verdicts and the per-generation table of a run."""
    pooled = f", pooled {cfg.pool}×{cfg.pool}" if cfg.pool > 1 else ""
    head = (
        f"# Weight-agnostic networks — preset `{cfg.preset}` ({cfg.dataset}{pooled})\n\n"
        f"Population {cfg.population}, {cfg.generations} generations, {cfg.hidden} hidden slots, "
        f"{cfg.links} starting links, {cfg.seeds} seed(s); shared weights "
        f"{', '.join(f'{w:g}' for w in cfg.weights)}; activations {', '.join(cfg.activations)}."
        f"\n"
    )
    return "\n".join([
        head,
        "## The best network, test accuracy (%)\n",
        final_table(rows),
        "",
        f"Random shared weight: one weight U(−2, 2) on every connection; random weights: every "
        f"connection its own U(−2, 2); both the mean of {cfg.random_draws} draws. Best "
        "shared weight: the one with the best validation accuracy; ensemble: the shared-weight "
        "networks' softmax outputs summed; trained: one weight per connection, from the best "
        f"shared weight, Adam {cfg.lr:g}, {cfg.iterations} steps of {cfg.batch_size}, test "
        "accuracy at the end.",
        f"For comparison, {PAPER}.\n",
        "\n".join(f"- {line}" for line in verdicts(rows)) or "- (no finished seed)",
        "\n## The search, per generation (training split; every generation in results.csv)\n",
        generation_table(rows, lines=25),
        "",
    ]) + "\n"  # fmt: skip


def plot_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The per-generation rows in long form for the accuracy plot: one row per generation, seed
    and measure (``best mean`` / ``best max``)."""
    out = []
    for r in rows:
        if r.get("part") == "generation":
            for measure, key in (("best mean", "best_mean_acc"), ("best max", "best_max_acc")):
                out.append({"generation": r["generation"], "seed": r["seed"],
                            "measure": measure, "accuracy": r[key]})  # fmt: skip
    return out


def report(folder: Path, cfg: Config) -> dict[str, Path]:
    """Write ``summary.md``, ``accuracy.png``, ``connections.png`` and the drawing of each
    seed's best network of a run folder."""
    rows = results.Store(folder, cfg.to_json(), readonly=True).rows()
    out: dict[str, Path] = {}
    if any(r.get("part") == "generation" for r in rows):
        out["accuracy"] = plots.line_plot(
            plot_rows(rows), x="generation", y="accuracy", series="measure",
            path=folder / "accuracy.png", xlabel="generation",
            ylabel="training accuracy (shared weights)",
            title="Weight-agnostic search: the best network per generation",
        )  # fmt: skip
        gens = [{**r, "network": "best"} for r in rows if r.get("part") == "generation"]
        gens += [{**r, "network": "population mean", "best_connections": r["mean_connections"]}
                 for r in rows if r.get("part") == "generation"]  # fmt: skip
        out["connections"] = plots.line_plot(
            gens, x="generation", y="best_connections", series="network",
            path=folder / "connections.png", xlabel="generation", ylabel="connections",
            title="Weight-agnostic search: connections per generation",
        )  # fmt: skip
    for r in rows:
        if r.get("part") == "final":
            name = f"network_seed{r['seed']}"
            out[name] = draw_network(
                str(r["edges"]), str(r["nodes"]), folder / f"{name}.png",
                title=f"seed {r['seed']}: {r['connections']} connections, {r['hidden_used']} "
                f"hidden nodes, best shared weight {r['shared_weight']:g} → "
                f"{_pct(r['shared_acc'])}% test",
            )  # fmt: skip
    (folder / "summary.md").write_text(summary(rows, cfg))
    out["summary"] = folder / "summary.md"
    return out


def main(argv: Sequence[str] | None = None) -> int:
    return _study.cli(
        argv, __doc__ or "", PRESETS, study="weight_agnostic", help=HELP, check=validate,
        run=run, report=report,
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
