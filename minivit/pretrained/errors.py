"""The one error of :mod:`minivit.pretrained`."""


class WeightsError(ValueError):
    """A weights file that cannot be used: unreadable, not a ViT, or not
    matching the model (the message lists every problem)."""
