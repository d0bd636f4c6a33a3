# anogan-inspect: every target that needs the environment depends on `install`, which does
# nothing when .venv is already current with pyproject.toml.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The pinned CPU build of torch; PyPI's default torch is a CUDA build, so on a fresh machine
# add TORCH_INDEX=https://download.pytorch.org/whl/cpu (or .../whl/cu128 for a GPU, with a
# TORCH_SPEC that index has; any torch >= 2.4).
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
PIP_TORCH_FLAGS := $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),)
BUNDLE ?= bundles/default
DATA_TRAIN ?= data/mnist_train.csv.gz
DATA_TEST ?= data/mnist_test.csv.gz
NORMAL ?= 7,8
ANOMALY ?= 2
PORT ?= 50051
# Where `make serve`, `make smoke` and the demos listen: this machine only unless told
# (HOST=0.0.0.0 or HOST=[::] for every interface). The demos take a free port unless PORT=
# is given.
HOST ?= 127.0.0.1
DEMO_PORT := $(if $(filter command line environment,$(origin PORT)),--port $(PORT),)
STEPS ?=
PYTEST_ARGS ?=
# The texture benchmarks (full-resolution frames), generated from data/textures/grass.png:
# clean frames, and frames with a line's normal variation; and clean frames of a generated
# woven fabric (bench/texture_data.py).
TEXTURE_DATA ?= data/texture
TEXTURE_VARIED_DATA ?= data/texture-varied
TEXTURE_WEAVE_DATA ?= data/texture-weave
TEXTURE_BUNDLE ?= bundles/texture
# A memory bundle (docs/textures.md): a 16×16-tile GAN on sampled tiles, then a memory of
# its discriminator's features; bench/memory_bench.py's RECIPE is the same.
TEXTURE_TRAIN_ARGS ?= --patch-size 16 --stride 8 --latent-dim 32 --epochs 4 --encoder-epochs 2 \
	--samples-per-epoch 20000 --steps 30 --memory disc --layers 0,1 --memory-grid coarse \
	--memory-size 2000 --holdout 0.15

# buf (npm's @bufbuild/buf) lints proto/ against buf's style guide.
BUF ?= npx --yes @bufbuild/buf@1.75.0

.PHONY: install train evaluate demo demo-texture texture-data texture-bundle texture-evaluate \
	test test-fast clean proto proto-tools proto-check proto-lint proto-baseline serve smoke \
	bench bench-quick \
	bench-quality bench-ablation bench-memory bench-learn bench-client bench-line gpu-check \
	gpu-wheels lint

install: $(VENV)/.installed

# Everything, for the README's commands and the tests: the pinned torch first, then the
# project with every role's extra (`dev` = serve + train + codegen + test tools). An older
# .venv may hold onnxruntime-gpu, which shares its module with onnxruntime: it goes first.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip uninstall -q -y onnxruntime-gpu 2>/dev/null || true
	$(VENV)/bin/pip install -q $(PIP_TORCH_FLAGS) "$(TORCH_SPEC)"
	$(VENV)/bin/pip install -q -e ".[dev]" > $(VENV)/install.log 2>&1 || \
		{ cat $(VENV)/install.log; exit 1; }
	touch $@

# The default bundle is committed; if it is missing it is trained on first use (minutes).
$(BUNDLE)/manifest.json: | $(VENV)/.installed
	$(VENV)/bin/anogan-train train --data $(DATA_TRAIN) --normal-labels $(NORMAL) --out $(BUNDLE)

train: install
	$(VENV)/bin/anogan-train train --data $(DATA_TRAIN) --normal-labels $(NORMAL) --out $(BUNDLE)

evaluate: install $(BUNDLE)/manifest.json
	$(VENV)/bin/anogan-train evaluate --bundle $(BUNDLE) --data $(DATA_TEST) \
		--normal-labels $(NORMAL) --anomaly-labels $(ANOMALY) $(if $(STEPS),--steps $(STEPS),)

# Texture frames with small defects (MVTec layout, masks included), and a memory bundle on them.
$(TEXTURE_DATA)/train: | $(VENV)/.installed
	$(PY) -m bench.texture_data --out $(TEXTURE_DATA)

$(TEXTURE_VARIED_DATA)/train: | $(VENV)/.installed
	$(PY) -m bench.texture_data --out $(TEXTURE_VARIED_DATA) --variation

$(TEXTURE_WEAVE_DATA)/train: | $(VENV)/.installed
	$(PY) -m bench.texture_data --out $(TEXTURE_WEAVE_DATA) --texture weave

texture-data: install $(TEXTURE_DATA)/train $(TEXTURE_VARIED_DATA)/train $(TEXTURE_WEAVE_DATA)/train

$(TEXTURE_BUNDLE)/manifest.json: | $(TEXTURE_DATA)/train
	$(VENV)/bin/anogan-train train --data $(TEXTURE_DATA) $(TEXTURE_TRAIN_ARGS) --out $(TEXTURE_BUNDLE)

texture-bundle: install $(TEXTURE_BUNDLE)/manifest.json

texture-evaluate: install $(TEXTURE_BUNDLE)/manifest.json
	$(VENV)/bin/anogan-train evaluate --bundle $(TEXTURE_BUNDLE) --data $(TEXTURE_DATA)

# Serve the texture memory bundle, stream the texture test frames, save overlays (map + boxes).
demo-texture: install $(TEXTURE_BUNDLE)/manifest.json
	$(PY) -m anogan_inspect.clients.demo --bundle $(TEXTURE_BUNDLE) --folder $(TEXTURE_DATA) \
		--overlays reports/demo-texture --rate 0 --host $(HOST) $(DEMO_PORT)

demo: install $(BUNDLE)/manifest.json
	$(PY) -m anogan_inspect.clients.demo --bundle $(BUNDLE) --data $(DATA_TEST) \
		--normal-labels $(NORMAL) --anomaly-labels $(ANOMALY) --host $(HOST) $(DEMO_PORT)

# Stubs for Python (checked in, with anogan/v1/inspection.binpb) and C++, Go, Java, C# and
# TypeScript (gen/<language>/); the generators come from Debian and npm: make proto-tools.
proto: install
	$(PY) proto/generate.py --lang all

proto-tools:
	proto/tools.sh

proto-check: install
	$(PY) proto/generate.py --check

proto-lint: install
	$(PY) proto/generate.py --check
	$(BUF) lint anogan/v1/inspection.binpb --path anogan/v1/inspection.proto --config proto/buf.yaml
	@echo "buf lint: proto/ follows the style guide (STANDARD, COMMENTS)"
	$(BUF) breaking anogan/v1/inspection.binpb --against proto/anogan-v1.binpb \
		--path anogan/v1/inspection.proto --config proto/buf.yaml
	@echo "buf breaking: proto/ is wire- and JSON-compatible with proto/anogan-v1.binpb"

# When a version of the contract is released: make it what `buf breaking` holds proto/ to.
proto-baseline: install
	$(PY) proto/generate.py --baseline

serve: install $(BUNDLE)/manifest.json
	$(VENV)/bin/anogan-serve --bundle $(BUNDLE) --host $(HOST) --port $(PORT)

smoke: install $(BUNDLE)/manifest.json
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" clients/smoke.sh --start-server $(BUNDLE) --host $(HOST)

# The whole suite, what CI runs: proto-lint checks the stubs too (proto-check), then runs
# buf lint; pytest runs on TEST_WORKERS processes (pytest-xdist; each test file on one of
# them, so a file's module fixtures start once and its timing tests run one at a time),
# prints one line per test and the slowest ones at the end.
TEST_WORKERS ?= 2
test: install proto-lint
	$(VENV)/bin/python -m pytest -v -rs --durations=10 -n $(TEST_WORKERS) --dist loadfile \
		$(PYTEST_ARGS)

# The edit loop: unit tests and the service in-process, no subprocess servers, no training
# beyond the shared tiny bundles, no packaging (tests marked `slow` are left out).
test-fast: install
	$(VENV)/bin/python -m pytest -v -m "not slow" --durations=5 -n $(TEST_WORKERS) \
		--dist loadfile $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .

bench: install $(BUNDLE)/manifest.json $(TEXTURE_BUNDLE)/manifest.json
	$(PY) -m bench --bundle $(BUNDLE) --tiled-bundle $(TEXTURE_BUNDLE)

bench-quick: install $(BUNDLE)/manifest.json $(TEXTURE_BUNDLE)/manifest.json
	$(PY) -m bench --bundle $(BUNDLE) --tiled-bundle $(TEXTURE_BUNDLE) --quick

# Quality against speed only (AUROC and frames/s of the seed's method, fast path, search
# budgets and cascade): the figures of docs/performance.md, one command.
bench-quality: install $(BUNDLE)/manifest.json
	$(PY) -m bench --bundle $(BUNDLE) --sections quality --name cpu-quality

bench-ablation: install
	$(PY) -m bench.ablation

# Texture-grade detection (docs/textures.md): both grass benchmarks, memory against pixels
# and the tiled AnoGAN, per defect type, the ablation, and speed on 512×512 frames.
bench-memory: install
	$(PY) -m bench --sections memory --name cpu-memory

# A memory bundle learning operators' confirmed-good frames of a shifted line
# (anogan-train learn): false rejects and recall before and after, per shift and K.
bench-learn: install $(TEXTURE_BUNDLE)/manifest.json
	$(PY) -m bench.learn_bench --bundle $(TEXTURE_BUNDLE) --data $(TEXTURE_DATA) --live

# The streaming client on a line: its memory over 10,000 frames from a folder, and a hot
# folder filling at 20 files/s for a minute (docs/line.md).
bench-client: install $(BUNDLE)/manifest.json
	$(PY) -m bench.client_memory --bundle $(BUNDLE)
	$(PY) -m bench.hot_folder --bundle $(BUNDLE)

# On a CUDA machine (see bench/gpu_check.sh); PYTHON may name a Python that has torch.
gpu-check:
	PYTHON=$(or $(PYTHON_GPU),$(PY)) bench/gpu_check.sh bench/results/gpu

# The wheels a lent GPU machine lacks (its Python 3.12), into .whl/ (ignored), for the
# device tool's carry=[".whl"] (bench/gpu_session.sh installs them there).
GPU_WHEELS = grpcio==1.85.3 protobuf==7.36.2 grpcio-health-checking==1.85.1 \
	grpcio-reflection==1.85.1 googleapis-common-protos==1.76.0 pydantic==2.14.4 \
	pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
	typing-extensions==4.16.0
gpu-wheels: install
	$(VENV)/bin/pip download -q --only-binary=:all: --python-version 3.12 \
		--platform manylinux2014_x86_64 --no-deps -d .whl $(GPU_WHEELS)

# Line-scale serving: the modes over gRPC from many streams in several client processes,
# beside the gRPC ceiling, the engine and the raw step (bench/line_bench.py); for a GPU.
bench-line: install $(BUNDLE)/manifest.json
	$(PY) -m bench.line_bench --bundle $(BUNDLE) --out bench/results/line

clean:
	rm -rf $(VENV) runs reports gen .pytest_cache .ruff_cache *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
