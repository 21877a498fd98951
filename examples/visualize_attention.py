"""Where does a trained ViT look? Plot its attention on a few test digits.

    python examples/visualize_attention.py --checkpoint runs/mnist/best.npz

writes, next to the checkpoint (or into --out):

* ``attention.png``: one row per test image: the image, the last layer's
  CLS attention of every head, and the attention rollout through all layers;
* ``pos_embed_similarity.png``: cosine similarity of each patch's position
  embedding with every other patch's (Figure 7 of the ViT paper).

The test set is the one the checkpoint was trained on (config["dataset"]).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from minivit import data, viz


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="runs/mnist/best.npz",
                   help="trainer checkpoint (.npz); default %(default)s")
    p.add_argument("--num-images", type=int, default=6,
                   help="test images to show, one row each; default %(default)s")
    p.add_argument("--out", default=None,
                   help="output folder; default the checkpoint's folder")
    p.add_argument("--data-dir", default=None,
                   help="dataset folder (default: MINIVIT_DATA, then the cache)")
    p.add_argument("--seed", type=int, default=0, help="which test images; default %(default)s")
    args = p.parse_args(argv)
    if args.num_images < 1:
        p.error(f"--num-images must be at least 1, got {args.num_images}")
    return args


def pick_images(labels: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Indices of ``count`` random test images, different classes first.

    Showing a 3, a 7 and a 0 says more than three 1s, so we walk a random
    permutation and take each class's first image, then fill up with the rest.
    """
    order = np.random.default_rng(seed).permutation(len(labels))
    _, first = np.unique(labels[order], return_index=True)
    distinct = order[np.sort(first)]                 # one per class, in random order
    rest = order[~np.isin(order, distinct)]
    return np.concatenate([distinct, rest])[:count]


def main(argv=None) -> dict:
    """Run the script; returns ``{"attention": path, "pos_embed_similarity": path}``."""
    args = parse_args(argv)
    try:
        model, config = viz.load_model(args.checkpoint)
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"visualize_attention.py: error: {exc}") from None

    dataset = config.get("dataset", "mnist")
    info = data.get_dataset_info(dataset)
    mean, std = config.get("mean", info.mean), config.get("std", info.std)
    try:
        _, _, x_test, y_test = data.load_dataset(dataset, data_dir=args.data_dir)
    except data.DataError as exc:
        raise SystemExit(f"visualize_attention.py: error: {exc}") from None

    idx = pick_images(y_test, min(args.num_images, len(y_test)), args.seed)
    raw, labels = x_test[idx], y_test[idx]            # uint8 (B, 28, 28), (B,)
    x = data.normalize(raw, mean, std)                # float (B, 1, 28, 28)
    # one forward over all of them, so attn_probs covers every image shown
    probs = viz.predict_probs(model, x, batch_size=len(x))
    preds = probs.argmax(axis=1)

    out = args.out or os.path.dirname(os.path.abspath(args.checkpoint))
    paths = {
        "attention": viz.plot_attention(
            raw, viz.cls_attention(model), viz.attention_rollout(model),
            os.path.join(out, "attention.png"), labels=labels, preds=preds,
            class_names=info.class_names),
        "pos_embed_similarity": viz.plot_pos_embed_similarity(
            viz.pos_embed_similarity(model), os.path.join(out, "pos_embed_similarity.png"),
            title=f"Position embedding similarity ({config['model'].get('pos_embed', 'learned')})"),
    }
    correct = int((preds == labels).sum())
    print(f"{correct}/{len(labels)} shown test images classified correctly")
    for path in paths.values():
        print(path)
    return paths


if __name__ == "__main__":
    main(sys.argv[1:])
