"""Small numpy-only raster helpers for the synthetic scenes: noise fields, blur, label erosion."""

from __future__ import annotations

import numpy as np


def value_noise(rng: np.random.Generator, shape: tuple[int, int], cell: float) -> np.ndarray:
    """Smooth random field (bilinear value noise) with features about ``cell`` pixels wide.

    Returns a float32 ``H×W`` array with zero mean and unit standard deviation at the grid nodes.
    """
    h, w = shape
    cell = max(float(cell), 1.0)
    gh, gw = int(np.ceil(h / cell)) + 2, int(np.ceil(w / cell)) + 2
    grid = rng.standard_normal((gh, gw)).astype(np.float32)
    fy = (np.arange(h, dtype=np.float32) + 0.5) / cell
    fx = (np.arange(w, dtype=np.float32) + 0.5) / cell
    y0, x0 = fy.astype(np.int64), fx.astype(np.int64)
    ty, tx = fy - y0, fx - x0
    ty = ty * ty * (3 - 2 * ty)  # smoothstep: no visible grid creases
    tx = tx * tx * (3 - 2 * tx)
    rows = grid[y0] * (1 - ty)[:, None] + grid[y0 + 1] * ty[:, None]
    return rows[:, x0] * (1 - tx) + rows[:, x0 + 1] * tx


def fractal_noise(
    rng: np.random.Generator, shape: tuple[int, int], cell: float, octaves: int = 3
) -> np.ndarray:
    """Sum of ``octaves`` value-noise fields, each half the size and amplitude of the previous."""
    out = np.zeros(shape, np.float32)
    amp, total = 1.0, 0.0
    for _ in range(octaves):
        out += amp * value_noise(rng, shape, cell)
        total += amp * amp
        amp *= 0.5
        cell = max(cell / 2, 1.0)
    return out / np.float32(np.sqrt(total))


def blur3(arr: np.ndarray) -> np.ndarray:
    """Separable [1, 2, 1] / 4 blur over the last two axes (edges replicated)."""
    a = np.asarray(arr, np.float32)
    v = a * np.float32(0.5)
    v[..., 1:, :] += 0.25 * a[..., :-1, :]
    v[..., :1, :] += 0.25 * a[..., :1, :]
    v[..., :-1, :] += 0.25 * a[..., 1:, :]
    v[..., -1:, :] += 0.25 * a[..., -1:, :]
    o = v * np.float32(0.5)
    o[..., 1:] += 0.25 * v[..., :-1]
    o[..., :1] += 0.25 * v[..., :1]
    o[..., :-1] += 0.25 * v[..., 1:]
    o[..., -1:] += 0.25 * v[..., -1:]
    return o


def boundary_mask(labels: np.ndarray, radius: int) -> np.ndarray:
    """Pixels within ``radius`` (Euclidean, in pixels) of a pixel of another class.

    This is how the ISPRS "eroded" (noBoundary) ground truth was made: class borders are removed
    with a disc, so both sides of each border lose about ``radius`` pixels.
    """
    lab = np.asarray(labels)
    out = np.zeros(lab.shape, bool)
    if radius <= 0:
        return out
    h, w = lab.shape
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if (dy == 0 and dx == 0) or dy * dy + dx * dx > radius * radius:
                continue
            # Compare each pixel with its (dy, dx) neighbour, both inside the image.
            ys, yd = slice(max(dy, 0), h + min(dy, 0)), slice(max(-dy, 0), h + min(-dy, 0))
            xs, xd = slice(max(dx, 0), w + min(dx, 0)), slice(max(-dx, 0), w + min(-dx, 0))
            out[yd, xd] |= lab[yd, xd] != lab[ys, xs]
    return out
