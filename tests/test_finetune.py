"""Fine-tuning pretrained weights (examples/finetune.py, the --weights flags of
the training command line) and the pretrained-attention example."""

import importlib.util
import os
import sys

import numpy as np
import pytest

from minivit.config import TrainConfig
from minivit.pretrained import save_weights
from minivit.train import split_head_groups
from minivit.vit import ViT

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples")
# a small "pretrained" RGB model: 16 px, patch 4 (a 4x4 grid), timm's options
PRETRAINED = dict(image_size=16, patch_size=4, in_channels=3, num_classes=7, dim=16, depth=2,
                  heads=2, mlp_dim=24, gelu="exact", norm_eps=1e-6)


def _example(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(EXAMPLES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _mnist():
    folder = os.environ.get("MINIVIT_DATA", "").strip()
    if not folder or not os.path.exists(os.path.join(folder, "train-images-idx3-ubyte.gz")):
        pytest.skip("MINIVIT_DATA does not point at MNIST")


def _weights(tmp_path, **overrides):
    pytest.importorskip("safetensors")
    path = str(tmp_path / "pretrained.safetensors")
    save_weights(ViT(**{**PRETRAINED, **overrides}, seed=3), path)
    return path


def test_split_head_groups_scales_or_freezes_the_backbone():
    model = ViT(**PRETRAINED, seed=0)
    from minivit.optim import param_groups_weight_decay
    groups = param_groups_weight_decay(model.named_parameters(), 0.05)
    scaled = split_head_groups(groups, 0.1)
    heads = [n for g in scaled if "lr_scale" not in g for n, _ in g["params"]]
    assert sorted(heads) == ["head.bias", "head.weight"]
    assert all(g["lr_scale"] == 0.1 for g in scaled if "lr_scale" in g)
    assert sum(len(g["params"]) for g in scaled) == sum(len(g["params"]) for g in groups)
    frozen = split_head_groups(groups, 0.0)
    assert sorted(n for g in frozen for n, _ in g["params"]) == ["head.bias", "head.weight"]
    with pytest.raises(ValueError, match="backbone_lr_scale must be in"):
        TrainConfig(backbone_lr_scale=2.0)


@pytest.mark.parametrize("mode", ["freeze", "scale"])
def test_finetune_from_a_weights_file(tmp_path, capsys, mode):
    """MNIST (grayscale, 28 px, 10 classes) on a 16-px RGB 7-class checkpoint: the
    channels are repeated, the position embedding resampled to a 7x7 grid, the
    head replaced; frozen, the backbone keeps every weight, the head learns."""
    _mnist()
    path = _weights(tmp_path)
    finetune = _example("finetune")
    flags = ["--freeze-backbone"] if mode == "freeze" else ["--backbone-lr-scale", "0.1"]
    argv = finetune.finetune_argv(["--weights", path, "--train-subset", "512",
                                   "--test-subset", "200", "--epochs", "3", "--batch-size", "64",
                                   "--lr", "3e-3",
                                   "--no-augment", "--out", str(tmp_path / "run"), *flags])
    from minivit.cli import main
    trainer = main(argv)
    printed = capsys.readouterr().out
    assert "head of 7 classes replaced by a new one of 10" in printed
    assert "position embedding resampled from 16 to 49" in printed
    assert "grayscale images repeated over the model's 3 channels" in printed
    model = trainer.model
    assert model.config["in_channels"] == 3 and model.config["num_classes"] == 10
    assert model.config["gelu"] == "exact"                  # the checkpoint's architecture
    before = ViT(**PRETRAINED, seed=3).state_dict()
    after = model.state_dict()
    backbone = [k for k in after if not k.startswith("head.") and k != "pos_embed"]
    changed = [k for k in backbone if not np.array_equal(after[k], before[k])]
    if mode == "freeze":
        assert changed == [] and "backbone frozen" in printed
    else:
        assert len(changed) == len(backbone) and "backbone lr x 0.1" in printed
    # the loss falls: with a frozen backbone only the new head can have done it
    assert trainer.history[-1]["train_loss"] < trainer.history[0]["train_loss"]


def test_finetune_needs_weights_and_fitting_class_counts(tmp_path):
    finetune = _example("finetune")
    with pytest.raises(SystemExit, match="--weights FILE is required"):
        finetune.finetune_argv(["--dataset", "cifar10"])
    argv = finetune.finetune_argv(["--weights", "w.safetensors", "--dataset", "cifar10"])
    assert argv[argv.index("--out") + 1] == "runs/finetune-cifar10"
    assert argv.index("--backbone-lr-scale") < argv.index("--weights")   # user flags win
    _mnist()
    path = _weights(tmp_path)
    from minivit.cli import run
    assert run(["--weights", path, "--num-classes", "5", "--train-subset", "64",
                "--test-subset", "10", "--out", str(tmp_path / "r")]) == 1
    assert run(["--weights", str(tmp_path / "missing.safetensors"), "--train-subset", "64",
                "--out", str(tmp_path / "r")]) == 1


def test_attention_of_a_pretrained_model_on_a_photo(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    Image = pytest.importorskip("PIL.Image")
    path = _weights(tmp_path, image_size=32, patch_size=8, num_classes=4)
    rng = np.random.default_rng(0)
    photo = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 255, (60, 90, 3), dtype=np.uint8)).save(photo)
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\nbird\nfish\n")
    example = _example("attention_pretrained")
    result = example.main([str(photo), "--weights", path, "--labels", str(labels),
                           "--out", str(tmp_path)])
    assert os.path.exists(result["path"]) and result["path"].endswith("attention_photo.png")
    probs = [p for _, p in result["top5"]]
    assert len(probs) == 4 and probs == sorted(probs, reverse=True)
    assert 0.99 < sum(probs) < 1.01
    printed = capsys.readouterr().out
    assert "1. " in printed and any(n in printed for n in ("cat", "dog", "bird", "fish"))
    # the maps printed are minivit's own: rollout rows add up with the CLS entry
    labels.write_text("cat\ndog\n")
    with pytest.raises(SystemExit, match="2 class names, the model's head has 4"):
        example.main([str(photo), "--weights", path, "--labels", str(labels)])
    (tmp_path / "not_an_image.png").write_text("hello")
    with pytest.raises(SystemExit, match="cannot read .* as an image"):
        example.main([str(tmp_path / "not_an_image.png"), "--weights", path])
    with pytest.raises(SystemExit, match="not.*checkpoint|cannot|error"):
        example.main([str(photo), "--weights", str(photo)])
    Image.fromarray(rng.integers(0, 255, (30, 6, 3), dtype=np.uint8)).save(tmp_path / "thin.png")
    with pytest.raises(SystemExit, match=r"thin.png is 6x30 pixels: smaller than one 8-pixel"):
        example.main([str(tmp_path / "thin.png"), "--weights", path])


def test_attention_example_without_a_photo_uses_matplotlibs(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    pytest.importorskip("PIL.Image")
    path = _weights(tmp_path, image_size=32, patch_size=8, num_classes=4)
    result = _example("attention_pretrained").main(["--weights", path, "--out", str(tmp_path),
                                                    "--crop-pct", "0.875"])
    assert result["path"].endswith("attention_grace_hopper.png")
    assert "no photo given: using matplotlib's sample photo" in capsys.readouterr().out
    assert len(result["top5"]) == 4


def test_images_are_resized_for_a_patch_size_that_does_not_divide_them(tmp_path, capsys):
    from minivit.cli import resize_images, run
    raw = np.random.default_rng(0).integers(0, 256, (5, 28, 28)).astype(np.uint8)
    out = resize_images(raw, 32, chunk=2)
    assert out.shape == (5, 32, 32) and out.dtype == np.uint8
    assert abs(float(out.mean()) - float(raw.mean())) < 2
    flat = np.full((2, 3, 7, 7), 200, np.uint8)
    assert (resize_images(flat, 16) == 200).all()
    _mnist()
    argv = ["--model", "vit_tiny_patch16_224", "--train-subset", "32", "--test-subset", "8",
            "--epochs", "1", "--batch-size", "16", "--quiet", "--out", str(tmp_path / "r")]
    assert run(argv) == 1
    assert "resize them with --image-size" in capsys.readouterr().err
    assert run(argv + ["--image-size", "32"]) == 0


def _photo_folder(tmp_path):
    """Two classes of crops of a real photo, of different sizes and shapes."""
    cbook = pytest.importorskip("matplotlib.cbook")
    Image = pytest.importorskip("PIL.Image")
    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as img:
        photo = img.convert("RGB")
    root = tmp_path / "photos"
    files = []
    for k, name in enumerate(("face", "uniform")):
        (root / name).mkdir(parents=True)
        for i in range(5):
            box = (40 * i, 60 * k + 10 * i, 40 * i + 200 + 17 * i, 60 * k + 150 + 30 * i)
            files.append(root / name / f"{i}.png")
            photo.crop(box).save(files[-1])
    return root, files


def test_finetune_on_photos_prepares_them_as_timm_and_predict_agrees(tmp_path, capsys):
    """A timm architecture fine-tuned on an image folder: both splits go through
    timm's eval transform with mean = std = 0.5, and predict.py prepares a photo
    for the fine-tuned checkpoint the same way."""
    from minivit.cli import main
    from minivit.pretrained.preprocess import EvalTransform, load_image
    root, files = _photo_folder(tmp_path)
    weights = _weights(tmp_path)                          # 16 px, exact GELU, RGB
    out = tmp_path / "run"
    trainer = main(["--weights", weights, "--dataset", "imagefolder", "--data-dir", str(root),
                    "--image-size", "16", "--test-fraction", "0.4", "--epochs", "1",
                    "--batch-size", "4", "--no-augment", "--quiet", "--out", str(out)])
    transform = EvalTransform(16)
    assert transform.scale_size == 17
    assert list(trainer.mean) == [0.5] * 3 and list(trainer.std) == [0.5] * 3
    inputs = np.stack([load_image(f, transform)[0] for f in files])
    seen = np.concatenate([trainer.x_train, trainer.x_test])
    assert len(seen) == len(files)
    for x in seen:                      # every image is one of the files, so prepared
        assert np.abs(inputs - x).reshape(len(files), -1).max(axis=1).min() < 1e-6
    results = _example("predict").main(["--checkpoint", str(out / "best.npz"), str(files[0])])
    x = load_image(files[0], transform)[0]
    probs = trainer.model.eval().forward(x[None])[0]
    probs = np.exp(probs - probs.max()) / np.exp(probs - probs.max()).sum()
    assert dict(results[0]["top"]) == pytest.approx(
        {"face": float(probs[0]), "uniform": float(probs[1])}, rel=1e-4)


def test_a_from_scratch_checkpoint_keeps_its_own_image_preparation(tmp_path):
    from minivit.cli import parse_args, pretrained_photo_transform
    tanh = _weights(tmp_path, gelu="tanh")                # minivit's own architecture
    args = parse_args(["--weights", tanh, "--dataset", "imagefolder", "--data-dir", "x"])
    assert pretrained_photo_transform(args) is None
    args = parse_args(["--model", "vit_tiny_patch16_224", "--dataset", "imagefolder",
                       "--data-dir", "x", "--image-size", "32"])
    t = pretrained_photo_transform(args)
    assert (t.image_size, t.crop_pct, t.mean) == (32, 0.9, (0.5, 0.5, 0.5))
    assert pretrained_photo_transform(parse_args(["--model", "vit_tiny_patch16_224"])) is None


def test_predict_with_pretrained_weights_uses_timms_transform(tmp_path, capsys):
    from minivit.pretrained.preprocess import EvalTransform, load_image
    _, files = _photo_folder(tmp_path)
    weights = _weights(tmp_path, image_size=32, patch_size=8, num_classes=3)
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\nc\n")
    predict = _example("predict")
    results = predict.main(["--weights", weights, "--labels", str(labels), "--top", "3",
                            str(files[1])])
    x = load_image(files[1], EvalTransform(32))[0]
    model = ViT(**{**PRETRAINED, "image_size": 32, "patch_size": 8, "num_classes": 3}, seed=3)
    logits = model.eval().forward(x[None])[0]
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    assert dict(results[0]["top"]) == pytest.approx(dict(zip("abc", probs.tolist())), rel=1e-4)
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff not really")
    with pytest.raises(SystemExit, match=r"cannot read .*bad.jpg as an image"):
        predict.main(["--weights", weights, str(tmp_path / "bad.jpg")])
    labels.write_text("a\nb\n")
    with pytest.raises(SystemExit, match="2 class names, the model's head has 3"):
        predict.main(["--weights", weights, "--labels", str(labels), str(files[1])])
