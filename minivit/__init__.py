"""minivit: a Vision Transformer written from scratch, every gradient proven.

Start with :class:`minivit.vit.ViT`, the layers in :mod:`minivit.layers`,
the loss in :mod:`minivit.loss` and the checker in :mod:`minivit.gradcheck`.
"""

from minivit import backend, memory
from minivit.gradcheck import check_gradients, check_module
from minivit.loss import cross_entropy
from minivit.module import (Module, ModuleList, Parameter, is_grad_enabled, no_grad,
                            set_grad_enabled)
from minivit.vit import ViT

__version__ = "0.1.0"

# NumPy's fresh arrays each step: keep freed memory for reuse (see minivit.memory).
memory.keep_unless_disabled()

__all__ = ["backend", "Module", "ModuleList", "Parameter", "ViT", "check_gradients",
           "check_module", "cross_entropy", "is_grad_enabled", "no_grad", "set_grad_enabled",
           "__version__"]
