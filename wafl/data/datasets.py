"""Each organisation's local data: a bundled scikit-learn dataset split across organisations.

Features are standardised with statistics the federation agrees on up front (here: those of the
whole training split) and quantised to the configuration's fixed point; the held-out split is
kept in float for evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wafl.core.config import ModelConfig
from wafl.core.fixedpoint import quantize
from wafl.data.standardisation import Standardisation

# scikit-learn's bundled datasets (sklearn.datasets.load_<name>) the organisations' data can come from.
DATASETS = ("breast_cancer", "digits", "iris", "wine")


@dataclass(frozen=True)
class OrgData:
    x_train: np.ndarray  # int64 fixed point, n x d_in
    y_train: np.ndarray  # int64 one-hot, n x d_out
    x_test: np.ndarray  # float64 standardised, m x d_in
    y_test: np.ndarray  # int64 labels, m

    def batch(self, cfg: ModelConfig, round_id: int) -> tuple[np.ndarray, np.ndarray]:
        """The batch for a round: deterministic, so that retraining a round gives the same update."""
        n = len(self.x_train)
        rows = [((round_id - 1) * cfg.batch + i) % n for i in range(cfg.batch)]
        return self.x_train[rows], self.y_train[rows]


def one_hot(labels: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    if labels.min() < 0 or labels.max() >= cfg.d_out:
        raise ValueError(f"labels must be classes in [0, {cfg.d_out})")
    encoded: np.ndarray = np.eye(cfg.d_out, dtype=np.int64)[labels]
    return encoded


def split_dataset(
    cfg: ModelConfig, dataset: str, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A bundled dataset's stratified train/test split (a quarter held out), raw: x_train, x_test
    (float), y_train, y_test (int labels)."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; bundled: {', '.join(DATASETS)}")
    # Imported here: scikit-learn takes seconds to import, and the CLI lists DATASETS at every start.
    import sklearn.datasets
    from sklearn.model_selection import train_test_split

    features, labels = getattr(sklearn.datasets, f"load_{dataset}")(return_X_y=True)
    if features.shape[1] != cfg.d_in or int(labels.max()) + 1 > cfg.d_out:
        raise ValueError(f"dataset {dataset} ({features.shape[1]} features, {int(labels.max()) + 1} classes) "
                         f"does not fit configuration {cfg.name} ({cfg.d_in} x {cfg.d_out})")
    x_train, x_test, y_train, y_test = train_test_split(
        features, labels, test_size=0.25, stratify=labels, random_state=seed
    )
    return x_train, x_test, y_train.astype(np.int64), y_test.astype(np.int64)


def standardised_split(
    cfg: ModelConfig, dataset: str, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, Standardisation]:
    """`split_dataset`, standardised with the training rows' statistics: x_train, x_test (float),
    y_train, y_test (int labels), and the standardisation."""
    x_train, x_test, y_train, y_test = split_dataset(cfg, dataset, seed)
    scaling = Standardisation.fit(x_train)
    return scaling.apply(x_train), scaling.apply(x_test), y_train, y_test, scaling


def load_org_data(
    cfg: ModelConfig, dataset: str | None, org_index: int, org_count: int, seed: int = 0
) -> OrgData:
    """Organisation ``org_index``'s share of ``dataset`` (None or empty: the configuration's own)."""
    dataset = dataset or cfg.dataset
    if not dataset:
        raise ValueError(f"configuration {cfg.name} names no dataset")
    if not 0 <= org_index < org_count:
        raise ValueError(f"organisation index {org_index} is not in [0, {org_count})")
    x_train, x_test, y_train, y_test, _ = standardised_split(cfg, dataset, seed)
    parts = np.array_split(np.random.default_rng(seed).permutation(len(x_train)), org_count)
    mine = parts[org_index]
    test_parts = np.array_split(np.random.default_rng(seed + 1).permutation(len(x_test)), org_count)
    held_out = test_parts[org_index]
    return OrgData(
        x_train=quantize(x_train[mine], cfg).values,
        y_train=one_hot(y_train[mine], cfg),
        x_test=x_test[held_out],
        y_test=y_test[held_out],
    )


def evaluate(cfg: ModelConfig, w: np.ndarray, b: np.ndarray, x: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Accuracy and MSE loss (against one-hot targets) of fixed-point weights on float data."""
    scale = float(1 << cfg.frac_bits)
    outputs = x @ (w / scale).T + b / scale
    accuracy = float((outputs.argmax(axis=1) == labels).mean())
    loss = float(((outputs - np.eye(cfg.d_out)[labels]) ** 2).mean())
    return accuracy, loss
