"""The closing summary of a prediction: per-class area, time and throughput."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from pyproj.exceptions import CRSError as ProjCRSError
from rasterio.crs import CRS
from rasterio.errors import CRSError as RioCRSError
from rasterio.transform import Affine


def _geod(crs: CRS):
    """The pyproj ``Geod`` of ``crs``'s ellipsoid (WGS84 when it names none)."""
    from pyproj import CRS as ProjCRS
    from pyproj import Geod

    geod = ProjCRS.from_user_input(crs.to_wkt()).get_geod()
    return geod if geod is not None else Geod(ellps="WGS84")


def pixel_size_m(
    crs: CRS, transform: Affine, height: int, width: int
) -> tuple[float, float] | None:
    """Ground size ``(x, y)`` in metres of one pixel (geographic CRS: geodesic, at the centre).

    Projected CRS: the pixel size times the CRS's linear unit. Geographic CRS: the geodesic
    distance (on the CRS's ellipsoid) of one pixel step east and one pixel step north from the
    scene's centre.

    Returns:
        ``None`` when there is no CRS or it has no usable unit.
    """
    if crs is None:
        return None
    if crs.is_projected:
        try:
            factor = float(crs.linear_units_factor[1])
        except (RioCRSError, ValueError, TypeError):  # CRS without a linear unit
            return None
        return abs(transform.a) * factor, abs(transform.e) * factor
    if not crs.is_geographic:
        return None
    try:
        geod = _geod(crs)
    except (ProjCRSError, RioCRSError):
        return None
    x0, y0 = transform @ (width / 2, height / 2)
    x1, y1 = transform @ (width / 2 + 1, height / 2 + 1)
    _, _, dx = geod.inv(x0, y0, x1, y0)
    _, _, dy = geod.inv(x0, y0, x0, y1)
    if not (math.isfinite(dx) and math.isfinite(dy)) or dx <= 0 or dy <= 0:
        return None
    return float(dx), float(dy)


def pixel_area_m2(crs: CRS, transform: Affine, height: int, width: int) -> float | None:
    """Area of one pixel in m² (projected CRS: exact; geographic: at the scene's centre).

    Returns ``None`` when the CRS has no usable unit.
    """
    area = abs(transform.a * transform.e - transform.b * transform.d)
    if crs is None:
        return None
    if crs.is_projected:
        try:
            factor = float(crs.linear_units_factor[1])
        except (RioCRSError, ValueError, TypeError):  # CRS without a linear unit
            return None
        return area * factor * factor
    try:
        geod = _geod(crs)
    except (ProjCRSError, RioCRSError):
        return None
    x0, y0 = transform @ (width / 2, height / 2)
    x1, y1 = transform @ (width / 2 + 1, height / 2 + 1)
    poly_area, _ = geod.polygon_area_perimeter([x0, x1, x1, x0], [y0, y0, y1, y1])
    return abs(poly_area)


@dataclass
class PredictSummary:
    """What a prediction produced.

    Attributes:
        scene: The optical scene.
        output: The class map written.
        width: Scene columns.
        height: Scene rows.
        class_names: Class names.
        counts: Pixels per class.
        nodata_pixels: Pixels written as nodata (scene had no data).
        pixel_area_m2: Area of one pixel in m² (``None`` if unknown).
        seconds: Wall time of the prediction (reading to last rename).
        windows: Number of windows predicted.
        extra_outputs: Other files written (probabilities, vectors, sidecars).
        aux_stats: Scene-wide aux statistics used for normalisation, if any.
        device: Device the model ran on.
        numeric_precision: Precision of the model's forward pass (``32``, ``bf16`` or ``16``).
    """

    scene: Path
    output: Path
    width: int
    height: int
    class_names: list[str]
    counts: list[int]
    nodata_pixels: int
    pixel_area_m2: float | None
    seconds: float
    windows: int
    extra_outputs: list[Path] = field(default_factory=list)
    aux_stats: dict[str, object] | None = None
    device: str = "cpu"
    numeric_precision: str = "32"

    @property
    def megapixels(self) -> float:
        """Scene size in megapixels."""
        return self.width * self.height / 1e6

    @property
    def mpix_per_s(self) -> float:
        """Throughput in megapixels per second."""
        return self.megapixels / self.seconds if self.seconds > 0 else float("inf")

    def areas_m2(self) -> list[float] | None:
        """Area per class in m² (``None`` if the pixel area is unknown)."""
        if self.pixel_area_m2 is None:
            return None
        return [c * self.pixel_area_m2 for c in self.counts]

    def percentages(self) -> list[float]:
        """Share of each class among the valid (non-nodata) pixels, in %."""
        total = sum(self.counts)
        return [100.0 * c / total if total else 0.0 for c in self.counts]

    def as_dict(self) -> dict[str, object]:
        """JSON-serialisable form."""
        areas = self.areas_m2()
        return {
            "scene": str(self.scene),
            "output": str(self.output),
            "width": self.width,
            "height": self.height,
            "classes": [
                {
                    "id": i,
                    "name": n,
                    "pixels": c,
                    "area_m2": areas[i] if areas else None,
                    "percent": p,
                }
                for i, (n, c, p) in enumerate(
                    zip(self.class_names, self.counts, self.percentages(), strict=True)
                )
            ],
            "nodata_pixels": self.nodata_pixels,
            "seconds": self.seconds,
            "mpix_per_s": self.mpix_per_s,
            "windows": self.windows,
            "device": self.device,
            "numeric_precision": self.numeric_precision,
            "extra_outputs": [str(p) for p in self.extra_outputs],
            "aux_stats": self.aux_stats,
        }

    def format(self) -> str:
        """Human-readable table (printed by ``rsprompt predict``)."""
        areas = self.areas_m2()
        width = max([len(n) for n in self.class_names] + [5])
        lines = [
            f"{self.output}  ({self.width}×{self.height} px, {self.windows} windows)",
            f"  {'class':<{width}}  {'area m²' if areas else 'pixels':>14}  {'share':>7}",
        ]
        for i, (name, pct) in enumerate(zip(self.class_names, self.percentages(), strict=True)):
            amount = f"{areas[i]:14,.1f}" if areas else f"{self.counts[i]:14,d}"
            lines.append(f"  {name:<{width}}  {amount}  {pct:6.2f}%")
        if self.nodata_pixels:
            lines.append(f"  {'(nodata)':<{width}}  {self.nodata_pixels:14,d} px")
        lines.append(
            f"  time {self.seconds:.1f} s, {self.megapixels:.2f} MPix, {self.mpix_per_s:.3f} MPix/s"
            f" ({self.device}, precision {self.numeric_precision})"
        )
        for p in self.extra_outputs:
            lines.append(f"  + {p}")
        return "\n".join(lines)
