"""The exercises (``python -m minivit.exercises``): the grader is trustworthy
both ways, bad input gets a clear message, the command line keeps the
learner's files, and a finished exercise trains a model exactly as the
library does.

The learner's files here are the real starter with a backward written after
it (a later ``def`` replaces the stub): a right one per exercise, and wrong
ones made from it by one textual change each, the typical mistakes.
"""

from __future__ import annotations

import ast
import os
import textwrap

import numpy as np
import pytest

from minivit import backend, exercises
from minivit.exercises.__main__ import main as cli
from minivit.exercises.base import call_forward
from helpers import halves_dataset
from minivit.exercises.progress import MINIVIT_DIR

RIGHT = {
    "linear": """
        def backward(dy, cache, grads):
            x, W = cache
            x2 = x.reshape(-1, x.shape[-1])
            dy2 = dy.reshape(-1, W.shape[0])
            grads["W"] += dy2.T @ x2
            grads["b"] += dy2.sum(axis=0)
            return (dy2 @ W).reshape(x.shape)
        """,
    "layernorm": """
        def backward(dy, cache, grads):
            xhat, rstd, gamma = cache
            D = xhat.shape[-1]
            grads["gamma"] += (dy * xhat).reshape(-1, D).sum(axis=0)
            grads["beta"] += dy.reshape(-1, D).sum(axis=0)
            dxhat = dy * gamma
            return rstd * (dxhat - dxhat.mean(axis=-1, keepdims=True)
                           - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True))
        """,
    "gelu": """
        def backward(dy, cache):
            x, t = cache
            du = SQRT_2_OVER_PI * (1 + 3 * COEFF * x ** 2)
            return dy * (0.5 * (1 + t) + 0.5 * x * (1 - t ** 2) * du)
        """,
    "softmax": """
        def backward(da, cache):
            (a,) = cache
            return a * (da - (da * a).sum(axis=-1, keepdims=True))
        """,
    "attention": """
        def backward(dy, cache, grads):
            x, q, k, v, a, m, Wqkv, Wproj, heads, scale = cache
            D = x.shape[-1]
            dy2 = dy.reshape(-1, D)
            grads["Wproj"] += dy2.T @ m.reshape(-1, D)
            grads["bproj"] += dy2.sum(axis=0)
            do = split_heads(dy @ Wproj, heads)
            da = do @ v.transpose(0, 1, 3, 2)
            dv = a.transpose(0, 1, 3, 2) @ do
            ds = a * (da - (da * a).sum(axis=-1, keepdims=True)) * scale
            dq = ds @ k
            dk = ds.transpose(0, 1, 3, 2) @ q
            dqkv = np.concatenate([merge_heads(dq), merge_heads(dk), merge_heads(dv)], axis=-1)
            dqkv2 = dqkv.reshape(-1, 3 * D)
            grads["Wqkv"] += dqkv2.T @ x.reshape(-1, D)
            grads["bqkv"] += dqkv2.sum(axis=0)
            return dqkv @ Wqkv
        """,
    "patch_embed": """
        def col2im(dcols, x_shape, P, S):
            B, C, H, W = x_shape
            index = patch_index(H, W, P, S)
            per_pixel = dcols.reshape(B, index.shape[0], C, P * P).transpose(0, 2, 1, 3)
            dx = np.zeros((B, C, H * W))
            np.add.at(dx, (slice(None), slice(None), index), per_pixel)
            return dx.reshape(x_shape)

        def backward(dy, cache, grads):
            x_shape, cols, W, stride = cache
            D, P = W.shape[0], W.shape[-1]
            dy2 = dy.reshape(-1, D)
            grads["W"] += (dy2.T @ cols.reshape(len(dy2), -1)).reshape(W.shape)
            grads["b"] += dy2.sum(axis=0)
            return col2im(dy @ W.reshape(D, -1), x_shape, P, stride)
        """,
    "cross_entropy": """
        def backward(dloss, cache):
            p, q = cache
            return dloss * (p - q) / len(p)
        """,
    "block": """
        def backward(dy, cache):
            layers = cache
            dh = dy + layers.norm2.backward(layers.mlp.backward(dy))
            return dh + layers.norm1.backward(layers.attn.backward(dh))
        """,
    "vit": """
        def backward(dlogits, cache):
            model, z_shape = cache
            dz = np.zeros(z_shape)
            dz[:, 0] = model.head.backward(dlogits)
            dz = model.norm.backward(dz)
            for block in reversed(list(model.blocks)):
                dz = block.backward(dz)
            model.pos_embed.grad += dz.sum(axis=0, keepdims=True)
            model.cls_token.grad += dz[:, :1].sum(axis=0, keepdims=True)
            return model.patch_embed.backward(dz[:, 1:])
        """,
}

# (exercise, the change to the right backward, gradients it must name, mistake key)
WRONG = [
    ("linear", ('grads["W"] += dy2.T @ x2', 'grads["W"] = dy2.T @ x2'), {"dW"}, "overwrite"),
    ("linear", ("(dy2 @ W)", "(dy2 @ W.T)"), {"dx"}, "dx_transposed"),
    ("linear", ("+= dy2.T @ x2", "+= x2.T @ dy2"), {"dW"}, "dW_transposed"),
    ("linear", ("+= dy2.T @ x2", "+= dy2.T @ x2 / len(x2)"), {"dW"}, "mean"),
    ("layernorm", ("dxhat - dxhat.mean(axis=-1, keepdims=True)", "dxhat"), {"dx"}, "mean"),
    ("layernorm", ("- xhat * (dxhat * xhat).mean(axis=-1, keepdims=True)", ""), {"dx"},
     "variance"),
    ("layernorm", ("dxhat = dy * gamma", "dxhat = dy"), {"dx"}, "gamma"),
    ("layernorm", ('grads["gamma"] +=', 'grads["gamma"] ='), {"dgamma"}, "overwrite"),
    ("gelu", ("(1 - t ** 2)", "(1 - t)"), {"dx"}, "tanh"),
    ("gelu", ("3 * COEFF", "COEFF"), {"dx"}, "cube"),
    ("gelu", ("0.5 * (1 + t) + ", ""), {"dx"}, "product"),
    ("gelu", ("return dy * (", "return ("), {"dx"}, "no_dy"),
    ("softmax", ("axis=-1", "axis=-2"), {"ds"}, "axis"),
    ("softmax", (", keepdims=True", ""), {"ds"}, "keepdims"),
    ("softmax", ("(da - (da * a).sum(axis=-1, keepdims=True))", "da"), {"ds"}, "no_sum"),
    ("attention", (") * scale", ")"), {"dx", "dWqkv", "dbqkv"}, "scale"),
    ("attention", ("dk = ds.transpose(0, 1, 3, 2) @ q", "dk = ds @ q"), {"dx", "dWqkv"}, "dk"),
    ("attention", ("dv = a.transpose(0, 1, 3, 2) @ do", "dv = a @ do"), {"dx", "dWqkv"}, "dv"),
    ("attention", ("axis=-1", "axis=-2"), {"dx", "dWqkv"}, "softmax_axis"),
    ("patch_embed", ("np.add.at(dx, (slice(None), slice(None), index), per_pixel)",
                     "dx[:, :, index] = per_pixel"), {"dx"}, "assign"),
    ("patch_embed", ("reshape(B, index.shape[0], C, P * P).transpose(0, 2, 1, 3)",
                     "reshape(B, index.shape[0], P * P, C).transpose(0, 3, 1, 2)"), {"dx"},
     "order"),
    ("patch_embed", ('grads["W"] +=', 'grads["W"] ='), {"dW"}, "overwrite"),
    ("cross_entropy", (" / len(p)", ""), {"dlogits"}, "no_mean"),
    ("cross_entropy", ("(p - q)", "(q - p)"), {"dlogits"}, "sign"),
    ("cross_entropy", ("dloss * ", ""), {"dlogits"}, "no_dloss"),
    ("cross_entropy", ("p, q = cache", "p, q = cache\n    q = (q == q.max(axis=1, "
                       "keepdims=True)) * 1.0"), {"dlogits"}, "onehot"),
    ("block", ("dh = dy + ", "dh = "), {"dx", "d attn.qkv.weight"}, "skip2"),
    ("block", ("return dh + ", "return "), {"dx"}, "skip1"),
    ("block", ("layers.attn.backward(dh)", "layers.attn.backward(dy)"),
     {"dx", "d norm1.weight"}, "attn_dy"),
    ("vit", ("reversed(list(model.blocks))", "model.blocks"),
     {"dx", "d blocks.0.norm1.weight"}, "order"),
    ("vit", ("    model.pos_embed.grad += dz.sum(axis=0, keepdims=True)\n", ""),
     {"dpos_embed"}, "no_pos"),
    ("vit", ("dz[:, :1].sum(axis=0", "dz[:, :1].mean(axis=0"), {"dcls_token"}, "cls_mean"),
    ("vit", ("dz[:, 0] = model.head.backward(dlogits)",
             "dz[:] = model.head.backward(dlogits)[:, None]"), {"dx", "dpos_embed"},
     "all_tokens"),
]


def learner_file(tmp_path, name, backward_source, filename=None):
    """The starter of ``name`` with ``backward_source`` written after it."""
    ex = exercises.get(name)
    with open(ex.starter_path, encoding="utf-8") as f:
        starter = f.read()
    path = tmp_path / (filename or f"{name}.py")
    path.write_text(starter + "\n\n" + textwrap.dedent(backward_source).strip() + "\n")
    return str(path)


def wrong_source(name, change):
    old, new = change
    source = textwrap.dedent(RIGHT[name])
    assert source.count(old) >= 1, (name, old)
    return source.replace(old, new, 1)


def change_of(name, key):
    return next(w[1] for w in WRONG if w[0] == name and w[3] == key)


def no_grader_traceback(text):
    assert "Traceback" not in text
    assert "grader.py" not in text and "base.py" not in text and "loader.py" not in text


# -- the grader passes what is right -----------------------------------------------------
def test_the_exercises_come_in_the_issues_order():
    assert [ex.name for ex in exercises.EXERCISES] == [
        "linear", "layernorm", "gelu", "softmax", "attention", "patch_embed",
        "cross_entropy", "block", "vit"]


@pytest.mark.parametrize("ex", exercises.EXERCISES, ids=lambda ex: ex.name)
def test_the_librarys_own_backward_passes(ex):
    result = exercises.grade(ex, ex.reference)
    assert result.passed, result.text
    assert "PASSED" in result.text and result.problem is None


@pytest.mark.parametrize("name", list(RIGHT))
def test_a_right_learner_file_passes(tmp_path, name):
    result = exercises.check(name, learner_file(tmp_path, name, RIGHT[name]), record=False)
    assert result.passed, result.text
    assert result.text.count("agree with finite differences") == len(
        exercises.get(name).make_cases())


@pytest.mark.parametrize("ex", exercises.EXERCISES, ids=lambda ex: ex.name)
def test_starters_stand_alone_and_compute_the_librarys_forward(ex):
    tree = ast.parse(open(ex.starter_path, encoding="utf-8").read())
    imported = {a.name for node in ast.walk(tree) if isinstance(node, (ast.Import,
                                                                       ast.ImportFrom))
                for a in node.names}
    assert imported <= {"numpy"}, imported
    with backend.using("numpy", dtype="float64"):
        for case in ex.make_cases():
            ours, _ = call_forward(ex, ex.starter_module.forward, case)
            theirs, _ = call_forward(ex, ex.reference.forward, case)
            np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-12)
    stub = exercises.grade(ex, ex.starter_module)
    assert not stub.passed and stub.problem == "stub" and "NotImplementedError" in stub.text


# -- ... and fails what is wrong, naming the tensor and the mistake ----------------------
def test_at_least_three_wrong_backwards_per_exercise():
    for ex in exercises.EXERCISES:
        assert sum(w[0] == ex.name for w in WRONG) >= 3, ex.name


@pytest.mark.parametrize("name,change,named,mistake", WRONG,
                         ids=[f"{w[0]}-{w[3]}" for w in WRONG])
def test_a_typical_mistake_fails_naming_tensor_and_hint(tmp_path, name, change, named,
                                                        mistake):
    path = learner_file(tmp_path, name, wrong_source(name, change))
    result = exercises.check(name, path, hint=1, record=False)
    assert not result.passed and result.problem == "gradient", result.text
    assert named <= set(result.wrong), (result.wrong, result.text)
    for right in {"dbproj", "dWproj", "d head.weight"} & set(result.wrong):
        pytest.fail(f"{right} is right and named wrong:\n{result.text}")
    assert result.mistakes[0] == mistake, result.text
    hint = next(m for m in exercises.get(name).mistakes if m.key == mistake).hints[0]
    assert hint in result.text and result.hints[0] == hint
    for g in named:
        assert f"  {g}: WRONG" in result.text or g in result.text.split("also wrong:")[-1]
    no_grader_traceback(result.text)


def test_the_report_says_by_how_much_and_where(tmp_path):
    path = learner_file(tmp_path, "patch_embed",
                        wrong_source("patch_embed", change_of("patch_embed", "assign")))
    text = exercises.check("patch_embed", path, record=False).text
    assert "case 1 of 3" in text and "all 3 gradients agree" in text   # tiling: no overlap
    assert "case 2 of 3" in text and "(overlapping)" in text
    assert "dx: WRONG. Worst at dx[" in text and "finite differences" in text
    assert "relative error" in text and "18 of its 50 elements are wrong" in text
    assert "exactly at the pixels that more than one patch covers" in text
    assert "dW: ok" in text and "db: ok" in text
    attention = exercises.check("attention", learner_file(
        tmp_path, "attention", wrong_source("attention", change_of("attention", "dk"))),
        record=False).text
    assert "in the k (rows 6-11) part" in attention


def test_hint_levels(tmp_path):
    path = learner_file(tmp_path, "layernorm",
                        wrong_source("layernorm", change_of("layernorm", "mean")))
    hints = next(m for m in exercises.get("layernorm").mistakes if m.key == "mean").hints
    none = exercises.check("layernorm", path, hint=0, record=False)
    assert "mean term is missing" in none.text and not any(h in none.text for h in hints)
    two = exercises.check("layernorm", path, hint=2, record=False)
    assert hints[0] in two.text and hints[1] in two.text and hints[2] not in two.text
    assert "--hint 3" in two.text
    three = exercises.check("layernorm", path, hint=3, record=False)
    assert all(h in three.text for h in hints) and three.hints == list(hints)


def test_two_mistakes_at_once_get_both_hints(tmp_path):
    source = wrong_source("layernorm", change_of("layernorm", "mean")).replace('grads["gamma"] +=',
                                                             'grads["gamma"] =')
    result = exercises.check("layernorm", learner_file(tmp_path, "layernorm", source),
                             record=False)
    assert set(result.wrong) == {"dx", "dgamma"}
    assert result.mistakes == ["mean", "overwrite"], result.text


def test_an_unknown_mistake_gets_the_tensors_own_hints(tmp_path):
    source = textwrap.dedent(RIGHT["linear"]).replace('dy2.sum(axis=0)', '2 * dy2.sum(axis=0)')
    result = exercises.check("linear", learner_file(tmp_path, "linear", source), hint=2,
                             record=False)
    assert result.wrong == ["db"] and result.mistakes == []
    assert "About db:" in result.text
    assert exercises.get("linear").tensor_hints["b"][1] in result.text


# -- bad input: a clear message, never the grader's traceback ------------------------
BAD = [
    ("syntax", "def backward(dy, cache, grads)\n    return dy\n", "syntax",
     ["line", "SyntaxError", "def backward(dy, cache, grads)"]),
    ("shape", "def backward(dy, cache, grads):\n    return dy[:, :2]\n", "shape",
     ["dx has shape (5, 2)", "shape of x, (5, 4)"]),
    ("dtype", "def backward(dy, cache, grads):\n    x, W = cache\n"
     "    return (dy @ W).astype(np.float32)\n", "dtype", ["float32", "float64"]),
    ("raises", "def backward(dy, cache, grads):\n    x, W = cache\n"
     "    return dy @ W @ W @ x\n", "raised",
     ["your backward raised an error", "line", "return dy @ W @ W @ x", "ValueError",
      "print the .shape"]),
    ("none", "def backward(dy, cache, grads):\n    x, W = cache\n    dx = dy @ W\n", "none",
     ["dx is None", "return dx"]),
    ("tuple", "def backward(dy, cache, grads):\n    x, W = cache\n    return dy @ W, None\n",
     "type", ["returned a tuple of 2"]),
    ("inplace", "def backward(dy, cache, grads):\n    x, W = cache\n    dy *= 2\n"
     "    return dy @ W / 2\n", "inplace", ["changed dy in place"]),
    ("nan", "def backward(dy, cache, grads):\n    x, W = cache\n"
     "    return dy @ W * np.nan\n", "nonfinite", ["non-finite"]),
    ("exit", "def backward(dy, cache, grads):\n    raise SystemExit(3)\n", "raised",
     ["SystemExit"]),
    ("no_backward", "del backward\n", "missing_function", ["defines no function backward"]),
    ("import_error", "import not_a_module_at_all\n", "load",
     ["when loaded", "ModuleNotFoundError"]),
]


@pytest.mark.parametrize("label,source,problem,words", BAD, ids=[b[0] for b in BAD])
def test_bad_input_gets_a_clear_message(tmp_path, label, source, problem, words):
    path = learner_file(tmp_path, "linear", source)
    result = exercises.check("linear", path, record=False)
    assert not result.passed
    assert result.problem == problem, result.text
    for w in words:
        assert w in result.text, (w, result.text)
    no_grader_traceback(result.text)
    assert result.text.count("\n") < 12


def test_a_transposed_gradient_is_called_so(tmp_path):
    source = textwrap.dedent(RIGHT["layernorm"]).replace("return rstd", "return (rstd").replace(
        "keepdims=True))\n", "keepdims=True))).T\n")
    result = exercises.check("layernorm", learner_file(tmp_path, "layernorm", source),
                             record=False)
    assert result.problem == "shape" and "dx has shape (6, 4) (transposed?)" in result.text


def test_a_gradient_left_at_zero_is_called_so(tmp_path):
    source = textwrap.dedent(RIGHT["linear"]).replace('grads["b"] += dy2.sum(axis=0)', "")
    result = exercises.check("linear", learner_file(tmp_path, "linear", source), record=False)
    assert result.wrong == ["db"] and "all zero: nothing was added to it" in result.text


def test_forward_changed_or_inputs_modified_are_refused(tmp_path):
    changed = "def forward(x, W, b):\n    return x @ W.T, (x, W)\n" + textwrap.dedent(
        RIGHT["linear"])
    result = exercises.check("linear", learner_file(tmp_path, "linear", changed), record=False)
    assert result.problem == "forward" and "no longer computes" in result.text
    single = "def forward(x, W, b):\n    return x @ W.T + b\n"
    result = exercises.check("linear", learner_file(tmp_path, "linear", single), record=False)
    assert result.problem == "forward" and "(y, cache)" in result.text
    touches = textwrap.dedent(RIGHT["layernorm"]).replace(
        "xhat, rstd, gamma = cache", "xhat, rstd, gamma = cache\n    gamma *= 1.0001")
    result = exercises.check("layernorm", learner_file(tmp_path, "layernorm", touches),
                             record=False)
    assert result.problem == "inplace" and "gamma" in result.text, result.text


def test_unknown_exercise_and_missing_file(tmp_path, capsys):
    with pytest.raises(exercises.ExerciseError, match="did you mean 'layernorm'"):
        exercises.get("layrnorm")
    assert cli(["check", "layrnorm"]) == 2
    err = capsys.readouterr().err
    assert "unknown exercise 'layrnorm'" in err and "Traceback" not in err
    assert exercises.get("col2im").name == "patch_embed"
    assert exercises.get("Cross-Entropy").name == "cross_entropy"
    result = exercises.check("gelu", str(tmp_path / "nothere.py"))
    assert result.problem == "missing" and "start gelu" in result.text
    assert cli(["check", "gelu", str(tmp_path / "nothere.py")]) == 2


# -- the command line and the learner's folder -------------------------------------
def test_start_list_check_solution(tmp_path, capsys):
    folder = str(tmp_path / "mine")
    assert cli(["--dir", folder]) == 0
    listing = capsys.readouterr().out
    rows = [line.split()[1] for line in listing.splitlines() if line[:5].strip().endswith(".")]
    assert rows == [ex.name for ex in exercises.EXERCISES]
    assert listing.count("not started") == 9

    assert cli(["--dir", folder, "start", "layernorm"]) == 0
    path = os.path.join(folder, "layernorm.py")
    with open(path) as f, open(exercises.get("layernorm").starter_path) as g:
        assert f.read() == g.read()
    assert "started, not checked yet" in exercises.status("layernorm", folder)
    assert cli(["--dir", folder, "check", "layernorm"]) == 1
    assert "still the stub" in capsys.readouterr().out
    assert exercises.status("layernorm", folder) == "started, backward not written yet"

    with open(path, "a") as f:                   # the learner's work
        f.write("\n" + textwrap.dedent(RIGHT["layernorm"]))
    assert cli(["--dir", folder, "start", "layernorm"]) == 2       # kept, not overwritten
    assert "already exists" in capsys.readouterr().err
    assert "def backward(dy, cache, grads):\n    xhat" in open(path).read()
    assert cli(["check", "layernorm", "--dir", folder]) == 0           # --dir either side
    out = capsys.readouterr().out
    assert "PASSED" in out and "Next: python -m minivit.exercises start gelu" in out
    assert exercises.status("layernorm", folder) == "passed"
    with open(path, "a") as f:
        f.write("# edited\n")
    assert exercises.status("layernorm", folder) == "edited since it passed"
    assert cli(["--dir", folder, "start", "layernorm", "--force"]) == 0
    assert "xhat * (dxhat" not in open(path).read()

    assert cli(["solution", "layernorm"]) == 0
    code = capsys.readouterr().out
    assert "def backward(self, dout)" in code and "def forward(self, x)" in code
    assert "LayerNorm over the last axis" in code          # the derivation table


def test_nothing_is_written_inside_the_package(tmp_path, capsys):
    inside = os.path.join(MINIVIT_DIR, "exercises", "learner")
    assert cli(["--dir", inside, "start", "linear"]) == 2
    assert "inside the installed minivit package" in capsys.readouterr().err
    assert not os.path.exists(inside)


def test_start_asks_before_overwriting_on_a_terminal(tmp_path):
    folder = str(tmp_path)
    path = exercises.start("gelu", folder)
    open(path, "w").write("# mine\n")
    with pytest.raises(exercises.ExerciseError):
        exercises.start("gelu", folder, ask=lambda q: False)
    assert open(path).read() == "# mine\n"
    exercises.start("gelu", folder, ask=lambda q: "Overwrite" in q)
    assert open(path).read() != "# mine\n"


@pytest.mark.parametrize("ex", exercises.EXERCISES, ids=lambda ex: ex.name)
def test_solution_shows_the_librarys_code(ex):
    text = exercises.solution(ex)
    assert text.count("# --- minivit.") >= 1 and "def " in text


# -- a finished exercise in a real model -----------------------------------------------
TINY = dict(image_size=8, patch_size=4, in_channels=1, num_classes=2, dim=16, depth=2,
            heads=2, mlp_dim=32)
SWAPPABLE = [ex.name for ex in exercises.EXERCISES if ex.swap]




def _train_a_little(tmp_path, swaps=(), dtype="float32"):
    from minivit.train import TrainConfig, Trainer
    from minivit.vit import ViT
    with backend.using("numpy", dtype=dtype):
        model = ViT(**TINY, seed=0)
        handles = [exercises.use_exercise(model, name, path) for name, path in swaps]
        trainer = Trainer(model, halves_dataset(48, 1), halves_dataset(16, 2),
                          TrainConfig(epochs=2, batch_size=8, lr=1e-2, warmup_epochs=0.5,
                                      augment=False, seed=7),
                          out_dir=str(tmp_path / f"run{len(swaps)}"), dataset="halves",
                          class_names=["left", "right"], quiet=True, plots=False)
        trainer.fit()
        for h in handles:
            h.restore()
    return trainer.history, model.state_dict()


def test_training_with_your_layernorm_matches_the_library(tmp_path):
    """12 optimizer steps: in float32 (the default) the losses equal the library's
    to 1e-6; in float64 the weights too, to 1e-9. (Not float32 weights: the key
    biases' true gradient is zero, softmax ignores a constant added to every
    score, and AdamW turns float32 rounding noise there into steps.)"""
    path = learner_file(tmp_path, "layernorm", RIGHT["layernorm"])
    for dtype, tol in (("float32", 1e-6), ("float64", 1e-9)):
        ours, our_weights = _train_a_little(tmp_path, [("layernorm", path)], dtype)
        theirs, their_weights = _train_a_little(tmp_path, (), dtype)
        for a, b in zip(ours, theirs):
            assert a["train_loss"] == pytest.approx(b["train_loss"], rel=tol, abs=tol)
            assert a["test_loss"] == pytest.approx(b["test_loss"], rel=tol, abs=tol)
        if dtype == "float64":
            for key in their_weights:
                np.testing.assert_allclose(our_weights[key], their_weights[key], atol=tol,
                                           rtol=0, err_msg=key)


def test_every_swappable_exercise_gives_the_librarys_gradients(tmp_path):
    from minivit.vit import ViT
    with backend.using("numpy", dtype="float64"):
        model = ViT(**TINY, seed=3)
        x = np.random.default_rng(0).standard_normal((3, 1, 8, 8))
        dlogits = np.random.default_rng(1).standard_normal((3, 2))

        def forward_backward():
            model.zero_grad()
            logits = model.forward(x)
            dx = model.backward(dlogits)
            return logits, dx, {k: p.grad.copy() for k, p in model.named_parameters()}

        logits, dx, grads = forward_backward()
        for name in SWAPPABLE:
            path = learner_file(tmp_path, name, RIGHT[name])
            with exercises.use_exercise(model, name, path) as handle:
                assert handle.count >= 1
                logits2, dx2, grads2 = forward_backward()
                if name == "attention":             # kept for the attention maps
                    assert model.blocks[0].attn.attn_probs.shape == (3, 2, 5, 5)
                    assert model.blocks[1].attn.attn_probs.shape == (3, 2, 1, 5)
            assert not any("backward" in m.__dict__ for _, m in model.named_modules())
            np.testing.assert_allclose(logits2, logits, rtol=1e-9, atol=1e-12, err_msg=name)
            np.testing.assert_allclose(dx2, dx, rtol=1e-8, atol=1e-12, err_msg=name)
            for key in grads:
                np.testing.assert_allclose(grads2[key], grads[key], rtol=1e-8, atol=1e-12,
                                           err_msg=f"{name}: {key}")


def test_use_exercise_refuses_what_it_cannot_run(tmp_path):
    from minivit.vit import ViT
    model = ViT(**TINY, seed=0)
    wrong = learner_file(tmp_path, "layernorm", wrong_source("layernorm",
                                                             change_of("layernorm", "mean")))
    with pytest.raises(exercises.ExerciseError, match="does not pass the layernorm check"):
        exercises.use_exercise(model, "layernorm", wrong)
    with pytest.raises(exercises.ExerciseError, match="no layer to swap"):
        exercises.use_exercise(model, "softmax", learner_file(tmp_path, "softmax",
                                                              RIGHT["softmax"]))
    mean_pool = ViT(**TINY, pool="mean", seed=0)
    with pytest.raises(exercises.ExerciseError, match="class-token ViT"):
        exercises.use_exercise(mean_pool, "vit", learner_file(tmp_path, "vit", RIGHT["vit"]))
    assert not any("forward" in m.__dict__ for _, m in model.named_modules())
    with pytest.raises(SystemExit, match="expects NAME=FILE"):
        exercises.use_exercises(model, ["layernorm"])
    with pytest.raises(SystemExit, match="unknown exercise"):
        exercises.use_exercises(model, ["layernrm=x.py"])


def test_the_training_command_line_takes_use_exercise(tmp_path, capsys):
    from minivit.cli import build_parser
    args = build_parser().parse_args(["--use-exercise", "layernorm=a.py",
                                      "--use-exercise", "gelu=b.py"])
    assert args.use_exercise == ["layernorm=a.py", "gelu=b.py"]
    folder = os.environ.get("MINIVIT_DATA", "").strip()
    if not folder:
        pytest.skip("MINIVIT_DATA is not set: the rest trains on MNIST")
    from minivit.cli import main
    path = learner_file(tmp_path, "layernorm", RIGHT["layernorm"])
    flags = ["--train-subset", "256", "--test-subset", "64", "--epochs", "1", "--depth", "1",
             "--batch-size", "32", "--no-augment", "--quiet"]
    ours = main(flags + ["--out", str(tmp_path / "a"), "--use-exercise", f"layernorm={path}"])
    theirs = main(flags + ["--out", str(tmp_path / "b")])
    assert ours.history[0]["train_loss"] == pytest.approx(theirs.history[0]["train_loss"],
                                                          rel=1e-6)


# -- the docs: each layer page ends with its exercise; the notebook runs -----------
def test_every_layer_page_ends_with_its_exercise_section():
    from minivit.exercises import pages
    root = os.path.join(os.path.dirname(MINIVIT_DIR), "docs", "layers")
    assert sorted(n for names in pages.PAGES.values() for n in names) == sorted(
        ex.name for ex in exercises.EXERCISES)
    for page in pages.PAGES:
        with open(os.path.join(root, f"{page}.md"), encoding="utf-8") as f:
            text = f.read()
        assert text.count(pages.MARK) == 1 and text.endswith(pages.section(page)), (
            f"docs/layers/{page}.md: rewrite its exercise section with "
            "`python -m minivit.exercises.pages docs/layers`")
        for name in pages.PAGES[page]:
            for mistake in exercises.get(name).mistakes:
                assert all(h in text for h in mistake.hints)


def test_the_notebook_runs_an_exercise_end_to_end(tmp_path, capsys, monkeypatch):
    import json
    monkeypatch.chdir(tmp_path)
    path = os.path.join(os.path.dirname(MINIVIT_DIR), "examples", "notebooks",
                        "your_first_backward.ipynb")
    with open(path, encoding="utf-8") as f:
        cells = [c for c in json.load(f)["cells"] if c["cell_type"] == "code"]
    namespace = {"__name__": "__main__"}
    for cell in cells:
        exec(compile("".join(cell["source"]), path, "exec"), namespace)     # noqa: S102
    out = capsys.readouterr().out
    assert "still the stub" in out and "the variance path is dropped" in out
    assert "Hint 2:" in out and "PASSED: LayerNorm" in out
    assert "2. layernorm      LayerNorm              passed" in out
    assert "largest relative difference over 32 gradients: below 1e-12" in out
    assert os.listdir(tmp_path) == []                   # it wrote into its own temp folder
