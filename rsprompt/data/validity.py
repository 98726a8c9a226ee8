"""Which raster pixels hold data: one rule for every read of a scene, an aux raster or a tile.

A band value is valid when it is finite (NaN, +inf and -inf are not data) and differs from the
raster's nodata value. A nodata value that the raster's data type cannot represent (256 or 25.5
in a uint8 file, 1e40 in a float32 file) matches no pixel: it is ignored, never cast into range
(casting 256 to uint8 would turn every black pixel into nodata). Where the file has an internal
mask (a GDAL per-dataset mask, read with ``read_masks``), a pixel the mask marks 0 is invalid too.

Bands combine in one of two ways: ``every_band=True`` (a pixel is valid only where every band is;
aux rasters, whose bands all feed the model) or ``every_band=False`` (valid where at least one band
is; the optical scene, as GDAL's dataset mask). This module depends on numpy only, so the data
package (training reads) and the inference package (scene reads) can share it.

Example:
    >>> import numpy as np
    >>> data = np.array([[[0, 7], [255, 9]]], dtype=np.uint8)
    >>> valid_pixels(data, 255).tolist()
    [[True, True], [False, True]]
    >>> valid_pixels(data, 256.0).tolist()  # uint8 cannot hold 256: ignored
    [[True, True], [True, True]]
    >>> valid_pixels(np.array([[1.0, np.inf, np.nan]], np.float32)).tolist()
    [[True, False, False]]
"""

from __future__ import annotations

import math

import numpy as np


def representable(value: float | None, dtype: np.dtype | str) -> bool:
    """Whether ``value`` is a value of ``dtype`` (``None`` counts as representable: no nodata).

    Integers: a whole number inside the type's range. Floats: NaN, ±inf or a finite value inside
    the type's range (it is compared after rounding to the type, as GDAL does). Other types
    (complex, bool): only ``None``.
    """
    if value is None:
        return True
    dt = np.dtype(dtype)
    v = float(value)
    if np.issubdtype(dt, np.integer):
        info = np.iinfo(dt)
        return math.isfinite(v) and v.is_integer() and info.min <= v <= info.max
    if np.issubdtype(dt, np.floating):
        return not math.isfinite(v) or abs(v) <= float(np.finfo(dt).max)
    return False


def usable_nodata(nodata: float | None, dtype: np.dtype | str) -> float | None:
    """The nodata value to compare pixels of ``dtype`` with, or ``None`` when there is none.

    ``None`` for no nodata, for NaN or ±inf (non-finite values are invalid anyway) and for a value
    ``dtype`` cannot represent (see :func:`representable`).
    """
    if nodata is None or not math.isfinite(float(nodata)):
        return None
    return float(nodata) if representable(nodata, dtype) else None


def band_valid(data: np.ndarray, nodata: float | None = None) -> np.ndarray:
    """Validity of every value of ``data`` (any shape): finite and not the nodata value."""
    data = np.asarray(data)
    if np.issubdtype(data.dtype, np.inexact):
        ok = np.isfinite(data)
    else:
        ok = np.ones(data.shape, dtype=bool)
    nd = usable_nodata(nodata, data.dtype)
    if nd is not None:
        ok &= data != data.dtype.type(nd)
    return ok


def valid_pixels(
    data: np.ndarray,
    nodata: float | None = None,
    *,
    mask: np.ndarray | None = None,
    every_band: bool = True,
) -> np.ndarray:
    """Validity (bool ``H×W``) of the pixels of ``data`` (``C×H×W`` or ``H×W``).

    Args:
        data: Raw values in the file's data type (compare before any cast to float).
        nodata: The file's nodata value (ignored when ``data``'s type cannot represent it).
        mask: The file's internal mask (``H×W``, nonzero = valid), or ``None``.
        every_band: Valid only where every band is valid (``True``) or where any band is.
    """
    data = np.asarray(data)
    ok = band_valid(data, nodata)
    if ok.ndim == 3:
        ok = ok.all(axis=0) if every_band else ok.any(axis=0)
    if mask is not None:
        ok &= np.asarray(mask) != 0
    return ok
