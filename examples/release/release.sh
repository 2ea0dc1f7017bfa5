#!/usr/bin/env bash
# Release example: promote exactly the smoke-tested scoring image to production, by digest,
# and show the ledger entry. Run from the repository root with the lab up (`nox -s lab`).
#
#   bash examples/release/release.sh            # VERSION=1.0.0 by default
#
# Settings (environment): REGISTRY (tested images), PROD (production repository), VERSION,
# LEDGER. The lab's build settings come from ML_ENV_BUILD_NETWORK / ML_ENV_CA_BUNDLE.
set -euo pipefail
REGISTRY=${REGISTRY:-127.0.0.1:5000}
PROD=${PROD:-127.0.0.1:5001/prod/sklearn-inference}
VERSION=${VERSION:-1.0.0}
LEDGER=${LEDGER:-releases.toml}
RUNS=${RUNS:-runs}

# 1. train the model the scoring image will serve (reuses the environment image by hash)
ml-env train --env envs/sklearn.toml --registry "$REGISTRY" --source examples/train --script train.py \
    --runs-dir "$RUNS" --json -- --alpha 0.5 > /tmp/ml-env-release-run.json
model="$(python3 -c 'import json; print(json.load(open("/tmp/ml-env-release-run.json"))["run_id"])')"

# 2. smoke-test the scoring image with that model; a failure stops the release here
ml-env smoke-test --env envs/sklearn-inference.toml --registry "$REGISTRY" --entry examples/serve/score.py \
    --model "$RUNS/$model/outputs/model" --cases examples/serve/cases.jsonl --repeat 5

# 3. the exact image that was tested, by digest
tested="$(ml-env build envs/sklearn-inference.toml --registry "$REGISTRY" --json --quiet \
    | python3 -c 'import json,sys; r=json.load(sys.stdin); print(r["image"].rsplit(":", 1)[0] + "@" + r["digest"])')"

# 4. promote it (a tag that points elsewhere is refused) and show what production is now
ml-env promote "$tested" "$PROD" --tag "$VERSION" --tag prod --allow-overwrite --ledger "$LEDGER"
ml-env ledger show --ledger "$LEDGER" --env sklearn-inference --tag prod
