"""Group importance (jaxprune.structured.importance): every criterion, member set, reduction and
normalisation against numpy written here; round_to; jit ∘ vmap over tickets; errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprune import models, structured

S = structured.Slice
HEADS = ((0, 2), (1, 3))  # channel k of "heads" owns columns k and k + 2 (2 positions each)

# Three hand-made groups. "c1": a conv (hand-made: no producers, the kernel's last axis is the
# producer) with a bias, a batch norm (its running mean is model state, absent from params) and a
# consumer conv. "p": a residual-style group of 2 producers (p and q) read by a dense layer after
# a flatten (position i of fc's rows belongs to channel i mod 3). "heads": 2 heads, each owning 2
# columns of attn (explicit index) and 2 rows of proj.
C1 = structured.ChannelGroup(
    "c1", 4, ("c1", "kernel"),
    (S(("c1", "kernel"), 3), S(("c1", "bias"), 0), S(("bn1", "scale"), 0), S(("bn1", "bias"), 0),
     S(("bn1", "mean"), 0)),
    (S(("c2", "kernel"), 2),),
    ("bn1", "scale"),
)  # fmt: skip
P = structured.ChannelGroup(
    "p", 3, ("p", "kernel"),
    (S(("p", "kernel"), 1), S(("p", "bias"), 0), S(("q", "kernel"), 1)),
    (S(("fc", "kernel"), 0),),
    None,
    producers=(S(("p", "kernel"), 1), S(("q", "kernel"), 1)),
)  # fmt: skip
H = structured.ChannelGroup(
    "heads", 2, ("attn", "kernel"),
    (S(("attn", "kernel"), 1, HEADS), S(("attn", "bias"), 0, HEADS)),
    (S(("proj", "kernel"), 0, HEADS),),
    None,
    producers=(S(("attn", "kernel"), 1, HEADS),),
)  # fmt: skip
GROUPS = (C1, P, H)
SHAPES = {"c1": {"kernel": (3, 3, 2, 4), "bias": (4,)}, "bn1": {"scale": (4,), "bias": (4,)},
          "c2": {"kernel": (3, 3, 4, 5)}, "p": {"kernel": (5, 3), "bias": (3,)},
          "q": {"kernel": (4, 3)}, "fc": {"kernel": (6, 2)}, "attn": {"kernel": (5, 4), "bias": (4,)},
          "proj": {"kernel": (4, 3)}}  # fmt: skip
# The slices each `over` scores, written out by hand (bn1/mean is model state: not in params).
OVER = {
    "producer": {"c1": [S(("c1", "kernel"), 3)], "p": [S(("p", "kernel"), 1)],
                 "heads": [S(("attn", "kernel"), 1, HEADS)]},
    "producers": {"c1": [S(("c1", "kernel"), 3)], "p": [S(("p", "kernel"), 1), S(("q", "kernel"), 1)],
                  "heads": [S(("attn", "kernel"), 1, HEADS)]},
    "all": {"c1": [S(("c1", "kernel"), 3), S(("c1", "bias"), 0), S(("bn1", "scale"), 0),
                   S(("bn1", "bias"), 0), S(("c2", "kernel"), 2)],
            "p": [S(("p", "kernel"), 1), S(("p", "bias"), 0), S(("q", "kernel"), 1),
                  S(("fc", "kernel"), 0)],
            "heads": [S(("attn", "kernel"), 1, HEADS), S(("attn", "bias"), 0, HEADS),
                      S(("proj", "kernel"), 0, HEADS)]},
}  # fmt: skip
SIZES = {g.name: g.size for g in GROUPS}


def _tree(seed: int) -> dict:
    """Random continuous values for every leaf of SHAPES (no ties between channels)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda shape: jnp.asarray(rng.normal(size=shape).astype(np.float32)),
        SHAPES,
        is_leaf=lambda x: isinstance(x, tuple),
    )


def _rows(tree: dict, s: structured.Slice, size: int) -> np.ndarray:
    """numpy: row k = every entry channel k owns (positions k, k + size, ... when no index)."""
    a = np.moveaxis(np.asarray(tree[s.path[0]][s.path[1]], np.float64), s.axis, 0)
    picks = [a[k::size] if s.positions is None else a[list(s.positions[k])] for k in range(size)]
    return np.stack([p.ravel() for p in picks])


def _lamp_np(u: np.ndarray) -> np.ndarray:
    """u_k / Σ u_j over j ranked at or above k: larger u, or equal u and index >= k."""
    out = np.zeros(len(u))
    for k in range(len(u)):
        above = [j for j in range(len(u)) if u[j] > u[k] or (u[j] == u[k] and j >= k)]
        total = sum(u[j] for j in above)
        out[k] = u[k] / total if total > 0 else 0.0
    return out


def _member_np(criterion: str, rows: np.ndarray, grad_rows: np.ndarray) -> np.ndarray:
    if criterion == "l1":
        return np.abs(rows).sum(1)
    if criterion == "l2":
        return np.sqrt((rows**2).sum(1))
    if criterion == "taylor":
        return (rows * grad_rows).sum(1) ** 2
    if criterion == "fpgm":
        n = len(rows)
        return np.array(
            [sum(np.linalg.norm(rows[k] - rows[j]) for j in range(n)) for k in range(n)]
        )
    return _lamp_np((rows**2).sum(1))


def _scores_np(params, grads, criterion, over, reduction, normalize=None) -> dict:
    out = {}
    for name, slices in OVER[over].items():
        members = [
            _member_np(criterion, _rows(params, s, SIZES[name]), _rows(grads, s, SIZES[name]))
            for s in slices
        ]
        s = {"sum": np.sum, "mean": np.mean, "max": np.max}[reduction](np.stack(members), axis=0)
        out[name] = _normalize_np(s, normalize)
    return out


def _normalize_np(s: np.ndarray, how: str | None) -> np.ndarray:
    if how is None:
        return s
    if how == "standard":
        span = s.max() - s.min()
        return (s - s.min()) / span if span > 0 else np.zeros_like(s)
    d = {"mean": s.mean(), "max": s.max(), "sum": s.sum()}[how]
    return s / d if d > 0 else np.zeros_like(s)


@pytest.mark.parametrize("criterion", ["l1", "l2", "taylor", "fpgm", "lamp"])
@pytest.mark.parametrize("over", ["producer", "producers", "all"])
def test_criteria_over_members_match_numpy(criterion, over) -> None:
    params, grads = _tree(0), _tree(1)
    for reduction in ("sum", "mean", "max"):
        got = structured.channel_scores(
            params, GROUPS, criterion, grads=grads, over=over, reduction=reduction
        )
        want = _scores_np(params, grads, criterion, over, reduction)
        assert set(got) == set(want)
        for name in want:
            assert got[name].dtype == jnp.float32 and got[name].shape == (SIZES[name],)
            np.testing.assert_allclose(got[name], want[name], rtol=2e-5, atol=1e-6)


def test_default_is_the_first_producers_filter_norm() -> None:
    """Defaults (over="producer", mean, no normalisation) = Li et al.: Σ|W[..., k]| per filter."""
    params = _tree(2)
    got = structured.channel_scores(params, GROUPS)
    w = np.asarray(params["c1"]["kernel"])
    np.testing.assert_allclose(got["c1"], np.abs(w).sum((0, 1, 2)), rtol=1e-6)
    attn = np.abs(np.asarray(params["attn"]["kernel"]))
    np.testing.assert_allclose(
        got["heads"], [attn[:, [0, 2]].sum(), attn[:, [1, 3]].sum()], rtol=1e-6
    )


@pytest.mark.parametrize("normalize", ["mean", "max", "sum", "standard"])
def test_normalisations_match_numpy(normalize) -> None:
    params, grads = _tree(3), _tree(4)
    for criterion in ("l2", "taylor"):
        got = structured.channel_scores(
            params, GROUPS, criterion, grads=grads, over="all", reduction="max", normalize=normalize
        )
        want = _scores_np(params, grads, criterion, "all", "max", normalize)
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=2e-5, atol=1e-6)
    bn = structured.channel_scores(params, (C1,), "bn", normalize=normalize)["c1"]
    gamma = np.abs(np.asarray(params["bn1"]["scale"], np.float64))
    np.testing.assert_allclose(bn, _normalize_np(gamma, normalize), rtol=1e-6)


def test_all_zero_group_scores_zero_not_nan() -> None:
    params = jax.tree.map(jnp.zeros_like, _tree(5))
    for criterion in ("l1", "l2", "taylor", "fpgm", "lamp", "bn"):
        groups = (C1,) if criterion == "bn" else GROUPS
        for normalize in (None, "mean", "max", "sum", "standard"):
            got = structured.channel_scores(
                params, groups, criterion, grads=params, over="all", normalize=normalize
            )
            for s in got.values():
                np.testing.assert_array_equal(s, np.zeros(s.shape))


def test_bn_is_abs_gamma_and_needs_a_batch_norm() -> None:
    params = _tree(6)
    got = structured.channel_scores(params, (C1,), "bn", over="all", reduction="sum")
    np.testing.assert_array_equal(got["c1"], np.abs(np.asarray(params["bn1"]["scale"])))
    with pytest.raises(ValueError, match=r"criterion='bn'.*\['p', 'heads'\]"):
        structured.channel_scores(params, GROUPS, "bn")


def test_lamp_by_hand() -> None:
    # Columns [2, 0], [1, 0], [0, -2], [1, 1]: u = [4, 1, 4, 2]. Ascending, ties by index:
    # 1 (k=1), 2 (k=3), 4 (k=0), 4 (k=2), with tail sums 11, 10, 8, 4.
    w = jnp.array([[2.0, 1.0, 0.0, 1.0], [0.0, 0.0, -2.0, 1.0]])
    g = structured.ChannelGroup("w", 4, ("w", "kernel"), (), (), None)
    got = structured.channel_scores({"w": {"kernel": w}}, (g,), "lamp")["w"]
    np.testing.assert_allclose(got, [4 / 8, 1 / 11, 4 / 4, 2 / 10], rtol=1e-6)


def test_fpgm_by_hand_and_against_a_double_loop() -> None:
    # Five filters: the origin and the 4 unit vectors ±e1, ±e2. The origin is the geometric
    # median: 4 · 1 = 4; each unit vector: 1 + 2 + 2·√2 (to the origin, its opposite, the others).
    w = jnp.array([[0.0, 1.0, -1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0, -1.0]])
    g = structured.ChannelGroup("w", 5, ("w", "kernel"), (), (), None)
    got = structured.channel_scores({"w": {"kernel": w}}, (g,), "fpgm")["w"]
    np.testing.assert_allclose(got, [4.0] + [3 + 2 * np.sqrt(2)] * 4, rtol=1e-6)
    # Filters far from the origin with a close pair: the Gram form must not cancel badly.
    rng = np.random.default_rng(7)
    rows = 10.0 + rng.normal(size=(6, 9))
    rows[3] = rows[2] + 1e-3 * rng.normal(size=9)
    big = structured.ChannelGroup("b", 6, ("b", "kernel"), (), (), None)
    got = structured.channel_scores(
        {"b": {"kernel": jnp.asarray(rows.T, jnp.float32)}}, (big,), "fpgm"
    )["b"]
    r = rows.astype(np.float32).astype(np.float64)
    want = [sum(np.linalg.norm(r[k] - r[j]) for j in range(6)) for k in range(6)]
    np.testing.assert_allclose(got, want, rtol=1e-4)


def _round_np(k: int, size: int, remaining: int, q: int, min_keep: int) -> int:
    if k == remaining:
        return k
    return min(size, max(q * -(-min_keep // q), q * int(np.floor(k / q + 0.5))))


@pytest.mark.parametrize(("scope", "q"), [("layerwise", 3), ("global", 4)])
def test_round_to_counts_and_top_scores_under_jit_vmap(scope, q) -> None:
    """4 tickets (scores, rate) in one jit ∘ vmap: counts rounded, the best channels kept."""
    rng = np.random.default_rng(8)
    sizes = {"a": 37, "b": 16, "c": 3}
    rates = jnp.array([0.1, 0.35, 0.6, 0.9])
    scores = {n: jnp.asarray(rng.normal(size=(4, c)).astype(np.float32)) for n, c in sizes.items()}

    def select(s, rate):
        return [
            structured.select_channels(s, rate, scope=scope, min_keep=2, round_to=r) for r in (1, q)
        ]

    exact, keep = jax.jit(jax.vmap(select))(scores, rates)
    for t in range(len(rates)):
        for n, size in sizes.items():
            k = int(exact[n][t].sum())  # the count without rounding
            kept = np.asarray(keep[n][t])
            count = int(kept.sum())
            assert count == _round_np(k, size, size, q, 2), (n, t, q)
            assert count == size or count % q == 0
            assert count >= min(size, q)
            # The kept channels are the group's `count` best (continuous scores: no ties).
            best = np.argsort(-np.asarray(scores[n][t]))[:count]
            np.testing.assert_array_equal(np.flatnonzero(kept), np.sort(best))


def test_round_to_with_pruned_channels_and_a_rate_of_zero() -> None:
    scores = {"a": jnp.arange(12.0), "b": jnp.arange(9.0)}
    current = {"a": jnp.arange(12) % 3 != 0, "b": jnp.ones(9, bool)}  # a: 8 of 12 remain
    select = jax.jit(lambda s, r, k: structured.select_channels(s, r, keep=k, round_to=4))
    keep = select(scores, {"a": 0.4, "b": 0.0}, current)
    # a: 8 - round(3.2) = 5 → 4, its best remaining 4 (11, 10, 8, 7); b at rate 0 stays whole.
    np.testing.assert_array_equal(np.flatnonzero(keep["a"]), [7, 8, 10, 11])
    assert bool(keep["b"].all())


def _separated(scores: dict) -> None:
    """The premise of comparing keep vectors of two programs exactly: scores computed in a
    different order differ by ~1e-7 relative, so no two distinct scores may be that close (an
    exact tie is fine: LAMP's top u/u = 1 and "standard"'s 0 and 1 are exact in any order)."""
    values = np.sort(np.concatenate([np.asarray(v) for v in scores.values()]))
    gaps = np.diff(values)
    assert gaps[gaps > 0].min() > 1e-4 * np.abs(values).max()


SETTINGS = {
    "l1": {}, "l2": {"over": "producers", "reduction": "sum"}, "taylor": {"over": "all"},
    "fpgm": {"over": "producers", "reduction": "max"}, "lamp": {"over": "producers", "normalize": "sum"},
    "bn": {"normalize": "standard"},
}  # fmt: skip


def test_every_criterion_under_jit_vmap_equals_each_ticket_alone() -> None:
    """3 stacked tickets (params and grads) in one jit ∘ vmap = each ticket alone: scores to float
    tolerance, keep vectors exactly."""
    tickets = [(_tree(10 + t), _tree(20 + t)) for t in range(3)]

    def pick(params, grads):
        scores = {
            c: structured.channel_scores(
                params, (C1,) if c == "bn" else GROUPS, c, grads=grads, **options
            )
            for c, options in SETTINGS.items()
        }
        # The five criteria scored on GROUPS select in one program, vmapped over the criteria
        # (a keep_top_k per group instead of five: a third of the compile time).
        five = [c for c in SETTINGS if c != "bn"]
        stacked = jax.tree.map(lambda *a: jnp.stack(a), *(scores[c] for c in five))
        keeps = jax.vmap(lambda s: structured.select_channels(s, 0.5))(stacked)
        keep = {c: jax.tree.map(lambda k, i=i: k[i], keeps) for i, c in enumerate(five)}
        keep["bn"] = structured.select_channels(scores["bn"], 0.5)
        return scores, keep  # round_to under jit ∘ vmap: the test above

    stack = [jax.tree.map(lambda *a: jnp.stack(a), *x) for x in zip(*tickets, strict=True)]
    got_scores, got_keep = jax.jit(jax.vmap(pick))(*stack)
    alone_fn = jax.jit(pick)
    for t, ticket in enumerate(tickets):
        scores, keep = alone_fn(*ticket)
        for criterion in SETTINGS:
            _separated(scores[criterion])  # random continuous values: no top-k tie near a threshold
            for n, want in scores[criterion].items():
                got = np.asarray(got_scores[criterion][n])[t]
                np.testing.assert_allclose(got, want, rtol=1e-5)
                np.testing.assert_array_equal(
                    np.asarray(got_keep[criterion][n])[t], keep[criterion][n]
                )


def test_on_vgg11_groups() -> None:
    """Real model, using the groups' names, sizes and BN paths only (they may come from a tracer):
    Taylor and FPGM of each conv's filters vs numpy, properties of the "all" member sets."""
    net = models.vgg11((8, 8, 3), 10, width=0.0625)
    groups = structured.channel_groups(net)
    sizes = {g.name: g.size for g in groups}
    assert sizes == {"conv1": 4, "conv2": 8, "conv3": 16, "conv4": 16, "conv5": 32, "conv6": 32,
                     "conv7": 32, "conv8": 32}  # fmt: skip
    rng = np.random.default_rng(30)
    params, grads = (
        jax.tree.map(lambda a: jnp.asarray(rng.normal(size=np.shape(a)).astype(np.float32)), p)
        for p in [models.stateful(net)[1]] * 2
    )

    @jax.jit
    def pick(p, g):
        def scores(criterion, **options):
            return structured.channel_scores(p, groups, criterion, grads=g, **options)

        out = {"taylor": scores("taylor"), "fpgm": scores("fpgm", normalize="mean")}
        out["l1"], out["l1_all"] = scores("l1"), scores("l1", over="all", reduction="sum")
        out["bn"] = scores("bn")
        return out, structured.select_channels(out["taylor"], 0.5, round_to=4)

    scores, keep = pick(params, grads)
    for g in groups:
        n, size = g.name, g.size
        w = np.asarray(params[n]["kernel"][...], np.float64).reshape(-1, size).T  # row k: filter k
        gw = np.asarray(grads[n]["kernel"][...], np.float64).reshape(-1, size).T
        taylor = (w * gw).sum(1) ** 2
        np.testing.assert_allclose(scores["taylor"][n], taylor, rtol=1e-4, atol=1e-5 * taylor.max())
        fp = np.array([sum(np.linalg.norm(w[k] - w[j]) for j in range(size)) for k in range(size)])
        np.testing.assert_allclose(scores["fpgm"][n], fp / fp.mean(), rtol=1e-4)
        # "all" holds the producer and more (BN, consumers): a larger sum.
        assert np.all(np.asarray(scores["l1_all"][n]) > np.asarray(scores["l1"][n]))
        gamma = params
        for key in g.bn_scale:
            gamma = gamma[key]
        np.testing.assert_array_equal(scores["bn"][n], np.abs(np.asarray(gamma[...])))
        count = int(keep[n].sum())  # layerwise 50%: size / 2, rounded to a multiple of 4
        assert count % 4 == 0 and count == _round_np(size // 2, size, size, 4, 1)
        best = np.argsort(-np.asarray(scores["taylor"][n]))[:count]
        np.testing.assert_array_equal(np.flatnonzero(keep[n]), np.sort(best))


def test_bad_arguments_name_themselves() -> None:
    params, grads = _tree(40), _tree(41)
    for kwargs, pattern in [
        ({"criterion": "l3"}, r"criterion 'l3'.*bn, fpgm, l1, l2, lamp, taylor"),
        ({"over": "layer"}, r"over 'layer'.*all, producer, producers"),
        ({"reduction": "median"}, r"reduction 'median'.*max, mean, sum"),
        ({"normalize": "l2"}, r"normalize 'l2'.*None or one of: max, mean, standard, sum"),
        ({"criterion": "taylor"}, r"grads is required.*taylor"),
        ({"criterion": "taylor", "grads": {"c1": grads["c1"]}}, "grads must have exactly"),
        (
            {"criterion": "taylor", "grads": {**grads, "fc": {"kernel": jnp.ones(3)}}},
            r"grads\['fc'\]",
        ),
    ]:
        with pytest.raises(ValueError, match=pattern):
            structured.channel_scores(params, GROUPS, **kwargs)
    scores = {"a": jnp.arange(4.0)}
    for bad in (0, -2, 2.0, True, None):
        with pytest.raises(ValueError, match=r"round_to must be a positive int.*got"):
            structured.select_channels(scores, 0.5, round_to=bad)
