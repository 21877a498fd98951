"""Looking inside a trained ViT: attention maps, attention rollout, position embeddings.

Everything here runs on the host (NumPy): model arrays are brought over with
:func:`minivit.backend.to_numpy`, so a model trained on the GPU works too.
matplotlib is imported only inside the plotting functions, so the analysis
functions need nothing beyond NumPy.

Typical use::

    model, config = load_model("runs/mnist/best.npz")
    logits = model.forward(x)                    # fills blocks[i].attn.attn_probs
    heads = cls_attention(model)                 # (B, heads, grid, grid)
    rollout = attention_rollout(model)           # (B, grid, grid)
    plot_attention(images, heads, rollout, "attention.png")
    plot_pos_embed_similarity(pos_embed_similarity(model), "pos_embed_similarity.png")

Shapes: B batch, H heads, T = N + 1 tokens (token 0 is CLS), N = grid * grid
patches.
"""

from __future__ import annotations

import os

import numpy as np

from minivit import backend
from minivit.atomic import save_figure as atomic_save_figure
from minivit.module import no_grad

__all__ = [
    "load_model",
    "predict_probs",
    "cls_attention",
    "attention_rollout",
    "pos_embed_similarity",
    "upsample",
    "plot_attention",
    "plot_pos_embed_similarity",
    "save_figure",
]

TRAIN_HINT = "python examples/train_mnist.py"


# --------------------------------------------------------------------------
# Loading and running a model
# --------------------------------------------------------------------------
def load_model(checkpoint_path):
    """Rebuild the ViT saved in a trainer checkpoint, ready for inference.

    Args:
        checkpoint_path: ``.npz`` written by the trainer, whose config holds
            ``{"model": <ViT kwargs>, "dataset": ..., "mean": ..., "std": ...}``.

    Returns:
        ``(model, config)``: the ViT in eval mode (dropout off) on the active
        backend, and the checkpoint's config dict.

    Raises:
        FileNotFoundError: no such file (the message says how to make one).
        ValueError: the checkpoint has no model config (not from the trainer).
    """
    from minivit.checkpoint import load_checkpoint
    from minivit.vit import ViT

    path = os.fspath(checkpoint_path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"checkpoint {path!r} not found; train a model first with "
            f"`{TRAIN_HINT}` (it writes runs/mnist/best.npz), or pass the path "
            "of an existing checkpoint with --checkpoint"
        )
    ckpt = load_checkpoint(path)
    config = ckpt["config"] or {}
    if not isinstance(config.get("model"), dict):
        raise ValueError(
            f"checkpoint {path!r} has no model configuration (config['model']); "
            f"it was not written by the trainer. Train one with `{TRAIN_HINT}`"
        )
    model = ViT(**config["model"])
    model.load_state_dict(ckpt["model"])
    return model.eval(), config


def predict_probs(model, x, batch_size: int = 256) -> np.ndarray:
    """Class probabilities for normalised images, computed in batches.

    Args:
        x: float (B, C, H, W), already normalised like the training data.

    Returns:
        float64 (B, K) host array; each row sums to 1. After the call the
        model's ``attn_probs`` belong to the *last* batch only.
    """
    out = []
    for start in range(0, len(x), batch_size):
        with no_grad():                           # attn_probs are still kept
            logits = backend.to_numpy(model.forward(x[start:start + batch_size]))
        logits = logits.astype(np.float64)
        logits -= logits.max(axis=1, keepdims=True)   # stable softmax
        p = np.exp(logits)
        out.append(p / p.sum(axis=1, keepdims=True))
    return np.concatenate(out) if out else np.zeros((0, model.config["num_classes"]))


# --------------------------------------------------------------------------
# Attention maps
# --------------------------------------------------------------------------
def _attn_probs(model) -> list[np.ndarray]:
    """Every block's stored attention, host-side: list of (B, H, Q, T), Q = T
    except in the last block of a ``pool="cls"`` model (Q = 1)."""
    probs = [block.attn.attn_probs for block in model.blocks]
    if any(p is None for p in probs):
        raise RuntimeError(
            "the model has no stored attention yet: run model.forward(x) on a batch "
            "first (each attention layer keeps attn_probs of its last forward)"
        )
    return [backend.to_numpy(p).astype(np.float64) for p in probs]


def _to_grid(patch_values: np.ndarray, model) -> np.ndarray:
    """(..., N) values over patch tokens -> (..., grid, grid), row-major like the patches."""
    g = model.patch_embed.grid_size
    return patch_values.reshape(*patch_values.shape[:-1], g, g)


def cls_attention(model) -> np.ndarray:
    """The last layer's attention from CLS to each patch, per head.

    Returns:
        float64 (B, heads, grid, grid): ``attn_probs[:, :, 0, 1:]`` of the
        last block. Each head's map plus its CLS-to-CLS weight
        ``attn_probs[:, h, 0, 0]`` sums to 1 (a softmax row).

    The last layer is where the CLS token gathers what the classifier head
    reads (with ``pool="cls"``), so these maps show what each head looked at
    for the final decision - but only one hop back: earlier layers have
    already mixed the patch tokens. :func:`attention_rollout` follows all hops.
    """
    last = _attn_probs(model)[-1]                    # (B, H, Q, T), CLS first
    return _to_grid(last[:, :, 0, 1:], model)        # CLS row, patch columns


def attention_rollout(model) -> np.ndarray:
    """Attention rollout (Abnar & Zuidema, 2020): how much each patch flows into CLS.

    For each layer l, with A_l (B, H, T, T) its attention probabilities (the
    last layer of a ``pool="cls"`` model keeps only its CLS row, (B, H, 1, T),
    which is all that row 0 of R needs)::

        M_l = mean_heads(A_l) + I          # residual connection: a token keeps itself
        M_l = M_l / M_l.sum(-1)            # rows are again distributions
        R   = M_L @ ... @ M_2 @ M_1        # compose the layers, first to last

    Row 0 of R is how the final CLS token draws on the input tokens; its
    patch columns are returned.

    Returns:
        float64 (B, grid, grid), non-negative; together with the CLS-to-CLS
        entry ``R[:, 0, 0]`` a map sums to 1 (a product of row-stochastic
        matrices is row-stochastic), so plots usually rescale it to its max.

    With ``pool="mean"`` the head reads the patch tokens, not CLS, so the CLS
    row is then only a proxy for what the classifier used.
    """
    rollout = None
    for attn in _attn_probs(model):                  # first to last layer
        m = attn.mean(axis=1)                        # (B, Q, T), heads averaged
        m = m + np.eye(*m.shape[-2:])                # broadcast over the batch
        m /= m.sum(axis=-1, keepdims=True)
        # later layers act on the result of earlier ones: multiply on the left
        rollout = m if rollout is None else m @ rollout   # batched matmul (B, T, T)
    return _to_grid(rollout[:, 0, 1:], model)


# --------------------------------------------------------------------------
# Position embeddings
# --------------------------------------------------------------------------
def pos_embed_similarity(model, as_grid: bool = True) -> np.ndarray:
    """Cosine similarity between the position embeddings of every pair of patches.

    Args:
        as_grid: reshape for plotting (the default), else return (N, N).

    Returns:
        float64 (grid, grid, grid, grid): ``sim[r, c]`` is the (grid, grid)
        map of how similar patch (r, c)'s embedding is to every patch's; or
        (N, N) with ``as_grid=False``, symmetric with ones on the diagonal.

    The CLS slot (index 0) is left out: it has no place in the image. A
    learned embedding that has discovered the 2-D layout shows a bright blob
    around (r, c) in ``sim[r, c]`` (Figure 7 of the ViT paper).
    """
    pos = backend.to_numpy(model.pos_embed.data)[0, 1:].astype(np.float64)  # (N, D)
    norms = np.linalg.norm(pos, axis=1, keepdims=True)
    unit = pos / np.maximum(norms, 1e-12)            # guard an all-zero row
    sim = unit @ unit.T                              # (N, N)
    sim = np.clip(sim, -1.0, 1.0)                    # rounding can overshoot 1
    if not as_grid:
        return sim
    g = model.patch_embed.grid_size
    return sim.reshape(g, g, g, g)


# --------------------------------------------------------------------------
# Resizing maps to the image
# --------------------------------------------------------------------------
def upsample(maps, size, mode: str = "bilinear") -> np.ndarray:
    """Resize (..., h, w) maps to (..., H, W) to lay them over an image.

    Args:
        maps: array (..., h, w), e.g. (B, heads, grid, grid).
        size: ``H`` (square) or ``(H, W)``.
        mode: ``"nearest"`` (blocky: one tile per patch, honest about the
            resolution) or ``"bilinear"`` (smooth).

    Both treat each map value as the centre of its cell (like PyTorch's
    ``interpolate(..., align_corners=False)``), so patch (i, j) lands on the
    pixels it was cut from when the patches tile the image.
    """
    maps = np.asarray(maps, dtype=np.float64)
    H, W = (size, size) if np.isscalar(size) else tuple(size)
    h, w = maps.shape[-2:]

    if mode == "nearest":
        rows = np.minimum((np.arange(H) * h) // H, h - 1)
        cols = np.minimum((np.arange(W) * w) // W, w - 1)
        return maps[..., rows[:, None], cols[None, :]]
    if mode != "bilinear":
        raise ValueError(f"upsample mode must be 'nearest' or 'bilinear', got {mode!r}")

    def coords(n_out, n_in):
        # output pixel centre -> input coordinate, clamped at the borders
        src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        i0 = np.floor(src).astype(np.intp)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, src - i0

    y0, y1, wy = coords(H, h)
    x0, x1, wx = coords(W, w)
    wy, wx = wy[:, None], wx[None, :]
    top = maps[..., y0[:, None], x0[None, :]] * (1 - wx) + maps[..., y0[:, None], x1[None, :]] * wx
    bot = maps[..., y1[:, None], x0[None, :]] * (1 - wx) + maps[..., y1[:, None], x1[None, :]] * wx
    return top * (1 - wy) + bot * wy


# --------------------------------------------------------------------------
# Plotting
# --------------------------------------------------------------------------
def _figure(**kwargs):
    """A matplotlib Figure without pyplot: no GUI backend, no global state."""
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(
            "plotting needs matplotlib: `pip install matplotlib` "
            "(or `pip install minivit[plot]`)"
        ) from exc
    return Figure(**kwargs)


def save_figure(fig, path) -> str:
    """Write ``fig`` as a PNG atomically (temp file + rename); returns the path."""
    return atomic_save_figure(fig, path, dpi=fig.dpi, bbox_inches="tight")


def _display_image(img) -> tuple[np.ndarray, str | None]:
    """(C, H, W) or (H, W) image of any scale -> (H, W[, 3]) in [0, 1] and a cmap."""
    img = np.asarray(backend.to_numpy(img), dtype=np.float64)
    if img.ndim == 3 and img.shape[0] == 1:
        img = img[0]
    elif img.ndim == 3:
        img = img.transpose(1, 2, 0)                 # RGB: channels last for imshow
    lo, hi = img.min(), img.max()
    img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    return img, ("gray" if img.ndim == 2 else None)


def _unit_max(m: np.ndarray) -> np.ndarray:
    """Scale a non-negative map to max 1, so weak heads stay visible."""
    top = m.max()
    return m / top if top > 0 else m


def plot_attention(images, cls_attn, rollout, path, labels=None, preds=None,
                   class_names=None, alpha: float = 0.6, mode: str = "bilinear") -> str:
    """One row per image: the image, each head's CLS attention, the rollout.

    Args:
        images: (B, C, H, W) or (B, H, W), raw or normalised (each is
            rescaled to [0, 1] for display).
        cls_attn: (B, heads, grid, grid) from :func:`cls_attention`.
        rollout: (B, grid, grid) from :func:`attention_rollout`.
        path: PNG file to write (atomically).
        labels, preds: optional (B,) true and predicted classes for the
            row titles; ``class_names`` maps them to names.
        alpha: opacity of the heat map over the image.
        mode: upsampling of the grid to the image, see :func:`upsample`.

    Every map is scaled to its own maximum: the plot compares *where* each
    head looks, not how strongly (the per-head maxima are in the titles).

    Returns:
        ``path``.
    """
    images = np.asarray(backend.to_numpy(images))
    cls_attn = np.asarray(cls_attn)
    rollout = np.asarray(rollout)
    if images.ndim == 3:
        images = images[:, None]
    B, heads = cls_attn.shape[:2]
    if len(images) != B or len(rollout) != B:
        raise ValueError(f"images ({len(images)}), cls_attn ({B}) and rollout "
                         f"({len(rollout)}) must hold the same number of images")
    size = images.shape[-2:]
    head_maps = upsample(cls_attn, size, mode)       # (B, heads, H, W)
    roll_maps = upsample(rollout, size, mode)        # (B, H, W)

    def name(k):
        return str(class_names[int(k)]) if class_names is not None else str(int(k))

    ncols = heads + 2
    fig = _figure(figsize=(1.6 * ncols, 1.7 * B + 0.4), dpi=100)
    axes = fig.subplots(B, ncols, squeeze=False)
    for i in range(B):
        img, cmap = _display_image(images[i])
        panels = [(None, "image")]
        panels += [(head_maps[i, h], f"head {h + 1}\nmax {cls_attn[i, h].max():.2f}")
                   for h in range(heads)]
        panels += [(roll_maps[i], f"rollout\nmax {rollout[i].max():.2f}")]
        for j, (heat, title) in enumerate(panels):
            ax = axes[i, j]
            ax.imshow(img, cmap=cmap, vmin=0, vmax=1)
            if heat is not None:
                ax.imshow(_unit_max(heat), cmap="inferno", vmin=0, vmax=1, alpha=alpha)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(title, fontsize=8)
        row = []
        if labels is not None:
            row.append(f"label {name(labels[i])}")
        if preds is not None:
            row.append(f"pred {name(preds[i])}")
        if row:
            ax = axes[i, 0]
            ok = labels is None or preds is None or int(labels[i]) == int(preds[i])
            ax.set_ylabel("\n".join(row), fontsize=8, color="black" if ok else "red")
    fig.suptitle("Last-layer CLS attention per head, and attention rollout", fontsize=10)
    return save_figure(fig, path)


def plot_pos_embed_similarity(sim, path, title: str | None = None) -> str:
    """Grid of small heat maps: tile (r, c) is ``sim[r, c]`` (ViT paper, Figure 7).

    Args:
        sim: (grid, grid, grid, grid) from :func:`pos_embed_similarity`, or (N, N).
        path: PNG file to write (atomically).

    The tiles are drawn as one mosaic image with blank gutters between them:
    it looks like grid x grid little plots but draws much faster than that
    many matplotlib axes (196 of them for patch 2 on 28 x 28).

    Returns:
        ``path``.
    """
    sim = np.asarray(sim, dtype=np.float64)
    if sim.ndim == 2:
        g = int(round(np.sqrt(sim.shape[0])))
        if g * g != sim.shape[0] or sim.shape[0] != sim.shape[1]:
            raise ValueError(f"an (N, N) similarity needs N = grid**2, got shape {sim.shape}")
        sim = sim.reshape(g, g, g, g)
    if sim.ndim != 4:
        raise ValueError(f"sim must be (grid, grid, grid, grid) or (N, N), got {sim.shape}")
    g = sim.shape[0]
    step = g + 1                                     # one tile plus a one-cell gutter
    mosaic = np.full((g * step - 1, g * step - 1), np.nan)   # NaN = gutter, left blank
    for r in range(g):
        for c in range(g):
            mosaic[r * step:r * step + g, c * step:c * step + g] = sim[r, c]

    fig = _figure(figsize=(6.4, 5.6), dpi=100)
    ax = fig.subplots()
    im = ax.imshow(mosaic, cmap="viridis", vmin=-1, vmax=1, interpolation="nearest")
    centres = np.arange(g) * step + (g - 1) / 2
    ax.set_xticks(centres, [str(c + 1) for c in range(g)])
    ax.set_yticks(centres, [str(r + 1) for r in range(g)])
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_xlabel("Input patch column")
    ax.set_ylabel("Input patch row")
    ax.set_title(title or "Position embedding similarity", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="Cosine similarity")
    return save_figure(fig, path)
