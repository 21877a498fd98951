"""The layers, one file each, forward and backward side by side.

Each file computes the lines of the table it opens with; the same functions,
faster, are in ``minivit/kernels/`` (``MINIVIT_KERNELS=reference`` runs these
files' own lines alone).

===================  ==========================================
file                 layer
===================  ==========================================
linear.py            Linear
patch_embed.py       PatchEmbed (im2col + matmul, col2im back)
layernorm.py         LayerNorm
gelu.py              GELU (tanh approximation or exact erf)
tanh.py              Tanh (pre-logits activation)
dropout.py           Dropout (inverted)
attention.py         MultiHeadSelfAttention (fused qkv), softmax
mlp.py               MLP (fc1 -> GELU -> fc2)
block.py             Block (pre-norm transformer block)
===================  ==========================================
"""

from minivit.layers.attention import MultiHeadSelfAttention, softmax
from minivit.layers.block import Block
from minivit.layers.dropout import Dropout
from minivit.layers.gelu import GELU
from minivit.layers.layernorm import LayerNorm
from minivit.layers.linear import Linear
from minivit.layers.mlp import MLP
from minivit.layers.patch_embed import PatchEmbed
from minivit.layers.tanh import Tanh

__all__ = ["Block", "Dropout", "GELU", "LayerNorm", "Linear", "MLP",
           "MultiHeadSelfAttention", "PatchEmbed", "Tanh", "softmax"]
