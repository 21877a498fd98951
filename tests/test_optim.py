"""Optimizers, clipping and schedule: by hand, against torch, save/restore."""

import math

import numpy as np
import pytest

from minivit import backend
from minivit.module import Module, ModuleList, Parameter
from minivit.optim import (
    SGD,
    AdamW,
    WarmupCosine,
    clip_grad_norm_,
    param_groups_weight_decay,
)


# ---------------------------------------------------------------------------
# tiny models built from Module/Parameter only
# ---------------------------------------------------------------------------
class Linear(Module):
    def __init__(self, n_in, n_out, rng):
        super().__init__()
        self.weight = Parameter(rng.standard_normal((n_out, n_in)))
        self.bias = Parameter(rng.standard_normal(n_out))


class LayerNorm(Module):
    def __init__(self, d, rng):
        super().__init__()
        self.weight = Parameter(1 + rng.standard_normal(d))
        self.bias = Parameter(rng.standard_normal(d))


class Block(Module):
    def __init__(self, d, rng):
        super().__init__()
        self.norm1 = LayerNorm(d, rng)
        self.attn = Module()
        self.attn.qkv = Linear(d, 3 * d, rng)


class TinyViT(Module):
    """timm-like names: cls_token, pos_embed, blocks.0.norm1.weight, head.bias..."""

    def __init__(self, d=4, dtype=np.float64, seed=0):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.cls_token = Parameter(rng.standard_normal((1, 1, d)))
        self.pos_embed = Parameter(rng.standard_normal((1, 3, d)))
        self.fixed = Parameter(rng.standard_normal((3, d)), requires_grad=False)
        self.blocks = ModuleList([Block(d, rng), Block(d, rng)])
        self.head = Linear(d, 2, rng)
        for p in self.parameters():
            p.data = p.data.astype(dtype)
            if p.requires_grad:
                p.grad = np.zeros_like(p.data)


def fill_grads(model, rng):
    for p in model.parameters():
        if p.requires_grad:
            p.grad[...] = rng.standard_normal(p.shape)


def one(value):
    """A 1-element float64 parameter with its gradient."""
    return Parameter(np.array([value], dtype=np.float64))


def run_by_hand(opt, p, grads):
    """Apply the optimizer for each gradient; return p after every step."""
    out = []
    for g in grads:
        p.grad[...] = g
        opt.step()
        out.append(float(p.data[0]))
    return out


# ---------------------------------------------------------------------------
# values worked out by hand
# ---------------------------------------------------------------------------
def test_sgd_plain_by_hand():
    p = one(1.0)
    # p <- p - lr * g, lr = 0.1, grads 1, 2, 0.5
    got = run_by_hand(SGD([p], lr=0.1), p, [1.0, 2.0, 0.5])
    expected = [1 - 0.1 * 1, 0.9 - 0.1 * 2, 0.7 - 0.1 * 0.5]  # 0.9, 0.7, 0.65
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-15)


def test_sgd_momentum_by_hand():
    p = one(1.0)
    got = run_by_hand(SGD([p], lr=0.1, momentum=0.9), p, [1.0, 2.0, 0.5])
    # b1 = g1 = 1                    p1 = 1    - 0.1 * 1    = 0.9
    # b2 = 0.9 * 1 + 2     = 2.9     p2 = 0.9  - 0.1 * 2.9  = 0.61
    # b3 = 0.9 * 2.9 + 0.5 = 3.11    p3 = 0.61 - 0.1 * 3.11 = 0.299
    np.testing.assert_allclose(got, [0.9, 0.61, 0.299], rtol=0, atol=1e-14)


def test_sgd_nesterov_by_hand():
    p = one(1.0)
    got = run_by_hand(SGD([p], lr=0.1, momentum=0.9, nesterov=True), p, [1.0, 2.0, 0.5])
    # b1 = 1;    d1 = 1   + 0.9 * 1    = 1.9     p1 = 1     - 0.19   = 0.81
    # b2 = 2.9;  d2 = 2   + 0.9 * 2.9  = 4.61    p2 = 0.81  - 0.461  = 0.349
    # b3 = 3.11; d3 = 0.5 + 0.9 * 3.11 = 3.299   p3 = 0.349 - 0.3299 = 0.0191
    np.testing.assert_allclose(got, [0.81, 0.349, 0.0191], rtol=0, atol=1e-14)


def test_sgd_weight_decay_by_hand():
    p = one(1.0)
    got = run_by_hand(SGD([p], lr=0.1, weight_decay=0.1), p, [1.0, 1.0, 1.0])
    # d = g + 0.1 * p
    # d1 = 1 + 0.1   = 1.1      p1 = 1      - 0.11     = 0.89
    # d2 = 1 + 0.089 = 1.089    p2 = 0.89   - 0.1089   = 0.7811
    # d3 = 1.07811              p3 = 0.7811 - 0.107811 = 0.673289
    np.testing.assert_allclose(got, [0.89, 0.7811, 0.673289], rtol=0, atol=1e-14)


def test_adamw_by_hand():
    p = one(1.0)
    opt = AdamW([p], lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
    got = run_by_hand(opt, p, [1.0, -1.0, 0.5])
    # every step first decays: p <- p * (1 - 0.1 * 0.1) = 0.99 p
    # step 1, g = 1:  m = 0.1 * 1 = 0.1          v = 0.001 * 1 = 0.001
    #   m_hat = 0.1 / (1 - 0.9) = 1              v_hat = 0.001 / (1 - 0.999) = 1
    p1 = 1.0 * 0.99 - 0.1 * 1 / (math.sqrt(1) + 1e-8)
    # step 2, g = -1: m = 0.9 * 0.1 - 0.1 = -0.01   v = 0.999 * 0.001 + 0.001 = 0.001999
    #   bc1 = 1 - 0.81 = 0.19,  bc2 = 1 - 0.999**2 = 0.001999
    p2 = p1 * 0.99 - 0.1 * (-0.01 / 0.19) / (math.sqrt(0.001999 / 0.001999) + 1e-8)
    # step 3, g = 0.5: m = 0.9 * -0.01 + 0.05 = 0.041
    #   v = 0.999 * 0.001999 + 0.001 * 0.25 = 0.002247001
    #   bc1 = 1 - 0.729 = 0.271,  bc2 = 1 - 0.999**3 = 0.002997001
    p3 = p2 * 0.99 - 0.1 * (0.041 / 0.271) / (math.sqrt(0.002247001 / 0.002997001) + 1e-8)
    np.testing.assert_allclose(got, [p1, p2, p3], rtol=1e-12, atol=0)
    st = opt.state["0"]
    assert st["step"] == 3
    np.testing.assert_allclose(st["exp_avg"], [0.041], rtol=1e-12)
    np.testing.assert_allclose(st["exp_avg_sq"], [0.002247001], rtol=1e-12)


# ---------------------------------------------------------------------------
# against torch, float64, several steps
# ---------------------------------------------------------------------------
SHAPES = [(3, 4), (5,), (2, 3, 2)]


def torch_compare(make_ours, make_torch, steps=5, dtype=np.float64, tol=1e-12,
                  lrs=None):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    ours = [Parameter(rng.standard_normal(s).astype(dtype)) for s in SHAPES]
    theirs = [torch.tensor(p.data.copy(), requires_grad=True) for p in ours]
    opt, topt = make_ours(ours), make_torch(torch, theirs)
    for step in range(steps):
        if lrs is not None:  # a changing learning rate, set in both
            opt.lr = lrs[step]
            for group in topt.param_groups:
                group["lr"] = lrs[step]
        for p, t in zip(ours, theirs):
            g = rng.standard_normal(p.shape).astype(dtype)
            p.grad[...] = g
            t.grad = torch.tensor(g.copy())
        opt.step()
        topt.step()
    for p, t in zip(ours, theirs):
        assert p.data.dtype == dtype
        np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=tol, atol=tol)
    return opt


SGD_CONFIGS = [
    dict(lr=0.1),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, nesterov=True),
    dict(lr=0.1, weight_decay=0.01),
    dict(lr=0.05, momentum=0.8, weight_decay=0.05),
    dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.05),
]


@pytest.mark.torch
@pytest.mark.parametrize("cfg", SGD_CONFIGS)
def test_sgd_matches_torch(cfg):
    torch_compare(lambda ps: SGD(ps, **cfg),
                  lambda torch, ts: torch.optim.SGD(ts, **cfg))


ADAMW_CONFIGS = [
    dict(),
    dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1),
    dict(lr=0.003, weight_decay=0.0),
]


@pytest.mark.torch
@pytest.mark.parametrize("cfg", ADAMW_CONFIGS)
def test_adamw_matches_torch(cfg):
    torch_compare(lambda ps: AdamW(ps, **cfg),
                  lambda torch, ts: torch.optim.AdamW(ts, **cfg))


@pytest.mark.torch
def test_changing_lr_and_groups_match_torch():
    lrs = [0.01, 0.02, 0.005, 0.03, 0.0]

    def groups(ps):
        return [{"params": ps[:2], "weight_decay": 0.2}, {"params": ps[2:], "weight_decay": 0.0}]

    torch_compare(lambda ps: AdamW(groups(ps)),
                  lambda torch, ts: torch.optim.AdamW(groups(ts)), lrs=lrs)
    torch_compare(lambda ps: SGD(groups(ps), lr=0.1, momentum=0.9),
                  lambda torch, ts: torch.optim.SGD(groups(ts), lr=0.1, momentum=0.9),
                  lrs=lrs)


@pytest.mark.torch
@pytest.mark.parametrize("kind, cfg", [("SGD", dict(lr=0.1, momentum=0.9, weight_decay=0.01)),
                                       ("AdamW", dict(lr=0.01))])
def test_float32_stays_float32(kind, cfg):
    # float32 parameters: state and updates stay float32 and track torch's float32
    ours = {"SGD": SGD, "AdamW": AdamW}[kind]
    opt = torch_compare(lambda ps: ours(ps, **cfg),
                        lambda torch, ts: getattr(torch.optim, kind)(ts, **cfg),
                        dtype=np.float32, tol=1e-5)
    for st in opt.state.values():
        for value in st.values():
            if isinstance(value, np.ndarray):
                assert value.dtype == np.float32


def test_updates_in_place():
    model = TinyViT()
    arrays = [p.data for p in model.parameters()]
    fill_grads(model, np.random.default_rng(0))
    for opt in (SGD(model.named_parameters(), lr=0.1, momentum=0.9, nesterov=True,
                    weight_decay=0.1),
                AdamW(model.named_parameters())):
        before = [a.copy() for a in arrays]
        opt.step()
        assert all(p.data is a for p, a in zip(model.parameters(), arrays))
        changed = [not np.array_equal(a, b) for a, b in zip(arrays, before)]
        requires = [p.requires_grad for p in model.parameters()]
        assert changed == requires  # the fixed array is never touched


# ---------------------------------------------------------------------------
# parameter handling
# ---------------------------------------------------------------------------
def test_no_decay_groups_pick_timm_names():
    model = TinyViT()
    decay, no_decay = param_groups_weight_decay(model.named_parameters(), 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert [n for n, _ in decay["params"]] == [
        "blocks.0.attn.qkv.weight", "blocks.1.attn.qkv.weight", "head.weight"]
    assert [n for n, _ in no_decay["params"]] == [
        "cls_token", "pos_embed",
        "blocks.0.norm1.weight", "blocks.0.norm1.bias", "blocks.0.attn.qkv.bias",
        "blocks.1.norm1.weight", "blocks.1.norm1.bias", "blocks.1.attn.qkv.bias",
        "head.bias"]  # 'fixed' (requires_grad=False) is in neither

    # the optimizer honours the groups: zero gradients => only decay moves p
    opt = AdamW(param_groups_weight_decay(model, 0.5), lr=0.1)
    before = {n: p.data.copy() for n, p in model.named_parameters()}
    opt.step()
    for name, p in model.named_parameters():
        if name in ("blocks.0.attn.qkv.weight", "blocks.1.attn.qkv.weight", "head.weight"):
            np.testing.assert_allclose(p.data, before[name] * (1 - 0.1 * 0.5), rtol=1e-15)
        else:
            np.testing.assert_array_equal(p.data, before[name])
    assert set(opt.state) == {n for n, p in model.named_parameters() if p.requires_grad}


def test_params_forms_and_errors():
    model = TinyViT()
    n_trainable = sum(p.requires_grad for p in model.parameters())
    for params in (model.named_parameters(), model.parameters(),
                   [{"params": model.parameters(), "lr": 0.5}]):
        opt = SGD(params, lr=0.1)
        assert sum(len(g["params"]) for g in opt.param_groups) == n_trainable
    assert opt.param_groups[0]["lr"] == 0.5 and opt.lr == 0.5
    opt.lr = 0.25
    assert all(g["lr"] == 0.25 for g in opt.param_groups)
    # unnamed parameters are keyed by index
    assert SGD(model.parameters(), lr=1).param_groups[0]["names"][:2] == ["0", "1"]

    with pytest.raises(ValueError, match="learning rate"):
        SGD(model.parameters(), lr=-0.1)
    with pytest.raises(ValueError, match="nesterov"):
        SGD(model.parameters(), lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="momentum"):
        SGD(model.parameters(), lr=0.1, momentum=-0.5)
    with pytest.raises(ValueError, match="weight_decay"):
        SGD(model.parameters(), lr=0.1, weight_decay=-1)
    with pytest.raises(ValueError, match="betas"):
        AdamW(model.parameters(), betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="eps"):
        AdamW(model.parameters(), eps=-1)
    with pytest.raises(ValueError, match="learning rate"):  # per-group check too
        AdamW([{"params": model.parameters(), "lr": -1}])
    with pytest.raises(ValueError, match="no trainable"):
        AdamW([])
    with pytest.raises(ValueError, match="more than one"):
        SGD([{"params": model.parameters()}, {"params": model.parameters()}], lr=1)
    with pytest.raises(ValueError, match="unknown param-group"):
        SGD([{"params": model.parameters(), "momentun": 0.9}], lr=1)
    with pytest.raises(TypeError, match="named_parameters"):
        SGD(model, lr=0.1)


def test_zero_grad_and_lr_scale():
    model = TinyViT()
    fill_grads(model, np.random.default_rng(0))
    groups = param_groups_weight_decay(model, 0.1)
    groups[1]["lr_scale"] = 0.5
    opt = AdamW(groups)
    WarmupCosine(1.0, 0, 10).apply(opt, 0)
    assert [g["lr"] for g in opt.param_groups] == [1.0, 0.5]
    opt.zero_grad()
    assert all(not p.grad.any() for p in model.parameters() if p.grad is not None)


# ---------------------------------------------------------------------------
# gradient clipping
# ---------------------------------------------------------------------------
def test_clip_grad_norm_by_hand():
    a, b = Parameter(np.array([3.0, 4.0])), Parameter(np.array([[12.0]]))
    a.grad[...] = [3.0, 4.0]
    b.grad[...] = [[12.0]]
    # total = sqrt(9 + 16 + 144) = 13 > 6.5 => scale by 6.5 / (13 + 1e-6)
    total = clip_grad_norm_([a, b], max_norm=6.5)
    assert isinstance(total, float) and total == 13.0
    coef = 6.5 / (13.0 + 1e-6)
    np.testing.assert_allclose(a.grad, [3 * coef, 4 * coef], rtol=1e-15)
    np.testing.assert_allclose(b.grad, [[12 * coef]], rtol=1e-15)
    # under the limit: untouched, bit for bit; a's norm is now 5 * coef
    before = a.grad.copy()
    assert clip_grad_norm_([("a", a)], max_norm=100.0) == pytest.approx(5 * coef, rel=1e-15)
    np.testing.assert_array_equal(a.grad, before)
    # a parameter without gradient is ignored
    fixed = Parameter(np.ones(2), requires_grad=False)
    assert clip_grad_norm_([fixed], 1.0) == 0.0
    with pytest.raises(ValueError):
        clip_grad_norm_([a], 0.0)


def test_clip_grad_norm_nonfinite():
    a = Parameter(np.array([1.0, np.inf]))
    a.grad[...] = a.data
    assert clip_grad_norm_([a], 1.0) == math.inf
    np.testing.assert_array_equal(a.grad, [1.0, np.inf])
    with pytest.raises(RuntimeError, match="inf/NaN"):
        clip_grad_norm_([a], 1.0, error_if_nonfinite=True)


@pytest.mark.torch
@pytest.mark.parametrize("max_norm", [0.5, 1e3])
def test_clip_grad_norm_matches_torch(max_norm):
    torch = pytest.importorskip("torch")
    model = TinyViT()
    fill_grads(model, np.random.default_rng(3))
    ts = [torch.tensor(p.data.copy(), requires_grad=True) for p in model.parameters()
          if p.requires_grad]
    for t, p in zip(ts, [p for p in model.parameters() if p.requires_grad]):
        t.grad = torch.tensor(p.grad.copy())
    total = clip_grad_norm_(model, max_norm)
    ttotal = torch.nn.utils.clip_grad_norm_(ts, max_norm)
    assert total == pytest.approx(float(ttotal), rel=1e-13)
    for t, p in zip(ts, [p for p in model.parameters() if p.requires_grad]):
        np.testing.assert_allclose(p.grad, t.grad.numpy(), rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------
# schedule
# ---------------------------------------------------------------------------
def test_warmup_cosine_values():
    s = WarmupCosine(base_lr=1.0, warmup_steps=10, total_steps=110, min_lr=0.1)
    assert s.lr_at(0) == pytest.approx(0.1)       # 1.0 * (0 + 1) / 10
    assert s.lr_at(4) == pytest.approx(0.5)       # 1.0 * 5 / 10
    assert s.lr_at(9) == pytest.approx(1.0)       # end of warm-up
    assert s.lr_at(10) == pytest.approx(1.0)      # cosine starts at base_lr
    # midway through the cosine: (60 - 10) / 100 = 0.5, cos(pi/2) = 0
    assert s.lr_at(60) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + 0))
    # a quarter: 0.1 + 0.9 * 0.5 * (1 + cos(pi / 4))
    assert s(35) == pytest.approx(0.1 + 0.45 * (1 + math.sqrt(0.5)))
    assert s.lr_at(110) == pytest.approx(0.1)     # end
    assert s.lr_at(1000) == 0.1
    lrs = [s.lr_at(i) for i in range(111)]
    assert all(a <= b for a, b in zip(lrs[:10], lrs[1:11]))    # rises
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))     # then falls
    # no warm-up: starts at base_lr
    assert WarmupCosine(2.0, 0, 10).lr_at(0) == 2.0
    opt = SGD([one(0.0)], lr=123.0)
    assert s.apply(opt, 60) == opt.lr == opt.param_groups[0]["lr"]
    for bad in [dict(base_lr=1, warmup_steps=20, total_steps=10),
                dict(base_lr=1, warmup_steps=0, total_steps=0),
                dict(base_lr=1, warmup_steps=0, total_steps=10, min_lr=2),
                dict(base_lr=-1, warmup_steps=0, total_steps=10)]:
        with pytest.raises(ValueError):
            WarmupCosine(**bad)
    with pytest.raises(ValueError):
        s.lr_at(-1)


# ---------------------------------------------------------------------------
# state_dict: exact continuation, clear errors
# ---------------------------------------------------------------------------
MAKERS = {
    "sgd": lambda ps: SGD(ps, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
    "adamw": lambda ps: AdamW(param_groups_weight_decay(ps, 0.05), lr=0.01),
}


def train(model, opt, rng, steps, sched=None, start=0):
    for step in range(start, start + steps):
        if sched is not None:
            sched.apply(opt, step)
        fill_grads(model, rng)
        opt.step()


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_state_dict_continues_bit_identically(kind, dtype, tmp_path):
    sched = WarmupCosine(0.01, 2, 6)
    # 6 straight steps
    straight = TinyViT(dtype=dtype)
    rng = np.random.default_rng(7)
    opt = MAKERS[kind](straight.named_parameters())
    train(straight, opt, rng, 6, sched)
    # 3 steps, save (through np.savez on disk), fresh model+optimizer, load, 3 more
    resumed = TinyViT(dtype=dtype)
    rng = np.random.default_rng(7)
    opt = MAKERS[kind](resumed.named_parameters())
    train(resumed, opt, rng, 3, sched)
    np.savez(tmp_path / "opt.npz", **opt.state_dict())
    weights = resumed.state_dict()
    resumed = TinyViT(dtype=dtype, seed=99)
    resumed.load_state_dict(weights)
    opt = MAKERS[kind](resumed.named_parameters())
    with np.load(tmp_path / "opt.npz", allow_pickle=False) as saved:
        opt.load_state_dict(saved)
    assert opt.step_count == 3
    train(resumed, opt, rng, 3, sched, start=3)
    for (name, a), (_, b) in zip(straight.named_parameters(), resumed.named_parameters()):
        assert a.data.dtype == b.data.dtype == dtype
        np.testing.assert_array_equal(a.data, b.data, err_msg=name)


def test_state_dict_is_flat_host_copies():
    model = TinyViT()
    fill_grads(model, np.random.default_rng(0))
    opt = AdamW(model.named_parameters(), lr=0.01)
    opt.step()
    sd = opt.state_dict()
    assert str(sd["optimizer"]) == "AdamW" and int(sd["step"]) == 1
    assert float(sd["group.0.lr"]) == 0.01
    assert tuple(sd["group.0.betas"]) == (0.9, 0.999)
    m = sd["state.blocks.0.attn.qkv.weight.exp_avg"]
    assert m.shape == (12, 4) and int(sd["state.head.bias.step"]) == 1
    m[...] = 0  # a copy: the live state is unaffected
    assert opt.state["blocks.0.attn.qkv.weight"]["exp_avg"].any()
    assert all(isinstance(v, (np.ndarray, np.generic)) for v in sd.values())


def test_load_state_dict_mismatch_errors():
    model = TinyViT()
    fill_grads(model, np.random.default_rng(0))
    opt = AdamW(model.named_parameters())
    opt.step()
    sd = opt.state_dict()

    with pytest.raises(ValueError, match="for a AdamW optimizer, not SGD"):
        SGD(model.named_parameters(), lr=0.1).load_state_dict(sd)
    # different parameters (head left out): names listed, nothing changed
    other = AdamW([(n, p) for n, p in model.named_parameters() if not n.startswith("head")])
    with pytest.raises(ValueError, match="head.weight"):
        other.load_state_dict(sd)
    assert other.state == {} and other.step_count == 0
    # wrong shape
    bad = dict(sd)
    bad["state.head.weight.exp_avg"] = np.zeros((3, 3))
    fresh = AdamW(model.named_parameters())
    with pytest.raises(ValueError, match=r"expected shape \(2, 4\)"):
        fresh.load_state_dict(bad)
    # missing entries
    bad = {k: v for k, v in sd.items() if k != "state.head.weight.exp_avg_sq"}
    with pytest.raises(ValueError, match="incomplete state"):
        fresh.load_state_dict(bad)
    bad = {k: v for k, v in sd.items() if k != "group.0.lr"}
    with pytest.raises(ValueError, match="group.0.lr"):
        fresh.load_state_dict(bad)
    # different grouping
    with pytest.raises(ValueError, match="param group"):
        AdamW(param_groups_weight_decay(model, 0.1)).load_state_dict(sd)
    assert fresh.state == {}


def test_optimizer_on_the_active_backend():
    """Runs the same code on CuPy when a GPU is there (skipped otherwise)."""
    if not backend.cupy_available():
        pytest.skip("CuPy with a GPU is not available")
    rng = np.random.default_rng(0)
    host = [rng.standard_normal(s) for s in SHAPES]
    grads = [[rng.standard_normal(s) for s in SHAPES] for _ in range(3)]
    results = {}
    for name in ("numpy", "cupy"):
        with backend.using(name):
            ps = [Parameter(backend.to_device(h.copy())) for h in host]
            opt = AdamW(ps, lr=0.01)
            for gs in grads:
                for p, g in zip(ps, gs):
                    p.grad[...] = backend.to_device(g)
                clip_grad_norm_(ps, 1.0)
                opt.step()
            sd = opt.state_dict()
            results[name] = [backend.to_numpy(p.data) for p in ps]
            opt2 = AdamW(ps, lr=0.01)
            opt2.load_state_dict(sd)
    for a, b in zip(results["numpy"], results["cupy"]):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("threads", ["1", "3"])
def test_adamw_in_blocks_on_threads_equals_one_pass(f64, monkeypatch, threads):
    """Large parameters are updated as flat blocks on every core: element for
    element the same arithmetic, so the same bits as one pass over each."""
    from minivit.parallel import threads as ops
    monkeypatch.setenv("MINIVIT_NUM_THREADS", threads)
    shapes = [(37, 11), (300,), (4, 5, 6)]
    runs = []
    for threshold in (10**9, 0):                      # one pass each / blocks on threads
        monkeypatch.setattr(ops, "PARALLEL_MIN_ELEMENTS", threshold)
        monkeypatch.setattr(ops, "BLOCK_BYTES", 256)  # many blocks of 32 values
        params = [Parameter(backend.to_device(np.random.default_rng(1).standard_normal(s)))
                  for s in shapes]
        params.append(Parameter(backend.to_device(np.random.default_rng(2).standard_normal(
            (8, 6)))[:, ::2]))                        # not contiguous: one pass anyway
        opt = AdamW(params, lr=1e-2, weight_decay=0.1)
        for step in range(3):
            grads = np.random.default_rng(10 + step)
            for p in params:
                p.grad = backend.to_device(grads.standard_normal(p.shape))
            opt.step()
        runs.append([backend.to_numpy(p.data).copy() for p in params])
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(runs[0][0], np.random.default_rng(1).standard_normal(shapes[0]))
