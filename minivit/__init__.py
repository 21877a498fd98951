"""minivit: a Vision Transformer written from scratch, every gradient proven."""

from minivit import backend
from minivit.module import Module, ModuleList, Parameter

__version__ = "0.1.0"

__all__ = ["backend", "Module", "ModuleList", "Parameter", "__version__"]
