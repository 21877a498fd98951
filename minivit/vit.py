"""The Vision Transformer: patches -> tokens -> transformer blocks -> class logits.

Forward                                           Backward (given dlogits)
  t = patch_embed(x)              (B, N, D)         dx = patch_embed.backward(dt)
  z = concat(cls_token, t)        (B, N+1, D)       dcls += sum_B dz[:, :1];  dt = dz[:, 1:]
  z = z + pos_embed                                 dpos += sum_B dz   (if learned)
  z = pos_drop(z)                                   dz -> pos_drop.backward
  z = blocks(z)                                     dz -> blocks in reverse order
      (pool "cls": the last block computes the
       class token only, z (B, 1, D))
  z = norm(z)          (not for pool "avg")         dz = norm.backward(dzn)
  f = z[:, 0]  or  mean(z[:, 1:])  (B, D)           dzn[:, 0] = df  or  dzn[:, 1:] = df / N
  f = fc_norm(f)       (pool "avg" only)            df = fc_norm.backward(df)
  f = tanh(pre_logits.fc(f))   (optional, (B, R))   df = pre_logits.backward(df)
  logits = head(f)                (B, K)            df = head.backward(dlogits)

Pooling, with timm's names: "cls" is timm's global_pool="token"; "mean" the
mean of the normed patch tokens (global_pool="avg", fc_norm=False); "avg"
timm's default for global_pool="avg": the mean of the patch tokens, then a
LayerNorm ``fc_norm`` (and no ``norm`` on the tokens).

With pool "cls" nothing reads the last block's patch-token outputs, so that
block computes its class token's output alone (``Block(num_queries=1)``: its
attention's query, projection, MLP and norms on one row per image instead of
N+1; keys and values still come from every token). Logits and gradients are
those of the full computation; about 1/depth of the work is saved, and that
block's ``attn_probs`` has the class token's row only (B, heads, 1, N+1).
"""

from __future__ import annotations

import numpy

from minivit import backend, init
from minivit.layers import Block, Dropout, LayerNorm, Linear, PatchEmbed, Tanh
from minivit.module import Module, ModuleList, Parameter

POOLS = ("cls", "mean", "avg")
POS_EMBEDS = ("learned", "sincos")
GELUS = ("tanh", "exact")


class PreLogits(Module):
    """Dense + tanh between the pooled features and the head (Google's
    ImageNet-21k checkpoints). Shapes: (B, D) -> (B, R). Names: ``fc``, ``act``."""

    def __init__(self, dim: int, size: int):
        super().__init__()
        self.fc = Linear(dim, size)
        self.act = Tanh()

    def forward(self, x):
        self._keep(True)
        return self.act.forward(self.fc.forward(x))

    def backward(self, dout):
        self._saved()
        return self.fc.backward(self.act.backward(dout))


class ViT(Module):
    """Vision Transformer (Dosovitskiy et al., 2021) with timm's names and layouts.

    Shapes: images (B, C, H, W) -> logits (B, num_classes).

    Input dtype: floating-point input is cast to the model's dtype (float32
    by default); integer or boolean input (e.g. raw uint8 pixels) is refused
    with a TypeError, since it must be normalised first.

    ``state_dict()`` keys: ``cls_token`` (1,1,D), ``pos_embed`` (1,N+1,D),
    ``patch_embed.proj.weight`` (D,C,P,P), ``patch_embed.proj.bias``,
    ``blocks.{i}.norm1.*``, ``blocks.{i}.attn.qkv.*`` (3D,D), ``blocks.{i}.attn.proj.*``,
    ``blocks.{i}.norm2.*``, ``blocks.{i}.mlp.fc1.*`` (M,D), ``blocks.{i}.mlp.fc2.*``,
    ``norm.*`` (or ``fc_norm.*`` with pool "avg"), optional ``pre_logits.fc.*``
    (R,D), ``head.*`` (K,D) or (K,R).

    Options of pretrained models: ``gelu`` "tanh" (default) or "exact" (erf,
    as timm and Google); ``norm_eps`` of every LayerNorm (1e-6 as timm's ViTs);
    ``qkv_bias``; ``pool`` (see the module docstring); ``pre_logits`` the
    width R of a Dense + tanh layer before the head, or None.
    """

    def __init__(self, image_size: int = 28, patch_size: int = 7, in_channels: int = 1,
                 num_classes: int = 10, dim: int = 64, depth: int = 6, heads: int = 4,
                 mlp_dim: int = 128, dropout: float = 0.0, attn_dropout: float = 0.0,
                 pool: str = "cls", pos_embed: str = "learned", seed: int | None = None,
                 stride: int | None = None, gelu: str = "tanh", norm_eps: float = 1e-6,
                 qkv_bias: bool = True, pre_logits: int | None = None):
        super().__init__()
        _check_config(image_size=image_size, patch_size=patch_size, in_channels=in_channels,
                      num_classes=num_classes, dim=dim, depth=depth, heads=heads,
                      mlp_dim=mlp_dim, pool=pool, pos_embed=pos_embed, gelu=gelu,
                      norm_eps=norm_eps, pre_logits=pre_logits)
        self.config = dict(image_size=image_size, patch_size=patch_size,
                           in_channels=in_channels, num_classes=num_classes, dim=dim,
                           depth=depth, heads=heads, mlp_dim=mlp_dim, dropout=dropout,
                           attn_dropout=attn_dropout, pool=pool, pos_embed=pos_embed,
                           stride=stride, gelu=gelu, norm_eps=float(norm_eps),
                           qkv_bias=bool(qkv_bias), pre_logits=pre_logits)
        if seed is not None:
            backend.seed(seed)
        self.pool, self.pos_embed_kind = pool, pos_embed
        self.patch_embed = PatchEmbed(image_size, patch_size, in_channels, dim, stride=stride)
        num_tokens = self.patch_embed.num_patches + 1
        self.cls_token = Parameter(init.normal((1, 1, dim), std=1e-6))
        if pos_embed == "learned":
            self.pos_embed = Parameter(init.trunc_normal((1, num_tokens, dim), std=0.02))
        else:
            grid = self.patch_embed.grid_size
            table = init.sincos_pos_embed_2d(dim, grid, grid)
            self.pos_embed = Parameter(backend.to_device(table, backend.default_dtype()),
                                       requires_grad=False)
        self.pos_drop = Dropout(dropout)
        self.blocks = ModuleList(
            Block(dim, heads, mlp_dim, dropout=dropout, attn_dropout=attn_dropout,
                  eps=norm_eps, qkv_bias=qkv_bias, gelu=gelu)
            for _ in range(depth)
        )
        if pool == "avg":
            self.fc_norm = LayerNorm(dim, eps=norm_eps)     # after pooling, as timm
        else:
            self.norm = LayerNorm(dim, eps=norm_eps)
        if pre_logits:
            self.pre_logits = PreLogits(dim, pre_logits)
        self.head = Linear(pre_logits or dim, num_classes)

    @property
    def dtype(self):
        return self.cls_token.data.dtype

    def forward(self, x):
        xp = backend.xp
        x = self._prepare_input(x)
        B = x.shape[0]
        tokens = self.patch_embed.forward(x)                           # (B, N, D)
        D = tokens.shape[-1]
        cls = xp.broadcast_to(self.cls_token.data, (B, 1, D))
        z = xp.concatenate((cls, tokens), axis=1)                      # (B, N+1, D)
        z += self.pos_embed.data
        z = self.pos_drop.forward(z)
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            # pool "cls" reads one token of the last block: compute only that one
            z = block.forward(z, num_queries=1 if i == last and self.pool == "cls" else None)
        if self.pool != "avg":
            z = self.norm.forward(z)
        pooled = z[:, 0] if self.pool == "cls" else z[:, 1:].mean(axis=1)  # (B, D)
        if self.pool == "avg":
            pooled = self.fc_norm.forward(pooled)
        if self.config["pre_logits"]:
            pooled = self.pre_logits.forward(pooled)                   # (B, R)
        self._keep(z.shape)
        return self.head.forward(pooled)                               # (B, K)

    def backward(self, dlogits, input_grad=True):
        """dlogits (B, K) -> the images' gradient (B, C, H, W), filling every
        parameter's ``.grad``; with ``input_grad=False`` (a training step) the
        images' gradient is not computed and None is returned."""
        xp = backend.xp
        z_shape = self._saved()
        dpooled = self.head.backward(dlogits)                          # (B, D) or (B, R)
        if self.config["pre_logits"]:
            dpooled = self.pre_logits.backward(dpooled)                # (B, D)
        if self.pool == "avg":
            dpooled = self.fc_norm.backward(dpooled)
        dz = xp.zeros(z_shape, dtype=dpooled.dtype)      # (B, N+1, D); pool "cls": (B, 1, D)
        if self.pool == "cls":
            dz[:, 0] = dpooled                   # only the CLS token was read
        else:
            dz[:, 1:] = (dpooled / (z_shape[1] - 1))[:, None, :]   # mean spreads evenly
        if self.pool != "avg":
            dz = self.norm.backward(dz)
        for block in reversed(list(self.blocks)):
            dz = block.backward(dz)
        dz = self.pos_drop.backward(dz)
        if self.pos_embed.requires_grad:
            self.pos_embed.grad += dz.sum(axis=0, keepdims=True)       # broadcast over B
        self.cls_token.grad += dz[:, :1].sum(axis=0, keepdims=True)    # broadcast over B
        return self.patch_embed.backward(dz[:, 1:], input_grad=input_grad)  # (B, C, H, W)

    def _prepare_input(self, x):
        if not backend.is_array(x):
            x = numpy.asarray(x)                   # lists, or arrays of other libraries
        if x.dtype.kind != "f":
            raise TypeError(
                f"ViT expects floating-point images, got dtype {x.dtype}; convert and "
                "normalise first, e.g. (x.astype('float32') / 255 - 0.1307) / 0.3081"
            )
        if x.ndim != 4:
            raise ValueError(
                f"ViT expects a 4-D batch (B, C, H, W), got shape {tuple(x.shape)}; "
                "for a single grayscale image use x.reshape(1, 1, H, W)"
            )
        return backend.to_device(x, self.dtype)   # no copy when already in place

    def extra_repr(self):
        return ", ".join(f"{k}={v}" for k, v in self.config.items())


def _check_config(**cfg):
    for key in ("image_size", "patch_size", "in_channels", "num_classes", "dim", "depth",
                "heads", "mlp_dim"):
        value = cfg[key]
        if not isinstance(value, (int, numpy.integer)) or value < 1:
            raise ValueError(f"ViT config: {key} must be a positive integer, got {value!r}")
    if cfg["pool"] not in POOLS:
        raise ValueError(f"ViT config: pool must be one of {POOLS}, got {cfg['pool']!r}")
    if cfg["pos_embed"] not in POS_EMBEDS:
        raise ValueError(
            f"ViT config: pos_embed must be one of {POS_EMBEDS}, got {cfg['pos_embed']!r}")
    if cfg["gelu"] not in GELUS:
        raise ValueError(f"ViT config: gelu must be one of {GELUS}, got {cfg['gelu']!r}")
    if not (isinstance(cfg["norm_eps"], (int, float)) and cfg["norm_eps"] > 0):
        raise ValueError(f"ViT config: norm_eps must be a positive number, got "
                         f"{cfg['norm_eps']!r}")
    if cfg["pre_logits"] is not None and (
            not isinstance(cfg["pre_logits"], (int, numpy.integer)) or cfg["pre_logits"] < 0):
        raise ValueError(f"ViT config: pre_logits must be None or a positive width, got "
                         f"{cfg['pre_logits']!r}")
    if cfg["dim"] % cfg["heads"] != 0:
        raise ValueError(
            f"ViT config: dim ({cfg['dim']}) must be divisible by heads ({cfg['heads']})")
