#!/usr/bin/env bash
# Release example: promote exactly the smoke-tested scoring image to production, by digest,
# and show the ledger entry. Run from the repository root, e.g. on the lab (`nox -s lab`):
#
#   REGISTRY=127.0.0.1:5000 PROD=127.0.0.1:5001/prod/sklearn-inference bash examples/release/release.sh
#
# Settings (environment): REGISTRY (tested images), PROD (production repository), VERSION
# (1.0.0), LEDGER (default: kept in the registry next to PROD, so every clone and every re-run
# sees one history), RUNS, SIGN_KEY (a cosign key file or env://NAME, its password in
# COSIGN_PASSWORD: the promotion signs the released digest at PROD and the ledger names the key).
# Build settings (network, CA bundle) come from ml-env's config files.
# Running it again changes nothing: the image is reused, the promotion is already there.
set -euo pipefail
REGISTRY=${REGISTRY:?set REGISTRY to the registry the tested images live in}
PROD=${PROD:?set PROD to the production repository, e.g. registry.example.com/prod/sklearn-inference}
VERSION=${VERSION:-1.0.0}
LEDGER=${LEDGER:-oci://$PROD:ml-env-ledger}
RUNS=${RUNS:-runs}
sign=()
if [ -n "${SIGN_KEY:-}" ]; then sign=(--sign-key "$SIGN_KEY"); fi
run_json="$(mktemp)"
trap 'rm -f "$run_json"' EXIT

# 1. train the model the scoring image will serve (reuses the environment image by hash)
ml-env train --env envs/sklearn.toml --registry "$REGISTRY" --source examples/train --script train.py \
    --runs-dir "$RUNS" --json -- --alpha 0.5 > "$run_json"
model="$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["run_id"])' "$run_json")"

# 2. smoke-test the scoring image with that model; a failure stops the release here
ml-env smoke-test --env envs/sklearn-inference.toml --registry "$REGISTRY" --entry examples/serve/score.py \
    --model "$RUNS/$model/outputs/model" --cases examples/serve/cases.jsonl --repeat 5

# 3. the exact image that was tested, by digest
tested="$(ml-env build envs/sklearn-inference.toml --registry "$REGISTRY" --json --quiet \
    | python3 -c 'import json,sys; r=json.load(sys.stdin); print(r["image"].rsplit(":", 1)[0] + "@" + r["digest"])')"

# 4. promote it: the version tag never moves (a VERSION already given to another image is refused,
#    exit 5: choose a new VERSION), then prod moves to it; show what production is now
ml-env promote "$tested" "$PROD" --tag "$VERSION" --ledger "$LEDGER" "${sign[@]}"
ml-env promote "$tested" "$PROD" --tag prod --allow-overwrite --ledger "$LEDGER" "${sign[@]}"
ml-env ledger show --ledger "$LEDGER" --env sklearn-inference --tag prod
