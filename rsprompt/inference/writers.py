"""Writers for GIS-ready outputs: class COG, QGIS style, raster attribute table, vectors.

- The class map is streamed strip by strip into a temporary GeoTIFF (:class:`StripWriter`, whose
  blocks the writes fill completely), then copied to a Cloud-Optimised GeoTIFF with GDAL's COG
  driver (internal NEAREST/MODE overviews, 512 tiles, DEFLATE or ZSTD), keeping the colour table
  and nodata value.
- Sidecars: a same-named ``.qml`` (QGIS "paletted" renderer with the class names) and a GDAL
  raster attribute table in ``.aux.xml``.
- Output safety: every path a run writes is planned and checked first (:func:`check_planned`:
  never an input, never a folder, existing files only with ``overwrite``); each output is locked
  for the run (:func:`locked_outputs`, so a second run on it refuses) and stale temporary files of
  killed runs are removed; every output goes to a hidden temporary file in its destination folder
  first and :class:`AtomicOutputs` renames them all at the end (rolling back on failure), or
  deletes them all on error.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import numpy as np
import rasterio
import rasterio.shutil
from rasterio._err import CPLE_BaseError
from rasterio.crs import CRS
from rasterio.enums import ColorInterp
from rasterio.errors import RasterioError
from rasterio.transform import Affine
from rasterio.windows import Window as RioWindow

from rsprompt.inference.reader import PredictError

try:
    import fcntl
except ImportError:  # Windows: outputs are not locked
    fcntl = None  # type: ignore[assignment]

#: Tile size of every raster written.
BLOCK = 512


def class_dtype(num_classes: int) -> tuple[str, int]:
    """Data type and nodata value of a class map with ``num_classes`` classes.

    uint8 with nodata 255 up to 255 classes, else uint16 with nodata 65535 (never a class).
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if num_classes <= 255:
        return "uint8", 255
    if num_classes <= 65535:
        return "uint16", 65535
    raise ValueError(f"{num_classes} classes do not fit in a uint16 class map")


def hex_color(rgb: Sequence[int]) -> str:
    """``(r, g, b)`` → ``#rrggbb``."""
    r, g, b = (int(c) for c in rgb[:3])
    return f"#{r:02x}{g:02x}{b:02x}"


# ---------------------------------------------------------------------------- output safety
#: Kinds of hidden files this module creates next to an output (see :func:`temp_name`).
_TEMP_KINDS = ("tmp", "scratch", "bak")


class OutputError(PredictError):
    """An output cannot be written (exists, is an input, folder missing, locked, disk full…)."""


class OutputLockedError(OutputError):
    """Another process is writing the same output (its lock file is held)."""


def temp_name(final: str | Path, kind: str, suffix: str | None = None) -> Path:
    """A fresh hidden name next to ``final``: ``.{name}.{pid}-{8 hex}.{kind}{suffix}``.

    The process id lets a later run recognise the leftovers of a killed one (see
    :func:`remove_stale_temps`); a name that already exists is never returned.
    """
    final = Path(final)
    if kind not in _TEMP_KINDS:
        raise ValueError(f"unknown temporary kind {kind!r}")
    suffix = final.suffix if suffix is None else suffix
    while True:
        tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        path = final.with_name(f".{final.name}.{tag}.{kind}{suffix}")
        if not os.path.lexists(path):
            return path


def gdal_sidecars(path: str | Path) -> list[Path]:
    """Files GDAL reads with a raster ``path`` (PAM ``.aux.xml``, overviews, mask)."""
    return [Path(f"{path}{ext}") for ext in (".aux.xml", ".ovr", ".msk")]


def stale_sidecars(final: str | Path, finals: Sequence[str | Path] = ()) -> list[Path]:
    """Sidecars of a GeoTIFF output that would describe the old file: deleted when it is replaced.

    Args:
        final: An output.
        finals: All outputs of the set (a sidecar that is itself an output is not stale).
    """
    final = Path(final)
    if final.suffix.lower() not in (".tif", ".tiff"):
        return []
    keep = {Path(f) for f in finals}
    return [p for p in gdal_sidecars(final) if p not in keep]


#: Free space under which a failed write is blamed on a full disk.
FULL_DISK_BYTES = 4 << 20


def _one_reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno is not None and exc.strerror:
        text = exc.strerror
        if exc.errno == errno.ENOSPC:
            text = "no space left on the device"
        if exc.filename:
            text = f"{exc.filename}: {text}"
    else:
        text = str(exc) or type(exc).__name__
    text = " ".join(text.split()).removesuffix(" See previous exception for details.")
    return text.removesuffix(".") if text.endswith("failed.") else text


def _reason(exc: BaseException) -> str:
    """One line saying why an OS or GDAL call failed (with GDAL's chained causes)."""
    parts: list[str] = []
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        text = _one_reason(cur)
        if text and text not in parts:
            parts.append(text)
        cur = cur.__cause__
    return ": ".join(parts)


def _full_disk_hint(exc: BaseException, near: Path | None) -> str:
    """``"; no space left…"`` when the disk of ``near`` is (almost) full and the error hides it."""
    if near is None or (isinstance(exc, OSError) and exc.errno == errno.ENOSPC):
        return ""
    try:
        free = shutil.disk_usage(near.parent).free
    except OSError:
        return ""
    if free >= FULL_DISK_BYTES:
        return ""
    return f" (no space left on the device: {free // 1024} kB free in {near.parent})"


@contextmanager
def writing(what: str, near: str | Path | None = None) -> Iterator[None]:
    """Turn an OS or GDAL error raised inside the block into an :class:`OutputError`.

    GDAL reports a full disk as a bare ``Write failed`` (the ``ENOSPC`` goes to stderr only):
    when the folder of ``near`` has less than :data:`FULL_DISK_BYTES` free, the message says so.

    Args:
        what: The output being written, for the message (e.g. ``"class map out/map.tif"``).
        near: A file in the folder being written to (for the full-disk check).
    """
    try:
        yield
    except (OSError, RasterioError, CPLE_BaseError) as exc:
        hint = _full_disk_hint(exc, Path(near) if near is not None else None)
        raise OutputError(f"cannot write {what}: {_reason(exc)}{hint}") from exc


@contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence the process's stderr (file descriptor 2) inside the block.

    For closing a raster that already failed (a full disk): GDAL then prints a screenful of
    follow-up errors straight to stderr, bypassing Python; the first error is what is reported.
    """
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    except (OverflowError, OSError):
        return False
    return True


def remove_stale_temps(final: str | Path, keep: Sequence[str | Path] = ()) -> list[Path]:
    """Delete the temporary and scratch files of ``final`` left by processes that are gone.

    Only names made by :func:`temp_name` (kinds ``tmp`` and ``scratch``, with GDAL's extras) whose
    process id is not alive are removed; backups (``bak``) of replaced outputs are kept. Call it
    while holding ``final``'s lock (:func:`locked_outputs` does).

    Args:
        final: An output.
        keep: Paths never deleted (the run's inputs).

    Returns:
        The files removed.
    """
    final = Path(final)
    pattern = re.compile(
        rf"^\.{re.escape(final.name)}\.(\d+)-[0-9a-f]{{8}}\.(?:tmp|scratch)(?:\.|$)"
    )
    protected = {Path(k).resolve() for k in keep}
    removed = []
    try:
        entries = list(os.scandir(final.parent))
    except OSError:
        return removed
    for entry in entries:
        m = pattern.match(entry.name)
        if m is None or _pid_alive(int(m.group(1))) or not entry.is_file(follow_symlinks=False):
            continue
        path = Path(entry.path)
        if path.resolve() in protected:
            continue
        try:
            path.unlink()
            removed.append(path)
        except OSError:
            pass
    return removed


def lock_path(final: str | Path) -> Path:
    """The lock file of an output: ``.{name}.lock`` in its folder."""
    final = Path(final)
    return final.with_name(f".{final.name}.lock")


#: Locks held by this process: ``(resolved output, thread id) -> [fd, depth, lock file]``.
_HELD: dict[tuple[Path, int], list[Any]] = {}
_HELD_GUARD = threading.Lock()


def _lock_owner(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return f" (process {text})" if text.isdigit() else ""


def _acquire(final: Path) -> bool:
    """Lock ``final`` (resolved) for this thread; ``True`` when newly locked (not re-entered)."""
    key = (final, threading.get_ident())
    with _HELD_GUARD:
        if key in _HELD:
            _HELD[key][1] += 1
            return False
    lock = lock_path(final)
    for _ in range(5):
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as exc:
            raise OutputError(
                f"cannot create files in {final.parent} (lock file for {final}): {_reason(exc)}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _lock_owner(fd)
            os.close(fd)
            raise OutputLockedError(
                f"output {final} is being written by another run{owner}; wait for it to "
                f"finish or choose another output (lock file {lock})"
            ) from None
        except OSError:
            pass  # no advisory locks on this file system: proceed unlocked
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except OSError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            with _HELD_GUARD:
                _HELD[key] = [fd, 1, lock]
            return True
        os.close(fd)  # the previous holder removed the file meanwhile: lock the new one
    raise OutputLockedError(f"output {final}: cannot take its lock file {lock}")


def _release(final: Path) -> None:
    key = (final, threading.get_ident())
    with _HELD_GUARD:
        held = _HELD[key]
        held[1] -= 1
        if held[1] > 0:
            return
        del _HELD[key]
    fd, _, lock = held
    try:
        os.unlink(lock)  # while still locked, so that no other run locks a file being removed
    except OSError:
        pass
    os.close(fd)


@contextmanager
def locked_outputs(
    paths: Sequence[str | Path | None], keep: Sequence[str | Path] = ()
) -> Iterator[None]:
    """Hold an exclusive lock on every output for the duration of the block.

    Each output ``x`` gets a hidden lock file ``.x.lock`` in its folder, locked with
    ``fcntl.flock``: a second run (any process) on the same output fails at once with
    :class:`OutputLockedError`; a lock of a killed process vanishes with it (its file is reused).
    Once locked, the stale temporary files of the output are removed
    (:func:`remove_stale_temps`). Re-entrant within a thread; lock files are deleted on exit.
    Without ``fcntl`` (Windows) nothing is locked.

    Args:
        paths: Outputs (``None`` entries are skipped).
        keep: Inputs, never deleted by the stale-file cleanup.

    Raises:
        OutputLockedError: Another run holds one of the locks.
        OutputError: A lock file cannot be created (read-only folder…).
    """
    if fcntl is None:
        yield
        return
    finals = list(dict.fromkeys(Path(p).resolve() for p in paths if p is not None))
    held: list[Path] = []
    try:
        for final in finals:
            if _acquire(final):
                remove_stale_temps(final, keep)
            held.append(final)
        yield
    finally:
        for final in reversed(held):
            _release(final)


class AtomicOutputs:
    """Temporary files that become the final outputs all together, or not at all.

    Every output is written to a hidden temporary file in its own folder (:meth:`temp_for`);
    :meth:`commit` moves the files it replaces aside, renames the temporary files onto the final
    names and then deletes the old files. If any step fails, the new files are removed and the old
    ones put back, and no temporary file is left. Scratch files (:meth:`scratch`) are always
    deleted.

    Args:
        overwrite: Whether an existing output may be replaced (checked again at commit).

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> with AtomicOutputs() as out:
        ...     tmp = out.temp_for(d / "map.tif")
        ...     _ = tmp.write_text("x")
        >>> sorted(p.name for p in d.iterdir())
        ['map.tif']
    """

    def __init__(self, *, overwrite: bool = True) -> None:
        self.overwrite = overwrite
        self._pending: list[tuple[Path, Path]] = []
        self._scratch: list[Path] = []

    def temp_for(self, final: str | Path) -> Path:
        """A temporary path in ``final``'s folder that replaces ``final`` on commit."""
        final = Path(final)
        tmp = temp_name(final, "tmp")
        self._pending.append((tmp, final))
        return tmp

    def scratch(self, near: str | Path, suffix: str = ".tif") -> Path:
        """A temporary path next to ``near`` that is always deleted at the end."""
        tmp = temp_name(near, "scratch", suffix)
        self._scratch.append(tmp)
        return tmp

    @staticmethod
    def _remove(path: Path) -> None:
        for p in (path, *gdal_sidecars(path)):
            try:
                p.unlink(missing_ok=True)
            except OSError:
                pass

    def _replaced(self) -> list[Path]:
        """Existing files the commit replaces or deletes (outputs and their stale sidecars)."""
        finals = [f for _, f in self._pending]
        paths = finals + [s for f in finals for s in stale_sidecars(f, finals)]
        return [p for p in dict.fromkeys(paths) if os.path.lexists(p)]

    def _check(self) -> None:
        for tmp, final in self._pending:
            if not tmp.is_file():
                raise FileNotFoundError(errno.ENOENT, "temporary output never written", str(tmp))
            if final.is_dir():
                raise IsADirectoryError(errno.EISDIR, "is a folder", str(final))
        existing = self._replaced()
        if existing and not self.overwrite:
            raise FileExistsError(errno.EEXIST, "exists (pass --overwrite)", str(existing[0]))

    def commit(self) -> None:
        """Replace the outputs by the temporary files, all or none (see the class docstring)."""
        try:
            self._check()
            for tmp, _ in self._pending:
                for extra in gdal_sidecars(tmp):  # made by GDAL for the temporary name
                    extra.unlink(missing_ok=True)
            moved: list[tuple[Path, Path]] = []
            placed: list[Path] = []
            # Sidecars first, main rasters last: a reader of a main file finds its sidecars.
            ordered = sorted(self._pending, key=lambda p: p[1].suffix.lower() in (".tif", ".tiff"))
            try:
                for old in self._replaced():
                    backup = temp_name(old, "bak")
                    os.replace(old, backup)
                    moved.append((backup, old))
                for tmp, final in ordered:
                    os.replace(tmp, final)
                    placed.append(final)
            except BaseException:
                self._undo(placed, moved)
                raise
        except BaseException:
            self.rollback()
            raise
        self._pending.clear()
        for backup, _ in moved:
            self._remove(backup)
        self.cleanup()

    @staticmethod
    def _undo(placed: list[Path], moved: list[tuple[Path, Path]]) -> None:
        """Remove the new files and put the old ones back (best effort)."""
        for final in placed:
            try:
                final.unlink(missing_ok=True)
            except OSError:
                pass
        for backup, old in reversed(moved):
            try:
                os.replace(backup, old)
            except OSError:
                pass  # the backup keeps the old file under its hidden name

    def rollback(self) -> None:
        """Delete every temporary file."""
        for tmp, _ in self._pending:
            self._remove(tmp)
        self._pending.clear()
        self.cleanup()

    def cleanup(self) -> None:
        """Delete scratch files."""
        for tmp in self._scratch:
            self._remove(tmp)
        self._scratch.clear()

    def __enter__(self) -> AtomicOutputs:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.rollback()


# ---------------------------------------------------------------------------- output planning
@dataclass(frozen=True)
class PlannedOutput:
    """A file a run creates, replaces or (``removes``) deletes as a stale sidecar.

    Attributes:
        path: The file.
        label: What it is, for messages (e.g. ``"--probabilities"``, ``"QGIS style of -o"``).
        owner: The scene it belongs to, or ``None`` for the whole run.
        removes: A stale sidecar deleted when its raster is replaced (see :func:`stale_sidecars`).
    """

    path: Path
    label: str
    owner: Path | None = None
    removes: bool = False


def _identity(path: Path) -> tuple[Path, tuple[int, int] | None]:
    """Resolved path, and ``(device, inode)`` when the file exists (hard links, bind mounts)."""
    try:
        st = os.stat(path)
        inode = (st.st_dev, st.st_ino)
    except OSError:
        inode = None
    return path.resolve(), inode


class _InputIndex:
    """The run's inputs, looked up by resolved path or by inode."""

    def __init__(self, inputs: Sequence[tuple[str, str | Path]]) -> None:
        self.by_path: dict[Path, tuple[str, Path]] = {}
        self.by_inode: dict[tuple[int, int], tuple[str, Path]] = {}
        for label, inp in inputs:
            resolved, inode = _identity(Path(inp))
            self.by_path.setdefault(resolved, (label, Path(inp)))
            if inode is not None:
                self.by_inode.setdefault(inode, (label, Path(inp)))

    def find(self, path: Path) -> tuple[str, Path] | None:
        """The input that ``path`` names, or ``None``."""
        resolved, inode = _identity(path)
        hit = self.by_path.get(resolved)
        if hit is None and inode is not None:
            hit = self.by_inode.get(inode)
        return hit


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether two paths name one file: same resolved path (symlinks, ``a/../a``) or inode."""
    return _InputIndex([("", a)]).find(Path(b)) is not None


def find_collision(
    outputs: Sequence[PlannedOutput],
) -> tuple[PlannedOutput, PlannedOutput] | None:
    """The first two outputs that name the same file (after resolving), or ``None``."""
    seen: dict[Path, PlannedOutput] = {}
    for o in outputs:
        key = o.path.resolve()
        if key in seen:
            return seen[key], o
        seen[key] = o
    return None


def check_planned(
    outputs: Sequence[PlannedOutput],
    inputs: Sequence[tuple[str, str | Path]],
    *,
    overwrite: bool,
    creatable: Sequence[str | Path] = (),
) -> None:
    """Check a run's outputs before anything is written.

    Every output (and its lock file) must differ from every input; no output may be a folder;
    each output's folder must exist (or be in ``creatable``); an existing output needs
    ``overwrite``. Outputs are assumed distinct (see :func:`find_collision`).

    Args:
        outputs: Everything the run writes or deletes.
        inputs: ``(label, path)`` of everything it reads (scenes, aux rasters, checkpoint…).
        overwrite: Whether existing outputs may be replaced.
        creatable: Folders the run will create (their outputs cannot exist yet).

    Raises:
        OutputError: Naming the output and the problem.
    """
    made = {Path(c).resolve() for c in creatable}
    index = _InputIndex(inputs)
    for o in outputs:
        lock = lock_path(o.path.resolve())  # where locked_outputs puts it
        for mine, what in ((o.path, o.label), (lock, f"the lock file of {o.label}")):
            hit = index.find(mine)
            if hit is not None:
                label, inp = hit
                raise OutputError(f"{what} {mine} would overwrite an input ({label} {inp})")
        if o.path.is_dir():
            raise OutputError(f"{o.label} {o.path} is a folder; give a file name")
        parent = o.path.parent
        if not parent.is_dir() and parent.resolve() not in made:
            if parent.exists():
                raise OutputError(f"output folder {parent} is not a folder")
            raise OutputError(f"output folder {parent} does not exist")
        if os.path.lexists(o.path) and not overwrite:
            detail = f" (it would be deleted as the stale {o.label})" if o.removes else ""
            raise OutputError(
                f"output {o.path} exists{detail}; pass overwrite=True (--overwrite) to replace it"
            )


# ---------------------------------------------------------------------------- streaming GeoTIFF
class StripWriter:
    """A temporary GeoTIFF written in row strips (the input of :func:`to_cog`).

    GDAL compresses a block when it leaves its cache: a block written in several pieces may be
    compressed, evicted and rewritten at the end of the file (which then grows far beyond its
    data). Write whole blocks: with ``strip_rows`` the file is striped (blocks of ``strip_rows``
    full rows: write strips of multiples of ``strip_rows`` rows, starting at such a row); without
    it the file is tiled in :data:`BLOCK` × :data:`BLOCK` tiles (write tile-aligned blocks).
    :attr:`block_shape` gives the block.

    Args:
        path: File to create.
        height: Rows.
        width: Columns.
        count: Bands.
        dtype: Data type.
        crs: CRS.
        transform: Geotransform.
        nodata: Nodata value or ``None``.
        colormap: ``{value: (r, g, b, a)}`` for band 1, or ``None``.
        descriptions: Band descriptions, or ``None``.
        strip_rows: Rows per strip of a striped file (a multiple of 16), or ``None`` for tiles.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        height: int,
        width: int,
        count: int,
        dtype: str,
        crs: CRS,
        transform: Affine,
        nodata: float | None = None,
        colormap: dict[int, tuple[int, int, int, int]] | None = None,
        descriptions: Sequence[str] | None = None,
        strip_rows: int | None = None,
    ) -> None:
        self.path = Path(path)
        if strip_rows is not None and (strip_rows < 1 or strip_rows % 16):
            raise ValueError(f"strip_rows must be a positive multiple of 16, got {strip_rows}")
        profile = {
            "driver": "GTiff",
            "height": height,
            "width": width,
            "count": count,
            "dtype": dtype,
            "crs": crs,
            "transform": transform,
            "nodata": nodata,
            # Fast, light compression: this file is read once by the COG copy.
            "compress": "ZSTD",
            "zstd_level": 1,
            "bigtiff": "IF_SAFER",
            "photometric": "MINISBLACK",
            "interleave": "band" if count > 1 else "pixel",
        }
        if strip_rows is None:
            profile.update(tiled=True, blockxsize=BLOCK, blockysize=BLOCK)
            self.block_shape = (BLOCK, BLOCK)
        else:
            profile.update(tiled=False, blockysize=strip_rows)
            self.block_shape = (strip_rows, width)
        self.ds = rasterio.open(self.path, "w", **profile)
        try:
            if colormap is not None:
                self.ds.write_colormap(1, colormap)
                self.ds.colorinterp = [ColorInterp.palette]
            if descriptions is not None:
                for i, name in enumerate(descriptions, start=1):
                    self.ds.set_band_description(i, name)
        except BaseException:
            self.ds.close()
            raise

    def write(self, data: np.ndarray, row: int, col: int = 0) -> None:
        """Write ``data`` (``count×h×w`` or ``h×w``) with its first pixel at ``(row, col)``."""
        if data.ndim == 2:
            data = data[None]
        self.ds.write(data, window=RioWindow(col, row, data.shape[-1], data.shape[-2]))

    def close(self) -> None:
        """Close the file."""
        if not self.ds.closed:
            self.ds.close()


def to_cog(
    src: str | Path,
    dst: str | Path,
    *,
    overview_resampling: str = "mode",
    compress: str = "DEFLATE",
) -> None:
    """Copy ``src`` to a Cloud-Optimised GeoTIFF ``dst`` (512 tiles, internal overviews).

    Args:
        src: Input raster (e.g. the :class:`StripWriter` file).
        dst: Output path.
        overview_resampling: ``nearest`` or ``mode`` for classes, ``average`` for probabilities.
        compress: ``DEFLATE`` or ``ZSTD``.
    """
    opts = {
        "driver": "COG",
        "blocksize": BLOCK,
        "compress": compress.upper(),
        "overview_resampling": overview_resampling.upper(),
        "resampling": overview_resampling.upper(),
        "bigtiff": "IF_SAFER",
        "num_threads": "2",
    }
    with rasterio.open(src) as ds:
        rasterio.shutil.copy(ds, dst, **opts)


# ---------------------------------------------------------------------------- sidecars
def colormap(colors: Sequence[Sequence[int]], nodata: int) -> dict[int, tuple[int, int, int, int]]:
    """Colour table for band 1: class colours, nodata transparent black."""
    cmap = {i: (int(c[0]), int(c[1]), int(c[2]), 255) for i, c in enumerate(colors)}
    if nodata <= 255:
        cmap[nodata] = (0, 0, 0, 0)
    return cmap


def qml_text(names: Sequence[str], colors: Sequence[Sequence[int]], nodata: int) -> str:
    """A QGIS style (``.qml``) with a paletted renderer labelling every class.

    Args:
        names: Class names (index = pixel value).
        colors: RGB colour per class.
        nodata: Nodata value of the class map (left out of the palette).
    """
    entries = "\n".join(
        f"        <paletteEntry value={quoteattr(str(i))} color={quoteattr(hex_color(c))} "
        f'alpha="255" label={quoteattr(str(n))}/>'
        for i, (n, c) in enumerate(zip(names, colors, strict=True))
    )
    return f"""<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis version="3.22.0" styleCategories="AllStyleCategories" hasScaleBasedVisibilityFlag="0">
  <pipe>
    <provider>
      <resampling enabled="false" maxOversampling="2" zoomedInResamplingMethod="nearestNeighbour" zoomedOutResamplingMethod="nearestNeighbour"/>
    </provider>
    <rasterrenderer type="paletted" band="1" opacity="1" alphaBand="-1" nodataColor="">
      <rasterTransparency/>
      <minMaxOrigin>
        <limits>None</limits>
        <extent>WholeRaster</extent>
        <statAccuracy>Estimated</statAccuracy>
        <cumulativeCutLower>0.02</cumulativeCutLower>
        <cumulativeCutUpper>0.98</cumulativeCutUpper>
        <stdDevFactor>2</stdDevFactor>
      </minMaxOrigin>
      <colorPalette>
{entries}
      </colorPalette>
    </rasterrenderer>
    <brightnesscontrast brightness="0" contrast="0" gamma="1"/>
    <huesaturation saturation="0" colorizeOn="0" grayscaleMode="0" invertColors="0"/>
    <rasterresampler maxOversampling="2"/>
    <resamplingStage>resamplingFilter</resamplingStage>
  </pipe>
  <blendMode>0</blendMode>
  <!-- nodata value {nodata} is not a class -->
</qgis>
"""


def rat_aux_xml_text(
    names: Sequence[str],
    colors: Sequence[Sequence[int]],
    counts: Sequence[int] | None = None,
    nodata: int | None = None,
) -> str:
    """A GDAL PAM ``.aux.xml`` holding a thematic raster attribute table for band 1.

    Columns: ``Value`` (min-max usage), ``Class`` (name usage), ``Red``/``Green``/``Blue`` and,
    when given, ``Count`` (pixel count usage).
    """
    fields = [
        ("Value", 0, 5),
        ("Class", 2, 2),
        ("Red", 0, 6),
        ("Green", 0, 7),
        ("Blue", 0, 8),
    ]
    if counts is not None:
        fields.append(("Count", 1, 1))
    defs = "\n".join(
        f'      <FieldDefn index="{i}">\n        <Name>{n}</Name>\n        <Type>{t}</Type>\n'
        f"        <Usage>{u}</Usage>\n      </FieldDefn>"
        for i, (n, t, u) in enumerate(fields)
    )
    rows = []
    for i, (name, c) in enumerate(zip(names, colors, strict=True)):
        vals = [str(i), escape(str(name)), str(int(c[0])), str(int(c[1])), str(int(c[2]))]
        if counts is not None:
            vals.append(str(int(counts[i])))
        cells = "".join(f"<F>{v}</F>" for v in vals)
        rows.append(f'      <Row index="{i}">{cells}</Row>')
    nod = f"    <NoDataValue>{nodata}</NoDataValue>\n" if nodata is not None else ""
    body = "\n".join(rows)
    return f"""<PAMDataset>
  <PAMRasterBand band="1">
{nod}    <GDALRasterAttributeTable tableType="thematic">
{defs}
{body}
    </GDALRasterAttributeTable>
  </PAMRasterBand>
</PAMDataset>
"""


# ---------------------------------------------------------------------------- vectors
def _blocks(height: int, width: int, size: int) -> Iterator[RioWindow]:
    for row in range(0, height, size):
        for col in range(0, width, size):
            yield RioWindow(col, row, min(size, width - col), min(size, height - row))


def write_vectors(
    class_map: str | Path,
    out: str | Path,
    names: Sequence[str],
    *,
    block: int = 2048,
    layer: str = "classes",
) -> int:
    """Polygonise a class map into a GeoPackage (``class_id``, ``class_name``; nodata skipped).

    Memory stays bounded: the map is polygonised in ``block × block`` chunks, so polygons that
    cross a chunk border are split there (dissolve by ``class_id`` in a GIS if needed).

    Returns:
        Number of polygons written.
    """
    import geopandas as gpd
    from rasterio.features import shapes
    from shapely.geometry import shape

    total = 0
    first = True
    with rasterio.open(class_map) as ds:
        nodata = ds.nodata
        crs = ds.crs
        for win in _blocks(ds.height, ds.width, block):
            data = ds.read(1, window=win)
            mask = data != nodata if nodata is not None else None
            transform = ds.window_transform(win)
            geoms, ids = [], []
            for geom, value in shapes(data, mask=mask, transform=transform, connectivity=4):
                geoms.append(shape(geom))
                ids.append(int(value))
            if not geoms:
                continue
            ids_arr = np.asarray(ids, dtype=np.int32)
            frame = gpd.GeoDataFrame(
                {
                    "class_id": ids_arr,
                    "class_name": [names[i] if 0 <= i < len(names) else str(i) for i in ids],
                },
                geometry=geoms,
                crs=crs,
            )
            frame.to_file(out, layer=layer, driver="GPKG", mode="w" if first else "a")
            first = False
            total += len(frame)
        if first:  # nothing but nodata: an empty layer with the right schema
            empty = gpd.GeoDataFrame(
                {"class_id": np.zeros(0, np.int32), "class_name": np.zeros(0, object)},
                geometry=gpd.GeoSeries([], crs=crs),
            )
            empty.to_file(out, layer=layer, driver="GPKG", geometry_type="Polygon")
    return total
