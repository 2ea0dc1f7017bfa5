#!/usr/bin/env bash
# Install ml-env-tasks for the ml-env actions: into a virtual environment of its own, never into
# the runner's interpreter (which PEP 668 forbids on Debian 12 and Ubuntu 24.04 anyway).
#
# The environment is built once per version of the action's source and Python, in the runner's
# tool cache, and never installed into afterwards: jobs on one host (a self-hosted runner, act,
# a matrix) share it read-only; two jobs that need it at once take turns on a lock, and the
# second finds it built. The job's later steps get ML_ENV_BIN through GITHUB_ENV.
set -euo pipefail
python="${ML_ENV_PYTHON:-python3}"
src="$(cd "${ML_ENV_SRC:?ML_ENV_SRC is not set}" && pwd)"
if [ -n "${ML_ENV_BIN:-}" ] && [ -x "${ML_ENV_BIN}python" ]; then
    exit 0  # an earlier ml-env action of this job installed it
fi
version="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
if rev="$(git -C "$src" rev-parse HEAD 2>/dev/null)" \
    && [ -z "$(git -C "$src" status --porcelain --untracked-files=no -- ml_env_tasks pyproject.toml 2>/dev/null)" ]; then
    key="$rev"
else  # not a clean checkout: the files decide
    key="$(cd "$src" && find ml_env_tasks pyproject.toml -type f | sort | xargs sha256sum | sha256sum | cut -c1-40)"
fi
cache="${RUNNER_TOOL_CACHE:-${RUNNER_TEMP:-${TMPDIR:-/tmp}}}/ml-env-tasks/py${version}-${key:0:16}"
mkdir -p "$(dirname "$cache")"
exec 9>"$cache.lock"
flock 9
if [ ! -f "$cache/.complete" ]; then
    rm -rf "$cache"
    "$python" -m venv "$cache" || {
        echo "::error title=ml-env::cannot create a virtual environment with $python (Debian/Ubuntu: apt-get install python3-venv)"
        exit 1
    }
    "$cache/bin/python" -m pip install -q --disable-pip-version-check "$src"
    touch "$cache/.complete"
fi
flock -u 9
echo "ML_ENV_BIN=$cache/bin/" >> "${GITHUB_ENV:-/dev/null}"
echo "ml-env-tasks: $cache"
