"""Orthogonal matrices from unconstrained parameters: ``exp``, ``cayley`` and ``householder`` maps.

Each map sends a square parameter θ to an orthogonal matrix and gives a fixed matrix at θ = 0 (I, I and -I). As in
``torch.nn.utils.parametrizations.orthogonal`` (dynamic trivialisation), the module stores the initial matrix ``base``
and returns ``base @ M0ᵀ @ map(θ)``, so any orthogonal initialisation (Haar, pixel shuffle, random, a given matrix) is
exact at θ = 0 for every map, and det = -1 starting points are reachable by ``exp`` and ``cayley`` too. All maps use
only differentiable PyTorch ops (``torch.linalg.matrix_exp``, ``torch.linalg.solve``,
``torch.linalg.householder_product``), so their gradients are PyTorch's own and pass ``gradcheck``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from .base import autocast_disabled

__all__ = [
    "ORTHOGONAL_METHODS", "OrthogonalMatrix", "orthogonal_map", "haar_matrix", "random_orthogonal", "frozen_matrices",
]

ORTHOGONAL_METHODS = ("exp", "cayley", "householder")


def _skew(theta: Tensor) -> Tensor:
    return theta - theta.mT


def _exp_map(theta: Tensor) -> Tensor:
    return torch.linalg.matrix_exp(_skew(theta))


def _cayley_map(theta: Tensor) -> Tensor:
    # (I + S)^{-1} (I - S) with S skew-symmetric; I + S is always invertible.
    skew = _skew(theta)
    eye = torch.eye(theta.shape[-1], dtype=theta.dtype, device=theta.device)
    return torch.linalg.solve(eye + skew, eye - skew)


def _householder_map(theta: Tensor) -> Tensor:
    # Reflectors live strictly below the diagonal (unit diagonal implied); tau = 2 / ||v||² makes each an exact
    # reflection (determinant -1), so the product of n of them has determinant (-1)^n: the map stays in one component
    # of O(n), and OrthogonalMatrix's fixed base matrix carries the initial matrix's sign. (torch's
    # parametrizations.orthogonal multiplies by a diagonal of signs instead.)
    reflectors = theta.tril(-1)
    tau = 2.0 / (1.0 + (reflectors * reflectors).sum(dim=-2))
    return torch.linalg.householder_product(reflectors, tau)


def orthogonal_map(theta: Tensor, method: str) -> Tensor:
    """The orthogonal matrix (batch) ``method(θ)`` for θ of shape ``(..., n, n)``."""
    if method == "exp":
        return _exp_map(theta)
    if method == "cayley":
        return _cayley_map(theta)
    if method == "householder":
        return _householder_map(theta)
    raise ValueError(f"method must be 'exp', 'cayley' or 'householder', got '{method}'.")


def haar_matrix(strides: Sequence[int], dtype: torch.dtype = torch.float64) -> Tensor:
    """The separable Haar analysis matrix for a window of size ``strides`` (each 1 or 2), rows = filters.

    Row 0 is the average (all entries ``1/sqrt(σ)``), the others are the detail filters. Per axis the 2×2 factor is
    the rotation ``[[1, 1], [-1, 1]] / sqrt(2)`` (det +1), and the Kronecker product follows the row-major order in
    which a conv kernel flattens its window. In 2D the rows are those of the paper's Haar transform (§2.2), up to
    order and sign.
    """
    if any(s not in (1, 2) for s in strides):
        raise ValueError(
            f"init='haar' needs a stride of 1 or 2 along each axis, got {tuple(strides)}; "
            "use init='pixel_shuffle' or 'random' for other strides."
        )
    matrix = torch.ones(1, 1, dtype=dtype)
    factor = torch.tensor([[1.0, 1.0], [-1.0, 1.0]], dtype=dtype) / math.sqrt(2.0)
    for s in strides:
        matrix = torch.kron(matrix, factor if s == 2 else torch.ones(1, 1, dtype=dtype))
    return matrix


def random_orthogonal(batch: int, n: int, generator: torch.Generator | None = None) -> Tensor:
    """``batch`` Haar-distributed random rotations of size n×n (QR of a Gaussian with the sign fix, det +1)."""
    gaussian = torch.randn(batch, n, n, dtype=torch.float64, generator=generator)
    q, r = torch.linalg.qr(gaussian)
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)
    q[:, :, 0] *= torch.sign(torch.linalg.det(q)).unsqueeze(-1)
    return q


def _is_orthogonal(matrix: Tensor, atol: float = 1e-5) -> bool:
    eye = torch.eye(matrix.shape[-1], dtype=matrix.dtype)
    return bool(torch.allclose(matrix @ matrix.mT, eye.expand_as(matrix), atol=atol))


class OrthogonalMatrix(nn.Module):
    """A batch of ``batch`` learnable orthogonal n×n matrices, ``base @ M0ᵀ @ map(θ)`` with θ initialised to 0.

    The matrix is always computed in float32 (or float64 when θ is float64), also under autocast:
    ``torch.linalg.solve`` has no half-precision CPU kernel and orthogonality degrades quickly in bf16.

    Args:
        batch: number of independent matrices (one per channel for resampling, one for channel mixing).
        n: matrix size.
        method: ``"exp"`` (matrix exponential of θ - θᵀ), ``"cayley"`` or ``"householder"``.
        init: initial matrix, shape ``(n, n)`` or ``(batch, n, n)``; must be orthogonal.
        learnable: if False, θ is a buffer (the matrix stays at its initial value).
    """

    __jit_ignored_attributes__ = ["frozen"]  # eager-only (export); TorchScript always computes the matrices

    def __init__(self, batch: int, n: int, method: str, init: Tensor, learnable: bool = True) -> None:
        super().__init__()
        if method not in ORTHOGONAL_METHODS:
            raise ValueError(f"method must be one of {ORTHOGONAL_METHODS}, got {method!r}.")
        init = torch.as_tensor(init, dtype=torch.float64).expand(batch, n, n)
        if init.device.type != "meta" and not _is_orthogonal(init):  # meta tensors have no values to check
            raise ValueError(f"init must be an orthogonal {n}x{n} matrix (or a batch of {batch} of them).")
        self.method = method
        theta = torch.zeros(batch, n, n)
        at_zero = orthogonal_map(theta.double(), method)
        if learnable:
            self.theta = nn.Parameter(theta)
        else:
            self.register_buffer("theta", theta)
        # float64 so that float64 use is exact too; cast to θ's dtype on use.
        self.register_buffer("base", init @ at_zero.mT)
        self.frozen = None  # a constant value while frozen (see frozen_matrices)

    def forward(self) -> Tensor:
        if torch.jit.is_scripting():
            return self._compute()
        return self._eager_value()

    @torch.jit.unused
    def _eager_value(self) -> Tensor:
        if self.frozen is not None:
            return self.frozen
        return self._compute_without_autocast()

    def value(self, dtype: torch.dtype) -> Tensor:
        """The matrices computed in ``dtype`` (float64 gives an initialisation for a twin layer without rounding)."""
        return self.base.to(dtype) @ orthogonal_map(self.theta.to(dtype), self.method)

    def _compute(self) -> Tensor:
        return self.value(torch.float64 if self.theta.dtype == torch.float64 else torch.float32)

    @torch.jit.unused
    def _compute_without_autocast(self) -> Tensor:
        with autocast_disabled(self.theta.device.type):
            return self._compute()

    @torch.no_grad()
    def set_matrix(self, matrix: Tensor) -> None:
        """Make the current value equal ``matrix`` (θ reset to 0), e.g. to initialise one layer as another's inverse."""
        batch, n, _ = self.base.shape
        matrix = matrix.to(torch.float64).expand(batch, n, n)
        if not _is_orthogonal(matrix):
            raise ValueError("set_matrix expects orthogonal matrices.")
        self.theta.zero_()
        at_zero = orthogonal_map(self.theta.double(), self.method)
        self.base.copy_(matrix @ at_zero.mT)

    def _freeze(self) -> None:
        with torch.no_grad():
            self.frozen = self._compute().detach().clone()

    def _thaw(self) -> None:
        self.frozen = None

    def extra_repr(self) -> str:
        batch, n, _ = self.base.shape
        return f"batch={batch}, n={n}, method={self.method!r}, learnable={isinstance(self.theta, nn.Parameter)}"


@contextmanager
def frozen_matrices(module: nn.Module) -> Iterator[nn.Module]:
    """Within the context every :class:`OrthogonalMatrix` of ``module`` returns its current value as a constant
    tensor: exporters see a fixed weight instead of ``matrix_exp``/``solve``/``householder_product`` (which ONNX
    lacks), and inference skips recomputing the matrices. Training inside the context would not update them."""
    matrices = [m for m in module.modules() if isinstance(m, OrthogonalMatrix)]
    for matrix in matrices:
        matrix._freeze()
    try:
        yield module
    finally:
        for matrix in matrices:
            matrix._thaw()
