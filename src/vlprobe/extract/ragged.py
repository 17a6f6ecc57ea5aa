"""RaggedArray: N arrays of one dtype and ndim whose shapes differ per item.

Raw attention maps are the typical case: item ``i`` is ``[H, T_i, T_i]`` with ``T_i`` its own
token count. The values of all items live in ONE flat array (each item raveled in C order,
items concatenated), with

- ``offsets`` ``[N + 1]`` int64: item ``i`` is ``data[offsets[i]:offsets[i + 1]]``;
- ``shapes`` ``[N, ndim]`` int64: its shape.

So ``ra[i]`` is a reshaped slice of ``data``: a view, no copy. When ``data`` is a memory map
(:meth:`~vlprobe.extract.store.ActivationStore.load_ragged`) only the pages of the items
actually read are loaded. A RaggedArray is read-only (its arrays are not writeable).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, overload

import numpy as np


def _readonly(array: np.ndarray) -> np.ndarray:
    view = array.view()
    view.flags.writeable = False
    return view


def offsets_from_shapes(shapes: np.ndarray) -> np.ndarray:
    """``[N + 1]`` int64 offsets of items with ``shapes`` ``[N, ndim]`` (0, cumulative sizes)."""
    sizes = np.prod(shapes, axis=1, dtype=np.int64)  # an empty product (0-d items) is 1
    out = np.zeros(shapes.shape[0] + 1, dtype=np.int64)
    np.cumsum(sizes, out=out[1:])
    return out


class RaggedArray(Sequence):
    """N read-only arrays of one dtype and ndim, stored flat (see the module docstring).

    Args:
        data: 1-D values of every item, concatenated.
        offsets: ``[N + 1]`` int64, ``offsets[0] == 0``, ``offsets[-1] == len(data)``.
        shapes: ``[N, ndim]`` int64 per-item shapes (``prod(shapes[i]) ==
            offsets[i + 1] - offsets[i]``).

    Raises:
        ValueError: if the three arrays do not fit together.
    """

    def __init__(self, data: np.ndarray, offsets: np.ndarray, shapes: np.ndarray) -> None:
        if data.ndim != 1:
            raise ValueError(f"ragged data must be 1-D, got shape {data.shape}")
        offsets = np.asarray(offsets)
        shapes = np.asarray(shapes)
        if shapes.ndim != 2 or offsets.shape != (shapes.shape[0] + 1,):
            raise ValueError(
                f"ragged offsets {offsets.shape} / shapes {shapes.shape} do not fit: expected "
                "[N + 1] and [N, ndim]"
            )
        if (shapes < 0).any():
            raise ValueError("ragged shapes must be >= 0")
        if not np.array_equal(offsets, offsets_from_shapes(shapes) + offsets[0]) or (
            offsets[-1] != len(data) + offsets[0]
        ):
            raise ValueError(
                f"ragged offsets do not match the shapes / the {len(data)} values of the data"
            )
        base = int(offsets[0])
        self.data = _readonly(data)
        self.offsets = _readonly(offsets.astype(np.int64, copy=False) - base)
        self.shapes = _readonly(shapes.astype(np.int64, copy=False))

    @classmethod
    def from_arrays(cls, items: Sequence[Any], dtype: Any = None) -> RaggedArray:
        """Pack ``items`` (arrays of one ndim) into a new in-memory RaggedArray.

        ``dtype`` casts the values (default: the dtype numpy gives the concatenation)."""
        arrays = [np.asarray(a) for a in items]
        ndims = {a.ndim for a in arrays}
        if len(ndims) > 1:
            raise ValueError(f"ragged items must share one ndim, got ndims {sorted(ndims)}")
        ndim = ndims.pop() if ndims else 0
        shapes = np.asarray([a.shape for a in arrays], dtype=np.int64).reshape(len(arrays), ndim)
        if arrays:
            data = np.concatenate([a.reshape(-1) for a in arrays])
            data = data.astype(dtype, copy=False) if dtype is not None else data
        else:
            data = np.zeros(0, dtype=dtype if dtype is not None else np.float32)
        return cls(data, offsets_from_shapes(shapes), shapes)

    # -- sequence ----------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.shapes.shape[0])

    @overload
    def __getitem__(self, index: int) -> np.ndarray: ...

    @overload
    def __getitem__(self, index: slice) -> RaggedArray: ...

    def __getitem__(self, index: int | slice) -> np.ndarray | RaggedArray:
        """Item ``index`` (a read-only view ``[*shapes[index]]``), or the items of a slice
        (step 1) as a RaggedArray sharing this one's data."""
        n = len(self)
        if isinstance(index, slice):
            start, stop, step = index.indices(n)
            if step != 1:
                raise IndexError("RaggedArray slices must have step 1")
            stop = max(stop, start)
            lo, hi = int(self.offsets[start]), int(self.offsets[stop])
            return RaggedArray(
                self.data[lo:hi], self.offsets[start : stop + 1], self.shapes[start:stop]
            )
        i = int(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"ragged index {index} out of range for {n} items")
        lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.data[lo:hi].reshape(tuple(int(s) for s in self.shapes[i]))

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(len(self)):
            yield self[i]

    # -- description -------------------------------------------------------------------
    @property
    def dtype(self) -> np.dtype:
        """dtype of the values."""
        return self.data.dtype

    @property
    def ndim(self) -> int:
        """ndim of every item."""
        return int(self.shapes.shape[1])

    @property
    def nbytes(self) -> int:
        """Bytes of the values (offsets and shapes not counted)."""
        return int(self.data.nbytes)

    def __repr__(self) -> str:
        return (
            f"RaggedArray({len(self)} items, ndim={self.ndim}, dtype={self.dtype}, "
            f"nbytes={self.nbytes})"
        )
