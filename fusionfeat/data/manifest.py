"""Datasets → manifest: a list of samples (path, label, subject, predefined fold).

Four layouts are understood and auto-detected (``layout=`` forces one):

* ``cnmc``: the C-NMC 2019 release, ``training_data/fold_k/{all,hem}/UID_*.bmp``; the subject is the
  second token of the name (``UID_<P>_…_all.bmp`` → ``P``, ``UID_H<S>_…`` / ``UID_h<S>_…`` → ``H<S>``).
  Images under ``validation_data/`` are used only where their labels file sits beside them.
* ``allidb``: ALL-IDB, ``ImXXX_Y.tif`` (``Y=1`` blast → ALL, ``Y=0`` → HEM), subjects unknown.
* ``folders``: one sub-folder per class, ``root/<class>/*.png``.
* ``csv``: a file with columns ``path,label[,group][,fold]`` (``subject``/``subject_id`` also name the group).

Any number (two or more) of classes. Class names are lower-cased; their order is stable: for two classes
``[negative, positive]`` (``positive`` names the positive class, default ``all``), for more classes sorted by
name, where ``positive`` does not apply (naming one is an error).
"""

from __future__ import annotations

import csv
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fusionfeat.errors import DatasetError
from fusionfeat.fsio import CSV, csv_writer, kind_of, output_target, unsafe_cell

IMAGE_SUFFIXES = (".bmp", ".tif", ".tiff", ".png", ".jpg", ".jpeg")
LAYOUTS = ("cnmc", "allidb", "folders", "csv")
DEFAULT_CLASSES = ("hem", "all")
DEFAULT_POSITIVE = "all"
MAX_FOLD = 10_000  # a dataset's predefined fold numbers: 0..MAX_FOLD

_CNMC_NAME = re.compile(r"UID_(H?\d+)_(\d+)_(\d+)_(all|hem)\.(bmp|png|tiff?|jpe?g)", re.IGNORECASE)
_ALLIDB_NAME = re.compile(r"Im\d+_([01])\.(tif|tiff|jpg|jpeg|png|bmp)", re.IGNORECASE)
_CNMC_VALIDATION_LABELS = "C-NMC_test_prelim_phase_data_labels.csv"
# files a data folder may hold that are never samples: fusionfeat's own lock/temp files and OS litter
_IGNORED_NAMES = {".ds_store", "thumbs.db", "desktop.ini"}


@dataclass(frozen=True)
class Sample:
    """One image: ``path`` relative to the manifest root, ``label`` indexes ``Manifest.classes``."""

    path: str
    label: int
    group: str = ""
    fold: int = -1


@dataclass
class Manifest:
    """The samples of one dataset, with the class names (two: negative first, positive last; more: sorted)."""

    root: Path
    samples: list[Sample]
    classes: tuple[str, ...] = DEFAULT_CLASSES
    layout: str = "folders"
    notes: list[str] = field(default_factory=list)

    @property
    def positive_class(self) -> str:
        """The positive class of a two-class dataset; "" for more classes (no class is the positive one)."""
        return self.classes[1] if len(self.classes) == 2 else ""

    def __len__(self) -> int:
        return len(self.samples)

    def counts(self) -> dict[str, int]:
        """Images per class name."""
        counted = Counter(s.label for s in self.samples)
        return {name: counted.get(i, 0) for i, name in enumerate(self.classes)}

    def has_groups(self) -> bool:
        return any(s.group for s in self.samples)

    def absolute(self, sample: Sample) -> Path:
        return self.root / sample.path


def cnmc_subject(file_name: str) -> str:
    """Subject id from a C-NMC file name: ``UID_11_10_1_all.bmp`` → ``11``, ``UID_h3_4_1_hem.bmp`` → ``H3``."""
    match = _CNMC_NAME.fullmatch(file_name)
    if not match:
        raise DatasetError(
            f"{file_name!r} is not a C-NMC file name (expected UID_<subject>_<img>_<cell>_<all|hem>.bmp)"
        )
    return match.group(1).upper()


def detect_layout(source: Path) -> str:
    """Guess the layout of a data folder or manifest file."""
    if source.is_file():
        if source.suffix.lower() == ".csv":
            return "csv"
        raise DatasetError(f"{source} is a file but not a .csv manifest; pass a data folder or a manifest CSV")
    if _cnmc_fold_dirs(source):
        return "cnmc"
    images = _images_in(source)
    img_dir = source / "img"
    if not images and img_dir.is_dir():
        images = _images_in(img_dir)
    if images and all(_ALLIDB_NAME.fullmatch(p.name) for p in images):
        return "allidb"
    if any(p.is_dir() and not _ignored(p) for p in _entries(source)):
        return "folders"
    raise DatasetError(
        f"cannot tell the layout of {source}: expected class sub-folders, C-NMC training_data/fold_k, "
        "ALL-IDB ImXXX_Y.tif files or a manifest CSV (use --layout to force one)"
    )


def build_manifest(
    source: str | os.PathLike,
    layout: str | None = None,
    positive: str | None = None,
    root: str | os.PathLike | None = None,
    check_files: bool = True,
) -> Manifest:
    """Build the manifest of a data folder or manifest CSV; ``positive`` names the positive class of a
    two-class dataset (default ``all``) and must be left out for more classes.

    ``root`` is the folder a CSV's relative paths start from (default: the CSV's own folder);
    ``check_files=False`` skips the check that every listed image exists.
    """
    src = Path(source).expanduser()
    if not src.exists():
        raise DatasetError(f"no such file or folder: {src}")
    layout = layout or detect_layout(src)
    if layout not in LAYOUTS:
        raise DatasetError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if layout == "csv":
        if not src.is_file():
            raise DatasetError(f"--layout csv needs a CSV file, got the folder {src}")
    elif not src.is_dir():
        raise DatasetError(f"--layout {layout} needs a folder, got the file {src}")
    builder = {"cnmc": _from_cnmc, "allidb": _from_allidb, "folders": _from_folders, "csv": _from_csv}[layout]
    manifest = builder(src, positive.lower() if positive is not None else None)
    if root is not None:
        if layout != "csv":
            raise DatasetError("--root only applies to a manifest CSV")
        manifest.root = Path(root).expanduser()
    _validate(manifest, src, check_files)
    return manifest


MANIFEST_HEADER = ("path", "label", "group", "fold")


def write_manifest(manifest: Manifest, out: str | os.PathLike, overwrite: bool = False,
                   inputs: Sequence[str | os.PathLike] = ()) -> Path:
    """Write ``path,label,group,fold`` with paths relative to the CSV's own folder (atomically, under the
    output rule of ``fusionfeat.fsio``: an existing file is replaced only with ``overwrite``)."""
    out = Path(out)
    with output_target(out, CSV, inputs=inputs, overwrite=overwrite) as target:
        base = out.parent.resolve()
        with open(target.path, "w", newline="", encoding="utf-8") as fh:
            writer = csv_writer(fh)
            writer.writerow(list(MANIFEST_HEADER))
            for s in manifest.samples:
                path = _relative_to(manifest.absolute(s).resolve(), base)
                writer.writerow([path, manifest.classes[s.label], s.group, s.fold])
    return out


def _relative_to(path: Path, base: Path) -> str:
    try:
        return os.path.relpath(path, base)
    except ValueError:  # another drive on Windows
        return str(path)


def _classes_for(names: set[str], positive: str | None, where: Path) -> tuple[str, ...]:
    """The class names in their stable order: ``(negative, positive)`` for two, sorted for more."""
    lowered = {n.lower() for n in names}
    if len(lowered) < 2:
        raise DatasetError(
            f"{where} has a single class ({', '.join(sorted(names)) or 'none'}); fusionfeat needs two classes"
        )
    if len(lowered) > 2:
        if positive is not None:
            raise DatasetError(f"--positive {positive!r} applies to two classes only; {where} has {len(lowered)} "
                               f"({', '.join(sorted(lowered))}): leave --positive out")
        return tuple(sorted(lowered))
    positive = DEFAULT_POSITIVE if positive is None else positive
    if positive not in lowered:
        raise DatasetError(
            f"the positive class {positive!r} is not among the classes {sorted(lowered)} of {where}; "
            "name it with --positive"
        )
    negative = (lowered - {positive}).pop()
    return negative, positive


def _ignored(path: Path) -> bool:
    """Hidden files, fusionfeat's own ``*.lock``/``.*.tmp`` files and OS litter are never samples."""
    name = path.name.lower()
    return name.startswith(".") or name in _IGNORED_NAMES or name.endswith((".lock", ".tmp"))


def _entries(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except OSError as exc:
        raise DatasetError(f"cannot list {folder}: {exc.strerror or exc}") from None


def _images_in(folder: Path) -> list[Path]:
    """Image files of one folder, sorted; an image-named entry that cannot be read is an error, never dropped."""
    found = []
    for p in _entries(folder):
        if _ignored(p) or p.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        try:
            p.stat()  # follows symlinks: a loop or a dangling link fails here
        except OSError as exc:
            raise DatasetError(f"cannot read {p}: {exc.strerror or exc} (fix or remove it)") from None
        if not p.is_file():
            raise DatasetError(f"{p} is named like an image but is {kind_of(p)}, not a file; move it out of the "
                               "data folder or rename it")
        found.append(p)
    return sorted(found)


def _from_folders(root: Path, positive: str | None) -> Manifest:
    class_dirs = sorted(p for p in _entries(root) if p.is_dir() and not _ignored(p))
    with_images = {d: _images_in(d) for d in class_dirs}
    with_images = {d: imgs for d, imgs in with_images.items() if imgs}
    spelled: dict[str, Path] = {}
    for d in with_images:
        if d.name.lower() in spelled:
            raise DatasetError(f"{root}: the class folders {spelled[d.name.lower()].name!r} and {d.name!r} differ "
                               "only in case (class names are case-insensitive); merge them")
        spelled[d.name.lower()] = d
    classes = _classes_for({d.name for d in with_images}, positive, root)
    samples = [
        Sample(path=str(img.relative_to(root)), label=classes.index(d.name.lower()))
        for d, imgs in with_images.items()
        for img in imgs
    ]
    return Manifest(root=root, samples=samples, classes=classes, layout="folders")


def _cnmc_fold_dirs(root: Path) -> list[Path]:
    base = root / "training_data" if (root / "training_data").is_dir() else root
    return sorted(p for p in base.glob("fold_*") if p.is_dir() and p.name[5:].isdigit())


def _from_cnmc(root: Path, positive: str | None) -> Manifest:
    fold_dirs = _cnmc_fold_dirs(root)
    if not fold_dirs:
        raise DatasetError(f"{root} has no training_data/fold_k folders, so it is not the C-NMC layout")
    classes = _classes_for({"all", "hem"}, positive, root)
    samples: list[Sample] = []
    for fold_dir in fold_dirs:
        fold = int(fold_dir.name[5:])
        for class_dir in sorted(p for p in fold_dir.iterdir() if p.is_dir()):
            if class_dir.name.lower() not in classes:
                continue
            label = classes.index(class_dir.name.lower())
            for img in _images_in(class_dir):
                samples.append(Sample(str(img.relative_to(root)), label, cnmc_subject(img.name), fold))
    notes = _cnmc_validation(root, classes, samples)
    return Manifest(root=root, samples=samples, classes=classes, layout="cnmc", notes=notes)


def _cnmc_validation(root: Path, classes: tuple[str, ...], samples: list[Sample]) -> list[str]:
    """Add labelled preliminary-test images; say how many were left out for want of labels."""
    val_dir = root / "validation_data" / "C-NMC_test_prelim_phase_data"
    if not val_dir.is_dir():
        return []
    images = _images_in(val_dir)
    labels_file = next((p for p in (val_dir.parent / _CNMC_VALIDATION_LABELS, val_dir / _CNMC_VALIDATION_LABELS)
                        if p.is_file()), None)
    if labels_file is None:
        return [f"{len(images)} image(s) in validation_data/ left out: no {_CNMC_VALIDATION_LABELS} beside them"]
    by_name = _cnmc_labels(labels_file)
    for img in images:
        if img.name in by_name:
            original, y = by_name[img.name]
            label = classes.index("all" if y == 1 else "hem")
            samples.append(Sample(str(img.relative_to(root)), label, cnmc_subject(original), -1))
    return []


def _cnmc_labels(labels_file: Path) -> dict[str, tuple[str, int]]:
    """``new_names`` → (original name, label 0/1) from C-NMC's preliminary-test labels file, checked row by row."""
    needed = ("new_names", "Patient_ID", "labels")
    by_name: dict[str, tuple[str, int]] = {}
    try:
        with open(labels_file, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [c.strip() for c in reader.fieldnames or []]
            missing = [c for c in needed if c not in header]
            if missing:
                raise DatasetError(f"{labels_file} needs the columns {', '.join(needed)} (C-NMC's own labels file); "
                                   f"{', '.join(missing)} missing, found {', '.join(header) or 'no header'}")
            _refuse_repeated_columns(header, labels_file)
            for row in reader:
                row = {k.strip(): (v or "").strip() for k, v in row.items() if isinstance(k, str)}
                where = f"{labels_file}:{reader.line_num}"
                if row["labels"] not in ("0", "1"):
                    raise DatasetError(f"{where}: label {row['labels']!r} is not 0 (hem) or 1 (all)")
                _refuse_control_characters(where, row["new_names"], row["Patient_ID"])
                by_name[row["new_names"]] = (row["Patient_ID"], int(row["labels"]))
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{labels_file} is not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8"
                           ) from None
    except csv.Error as exc:
        raise DatasetError(f"{labels_file} is not a readable CSV ({exc})") from None
    return by_name


def _refuse_repeated_columns(header: Sequence[str], path: Path) -> None:
    """A column named twice (``path,label,Label``) would silently use one of them: refuse it."""
    seen: dict[str, int] = {}
    for i, name in enumerate(header, 1):
        key = name.strip().lower()
        if key in seen:
            raise DatasetError(f"{path}: the header names the column {key!r} twice (columns {seen[key]} and {i}); "
                               "keep one")
        seen[key] = i


def _refuse_control_characters(where: str, *values: str) -> None:
    """NUL and other control characters cannot be stored (HDF5 strings end at NUL) or printed: refuse them."""
    for value in values:
        bad = next((c for c in value if ord(c) < 32 or ord(c) == 127), None)
        if bad is not None:
            raise DatasetError(f"{where}: {value!r} holds the control character {bad!r}; remove it")


def _from_allidb(root: Path, positive: str | None) -> Manifest:
    folder = root / "img" if not _images_in(root) and (root / "img").is_dir() else root
    classes = _classes_for({"all", "hem"}, positive, root)
    samples = []
    for img in _images_in(folder):
        match = _ALLIDB_NAME.fullmatch(img.name)
        if not match:
            raise DatasetError(f"{img} is not an ALL-IDB file name (expected ImXXX_Y.tif with Y 0 or 1)")
        samples.append(Sample(str(img.relative_to(root)), classes.index("all" if match.group(1) == "1" else "hem")))
    return Manifest(root=root, samples=samples, classes=classes, layout="allidb")


def _from_csv(path: Path, positive: str | None) -> Manifest:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            _refuse_repeated_columns(reader.fieldnames or [], path)
            columns = {c.strip().lower(): c for c in (reader.fieldnames or [])}
            if "path" not in columns or "label" not in columns:
                raise DatasetError(
                    f"{path} needs the columns path,label (optional group, fold); found {list(columns)}")
            group_col = next((columns[c] for c in ("group", "subject", "subject_id") if c in columns), None)
            fold_col = columns.get("fold")
            notes: list[str] = []
            rows = _csv_rows(reader, path, columns["path"], columns["label"], notes)
            if [c.strip().lower() for c in reader.fieldnames or []] == list(MANIFEST_HEADER):
                rows = [(line, _undo_safe_cells(row, columns)) for line, row in rows]
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path} is not UTF-8 text (byte {exc.start}: {exc.reason}); "
                           "save the manifest as UTF-8") from None
    except csv.Error as exc:
        raise DatasetError(f"{path} is not a readable CSV ({exc})") from None
    raw_labels = {r[columns["label"]].strip().lower() for _, r in rows}
    numeric = raw_labels <= {"0", "1"}
    named_positive = DEFAULT_POSITIVE if positive is None else positive
    names = {named_positive if v == "1" else "hem" for v in raw_labels} if numeric else raw_labels
    classes = _classes_for(names, positive, path)
    samples = []
    for line, row in rows:
        value = row[columns["label"]].strip().lower()
        name = (named_positive if value == "1" else classes[0]) if numeric else value
        group = (row[group_col] or "").strip() if group_col else ""
        _refuse_control_characters(f"{path}:{line}", group)
        samples.append(Sample(row[columns["path"]].strip(), classes.index(name),
                              group.upper() if _looks_cnmc_healthy(group) else group,
                              _parse_fold(row[fold_col] if fold_col else "", path, line)))
    return Manifest(root=path.parent, samples=samples, classes=classes, layout="csv", notes=notes)


def _undo_safe_cells(row: dict, columns: dict[str, str]) -> dict:
    """A manifest fusionfeat wrote (its exact header) had formula-leading cells neutralised (``fsio.safe_cell``):
    read back the cells as they were, so a path or class name starting with ``=`` round-trips."""
    row = dict(row)
    for key in ("path", "label", "group"):
        if row.get(columns[key]) is not None:
            row[columns[key]] = unsafe_cell(row[columns[key]].strip(), path=key == "path")
    return row


def _csv_rows(reader: csv.DictReader, path: Path, path_col: str, label_col: str,
              notes: list[str]) -> list[tuple[int, dict]]:
    """``(line, row)`` of every labelled row; unlabelled rows (e.g. a held-out test set) are left out with a
    note naming how many and the first line, never silently; a row without a path is an error."""
    rows, unlabelled = [], []
    for row in reader:
        line = reader.line_num
        image = (row.get(path_col) or "").strip()
        label = (row.get(label_col) or "").strip()
        if not image and not label and not any((v or "").strip() for v in row.values() if isinstance(v, str)):
            continue  # a blank line
        if not image:
            raise DatasetError(f"{path}:{line}: the path is blank; give every row an image path")
        _refuse_control_characters(f"{path}:{line}", image, label)
        if not label:
            unlabelled.append((line, image))
            continue
        rows.append((line, row))
    if unlabelled:
        line, image = unlabelled[0]
        notes.append(f"{len(unlabelled)} row(s) of {path} with a blank label left out (first: line {line}, {image})")
    return rows


def _looks_cnmc_healthy(group: str) -> bool:
    return bool(re.fullmatch(r"h\d+", group))


def _parse_fold(value: str, path: Path, line: int) -> int:
    value = (value or "").strip().lower().removeprefix("fold_")
    if value == "":
        return -1
    try:
        fold = int(value)
    except ValueError:
        raise DatasetError(f"{path}:{line}: fold {value!r} is not an integer (or fold_k)") from None
    if not -1 <= fold <= MAX_FOLD:
        raise DatasetError(f"{path}:{line}: fold {value!r} is out of range: give 0 to {MAX_FOLD:,} (blank or -1: "
                           "none)")
    return fold


def _validate(manifest: Manifest, src: Path, check_files: bool) -> None:
    if not manifest.samples:
        raise DatasetError(f"no images found in {src} (looked for {', '.join(IMAGE_SUFFIXES)})")
    present = {s.label for s in manifest.samples}
    if len(present) < 2:
        only = manifest.classes[present.pop()]
        raise DatasetError(f"{src} has images of a single class ({only!r}); fusionfeat needs two or more classes")
    missing = [s.path for s in manifest.samples if check_files and not manifest.absolute(s).is_file()]
    if missing:
        raise DatasetError(f"{len(missing)} listed image(s) do not exist, first: {manifest.root / missing[0]}")
    dupes = [p for p, c in Counter(s.path for s in manifest.samples).items() if c > 1]
    if dupes:
        raise DatasetError(f"{src} lists {dupes[0]} more than once")
    if check_files:
        _refuse_aliases(manifest, src)
    _refuse_undecodable_names(manifest, src)


def _refuse_aliases(manifest: Manifest, src: Path) -> None:
    """Two rows naming one file by different spellings (``a/../x.png``, a symlink) are one image."""
    seen: dict[Path, str] = {}
    for s in manifest.samples:
        try:
            real = manifest.absolute(s).resolve(strict=True)
        except (OSError, RuntimeError) as exc:
            raise DatasetError(f"cannot resolve {manifest.root / s.path}: {exc}") from None
        if real in seen:
            raise DatasetError(f"{src} names one file twice: {seen[real]!r} and {s.path!r} are both {real}; "
                               "keep one row")
        seen[real] = s.path


def _refuse_undecodable_names(manifest: Manifest, src: Path) -> None:
    """File names that are not valid UTF-8 cannot be stored in the (UTF-8) HDF5 store: say so, once."""
    for s in manifest.samples:
        try:
            s.path.encode("utf-8")
        except UnicodeEncodeError:
            shown = s.path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            raise DatasetError(f"{src}: the file name {shown!r} is not valid UTF-8; rename it "
                               "(e.g. `convmv -f latin1 -t utf8`)") from None
