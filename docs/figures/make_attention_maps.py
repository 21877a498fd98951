"""Make the front page's picture: attention maps of a ViT trained here, on MNIST.

    python docs/figures/make_attention_maps.py            # about 2 minutes on 2 cores

Trains a small ViT (patches of 7, width 64, 4 blocks of 4 heads, class-token
pooling) on the MNIST training set, evaluates it on the test set, and writes
next to this script:

* ``attention_maps.png``: for one test digit of each of six classes, the last
  block's class-token attention of every head and the attention rollout
  through all blocks (``minivit.viz.plot_attention``, the same plot as
  ``examples/visualize_attention.py``);
* ``attention_maps.md``: the figure with its caption, which states the recipe
  and the test accuracy this run measured (included by ``docs/index.md``).

Both files are committed, so building the docs does not train; run this
script again after a change that should show in the picture. MNIST comes from
``MINIVIT_DATA`` if set, otherwise it is downloaded once.
"""

from __future__ import annotations

import argparse
import datetime
import time
from pathlib import Path

import numpy as np

from minivit import backend, data, viz
from minivit.loss import cross_entropy
from minivit.metrics import evaluate
from minivit.optim import AdamW, WarmupCosine, clip_grad_norm_, param_groups_weight_decay
from minivit.vit import ViT

HERE = Path(__file__).resolve().parent
MODEL = dict(image_size=28, patch_size=7, in_channels=1, num_classes=10, dim=64, depth=4,
             heads=4, mlp_dim=128, pool="cls")


def train(x, y, epochs: int, lr: float, batch_size: int, seed: int) -> ViT:
    """The loop of examples/notebooks/train_and_look_inside.ipynb."""
    model = ViT(**MODEL, seed=seed)
    steps = epochs * -(-len(x) // batch_size)
    optimizer = AdamW(param_groups_weight_decay(model.named_parameters(), 0.05), lr=lr)
    schedule = WarmupCosine(lr, warmup_steps=steps // 10, total_steps=steps, min_lr=1e-5)
    params = [p for _, p in model.named_parameters()]
    rng = np.random.default_rng(seed)
    step = 0
    for epoch in range(epochs):
        model.train()
        start, losses = time.perf_counter(), []
        for xb, yb in data.iterate_batches(x, y, batch_size, rng=rng):
            schedule.apply(optimizer, step)
            optimizer.zero_grad()
            loss, dlogits = cross_entropy(model.forward(xb), yb)
            model.backward(dlogits)
            clip_grad_norm_(params, 1.0)
            optimizer.step()
            losses.append(loss)
            step += 1
        print(f"epoch {epoch + 1}/{epochs}: train loss {np.mean(losses):.4f} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
    return model


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--train-images", type=int, default=60_000)
    p.add_argument("--lr", type=float, default=4e-3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(HERE), help="folder for the two files")
    args = p.parse_args(argv)

    x_train, y_train, x_test_raw, y_test = data.load_dataset("mnist", quiet=True)
    info = data.get_dataset_info("mnist")
    x_train = data.normalize(x_train[:args.train_images], info.mean, info.std)
    y_train = y_train[:args.train_images]
    x_test = data.normalize(x_test_raw, info.mean, info.std)

    model = train(x_train, y_train, args.epochs, args.lr, args.batch_size, args.seed)
    accuracy = evaluate(model, x_test, y_test).accuracy
    print(f"test accuracy: {accuracy:.2%}")

    picks = np.array([np.flatnonzero(y_test == digit)[0] for digit in range(6)])
    model.eval()
    probs = viz.predict_probs(model, x_test[picks], batch_size=len(picks))
    out = Path(args.out)
    viz.plot_attention(x_test_raw[picks], viz.cls_attention(model),
                       viz.attention_rollout(model), out / "attention_maps.png",
                       labels=y_test[picks], preds=probs.argmax(axis=1))
    n_params = sum(p.data.size for _, p in model.named_parameters())
    caption = (
        "Where a ViT trained with minivit looks. Each row: a test digit, the class-token "
        "attention of each of the 4 heads in the last block, and the attention rollout "
        "through all 4 blocks (each map scaled to its own maximum). The model (patches of "
        f"7x7 pixels, width 64, 4 blocks, {n_params:,} parameters) was trained for "
        f"{args.epochs} epochs on {len(x_train):,} MNIST training images and classifies "
        f"{accuracy:.2%} of the {len(y_test):,} test images correctly. Made on "
        f"{datetime.date.today().isoformat()} by `python docs/figures/make_attention_maps.py`.")
    (out / "attention_maps.md").write_text(
        "```{figure} /figures/attention_maps.png\n"
        ":alt: Class-token attention maps and attention rollout of a trained ViT on six "
        "MNIST test digits\n"
        ":class: front-figure\n\n"
        f"{caption}\n```\n", encoding="utf-8")
    print(f"wrote {out / 'attention_maps.png'} and {out / 'attention_maps.md'} "
          f"(backend {backend.name})")


if __name__ == "__main__":
    main()
