"""Binary code conventions: {-1,+1} in memory for losses, packed bits for search.

A real-valued output ``h`` becomes the bit ``1`` (code ``+1``) when ``h >= 0`` and ``0`` (code ``-1``)
otherwise. Packed codes use ``np.packbits`` (big-endian bit order within a byte), which is faiss's
binary-vector layout: ``K`` bits take ``K / 8`` uint8 bytes per item and the Hamming distance is the
popcount of the XOR, independent of the bit order.
"""

from __future__ import annotations

import numpy as np

from pipeline.core.errors import HashBenchError


def to_pm1(codes) -> np.ndarray:
    """Sign of real-valued codes as int8 in {-1, +1} (0 maps to +1)."""
    arr = np.asarray(codes)
    return np.where(arr >= 0, 1, -1).astype(np.int8)


def pack_codes(codes) -> np.ndarray:
    """Pack real-valued or {-1,+1} codes (N, K) into uint8 bytes (N, K/8); K must be a multiple of 8."""
    arr = np.asarray(codes)
    if arr.ndim != 2:
        raise HashBenchError(f"codes must be a 2-D array (items x bits), got shape {arr.shape}")
    if arr.shape[1] % 8 != 0 or arr.shape[1] == 0:
        raise HashBenchError(f"code length must be a positive multiple of 8, got {arr.shape[1]}")
    return np.packbits(arr >= 0, axis=1)


def unpack_codes(packed: np.ndarray, bits: int | None = None) -> np.ndarray:
    """Inverse of :func:`pack_codes`: uint8 (N, K/8) -> int8 {-1,+1} (N, K)."""
    packed = np.asarray(packed, dtype=np.uint8)
    bits_arr = np.unpackbits(packed, axis=1)
    if bits is not None:
        bits_arr = bits_arr[:, :bits]
    return (bits_arr.astype(np.int8) * 2 - 1).astype(np.int8)
