"""Runner `inspect`, statistics: norms, ranks, moments and histograms of one tensor (pure torch).

Spectral norms (chosen for the 30 s goal on SmolLM2-135M with 2 cores): when the smaller
side of the matrix is at most GRAM_MAX_SIDE, the exact largest eigenvalue of the Gram matrix
W^T W (or W W^T, the smaller one) by `torch.linalg.eigvalsh`, sqrt taken: about 3x faster
than `svdvals` on 1536 x 576 and 8x on the 49152 x 576 embedding, equal to 1e-6 relative.
Above that (7B-size MLPs), a block subspace iteration (8 vectors, SUBSPACE_ITERS rounds,
Rayleigh-Ritz) on W itself, never building the Gram. Rows say which ("gram" or "subspace").
Deltas need every singular value (effective and numerical rank): the float64 Gram's
eigenvalues up to GRAM_MAX_SIDE (resolves singular values down to ~1e-8 of the largest),
else the top SUBSPACE_Q from `torch.svd_lowrank`. LoRA deltas use an exact r x r path.
"""

from __future__ import annotations

import math
from typing import Any

import torch

GRAM_MAX_SIDE = 4096
SMALL_SIDE = 64  # below this, plain svdvals (cheap and the most precise)
SUBSPACE_ITERS = 20
SUBSPACE_BLOCK = 8
SUBSPACE_Q = 64
CHUNK = 1 << 22  # elements per float64 chunk for the moments: bounds the extra memory


def as_matrix(tensor: torch.Tensor) -> torch.Tensor | None:
    """2-D view of a weight (conv kernels flattened to out x rest); None for vectors and scalars."""
    if tensor.ndim < 2:
        return None
    return tensor.reshape(tensor.shape[0], -1)


def _gram(matrix: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """W^T W or W W^T (the smaller), accumulated over row chunks in `dtype` so a float64
    Gram of a large matrix needs no float64 copy of it."""
    w = matrix if matrix.shape[0] >= matrix.shape[1] else matrix.T
    if w.dtype == dtype and w.numel() <= CHUNK:
        return w.T @ w
    gram = torch.zeros(w.shape[1], w.shape[1], dtype=dtype)
    rows = max(1, CHUNK // max(1, w.shape[1]))
    for start in range(0, w.shape[0], rows):
        part = w[start : start + rows].to(dtype)
        gram += part.T @ part
    return gram


def singular_values(matrix: torch.Tensor) -> tuple[torch.Tensor, str]:
    """Singular values, largest first: all of them ("exact" svdvals for small matrices,
    "gram" from the float64 Gram's eigenvalues), or the top SUBSPACE_Q ("lowrank")."""
    side = min(matrix.shape)
    if side <= SMALL_SIDE:
        return torch.linalg.svdvals(matrix.double()), "exact"
    if side <= GRAM_MAX_SIDE:
        eig = torch.linalg.eigvalsh(_gram(matrix, torch.float64))
        return eig.clamp(min=0).sqrt().flip(0), "gram"
    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    try:
        _, s, _ = torch.svd_lowrank(matrix.float(), q=SUBSPACE_Q, niter=4)
    finally:
        torch.random.set_rng_state(state)
    return s.double(), "lowrank"


def spectral_norm(matrix: torch.Tensor) -> tuple[float, str]:
    """Largest singular value ||W||_2 and the method ("exact", "gram" or "subspace")."""
    side = min(matrix.shape)
    if side == 0:
        return 0.0, "exact"
    if side <= SMALL_SIDE:
        return float(torch.linalg.svdvals(matrix.double())[0]), "exact"
    if side <= GRAM_MAX_SIDE:
        top = float(torch.linalg.eigvalsh(_gram(matrix.float()))[-1])
        return max(top, 0.0) ** 0.5, "gram"
    w = matrix.float()
    generator = torch.Generator().manual_seed(0)
    block = torch.randn(w.shape[1], SUBSPACE_BLOCK, generator=generator)
    for _ in range(SUBSPACE_ITERS):
        block, _ = torch.linalg.qr(w.T @ (w @ block))
    top = float(torch.linalg.svdvals(w @ block)[0])
    return top, "subspace"


def stable_rank(frobenius: float, spectral: float) -> float | None:
    """||W||_F^2 / ||W||_2^2: between 1 (rank one) and the rank; None for a zero matrix."""
    if spectral <= 0.0:
        return None
    return (frobenius / spectral) ** 2


def effective_rank(s: torch.Tensor) -> float:
    """Roy & Vetterli's entropy effective rank exp(H(p)), p = s / sum(s); 0 for a zero matrix."""
    s = s.double().abs()
    total = float(s.sum())
    if total <= 0.0:
        return 0.0
    p = s[s > 0] / total
    return float(torch.exp(-(p * p.log()).sum()))


def numerical_rank(s: torch.Tensor, shape: tuple[int, ...], tol: float | None = None) -> int:
    """Singular values above `tol`; default numpy's matrix_rank rule for float32:
    s_max * max(m, n) * eps(float32)."""
    if s.numel() == 0:
        return 0
    s_max = float(s.max())
    if tol is None:
        tol = s_max * max(shape) * torch.finfo(torch.float32).eps
    return int((s > tol).sum()) if s_max > 0 else 0


def moments(tensor: torch.Tensor, all_finite: bool = False) -> dict[str, float | None]:
    """Mean, std (population), excess kurtosis (Fisher: 0 for a Gaussian), max |w| and the
    Frobenius norm of the finite values, in float64, chunked so a large tensor needs little
    extra memory. Kurtosis is None for a constant tensor."""
    flat = tensor.reshape(-1)
    n = 0
    total = 0.0
    max_abs = 0.0
    for start in range(0, flat.numel(), CHUNK):
        part = flat[start : start + CHUNK].double()
        if not all_finite:
            part = part[torch.isfinite(part)]
        n += part.numel()
        total += float(part.sum())
        if part.numel():
            max_abs = max(max_abs, float(part.abs().max()))
    if n == 0:
        return {"mean": None, "std": None, "kurtosis": None, "max_abs": None, "frobenius": None}
    mean = total / n
    m2 = m4 = sq = 0.0
    for start in range(0, flat.numel(), CHUNK):
        part = flat[start : start + CHUNK].double()
        if not all_finite:
            part = part[torch.isfinite(part)]
        sq += float((part * part).sum())
        centred = (part - mean) ** 2
        m2 += float(centred.sum())
        m4 += float((centred * centred).sum())
    m2 /= n
    m4 /= n
    kurtosis = m4 / (m2 * m2) - 3.0 if m2 > 0 else None
    return {
        "mean": mean,
        "std": math.sqrt(m2),
        "kurtosis": kurtosis,
        "max_abs": max_abs,
        "frobenius": math.sqrt(sq),
    }


def histogram(
    tensor: torch.Tensor, bins: int, all_finite: bool = False
) -> dict[str, list[float] | list[int]]:
    """Counts of the finite values in `bins` equal bins between their min and max."""
    flat = tensor.reshape(-1).float()
    finite = flat if all_finite else flat[torch.isfinite(flat)]
    if finite.numel() == 0:
        return {"edges": [], "counts": []}
    lo_t, hi_t = torch.aminmax(finite)
    lo, hi = float(lo_t), float(hi_t)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    counts = torch.histc(finite, bins=bins, min=lo, max=hi)
    edges = torch.linspace(lo, hi, bins + 1, dtype=torch.float64)
    return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}


def tensor_stats(tensor: torch.Tensor, bins: int = 50) -> dict[str, Any]:
    """Every statistic of one weight: moments, norms, stable rank, histogram, non-finite count."""
    nonfinite = int((~torch.isfinite(tensor)).sum()) if tensor.is_floating_point() else 0
    work = tensor.float()
    row: dict[str, Any] = {"nonfinite": nonfinite, **moments(work, nonfinite == 0)}
    row["spectral_norm"] = None
    row["stable_rank"] = None
    row["spectral_method"] = None
    matrix = as_matrix(work)
    if matrix is not None and nonfinite == 0 and matrix.numel():
        spectral, method = spectral_norm(matrix)
        row["spectral_norm"] = spectral
        row["stable_rank"] = stable_rank(row["frobenius"] or 0.0, spectral)
        row["spectral_method"] = method
    row["histogram"] = histogram(work, bins, nonfinite == 0)
    return row


def delta_stats(
    s: torch.Tensor, fro: float, base_fro: float | None, shape: tuple[int, ...], method: str
) -> dict[str, Any]:
    """A delta's row from its singular values `s` and Frobenius norm (dense or low-rank path)."""
    row: dict[str, Any] = {
        "delta_frobenius": fro,
        "relative_change": (fro / base_fro) if base_fro else (0.0 if fro == 0 else None),
        "base_frobenius": base_fro,
        "delta_spectral_norm": float(s.max()) if s.numel() else 0.0,
        "effective_rank": effective_rank(s),
        "numerical_rank": numerical_rank(s, shape),
        "svd_method": method,
    }
    return row


def dense_delta_stats(
    delta: torch.Tensor, base_fro: float | None, shape: tuple[int, ...]
) -> dict[str, Any]:
    """Row for a delta given as a full tensor (full fine-tunes; vectors have no singular values
    beyond their norm)."""
    d = delta if delta.dtype == torch.float64 else delta.float()
    fro = float(torch.linalg.vector_norm(d, dtype=torch.float64))
    matrix = as_matrix(d)
    if matrix is None:
        row = delta_stats(torch.tensor([fro], dtype=torch.float64), fro, base_fro, shape, "vector")
        row["effective_rank"] = None
        row["numerical_rank"] = None
        return row
    s, method = singular_values(matrix)
    return delta_stats(s, fro, base_fro, shape, method)


def lora_singular_values(a: torch.Tensor, b: torch.Tensor, scaling: float) -> torch.Tensor:
    """Singular values of scaling * B @ A without building it: B = Qb Rb, A^T = Qa Ra, so
    B A = Qb (Rb Ra^T) Qa^T and the values are those of the r x r matrix Rb Ra^T."""
    _, rb = torch.linalg.qr(b.double())
    _, ra = torch.linalg.qr(a.double().T)
    return torch.linalg.svdvals(rb @ ra.T) * abs(scaling)


def lora_frobenius(a: torch.Tensor, b: torch.Tensor, scaling: float) -> float:
    """||scaling * B A||_F from r x r products: ||BA||_F^2 = trace((B^T B)(A A^T))."""
    a64, b64 = a.double(), b.double()
    value = float(torch.trace((b64.T @ b64) @ (a64 @ a64.T)))
    return abs(scaling) * math.sqrt(max(value, 0.0))


def lora_delta_stats(
    a: torch.Tensor, b: torch.Tensor, scaling: float, base_fro: float | None
) -> dict[str, Any]:
    """Row for a LoRA delta scaling * B @ A (B: out x r, A: r x in) by the low-rank path."""
    s = lora_singular_values(a, b, scaling)
    return delta_stats(
        s, lora_frobenius(a, b, scaling), base_fro, (b.shape[0], a.shape[1]), "lowrank-exact"
    )
