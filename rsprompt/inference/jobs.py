"""Prediction jobs spread over processes: a work plan, shards, manifests, and the merge.

A job predicts many scenes (or one huge scene) with several processes: the ranks of a Lightning
launch (``--devices``/``--num-nodes``), or the tasks of a job array (``--shard i/N``). Every
process computes the same **plan** from the same inputs and options:

- **work units**: whole scenes, largest first (pixels); a scene larger than
  ``split_pixels``, or every scene when there are fewer scenes than shards, is split into
  horizontal row bands (:func:`rsprompt.tiling.row_bands`), each predicted on its own with
  ``predict_scene(row_range=…)`` (blended exactly as in a single run);
- **assignment** (:func:`assign`): the units, largest first, each to the shard with the least
  work so far (ties: the lowest shard). Deterministic: every shard computes the same split.

State lives in ``OUT_DIR/.rsprompt-job/`` (:class:`JobFolder`): ``plan.json``, one folder per
unit with what it wrote, and one **manifest** per finished unit (``manifests/<unit>.json``,
written atomically and last: counts, files with their sizes and modification times, the plan's
fingerprint). A unit is finished only when its manifest is there, matches the plan's fingerprint
and its files are unchanged: the partial files of a killed process are never taken as finished,
and a rerun redoes only the missing units (all of them with ``overwrite``).

The **merge** (:func:`merge_job`) runs once every unit is finished: by the last shard to finish
(an exclusive lock keeps a second one out) or by ``rsprompt predict --merge OUT_DIR``. It moves
whole-scene outputs into place, stitches row-band parts into the final COG with its sidecars
(:func:`rsprompt.inference.parts.merge_row_parts`), writes the summary JSON, and removes the
job folder only after every final output is committed. A merge that stops midway resumes where it
stopped (each merged scene is recorded).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rsprompt.inference.reader import PredictError
from rsprompt.models.weights import sha256_file

#: The hidden folder of a job's state under ``--out-dir``.
JOB_DIR = ".rsprompt-job"
#: Version of the plan/manifest format.
FORMAT = 1
#: Default size above which a scene is split into row bands (pixels): 64 megapixels.
SPLIT_PIXELS = 64_000_000


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/N"`` (0-based ``i``) as ``(i, N)``.

    Raises:
        PredictError: If it is not ``i/N`` with ``0 <= i < N``.

    Example:
        >>> parse_shard("1/4")
        (1, 4)
    """
    try:
        i, n = (int(t) for t in text.split("/"))
    except ValueError:
        raise PredictError(f"--shard {text!r}: expected i/N, e.g. 0/4 (0-based i)") from None
    if n < 1 or not 0 <= i < n:
        raise PredictError(f"--shard {text!r}: need 0 <= i < N (i is 0-based), got i={i}, N={n}")
    return i, n


@dataclass(frozen=True)
class SceneSpec:
    """One scene of a job: its inputs, outputs and size.

    Attributes:
        scene: The optical scene.
        aux: Its DSM/SAR raster, or ``None``.
        out: Final class map.
        probs: Final probabilities, or ``None``.
        vectors: Final GeoPackage, or ``None``.
        height: Scene rows.
        width: Scene columns.
    """

    scene: str
    aux: str | None
    out: str
    probs: str | None
    vectors: str | None
    height: int
    width: int


@dataclass(frozen=True)
class Unit:
    """A work unit: a whole scene (``rows`` is ``None``) or a band of its rows.

    Attributes:
        id: Folder and manifest name, e.g. ``s0002`` or ``s0002-b1of2``.
        scene: Index of the scene in the plan.
        rows: ``(r0, r1)`` of a row band, or ``None``.
        cost: Pixels computed (the band's rows plus the window rows around it, times the width).
        windows: Windows predicted.
    """

    id: str
    scene: int
    rows: tuple[int, int] | None
    cost: int
    windows: int


def _offsets(length: int, window: int, overlap: int) -> list[int]:
    try:
        from rsprompt.tiling import axis_offsets
    except ImportError:  # before the window plan moved to rsprompt.tiling
        from rsprompt.inference.windows import axis_offsets
    return axis_offsets(length, window, overlap)


def _row_bands(height: int, n: int, window: int, overlap: int) -> list[tuple[int, int]]:
    from rsprompt.tiling import row_bands

    return row_bands(height, n, window, overlap)


def _unit_extent(spec: SceneSpec, rows: tuple[int, int], window: int, overlap: int) -> tuple:
    """``(cost, windows)`` of the rows ``[r0, r1)``: every window overlapping them is computed."""
    r0, r1 = rows
    win_h = min(window, spec.height)
    starts = [s for s in _offsets(spec.height, window, overlap) if s < r1 and s + win_h > r0]
    cols = len(_offsets(spec.width, window, overlap))
    span = (max(starts) + win_h - min(starts)) if starts else 0
    return span * spec.width, len(starts) * cols


def plan_units(
    specs: Sequence[SceneSpec],
    shards: int,
    window: int,
    overlap: int,
    *,
    split_pixels: int = SPLIT_PIXELS,
    can_split: bool = True,
) -> list[Unit]:
    """The work units of a job, largest first (see the module docstring).

    Args:
        specs: The scenes.
        shards: Number of shards (ranks) the units are spread over.
        window: Window side (resolved).
        overlap: Window overlap (resolved).
        split_pixels: A scene with more pixels is split into bands of at most about this size.
        can_split: Whether row bands are possible (``predict_scene`` has ``row_range``).
    """
    few = len(specs) < shards
    units = []
    for i, spec in enumerate(specs):
        pixels = spec.height * spec.width
        n = 1
        if can_split:
            n = max(
                math.ceil(pixels / max(split_pixels, 1)),
                math.ceil(shards / len(specs)) if few else 1,
            )
        bands = _row_bands(spec.height, n, window, overlap) if n > 1 else [(0, spec.height)]
        for b, rows in enumerate(bands):
            cost, wins = _unit_extent(spec, rows, window, overlap)
            if len(bands) == 1:
                units.append(Unit(f"s{i:04d}", i, None, cost, wins))
            else:
                units.append(Unit(f"s{i:04d}-b{b}of{len(bands)}", i, rows, cost, wins))
    return sorted(units, key=lambda u: (-u.cost, u.scene, u.rows or (0, 0)))


def assign(units: Sequence[Unit], shards: int) -> list[list[Unit]]:
    """Greedy balance: each unit (largest first) goes to the shard with the least cost so far.

    Example:
        9 → shard 0; 5 → 1; 4 → 1 (5 < 9); 3 → 0 (loads 9 and 9: the lowest shard).

        >>> us = [Unit(f"u{c}", 0, None, c, 1) for c in (9, 5, 4, 3)]
        >>> [[u.id for u in s] for s in assign(us, 2)]
        [['u9', 'u3'], ['u5', 'u4']]
    """
    loads = [0] * shards
    out: list[list[Unit]] = [[] for _ in range(shards)]
    for unit in sorted(units, key=lambda u: (-u.cost, u.scene, u.rows or (0, 0))):
        k = min(range(shards), key=lambda s: (loads[s], s))
        out[k].append(unit)
        loads[k] += unit.cost
    return out


def _stamp(path: str | None) -> list[Any] | None:
    """``[path, size, mtime_ns]`` of an input (a changed input makes a new plan)."""
    if path is None:
        return None
    try:
        st = os.stat(path)
        if path.lower().endswith(".vrt"):  # rewritten by each shard (--mosaic): its content
            return [path, sha256_file(path)]
    except OSError:  # a missing input: the shard that predicts it reports it
        return [path, None, None]
    return [path, st.st_size, st.st_mtime_ns]


@dataclass
class JobPlan:
    """Everything a shard, and later the merge, needs to know about a job (``plan.json``).

    Attributes:
        specs: The scenes.
        units: The work units (largest first).
        shards: Number of shards.
        classes: ``[names, colours]`` of the class table (the merge writes the sidecars).
        merge_options: Options of the final COG (``overview_resampling``, ``compress``).
        summary_json: Where the job's summary JSON goes, or ``None``.
        fingerprint: sha256 of the scenes, options and model (:meth:`fingerprint_of`).
    """

    specs: list[SceneSpec]
    units: list[Unit]
    shards: int
    classes: list[list[Any]]
    merge_options: dict[str, Any]
    summary_json: str | None
    fingerprint: str = ""

    def fingerprint_of(self, options: dict[str, Any], model_sha: str) -> str:
        """sha256 over the scenes (and their inputs' sizes and times), options, model, units."""
        record = {
            "format": FORMAT,
            "scenes": [
                [_stamp(s.scene), _stamp(s.aux), s.out, s.probs, s.vectors] for s in self.specs
            ],
            "units": [[u.id, u.rows] for u in self.units],
            "options": options,
            "merge": self.merge_options,
            "classes": self.classes,
            "model": model_sha,
        }
        return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()

    def to_json(self) -> str:
        """The plan as JSON."""
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> JobPlan:
        """The plan from :meth:`to_json`."""
        d = json.loads(text)
        d["specs"] = [SceneSpec(**s) for s in d["specs"]]
        d["units"] = [
            Unit(
                u["id"],
                u["scene"],
                tuple(u["rows"]) if u["rows"] else None,
                u["cost"],
                u["windows"],
            )
            for u in d["units"]
        ]
        return cls(**d)

    def scene_units(self, scene: int) -> list[Unit]:
        """The units of one scene, top to bottom."""
        return sorted((u for u in self.units if u.scene == scene), key=lambda u: u.rows or (0, 0))


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file unique across hosts and processes."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _file_record(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


@dataclass
class JobFolder:
    """The state folder of a job (``OUT_DIR/.rsprompt-job``)."""

    root: Path
    plan: JobPlan | None = field(default=None)

    @classmethod
    def under(cls, out_dir: Path) -> JobFolder:
        """The job folder of ``out_dir``."""
        return cls(Path(out_dir) / JOB_DIR)

    @property
    def plan_path(self) -> Path:
        """``plan.json``."""
        return self.root / "plan.json"

    def unit_dir(self, unit: Unit) -> Path:
        """Where a unit writes its files."""
        return self.root / "units" / unit.id

    def manifest_path(self, unit: Unit) -> Path:
        """The unit's manifest."""
        return self.root / "manifests" / f"{unit.id}.json"

    def merged_path(self, scene: int) -> Path:
        """The record of a merged scene (its summary)."""
        return self.root / "merged" / f"s{scene:04d}.json"

    def save_plan(self, plan: JobPlan) -> None:
        """Create the folder and write ``plan.json`` (atomically; same content for every shard)."""
        for sub in ("units", "manifests", "merged", "progress"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        _write_atomic(self.plan_path, plan.to_json())
        self.plan = plan

    def load_plan(self) -> JobPlan:
        """Read ``plan.json``.

        Raises:
            PredictError: If the folder holds no job.
        """
        try:
            self.plan = JobPlan.from_json(self.plan_path.read_text())
        except FileNotFoundError:
            raise PredictError(
                f"{self.root.parent} holds no unfinished prediction job ({self.plan_path} is "
                "missing: merged already, or never started)"
            ) from None
        except (ValueError, KeyError, TypeError) as exc:
            raise PredictError(f"{self.plan_path} is unreadable ({exc})") from None
        return self.plan

    def manifest(self, unit: Unit) -> dict[str, Any] | None:
        """The unit's manifest when the unit is finished (valid, files unchanged), else ``None``."""
        assert self.plan is not None
        try:
            m = json.loads(self.manifest_path(unit).read_text())
        except (OSError, ValueError):
            return None
        if m.get("fingerprint") != self.plan.fingerprint or m.get("unit") != unit.id:
            return None
        for name, rec in m.get("files", {}).items():
            try:
                if _file_record(self.unit_dir(unit) / name) != rec:
                    return None
            except OSError:
                return None
        return m

    def finished(self, unit: Unit, launch: str | None = None) -> bool:
        """Whether the unit is done: its manifest is valid, or its scene is merged already.

        With ``launch``, only a manifest written by that launch counts (``--overwrite``: the
        units finished before are redone, once).
        """
        if self.merged_path(unit.scene).is_file() and launch is None:
            return True
        m = self.manifest(unit)
        return m is not None and (launch is None or m.get("launch") == launch)

    def start_unit(self, unit: Unit) -> Path:
        """An empty folder for the unit (a killed run's partial files and manifest removed)."""
        self.manifest_path(unit).unlink(missing_ok=True)
        folder = self.unit_dir(unit)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        return folder

    def finish_unit(self, unit: Unit, summary: dict[str, Any], launch: str = "") -> None:
        """Write the unit's manifest, last: its files (sizes, times), summary and fingerprint."""
        assert self.plan is not None
        folder = self.unit_dir(unit)
        files = {p.name: _file_record(p) for p in sorted(folder.iterdir()) if p.is_file()}
        record = {
            "format": FORMAT,
            "fingerprint": self.plan.fingerprint,
            "unit": unit.id,
            "launch": launch,
            "rows": unit.rows,
            "files": files,
            "summary": summary,
        }
        _write_atomic(self.manifest_path(unit), json.dumps(record, indent=1))

    def missing(self) -> list[Unit]:
        """The plan's units that are not finished."""
        assert self.plan is not None
        return [u for u in self.plan.units if not self.finished(u)]

    @contextlib.contextmanager
    def merge_lock(self) -> Iterator[bool]:
        """An exclusive, non-blocking lock for the merge: yields whether this process holds it."""
        try:
            import fcntl
        except ImportError:  # Windows: no concurrent shards there
            yield True
            return
        try:
            fd = os.open(self.root / "merge.lock", os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # the job folder is gone: merged by another process
            yield False
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield self.plan_path.is_file()
        finally:
            os.close(fd)

    def failed_path(self, unit: Unit, launch: str) -> Path:
        """Marks a unit that failed in a launch (its other ranks do not retry it)."""
        return self.root / "progress" / f"{launch}-{unit.id}.failed"

    def progress_file(self, token: str, rank: int) -> Path:
        """Windows done by a rank of one launch (see :class:`ProgressFiles`)."""
        return self.root / "progress" / f"{token}-{rank}.txt"


# ------------------------------------------------------------------------------ the units' work
#: What a unit writes, by role (the names inside its folder).
PART_NAMES = {"map": "map.tif", "probs": "probabilities.tif", "vectors": "vectors.gpkg"}


def run_unit(
    job: JobFolder,
    unit: Unit,
    predict: Callable[..., Any],
    aux_kind: str | None,
    options: dict[str, Any],
    launch: str = "",
) -> Any:
    """Predict one unit into its folder, then write its manifest; returns its PredictSummary.

    ``predict`` is :meth:`CheckpointPredictor.predict` (or any function with its signature).
    """
    assert job.plan is not None
    spec = job.plan.specs[unit.scene]
    folder = job.start_unit(unit)
    kwargs = dict(options, overwrite=True)
    if unit.rows is not None:
        kwargs["row_range"] = unit.rows
    summary = predict(
        Path(spec.scene),
        folder / PART_NAMES["map"],
        aux=Path(spec.aux) if spec.aux else None,
        aux_kind=aux_kind,
        probabilities=folder / PART_NAMES["probs"] if spec.probs else None,
        vectors=folder / PART_NAMES["vectors"] if spec.vectors and unit.rows is None else None,
        **kwargs,
    )
    record = summary.as_dict()
    record["pixel_area_m2"] = summary.pixel_area_m2
    job.finish_unit(unit, record, launch)
    return summary


# ------------------------------------------------------------------------------------ the merge
def _final_files(spec: SceneSpec) -> list[tuple[str, Path]]:
    """``(name in the unit folder, final path)`` of a whole-scene unit's files."""
    out = Path(spec.out)
    files = [
        (PART_NAMES["map"], out),
        (Path(PART_NAMES["map"]).with_suffix(".qml").name, out.with_suffix(".qml")),
        (f"{PART_NAMES['map']}.aux.xml", Path(f"{out}.aux.xml")),
    ]
    if spec.probs:
        files.append((PART_NAMES["probs"], Path(spec.probs)))
    if spec.vectors:
        files.append((PART_NAMES["vectors"], Path(spec.vectors)))
    return files


def _link_or_copy(src: Path, dst: Path) -> None:
    """``dst`` as a hard link of ``src`` (the unit keeps its file until the job is removed)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _place_whole(job: JobFolder, unit: Unit, spec: SceneSpec, overwrite: bool) -> list[Path]:
    """Commit a whole-scene unit's files onto the final paths, all together (atomic)."""
    from rsprompt.inference.writers import AtomicOutputs, locked_outputs, writing

    files = _final_files(spec)
    finals = [f for _, f in files]
    with locked_outputs(finals), writing(f"the outputs of scene {spec.scene}", finals[0]):
        outputs = AtomicOutputs(overwrite=overwrite)
        try:
            for name, final in files:
                _link_or_copy(job.unit_dir(unit) / name, outputs.temp_for(final))
        except BaseException:
            outputs.rollback()
            raise
        outputs.commit()
    return finals[1:]


def _merge_bands(job: JobFolder, units: list[Unit], spec: SceneSpec, overwrite: bool) -> list[Path]:
    """Stitch a scene's row-band parts into its final outputs."""
    from rsprompt.data.labels import ClassTable
    from rsprompt.inference.parts import merge_row_parts

    assert job.plan is not None
    names, colors = job.plan.classes
    table = ClassTable(tuple(names), tuple(tuple(c) for c in colors))
    parts = [job.unit_dir(u) / PART_NAMES["map"] for u in units]
    probs = [job.unit_dir(u) / PART_NAMES["probs"] for u in units] if spec.probs else None
    merge_row_parts(
        parts,
        spec.out,
        classes=table,
        probability_parts=probs,
        probabilities=spec.probs,
        vectors=spec.vectors,
        overwrite=overwrite,
        **job.plan.merge_options,
    )
    out = Path(spec.out)
    extra = [out.with_suffix(".qml"), Path(f"{out}.aux.xml")]
    return extra + [Path(p) for p in (spec.probs, spec.vectors) if p]


def scene_summary(spec: SceneSpec, records: list[dict[str, Any]], extra: list[Path]) -> Any:
    """The PredictSummary of a whole scene from its units' summaries (counts summed)."""
    import rasterio

    from rsprompt.inference.summary import PredictSummary, pixel_area_m2

    first = records[0]
    k = len(first["classes"])
    counts = [sum(r["classes"][c]["pixels"] for r in records) for c in range(k)]
    area = first.get("pixel_area_m2")
    if len(records) > 1:
        with rasterio.open(spec.scene) as src:
            area = pixel_area_m2(src.crs, src.transform, src.height, src.width)
    return PredictSummary(
        scene=Path(spec.scene),
        output=Path(spec.out),
        width=spec.width,
        height=spec.height,
        class_names=[c["name"] for c in first["classes"]],
        counts=counts,
        nodata_pixels=sum(r["nodata_pixels"] for r in records),
        pixel_area_m2=area,
        seconds=sum(r["seconds"] for r in records),
        windows=sum(r["windows"] for r in records),
        extra_outputs=extra,
        aux_stats=first.get("aux_stats"),
        device=first.get("device", "cpu"),
        numeric_precision=first.get("numeric_precision", "32"),
    )


def _merge_scene(job: JobFolder, index: int, overwrite: bool) -> dict[str, Any]:
    """Merge one scene (unless merged already); returns ``{"summary": dict, "pixel_area_m2"}``."""
    assert job.plan is not None
    marker = job.merged_path(index)
    if marker.is_file():
        return json.loads(marker.read_text())
    spec = job.plan.specs[index]
    units = job.plan.scene_units(index)
    records = []
    for u in units:
        m = job.manifest(u)
        if m is None:
            raise PredictError(f"unit {u.id} of scene {spec.scene} is not finished")
        records.append(m["summary"])
    if len(units) == 1 and units[0].rows is None:
        extra = _place_whole(job, units[0], spec, overwrite)
    else:
        extra = _merge_bands(job, units, spec, overwrite)
    summary = scene_summary(spec, records, extra)
    record = {"summary": summary.as_dict(), "pixel_area_m2": summary.pixel_area_m2}
    _write_atomic(marker, json.dumps(record, indent=1))
    return record


def merge_job(
    job: JobFolder, *, overwrite: bool, on_scene: Callable[[Any], None] | None = None
) -> list[Any] | None:
    """Merge a finished job: final outputs, the summary JSON, then remove the job folder.

    Args:
        job: The job folder (its plan loaded or on disk).
        overwrite: Replace existing final outputs.
        on_scene: Called with each scene's PredictSummary as it is merged (printing).

    Returns:
        The scenes' PredictSummary objects in plan order, or ``None`` when another process holds
        the merge lock (it merges) or merged already.

    Raises:
        PredictError: A unit is not finished (naming them), or a final output cannot be written.
    """
    plan = job.plan if job.plan is not None else job.load_plan()
    missing = job.missing()
    if missing:
        shown = ", ".join(u.id for u in missing[:8]) + (" …" if len(missing) > 8 else "")
        raise PredictError(
            f"the job in {job.root.parent} is not finished: {len(missing)} of {len(plan.units)} "
            f"units have no valid manifest ({shown}); run the missing shards first"
        )
    with job.merge_lock() as held:
        if not held:
            return None
        summaries = []
        for i in range(len(plan.specs)):
            summaries.append(summary_from_record(_merge_scene(job, i, overwrite)))
            if on_scene is not None:
                on_scene(summaries[-1])
        if plan.summary_json is not None:
            records = [s.as_dict() for s in summaries]
            write_summary_json(Path(plan.summary_json), records, overwrite)
        shutil.rmtree(job.root)
    return summaries


def write_summary_json(path: Path, summaries: list[dict[str, Any]], overwrite: bool) -> None:
    """``summaries`` as indented JSON at ``path``, written atomically (``--summary-json``).

    Raises:
        OutputError: An existing file without ``overwrite``, or a write error.
    """
    from rsprompt.inference.writers import AtomicOutputs, writing

    outputs = AtomicOutputs(overwrite=overwrite)
    with writing(f"--summary-json {path}", path):
        try:
            outputs.temp_for(path).write_text(json.dumps(summaries, indent=2))
        except BaseException:
            outputs.rollback()
            raise
        outputs.commit()


def summary_from_record(record: dict[str, Any]) -> Any:
    """The PredictSummary of a merged scene's record (``{"summary": as_dict(), "pixel_area_m2"}``)."""
    from rsprompt.inference.summary import PredictSummary

    d = record["summary"]
    return PredictSummary(
        scene=Path(d["scene"]),
        output=Path(d["output"]),
        width=d["width"],
        height=d["height"],
        class_names=[c["name"] for c in d["classes"]],
        counts=[c["pixels"] for c in d["classes"]],
        nodata_pixels=d["nodata_pixels"],
        pixel_area_m2=record["pixel_area_m2"],
        seconds=d["seconds"],
        windows=d["windows"],
        extra_outputs=[Path(p) for p in d["extra_outputs"]],
        aux_stats=d["aux_stats"],
        device=d["device"],
        numeric_precision=d["numeric_precision"],
    )


def job_total_text(summaries: Sequence[Any]) -> str:
    """The whole job's area (or pixels) per class, summed over its scenes."""
    names = summaries[0].class_names
    counts = [sum(s.counts[c] for s in summaries) for c in range(len(names))]
    areas = [s.areas_m2() for s in summaries]
    known = all(a is not None for a in areas)
    total = sum(counts)
    width = max([len(n) for n in names] + [5])
    windows = sum(s.windows for s in summaries)
    mpix = sum(s.megapixels for s in summaries)
    lines = [
        f"job: {len(summaries)} scene(s), {mpix:.2f} MPix, {windows} windows",
        f"  {'class':<{width}}  {'area m²' if known else 'pixels':>16}  {'share':>7}",
    ]
    for c, name in enumerate(names):
        amount = f"{sum(a[c] for a in areas):16,.1f}" if known else f"{counts[c]:16,d}"
        share = 100.0 * counts[c] / total if total else 0.0
        lines.append(f"  {name:<{width}}  {amount}  {share:6.2f}%")
    return "\n".join(lines)
