"""Attention maps, rollout, position-embedding similarity, and the two example scripts."""

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from minivit import backend, data, viz
from minivit.checkpoint import save_checkpoint
from minivit.vit import ViT

from helpers import randn, randomize_parameters

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TINY = dict(image_size=8, patch_size=4, in_channels=1, num_classes=10, dim=8, depth=2,
            heads=2, mlp_dim=16)                     # grid 2: N = 4 patches, T = 5 tokens
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _numpy_float32():
    with backend.using("numpy", dtype="float32"):
        backend.seed(0)
        yield


def _example(name):
    """Import examples/<name>.py as a module (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location(f"_example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tiny_model(**overrides):
    model = ViT(**{**TINY, **overrides})
    randomize_parameters(model, scale=0.5)           # peaked, head-specific attention
    return model.eval()


def _checkpoint(tmp_path, **overrides):
    """A trainer-style checkpoint of a freshly initialised small ViT."""
    model = _tiny_model(**overrides)
    info = data.DATASETS["mnist"]
    config = {"model": model.config, "dataset": "mnist", "mean": info.mean,
              "std": info.std, "train": {"epochs": 0}}
    path = tmp_path / "run" / "best.npz"
    save_checkpoint(path, model.state_dict(), config=config)
    return path, model


def _set_attention(model, per_layer):
    """Overwrite every block's stored attention with given (B, H, T, T) arrays."""
    for block, attn in zip(model.blocks, per_layer):
        block.attn.attn_probs = np.asarray(attn, dtype=np.float64)


def _assert_png(path):
    path = Path(path)
    assert path.is_file() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert not [p for p in path.parent.iterdir() if ".tmp-" in p.name]   # no temp left


# --------------------------------------------------------------------------
# cls_attention and attention_rollout
# --------------------------------------------------------------------------
def test_cls_attention_shape_and_softmax_row():
    model = _tiny_model()
    model.forward(randn(3, 1, 8, 8))
    heads = viz.cls_attention(model)
    assert heads.shape == (3, 2, 2, 2)               # (B, heads, grid, grid)
    self_term = model.blocks[-1].attn.attn_probs[:, :, 0, 0]
    np.testing.assert_allclose(heads.sum(axis=(-2, -1)) + self_term, 1.0, atol=1e-5)
    # patch order is row-major, like the patch tokens
    np.testing.assert_allclose(heads[:, :, 0, 1], model.blocks[-1].attn.attn_probs[:, :, 0, 2])


def test_rollout_of_a_real_forward_is_finite_non_negative_and_at_most_one():
    model = _tiny_model()
    model.forward(randn(4, 1, 8, 8))
    rollout = viz.attention_rollout(model)
    assert rollout.shape == (4, 2, 2)
    assert np.isfinite(rollout).all() and (rollout >= 0).all()
    assert (rollout.sum(axis=(1, 2)) <= 1 + 1e-9).all()   # the CLS-to-CLS share is the rest


def test_rollout_identity_attention_keeps_everything_on_cls():
    # Every token attends only to itself: CLS never reads a patch.
    model = _tiny_model()
    eye = np.broadcast_to(np.eye(5), (3, 2, 5, 5))
    _set_attention(model, [eye, eye])
    np.testing.assert_array_equal(viz.attention_rollout(model), np.zeros((3, 2, 2)))


def test_rollout_uniform_attention_matches_closed_form():
    # A = J/T (uniform). M = (A + I)/2 and J/T is idempotent, so
    # M^L = (I + (2^L - 1) J/T) / 2^L: each patch gets (2^L - 1) / (2^L T).
    model = _tiny_model(depth=3)
    T, L = 5, 3
    uniform = np.full((2, 2, T, T), 1.0 / T)
    _set_attention(model, [uniform] * L)
    expected = (2**L - 1) / (2**L * T)
    np.testing.assert_allclose(viz.attention_rollout(model), expected, rtol=1e-12)


def test_rollout_handcrafted_two_layers():
    # One patch (grid 1): T = 2 tokens, 2 heads, 2 layers - small enough by hand.
    model = _tiny_model(image_size=4, patch_size=4)
    layer1 = [[[1.0, 0.0], [0.0, 1.0]],              # head 1
              [[0.0, 1.0], [0.4, 0.6]]]              # head 2
    layer2 = [[[0.0, 1.0], [1.0, 0.0]],
              [[0.0, 1.0], [1.0, 0.0]]]
    _set_attention(model, [np.array([layer1]), np.array([layer2])])
    # layer 1: mean [[.5, .5], [.2, .8]], + I and renormalise -> [[.75, .25], [.1, .9]]
    # layer 2: mean [[0, 1], [1, 0]],     + I and renormalise -> [[.5, .5], [.5, .5]]
    # R = M2 @ M1 = [[.425, .575], [.425, .575]] -> CLS row, patch column: 0.575
    # (the wrong order M1 @ M2 would give 0.5)
    np.testing.assert_allclose(viz.attention_rollout(model), [[[0.575]]], rtol=1e-12)


def test_rollout_matches_explicit_loops_and_is_vectorised_over_batch():
    rng = np.random.default_rng(1)
    model = _tiny_model()
    B, H, T = 3, 2, 5
    layers = [rng.dirichlet(np.ones(T), size=(B, H, T)) for _ in range(2)]   # rows sum to 1
    _set_attention(model, layers)
    got = viz.attention_rollout(model)
    for b in range(B):                               # one image at a time, by the book
        R = np.eye(T)
        for attn in layers:
            M = np.zeros((T, T))
            for h in range(H):
                M += attn[b, h] / H
            M += np.eye(T)
            M /= M.sum(axis=1, keepdims=True)
            R = M @ R
        np.testing.assert_allclose(got[b], R[0, 1:].reshape(2, 2), rtol=1e-12)


def test_attention_before_forward_is_a_clear_error():
    with pytest.raises(RuntimeError, match="forward"):
        viz.attention_rollout(ViT(**TINY))


# --------------------------------------------------------------------------
# pos_embed_similarity and upsample
# --------------------------------------------------------------------------
def test_pos_embed_similarity_diagonal_one_and_symmetric():
    model = _tiny_model(image_size=12, patch_size=4)     # grid 3
    sim = viz.pos_embed_similarity(model, as_grid=False)
    assert sim.shape == (9, 9)
    np.testing.assert_allclose(np.diag(sim), 1.0, atol=1e-12)
    np.testing.assert_allclose(sim, sim.T, atol=1e-12)
    assert (np.abs(sim) <= 1).all()
    grid = viz.pos_embed_similarity(model)
    assert grid.shape == (3, 3, 3, 3)
    assert grid[1, 2, 1, 2] == pytest.approx(1.0)
    np.testing.assert_allclose(grid[0, 1].ravel(), sim[1])     # patch (0, 1) is token 1


def test_sincos_pos_embed_similarity_decays_with_distance():
    model = ViT(**{**TINY, "image_size": 16, "pos_embed": "sincos"})   # grid 4
    sim = viz.pos_embed_similarity(model)
    assert sim[0, 0, 0, 1] > sim[0, 0, 3, 3]


def test_upsample_nearest_and_bilinear():
    maps = np.arange(4.0).reshape(1, 2, 2)
    near = viz.upsample(maps, 4, mode="nearest")
    np.testing.assert_array_equal(near[0], np.kron([[0, 1], [2, 3]], np.ones((2, 2))))
    lin = viz.upsample(maps, (4, 6), mode="bilinear")
    assert lin.shape == (1, 4, 6)
    assert lin.min() == 0 and lin.max() == 3           # no overshoot, corners kept
    np.testing.assert_allclose(viz.upsample(np.full((3, 3), 2.5), 7), 2.5)
    with pytest.raises(ValueError, match="nearest"):
        viz.upsample(maps, 4, mode="cubic")


def test_plot_functions_write_pngs_atomically(tmp_path):
    pytest.importorskip("matplotlib")
    model = _tiny_model()
    x = randn(2, 1, 8, 8)
    model.forward(x)
    viz.plot_attention(x, viz.cls_attention(model), viz.attention_rollout(model),
                       tmp_path / "a.png", labels=[1, 2], preds=[1, 3])
    viz.plot_pos_embed_similarity(viz.pos_embed_similarity(model, as_grid=False),
                                  tmp_path / "p.png")
    _assert_png(tmp_path / "a.png")
    _assert_png(tmp_path / "p.png")


# --------------------------------------------------------------------------
# load_model
# --------------------------------------------------------------------------
def test_load_model_round_trip(tmp_path):
    path, model = _checkpoint(tmp_path)
    loaded, config = viz.load_model(path)
    assert not loaded.training and config["dataset"] == "mnist"
    x = randn(2, 1, 8, 8)
    np.testing.assert_allclose(loaded.forward(x), model.forward(x), rtol=1e-6)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    missing = tmp_path / "nope" / "best.npz"
    with pytest.raises(FileNotFoundError, match="train_mnist.py") as info:
        viz.load_model(missing)
    assert str(missing) in str(info.value)
    scripts = [("visualize_attention", [])]
    if importlib.util.find_spec("PIL") is not None:   # predict checks for Pillow first
        scripts.append(("predict", ["x.png"]))
    for name, extra in scripts:
        with pytest.raises(SystemExit, match="train_mnist.py"):
            _example(name).main(["--checkpoint", str(missing), *extra])


# --------------------------------------------------------------------------
# examples/visualize_attention.py
# --------------------------------------------------------------------------
def test_visualize_attention_on_a_fake_dataset(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    path, _ = _checkpoint(tmp_path)
    rng = np.random.default_rng(0)
    x_test = rng.integers(0, 256, size=(20, 8, 8), dtype=np.uint8)
    y_test = np.arange(20, dtype=np.uint8) % 10

    def fake_load_dataset(dataset, data_dir=None, **kwargs):
        assert dataset == "mnist"                    # the checkpoint's dataset
        return x_test[:0], y_test[:0], x_test, y_test

    monkeypatch.setattr(data, "load_dataset", fake_load_dataset)
    paths = _example("visualize_attention").main(
        ["--checkpoint", str(path), "--num-images", "3", "--seed", "1"])
    out = capsys.readouterr().out
    for png in paths.values():
        assert Path(png).parent == path.parent       # default --out: the checkpoint's folder
        assert png in out
        _assert_png(png)


def test_visualize_attention_picks_distinct_classes_first():
    pick = _example("visualize_attention").pick_images
    labels = np.array([0, 0, 0, 1, 1, 2, 0, 0])
    idx = pick(labels, 5, seed=0)
    assert len(set(idx)) == 5 and set(labels[idx[:3]]) == {0, 1, 2}


def _real_mnist_dir():
    root = os.environ.get("MINIVIT_DATA", "").strip()
    if not root:
        return None
    folder = data.find_data_dir("mnist")
    return folder if all(data.dataset_files("mnist", folder).values()) else None


@pytest.mark.skipif(_real_mnist_dir() is None, reason="MINIVIT_DATA does not hold MNIST")
def test_visualize_attention_on_real_mnist(tmp_path):
    pytest.importorskip("matplotlib")
    path, _ = _checkpoint(tmp_path, image_size=28, patch_size=7)
    paths = _example("visualize_attention").main(
        ["--checkpoint", str(path), "--num-images", "2", "--out", str(tmp_path / "figs")])
    for png in paths.values():
        _assert_png(png)


# --------------------------------------------------------------------------
# examples/predict.py
# --------------------------------------------------------------------------
def _write_images(folder):
    """Three PNGs of a '1' in different modes and polarities."""
    Image = pytest.importorskip("PIL.Image")
    stroke = np.zeros((40, 30), dtype=np.uint8)
    stroke[5:35, 13:17] = 255                         # white bar on black, MNIST-like
    paths = {
        "white_on_black.png": Image.fromarray(stroke, mode="L"),
        "black_on_white_rgb.png": Image.fromarray(np.stack([255 - stroke] * 3, -1), mode="RGB"),
        "ink_on_transparent.png": Image.fromarray(
            np.stack([np.zeros_like(stroke)] * 3 + [stroke], -1), mode="RGBA"),
    }
    for name, img in paths.items():
        img.save(folder / name)
    return [str(folder / name) for name in paths]


def test_predict_prints_top_classes(tmp_path, capsys):
    path, model = _checkpoint(tmp_path)
    files = _write_images(tmp_path)
    predict = _example("predict")

    results = predict.main(["--checkpoint", str(path), "--top", "3", *files])
    out = capsys.readouterr().out
    assert [r["inverted"] for r in results] == [False, True, True]
    for r in results:
        assert r["path"] in out
        probs = [p for _, p in r["top"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True)
        assert 0 < sum(probs) <= 1 + 1e-9
        for name, p in r["top"]:
            assert name in data.DATASETS["mnist"].class_names
            assert f"{p:.4f}" in out
    # the same digit in three encodings is the same model input
    np.testing.assert_allclose(results[0]["top"][0][1], results[1]["top"][0][1], rtol=1e-5)
    np.testing.assert_allclose(results[0]["top"][0][1], results[2]["top"][0][1], rtol=1e-5)

    everything = predict.main(["--checkpoint", str(path), "--top", "50", files[0]])
    assert len(everything[0]["top"]) == 10             # clipped to the number of classes
    assert sum(p for _, p in everything[0]["top"]) == pytest.approx(1.0, abs=1e-6)
    assert predict.main(["--checkpoint", str(path), "--invert", "yes", files[0]])[0]["inverted"]


def test_predict_preprocessing_matches_the_training_normalisation(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    pixels = np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8)
    Image.fromarray(pixels, mode="L").save(tmp_path / "exact.png")
    info = data.DATASETS["mnist"]
    x, inverted = _example("predict").load_image(tmp_path / "exact.png", 8, 1, info.mean,
                                                 info.std, invert="no")
    assert not inverted
    np.testing.assert_allclose(x, data.normalize(pixels[None], info.mean, info.std)[0],
                               rtol=1e-5, atol=1e-6)


def test_predict_with_an_image_folder_model(tmp_path, capsys):
    """A model trained on the user's own RGB images: the checkpoint's class names,
    the per-channel mean/std, and the very resize the training images got."""
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(1)
    folder = tmp_path / "pets"
    files = []
    for name in ("cat", "dog"):
        (folder / name).mkdir(parents=True)
        for i in range(3):                       # 11 x 13: resized to 8 x 8
            files.append(folder / name / f"{i}.png")
            Image.fromarray(rng.integers(0, 256, (13, 11, 3), dtype=np.uint8)).save(files[-1])
    from minivit.data.formats import read_image_folder
    images, _, class_names, paths = read_image_folder(folder, image_size=8, channels=3)
    assert [str(p) for p in paths] == [str(f) for f in files]
    mean, std = data.channel_stats(images)
    model = _tiny_model(in_channels=3, num_classes=2)
    config = {"model": model.config, "dataset": "imagefolder", "mean": list(mean),
              "std": list(std), "class_names": class_names, "train": {"epochs": 0}}
    path = tmp_path / "run" / "best.npz"
    save_checkpoint(path, model.state_dict(), config=config)
    predict = _example("predict")

    x, inverted = predict.load_image(files[0], 8, 3, mean, std, invert="auto", fit="resize")
    assert not inverted                         # no digit-style inversion for photos
    np.testing.assert_allclose(x, data.normalize(images[:1], mean, std)[0],
                               rtol=1e-5, atol=1e-5)
    results = predict.main(["--checkpoint", str(path), "--top", "2", str(files[0])])
    assert sorted(name for name, _ in results[0]["top"]) == ["cat", "dog"]
    assert not results[0]["inverted"]
    probs = viz.predict_probs(model, x[None])[0]
    assert dict(results[0]["top"]) == pytest.approx({"cat": probs[0], "dog": probs[1]},
                                                    rel=1e-5)


def test_predict_bad_image_files(tmp_path):
    pytest.importorskip("PIL")
    path, _ = _checkpoint(tmp_path)
    (tmp_path / "notes.png").write_text("not an image")
    missing = str(tmp_path / "missing.png")
    with pytest.raises(SystemExit) as info:
        _example("predict").main(["--checkpoint", str(path), missing,
                                  str(tmp_path / "notes.png")])
    message = str(info.value)
    assert f"{missing!r} not found" in message           # both problems, in one message
    assert "cannot read image" in message and "notes.png" in message


def test_predict_without_pillow_says_how_to_install(tmp_path, monkeypatch):
    path, _ = _checkpoint(tmp_path)
    monkeypatch.setitem(sys.modules, "PIL", None)        # makes `import PIL` fail
    with pytest.raises(SystemExit, match="pip install pillow"):
        _example("predict").main(["--checkpoint", str(path), "x.png"])


def _full_last_block(model):
    """Make the last block compute every token (as before the class-token-only
    shortcut): its attn_probs then hold all T rows."""
    last = model.blocks[-1]
    last.forward = lambda z, num_queries=None: type(last).forward(last, z)


def test_maps_from_the_class_token_row_equal_those_from_full_attention():
    x = randn(3, 1, 8, 8, seed=4)
    model = _tiny_model(depth=3)
    model.forward(x)
    assert model.blocks[-1].attn.attn_probs.shape == (3, 2, 1, 5)   # CLS row only
    heads, rollout = viz.cls_attention(model), viz.attention_rollout(model)
    _full_last_block(model)
    model.forward(x)
    assert model.blocks[-1].attn.attn_probs.shape == (3, 2, 5, 5)
    np.testing.assert_allclose(heads, viz.cls_attention(model), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(rollout, viz.attention_rollout(model), rtol=1e-5, atol=1e-7)
