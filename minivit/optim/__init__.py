"""Optimizers, gradient clipping and the learning-rate schedule.

Everything here follows PyTorch's definitions exactly (checked against
``torch.optim`` in ``tests/test_optim.py``), written once against the array
module ``backend.xp`` so it runs on NumPy or CuPy arrays alike.

=============================  =================================================
module                         what it holds
=============================  =================================================
:mod:`minivit.optim.base`      :class:`Optimizer`: param groups, lr,
                               ``step``/``zero_grad``, save/load entry points
:mod:`minivit.optim.state`     the flat ``state_dict`` layout: building it,
                               checking a saved one and restoring it
:mod:`minivit.optim.params`    reading ``params`` arguments, weight-decay groups
:mod:`minivit.optim.sgd`       :class:`SGD`
:mod:`minivit.optim.adamw`     :class:`AdamW`
:mod:`minivit.optim.clip`      :func:`clip_grad_norm_`
:mod:`minivit.optim.schedule`  :class:`WarmupCosine`
=============================  =================================================

Conventions:

* updates happen IN PLACE on ``Parameter.data`` (the model keeps pointing at
  the same arrays) with in-place ops / ``out=``, so an update allocates at
  most one or two temporaries the size of the parameter;
* optimizer state (momentum, Adam moments) has the parameter's dtype: float32
  training stays float32; hyperparameters are plain Python floats, which
  NumPy/CuPy treat as "weak" scalars that never upcast an array;
* ``params`` may be ``model.named_parameters()`` (recommended: the state is
  then saved under timm names), a list of Parameters, or a list of
  param-group dicts ``{"params": [...], "weight_decay": 0.0, "lr": ...}``.
  Parameters with ``requires_grad=False`` are skipped.

Typical use::

    groups = param_groups_weight_decay(model.named_parameters(), 0.05)
    opt = AdamW(groups, lr=1e-3)
    sched = WarmupCosine(1e-3, warmup_steps=500, total_steps=10_000)
    for step in range(10_000):
        sched.apply(opt, step)
        ...forward / backward...
        clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
"""

from minivit.optim.adamw import AdamW
from minivit.optim.base import Optimizer
from minivit.optim.clip import clip_grad_norm_
from minivit.optim.params import DEFAULT_NO_DECAY, param_groups_weight_decay
from minivit.optim.schedule import WarmupCosine
from minivit.optim.sgd import SGD

# helpers that were module-level names of the single-file minivit.optim
from minivit.optim.params import _iter_params, _named  # noqa: F401
from minivit.optim.state import _as_hyper, _host_copy  # noqa: F401

__all__ = [
    "Optimizer",
    "SGD",
    "AdamW",
    "param_groups_weight_decay",
    "clip_grad_norm_",
    "WarmupCosine",
]
