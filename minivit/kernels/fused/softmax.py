"""The attention softmax with its scale, and its backward, in compiled loops over the rows.

Replaces ``minivit.kernels.attention.softmax_of_score_matrices`` (with the
``scores *= scale`` before it) and the first lines of
``scores_backward_kernel``: the reference lines a = softmax(s * scale) and
ds = a * (da - sum(da * a)) of ``minivit/layers/attention.py``. Per row of T
scores its max and s * scale - max; then exp of the whole block in one loop;
then per row the sum and a product by its inverse. The backward takes
sum(da * a) in one loop and writes ds in another over the same row, in
place. Every row is shifted by its own max, as in the reference, so no row
underflows, and a NaN score makes its row NaN, as there. These run inside
``parallel_rows``'s blocks (already one block per core), so they are serial
and release the GIL.
"""

from __future__ import annotations

import numpy
from numba import njit

from minivit.kernels.fused.exp import exp

_REDUCE = {"reassoc", "contract"}


# The row max may assume no NaN (so that it vectorises): a NaN score, or an
# inf (inf - inf), makes its exp NaN and with it the row's sum, so the whole
# row is NaN as in the reference, whatever the max was.
@njit(cache=True, error_model="numpy", nogil=True, inline="always",
      fastmath={"nnan", "nsz", "reassoc"})
def _row_max(scores, i, scale):
    top = scores[i, 0] * scale
    for j in range(1, scores.shape[1]):
        top = max(top, scores[i, j] * scale)
    return top


@njit(cache=True, error_model="numpy", nogil=True, fastmath=_REDUCE)
def _softmax_rows(scores, out, scale):
    R, T = scores.shape
    t = scores.dtype.type
    for i in range(R):
        top = _row_max(scores, i, scale)
        for j in range(T):
            out[i, j] = scores[i, j] * scale - top
    # exp over the whole block in one loop: row by row, a short row would
    # leave an exp outside the SIMD registers at the end of every row
    shifted = out.reshape(-1)
    for k in range(shifted.shape[0]):
        shifted[k] = exp(shifted[k])
    for i in range(R):
        total = t(0.0)
        for j in range(T):
            total += out[i, j]
        inv = t(1.0) / total
        for j in range(T):
            out[i, j] = out[i, j] * inv


@njit(cache=True, error_model="numpy", nogil=True, fastmath=_REDUCE)
def _softmax_backward_rows(dattn, attn, scale):
    R, T = attn.shape
    t = attn.dtype.type
    for i in range(R):
        dot = t(0.0)
        for j in range(T):
            dot += dattn[i, j] * attn[i, j]
        for j in range(T):
            dattn[i, j] = attn[i, j] * (dattn[i, j] - dot) * scale


def _rows(a):
    return a.reshape(-1, a.shape[-1])


def softmax_scaled(scores, out, scale):
    """Replaces ``scores *= scale; softmax_of_score_matrices(scores, out)``:
    out = softmax(scores * scale) over the last axis; scores is not changed.
    ``out`` must be C-contiguous; scores is copied if it is not."""
    scores = numpy.ascontiguousarray(scores)
    _softmax_rows(_rows(scores), _rows(out), scores.dtype.type(scale))


def softmax_backward_in_place(dattn, attn, scale):
    """Replaces ``dattn -= dot_last(dattn, attn); dattn *= attn; dattn *= scale``:
    dattn = a * (da - sum(da * a)) * scale, in place (dattn C-contiguous)."""
    attn = numpy.ascontiguousarray(attn)
    _softmax_backward_rows(_rows(dattn), _rows(attn), attn.dtype.type(scale))
