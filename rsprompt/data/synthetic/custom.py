"""Generated "own data": scenes, a DSM per scene and labels drawn as polygons in one GeoPackage.

What a user of :class:`~rsprompt.data.datamodules.RasterDataModule` typically has, written by
``rsprompt synth --layout custom`` for the "train on your own data" walkthrough
(``docs/own-data.md``) and the tests::

    OUT/scenes/scene_1.tif      optical, R,G,B,NIR (default), uint16 reflectance × 10 000 (default)
    OUT/dsm/scene_1_dsm.tif     DSM, float32 metres, nodata -9999 (any CRS/resolution asked for)
    OUT/labels.gpkg             layer "labels": polygons with a text attribute "landcover"

The scenes lie side by side (a gap between them) in one CRS; the polygons are the label rasters'
regions, one feature per connected region of a class, in ``labels_crs`` (default the scenes').
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from rasterio.crs import CRS

from rsprompt.data.synthetic.io import check_writable, write_scene, write_tiff
from rsprompt.data.synthetic.scene import generate_scene

#: Attribute of the polygons holding the class name.
LABEL_FIELD = "landcover"
#: Layer name of the polygons in the GeoPackage.
LABEL_LAYER = "labels"
#: uint16 scenes: 8-bit values × this, like reflectance × 10 000 (255 → 10 000).
UINT16_GAIN = 10000 / 255


def custom_paths(out: Path, count: int) -> dict[str, Path]:
    """The files :func:`write_custom` writes (``scene_i``, ``dsm_i``, ``labels``)."""
    paths: dict[str, Path] = {}
    for i in range(1, count + 1):
        paths[f"scene_{i}"] = out / "scenes" / f"scene_{i}.tif"
        paths[f"dsm_{i}"] = out / "dsm" / f"scene_{i}_dsm.tif"
    paths["labels"] = out / "labels.gpkg"
    return paths


def write_custom(
    out_dir: str | os.PathLike,
    *,
    count: int = 2,
    size: int | tuple[int, int] = 256,
    seed: int = 0,
    kind: str = "isprs",
    bands: str = "rgbir",
    dtype: str = "uint16",
    resolution: float | None = None,
    crs: str | None = None,
    aux_crs: str | None = None,
    aux_resolution: float | None = None,
    labels_crs: str | None = None,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Write ``count`` scenes with a DSM each and their labels as GeoPackage polygons.

    Args:
        out_dir: Output folder.
        count: Number of scenes (at least 1).
        size: Scene size in pixels.
        seed: Seed of scene 1 (scene ``i`` uses ``seed + i - 1``).
        kind: ``isprs`` (urban, 6 classes) or ``whu-opt-sar`` (7 land-cover classes).
        bands: Optical band order (``rgbir``, ``rgb``, ``irrg``).
        dtype: ``uint16`` (values × 10 000 / 255) or ``uint8``.
        resolution: Pixel size in metres (default the kind's).
        crs: CRS of the scenes (default the kind's UTM zone).
        aux_crs: CRS of the DSMs (default the scenes').
        aux_resolution: DSM pixel size in metres on the ground (default the scenes').
        labels_crs: CRS of the polygons (default the scenes').
        overwrite: Replace existing files.

    Returns:
        ``{"scene_1": …, "dsm_1": …, …, "labels": …}``.

    Raises:
        FileExistsError: If an output exists and ``overwrite`` is false (nothing is written).
        ValueError: For a bad option.
    """
    import geopandas as gpd
    import rasterio.features
    import shapely

    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    if dtype not in ("uint8", "uint16"):
        raise ValueError(f"dtype must be uint8 or uint16, got {dtype!r}")
    out = Path(out_dir)
    paths = custom_paths(out, count)
    check_writable(paths.values(), overwrite)
    scene_crs = crs or "auto"
    origin = None
    records = []
    for i in range(1, count + 1):
        scene = generate_scene(
            kind,  # type: ignore[arg-type]
            size,
            seed + i - 1,
            bands=bands,
            resolution=resolution,
            crs=scene_crs,
            origin=origin,
            aux="dsm",
        )
        left, _, right, top = scene.bounds
        origin = (right + 0.25 * (right - left), top)  # the next scene east, a gap between
        tmp = out / f".scene_{i}.tmp"
        written = write_scene(
            scene, tmp, aux_crs=aux_crs, aux_resolution=aux_resolution, overwrite=True
        )
        paths[f"dsm_{i}"].parent.mkdir(parents=True, exist_ok=True)
        os.replace(written["dsm"], paths[f"dsm_{i}"])
        for p in tmp.iterdir():
            p.unlink()
        tmp.rmdir()
        optical = scene.optical
        if dtype == "uint16":
            optical = np.rint(optical.astype(np.float64) * UINT16_GAIN).astype(np.uint16)
        write_tiff(paths[f"scene_{i}"], optical, crs=scene.crs, transform=scene.transform)
        names = scene.class_table.names
        for geom, value in rasterio.features.shapes(
            scene.labels.astype(np.uint8), transform=scene.transform
        ):
            if int(value) < len(names):
                records.append((names[int(value)], shapely.geometry.shape(geom)))
    gdf = gpd.GeoDataFrame(
        {LABEL_FIELD: [r[0] for r in records]},
        geometry=[r[1] for r in records],
        crs=CRS.from_user_input(scene.crs),
    )
    if labels_crs is not None:
        gdf = gdf.to_crs(CRS.from_user_input(labels_crs))
    tmp_gpkg = paths["labels"].with_name(f".{paths['labels'].name}.tmp.gpkg")
    gdf.to_file(tmp_gpkg, layer=LABEL_LAYER, driver="GPKG")
    os.replace(tmp_gpkg, paths["labels"])
    return paths
