"""A whole federation's data for `wafl simulate`: a bundled scikit-learn dataset split across
organisations (IID, or non-IID with a Dirichlet prior over each class's share), or the user's own
files, one per organisation.

Own data, one file per organisation:

- CSV: a header row, then one row per sample: ``d_in`` numeric feature columns and a last column
  named ``label`` holding the class, an integer in ``[0, d_out)``;
- NPZ: an array ``x`` (samples x d_in, numbers) and an array ``y`` (samples, integer classes).

Features are standardised with the statistics of all training rows together (what the
organisations agree on before training) and quantised to the configuration's fixed point. A
value that does not fit the fixed-point data range after scaling is an error, not clipped.
A quarter of every organisation's rows is held out for evaluation.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from wafl.core.config import ModelConfig
from wafl.core.fixedpoint import quantize
from wafl.data.datasets import OrgData, one_hot, standardised_split
from wafl.data.standardisation import Standardisation

HELD_OUT = 0.25


class DataFileError(ValueError):
    """An organisation's data file cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class FederationData:
    orgs: list[OrgData]
    x_train: np.ndarray  # float, standardised: every organisation's training rows (central baseline)
    y_train: np.ndarray  # int labels
    x_test: np.ndarray  # float, standardised: every organisation's held-out rows
    y_test: np.ndarray
    source: str
    standardisation: Standardisation | None = None
    """What turned the raw features into x_train and x_test (None: not known)."""

    def sizes(self) -> list[int]:
        return [len(o.x_train) for o in self.orgs]


def split_indices(labels: np.ndarray, orgs: int, alpha: float | None, rng: np.random.Generator) -> list[np.ndarray]:
    """IID (alpha None): a random equal split. Otherwise each class is shared out with
    proportions drawn from Dirichlet(alpha): small alpha, few classes per organisation."""
    if alpha is None:
        return [np.sort(p) for p in np.array_split(rng.permutation(len(labels)), orgs)]
    parts: list[list[int]] = [[] for _ in range(orgs)]
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        shares = rng.dirichlet([alpha] * orgs)
        cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
        for org, chunk in enumerate(np.split(members, cuts)):
            parts[org] += chunk.tolist()
    # Every organisation needs at least one batch's worth of rows to train at all.
    for org in range(orgs):
        if not parts[org]:
            donor = max(range(orgs), key=lambda o: len(parts[o]))
            parts[org].append(parts[donor].pop())
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def bundled(cfg: ModelConfig, dataset: str, orgs: int, alpha: float | None = None, seed: int = 0) -> FederationData:
    x_train, x_test, y_train, y_test, scaling = standardised_split(cfg, dataset, seed)
    parts = split_indices(y_train, orgs, alpha, np.random.default_rng(seed))
    members = [OrgData(quantize(x_train[p], cfg).values, one_hot(y_train[p], cfg), x_test, y_test) for p in parts]
    split = "iid" if alpha is None else f"dirichlet(alpha={alpha})"
    return FederationData(members, x_train, y_train, x_test, y_test, f"{dataset}, {split}", scaling)


def read_file(path: Path, cfg: ModelConfig) -> tuple[np.ndarray, np.ndarray]:
    """Features (float) and labels (int) of one organisation's file; DataFileError if unusable."""
    if not path.is_file():
        raise DataFileError(f"{path}: no such file")
    if path.suffix.lower() == ".npz":
        x, y = _read_npz(path)
    elif path.suffix.lower() == ".csv":
        x, y = _read_csv(path, cfg)
    else:
        raise DataFileError(f"{path}: unknown format {path.suffix!r} (use .csv or .npz)")
    if x.ndim != 2 or x.shape[1] != cfg.d_in:
        raise DataFileError(f"{path}: {x.shape[1] if x.ndim == 2 else '?'} feature columns, "
                            f"configuration {cfg.name} needs {cfg.d_in}")
    if len(x) != len(y):
        raise DataFileError(f"{path}: {len(x)} feature rows but {len(y)} labels")
    if len(x) < 4:
        raise DataFileError(f"{path}: {len(x)} rows; at least 4 are needed (a quarter is held out)")
    bad = np.argwhere(~np.isfinite(x))
    if len(bad):
        row, col = bad[0]
        raise DataFileError(f"{path}: NaN or infinite value at row {row + 1}, column {col + 1}")
    if np.any(y < 0) or np.any(y >= cfg.d_out):
        row = int(np.flatnonzero((y < 0) | (y >= cfg.d_out))[0])
        raise DataFileError(f"{path}: label {y[row]} at row {row + 1} is not a class in [0, {cfg.d_out})")
    return x, y


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "x" not in archive or "y" not in archive:
                raise DataFileError(f"{path}: needs arrays 'x' and 'y', has {sorted(archive.files)}")
            x, y = archive["x"], archive["y"]
    except (OSError, ValueError) as exc:
        if isinstance(exc, DataFileError):
            raise
        raise DataFileError(f"{path}: not a readable NPZ archive ({exc})") from None
    if not np.issubdtype(x.dtype, np.number):
        raise DataFileError(f"{path}: 'x' holds {x.dtype} values, not numbers")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataFileError(f"{path}: 'y' holds {y.dtype} values, not integer classes")
    return x.astype(np.float64), y.astype(np.int64).reshape(-1)


def _read_csv(path: Path, cfg: ModelConfig) -> tuple[np.ndarray, np.ndarray]:
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        raise DataFileError(f"{path}: empty file")
    header, body = rows[0], [r for r in rows[1:] if r]
    if not header or header[-1].strip() != "label":
        raise DataFileError(f"{path}: the last column must be named 'label' (header: {','.join(header)})")
    if len(header) - 1 != cfg.d_in:
        raise DataFileError(f"{path}: {len(header) - 1} feature columns, configuration {cfg.name} needs {cfg.d_in}")
    x = np.empty((len(body), cfg.d_in))
    y = np.empty(len(body), dtype=np.int64)
    for i, row in enumerate(body):
        if len(row) != len(header):
            raise DataFileError(f"{path}: row {i + 2} has {len(row)} columns, the header {len(header)}")
        for j, cell in enumerate(row[:-1]):
            try:
                x[i, j] = float(cell)
            except ValueError:
                raise DataFileError(f"{path}: row {i + 2}, column {header[j]!r}: {cell!r} is not a number") from None
        try:
            y[i] = int(row[-1])
        except ValueError:
            raise DataFileError(f"{path}: row {i + 2}: label {row[-1]!r} is not an integer class") from None
    return x, y


def from_files(cfg: ModelConfig, paths: list[Path], seed: int = 0) -> FederationData:
    if len(paths) < 2:
        raise DataFileError("a federation needs at least two organisations' files")
    read = [read_file(p, cfg) for p in paths]
    splits = [train_test_split(x, y, test_size=HELD_OUT, random_state=seed) for x, y in read]
    x_all = np.concatenate([s[0] for s in splits])
    scaling = Standardisation.fit(x_all)
    scale = float(1 << cfg.frac_bits)
    members = []
    for path, (x_tr, x_te, y_tr, y_te) in zip(paths, splits, strict=True):
        every = scaling.apply(np.concatenate([x_tr, x_te]))  # held-out rows must fit too
        outside = np.argwhere(np.abs(every) * scale > min(-cfg.data_min, cfg.data_max))
        if len(outside):
            row, col = outside[0]
            raise DataFileError(
                f"{path}: column {col + 1} has a value {every[row, col]:.1f} standard deviations from the mean, "
                f"outside the fixed-point data range [{cfg.data_min / scale:g}, {cfg.data_max / scale:g}] "
                f"of {cfg.name}; remove or cap the outlier"
            )
        # Every value fits (checked above), so the quantisation clips nothing here.
        fixed = quantize(scaling.apply(x_tr), cfg).values
        members.append(OrgData(fixed, one_hot(y_tr, cfg), scaling.apply(x_te), y_te))
    x_train = np.concatenate([scaling.apply(s[0]) for s in splits])
    y_train = np.concatenate([s[2] for s in splits])
    x_test = np.concatenate([m.x_test for m in members])
    y_test = np.concatenate([m.y_test for m in members])
    return FederationData(members, x_train, y_train, x_test, y_test, f"{len(paths)} files", scaling)
