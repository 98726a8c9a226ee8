"""In-memory synthetic multimodal scenes: :class:`Scene` and :func:`generate_scene`.

Two kinds of scene are generated, each with an optical raster, a height model (DSM) and a SAR
backscatter image on one grid, and labels:

- ``isprs``: an urban scene like ISPRS Vaihingen/Potsdam — a street grid (impervious) with cars,
  blocks of houses (rectangles and L-shapes, flat or pitched roofs 4–25 m high), paved yards,
  gardens (low vegetation), tree crowns with rough tops, and clutter. Classes
  :data:`rsprompt.data.labels.ISPRS_CLASSES` (0 impervious … 5 clutter).
- ``whu-opt-sar``: a 5 m landscape like WHU-OPT-SAR — farmland parcels, forest, rivers and lakes, a
  city, villages, roads and other land. Classes :data:`rsprompt.data.labels.WHU_OPT_SAR_CLASSES`
  (0 farmland … 6 others).

Roofs and impervious surfaces (ISPRS), and city and village (WHU), draw their colours and texture
from the SAME distributions on purpose: optical colour alone cannot tell them apart, the DSM (height
above ground) or SAR (backscatter) can, as in real data. The other classes stay optically
distinguishable (vegetation bright in NIR, trees strongly textured, cars small bright blobs on
roads, water dark in NIR, clutter random).

Object sizes are in pixels (``scale`` multiplies them; small scenes shrink them so that every scene
holds streets and buildings); heights are in metres.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal, NamedTuple

import numpy as np
from affine import Affine
from rasterio.crs import CRS

from rsprompt.data.labels import ISPRS_CLASSES, WHU_OPT_SAR_CLASSES, ClassTable
from rsprompt.data.synthetic.noise import blur3, fractal_noise, value_noise

Kind = Literal["isprs", "whu-opt-sar"]
KINDS: tuple[str, ...] = ("isprs", "whu-opt-sar")

#: Band names of each optical band order ("irrg" is the ISPRS false-colour order NIR, R, G).
BAND_ORDERS: dict[str, tuple[str, ...]] = {
    "irrg": ("nir", "r", "g"),
    "rgb": ("r", "g", "b"),
    "rgbir": ("r", "g", "b", "nir"),
}
_BAND_INDEX = {"r": 0, "g": 1, "b": 2, "nir": 3}

# ISPRS class indices (rsprompt.data.labels.ISPRS_CLASSES).
IMPERVIOUS, BUILDING, LOW_VEGETATION, TREE, CAR, CLUTTER = range(6)
# WHU-OPT-SAR class indices (rsprompt.data.labels.WHU_OPT_SAR_CLASSES, background excluded).
FARMLAND, CITY, VILLAGE, WATER, FOREST, ROAD, OTHERS = range(7)

#: Defaults per kind: resolution (m), CRS, upper-left corner, ground elevation (m), bands, aux.
KIND_DEFAULTS: dict[str, dict] = {
    "isprs": {
        "resolution": 0.09,
        "crs": "EPSG:32633",
        "origin": (366976.5, 5808562.6),
        "ground_level": 265.0,
        "bands": "irrg",
        "aux": "dsm",
    },
    "whu-opt-sar": {
        "resolution": 5.0,
        "crs": "EPSG:32649",
        "origin": (600000.0, 3380000.0),
        "ground_level": 30.0,
        "bands": "rgbir",
        "aux": "sar",
    },
}

#: Mean SAR backscatter (dB) per class before speckle.
SAR_MEAN_DB: dict[str, tuple[float, ...]] = {
    # impervious, building, low vegetation, tree, car, clutter
    "isprs": (-15.0, -6.0, -11.0, -7.0, 0.0, -6.0),
    # farmland, city, village, water, forest, road, others
    "whu-opt-sar": (-13.0, 0.0, -5.0, -22.0, -8.0, -17.0, -11.0),
}

# Texture kinds and their (fine, medium, low-frequency) relative brightness amplitudes.
_PAVED, _GRASS, _TREE, _CAR, _CLUTTER, _FIELD, _FOREST, _WATER, _BUILT = range(9)
_TEX_AMPS = np.array(
    [
        (0.05, 0.05, 0.04),  # paved: roofs AND impervious surfaces (identical on purpose)
        (0.04, 0.05, 0.08),  # grass
        (0.10, 0.22, 0.05),  # tree crowns: granular
        (0.02, 0.02, 0.00),  # cars
        (0.12, 0.18, 0.05),  # clutter
        (0.04, 0.04, 0.05),  # farmland
        (0.10, 0.20, 0.06),  # forest
        (0.03, 0.02, 0.05),  # water
        (0.10, 0.06, 0.04),  # built-up (city and village, identical on purpose)
    ],
    np.float32,
)


@dataclass
class Scene:
    """A synthetic multimodal scene in memory; every array is on the optical grid.

    Attributes:
        optical: uint8 ``C×H×W`` in the order of ``bands`` (``irrg`` = NIR, R, G; ``rgb``;
            ``rgbir`` = R, G, B, NIR).
        dsm: float32 ``H×W`` absolute heights in metres (terrain + objects), or ``None``.
        sar: float32 ``H×W`` backscatter in dB (with speckle), or ``None``.
        labels: uint8 ``H×W`` class indices ``0..K-1`` of :attr:`class_table`.
        crs: Projected CRS, or ``None`` for a non-georeferenced scene.
        transform: Affine transform of the optical grid (north-up).
        bands: Band order of ``optical``.
        kind: ``isprs`` or ``whu-opt-sar``.
        height: float32 ``H×W`` exact heights above ground (metres) of every object.
        ground: float32 ``H×W`` terrain elevation (metres).
        seed: Seed the scene was generated from.
    """

    optical: np.ndarray
    dsm: np.ndarray | None
    sar: np.ndarray | None
    labels: np.ndarray
    crs: CRS | None
    transform: Affine
    bands: str
    kind: str
    height: np.ndarray = field(repr=False, default=None)  # type: ignore[assignment]
    ground: np.ndarray = field(repr=False, default=None)  # type: ignore[assignment]
    seed: int | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)`` in pixels."""
        return tuple(self.labels.shape)  # type: ignore[return-value]

    @property
    def resolution(self) -> tuple[float, float]:
        """Pixel size ``(x, y)`` in CRS units (metres), both positive."""
        return (abs(self.transform.a), abs(self.transform.e))

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(left, bottom, right, top)`` of the optical grid."""
        h, w = self.shape
        t = self.transform
        left, top = t.c, t.f
        right, bottom = t.c + t.a * w + t.b * h, t.f + t.d * w + t.e * h
        return (min(left, right), min(top, bottom), max(left, right), max(top, bottom))

    @property
    def class_table(self) -> ClassTable:
        """The class table of :attr:`labels`."""
        return ISPRS_CLASSES if self.kind == "isprs" else WHU_OPT_SAR_CLASSES

    def ndsm(self) -> np.ndarray:
        """Heights above ground in metres (exact: known in synthesis), float32 ``H×W``."""
        return self.height.copy()

    def optical_as(self, bands: str) -> np.ndarray:
        """The optical raster in another band order (needs the bands to be present)."""
        return convert_bands(self.optical, self.bands, bands)

    def with_bands(self, bands: str) -> Scene:
        """A copy of the scene whose optical raster has the band order ``bands``."""
        return replace(self, optical=self.optical_as(bands), bands=bands)


def convert_bands(optical: np.ndarray, src: str, dst: str) -> np.ndarray:
    """Reorder a ``C×H×W`` optical array from band order ``src`` to ``dst``.

    Raises:
        ValueError: For an unknown band order or when ``src`` lacks a band ``dst`` needs (e.g.
            ``rgb`` → ``irrg``: there is no NIR).
    """
    for name in (src, dst):
        if name not in BAND_ORDERS:
            raise ValueError(
                f"unknown band order {name!r}; expected one of {', '.join(BAND_ORDERS)}"
            )
    have = BAND_ORDERS[src]
    missing = [b for b in BAND_ORDERS[dst] if b not in have]
    if missing:
        raise ValueError(f"cannot make {dst!r} from {src!r}: band(s) {missing} missing")
    return np.ascontiguousarray(optical[[have.index(b) for b in BAND_ORDERS[dst]]])


def sar_to_uint8(sar_db: np.ndarray, lo: float = -25.0, hi: float = 5.0) -> np.ndarray:
    """Scale SAR dB linearly to 8 bits (``lo`` → 1, ``hi`` → 255; NaN → 0), as distributed."""
    db = np.asarray(sar_db, np.float32)
    out = np.clip(np.rint(1 + (db - lo) * (254.0 / (hi - lo))), 1, 255)
    return np.where(np.isfinite(db), out, 0).astype(np.uint8)


def ndsm_to_uint8(ndsm: np.ndarray, metres_per_dn: float = 0.1) -> np.ndarray:
    """Encode heights above ground as 8 bits (default 0.1 m per step, saturating at 25.5 m)."""
    return np.clip(np.rint(np.asarray(ndsm) / metres_per_dn), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Painting on a grid whose (u, v) axes are rotated by ``angle`` (street grids are not north-up).


class _Canvas:
    def __init__(self, h: int, w: int, angle: float) -> None:
        self.h, self.w = h, w
        self.c, self.s = float(np.cos(angle)), float(np.sin(angle))
        x = np.arange(w, dtype=np.float32) + 0.5
        y = np.arange(h, dtype=np.float32) + 0.5
        self.U = x[None, :] * self.c + y[:, None] * self.s
        self.V = -x[None, :] * self.s + y[:, None] * self.c
        self.labels = np.zeros((h, w), np.uint8)
        self.height = np.zeros((h, w), np.float32)
        self.color = np.zeros((4, h, w), np.float32)
        self.tex = np.zeros((h, w), np.uint8)
        self.shade = np.ones((h, w), np.float32)

    def uv_extent(self) -> tuple[float, float, float, float]:
        xs = np.array([0, self.w, 0, self.w], np.float64)
        ys = np.array([0, 0, self.h, self.h], np.float64)
        u = xs * self.c + ys * self.s
        v = -xs * self.s + ys * self.c
        return float(u.min()), float(u.max()), float(v.min()), float(v.max())

    def uv_to_xy(self, u: float, v: float) -> tuple[float, float]:
        return u * self.c - v * self.s, u * self.s + v * self.c

    def _window(self, xs: np.ndarray, ys: np.ndarray) -> tuple[slice, slice] | None:
        x0, x1 = max(int(np.floor(xs.min())), 0), min(int(np.ceil(xs.max())) + 1, self.w)
        y0, y1 = max(int(np.floor(ys.min())), 0), min(int(np.ceil(ys.max())) + 1, self.h)
        if x0 >= x1 or y0 >= y1:
            return None
        return slice(y0, y1), slice(x0, x1)

    def rect(self, u0: float, u1: float, v0: float, v1: float):
        """Window and mask of the (u, v)-aligned rectangle, or None when it misses the scene."""
        us = np.array([u0, u1, u0, u1])
        vs = np.array([v0, v0, v1, v1])
        sl = self._window(us * self.c - vs * self.s, us * self.s + vs * self.c)
        if sl is None:
            return None
        U, V = self.U[sl], self.V[sl]
        mask = (U >= u0) & (U < u1) & (V >= v0) & (V < v1)
        return (sl, mask) if mask.any() else None

    def disc(self, cx: float, cy: float, r: float):
        """Window, mask and normalised squared distance of a disc in pixel coordinates."""
        sl = self._window(np.array([cx - r, cx + r]), np.array([cy - r, cy + r]))
        if sl is None:
            return None
        y = np.arange(sl[0].start, sl[0].stop, dtype=np.float32)[:, None] + 0.5
        x = np.arange(sl[1].start, sl[1].stop, dtype=np.float32)[None, :] + 0.5
        d2 = ((x - cx) ** 2 + (y - cy) ** 2) / np.float32(r * r)
        mask = d2 < 1
        return (sl, mask, d2) if mask.any() else None

    def paint(self, sl, mask, label: int, color, height, tex: int, shade=None) -> None:
        lab = self.labels[sl]
        lab[mask] = label
        hgt = self.height[sl]
        hgt[mask] = height[mask] if np.ndim(height) else height
        col = self.color[:, sl[0], sl[1]]
        col[:, mask] = np.asarray(color, np.float32)[:, None]
        self.tex[sl][mask] = tex
        if shade is not None:
            self.shade[sl][mask] = shade[mask] if np.ndim(shade) else shade


# --------------------------------------------------------------------------------------------
# Colour distributions (R, G, B, NIR; 0–255).


def _paved_color(rng: np.random.Generator) -> np.ndarray:
    """One colour of the mixture shared by roofs and impervious surfaces."""
    r = rng.random()
    if r < 0.55:  # grey: asphalt, concrete, grey roofs
        v = rng.uniform(75, 205)
        rgb = v * (1 + rng.uniform(-0.04, 0.04, 3))
        nir = v * rng.uniform(0.85, 1.05)
    elif r < 0.85:  # red-ish: tiles, red paving
        red = rng.uniform(130, 200)
        rgb = np.array([red, red * rng.uniform(0.5, 0.68), red * rng.uniform(0.4, 0.55)])
        nir = red * rng.uniform(0.75, 0.95)
    else:  # dark: tar, dark slate
        v = rng.uniform(45, 85)
        rgb = v * (1 + rng.uniform(-0.05, 0.05, 3))
        nir = v * rng.uniform(0.8, 1.1)
    return np.array([*rgb, nir], np.float32)


def _grass_color(rng: np.random.Generator) -> np.ndarray:
    return np.array(
        [rng.uniform(65, 100), rng.uniform(95, 130), rng.uniform(55, 80), rng.uniform(180, 230)],
        np.float32,
    )


def _tree_color(rng: np.random.Generator) -> np.ndarray:
    return np.array(
        [rng.uniform(45, 75), rng.uniform(70, 100), rng.uniform(45, 65), rng.uniform(135, 190)],
        np.float32,
    )


_CAR_PALETTE = np.array(
    [
        (235, 235, 235),  # white
        (200, 200, 205),  # silver
        (220, 40, 35),  # red
        (40, 70, 210),  # blue
        (235, 200, 40),  # yellow
        (60, 60, 65),  # dark
    ],
    np.float32,
)


def _car_color(rng: np.random.Generator) -> np.ndarray:
    rgb = _CAR_PALETTE[rng.choice(len(_CAR_PALETTE), p=[0.3, 0.25, 0.15, 0.12, 0.1, 0.08])]
    rgb = np.clip(rgb * rng.uniform(0.92, 1.05), 0, 255)
    return np.array([*rgb, rgb.mean() * rng.uniform(0.8, 1.0)], np.float32)


def _random_color(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(20, 245, 4).astype(np.float32)


# --------------------------------------------------------------------------------------------
# ISPRS urban scene.


class _Grid(NamedTuple):
    """The street grid of an ISPRS scene, in the canvas's rotated (u, v) coordinates."""

    s: float  # object-size factor (``scale``, shrunk on small scenes)
    su: float  # block spacing along u
    sv: float  # block spacing along v
    road_w: float  # street width
    walk_w: float  # sidewalk width
    off_u: float  # street line offset along u
    off_v: float  # street line offset along v
    umin: float
    umax: float
    vmin: float
    vmax: float


class _Pending:
    """Trees and cars planned while laying out the scene, painted once the layout is done."""

    def __init__(self, rng: np.random.Generator, s: float) -> None:
        self.rng, self.s = rng, s
        self.trees: list[tuple[float, float, float, float]] = []  # x, y, radius, top height
        self.cars: list[tuple[float, float, bool, float]] = []  # u, v, along_u, length

    def add_tree(self, x: float, y: float) -> None:
        """Plan a tree crown at pixel ``(x, y)`` (draws its radius, then its top height)."""
        self.trees.append(
            (x, y, max(self.rng.uniform(5, 13) * self.s, 1.5), self.rng.uniform(5, 18))
        )


def _isprs_grid(rng: np.random.Generator, h: int, w: int, scale: float) -> tuple[_Canvas, _Grid]:
    """Draw the street grid (spacing, angle, widths, offsets) and make the rotated canvas."""
    m = min(h, w)
    s = float(scale)
    spacing = rng.uniform(110, 170) * s
    if spacing > 0.8 * m:  # small scenes: shrink everything so streets and houses still fit
        s *= 0.8 * m / spacing
        spacing = 0.8 * m
    su = spacing
    sv = min(spacing * rng.uniform(0.8, 1.3), 0.95 * m)
    angle = 0.0 if rng.random() < 0.35 else rng.uniform(-np.pi / 4, np.pi / 4)
    cv = _Canvas(h, w, angle)
    road_w = max(rng.uniform(14, 22) * s, 3.0)
    walk_w = max(rng.uniform(2, 4) * s, 1.0)
    umin, umax, vmin, vmax = cv.uv_extent()
    uc, vc = (umin + umax) / 2, (vmin + vmax) / 2
    off_u = uc + rng.uniform(-0.5, 0.5) * su
    off_v = vc + rng.uniform(-0.5, 0.5) * sv
    grid = _Grid(s, su, sv, road_w, walk_w, off_u, off_v, umin, umax, vmin, vmax)
    return cv, grid


def _paint_streets(cv: _Canvas, rng: np.random.Generator, g: _Grid) -> None:
    """Lawn everywhere, then streets with sidewalks; each street line has its own colour."""
    # Ground: gardens and lawns.
    cv.color[:] = _grass_color(rng)[:, None, None]
    cv.labels[:] = LOW_VEGETATION
    cv.tex[:] = _GRASS

    # Streets with sidewalks (impervious); each street line has its own surface colour.
    su, sv = g.su, g.sv
    du = np.abs(np.mod(cv.U - g.off_u + su / 2, su) - su / 2)
    dv = np.abs(np.mod(cv.V - g.off_v + sv / 2, sv) - sv / 2)
    n_lines = 64
    line_colors = np.stack([_paved_color(rng) for _ in range(n_lines)], axis=1)
    walk = (du < g.road_w / 2 + g.walk_w) | (dv < g.road_w / 2 + g.walk_w)
    road_u, road_v = du < g.road_w / 2, dv < g.road_w / 2
    del du, dv
    cv.paint((slice(None), slice(None)), walk, IMPERVIOUS, _paved_color(rng), 0.0, _PAVED)
    for road, coord, off, sp, first in (
        (road_v, cv.V, g.off_v, sv, n_lines // 2),
        (road_u, cv.U, g.off_u, su, 0),
    ):
        k = np.floor((coord[road] - off + sp / 2) / sp).astype(np.int64) + first
        cv.color[:, road] = line_colors[:, np.mod(k, n_lines)]
        cv.labels[road] = IMPERVIOUS
        cv.tex[road] = _PAVED


def _paint_blocks(
    cv: _Canvas, rng: np.random.Generator, g: _Grid, pending: _Pending, car_len: float
) -> None:
    """Blocks between the streets, split into one or two lots each way (see :func:`_lot`)."""
    su, sv, s = g.su, g.sv, g.s
    inset = g.road_w / 2 + g.walk_w
    for bi in range(
        int(np.floor((g.umin - g.off_u) / su)) - 1, int(np.floor((g.umax - g.off_u) / su)) + 1
    ):
        for bj in range(
            int(np.floor((g.vmin - g.off_v) / sv)) - 1, int(np.floor((g.vmax - g.off_v) / sv)) + 1
        ):
            bu0, bu1 = g.off_u + bi * su + inset, g.off_u + (bi + 1) * su - inset
            bv0, bv1 = g.off_v + bj * sv + inset, g.off_v + (bj + 1) * sv - inset
            if bu1 < g.umin or bu0 > g.umax or bv1 < g.vmin or bv0 > g.vmax:
                continue
            if bu1 - bu0 < 6 or bv1 - bv0 < 6:
                continue
            nu = 1 if bu1 - bu0 < 70 * s else int(rng.integers(1, 3))
            nv = 1 if bv1 - bv0 < 70 * s else int(rng.integers(1, 3))
            for i in range(nu):
                for j in range(nv):
                    lu0 = bu0 + (bu1 - bu0) * i / nu
                    lu1 = bu0 + (bu1 - bu0) * (i + 1) / nu
                    lv0 = bv0 + (bv1 - bv0) * j / nv
                    lv1 = bv0 + (bv1 - bv0) * (j + 1) / nv
                    _lot(cv, rng, s, (lu0, lu1, lv0, lv1), pending.add_tree, pending.cars, car_len)


def _plan_street_side(
    cv: _Canvas, rng: np.random.Generator, g: _Grid, pending: _Pending, car_len: float
) -> None:
    """Plan cars parked along both sides of every street, and sometimes a row of street trees."""
    s, road_w = g.s, g.road_w
    umin, umax, vmin, vmax = g.umin, g.umax, g.vmin, g.vmax
    for along_u, off, sp, lo, hi in (
        (False, g.off_u, g.su, umin, umax),
        (True, g.off_v, g.sv, vmin, vmax),
    ):
        for k in range(int(np.floor((lo - off) / sp)) - 1, int(np.floor((hi - off) / sp)) + 2):
            centre = off + k * sp
            if not (lo - road_w < centre < hi + road_w):
                continue
            for side in (-1, 1):
                lane = centre + side * road_w / 4
                a, b = (umin, umax) if along_u else (vmin, vmax)
                pos = a + rng.exponential(5 * car_len)
                while pos < b:
                    if rng.random() < 0.6:
                        if along_u:
                            pending.cars.append((pos, lane, True, car_len))
                        else:
                            pending.cars.append((lane, pos, False, car_len))
                    pos += car_len * rng.uniform(1.3, 8)
            # Street trees along the sidewalks.
            if rng.random() < 0.3:
                pos = (umin if along_u else vmin) + rng.uniform(0, 30 * s)
                while pos < (umax if along_u else vmax):
                    t = centre + rng.choice([-1, 1]) * (road_w / 2 + g.walk_w)
                    x, y = cv.uv_to_xy(pos, t) if along_u else cv.uv_to_xy(t, pos)
                    pending.add_tree(x, y)
                    pos += rng.uniform(25, 45) * s


def _paint_cars(
    cv: _Canvas,
    rng: np.random.Generator,
    cars: list[tuple[float, float, bool, float]],
    car_wid: float,
) -> None:
    """Paint the planned cars whose centre lies on an impervious pixel (clipped to impervious)."""
    h, w = cv.h, cv.w
    for u, v, along_u, length in cars:
        x, y = cv.uv_to_xy(u, v)
        ix, iy = int(x), int(y)
        if not (0 <= ix < w and 0 <= iy < h) or cv.labels[iy, ix] != IMPERVIOUS:
            continue
        hl, hw = length / 2, car_wid / 2
        win = (
            cv.rect(u - hl, u + hl, v - hw, v + hw)
            if along_u
            else cv.rect(u - hw, u + hw, v - hl, v + hl)
        )
        if win is None:
            continue
        sl, mask = win
        mask &= cv.labels[sl] == IMPERVIOUS
        cv.paint(sl, mask, CAR, _car_color(rng), rng.uniform(1.4, 1.6), _CAR)


def _paint_trees(
    cv: _Canvas,
    rng: np.random.Generator,
    trees: list[tuple[float, float, float, float]],
    s: float,
) -> None:
    """Paint the planned tree crowns (domes with a rough top) everywhere but on buildings."""
    rough = fractal_noise(rng, (cv.h, cv.w), max(1.5 * s, 1.0), octaves=2)
    for x, y, r, top in trees:
        win = cv.disc(x, y, r)
        if win is None:
            continue
        sl, mask, d2 = win
        mask &= cv.labels[sl] != BUILDING
        dome = np.sqrt(np.clip(1 - d2, 0, 1))
        z = top * (0.55 + 0.45 * dome) + 0.6 * rough[sl]
        z = np.maximum(z, np.where(cv.labels[sl] == TREE, cv.height[sl], 0))
        cv.paint(sl, mask, TREE, _tree_color(rng), z, _TREE, shade=0.72 + 0.38 * dome)


def _gen_isprs(rng: np.random.Generator, h: int, w: int, scale: float) -> _Canvas:
    """Lay out and paint an ISPRS urban scene: streets, lots with houses, then cars and trees."""
    cv, g = _isprs_grid(rng, h, w, scale)
    _paint_streets(cv, rng, g)
    pending = _Pending(rng, g.s)
    car_len = max(0.65 * g.road_w, 3.0)
    car_wid = max(0.28 * g.road_w, 1.5)
    _paint_blocks(cv, rng, g, pending, car_len)
    _plan_street_side(cv, rng, g, pending, car_len)
    _paint_cars(cv, rng, pending.cars, car_wid)
    _paint_trees(cv, rng, pending.trees, g.s)
    return cv


def _lot(cv, rng, s, lot, add_tree, pending_cars, car_len) -> None:
    lu0, lu1, lv0, lv1 = lot
    mg = 2 * s
    lu0, lu1, lv0, lv1 = lu0 + mg, lu1 - mg, lv0 + mg, lv1 - mg
    Lu, Lv = lu1 - lu0, lv1 - lv0
    if Lu < 4 or Lv < 4:
        return

    def rand_rect(fmin: float, fmax: float) -> tuple[float, float, float, float]:
        a, b = rng.uniform(fmin, fmax) * Lu, rng.uniform(fmin, fmax) * Lv
        u0, v0 = lu0 + rng.uniform(0, Lu - a), lv0 + rng.uniform(0, Lv - b)
        return u0, u0 + a, v0, v0 + b

    def trees(n: int, rect=(lu0, lu1, lv0, lv1)) -> None:
        for _ in range(n):
            add_tree(*cv.uv_to_xy(rng.uniform(rect[0], rect[1]), rng.uniform(rect[2], rect[3])))

    kind = rng.random()
    if kind < 0.08:  # park
        trees(int(rng.integers(2, 7)))
        return
    if kind < 0.16:  # parking lot
        win = cv.rect(lu0, lu1, lv0, lv1)
        if win is not None:
            cv.paint(*win, IMPERVIOUS, _paved_color(rng), 0.0, _PAVED)
        along_u = Lu > Lv
        n = int(rng.integers(2, 9))
        for _ in range(n):
            pending_cars.append((rng.uniform(lu0, lu1), rng.uniform(lv0, lv1), along_u, car_len))
        return

    if rng.random() < 0.6:  # paved yard / driveway
        yard = rand_rect(0.25, 0.6)
        win = cv.rect(*yard)
        if win is not None:
            cv.paint(*win, IMPERVIOUS, _paved_color(rng), 0.0, _PAVED)
            if rng.random() < 0.35:
                pending_cars.append(
                    ((yard[0] + yard[1]) / 2, (yard[2] + yard[3]) / 2, Lu > Lv, car_len)
                )
    if rng.random() < 0.3:  # clutter: sheds, containers, heaps
        a, b = (rng.uniform(3, 9) * s for _ in range(2))
        u0, v0 = lu0 + rng.uniform(0, max(Lu - a, 0)), lv0 + rng.uniform(0, max(Lv - b, 0))
        win = cv.rect(u0, u0 + a, v0, v0 + b)
        if win is not None:
            cv.paint(*win, CLUTTER, _random_color(rng), rng.uniform(0.2, 2.5), _CLUTTER)

    # The house: a rectangle or an L-shape, flat or pitched roof.
    main = rand_rect(0.45, 0.8)
    if min(main[1] - main[0], main[3] - main[2]) >= 4:
        rects = [main]
        if rng.random() < 0.35:  # L-shape: a wing along one side
            u0, u1, v0, v1 = main
            ww = (u1 - u0) * rng.uniform(0.35, 0.6)
            ext = (lv1 - v1) * rng.uniform(0.4, 0.9)
            if ext >= 3:
                wu0 = u0 if rng.random() < 0.5 else u1 - ww
                rects.append((wu0, wu0 + ww, v1 - 1, v1 + ext))
        _building(cv, rng, rects)
    trees(int(rng.poisson(1.8)))


def _building(cv: _Canvas, rng: np.random.Generator, rects) -> None:
    color = _paved_color(rng)
    pitched = rng.random() < 0.5
    if pitched:
        eave = rng.uniform(4, 14)
        rise = min(rng.uniform(2, 6), 25 - eave)
    else:
        eave = rng.uniform(4, 22)
    for u0, u1, v0, v1 in rects:
        win = cv.rect(u0, u1, v0, v1)
        if win is None:
            continue
        sl, mask = win
        U, V = cv.U[sl], cv.V[sl]
        if pitched:  # gable roof, ridge along the long side
            if u1 - u0 >= v1 - v0:
                d = (V - (v0 + v1) / 2) / ((v1 - v0) / 2)
            else:
                d = (U - (u0 + u1) / 2) / ((u1 - u0) / 2)
            d = np.clip(d, -1, 1)
            z = eave + rise * (1 - np.abs(d))
            shade = np.where(d < 0, 1.06, 0.94).astype(np.float32)
        else:  # flat roof with a low parapet
            edge = np.minimum.reduce([U - u0, u1 - U, V - v0, v1 - V])
            z = eave + np.where(edge < 1.5, 0.5, 0.0)
            shade = None
        z = z.astype(np.float32)
        old = cv.labels[sl] == BUILDING
        z = np.where(old, np.maximum(z, cv.height[sl]), z)
        cv.paint(sl, mask, BUILDING, color, z, _PAVED, shade=shade)


# --------------------------------------------------------------------------------------------
# WHU-OPT-SAR landscape.


def _hash_cells(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    return np.mod(a * 73856093 + b * 19349663, n)


def _built_table(rng: np.random.Generator, n: int) -> np.ndarray:
    """Colours of built-up cells: shared by city and village (optically alike on purpose)."""
    out = np.empty((4, n), np.float32)
    for i in range(n):
        r = rng.random()
        if r < 0.6:
            v = rng.uniform(90, 200)
            out[:, i] = (v, v * 1.02, v * 1.05, v * 0.95)
        elif r < 0.8:
            red = rng.uniform(120, 180)
            out[:, i] = (red, red * 0.7, red * 0.6, red * 0.85)
        else:
            v = rng.uniform(60, 140)
            out[:, i] = (v * 0.8, v * 0.95, v * 1.2, v * 0.8)  # blue-ish metal roofs
    return out


_FULL = (slice(None), slice(None))


def _whu_farmland(cv: _Canvas, rng: np.random.Generator, s: float) -> np.ndarray:
    """Farmland parcels (one crop colour each) with darker ditches; returns the extra SAR (dB)."""
    pu, pv = max(rng.uniform(14, 32) * s, 4), max(rng.uniform(8, 20) * s, 3)
    iu = np.floor(cv.U / pu).astype(np.int64)
    jit = rng.uniform(0, pv, 97).astype(np.float32)[np.mod(iu, 97)]
    iv = np.floor((cv.V + jit) / pv).astype(np.int64)
    pid = _hash_cells(iu, iv, 4096)
    crops = np.array(
        [
            (75, 100, 60, 190),  # green crop
            (95, 115, 70, 165),  # young crop
            (150, 140, 95, 150),  # ripening (yellow)
            (125, 110, 90, 120),  # bare soil
        ],
        np.float32,
    ).T
    ctype = rng.choice(4, 4096, p=[0.4, 0.25, 0.15, 0.2])
    table = crops[:, ctype] * rng.uniform(0.88, 1.12, 4096).astype(np.float32)
    cv.color[:] = table[:, pid]
    cv.labels[:] = FARMLAND
    cv.tex[:] = _FIELD
    ditch = (np.mod(cv.U, pu) < 1.0) | (np.mod(cv.V + jit, pv) < 1.0)
    cv.shade[ditch] = 0.85
    sar_extra = np.zeros((cv.h, cv.w), np.float32)
    sar_extra += rng.normal(0, 2.5, 4096).astype(np.float32)[pid]  # parcel backscatter
    return sar_extra


def _whu_forest(cv: _Canvas, rng: np.random.Generator, s: float) -> np.ndarray:
    """Forest on the "hills" of a smooth field; returns the rough field villages reuse."""
    h, w = cv.h, cv.w
    relief = fractal_noise(rng, (h, w), min(h, w) / 3, octaves=3)
    forest = relief > np.quantile(relief, 1 - rng.uniform(0.1, 0.3))
    rough = fractal_noise(rng, (h, w), max(1.5 * s, 1.0), octaves=2)
    fc = np.array([40, 62, 42, 135], np.float32) * rng.uniform(0.9, 1.1)
    cv.paint(_FULL, forest, FOREST, fc, rng.uniform(10, 18) + 2.5 * rough, _FOREST)
    return rough


def _whu_others(cv: _Canvas, rng: np.random.Generator, s: float) -> None:
    """Other land: bare ground, construction sites, greenhouses (1–4 discs)."""
    for _ in range(int(rng.integers(1, 5))):
        cx, cy, r = rng.uniform(0, cv.w), rng.uniform(0, cv.h), max(rng.uniform(4, 12) * s, 2)
        win = cv.disc(cx, cy, r)
        if win is not None:
            sl, mask, _ = win
            col = (
                np.array([205, 205, 210, 185], np.float32)
                if rng.random() < 0.4
                else _random_color(rng)
            )
            cv.paint(sl, mask, OTHERS, col, rng.uniform(0, 3), _CLUTTER)


class _BuiltCells(NamedTuple):
    """Built-up cells shared by city and village: colour table, cell index map, cell heights."""

    colors: np.ndarray  # 4×4096 colours (:func:`_built_table`)
    cell: np.ndarray  # H×W cell index
    height: np.ndarray  # 4096 relative heights in [0, 1)


def _whu_built_cells(
    rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, s: float
) -> _BuiltCells:
    """Draw the built-up colour table, the cell size and the cells' relative heights."""
    built = _built_table(rng, 4096)
    bs = max(rng.uniform(2.5, 5) * s, 1.5)
    cell = _hash_cells(np.floor(xx / bs).astype(np.int64), np.floor(yy / bs).astype(np.int64), 4096)
    cell_h = rng.uniform(0, 1, 4096).astype(np.float32)
    return _BuiltCells(built, cell, cell_h)


def _whu_city(
    cv: _Canvas,
    rng: np.random.Generator,
    s: float,
    grid: tuple[np.ndarray, np.ndarray],
    cells: _BuiltCells,
    sar_extra: np.ndarray,
) -> None:
    """A city (3 times in 4): a distorted ellipse of tall built-up cells with a street grid."""
    if not rng.random() < 0.75:
        return
    h, w = cv.h, cv.w
    xx, yy = grid
    cx, cy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h
    rx, ry = rng.uniform(0.15, 0.35) * w, rng.uniform(0.15, 0.35) * h
    noise = value_noise(rng, (h, w), min(h, w) / 6)
    d = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 + 0.35 * noise
    city = d < 1
    z = 6 + 44 * cells.height[cells.cell] ** 2
    cv.labels[city] = CITY
    cv.color[:, city] = cells.colors[:, cells.cell[city]]
    cv.height[city] = z[city]
    cv.tex[city] = _BUILT
    sg = max(rng.uniform(10, 16) * s, 4)
    streets = city & ((np.mod(cv.U, sg) < max(1.5 * s, 1)) | (np.mod(cv.V, sg) < max(1.5 * s, 1)))
    # Inner-city streets: part of the city class (as annotated), only major roads are road.
    cv.paint(_FULL, streets, CITY, np.array([110, 112, 115, 100], np.float32), 0.0, _PAVED)
    sar_extra[city] += np.where(rng.random(int(city.sum())) < 0.04, 12.0, 0.0)


def _whu_villages(
    cv: _Canvas,
    rng: np.random.Generator,
    s: float,
    rough: np.ndarray,
    cells: _BuiltCells,
    sar_extra: np.ndarray,
) -> None:
    """Villages: 2–6 small built-up clusters with rough edges, outside the city."""
    for _ in range(int(rng.integers(2, 7))):
        cx, cy, r = rng.uniform(0, cv.w), rng.uniform(0, cv.h), max(rng.uniform(6, 16) * s, 3)
        win = cv.disc(cx, cy, r * 1.3)
        if win is None:
            continue
        sl, mask, d2 = win
        mask &= (d2 + 0.3 * rough[sl] < 0.75) & (cv.labels[sl] != CITY)
        z = 3 + 6 * cells.height[cells.cell[sl]]
        lab = cv.labels[sl]
        lab[mask] = VILLAGE
        cv.color[:, sl[0], sl[1]][:, mask] = cells.colors[:, cells.cell[sl][mask]]
        cv.height[sl][mask] = z[mask]
        cv.tex[sl][mask] = _BUILT
        sar_extra[sl][mask] += np.where(rng.random(int(mask.sum())) < 0.02, 10.0, 0.0)


def _whu_water(
    cv: _Canvas, rng: np.random.Generator, s: float, grid: tuple[np.ndarray, np.ndarray]
) -> None:
    """Water: sometimes a lake, usually a meandering river."""
    h, w = cv.h, cv.w
    m = min(h, w)
    xx, yy = grid
    wc = np.array([40, 62, 78, 18], np.float32) * rng.uniform(0.85, 1.15)
    if rng.random() < 0.5:
        lake_field = fractal_noise(rng, (h, w), m / 4, octaves=2)
        lake = lake_field > np.quantile(lake_field, 0.96)
        cv.paint(_FULL, lake, WATER, wc, 0.0, _WATER)
    if rng.random() < 0.8:
        ang = rng.uniform(0, np.pi)
        ru = xx * np.cos(ang) + yy * np.sin(ang)
        rv = -xx * np.sin(ang) + yy * np.cos(ang)
        rvc = -(w / 2) * np.sin(ang) + (h / 2) * np.cos(ang) + rng.uniform(-0.3, 0.3) * m
        lam, amp = rng.uniform(0.6, 1.5) * m, rng.uniform(0.03, 0.12) * m
        centre = rvc + amp * np.sin(2 * np.pi * ru / lam + rng.uniform(0, 2 * np.pi))
        river = np.abs(rv - centre) < max(rng.uniform(2, 5) * s, 1.2)
        cv.paint(_FULL, river, WATER, wc, 0.0, _WATER)


def _whu_roads(
    cv: _Canvas, rng: np.random.Generator, s: float, grid: tuple[np.ndarray, np.ndarray]
) -> None:
    """Roads: 1–3 straight lines across the scene (bridges cross the water)."""
    h, w = cv.h, cv.w
    xx, yy = grid
    rc = np.array([135, 135, 138, 120], np.float32)
    for _ in range(int(rng.integers(1, 4))):
        ang = rng.uniform(0, np.pi)
        px, py = rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h
        dist = np.abs(-(xx - px) * np.sin(ang) + (yy - py) * np.cos(ang))
        road = dist < max(rng.uniform(0.8, 1.8) * s, 0.75)
        cv.paint(_FULL, road, ROAD, rc * rng.uniform(0.9, 1.1), 0.0, _PAVED)


def _gen_whu(rng: np.random.Generator, h: int, w: int, scale: float) -> _Canvas:
    """Lay out and paint a WHU-OPT-SAR landscape, layer by layer (later layers paint over)."""
    s = float(scale) * min(1.0, min(h, w) / 96)
    cv = _Canvas(h, w, rng.uniform(-np.pi / 4, np.pi / 4))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    sar_extra = _whu_farmland(cv, rng, s)
    rough = _whu_forest(cv, rng, s)
    _whu_others(cv, rng, s)
    cells = _whu_built_cells(rng, xx, yy, s)
    _whu_city(cv, rng, s, (xx, yy), cells, sar_extra)
    _whu_villages(cv, rng, s, rough, cells, sar_extra)
    _whu_water(cv, rng, s, (xx, yy))
    _whu_roads(cv, rng, s, (xx, yy))
    cv.sar_extra = sar_extra  # type: ignore[attr-defined]
    return cv


# --------------------------------------------------------------------------------------------


def _simulate_sar(
    rng: np.random.Generator, cv: _Canvas, kind: str, looks: float, edge_db: float = 11.0
) -> np.ndarray:
    """Backscatter in dB: class means, double-bounce lines at walls facing the sensor, speckle.

    The sensor looks east from the west (range increases with x): where a building rises by
    more than 2 m from one pixel to the next, a bright 2-pixel line is added (wall–ground double
    bounce; tree crowns do not make one). Speckle is multiplicative gamma noise of ``looks`` looks on the linear intensity.
    """
    h, w = cv.labels.shape
    db = np.asarray(SAR_MEAN_DB[kind], np.float32)[cv.labels]
    db += 1.5 * value_noise(rng, (h, w), max(min(h, w) / 8, 2))
    db += getattr(cv, "sar_extra", 0.0)
    built = np.isin(cv.labels, (BUILDING,) if kind == "isprs" else (CITY, VILLAGE))
    wall = np.zeros((h, w), bool)
    wall[:, 1:] = ((cv.height[:, 1:] - cv.height[:, :-1]) > 2.0) & built[:, 1:]
    wall[:, :-1] |= wall[:, 1:]
    db[wall] += edge_db
    intensity = np.power(10.0, db / 10.0, dtype=np.float32)
    intensity *= rng.gamma(looks, 1.0 / looks, (h, w)).astype(np.float32)
    return (10.0 * np.log10(np.maximum(intensity, 1e-6))).astype(np.float32)


def _parse_size(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        h = w = int(size)
    else:
        h, w = (int(v) for v in size)
    if h < 8 or w < 8:
        raise ValueError(f"scene size must be at least 8×8 pixels, got {h}×{w}")
    return h, w


def _grid_options(
    kind: str,
    bands: str | None,
    aux: str | None,
    resolution: float | None,
    crs: str | int | CRS | None,
    origin: tuple[float, float] | None,
) -> tuple[dict, str, str, float, CRS | None, Affine]:
    """Check ``kind``/``bands``/``aux``/``resolution`` and fill in the kind's defaults.

    Returns:
        The kind's defaults, the band order, the aux, the resolution, the CRS and the transform.

    Raises:
        ValueError: For an unknown kind, band order or aux, or a non-positive resolution.
    """
    if kind not in KIND_DEFAULTS:
        raise ValueError(f"unknown scene kind {kind!r}; expected one of {', '.join(KINDS)}")
    d = KIND_DEFAULTS[kind]
    bands = bands or d["bands"]
    if bands not in BAND_ORDERS:
        raise ValueError(f"unknown band order {bands!r}; expected one of {', '.join(BAND_ORDERS)}")
    aux = aux or d["aux"]
    if aux not in ("dsm", "sar", "both"):
        raise ValueError(f"aux must be 'dsm', 'sar' or 'both', got {aux!r}")
    res = float(resolution if resolution is not None else d["resolution"])
    if not res > 0:
        raise ValueError(f"resolution must be positive, got {res}")
    if isinstance(crs, str) and crs == "auto":
        crs = d["crs"]
    crs_obj = None if crs is None else CRS.from_user_input(crs)
    x0, y0 = origin if origin is not None else d["origin"]
    transform = Affine(res, 0.0, float(x0), 0.0, -res, float(y0))
    return d, bands, aux, res, crs_obj, transform


def _render_optical(trng: np.random.Generator, cv: _Canvas, kind: str, scale: float) -> np.ndarray:
    """Optical ``4×H×W`` uint8 (R, G, B, NIR): colour × texture × shading, sensor noise, blur."""
    h, w = cv.h, cv.w
    m = min(h, w)
    tex = cv.tex
    mult = _TEX_AMPS[:, 0][tex] * trng.standard_normal((h, w), np.float32)
    mult += _TEX_AMPS[:, 1][tex] * value_noise(
        trng, (h, w), 2.5 * scale if kind == "isprs" else 1.5
    )
    mult += _TEX_AMPS[:, 2][tex] * fractal_noise(trng, (h, w), max(m / 4, 4), octaves=2)
    mult += 1.0
    mult *= cv.shade
    sensor = trng.standard_normal((h, w), np.float32) * np.float32(1.5)
    rgbn = np.empty((4, h, w), np.uint8)
    for b in range(4):  # band by band: bounded memory on large scenes
        band = cv.color[b] * mult
        band += np.roll(sensor, (b * 7) % h, axis=0) if b else sensor  # independent per band
        band = 0.4 * band + 0.6 * blur3(band)
        rgbn[b] = np.clip(np.rint(band), 0, 255)
    return rgbn


def _terrain(
    grng: np.random.Generator, kind: str, shape: tuple[int, int], level: float, res: float
) -> np.ndarray:
    """Terrain elevation (float32 ``H×W``): a gentle plane plus low-frequency relief."""
    h, w = shape
    m = min(h, w)
    grade = 0.03 if kind == "isprs" else 0.004  # up to 3 % in town, 0.4 % on the plain
    gx, gy = grng.uniform(-grade, grade, 2) * res
    extent = m * res
    yy = np.arange(h, dtype=np.float32)[:, None]
    xx = np.arange(w, dtype=np.float32)[None, :]
    relief_amp = min(2.0, 0.02 * extent)
    return (
        level + gx * xx + gy * yy + relief_amp * fractal_noise(grng, (h, w), max(m / 2, 4), 2)
    ).astype(np.float32)


def _object_heights(grng: np.random.Generator, cv: _Canvas, kind: str) -> np.ndarray:
    """Heights above ground of the objects; ISPRS lawns get a little grass roughness."""
    height = cv.height
    if kind == "isprs":  # grass roughness
        height = np.where(
            cv.labels == LOW_VEGETATION,
            np.abs(0.12 * grng.standard_normal((cv.h, cv.w), np.float32)),
            height,
        ).astype(np.float32)
    return height


def generate_scene(
    kind: Kind = "isprs",
    size: int | tuple[int, int] = 256,
    seed: int = 0,
    *,
    bands: str | None = None,
    resolution: float | None = None,
    crs: str | int | CRS | None = "auto",
    origin: tuple[float, float] | None = None,
    aux: str | None = None,
    scale: float = 1.0,
    ground_level: float | None = None,
    sar_looks: float = 4.0,
) -> Scene:
    """Generate a seeded synthetic multimodal scene in memory.

    The same ``(kind, size, seed, scale)`` always gives the same scene content (labels, heights,
    colours), whatever the band order, resolution or CRS.

    Args:
        kind: ``isprs`` (urban, 6 ISPRS classes) or ``whu-opt-sar`` (landscape, 7 WHU classes).
        size: Pixels, ``N`` or ``(height, width)``; at least 8.
        seed: Random seed.
        bands: Optical band order ``irrg`` (NIR, R, G), ``rgb`` or ``rgbir`` (R, G, B, NIR).
            Default ``irrg`` for ``isprs``, ``rgbir`` for ``whu-opt-sar``.
        resolution: Pixel size in metres (default 0.09 for ``isprs``, 5.0 for ``whu-opt-sar``).
        crs: Projected CRS (``"EPSG:32633"``, an EPSG code or a CRS); ``"auto"`` (default) picks
            EPSG:32633 for ``isprs`` and EPSG:32649 for ``whu-opt-sar``; ``None`` makes a scene
            without CRS.
        origin: Upper-left corner ``(x, y)`` in CRS units (default: Potsdam tile 2_10's corner for
            ``isprs``, a point in UTM 49N for ``whu-opt-sar``).
        aux: ``dsm``, ``sar`` or ``both``: which of :attr:`Scene.dsm` / :attr:`Scene.sar` to fill
            (default ``dsm`` for ``isprs``, ``sar`` for ``whu-opt-sar``). The heights
            (:meth:`Scene.ndsm`) are always available.
        scale: Multiplies object sizes in pixels (1.0: streets ~18 px wide, blocks ~140 px).
        ground_level: Terrain elevation in metres (default 265 for ``isprs``, as in Vaihingen's
            240–360 m DSMs; 30 for ``whu-opt-sar``).
        sar_looks: Equivalent number of looks of the speckle (smaller = noisier).

    Returns:
        The :class:`Scene`.

    Raises:
        ValueError: For an unknown kind, band order or aux, or a size below 8 pixels.

    Example:
        >>> s = generate_scene("isprs", 64, seed=1)
        >>> s.optical.shape, s.optical.dtype.name, s.dsm.dtype.name, s.crs.to_epsg()
        ((3, 64, 64), 'uint8', 'float32', 32633)
    """
    d, bands, aux, res, crs_obj, transform = _grid_options(
        kind, bands, aux, resolution, crs, origin
    )
    h, w = _parse_size(size)

    # Independent streams: layout, texture, terrain and SAR do not shift each other.
    layout_ss, tex_ss, terrain_ss, sar_ss = np.random.SeedSequence([int(seed), 7]).spawn(4)
    rng = np.random.default_rng(layout_ss)
    cv = _gen_isprs(rng, h, w, scale) if kind == "isprs" else _gen_whu(rng, h, w, scale)
    rgbn = _render_optical(np.random.default_rng(tex_ss), cv, kind, scale)
    optical = convert_bands(rgbn, "rgbir", bands)

    # DSM = terrain + objects + noise.
    grng = np.random.default_rng(terrain_ss)
    level = float(ground_level if ground_level is not None else d["ground_level"])
    ground = _terrain(grng, kind, (h, w), level, res)
    height = _object_heights(grng, cv, kind)
    dsm = None
    if aux in ("dsm", "both"):
        dsm = (ground + height + grng.normal(0, 0.05, (h, w)).astype(np.float32)).astype(np.float32)
    sar = None
    if aux in ("sar", "both"):
        cv.height = height
        sar = _simulate_sar(np.random.default_rng(sar_ss), cv, kind, sar_looks)

    return Scene(
        optical=optical,
        dsm=dsm,
        sar=sar,
        labels=cv.labels,
        crs=crs_obj,
        transform=transform,
        bands=bands,
        kind=kind,
        height=height.astype(np.float32),
        ground=ground,
        seed=int(seed),
    )
