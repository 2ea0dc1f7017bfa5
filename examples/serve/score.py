"""Example entry script, written for Azure ML and run unchanged by ml-env's scoring server.

init() loads the model the training example writes (examples/train/train.py ->
outputs/model/model.joblib) from AZUREML_MODEL_DIR; run() takes {"data": [[64 pixel values], ...]}
and returns {"predictions": [...]}.
"""

import json
import os

import joblib
import numpy as np

model = None

# declared schemas make /swagger.json available
input_schema = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "data": {
            "type": "array",
            "items": {"type": "array", "items": {"type": "number"}, "minItems": 64, "maxItems": 64},
        }
    },
}
output_schema = {"type": "object", "properties": {"predictions": {"type": "array", "items": {"type": "integer"}}}}


def init():
    global model
    model_dir = os.environ["AZUREML_MODEL_DIR"]
    model = joblib.load(os.path.join(model_dir, "model.joblib"))
    print(f"loaded model from {model_dir}")


def run(raw_data):
    data = np.array(json.loads(raw_data)["data"], dtype=float)
    return {"predictions": [int(p) for p in model.predict(data)]}
