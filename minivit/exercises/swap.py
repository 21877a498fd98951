"""Your layer in a real model: a learner's forward/backward in place of the library's::

    from minivit.exercises import use_exercise
    with use_exercise(model, "layernorm", "minivit_exercises/layernorm.py"):
        trainer.fit()            # every LayerNorm of the model runs your code

or, on the command line, ``python examples/train_mnist.py --use-exercise
layernorm=minivit_exercises/layernorm.py``. Every layer of the exercise's kind
(``Exercise.swap``) gets the learner's functions as its instance's ``forward``
and ``backward`` (the class is untouched; ``restore`` or the end of the
``with`` puts the library's back). The learner's code is plain NumPy: on
another backend the arrays are copied to the host and back.
"""

from __future__ import annotations

import numpy

from minivit import backend
from minivit.exercises.catalog import check, get
from minivit.exercises.loader import ExerciseError, load_file
from minivit.module import is_grad_enabled


def _host(a):
    return backend.to_numpy(a) if backend.name != "numpy" else a


def _device(a, like):
    a = numpy.asarray(a)
    if backend.name != "numpy":
        return backend.to_device(a, like.dtype)
    return a.astype(like.dtype, copy=False)


def _keep(m, cache):
    object.__setattr__(m, "cache", cache if is_grad_enabled() else None)


def _params_pair(learner, params_of, consts_of, names):
    """forward/backward for a layer whose learner functions take (x, *params, *consts)."""

    def make(m):
        def forward(x, *rest):
            params = params_of(m)
            y, cache = learner.forward(_host(x), *(_host(p) for p in params), *consts_of(m))
            _keep(m, cache)
            return _device(y, x)

        def backward(dout, input_grad=True):      # the learner's code computes dx always
            params = params_of(m)
            grads = {n: numpy.zeros(p.shape, dtype=_host(p).dtype)
                     for n, p in zip(names, params)}
            dx = learner.backward(_host(dout), m._saved(), grads)
            for n, param in zip(names, _param_objects(m)):
                if param is not None:
                    param.grad += _device(grads[n], param.data)
            return _device(dx, dout)
        return forward, backward
    return make


def _param_objects(m):
    from minivit.layers import LayerNorm, Linear, MultiHeadSelfAttention, PatchEmbed
    if isinstance(m, Linear):
        return (m.weight, m.bias)
    if isinstance(m, LayerNorm):
        return (m.weight, m.bias)
    if isinstance(m, PatchEmbed):
        return (m.proj.weight, m.proj.bias)
    if isinstance(m, MultiHeadSelfAttention):
        return (m.qkv.weight, m.qkv.bias, m.proj.weight, m.proj.bias)
    return ()


def _data_or_zeros(param, size):
    return param.data if param is not None else backend.xp.zeros(size)


def _attention(learner):
    base = _params_pair(
        learner,
        lambda m: (m.qkv.weight.data, _data_or_zeros(m.qkv.bias, 3 * m.dim),
                   m.proj.weight.data, m.proj.bias.data),
        lambda m: (m.heads,), ("Wqkv", "bqkv", "Wproj", "bproj"))

    def make(m):
        if (m.attn_drop.p or m.proj_drop.p) and m.training:
            raise ExerciseError("the attention exercise has no dropout; build the model "
                                "with dropout=0 and attn_dropout=0", "swap")
        forward, backward = base(m)
        state = {}

        def forward_q(x, num_queries=None):
            y = forward(x)
            state["T"] = x.shape[1]
            object.__setattr__(m, "attn_probs", _probs(m.cache, x.shape, m.heads,
                                                       num_queries))
            return y if num_queries is None else y[:, :num_queries].copy()

        def backward_q(dout):
            return backward(_pad(dout, state["T"]))
        return forward_q, backward_q
    return make


def _probs(cache, x_shape, heads, num_queries):
    """The attention probabilities (for visualisation), if the learner's cache
    kept the starter's layout (a at index 4); else None."""
    B, T, _ = x_shape
    a = cache[4] if isinstance(cache, tuple) and len(cache) > 4 else None
    if getattr(a, "shape", None) != (B, heads, T, T):
        return None
    a = a if num_queries is None else a[:, :, :num_queries]
    return backend.to_device(a, a.dtype) if backend.name != "numpy" else a


def _pad(dout, T):
    """The gradient of all T outputs when only the first Q were used."""
    if dout.shape[1] == T:
        return dout
    full = backend.xp.zeros((dout.shape[0], T, *dout.shape[2:]), dtype=dout.dtype)
    full[:, :dout.shape[1]] = dout
    return full


def _gelu(learner):
    def make(m):
        if m.approximate != "tanh":
            raise ExerciseError("the GELU exercise is the tanh form; this model uses "
                                f"approximate={m.approximate!r}", "swap")

        def forward(x):
            y, cache = learner.forward(_host(x))
            _keep(m, cache)
            return _device(y, x)

        def backward(dout):
            return _device(learner.backward(_host(dout), m._saved()), dout)
        return forward, backward
    return make


def _block(learner):
    def make(m):
        state = {}

        def forward(x, num_queries=None):
            y, cache = learner.forward(x, m)
            _keep(m, cache)
            state["T"] = x.shape[1]
            return y if num_queries is None else y[:, :num_queries].copy()

        def backward(dout):
            return learner.backward(_pad(dout, state["T"]), m._saved())
        return forward, backward
    return make


def _vit(learner):
    def make(m):
        c = m.config
        if c["pool"] != "cls" or c["pos_embed"] != "learned" or c["pre_logits"] \
                or (c["dropout"] and m.training):
            raise ExerciseError("the ViT exercise is the class-token ViT with a learned "
                                "position embedding, no pre-logits layer and no dropout; "
                                "this model differs", "swap")

        def forward(x):
            y, cache = learner.forward(m._prepare_input(x), m)
            _keep(m, cache)
            return y

        def backward(dlogits, input_grad=True):   # the learner's code computes dx always
            return learner.backward(dlogits, m._saved())
        return forward, backward
    return make


def _makers(name, learner):
    if name == "linear":
        return _params_pair(learner, lambda m: (m.weight.data, _data_or_zeros(
            m.bias, m.out_features)), lambda m: (), ("W", "b"))
    if name == "layernorm":
        return _params_pair(learner, lambda m: (m.weight.data, m.bias.data),
                            lambda m: (m.eps,), ("gamma", "beta"))
    if name == "patch_embed":
        return _params_pair(learner, lambda m: (m.proj.weight.data, m.proj.bias.data),
                            lambda m: (m.stride,), ("W", "b"))
    return {"gelu": _gelu, "attention": _attention, "block": _block, "vit": _vit}[name](learner)


class use_exercise:
    """Swap the learner's ``forward``/``backward`` (from ``path``) into every
    layer of the exercise's kind in ``model``; a context manager, or call
    :meth:`restore`. ``verify`` (default) grades the file first and refuses
    one that does not pass. ``count`` is the number of layers swapped."""

    def __init__(self, model, name, path, verify: bool = True):
        ex = get(name)
        if not ex.swap:
            raise ExerciseError(f"the {ex.name} exercise is graded on its own and has no "
                                "layer to swap into a model (attention contains softmax, "
                                "the trainer the loss)", "swap")
        if backend.name != "numpy" and ex.kind == "modules":
            raise ExerciseError(f"the {ex.name} exercise runs on NumPy only: set "
                                "MINIVIT_BACKEND=numpy", "swap")
        learner = load_file(path, name=ex.name)
        if verify:
            result = check(ex.name, path, hint=1, record=False)
            if not result.passed:
                raise ExerciseError(f"{path} does not pass the {ex.name} check yet, so it "
                                    f"is not put into the model:\n{result.text}", "swap")
        make = _makers(ex.name, learner)
        targets = [m for _, m in model.named_modules() if type(m).__name__ == ex.swap]
        if not targets:
            raise ExerciseError(f"the model has no {ex.swap} layer to swap", "swap")
        pairs = [make(m) for m in targets]          # every refusal before any change
        self._swapped = []
        for m, (forward, backward) in zip(targets, pairs):
            object.__setattr__(m, "forward", forward)
            object.__setattr__(m, "backward", backward)
            self._swapped.append(m)
        self.exercise, self.path, self.count = ex.name, path, len(targets)

    def restore(self) -> None:
        """Put the library's forward and backward back."""
        for m in self._swapped:
            for attr in ("forward", "backward"):
                m.__dict__.pop(attr, None)
        self._swapped = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.restore()
        return False


def use_exercises(model, specs, say=print) -> list:
    """The command line's ``--use-exercise NAME=FILE`` (any number of them):
    swap each into ``model``; a problem exits with its message."""
    swapped = []
    for spec in specs or ():
        name, sep, path = spec.partition("=")
        try:
            if not sep or not path:
                raise ExerciseError(f"--use-exercise expects NAME=FILE, e.g. "
                                    f"layernorm=minivit_exercises/layernorm.py; got {spec!r}")
            handle = use_exercise(model, name.strip(), path.strip())
        except ExerciseError as exc:
            raise SystemExit(f"error: --use-exercise {spec}: {exc}") from None
        say(f"your {handle.exercise} from {path} runs in {handle.count} layer(s) "
            "of the model")
        swapped.append(handle)
    return swapped
