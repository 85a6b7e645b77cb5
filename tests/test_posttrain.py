"""Post-training pruning: layer methods against numpy references, prune() on protocol models."""

from __future__ import annotations

from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxprune import models, posttrain

# --- references and data


def _pruned_count(total: int, sparsity: float) -> int:
    """Entries pruned at a decimal sparsity, ⌊s·total + ½⌋ in exact rational arithmetic."""
    return int(Fraction(str(sparsity)) * total + Fraction(1, 2))


def _inputs(n: int, n_in: int, seed: int, *, dead: int | None = None) -> np.ndarray:
    """Calibration rows whose feature scales span two decades (Wanda's setting)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, n_in)) * np.logspace(-1, 1, n_in)[rng.permutation(n_in)]
    if dead is not None:
        x[:, dead] = 0.0
    return x.astype(np.float32)


def _kernel(n_in: int, n_out: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed + 100).normal(size=(n_in, n_out)).astype(np.float32)


def _min_gap(sorted_scores: np.ndarray, k: int) -> float:
    """Relative gap between the scores either side of a cut after the k lowest."""
    lo, hi = sorted_scores[k - 1], sorted_scores[k]
    return float((hi - lo) / max(abs(hi), 1e-30))


def wanda_reference(kernel: np.ndarray, x: np.ndarray, sparsity=None, nm=None):
    """Wanda in float64 numpy: per output column (or per group of m inputs), the lowest scores go."""
    w, xs = kernel.astype(np.float64), x.astype(np.float64)
    scores = np.abs(w) * np.sqrt((xs**2).sum(0))[:, None]
    keep = np.ones(w.shape, bool)
    gaps = []
    groups = (
        [(0, w.shape[0], _pruned_count(w.shape[0], sparsity))]
        if nm is None
        else [(g, g + nm[1], nm[1] - nm[0]) for g in range(0, w.shape[0], nm[1])]
    )
    for j in range(w.shape[1]):
        for start, stop, k in groups:
            col = scores[start:stop, j]
            order = np.argsort(col, kind="stable")
            keep[start + order[:k], j] = False
            gaps.append(_min_gap(col[order], k))
    return keep, min(gaps)


def sparsegpt_reference(kernel, x, *, sparsity=None, nm=None, blocksize, percdamp=0.01):
    """SparseGPT (Frantar & Alistarh 2023, Alg. 1) in float64 numpy, written as loops.

    Returns the new kernel, the kept mask and the smallest relative score gap at any mask
    decision: the tested implementation runs in float32, so its decisions can only be compared
    with these where that gap is far above float32 rounding (relative 1e-7, grown to ~1e-5 by the
    Cholesky factorisations and the updates); the tests ask for 1e-3.
    """
    w = kernel.astype(np.float64).T.copy()  # (out, in)
    rows, cols = w.shape
    h = x.astype(np.float64).T @ x.astype(np.float64)
    for i in range(cols):
        if h[i, i] == 0:
            h[i, i] = 1.0
            w[:, i] = 0.0
    h += percdamp * np.mean(np.diag(h)) * np.eye(cols)
    u = np.linalg.cholesky(np.linalg.inv(h)).T  # upper, uᵀu = H⁻¹
    keep = np.ones(w.shape, bool)
    total = None if sparsity is None else _pruned_count(w.size, sparsity)
    gaps = []
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        w1, u1 = w[:, i1:i2].copy(), u[i1:i2, i1:i2]
        errs = np.zeros_like(w1)
        keep1 = np.ones(w1.shape, bool)
        if nm is None:
            k = total * i2 // cols - total * i1 // cols
            scores = (w1**2 / np.diag(u1)[None, :] ** 2).ravel()
            order = np.argsort(scores, kind="stable")
            keep1.flat[order[:k]] = False
            if 0 < k < scores.size:
                gaps.append(_min_gap(scores[order], k))
        for q in range(i2 - i1):
            if nm is not None and q % nm[1] == 0:
                sc = w1[:, q : q + nm[1]] ** 2 / np.diag(u1)[q : q + nm[1]] ** 2
                for r in range(rows):
                    order = np.argsort(sc[r], kind="stable")
                    keep1[r, q + order[: nm[1] - nm[0]]] = False
                    gaps.append(_min_gap(sc[r][order], nm[1] - nm[0]))
            new_col = np.where(keep1[:, q], w1[:, q], 0.0)
            err = (w1[:, q] - new_col) / u1[q, q]
            w1[:, q:] -= np.outer(err, u1[q, q:])
            errs[:, q] = err
        w[:, i1:i2] = np.where(keep1, w1, 0.0)
        w[:, i2:] -= errs @ u[i1:i2, i2:]
        keep[:, i1:i2] = keep1
    return w.T, keep.T, min(gaps)


# --- layer level


def test_input_stats_sum_over_batches_like_numpy() -> None:
    x = _inputs(12, 5, 0)
    both = posttrain.add_stats(posttrain.input_stats(x[:7]), posttrain.input_stats(x[7:]))
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(both.hessian, x64.T @ x64, rtol=1e-5)
    np.testing.assert_allclose(both.sq_norms, (x64**2).sum(0), rtol=1e-5)
    assert int(both.count) == 12
    seq = posttrain.input_stats(x.reshape(3, 4, 5))  # leading axes flattened
    np.testing.assert_allclose(seq.hessian, x64.T @ x64, rtol=1e-5)


@pytest.mark.parametrize("target", [{"sparsity": 0.5}, {"sparsity": 0.3}, {"nm": (2, 4)}])
def test_wanda_mask_equals_numpy_reference(target) -> None:
    x, w = _inputs(40, 16, 1), _kernel(16, 5, 1)
    want, gap = wanda_reference(w, x, **target)
    assert gap > 1e-4  # float32 scores cannot reorder entries this far apart
    got = posttrain.wanda(w, posttrain.input_stats(x), **target)
    np.testing.assert_array_equal(np.asarray(got), want)


@pytest.mark.parametrize(
    "target, blocksize",
    [({"sparsity": 0.5}, 8), ({"sparsity": 0.6}, 4), ({"nm": (2, 4)}, 8), ({"nm": (1, 4)}, 16)],
)
def test_sparsegpt_equals_float64_reference_with_dead_input(target, blocksize) -> None:
    n_in, n_out = 16, 6
    x, w = _inputs(64, n_in, 2, dead=5), _kernel(n_in, n_out, 2)
    want_w, want_keep, gap = sparsegpt_reference(w, x, blocksize=blocksize, **target)
    assert gap > 1e-3  # see sparsegpt_reference: every mask decision is far from a tie
    new, keep = posttrain.sparsegpt(w, posttrain.input_stats(x), blocksize=blocksize, **target)
    np.testing.assert_array_equal(np.asarray(keep), want_keep)
    np.testing.assert_allclose(np.asarray(new), want_w, rtol=2e-4, atol=2e-4 * np.abs(w).max())
    assert (np.asarray(new)[5] == 0).all()  # the dead input's weights are zeroed
    assert (np.asarray(new)[~want_keep] == 0).all()


@pytest.mark.parametrize("target", [{"sparsity": 0.5}, {"nm": (2, 4)}])
def test_reconstruction_error_orders_sparsegpt_wanda_magnitude(target) -> None:
    x, w = _inputs(256, 32, 3), _kernel(32, 16, 3)
    stats = posttrain.input_stats(x)
    new, _ = posttrain.sparsegpt(w, stats, **target)  # one block: see the sparsegpt docs
    by_wanda = w * posttrain.wanda(w, stats, **target)
    by_magnitude = w * posttrain.magnitude(w, scope="output", **target)
    errors = [float(posttrain.reconstruction_error(w, v, x)) for v in (new, by_wanda, by_magnitude)]
    assert errors[0] <= errors[1] <= errors[2], errors
    # the error from Stats (tr DᵀHD) is the same number as from the inputs
    d = w.astype(np.float64) - np.asarray(new, np.float64)
    np.testing.assert_allclose(errors[0], ((x.astype(np.float64) @ d) ** 2).sum(), rtol=1e-4)
    from_stats = float(posttrain.reconstruction_error(w, new, stats))
    np.testing.assert_allclose(from_stats, errors[0], rtol=1e-3)


def _all_masks(w, stats, **target):
    return {
        "magnitude_layer": posttrain.magnitude(w, scope="layer", **target),
        "magnitude_output": posttrain.magnitude(w, scope="output", **target),
        "wanda": posttrain.wanda(w, stats, **target),
        "sparsegpt": posttrain.sparsegpt(w, stats, blocksize=8, **target)[1],
    }


@pytest.mark.parametrize("nm", [(2, 4), (4, 8), (1, 2)])
def test_nm_masks_keep_exactly_n_per_group_for_every_method(nm) -> None:
    x, w = _inputs(32, 24, 4), _kernel(24, 7, 4)
    n, m = nm
    for name, mask in _all_masks(w, posttrain.input_stats(x), nm=f"{n}:{m}").items():
        per_group = np.asarray(mask).reshape(24 // m, m, 7).sum(1)
        assert (per_group == n).all(), name


@pytest.mark.parametrize("sparsity", [0.5, 0.3, 0.65, 0.0])
def test_unstructured_sparsity_is_exact_per_layer(sparsity) -> None:
    n_in, n_out = 23, 7  # odd sizes: every count rounds
    x, w = _inputs(30, n_in, 5), _kernel(n_in, n_out, 5)
    got = _all_masks(w, posttrain.input_stats(x), sparsity=sparsity)
    per_col = n_in - _pruned_count(n_in, sparsity)
    assert int((~got["magnitude_layer"]).sum()) == _pruned_count(n_in * n_out, sparsity)
    assert int((~got["sparsegpt"]).sum()) == _pruned_count(n_in * n_out, sparsity)
    for name in ("magnitude_output", "wanda"):
        assert (np.asarray(got[name]).sum(0) == per_col).all(), name


_MASK_FNS = {
    "magnitude": lambda w, s, st: posttrain.magnitude(w, sparsity=s),
    "magnitude_output": lambda w, s, st: posttrain.magnitude(w, sparsity=s, scope="output"),
    "wanda": lambda w, s, st: posttrain.wanda(w, st, sparsity=s),
    "wanda_nm": lambda w, s, st: posttrain.wanda(w, st, nm=(2, 4)),
}


@pytest.mark.parametrize("name", sorted(_MASK_FNS))
def test_masks_under_jit_and_jit_vmap_match_single_calls(name) -> None:
    stats = posttrain.input_stats(_inputs(20, 8, 6))
    kernels = jnp.stack([_kernel(8, 3, s) for s in range(3)])
    rates = jnp.array([0.25, 0.5, 0.75])
    fn = _MASK_FNS[name]
    # The scores are elementwise (the same floats in every program), so masks must agree.
    single = np.stack([np.asarray(fn(kernels[i], rates[i], stats)) for i in range(3)])
    jitted = jax.jit(fn)(kernels[1], rates[1], stats)
    np.testing.assert_array_equal(np.asarray(jitted), single[1])
    batched = jax.jit(jax.vmap(fn, in_axes=(0, 0, None)))(kernels, rates, stats)
    np.testing.assert_array_equal(np.asarray(batched), single)


def test_stats_and_sparsegpt_under_jit() -> None:
    x = _inputs(20, 8, 6)
    stats = posttrain.input_stats(x)
    batched = jax.jit(jax.vmap(posttrain.input_stats))(jnp.stack([x, 2 * x]))
    np.testing.assert_allclose(batched.hessian[1], 4 * np.asarray(stats.hessian), rtol=1e-6)
    w = _kernel(8, 3, 0)
    # jit around the (already jitted) layer function: one program, the same floats
    new, keep = jax.jit(lambda w, s: posttrain.sparsegpt(w, stats, sparsity=s, blocksize=4))(w, 0.5)
    want_new, want_keep = posttrain.sparsegpt(w, stats, sparsity=0.5, blocksize=4)
    np.testing.assert_array_equal(np.asarray(keep), np.asarray(want_keep))
    np.testing.assert_allclose(np.asarray(new), np.asarray(want_new), rtol=1e-6, atol=1e-6)


def test_layer_level_errors_name_the_argument() -> None:
    w, stats = _kernel(6, 2, 0), posttrain.input_stats(_inputs(4, 6, 0))
    with pytest.raises(ValueError, match=r"sparsity must be in \[0.0, 1.0\)"):
        posttrain.magnitude(w, sparsity=1.0)
    with pytest.raises(ValueError, match=r"sparsity must be in"):
        posttrain.wanda(w, stats, sparsity=-0.1)
    with pytest.raises(ValueError, match="exactly one of sparsity"):
        posttrain.sparsegpt(w, stats, sparsity=0.5, nm=(2, 4))
    with pytest.raises(ValueError, match="exactly one of sparsity"):
        posttrain.wanda(w, stats)
    with pytest.raises(ValueError, match="divide the input dimension of kernel, which is 6"):
        posttrain.magnitude(w, nm="2:4")
    with pytest.raises(ValueError, match="nm must be a pair"):
        posttrain.magnitude(w, nm="4:2")
    with pytest.raises(ValueError, match="blocksize must be a multiple of m=4"):
        posttrain.sparsegpt(
            _kernel(16, 2, 0), posttrain.input_stats(_inputs(4, 16, 0)), nm=(2, 4), blocksize=6
        )
    with pytest.raises(ValueError, match="stats must describe the kernel's 6 inputs"):
        posttrain.wanda(w, posttrain.input_stats(_inputs(4, 5, 0)), sparsity=0.5)
    with pytest.raises(ValueError, match="unknown scope"):
        posttrain.magnitude(w, sparsity=0.5, scope="global")  # type: ignore[arg-type]


# --- model level


class _TinyBlock(nnx.Module):
    def __init__(self, dim: int, rngs: nnx.Rngs) -> None:
        self.norm = nnx.LayerNorm(dim, rngs=rngs)
        self.mlp = nnx.List(
            [nnx.Linear(dim, 2 * dim, rngs=rngs), nnx.Linear(2 * dim, dim, rngs=rngs)]
        )

    def __call__(self, h: jax.Array) -> jax.Array:
        return h + self.mlp[1](jax.nn.gelu(self.mlp[0](self.norm(h))))


class _NormOnly(nnx.Module):
    def __init__(self, dim: int, rngs: nnx.Rngs) -> None:
        self.norm = nnx.LayerNorm(dim, rngs=rngs)

    def __call__(self, h: jax.Array) -> jax.Array:
        return self.norm(h)


class _TinyNet(nnx.Module):
    """The protocol on features (B, T, 4): embed → blocks → mean over T → classes."""

    def __init__(self, rngs: nnx.Rngs, dim: int = 8, block=_TinyBlock) -> None:
        self.embed = nnx.Linear(4, dim, rngs=rngs)
        self.block0, self.block1 = block(dim, rngs), block(dim, rngs)
        self.out = nnx.Linear(dim, 3, rngs=rngs)

    def embed_inputs(self, x: jax.Array) -> jax.Array:
        return self.embed(x)

    @property
    def blocks(self) -> tuple[nnx.Module, ...]:
        return (self.block0, self.block1)

    def readout(self, h: jax.Array) -> jax.Array:
        return self.out(h.mean(1))

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.embed_inputs(x)
        for block in self.blocks:
            h = block(h)
        return self.readout(h)


def _tiny() -> tuple[_TinyNet, jax.Array]:
    x = jax.random.normal(jax.random.key(1), (10, 5, 4)) * jnp.array([[[0.1, 1.0, 3.0, 0.5]]])
    return _TinyNet(nnx.Rngs(0)), x


def _host(tree):
    return jax.tree.map(np.asarray, tree)


@pytest.mark.parametrize("method", posttrain.METHODS)
def test_prune_is_deterministic_leaves_the_model_and_matches_functional_apply(method) -> None:
    net, x = _tiny()
    apply_fn, before, _ = models.functional(net)
    before = _host(before)
    first = posttrain.prune(net, x, method=method, sparsity=0.5, batch_size=4)
    second = posttrain.prune(net, x, method=method, sparsity=0.5, batch_size=4)
    jax.tree.map(np.testing.assert_array_equal, _host(first.params), _host(second.params))
    # the input model: same values, same graph (no recorder left behind)
    jax.tree.map(np.testing.assert_array_equal, _host(models.functional(net)[1]), before)
    assert type(net.block0.mlp[0]) is nnx.Linear and type(first.model.block1.mlp[1]) is nnx.Linear
    # the returned params run in the *original* model's apply_fn like the pruned model
    np.testing.assert_allclose(apply_fn(first.params, x), first.model(x), rtol=1e-6, atol=1e-6)
    pruned_paths = {k for k in first.layers}
    assert len(pruned_paths) == 4 and all("['mlp']" in k for k in pruned_paths)
    for path, m in masks_by_path(first.mask).items():
        p = np.asarray(first_leaf(first.params, path))
        if path in first.layers:
            assert m.mean() == 0.5 and first.layers[path]["sparsity"] == 0.5
            assert (p[~m] == 0).all()
            if method != "sparsegpt":  # no update: the kept weights are the old ones
                np.testing.assert_array_equal(p[m], first_leaf(before, path)[m])
        else:  # embeddings, norms, biases, readout: untouched
            assert m.all()
            np.testing.assert_array_equal(p, first_leaf(before, path))


def masks_by_path(tree):
    return {
        jax.tree_util.keystr(p): np.asarray(v)
        for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def first_leaf(tree, path):
    return dict(masks_by_path(tree))[path]


@pytest.mark.parametrize("method", ["magnitude", "sparsegpt"])
def test_prune_calibrates_later_blocks_on_the_pruned_outputs(method) -> None:
    net, x = _tiny()
    out = posttrain.prune(net, x, method=method, sparsity=0.5, batch_size=3)
    h0 = net.embed_inputs(x)
    # The input of block1.mlp[0] is norm1(h1); norms are not pruned, so either model's norm does.
    dense_in = net.block1.norm(net.block0(h0)).reshape(-1, 8)
    pruned_in = net.block1.norm(out.model.block0(h0)).reshape(-1, 8)
    assert not np.allclose(dense_in, pruned_in, rtol=1e-3)
    dense_stats = posttrain.input_stats(dense_in)
    pruned_stats = posttrain.input_stats(pruned_in)
    assert not np.allclose(dense_stats.hessian, pruned_stats.hessian, rtol=1e-3)
    path = "['block1']['mlp'][0]['kernel'].value"
    old, new = net.block1.mlp[0].kernel[...], out.model.block1.mlp[0].kernel[...]
    recorded = out.layers[path]["error"]
    np.testing.assert_allclose(
        recorded, float(posttrain.reconstruction_error(old, new, pruned_in)), rtol=1e-3
    )
    dense_error = float(posttrain.reconstruction_error(old, new, dense_in))
    assert abs(recorded - dense_error) > 1e-2 * recorded


def test_prune_wanda_on_a_block_equals_the_layer_function_on_its_inputs() -> None:
    net, x = _tiny()
    out = posttrain.prune(net, x, method="wanda", nm=(2, 4), batch_size=4, progress=True)
    h1 = out.model.block0(net.embed_inputs(x))
    inputs = net.block1.norm(h1).reshape(-1, 8)
    w = np.asarray(net.block1.mlp[0].kernel[...], np.float64)
    want, gap = wanda_reference(w, np.asarray(inputs), nm=(2, 4))
    assert gap > 1e-3  # batched float32 statistics cannot flip decisions this far apart
    np.testing.assert_array_equal(
        first_leaf(out.mask, "['block1']['mlp'][0]['kernel'].value"), want
    )


@pytest.mark.parametrize(
    "method",
    ["wanda", *(pytest.param(m, marks=pytest.mark.slow) for m in ("magnitude", "sparsegpt"))],
)
def test_prune_transformer_nm(method) -> None:
    lm = models.build(
        "transformer", input_shape=(8,), num_classes=16, dim=16, depth=2, heads=2, seed=0
    )
    tokens = jax.random.randint(jax.random.key(0), (64 * 8,), 0, 16)
    calib = posttrain.calibration_windows(tokens, 6, seed=1, context=8)
    out = posttrain.prune(lm, calib, method=method, nm="2:4", batch_size=4, blocksize=8)
    assert len(out.layers) == 12  # query, key, value, proj, fc1, fc2 per block
    for path, m in masks_by_path(out.mask).items():
        if path in out.layers:
            kernel_in = m.shape[0]
            assert (m.reshape(kernel_in // 4, 4, -1).sum(1) == 2).all(), path
        else:
            assert m.all(), path
    apply_fn = models.functional(lm)[0]
    np.testing.assert_allclose(apply_fn(out.params, calib), out.model(calib), rtol=1e-5, atol=1e-5)
    assert all(v["error"] > 0 for v in out.layers.values())
    assert out.seconds > 0


@pytest.mark.slow
def test_prune_vit_with_swiglu_and_grouped_query_attention() -> None:
    vit = models.build(
        "vit", input_shape=(8, 8, 1), num_classes=10, seed=0, patch=2, dim=16, depth=2,
        heads=2, kv_heads=1, mlp="swiglu",
    )  # fmt: skip
    x = jax.random.normal(jax.random.key(2), (5, 8, 8, 1))
    out = posttrain.prune(vit, x, method="sparsegpt", sparsity=0.6, batch_size=2)
    assert len(out.layers) == 14  # query, key, value, proj, fc1, gate, fc2 per block
    assert not any("patch" in k or "['out']" in k for k in out.layers)
    for path, m in masks_by_path(out.mask).items():
        if path in out.layers:  # exact: ⌊0.6·in·out + ½⌋ pruned in every kernel
            assert (~m).sum() == _pruned_count(m.size, 0.6), path
        else:
            assert m.all(), path
    np.testing.assert_allclose(models.functional(vit)[0](out.params, x), out.model(x), atol=1e-5)


def test_calibration_windows_draw_distinct_seeded_windows() -> None:
    x = jnp.arange(60).reshape(20, 3)
    a = posttrain.calibration_windows(x, 8, seed=3)
    b = posttrain.calibration_windows(x, 8, seed=3)
    np.testing.assert_array_equal(a, b)
    rows = {int(r[0]) // 3 for r in np.asarray(a)}
    assert len(rows) == 8  # without replacement
    assert not np.array_equal(a, posttrain.calibration_windows(x, 8, seed=4))
    stream = posttrain.calibration_windows(jnp.arange(11), 2, seed=0, context=4)
    assert {tuple(r) for r in np.asarray(stream).tolist()} <= {(0, 1, 2, 3), (4, 5, 6, 7)}


def test_prune_errors_name_the_argument() -> None:
    net, x = _tiny()
    with pytest.raises(ValueError, match=r"sparsity must be in \[0.0, 1.0\)"):
        posttrain.prune(net, x, method="wanda", sparsity=1.0)
    with pytest.raises(ValueError, match=r"sparsity must be in"):
        posttrain.prune(net, x, method="wanda", sparsity=-0.5)
    with pytest.raises(ValueError, match="exactly one of sparsity"):
        posttrain.prune(net, x, method="wanda")
    with pytest.raises(ValueError, match="exactly one of sparsity"):
        posttrain.prune(net, x, method="wanda", sparsity=0.5, nm="2:4")
    with pytest.raises(
        ValueError, match=r"divide the input dimension of block0\.mlp\.0, which is 8"
    ):
        posttrain.prune(net, x, method="sparsegpt", nm="3:6")
    with pytest.raises(ValueError, match="unknown method"):
        posttrain.prune(net, x, method="obs")
    with pytest.raises(ValueError, match="calibration must be a batch"):
        posttrain.prune(net, x[:0], method="wanda", sparsity=0.5)
    with pytest.raises(ValueError, match="calibration must be a batch"):
        posttrain.prune(net, jnp.arange(5), method="wanda", sparsity=0.5)
    with pytest.raises(ValueError, match="shorter than one window"):
        posttrain.calibration_windows(jnp.arange(5), 1, seed=0, context=8)
    with pytest.raises(ValueError, match="only 20"):
        posttrain.calibration_windows(jnp.zeros((20, 3)), 21, seed=0)
    mlp = models.build("mlp", input_shape=(4,), num_classes=3)
    with pytest.raises(ValueError, match="lacks embed_inputs, blocks, readout"):
        posttrain.prune(mlp, jnp.ones((2, 4)), method="wanda", sparsity=0.5)
    no_linear = _TinyNet(nnx.Rngs(0), block=_NormOnly)
    with pytest.raises(ValueError, match=r"model.blocks\[0\] \(_NormOnly\) holds no nnx.Linear"):
        posttrain.prune(no_linear, x, method="wanda", sparsity=0.5)
