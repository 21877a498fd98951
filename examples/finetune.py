"""Fine-tune a pretrained ViT on a small dataset, with a new head.

    python examples/finetune.py --weights ViT-B_16.npz --dataset cifar10
    python examples/finetune.py --weights vit_tiny.safetensors --dataset imagefolder \\
        --data-dir photos/ --image-size 224 --freeze-backbone
    python examples/finetune.py --weights ViT-S_16.npz --dataset fashion-mnist \\
        --backbone-lr-scale 0.05 --epochs 2

The training command line of ``examples/train_mnist.py`` (every flag works
here too) with fine-tuning defaults: the model comes from ``--weights``
(architecture from the file or ``--model``), its head is replaced by a
freshly initialised one for the dataset's classes, the position embedding is
resampled to the dataset's image size, and grayscale images are repeated over
RGB models' channels. An RGB image folder (``--dataset imagefolder``) for a
timm architecture is read as timm prepares evaluation images
(:class:`minivit.pretrained.preprocess.EvalTransform`: shorter side to
floor(S / 0.9) bicubic, centre crop S, the model's mean and std 0.5), the
training and the test images alike, and ``examples/predict.py`` prepares
photos for the fine-tuned checkpoint the same way; the built-in datasets
(MNIST, CIFAR-10, ...) keep their bilinear ``--image-size`` resize and their
own statistics. Layer-wise options: ``--freeze-backbone`` trains the
head only; ``--backbone-lr-scale S`` trains everything but the head at S
times the learning rate (default here 0.1).

Defaults (each overridable): 5 epochs, AdamW lr 5e-4 with half an epoch of
warm-up, weight decay 0.05, backbone lr x 0.1, output in runs/finetune-<dataset>.
"""

import sys

from minivit.cli import run

DEFAULTS = ["--epochs", "5", "--lr", "5e-4", "--warmup", "0.5", "--weight-decay", "0.05",
            "--backbone-lr-scale", "0.1"]


def finetune_argv(argv):
    """The fine-tuning defaults followed by the user's flags (later flags win)."""
    argv = list(argv)
    if not any(a == "--weights" or a.startswith("--weights=") for a in argv):
        raise SystemExit("finetune.py: error: --weights FILE is required (a .safetensors, "
                         "Google .npz, .pth or minivit checkpoint); to train from scratch "
                         "use examples/train_mnist.py")
    out = []
    if not any(a == "--out" or a.startswith("--out=") for a in argv):
        dataset = "mnist"
        for i, a in enumerate(argv):
            if a == "--dataset" and i + 1 < len(argv):
                dataset = argv[i + 1]
            elif a.startswith("--dataset="):
                dataset = a.split("=", 1)[1]
        out = ["--out", f"runs/finetune-{dataset}"]
    return DEFAULTS + out + argv


if __name__ == "__main__":
    sys.exit(run(finetune_argv(sys.argv[1:])))
