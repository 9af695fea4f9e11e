# The two set-up commands of the README. Each creates .venv on first use (scripts/bootstrap.sh).
VENV ?= .venv
DEMO_OUT ?= results/quickstart

.PHONY: demo test lint bootstrap

bootstrap:
	./scripts/bootstrap.sh

# The main job on the embedded model: 10 math instructions in full, concat and sharded mode,
# then its leaderboard and HTML report.
demo: bootstrap
	$(VENV)/bin/icpo-eval run --model local/smollm2 --tasks math --modes full,concat,sharded \
		--limit 10 --out $(DEMO_OUT)
	$(VENV)/bin/icpo-eval leaderboard $(DEMO_OUT) -o $(DEMO_OUT)/leaderboard.csv
	$(VENV)/bin/icpo-eval report $(DEMO_OUT) -o $(DEMO_OUT)/report.html

test: bootstrap
	HF_HUB_OFFLINE=1 LITELLM_LOCAL_MODEL_COST_MAP=True $(VENV)/bin/python -m pytest -q

lint: bootstrap
	$(VENV)/bin/ruff check icpo_eval tests benchmarks
	$(VENV)/bin/ruff format --check icpo_eval tests benchmarks
