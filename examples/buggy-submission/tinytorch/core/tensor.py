"""A student's Tensor (TinyTorch module 01), trimmed to what the KV-cache module uses."""

import numpy as np


class Tensor:
    def __init__(self, data, requires_grad=False):
        self.data = np.array(data, dtype=np.float32)
        self.requires_grad = requires_grad

    @property
    def shape(self):
        return self.data.shape

    def reshape(self, *shape):
        return Tensor(self.data.reshape(*shape))

    def transpose(self, dim0=None, dim1=None):
        if dim0 is None and dim1 is None:
            dim0, dim1 = -2, -1
        return Tensor(np.swapaxes(self.data, dim0, dim1))

    def matmul(self, other):
        return Tensor(np.matmul(self.data, other.data if isinstance(other, Tensor) else other))

    def __add__(self, other):
        return Tensor(self.data + (other.data if isinstance(other, Tensor) else other))

    def __mul__(self, other):
        return Tensor(self.data * (other.data if isinstance(other, Tensor) else other))

    def __getitem__(self, index):
        return Tensor(self.data[index])

    def __repr__(self):
        return f"Tensor({self.data})"
