# `make run` and `make test` are all a fresh clone needs; both set up .venv first, once.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run test browser lint bench fuzz clean

setup: $(STAMP)

# torch==2.13.0 goes in first: on our machines pip's find-links (/etc/pip.conf) hold its CPU
# build, and the project's looser `torch>=2.6` is then already satisfied instead of pulling a
# multi-GB CUDA build. Elsewhere, for a CPU-only torch, first:
#   PIP_INDEX_URL=https://download.pytorch.org/whl/cpu .venv/bin/pip install torch==2.13.0
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: setup
	$(BIN)/digits run

test: setup browser
	$(BIN)/python -m pytest -q

# The browser test drives Debian's Chromium (never a downloaded one). Install it where we can:
# as root with apt-get and no /usr/bin/chromium yet; anywhere else, or if apt-get fails, the
# test skips itself.
browser:
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update && apt-get install -y chromium) \
			|| echo "chromium not installed (offline? not Debian?): the browser test will skip"; \
	fi

bench: setup
	$(BIN)/python benchmarks/csv_read.py
	$(BIN)/python benchmarks/time_to_accuracy.py

# Coverage-guided fuzzing (atheris, installed on first use) of the CSV reader and the image
# preprocessing, FUZZ_SECONDS each. Seeds: fuzz/corpus/<target>; inputs the fuzzer finds go to
# build/fuzz/<target>, a crashing input to build/fuzz/crash-* (then: a test in test_properties.py).
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := csv_reader image_preprocessing

fuzz: setup
	@$(BIN)/python -c "import atheris" 2>/dev/null || $(BIN)/pip install --quiet atheris
	@for target in $(FUZZ_TARGETS); do \
		mkdir -p build/fuzz/$$target && \
		$(BIN)/python fuzz/$$target.py build/fuzz/$$target fuzz/corpus/$$target \
			-max_total_time=$(FUZZ_SECONDS) -max_len=8192 -timeout=30 -rss_limit_mb=4096 \
			-artifact_prefix=build/fuzz/ -print_final_stats=1 || exit 1; \
	done

lint: setup
	$(BIN)/ruff check src tests benchmarks fuzz
	$(BIN)/ruff format --check src tests benchmarks fuzz

clean:
	rm -rf $(VENV) .pytest_cache
