# Two commands on a fresh machine: `make run` (the main job) and `make test` (the test suite).
# Both create .venv on first use (an existing .venv is kept, e.g. one made with --system-site-packages to reuse a
# system-wide CUDA torch). On a machine without torch, the CPU wheel torch==2.13.0 is installed first; a GPU user who
# already has a CUDA build of torch (2.11–2.13) in the environment keeps it (see README).
# One stamp per level: `make run` installs what training needs, then compiles the CPU kernels once; `make test`,
# `make lint` and `make install` add the dev extra (test and lint tools) on top.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RUN_STAMP := $(VENV)/.installed-run
STAMP := $(VENV)/.installed
# uv installs the dependencies in seconds where pip takes a minute (BENCHMARKS.md, first-run); pip installs uv into
# the venv first. pip itself where asked (INSTALLER=pip), where uv fails (e.g. an index that only pip.conf names),
# and in a venv that includes the system site-packages: uv does not see those, so it would download a second torch.
INSTALLER ?= uv
# Extra arguments for `make run` (Hydra overrides), e.g. make run ARGS="dataset=mnist5k trainer.max_epochs=2".
ARGS :=

export WANDB_MODE ?= offline
export DVC_NO_ANALYTICS = 1

# $(call install_with,ARGS): install ARGS (pip syntax) into the venv, with uv where it can, else pip.
install_with = if [ "$(INSTALLER)" = uv ] && ! grep -qs '^include-system-site-packages *= *true' $(VENV)/pyvenv.cfg \
	&& { [ -x $(BIN)/uv ] || $(BIN)/pip install --quiet uv; }; then \
	$(BIN)/uv pip install --quiet --python $(BIN)/python $(1) \
	|| { echo "uv could not install; trying pip"; $(BIN)/pip install --quiet $(1); }; \
	else $(BIN)/pip install --quiet $(1); fi

$(RUN_STAMP): pyproject.toml
	@echo "installing hm2bp and what training needs into $(VENV) (once; ~25 s with uv, 1–2 min with pip) …"
	@[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet torch==2.13.0
	@$(call install_with,-e .)
	@# Prints its own line when it compiles, nothing when the kernels are already built for this checkout.
	@$(BIN)/python -c "from hm2bp.backend import load_extension; load_extension('cpu')"
	@touch $@

$(STAMP): $(RUN_STAMP) pyproject.toml
	@echo "installing the test and lint tools (the dev extra) …"
	@$(call install_with,-e ".[dev]")
	@touch $@

.PHONY: install run test test-slow lint gpu-wheels gpu-user-kit docs
install: $(STAMP)

run: $(RUN_STAMP)
	@echo "training: python src/run.py$(if $(ARGS), $(ARGS)) …"
	@$(BIN)/python src/run.py $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow

lint: $(STAMP)
	$(BIN)/ruff check src tests bench

# The wheels bench/gpu_check.sh installs on the GPU machine (carry bench/wheels there): pytest for Python 3.12.
gpu-wheels: $(STAMP)
	$(BIN)/pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 -d bench/wheels -r bench/wheels.txt
	du -sh bench/wheels

# What bench/gpu_user_run.sh carries to the GPU machine in .whl/ (git-ignored): Hydra, which the GPU image lacks,
# copied from this venv (pure Python; antlr4 4.9.3 has no wheel to download), matplotlib's wheels for Python 3.12
# (installed there only where the image lacks it), and the 5,000 real MNIST digits as IDX files (4,000 train).
gpu-user-kit: $(STAMP)
	rm -rf .whl && mkdir -p .whl/site .whl/mpl
	S=$$($(BIN)/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])") && \
	cp -r $$S/hydra $$S/omegaconf $$S/antlr4 $$S/hydra_core-*.dist-info $$S/omegaconf-*.dist-info \
	$$S/antlr4_python3_runtime-*.dist-info .whl/site/ && find .whl/site -name __pycache__ -prune -exec rm -rf {} +
	$(BIN)/pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	-d .whl/mpl matplotlib==3.11.2 contourpy kiwisolver pillow fonttools cycler pyparsing python-dateutil six
	$(BIN)/python -c "from hm2bp.data.idx import write_idx; from hm2bp.data.mnist5k import load_mnist5k_split; \
	x, y, xt, yt = load_mnist5k_split(); \
	[write_idx(f'.whl/data/mnist/{s}-{k}-idx{d}-ubyte', a, True) for s, i, l in (('train', x, y), ('t10k', xt, yt)) \
	for k, d, a in (('images', 3, i.reshape(-1, 28, 28).byte().numpy()), ('labels', 1, l.numpy()))]"
	du -sh .whl

# The documentation site (mkdocs.yml over docs/) into site/: the docs extra (MkDocs Material, mkdocstrings,
# markdown-exec) on top of what training needs, since the tutorials train during the build. --strict: a broken link
# or reference, a docstring griffe cannot read, or a failing tutorial fails it.
DOCS_STAMP := $(VENV)/.installed-docs
$(DOCS_STAMP): $(RUN_STAMP) pyproject.toml
	@echo "installing the documentation tools (the docs extra) …"
	@$(call install_with,-e ".[docs]")
	@touch $@

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict
