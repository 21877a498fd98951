"""Run configuration: training hyper-parameters and the named recipes (presets).

:class:`TrainConfig` holds what the training loop needs; :data:`PRESETS`
names complete recipes (model shape and training settings) that the
command line (:mod:`minivit.cli`) starts from, each flag overriding one value.
"""

from __future__ import annotations

import dataclasses

__all__ = ["TrainConfig", "OPTIMIZERS", "PRESETS", "preset_for"]

OPTIMIZERS = ("adamw", "sgd")


@dataclasses.dataclass
class TrainConfig:
    """Training hyperparameters (saved as ``config["train"]`` in checkpoints).

    Attributes:
        epochs: number of passes over the training set; fixes the schedule.
        batch_size: images per optimizer step (the last batch may be smaller).
        lr: peak learning rate, reached at the end of the warm-up.
        min_lr: learning rate the cosine decays to at the very end.
        warmup_epochs: length of the linear warm-up, in epochs (may be fractional).
        weight_decay: decoupled (AdamW) or L2 (SGD) decay of the weight
            matrices; biases, LayerNorm gains, cls_token and pos_embed get none.
        optimizer: ``"adamw"`` or ``"sgd"``.
        momentum: SGD momentum (ignored by AdamW).
        label_smoothing: target smoothing of the cross-entropy, in [0, 1).
        clip_grad: max global gradient norm, or None for no clipping.
        augment: random shifts/rotations of the training images.
        max_shift: largest shift in pixels (each axis).
        max_rotate: largest rotation in degrees.
        seed: seeds shuffling, augmentation and dropout (the model's own
            initialisation is seeded where it is built).
        eval_batch_size: batch size for evaluation (no backward: can be large).
        backbone_lr_scale: fine-tuning: the learning rate of everything but the
            head (``head.*``) is ``lr * backbone_lr_scale``; 0 freezes the
            backbone (left out of the optimizer; only the head trains).
    """

    epochs: int = 12
    batch_size: int = 128
    lr: float = 2e-3
    min_lr: float = 1e-5
    warmup_epochs: float = 1.0
    weight_decay: float = 0.05
    optimizer: str = "adamw"
    momentum: float = 0.9
    label_smoothing: float = 0.0
    clip_grad: float | None = 1.0
    augment: bool = False
    max_shift: int = 2
    max_rotate: float = 10.0
    seed: int = 0
    eval_batch_size: int = 500
    backbone_lr_scale: float = 1.0

    def __post_init__(self):
        if int(self.epochs) != self.epochs or self.epochs < 1:
            raise ValueError(f"epochs must be a positive integer, got {self.epochs!r}")
        if int(self.batch_size) != self.batch_size or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if int(self.eval_batch_size) != self.eval_batch_size or self.eval_batch_size < 1:
            raise ValueError(
                f"eval_batch_size must be a positive integer, got {self.eval_batch_size!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"min_lr must be in [0, lr={self.lr}], got {self.min_lr}")
        if not self.warmup_epochs >= 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {self.warmup_epochs}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.clip_grad is not None and not self.clip_grad > 0:
            raise ValueError(f"clip_grad must be > 0 or None, got {self.clip_grad}")
        if not 0.0 <= self.backbone_lr_scale <= 1.0:
            raise ValueError("backbone_lr_scale must be in [0, 1] (0 freezes the backbone, "
                             f"1 trains it at the head's lr), got {self.backbone_lr_scale}")
        if int(self.seed) != self.seed or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        self.epochs, self.batch_size = int(self.epochs), int(self.batch_size)
        self.eval_batch_size, self.seed = int(self.eval_batch_size), int(self.seed)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Named recipes: every key is a command-line option (its ``dest``), and these
# are the command line's only defaults (minivit/cli/options.py declares none of
# its own for them). A flag given on the command line overrides the value.
# What every recipe shares:
_SHARED = dict(
    dropout=0.0, attn_dropout=0.0, pos_embed="learned", dtype="float32",
    optimizer="adamw", min_lr=1e-5, weight_decay=0.05, momentum=0.9, clip_grad=1.0,
    batch_size=128, augment=True, seed=0, channels=3, test_fraction=0.1, backbone_lr_scale=1.0,
)
PRESETS: dict[str, dict] = {
    # The default: MNIST / Fashion-MNIST from scratch in a few CPU minutes.
    "mnist": {**_SHARED, **dict(
        patch_size=7, dim=64, depth=6, heads=4, mlp_dim=128, pool="mean",
        epochs=13, lr=3e-3, warmup=1.0, label_smoothing=0.1, max_shift=2, max_rotate=10.0,
    )},
    # The long recipe: 49 tokens of 4x4 patches, more epochs (best run on
    # 2 MPI ranks: mpirun -n 2 ..., see the README's Results).
    "mnist-long": {**_SHARED, **dict(
        patch_size=4, dim=64, depth=6, heads=4, mlp_dim=128, pool="mean",
        epochs=33, lr=3e-3, warmup=1.0, label_smoothing=0.1, max_shift=2, max_rotate=10.0,
    )},
    # CIFAR-10 (32x32 RGB): 64 tokens of 4x4 patches, as small-image ViTs use.
    "cifar10": {**_SHARED, **dict(
        patch_size=4, dim=128, depth=6, heads=4, mlp_dim=256, pool="mean",
        epochs=30, lr=1e-3, warmup=2.0, label_smoothing=0.1, max_shift=4, max_rotate=0.0,
    )},
}


def preset_for(dataset: str) -> str:
    """The preset a dataset starts from when none is named."""
    return "cifar10" if dataset == "cifar10" else "mnist"
