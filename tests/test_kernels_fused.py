"""The fused kernels (minivit/kernels/fused/, numba) against the reference
lines they replace: float32 and float64, random shapes, edge values (large
|x|, zeros of both signs, NaN, inf, softmax rows that would underflow),
non-contiguous inputs, a dtype they do not cover (it falls back), their
parallel paths, threads and forked replicas. Skipped where numba is absent;
the switch without numba: test_kernel_switch.py and the end of this file."""

import threading

import numpy as np
import pytest

pytest.importorskip("numba")

from helpers import randn, randomize_parameters  # noqa: E402

from minivit import backend, kernels  # noqa: E402
from minivit.kernels import fused  # noqa: E402
from minivit.layers import GELU, Dropout, LayerNorm, Linear, MultiHeadSelfAttention  # noqa: E402
from minivit.loss import cross_entropy  # noqa: E402

DTYPES = ["float32", "float64"]
# float32: the fused kernels round differently (own exp, reordered sums)
TOL = {"float32": 2e-5, "float64": 1e-12}
EDGES = [0.0, -0.0, 1e-30, -1e-30, 1e-8, -1e-8, 3.0, -3.0, 9.0, -9.0, 50.0, -50.0,
         1e4, -1e4, 1e12, -1e12, np.inf, -np.inf, np.nan]


@pytest.fixture(params=[False, True], ids=["direct", "threads"])
def parallel(request, monkeypatch):
    """Each test on one call and, with no size threshold, on blocks of rows in
    parallel_rows' threads."""
    if request.param:
        from minivit.parallel import threads
        monkeypatch.setattr(threads, "PARALLEL_MIN_ELEMENTS", 0)
        monkeypatch.setattr(threads, "BLOCK_BYTES", 4096)       # many blocks
    return request.param


def _close(got, ref, dtype, scale=1.0):
    got, ref = np.asarray(got), np.asarray(ref)
    assert got.dtype == ref.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    np.testing.assert_allclose(got, ref, rtol=TOL[dtype], atol=TOL[dtype] * scale)


def _run(layer, mode, x, dout):
    with kernels.using(mode):
        layer.zero_grad()
        y = layer.forward(x)
        dx = layer.backward(dout)
    return y, dx, {n: p.grad.copy() for n, p in layer.named_parameters()}


def _both(layer, x, dout):
    with np.errstate(all="ignore"):
        return _run(layer, "fused", x, dout), _run(layer, "reference", x, dout)


def test_fused_mode_runs_the_fused_kernels(monkeypatch):
    """The dispatch really reaches the numba code (a trap there fires)."""
    from minivit.kernels.fused import layernorm as fused_layernorm

    def trap(*args, **kwargs):
        raise AssertionError("fused")
    monkeypatch.setattr(fused_layernorm, "forward", trap)
    with backend.using("numpy", dtype="float32"), kernels.using("fused"):
        with pytest.raises(AssertionError, match="fused"):
            LayerNorm(4).forward(randn(2, 4))
        with kernels.using("numpy"):
            LayerNorm(4).forward(randn(2, 4))


# -- LayerNorm ------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 5, 7), (2, 1, 64), (257, 33)])
def test_layernorm(dtype, shape, parallel):
    with backend.using("numpy", dtype=dtype):
        layer = LayerNorm(shape[-1])
        randomize_parameters(layer)
        x, dout = randn(*shape, seed=1, scale=3.0) + 1.5, randn(*shape, seed=2)
        fast, ref = _both(layer, x, dout)
        for got, want in zip(fast[:2], ref[:2]):
            _close(got, want, dtype, scale=10)
        for name in ref[2]:
            _close(fast[2][name], ref[2][name], dtype, scale=shape[0] * 10)


@pytest.mark.parametrize("dtype", DTYPES)
def test_layernorm_edges(dtype):
    """Rows of zeros of both signs, huge and tiny values, a NaN row, an inf row."""
    with backend.using("numpy", dtype=dtype):
        layer = LayerNorm(4)
        x = np.array([[0.0, -0.0, 0.0, -0.0], [1e12, -1e12, 3.0, 1e12],
                      [1e-30, -1e-30, 2e-30, 0.0], [1.0, np.nan, 2.0, 3.0],
                      [1.0, np.inf, 2.0, 3.0], [-1e4, 1e4, 0.5, -0.5]], dtype)
        fast, ref = _both(layer, x, np.ones_like(x))
        for got, want in zip(fast[:2], ref[:2]):
            _close(got, want, dtype, scale=10)


def test_layernorm_non_contiguous_rows():
    with backend.using("numpy", dtype="float64"):
        layer = LayerNorm(6)
        randomize_parameters(layer)
        x = randn(5, 12, seed=3)[:, ::2]                     # a strided view
        fast, ref = _both(layer, x, randn(5, 12, seed=4)[:, 1::2])
        for got, want in zip(fast[:2], ref[:2]):
            _close(got, want, "float64")


# -- GELU -----------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("approximate", ["tanh", "none"])
def test_gelu(dtype, approximate, parallel):
    if approximate == "none":
        pytest.importorskip("scipy")
    with backend.using("numpy", dtype=dtype):
        layer = GELU(approximate)
        x = np.concatenate([randn(40, 33, seed=5, scale=4.0).reshape(-1),
                            np.array(EDGES, dtype)]).reshape(13, 1, 103)
        dout = randn(*x.shape, seed=6)
        fast, ref = _both(layer, x, dout)
        _close(fast[0], ref[0], dtype, scale=10)
        _close(fast[1], ref[1], dtype, scale=10)
        zeros = x == 0
        np.testing.assert_array_equal(np.signbit(fast[0][zeros]), np.signbit(ref[0][zeros]))
        # eval mode: dy/dx derived in the backward
        with kernels.using("fused"), backend.using("numpy", dtype=dtype):
            layer.eval()
            assert layer.forward(x).shape == x.shape
            with np.errstate(all="ignore"):
                _close(layer.backward(dout), ref[1], dtype, scale=10)
            layer.train()


def test_gelu_non_contiguous():
    with backend.using("numpy", dtype="float32"):
        x = randn(8, 9, seed=7).T                            # transposed
        fast, ref = _both(GELU("tanh"), x, np.ones_like(x))
        _close(fast[0], ref[0], "float32")
        _close(fast[1], ref[1], "float32")


def test_the_float32_exp_and_erf():
    """exp within 1 float32 ulp-ish (relative 1.2e-7) where float32 holds it,
    inf above, NaN stays NaN; erf within minivit.kernels.erf's bound."""
    from numba import njit

    from minivit.kernels.erf import ERF_FLOAT32_MAX_ABS_ERROR
    from minivit.kernels.fused.exp import erf, exp

    @njit
    def both(x, e, f):
        for i in range(x.size):
            e[i] = exp(x[i])
            f[i] = erf(x[i])
    x = np.concatenate([np.linspace(-100, 100, 200_001),
                        [np.nan, np.inf, -np.inf, 0.0, -0.0, 88.7, -87.3]]).astype(np.float32)
    e, f = np.empty_like(x), np.empty_like(x)
    both(x, e, f)
    with np.errstate(all="ignore"):
        want = np.exp(x.astype(np.float64))
    normal = (x > -87.3) & (x < 88.72)
    np.testing.assert_allclose(e[normal], want[normal], rtol=1.2e-7)
    assert np.isnan(e[np.isnan(x)]).all() and (e[x == np.inf] == np.inf).all()
    assert (e[x < -88] == 0).all()
    from math import erf as math_erf
    finite = np.isfinite(x)
    expected = np.array([math_erf(v) for v in x[finite].astype(np.float64)])
    assert np.abs(f[finite] - expected).max() < ERF_FLOAT32_MAX_ABS_ERROR
    assert np.isnan(f[np.isnan(x)]).all() and f[x == np.inf][0] == 1.0


# -- attention softmax ----------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_queries", [None, 1])
def test_attention(dtype, num_queries):
    with backend.using("numpy", dtype=dtype):
        layer = MultiHeadSelfAttention(12, 3)
        randomize_parameters(layer)
        x = randn(4, 9, 12, seed=8)
        Q = 9 if num_queries is None else num_queries
        dout = randn(4, Q, 12, seed=9)
        out = {}
        for mode in ("fused", "reference"):
            with kernels.using(mode):
                layer.zero_grad()
                y = layer.forward(x, num_queries)
                out[mode] = (y, layer.attn_probs, layer.backward(dout),
                             {n: p.grad.copy() for n, p in layer.named_parameters()})
        for got, want in zip(out["fused"][:3], out["reference"][:3]):
            _close(got, want, dtype)
        for name in out["reference"][3]:
            _close(out["fused"][3][name], out["reference"][3][name], dtype, scale=10)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_edges(dtype):
    """Large scores, zeros of both signs, rows far below the others (their
    own max keeps them from underflowing), NaN, inf and all -inf rows: the
    reference's softmax, row by row; and its backward."""
    from minivit.kernels.fused.softmax import softmax_backward_in_place, softmax_scaled
    from minivit.layers.attention import softmax
    scale = 0.25
    s = np.random.default_rng(0).standard_normal((2, 3, 5, 6)).astype(dtype)
    s[0, 0] = 0.0
    s[0, 0, 1] = -0.0
    s[0, 1] *= 1e4
    s[0, 2] += (np.arange(5.0)[:, None] * -1e4).astype(dtype)    # rows far apart
    s[1, 0, 3] = -1e30
    s[1, 1, 2, 2] = np.nan
    s[1, 2, 0, 1] = np.inf
    s[1, 2, 1] = -np.inf
    with np.errstate(all="ignore"):
        want = softmax(s * s.dtype.type(scale))
        got = np.empty_like(s)
        softmax_scaled(s, got, scale)
        _close(got, want, dtype)
        da = np.random.default_rng(1).standard_normal(s.shape).astype(dtype)
        want_ds = want * (da - (da * want).sum(-1, keepdims=True)) * s.dtype.type(scale)
        softmax_backward_in_place(da, got, scale)
        _close(da, want_ds, dtype)
    rows = np.isfinite(want).all(-1)
    np.testing.assert_allclose(got[rows].sum(-1), 1.0, rtol=TOL[dtype])
    strided = np.empty((2, 3, 5, 12), dtype)[..., ::2]           # non-contiguous scores
    strided[...] = np.where(np.isfinite(s), s, 0)
    softmax_scaled(strided, got, scale)
    with np.errstate(all="ignore"):
        _close(got, softmax(strided * s.dtype.type(scale)), dtype)


# -- dropout --------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_same_mask_same_result(dtype, parallel):
    with backend.using("numpy", dtype=dtype):
        layer = Dropout(0.3)
        x, dout = randn(37, 50, seed=10), randn(37, 50, seed=11)
        out = {}
        for mode in ("fused", "reference"):
            backend.seed(4)
            out[mode] = _run(layer, mode, x, dout)
        np.testing.assert_array_equal(out["fused"][0], out["reference"][0])
        np.testing.assert_array_equal(out["fused"][1], out["reference"][1])
        assert out["fused"][0].dtype == np.dtype(dtype)
        assert 0.2 < (out["fused"][0] == 0).mean() < 0.4


# -- Linear's bias add ----------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_add_is_the_reference_bit_for_bit(dtype, monkeypatch):
    """One addition per value, as y + b: zeros of both signs, inf, NaN; and
    through Linear (where it must run), a small product and one large enough
    to be shared out over the cores, the forward equal bit for bit with the
    NumPy kernels'."""
    from minivit.kernels.fused import bias as fused_bias
    from minivit.kernels.fused.bias import add_to_rows
    calls = []
    monkeypatch.setattr(fused_bias, "add_to_rows",
                        lambda y_rows, b: calls.append(y_rows.shape) or add_to_rows(y_rows, b))
    rng = np.random.default_rng(20)
    y = rng.standard_normal((37, 11)).astype(dtype)
    b = rng.standard_normal(11).astype(dtype)
    y[0, :6] = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e30]
    b[:6] = [-0.0, -0.0, 1.0, np.inf, 2.0, -1e30]
    with np.errstate(invalid="ignore"):                           # -inf + inf
        want = y + b
    got = y.copy()
    add_to_rows(got, b)
    np.testing.assert_array_equal(got, want)
    assert np.signbit(got[0, 1]) and not np.signbit(got[0, 0])    # -0 + -0, 0 + -0
    with backend.using("numpy", dtype=dtype):
        for rows, width in ((45, 11), (4096, 64)):      # 4096 x 64 x 64: LARGE_PRODUCT
            layer = Linear(width, width)
            randomize_parameters(layer)
            x = randn(rows, width, seed=21)
            out = {}
            for mode in ("fused", "numpy"):
                with kernels.using(mode):
                    out[mode] = layer.forward(x)
            np.testing.assert_array_equal(out["fused"], out["numpy"])
            assert np.abs(out["fused"] - x @ layer.weight.data.T).max() > 0   # bias not zero
            assert sum(shape[0] for shape in calls) == rows   # every row, once, fused
            calls.clear()


# -- the augmentation's warp ----------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels", [1, 3])
def test_warp_is_the_reference_bit_for_bit(dtype, channels, monkeypatch):
    """The same float32 coordinates and the same operations in the same order:
    equal to the NumPy warp bit for bit, with shifts and rotations that send
    sources far outside the image (fill, one value or one per channel), a
    non-square image, NaN and inf pixels, zeros of both signs; a
    non-contiguous batch and integer images go through NumPy, still equal."""
    from minivit.data.augment import random_transforms, warp_affine
    from minivit.kernels.fused import warp as fused_warp
    calls = []
    real = fused_warp.warp
    monkeypatch.setattr(fused_warp, "warp", lambda *a: calls.append(a[0].shape) or real(*a))
    rng = np.random.default_rng(30)
    x = rng.standard_normal((19, channels, 13, 9)).astype(dtype)
    x[0, :, 4, :5] = [0.0, -0.0, np.inf, -np.inf, np.nan]
    shifts, angles = random_transforms(19, rng, max_shift=6, max_rotate_deg=180.0)
    fills = [-0.42, rng.standard_normal(channels).astype(dtype)]
    out = {}
    for fill in fills:
        for mode in ("fused", "numpy"):
            with kernels.using(mode), np.errstate(invalid="ignore"):
                out[mode] = warp_affine(x, shifts, angles, fill)
        np.testing.assert_array_equal(out["fused"], out["numpy"])
        assert out["fused"].dtype == np.dtype(dtype)
        filled = out["fused"] == np.asarray(fill, dtype).reshape(-1, 1, 1)   # sources outside
        assert np.isnan(out["fused"]).any() and filled.sum() > 0
    assert calls == [x.shape] * len(fills)
    calls.clear()
    strided = np.repeat(x, 2, axis=3)[..., ::2]                   # x, not contiguous
    for source in (strided, rng.integers(0, 256, x.shape).astype(np.uint8)):
        with kernels.using("fused"), np.errstate(invalid="ignore"):
            got = warp_affine(source, shifts, angles, -0.42)
        with kernels.using("numpy"), np.errstate(invalid="ignore"):
            want = warp_affine(source, shifts, angles, -0.42)
        np.testing.assert_array_equal(got, want)
    assert calls == []
    import fake_device                         # the data stay on the host on a GPU too
    with fake_device.installed(), kernels.using("fused"):
        np.testing.assert_array_equal(warp_affine(x, shifts, angles, fills[-1]), out["numpy"])
    assert calls == [x.shape]


# -- cross-entropy --------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy(dtype, smoothing):
    rng = np.random.default_rng(12)
    logits = (rng.standard_normal((33, 10)) * 5).astype(dtype)
    logits[0] = 1e4                                              # ties, huge
    logits[1, 3] = -1e4
    logits[2] = 0.0
    logits[3, 5] = -0.0
    labels = rng.integers(0, 10, 33)
    with backend.using("numpy", dtype=dtype):
        with kernels.using("fused"):
            loss, dlogits = cross_entropy(logits, labels, smoothing)
        with kernels.using("reference"):
            want_loss, want = cross_entropy(logits, labels, smoothing)
    assert loss == pytest.approx(want_loss, rel=TOL[dtype])
    _close(dlogits, want, dtype)
    bad = logits.copy()
    bad[4, 2] = np.nan
    with kernels.using("fused"), np.errstate(invalid="ignore"):
        loss, dlogits = cross_entropy(bad, labels, smoothing)
    with kernels.using("reference"), np.errstate(invalid="ignore"):
        want_loss, want = cross_entropy(bad, labels, smoothing)
    assert np.isnan(loss) and np.isnan(want_loss)
    np.testing.assert_array_equal(np.isnan(dlogits), np.isnan(want))
    with kernels.using("fused"), pytest.raises(IndexError):        # as the reference
        cross_entropy(logits, np.full(33, 10), smoothing)
    with kernels.using("fused"):                                   # strided logits
        loss, dlogits = cross_entropy(np.repeat(logits, 2, axis=1)[:, ::2], labels, smoothing)
    _close(dlogits, cross_entropy(logits, labels, smoothing)[1], dtype)


# -- AdamW ----------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("wd", [0.0, 0.05])
def test_adamw_equals_the_numpy_kernel(dtype, wd, parallel):
    """The same order of operations and scalars: the same bits."""
    from minivit.module import Parameter
    from minivit.optim import AdamW
    rng = np.random.default_rng(13)
    results = {}
    for mode in ("fused", "numpy"):
        with backend.using("numpy", dtype=dtype), kernels.using(mode):
            params = [Parameter(rng.standard_normal(s).astype(dtype)) for s in [(300, 7), (5,)]]
            for p, seed in zip(params, (1, 2)):
                p.data[...] = np.random.default_rng(seed).standard_normal(p.shape)
            opt = AdamW(params, lr=1e-2, weight_decay=wd)
            for step in range(3):
                for p, seed in zip(params, (3, 4)):
                    p.grad[...] = np.random.default_rng(seed + step).standard_normal(p.shape)
                opt.step()
            results[mode] = [p.data.copy() for p in params]
    for got, want in zip(results["fused"], results["numpy"]):
        np.testing.assert_array_equal(got, want)


def _adamw_run(mode, dtype, steps):
    """Three parameters, one of which has no gradient at step 1 (so its step
    count lags: two sets of scalars in one group), and whose arrays are
    replaced before the last step (the fused call's lists must follow)."""
    from minivit.module import Parameter
    from minivit.optim import AdamW
    with backend.using("numpy", dtype=dtype), kernels.using(mode):
        params = [Parameter(np.random.default_rng(s).standard_normal(shape).astype(dtype))
                  for s, shape in enumerate([(40, 7), (5,), (3, 3)])]
        opt = AdamW([{"params": params[:2], "weight_decay": 0.05},
                     {"params": params[2:], "weight_decay": 0.0}], lr=1e-2)
        for step in range(steps):
            if step == steps - 1:
                params[0].data = params[0].data.copy()     # e.g. load_state_dict
            for i, p in enumerate(params):
                p.requires_grad = not (step == 1 and i == 1)        # frozen for a step
                if not p.requires_grad:
                    p.grad = None
                    continue
                p.grad = np.random.default_rng(10 * step + i).standard_normal(
                    p.shape).astype(dtype)
            opt.step()
        return [p.data.copy() for p in params], [opt.state[k]["step"] for k in sorted(opt.state)]


@pytest.mark.parametrize("dtype", DTYPES)
def test_adamw_many_parameters_in_one_call(dtype, parallel, monkeypatch):
    """The fused update of a whole group is the NumPy kernel's, bit for bit,
    with lagging step counts and replaced arrays, and runs as one call per
    set of scalars."""
    import minivit.kernels.fused.adamw as fused_adamw
    calls = []
    original = fused_adamw.update_many
    monkeypatch.setattr(fused_adamw, "update_many",
                        lambda arrays, *a, **k: calls.append(len(arrays))
                        or original(arrays, *a, **k))
    got, got_steps = _adamw_run("fused", dtype, 4)
    want, want_steps = _adamw_run("numpy", dtype, 4)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    assert got_steps == want_steps == [4, 3, 4]
    # step 0: group 0 (2 params) and group 1; step 1: param 1 skipped;
    # steps 2, 3: param 1 one step behind param 0 (two calls for group 0)
    assert calls == [2, 1, 1, 1, 1, 1, 1, 1, 1, 1]


def test_adamw_checks_its_arrays_again_when_the_kernels_change(monkeypatch):
    """The group's arrays are checked once for the fused call, not every step;
    switching the kernels (or replacing an array) checks them again, so a step
    under ``numpy`` never takes the fused call, and gives the NumPy result."""
    import minivit.kernels.fused.adamw as fused_adamw
    from minivit.module import Parameter
    from minivit.optim import AdamW
    calls = []
    original = fused_adamw.update_many
    monkeypatch.setattr(fused_adamw, "update_many",
                        lambda arrays, *a, **k: calls.append(len(arrays))
                        or original(arrays, *a, **k))
    results = {}
    for modes in (("fused", "fused", "numpy", "fused"), ("numpy",) * 4):
        calls.clear()
        with backend.using("numpy", dtype="float32"):
            params = [Parameter(np.linspace(-1, 1, n, dtype=np.float32)) for n in (12, 5)]
            opt = AdamW(params, lr=1e-2, weight_decay=0.1)
            for step, mode in enumerate(modes):
                for p in params:
                    p.grad[...] = np.cos(np.arange(p.data.size) + step)
                with kernels.using(mode):
                    opt.step()
        results[modes[0]] = [p.data.copy() for p in params]
        assert calls == [2 for mode in modes if mode == "fused"]
    for got, want in zip(results["fused"], results["numpy"]):
        np.testing.assert_array_equal(got, want)


def test_adamw_state_not_contiguous_runs_the_numpy_kernel():
    """A state buffer the fused kernel cannot take (here a strided view) is
    updated by the NumPy kernel, with the same result."""
    from minivit.module import Parameter
    from minivit.optim import AdamW
    results = []
    for strided in (False, True):
        with backend.using("numpy", dtype="float32"), kernels.using("fused"):
            p = Parameter(np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4))
            opt = AdamW([p], lr=1e-2)
            p.grad = np.full((3, 4), 0.5, np.float32)
            opt.step()
            if strided:
                for key in ("exp_avg", "exp_avg_sq"):
                    wide = np.zeros((3, 8), np.float32)
                    wide[:, ::2] = opt.state["0"][key]
                    opt.state["0"][key] = wide[:, ::2]
            opt.step()
            results.append(p.data.copy())
    np.testing.assert_array_equal(results[0], results[1])


# -- numba's cache follows every source --------------------------------------------
def test_the_kernel_cache_is_emptied_when_a_source_changes(tmp_path):
    from minivit.kernels.fused import cache
    for name in ("gelu._tanh_yd_serial-80.py311.1.nbc", "gelu._tanh_yd_serial-80.py311.nbi",
                 "softmax._softmax_rows-37.py311.nbi", "somebody_else.f-1.py311.nbi"):
        (tmp_path / name).write_bytes(b"x")
    sources = cache.sources()
    assert any(path.endswith("exp.py") for path in sources)
    assert any(path.endswith("erf.py") for path in sources)
    stamp = cache.digest()
    assert cache.refresh(str(tmp_path), stamp)                  # no stamp yet: emptied
    assert sorted(p.name for p in tmp_path.iterdir()) == [cache.STAMP_NAME,
                                                          "somebody_else.f-1.py311.nbi"]
    (tmp_path / "gelu._tanh_yd_serial-80.py311.nbi").write_bytes(b"x")
    assert not cache.refresh(str(tmp_path), stamp)              # same sources: kept
    assert (tmp_path / "gelu._tanh_yd_serial-80.py311.nbi").exists()
    exp_py = next(path for path in sources if path.endswith("exp.py"))
    edited = tmp_path / "exp.py"                                # a changed inlined file
    edited.write_text(open(exp_py).read() + "# changed\n")
    assert cache.digest([str(edited)]) != cache.digest([exp_py])
    assert cache.refresh(str(tmp_path), cache.digest([str(edited)]))
    assert not (tmp_path / "gelu._tanh_yd_serial-80.py311.nbi").exists()
    assert cache.cache_dir() is not None                        # numba's own choice


# -- what the fused kernels do not cover falls back ------------------------------
def test_a_dtype_not_covered_falls_back_silently(monkeypatch, recwarn):
    """float16 (which a layer never holds, but a caller may pass to a kernel)
    runs the NumPy kernels even in fused mode; float32 the fused ones."""
    import minivit.kernels.fused.layernorm as fused_layernorm
    calls = []
    original = fused_layernorm.forward
    monkeypatch.setattr(fused_layernorm, "forward",
                        lambda *a: calls.append(a[0].dtype) or original(*a))
    with kernels.using("fused"), backend.using("numpy", dtype="float32"):
        for dtype in ("float16", "float32"):
            x = randn(3, 8).astype(dtype)
            y, xhat, rstd = kernels.layernorm.forward(x, np.ones(8, dtype), np.zeros(8, dtype),
                                                      1e-6)
            assert y.dtype == np.dtype(dtype)
            np.testing.assert_allclose(y, (x - x.mean(-1, keepdims=True))
                                       / x.std(-1, keepdims=True), rtol=2e-2, atol=2e-2)
    assert calls == [np.dtype("float32")]
    assert kernels.switch.fused_for(np.ones(3, np.float32))
    assert not kernels.switch.fused_for(np.ones(3, np.int64))
    assert not kernels.switch.fused_for(np.ones(3, np.float32), np.ones(3, np.float64))
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_without_numba_fast_falls_back_and_fused_names_the_extra(monkeypatch):
    monkeypatch.setattr(fused, "_status", 'numba is not installed (install the extra: '
                                          'pip install -e ".[fast]")')
    assert not kernels.switch.fused_for(np.ones(3, np.float32))
    with pytest.raises(RuntimeError, match=r'pip install -e "\.\[fast\]"'):
        kernels.use("fused")
    with backend.using("numpy", dtype="float32"), kernels.using("fast"):
        assert LayerNorm(4).forward(randn(2, 4)).shape == (2, 4)


def test_an_old_numba_is_refused_with_a_warning(monkeypatch):
    import numba
    monkeypatch.setattr(fused, "_status", None)
    monkeypatch.setattr(numba, "__version__", "0.59.1")
    with pytest.warns(RuntimeWarning, match="older than the 0.60"):
        assert not fused.available()
    with pytest.raises(RuntimeError, match="0.59.1"):
        kernels.use("fused")
    monkeypatch.setattr(fused, "_status", None)


# -- threads and processes ------------------------------------------------------
def test_threads_at_once_each_get_the_right_answer(monkeypatch):
    """Several threads in fused kernels at once, each split in blocks."""
    from minivit.parallel import threads
    monkeypatch.setattr(threads, "PARALLEL_MIN_ELEMENTS", 0)
    from minivit.kernels.fused.gelu import gelu_with_derivative
    xs = [np.random.default_rng(s).standard_normal((300, 64)).astype(np.float32)
          for s in range(4)]
    want = [gelu_with_derivative(x, "tanh", True) for x in xs]
    errors = []

    def work(i):
        try:
            for _ in range(20):
                y, d = gelu_with_derivative(xs[i], "tanh", True)
                np.testing.assert_array_equal(y, want[i][0])
                np.testing.assert_array_equal(d, want[i][1])
        except Exception as exc:                                  # pragma: no cover
            errors.append(exc)
    pool = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert not errors


@pytest.mark.parametrize("processes", [False, True], ids=["threads", "processes"])
def test_a_short_training_with_replicas_on_the_fused_kernels(processes, monkeypatch):
    """Replicas (threads, or forked workers after the parent ran fused
    kernels in its threads) train as the NumPy kernels do."""
    from minivit.parallel import threads
    monkeypatch.setattr(threads, "PARALLEL_MIN_ELEMENTS", 0)     # the parent uses its pool
    from minivit.optim import AdamW, param_groups_weight_decay
    from minivit.parallel.replicas import Replicas
    from minivit.vit import ViT
    losses = {}
    for mode in ("fused", "numpy"):
        with backend.using("numpy", dtype="float32"), kernels.using(mode):
            backend.seed(0)
            model = ViT(image_size=8, patch_size=4, in_channels=1, num_classes=4, dim=16,
                        depth=2, heads=2, mlp_dim=32, dropout=0.1, seed=0)
            model.forward(randn(2, 1, 8, 8))                     # compiled, run in threads
            optimizer = AdamW(param_groups_weight_decay(model, 0.05), lr=3e-3)
            replicas = Replicas(model, threads=2, processes=processes)
            rng = np.random.default_rng(0)
            x = rng.standard_normal((16, 1, 8, 8)).astype(np.float32)
            y = rng.integers(0, 4, 16)
            losses[mode] = []
            try:
                for _ in range(8):
                    model.zero_grad()
                    loss, _ = replicas.loss_and_grads(x, y, cross_entropy)
                    optimizer.step()
                    losses[mode].append(loss)
                assert (replicas._workers is not None) == processes
            finally:
                replicas.close()
    assert all(np.isfinite(losses["fused"]))
    assert losses["fused"][-1] < 0.9 * losses["fused"][0]
    np.testing.assert_allclose(losses["fused"], losses["numpy"], rtol=2e-3)
