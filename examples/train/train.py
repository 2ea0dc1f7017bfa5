"""Example training script: scikit-learn on a data set scikit-learn ships (no download).

Runs unchanged under `ml-env train` (or any Python with scikit-learn): reads an optional CSV
input, trains a classifier, writes the model and metrics to $ML_ENV_OUTPUT_DIR. Paths can also
come as arguments, the way an Azure ML command job passes them:

    ml-env train --env envs/sklearn.toml --source examples/train --script train.py -- --alpha 0.5
    ml-env train ... --input data=./data -- --data '${{inputs.data}}' --model-dir '${{outputs.model}}'
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


def load_data(data_dir: str | None) -> tuple[np.ndarray, np.ndarray, str]:
    """The CSV in input `data` when given (last column = label), else scikit-learn's digits."""
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
    parser.add_argument("--data", default=os.environ.get("ML_ENV_INPUT_DATA"), help="a CSV file or a folder of them")
    parser.add_argument("--model-dir", help="where the model goes (default: the outputs' model/)")
    args = parser.parse_args()

    X, y, source = load_data(args.data)
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
    model_dir = Path(args.model_dir) if args.model_dir else out / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, model_dir / "model.joblib")
    (model_dir / "classes.json").write_text(json.dumps([int(c) for c in model.classes_]))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(f"trained on {source}: {len(X_train)} rows, alpha={args.alpha}")
    print(f"ML_ENV_METRIC accuracy={metrics['accuracy']}")


if __name__ == "__main__":
    main()
