"""Precision modes of the matrix product, and the bound that keeps them exact.

Reduced precision (bf16, fp16) only *selects candidates*: a pair is kept when its
reduced-precision proxy is within the error bound of the running threshold, and every
candidate is re-scored in float32. So the returned top-k equals the float32 top-k.
"""

from __future__ import annotations

import functools

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Unit roundoff of each dtype (half the gap between 1 and the next number).
_UNIT_ROUNDOFF = {torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}


@functools.cache
def cpu_has_bf16_matmul() -> bool:
    """Whether this CPU has bf16 matrix units (AMX-BF16 or AVX512-BF16).

    Where it does, ``search_precision="auto"`` selects candidates with bf16 products, and
    ``encode_precision="bf16"`` pays off. Read from ``/proc/cpuinfo``: False where there is none.

    Returns
    -------
    has_bf16 : bool

    Examples
    --------
    >>> from skretrieval.search import cpu_has_bf16_matmul
    >>> isinstance(cpu_has_bf16_matmul(), bool)
    True
    """
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"amx_bf16", "avx512_bf16"})
    except OSError:
        pass
    return False


def resolve_precision(precision: str, device) -> torch.dtype:
    """The matrix-product dtype for a ``search_precision`` value on ``device``.

    ``"auto"`` is bf16 on CUDA and on CPUs with bf16 matrix units, else fp32. ``"fp16"`` is
    accepted on GPUs only (CPUs have no fast fp16 product, and its range is narrow).

    Parameters
    ----------
    precision : {"auto", "fp32", "bf16", "fp16"}
        A ``search_precision`` value.
    device : str or torch.device
        Where the search runs.

    Returns
    -------
    dtype : torch.dtype
        What the candidate-selecting products compute in; scores are float32 either way.

    Examples
    --------
    >>> from skretrieval.search import resolve_precision
    >>> resolve_precision("fp32", "cpu")
    torch.float32
    """
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise ValueError(f"search_precision={precision!r} is not supported; use one of {PRECISIONS}.")
    if precision == "auto":
        fast = device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16_matmul())
        return torch.bfloat16 if fast else torch.float32
    if precision == "fp16" and device.type == "cpu":
        raise ValueError(
            "search_precision='fp16' needs a GPU; on the CPU use 'bf16' (fast with AMX/AVX512-BF16) "
            "or 'fp32'."
        )
    return _DTYPES[precision]


def unit_roundoff(dtype: torch.dtype) -> float:
    """Half the gap between 1 and the next number of ``dtype``."""
    return _UNIT_ROUNDOFF[dtype]


def matmul_error_bound(dtype: torch.dtype, n_features: int) -> float:
    """``c`` such that ``|proxy_low(a, b) - a.b| <= c * ||a|| * ||b||``.

    Rounding both inputs costs ``2u + u^2`` (relative, per product term, so at most that
    times ``||a|| ||b||`` by Cauchy-Schwarz); products of bf16/fp16 numbers are exact in
    float32, whose accumulation adds ``d * 2^-24`` (twice: the float32 re-scoring that sets
    thresholds has its own); rounding the output to ``dtype`` another
    ``u (1 + ...)``. The constants round the second-order terms up.
    """
    u = _UNIT_ROUNDOFF[dtype]
    return 3.0 * u + 4.0 * u * u + 2.2 * (n_features + 4) * 2.0**-24


def product_margin(queries, max_norm: float, max_rounding: float, dtype: torch.dtype, n_features: int):
    """Per query, a bound on ``|q~.g~ - q.g|`` for products in ``dtype`` against rows of norm
    at most ``max_norm`` whose ``dtype`` copies are within ``max_rounding`` of them, before the
    output rounding.

    ``q~.g~ - q.g = q.(g~ - g) + (q~ - q).g~``, so the rounding norms bound it (Cauchy-Schwarz),
    plus the float32 accumulation of the exact products of bf16/fp16 numbers, counted twice:
    once in the product and once in the float32 re-scoring whose values set the threshold.
    """
    q_norm = torch.linalg.vector_norm(queries, dim=1)
    accumulation = 2.2 * (n_features + 4) * 2.0**-24 * q_norm * max_norm
    if dtype == torch.float32:
        return accumulation
    q_rounding = torch.linalg.vector_norm(queries - queries.to(dtype).float(), dim=1)
    return 1.001 * (q_norm * max_rounding + q_rounding * max_norm) + accumulation


def finite_max(values: torch.Tensor) -> float:
    """The largest finite value (0 when none): NaN or inf rows never match, so they must not
    void a bound."""
    finite = values[torch.isfinite(values)]
    return float(finite.max()) if len(finite) else 0.0


def max_rounding(exact: torch.Tensor, low: torch.Tensor, rows: int = 65536) -> float:
    """Largest ``||g - g~||`` over the gallery (0 in float32), in blocks of rows."""
    if low.dtype == torch.float32 or not len(exact):
        return 0.0
    return max(
        finite_max(torch.linalg.vector_norm(exact[i : i + rows] - low[i : i + rows].float(), dim=1))
        for i in range(0, len(exact), rows)
    )
