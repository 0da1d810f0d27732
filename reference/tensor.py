"""The smallest TinyTorch-compatible Tensor the reference needs: float32 data, no autograd."""

from __future__ import annotations

from typing import Any, Union

import numpy as np
from numpy.typing import ArrayLike, NDArray

Operand = Union["Tensor", ArrayLike]


def _data(other: Operand) -> NDArray[np.float32]:
    return other.data if isinstance(other, Tensor) else np.asarray(other, dtype=np.float32)


class Tensor:
    """A float32 NumPy array with TinyTorch's method names.

    Like TinyTorch, construction copies and converts to float32, so a Tensor never
    aliases the caller's array. `copy=False` (not in TinyTorch) wraps a float32 array
    as it is: KVCache.get uses it to hand out views of its storage without copying.
    """

    def __init__(self, data: Any, requires_grad: bool = False, *, copy: bool = True) -> None:
        self.data: NDArray[np.float32] = np.array(data, dtype=np.float32) if copy else np.asarray(data, dtype=np.float32)
        self.requires_grad = requires_grad

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    def reshape(self, *shape: int) -> Tensor:
        return Tensor(self.data.reshape(*shape))

    def transpose(self, dim0: int | None = None, dim1: int | None = None) -> Tensor:
        """Swap two axes; with no arguments, swap the last two (TinyTorch's default)."""
        if dim0 is None and dim1 is None:
            dim0, dim1 = -2, -1
        if dim0 is None or dim1 is None:
            raise ValueError("transpose needs both dim0 and dim1, or neither")
        return Tensor(np.swapaxes(self.data, dim0, dim1))

    def matmul(self, other: Operand) -> Tensor:
        return Tensor(np.matmul(self.data, _data(other)))

    def __matmul__(self, other: Operand) -> Tensor:
        return self.matmul(other)

    def __add__(self, other: Operand) -> Tensor:
        return Tensor(self.data + _data(other))

    def __sub__(self, other: Operand) -> Tensor:
        return Tensor(self.data - _data(other))

    def __mul__(self, other: Operand) -> Tensor:
        return Tensor(self.data * _data(other))

    def __truediv__(self, other: Operand) -> Tensor:
        return Tensor(self.data / _data(other))

    def __getitem__(self, index: Any) -> Tensor:
        return Tensor(self.data[index])

    def numpy(self) -> NDArray[np.float32]:
        return self.data

    def __repr__(self) -> str:
        return f"Tensor(shape={self.shape})"
