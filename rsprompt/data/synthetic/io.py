"""Writing synthetic scenes: atomic GeoTIFF/JPEG writers and :func:`write_scene`."""

from __future__ import annotations

import math
import os
import uuid
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from pyproj import Transformer
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning
from rasterio.warp import reproject, transform_bounds

from rsprompt.data.labels import IGNORE_INDEX
from rsprompt.data.synthetic.scene import BAND_ORDERS, Scene

#: Band descriptions written into the optical GeoTIFFs.
BAND_DESCRIPTIONS = {"r": "red", "g": "green", "b": "blue", "nir": "nir"}


def check_writable(paths: Iterable[Path], overwrite: bool) -> None:
    """Raise :class:`FileExistsError` listing the paths that exist, unless ``overwrite``."""
    if overwrite:
        return
    existing = [str(p) for p in paths if Path(p).exists()]
    if existing:
        more = f" (and {len(existing) - 3} more)" if len(existing) > 3 else ""
        raise FileExistsError(
            f"output exists: {', '.join(existing[:3])}{more}; "
            "pass overwrite=True (--overwrite) to replace it"
        )


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it to ``path``.

    A reader never sees a half-written file, and a failure leaves no partial output behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
        side = tmp.with_name(tmp.name + ".aux.xml")
        if side.exists():
            os.replace(side, path.with_name(path.name + ".aux.xml"))
    finally:
        for p in (tmp, tmp.with_name(tmp.name + ".aux.xml")):
            if p.exists():
                p.unlink()
    return path


def write_tiff(
    path: Path,
    array: np.ndarray,
    *,
    crs: CRS | None = None,
    transform: Affine | None = None,
    nodata: float | None = None,
    photometric: str | None = None,
    colormap: dict[int, tuple[int, ...]] | None = None,
    descriptions: tuple[str, ...] | None = None,
    compress: str | None = "deflate",
) -> Path:
    """Write a ``C×H×W`` (or ``H×W``) array as a GeoTIFF, atomically.

    ``transform=None`` and ``crs=None`` write a TIFF without any georeferencing (as ISPRS
    Vaihingen is distributed). 4-band uint8 rasters default to ``photometric="MINISBLACK"`` so
    that band 4 (NIR) is not taken for alpha.
    """
    arr = np.asarray(array)
    if arr.ndim == 2:
        arr = arr[None]
    count, h, w = arr.shape
    profile: dict = {
        "driver": "GTiff",
        "width": w,
        "height": h,
        "count": count,
        "dtype": arr.dtype.name,
    }
    if crs is not None:
        profile["crs"] = crs
    if transform is not None:
        profile["transform"] = transform
    if nodata is not None:
        profile["nodata"] = nodata
    if compress:
        profile["compress"] = compress
        if arr.dtype.kind == "f":
            profile["predictor"] = 3
    if h >= 256 and w >= 256:
        profile.update(tiled=True, blockxsize=256, blockysize=256)
    if photometric is None and count == 4 and arr.dtype == np.uint8:
        photometric = "MINISBLACK"
    if photometric is not None:
        profile["photometric"] = photometric

    def write(tmp: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(tmp, "w", **profile) as dst:
                dst.write(arr)
                if colormap is not None:
                    dst.write_colormap(1, colormap)
                if descriptions is not None:
                    for i, d in enumerate(descriptions, start=1):
                        dst.set_band_description(i, d)

    return atomic_write(Path(path), write)


def write_jpeg(path: Path, array: np.ndarray, quality: int = 90) -> Path:
    """Write a single-band uint8 array as a JPEG, atomically."""
    from PIL import Image

    def write(tmp: Path) -> None:
        Image.fromarray(np.asarray(array, np.uint8)).save(tmp, format="JPEG", quality=quality)

    return atomic_write(Path(path), write)


def write_world_file(path: Path, transform: Affine) -> Path:
    """Write an ESRI world file (``.tfw``): pixel size, rotation, centre of the upper-left pixel."""
    t = transform
    cx, cy = t.c + 0.5 * (t.a + t.b), t.f + 0.5 * (t.d + t.e)
    lines = [t.a, t.d, t.b, t.e, cx, cy]
    text = "".join(f"{v:.10f}\n" for v in lines)
    return atomic_write(Path(path), lambda tmp: tmp.write_text(text))


def label_colormap(scene: Scene) -> dict[int, tuple[int, int, int, int]]:
    """Colour table of a label raster: class colours, everything else transparent black."""
    cmap = {i: (0, 0, 0, 0) for i in range(256)}
    for i, c in enumerate(scene.class_table.colors):
        cmap[i] = (*c, 255)
    return cmap


def optical_descriptions(bands: str) -> tuple[str, ...]:
    """Band descriptions for an optical band order (``irrg`` → nir, red, green)."""
    return tuple(BAND_DESCRIPTIONS[b] for b in BAND_ORDERS[bands])


# --------------------------------------------------------------------------------------------


def _in_metres(crs: CRS) -> bool:
    """Whether ``crs`` is projected with metre axes (its units are ground metres)."""
    if not crs.is_projected:
        return False
    factor = crs.linear_units_factor[1] if crs.linear_units_factor else None
    return factor is not None and math.isclose(factor, 1.0)


def aux_pixel_size(scene: Scene, crs: CRS | None, metres: float) -> tuple[float, float]:
    """``(x, y)`` pixel size in ``crs`` units of a pixel ``metres`` wide on the ground.

    In the scene's CRS or any metre-based projected CRS that is ``metres`` itself. In another CRS
    (geographic degrees, feet) a step of ``metres`` east and north of the scene's centre is
    transformed into ``crs``: the ground resolution converted at the scene centre.
    """
    if crs is None or scene.crs is None or crs == scene.crs or _in_metres(crs):
        return metres, metres
    left, bottom, right, top = scene.bounds
    cx, cy = (left + right) / 2, (bottom + top) / 2
    to_aux = Transformer.from_crs(scene.crs, crs, always_xy=True)
    x0, y0 = to_aux.transform(cx, cy)
    xe, _ = to_aux.transform(cx + metres, cy)
    _, yn = to_aux.transform(cx, cy + metres)
    size = (abs(xe - x0), abs(yn - y0))
    if not all(math.isfinite(v) and v > 0 for v in size):
        raise ValueError(f"cannot express a {metres} m pixel in {crs} at the scene's centre")
    return size


def aux_grid(
    scene: Scene,
    crs: str | int | CRS | None = None,
    resolution: float | None = None,
    coverage: float = 1.0,
) -> tuple[CRS | None, Affine, int, int]:
    """The grid ``(crs, transform, width, height)`` of an auxiliary raster of ``scene``.

    The auxiliary raster covers the north-west part of the optical footprint holding about
    ``coverage`` of its area (both sides scaled by ``sqrt(coverage)``), in ``crs`` (default: the
    scene's) with pixels ``resolution`` metres on the ground (default: the scene's resolution;
    in a CRS not in metres, e.g. EPSG:4326, converted to its units at the scene centre, see
    :func:`aux_pixel_size`), snapped outward to multiples of the pixel size. In another CRS the
    footprint's bounding box is used, so corners outside the optical footprint come out as
    nodata, as with real rasters.
    """
    if not 0 < coverage <= 1:
        raise ValueError(f"aux coverage must be in (0, 1], got {coverage}")
    dst_crs = scene.crs if crs is None else CRS.from_user_input(crs)
    if scene.crs is None and dst_crs is not None:
        raise ValueError("the scene has no CRS: the aux raster cannot be put in another CRS")
    left, bottom, right, top = scene.bounds
    f = math.sqrt(coverage)
    right = left + f * (right - left)
    bottom = top - f * (top - bottom)
    if dst_crs is not None and scene.crs is not None and dst_crs != scene.crs:
        left, bottom, right, top = transform_bounds(
            scene.crs, dst_crs, left, bottom, right, top, densify_pts=21
        )
    metres = float(resolution) if resolution is not None else scene.resolution[0]
    if not metres > 0:
        raise ValueError(f"aux resolution must be positive, got {metres}")
    rx, ry = aux_pixel_size(scene, dst_crs, metres)
    eps = 1e-9 * max(abs(left), abs(top), 1.0)
    x0 = math.floor(left / rx + eps) * rx
    y0 = math.ceil(top / ry - eps) * ry
    if metres == rx == ry:  # keep round coordinates round (0.5 m grids)
        x0, y0 = round(x0, 9), round(y0, 9)
    width = max(1, math.ceil((right - x0) / rx - eps))
    height = max(1, math.ceil((y0 - bottom) / ry - eps))
    return dst_crs, Affine(rx, 0.0, x0, 0.0, -ry, y0), width, height


def _ground_size(crs: CRS, transform: Affine, width: int, height: int, to: CRS) -> float:
    """Ground size (``to``'s units) of the centre pixel's diagonal step of a grid, over √2."""
    cx, cy = transform @ (width / 2, height / 2)
    ex, ey = transform @ (width / 2 + 1, height / 2 + 1)
    tr = Transformer.from_crs(crs, to, always_xy=True)
    (ax, bx), (ay, by) = tr.transform([cx, ex], [cy, ey])
    return math.hypot(bx - ax, by - ay) / math.sqrt(2)


def resample_aux(
    scene: Scene,
    array: np.ndarray,
    crs: CRS | None,
    transform: Affine,
    width: int,
    height: int,
    nodata: float,
) -> np.ndarray:
    """Warp an ``H×W`` float array from the scene's grid onto another grid (outside = nodata)."""
    dst = np.full((height, width), nodata, np.float32)
    # A scene without CRS: warp within an arbitrary projected CRS (no actual transformation).
    src_crs = scene.crs or CRS.from_epsg(3857)
    dst_crs = crs or src_crs
    pixel = abs(transform.a)
    if crs is not None and scene.crs is not None and crs != scene.crs:
        pixel = _ground_size(crs, transform, width, height, scene.crs)
    coarser = pixel > 1.5 * scene.resolution[0]
    reproject(
        source=np.asarray(array, np.float32),
        destination=dst,
        src_transform=scene.transform,
        src_crs=src_crs,
        dst_transform=transform,
        dst_crs=dst_crs,
        src_nodata=None,
        dst_nodata=nodata,
        resampling=Resampling.average if coarser else Resampling.bilinear,
    )
    return dst


def write_scene(
    scene: Scene,
    out_dir: str | os.PathLike,
    *,
    aux_crs: str | int | CRS | None = None,
    aux_resolution: float | None = None,
    aux_coverage: float = 1.0,
    aux_nodata_border: int = 0,
    aux_nodata: float = -9999.0,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Write a scene as georeferenced GeoTIFFs: ``scene.tif``, ``dsm.tif``/``sar.tif``, ``labels.tif``.

    - ``scene.tif``: the optical raster (uint8, band order of the scene, band descriptions set;
      4-band rasters with ``photometric=MINISBLACK`` so NIR is not alpha).
    - ``dsm.tif`` (float32 metres) and/or ``sar.tif`` (float32 dB), whichever the scene has, with
      nodata ``aux_nodata``; on the optical grid unless any ``aux_*`` option asks otherwise.
    - ``labels.tif``: uint8 class indices with an embedded colour table, nodata 255.

    Args:
        scene: The scene (from :func:`~rsprompt.data.synthetic.generate_scene`).
        out_dir: Output folder (created when missing).
        aux_crs: Write the DSM/SAR in this CRS (e.g. ``"EPSG:32632"`` for a scene in 32633).
        aux_resolution: Pixel size of the DSM/SAR in metres on the ground (e.g. 0.5 for a
            0.09 m scene); default the scene's. In a CRS not in metres (EPSG:4326) it is
            converted to that CRS's units at the scene centre.
        aux_coverage: Fraction (0, 1] of the optical footprint's area the DSM/SAR covers (its
            north-west part); the rest is simply absent from the aux raster.
        aux_nodata_border: Width in aux pixels of a nodata frame around the DSM/SAR.
        aux_nodata: Nodata value of the float DSM/SAR.
        overwrite: Replace existing files; otherwise an existing output raises.

    Returns:
        ``{"image": …, "dsm": …, "sar": …, "label": …}`` (only the modalities written).

    Raises:
        FileExistsError: If an output exists and ``overwrite`` is false (nothing is written).
        ValueError: For inconsistent aux options.
    """
    out = Path(out_dir)
    paths = {"image": out / "scene.tif"}
    if scene.dsm is not None:
        paths["dsm"] = out / "dsm.tif"
    if scene.sar is not None:
        paths["sar"] = out / "sar.tif"
    paths["label"] = out / "labels.tif"
    if aux_nodata_border < 0:
        raise ValueError(f"aux nodata border must be >= 0, got {aux_nodata_border}")
    same_crs = aux_crs is None or (
        scene.crs is not None and CRS.from_user_input(aux_crs) == CRS.from_user_input(scene.crs)
    )
    same_grid = same_crs and aux_resolution is None and aux_coverage == 1.0
    grid = None if same_grid else aux_grid(scene, aux_crs, aux_resolution, aux_coverage)
    check_writable(paths.values(), overwrite)

    write_tiff(
        paths["image"],
        scene.optical,
        crs=scene.crs,
        transform=scene.transform,
        descriptions=optical_descriptions(scene.bands),
    )
    for key in ("dsm", "sar"):
        arr = getattr(scene, key)
        if arr is None:
            continue
        if grid is None:
            crs, transform = scene.crs, scene.transform
            data = np.asarray(arr, np.float32).copy()
        else:
            crs, transform, width, height = grid
            data = resample_aux(scene, arr, crs, transform, width, height, aux_nodata)
        if aux_nodata_border:
            b = int(aux_nodata_border)
            data[:b] = aux_nodata
            data[-b:] = aux_nodata
            data[:, :b] = aux_nodata
            data[:, -b:] = aux_nodata
        write_tiff(
            paths[key],
            data,
            crs=crs,
            transform=transform,
            nodata=aux_nodata,
            descriptions=("height (m)" if key == "dsm" else "backscatter (dB)",),
        )
    write_tiff(
        paths["label"],
        scene.labels,
        crs=scene.crs,
        transform=scene.transform,
        nodata=IGNORE_INDEX,
        colormap=label_colormap(scene),
        descriptions=("class",),
    )
    return paths
