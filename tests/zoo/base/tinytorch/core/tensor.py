"""Module 01: Tensor, the foundation of TinyTorch."""

import numpy as np


class Tensor:
    """A NumPy array with the operations the rest of TinyTorch needs."""

    def __init__(self, data, requires_grad=False):
        # Always store float32, and always copy: a Tensor owns its data.
        self.data = np.array(data, dtype=np.float32)
        self.shape = self.data.shape
        self.size = self.data.size
        self.dtype = self.data.dtype
        self.requires_grad = requires_grad
        self.grad = None

    def __repr__(self):
        return f"Tensor({self.data}, shape={self.shape})"

    def __add__(self, other):
        if isinstance(other, Tensor):
            return Tensor(self.data + other.data)
        return Tensor(self.data + other)

    def __sub__(self, other):
        if isinstance(other, Tensor):
            return Tensor(self.data - other.data)
        return Tensor(self.data - other)

    def __mul__(self, other):
        if isinstance(other, Tensor):
            return Tensor(self.data * other.data)
        return Tensor(self.data * other)

    def __truediv__(self, other):
        if isinstance(other, Tensor):
            return Tensor(self.data / other.data)
        return Tensor(self.data / other)

    def matmul(self, other):
        if isinstance(other, Tensor):
            return Tensor(np.matmul(self.data, other.data))
        return Tensor(np.matmul(self.data, other))

    def __matmul__(self, other):
        return self.matmul(other)

    def __getitem__(self, key):
        return Tensor(self.data[key])

    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return Tensor(self.data.reshape(shape))

    def transpose(self, dim0=None, dim1=None):
        if dim0 is None and dim1 is None:
            if self.data.ndim < 2:
                return Tensor(self.data.copy())
            dim0, dim1 = -2, -1
        axes = list(range(self.data.ndim))
        axes[dim0], axes[dim1] = axes[dim1], axes[dim0]
        return Tensor(np.transpose(self.data, axes))

    def sum(self, axis=None, keepdims=False):
        return Tensor(np.sum(self.data, axis=axis, keepdims=keepdims))

    def mean(self, axis=None, keepdims=False):
        return Tensor(np.mean(self.data, axis=axis, keepdims=keepdims))

    def numpy(self):
        return self.data
