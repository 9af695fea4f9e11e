#!/usr/bin/env bash
# The package as a user installs it: build the wheel, install it alone in a fresh virtual
# environment, and from a folder that is not the checkout run a short API-path run (against the
# bundled fake OpenAI-compatible server) over every generated family, then its leaderboard and
# report. Fails if the wheel lacks its tasks, prompts or simulator profiles, or a dependency.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"
PYTHON="${PYTHON:-python3}"
WORK="$(mktemp -d)"
SERVER=""
cleanup() {
  [ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

"$PYTHON" -m venv "$WORK/venv"
PY="$WORK/venv/bin/python"
PIP="$PY -m pip --disable-pip-version-check -q"
$PIP install --upgrade pip  # the pip of a fresh venv is old; quiet its index warnings
$PIP wheel --no-deps -w "$WORK/dist" "$REPO"
$PIP install "$WORK"/dist/icpo_eval-*.whl

cd "$WORK"  # nothing of the checkout is reachable from here
export ICPO_EVAL_CACHE="$WORK/cache" HF_HUB_OFFLINE=1 LITELLM_LOCAL_MODEL_COST_MAP=True
"$PY" -c "import icpo_eval, sys; sys.exit('not the wheel: ' + icpo_eval.__file__ if '$REPO' in icpo_eval.__file__ else 0)"

"$PY" -m icpo_eval.testing.fake_server > server.log 2>&1 &
SERVER=$!
URL=""
for _ in $(seq 1 100); do
  URL="$(grep -Eo 'http://127\.0\.0\.1:[0-9]+[^ ]*' server.log | head -1 || true)"
  [ -n "$URL" ] && break
  sleep 0.1
done
[ -n "$URL" ] || { cat server.log; echo "wheel check: the fake server did not start" >&2; exit 1; }

ICPO="$WORK/venv/bin/icpo-eval"
"$ICPO" tasks list | tee tasks.txt
if grep -E "^(math|code|database|actions|data2text|summary) .*no committed set" tasks.txt; then
  echo "wheel check: the wheel lacks its task sets" >&2
  exit 1
fi
"$ICPO" run --model hosted_vllm/fake --api-base "$URL" \
  --tasks math,code,database,actions,data2text,summary --grader llm:hosted_vllm/fake-grader \
  --grader-api-base "$URL" --limit 2 --modes full,sharded --simulator rule --no-progress \
  --out results/wheel
test "$(wc -l < results/wheel/conversations.jsonl)" -eq 24
"$ICPO" leaderboard
"$ICPO" report --bootstrap 0 -o report.html
test -s results/leaderboard.csv && test -s report.html
echo "wheel check: passed ($(du -k "$WORK"/dist/*.whl | cut -f1) KiB wheel)"
