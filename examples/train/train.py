"""Example training script: scikit-learn on a data set scikit-learn ships (no download).

Runs unchanged under `ml-env train` (or any Python with scikit-learn): reads an optional CSV
input, trains a classifier, writes the model and metrics to $ML_ENV_OUTPUT_DIR.

    ml-env train --env envs/sklearn.toml --source examples/train --script train.py -- --alpha 0.5
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import joblib
import numpy as np
from sklearn.datasets import load_digits
from sklearn.linear_model import SGDClassifier
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def load_data() -> tuple[np.ndarray, np.ndarray, str]:
    """The CSV in input `data` when given (last column = label), else scikit-learn's digits."""
    data_dir = os.environ.get("ML_ENV_INPUT_DATA")
    if data_dir:
        csvs = sorted(Path(data_dir).glob("*.csv")) if Path(data_dir).is_dir() else [Path(data_dir)]
        if csvs:
            arr = np.loadtxt(csvs[0], delimiter=",", skiprows=1)
            return arr[:, :-1], arr[:, -1].astype(int), csvs[0].name
    digits = load_digits()
    return digits.data, digits.target, "sklearn.datasets.load_digits"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--alpha", type=float, default=1e-4, help="regularisation strength")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    X, y, source = load_data()
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, random_state=args.seed, stratify=y)
    model = make_pipeline(StandardScaler(), SGDClassifier(alpha=args.alpha, random_state=args.seed, max_iter=2000))
    model.fit(X_train, y_train)
    pred = model.predict(X_test)
    metrics = {
        "accuracy": round(float(accuracy_score(y_test, pred)), 4),
        "f1_macro": round(float(f1_score(y_test, pred, average="macro")), 4),
        "n_train": len(X_train),
        "alpha": args.alpha,
    }
    out = Path(os.environ.get("ML_ENV_OUTPUT_DIR", "outputs"))
    (out / "model").mkdir(parents=True, exist_ok=True)
    joblib.dump(model, out / "model" / "model.joblib")
    (out / "model" / "classes.json").write_text(json.dumps([int(c) for c in model.classes_]))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(f"trained on {source}: {len(X_train)} rows, alpha={args.alpha}")
    print(f"ML_ENV_METRIC accuracy={metrics['accuracy']}")


if __name__ == "__main__":
    main()
