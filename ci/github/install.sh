#!/usr/bin/env bash
# Install ml-env-tasks for the ml-env actions: into a virtual environment of its own, never into
# the runner's interpreter (which PEP 668 forbids on Debian 12 and Ubuntu 24.04 anyway).
#
# The environment is built once per version of the action's source and Python, in the runner's
# tool cache, and never installed into afterwards: jobs on one host (a self-hosted runner, act,
# a matrix) share it read-only; two jobs that need it at once take turns on a lock, and the
# second finds it built. The job's later steps get ML_ENV_BIN through GITHUB_ENV.
#
# ML_ENV_EXTRAS (an action's `extras` input: nox, ...) installs those extras too, into an
# environment of their own (the key names them): the job's later steps run "${ML_ENV_BIN}nox".
#
# A tool cache can be shared with others (a self-hosted runner's users, /tmp as the fallback), so
# nothing found there is run unless it is trusted (cache_tree.py, run by the runner's interpreter
# in isolated mode): the cache folder must be this user's and writable by nobody else, else the
# install goes to a private folder of this job; an entry must be this user's, writable by nobody
# else, and hash to what its .complete marker recorded when this script installed it, else it is
# installed again. (A job running as the same user can rewrite an entry and its marker alike:
# ephemeral runners, or one runner user per trust level, are what isolates jobs from each other.)
set -euo pipefail
python="${ML_ENV_PYTHON:-python3}"
src="$(cd "${ML_ENV_SRC:?ML_ENV_SRC is not set}" && pwd)"
extras="$(printf '%s' "${ML_ENV_EXTRAS:-}" | tr -d ' \t\n' | tr 'A-Z_' 'a-z-')"
if [[ ! "$extras" =~ ^([a-z0-9][a-z0-9-]*(,[a-z0-9][a-z0-9-]*)*)?$ ]]; then
    echo "::error title=ml-env::extras: names of ml-env-tasks' extras, comma-separated (such as nox)"
    exit 2
fi
with="${extras:+-with-${extras//,/-}}"
if [ -n "${ML_ENV_BIN:-}" ] && [ -x "${ML_ENV_BIN}python" ] && [[ -z "$with" || "$ML_ENV_BIN" == *"$with/bin/" ]]; then
    exit 0  # an earlier ml-env action of this job installed it (with these extras)
fi
version="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
if rev="$(git -C "$src" rev-parse HEAD 2>/dev/null)" \
    && [ -z "$(git -C "$src" status --porcelain --untracked-files=no -- ml_env_tasks pyproject.toml 2>/dev/null)" ]; then
    key="$rev"
else  # not a clean checkout: the files decide
    key="$(cd "$src" && find ml_env_tasks pyproject.toml -type f | sort | xargs sha256sum | sha256sum | cut -c1-40)"
fi
tree() { "$python" -I "$src/ci/github/cache_tree.py" "$@"; }
private="${RUNNER_TEMP:-${TMPDIR:-/tmp}}"
base="${RUNNER_TOOL_CACHE:-$private}/ml-env-tasks"
mkdir -p "$(dirname "$base")"
mkdir -m 0700 "$base" 2>/dev/null || true
if ! tree safe "$base"; then
    echo "::warning title=ml-env::the tool cache $base is not this user's own: ml-env is installed for this job only"
    base="$(mktemp -d "$private/ml-env-tasks.XXXXXXXX")"
fi
cache="$base/py${version}-${key:0:16}${with}"
exec 9>"$cache.lock"
flock 9
if [ -e "$cache/.complete" ] && ! tree verify "$cache"; then
    echo "ml-env-tasks: $cache is not trusted: installing it again"
    rm -f "$cache/.complete"
fi
if [ ! -f "$cache/.complete" ]; then
    rm -rf "$cache"
    (umask 022 && "$python" -m venv "$cache") || {
        echo "::error title=ml-env::cannot create a virtual environment with $python (Debian/Ubuntu: apt-get install python3-venv)"
        exit 1
    }
    (umask 022 && "$cache/bin/python" -m pip install -q --disable-pip-version-check "$src${extras:+[$extras]}")
    tree seal "$cache"
fi
flock -u 9
echo "ML_ENV_BIN=$cache/bin/" >> "${GITHUB_ENV:-/dev/null}"
echo "ml-env-tasks: $cache"
