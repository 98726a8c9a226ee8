"""ISPRS Vaihingen: IRRG orthophotos (NIR, R, G; no CRS) + DSM, 33 areas at 9 cm.

Reads the official distribution as unpacked: ``top/top_mosaic_09cm_area{N}.tif``,
``dsm/dsm_09cm_matching_area{N}.tif`` (optionally with ``.tfw`` world files) and the labels flat
in the root or in the folders named after the archives (see
:mod:`rsprompt.data.datasets.layouts`). Images and labels carry no CRS: each area's image, DSM and
label share the DSM's world-file grid when present, else a synthetic local grid (9 cm pixels, each
area at its own offset).

Example:
    >>> from rsprompt.data.datasets import Vaihingen  # doctest: +SKIP
    >>> ds = Vaihingen("data/vaihingen", split="train")  # doctest: +SKIP
    >>> x, y, _ = ds.bounds  # doctest: +SKIP
    >>> sample = ds[x.start : x.start + 25.6, y.start : y.start + 25.6]  # doctest: +SKIP
"""

from __future__ import annotations

from rsprompt.data.datasets.isprs import ISPRSDataset


class Vaihingen(ISPRSDataset):
    """ISPRS Vaihingen (IRRG + DSM); see :class:`~rsprompt.data.datasets.isprs.ISPRSDataset`."""

    dataset_name = "vaihingen"
    default_local_res = 0.09
