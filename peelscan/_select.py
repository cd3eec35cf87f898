"""Exact selection (the k-th smallest value) for the numba kernels of several modules.

One implementation shared by :mod:`peelscan.preprocess` (its medians and percentiles) and
:mod:`peelscan.metrics` (FSIM's noise median): Hoare's FIND, C. A. R. Hoare, "Algorithm 65:
Find", Communications of the ACM 4(7), 1961, with a median-of-three pivot.
"""

from __future__ import annotations

import numba

_NJIT = dict(nogil=True, cache=True, error_model="numpy")


@numba.njit(**_NJIT)
def nb_kth(v, n, k):  # pragma: no cover - compiled
    """Reorder ``v[:n]`` so that ``v[k]`` is its k-th smallest value (0-based), everything
    before it <= it and everything after it >= it (Hoare's FIND); returns ``v[k]``."""
    lo = 0
    hi = n - 1
    while hi > lo:
        mid = (lo + hi) >> 1
        a = v[lo]
        b = v[mid]
        c = v[hi]
        if a > b:
            a, b = b, a
        if b > c:
            b = c
            if a > b:
                b = a
        pivot = b
        i = lo
        j = hi
        while i <= j:
            while v[i] < pivot:
                i += 1
            while v[j] > pivot:
                j -= 1
            if i <= j:
                t = v[i]
                v[i] = v[j]
                v[j] = t
                i += 1
                j -= 1
        if k <= j:
            hi = j
        elif k >= i:
            lo = i
        else:
            break
    return v[k]
