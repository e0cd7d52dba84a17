"""Unpickling restricted to plain containers and NumPy arrays.

MNIST (mnist.pkl.gz) and CIFAR-10 (python batches) ship as pickles. A normal `pickle.load` can run any code the
file names, so we allow only the globals that a pickled ndarray needs and refuse everything else.
"""

from __future__ import annotations

import codecs
import io
import pickle
from typing import Any

import numpy as np

from imgtrain.core.errors import DataError

_ALLOWED = {
    ("_codecs", "encode"): codecs.encode,  # Python 3's protocol-2 pickles spell bytes this way
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    # numpy's stubs do not export its private _core package as an attribute
    ("numpy.core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,  # type: ignore[attr-defined]
    ("numpy._core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,  # type: ignore[attr-defined]
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError as err:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only NumPy arrays are allowed") from err


def loads(data: bytes, source: str, encoding: str = "ASCII") -> Any:
    try:
        return _ArrayUnpickler(io.BytesIO(data), encoding=encoding).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as err:
        raise DataError(f"{source}: not a valid array pickle ({err})") from err
