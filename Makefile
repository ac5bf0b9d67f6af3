# smolvla-cls-edge — one target per stage. Every target installs what it needs (idempotent).
SHELL := /bin/bash
VENV ?= /opt/venvs/smolvla-cls
PY := $(VENV)/bin/python
export PYTHONPATH := $(CURDIR)
export PYTHONUNBUFFERED := 1

PRESET ?= tiny
DATASET_ROOT ?= data/reach
EPISODES ?= 1000
# K >= 1 records episodes that continue K ticks past success (expert holds at the goal; docs/02-training.md)
HOLD_AFTER_SUCCESS ?= 0
# train-quick trains into its own folder (a finished stage is never retrained in place, and a re-run with other
# settings is refused): `make train-quick export parity` uses outputs/train/quick throughout, `make train` default.
OUT ?= $(if $(filter train-quick,$(MAKECMDGOALS)),outputs/train/quick,outputs/train/default)
STEPS ?=
DEVICE ?= cpu
CHECKPOINT ?= $(OUT)/checkpoints/last/pretrained_model
ARTIFACTS ?= artifacts/onnx
ENGINES ?= artifacts/engines
PRECISION ?= fp16
# fp16/bf16 engines are built strongly typed from the calibrated mixed-precision folder $(ARTIFACTS)-$(PRECISION)
# (`make mixed-precision`, redone only when the export changed). ENGINE_FLAGS=--weakly-typed builds from the fp32
# export instead and lets TensorRT 10 pick precisions (weak typing: deprecated in 10.12, gone in 11).
ENGINE_FLAGS ?=
# On the Jetson: `make engine ENGINE_PY=python3` uses JetPack's Python (TensorRT bindings) and installs nothing;
# it needs only numpy, onnx, onnxruntime, ml_dtypes, tqdm, tokenizers and cuda-python (no torch / lerobot).
ENGINE_PY ?= $(PY)
ENGINE_INSTALL := $(if $(filter $(PY),$(ENGINE_PY)),install,)
ENGINE_SRC := $(if $(or $(filter fp32,$(PRECISION)),$(filter --weakly-typed,$(ENGINE_FLAGS))),$(ARTIFACTS),$(ARTIFACTS)-$(PRECISION))
GATE ?= default
REPORT ?= reports

# lerobot 0.6.x (Python 3.13, transformers 5) in a cached Debian 13 root (scripts/lerobot06_env.sh): the same
# test files as the main environment for model, training, torch policy, export and parity, robot factory and
# lerobot's own async robot client against `runtime serve`, then a checkpoint trained
# and exported there whose artifact folder must run in this environment's runtime.
LEROBOT06 := HOST_PY=$(PY) bash scripts/lerobot06_env.sh
LEROBOT06_OUT ?= outputs/lerobot06
LEROBOT06_TESTS := tests/test_layer_pass.py tests/test_lerobot_compat.py tests/test_model.py tests/test_masks.py \
  tests/test_vicreg.py tests/test_time_embedding.py tests/test_policy_contract.py tests/test_torch_policy.py \
  tests/test_train_smoke.py tests/test_dataset_recording.py tests/test_symmetry.py tests/test_robot_section.py \
  tests/test_export.py tests/test_plan_only_wiring.py tests/test_instruction_length.py tests/test_checkpoint_portability.py \
  tests/test_robot_factory.py tests/test_robot_client_wrapper.py tests/test_serve_lerobot_client.py

.PHONY: install test test-lerobot-0.6 lerobot06-steps test-all lint typecheck dataset train train-quick export quantize mixed-precision parity engine eval gate-eval gate-bench demo bench soak export-full parity-full clean

install:
	@bash scripts/ensure_env.sh

test: install
	$(PY) -m pytest -m "not slow"

# Not root (the root needs debootstrap/chroot): a SKIPPED line and success, since `make test` already ran;
# a LEROBOT06_OUT outside the checkout (not visible inside the root) is an error. Then the steps below.
test-lerobot-0.6: install
	@$(LEROBOT06) preflight "$(LEROBOT06_OUT)" || { rc=$$?; [ $$rc = 3 ] && exit 0; exit $$rc; }; \
	  $(MAKE) --no-print-directory lerobot06-steps

lerobot06-steps:
	$(LEROBOT06) build
	$(LEROBOT06) run python -m pytest -m "not slow" -p no:warnings $(LEROBOT06_TESTS)
	rm -rf $(LEROBOT06_OUT)
	$(LEROBOT06) run python -m smolvla_cls.dataset_recording --root $(LEROBOT06_OUT)/data --episodes 6 --seed 5 --quiet
	$(LEROBOT06) run python -m smolvla_cls.train --dataset-root $(LEROBOT06_OUT)/data --output-dir $(LEROBOT06_OUT)/train \
	  --steps 4 --quick --no-report --num-workers 1
	$(LEROBOT06) run python -m export.graphs.onnx_export --checkpoint $(LEROBOT06_OUT)/train/checkpoints/last/pretrained_model \
	  --out $(LEROBOT06_OUT)/onnx --calib-episodes 2
	$(LEROBOT06) run python -m export.graphs.parity --checkpoint $(LEROBOT06_OUT)/train/checkpoints/last/pretrained_model \
	  --artifacts $(LEROBOT06_OUT)/onnx
	$(LEROBOT06) run python -m tests.cross_env_artifacts $(LEROBOT06_OUT)
	SMOLVLA_CLS_LEROBOT06_OUT=$(LEROBOT06_OUT) $(PY) -m pytest -p no:warnings tests/test_cross_env_artifacts.py

test-all: install
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check smolvla_cls export runtime evaluation simtask scripts robot_adapters tests plugins

typecheck: install
	$(PY) scripts/patch_tensorrt_stubs.py
	$(PY) -m mypy --config-file mypy.ini

# DATASET_ROOT holding another LeRobotDataset (your robot's: meta/info.json, no simtask sidecar) is trained on as it is
dataset: install
	@if [ -f "$(DATASET_ROOT)/meta/info.json" ] && [ ! -e "$(DATASET_ROOT)/meta/simtask_recording.json" ]; then \
	  echo "[dataset] $(DATASET_ROOT) is a LeRobotDataset not recorded by simtask: used as it is, nothing recorded"; \
	else set -x; $(PY) -m smolvla_cls.dataset_recording --root $(DATASET_ROOT) --episodes $(EPISODES) --seed 0 \
	  $(if $(filter-out 0,$(HOLD_AFTER_SUCCESS)),--hold-after-success $(HOLD_AFTER_SUCCESS)); fi

train: dataset
	$(PY) -m smolvla_cls.train --dataset-root $(DATASET_ROOT) --preset $(PRESET) --output-dir $(OUT) \
	  --device $(DEVICE) $(if $(STEPS),--steps $(STEPS))

train-quick: dataset
	$(PY) -m smolvla_cls.train --dataset-root $(DATASET_ROOT) --preset $(PRESET) --output-dir $(OUT) \
	  --device $(DEVICE) --quick $(if $(STEPS),--steps $(STEPS))

export: install
	$(PY) -m export.graphs.onnx_export --checkpoint $(CHECKPOINT) --out $(ARTIFACTS)

# int8 dynamic quantization for CPU deployment (onnxruntime only; TensorRT builds from $(ARTIFACTS))
quantize: install
	$(PY) -m export.int8.quantization --src $(ARTIFACTS) --dst $(ARTIFACTS)-int8

parity: install
	$(PY) -m export.graphs.parity --checkpoint $(CHECKPOINT) --artifacts $(ARTIFACTS)

# fp16/bf16 graphs with calibrated fp32 islands (norms, rotary, large activations) and fp32 I/O, checked against fp32
mixed-precision: $(ENGINE_INSTALL)
	$(ENGINE_PY) -m export.precision.mixed_precision --src $(ARTIFACTS) --dst $(ARTIFACTS)-$(PRECISION) --precision $(PRECISION)

engine: $(ENGINE_INSTALL) $(if $(filter $(ARTIFACTS),$(ENGINE_SRC)),,mixed-precision)
	$(ENGINE_PY) -m export.trt.build_engines --artifacts $(ENGINE_SRC) --out $(ENGINES) --precision $(PRECISION) $(ENGINE_FLAGS)

eval: install
	$(PY) -m evaluation run --artifacts $(ARTIFACTS) --backend onnxruntime --gate $(GATE) --episodes 20 --perturb --seed 0

gate-eval: install
	$(PY) -m evaluation.gate_eval --artifacts $(ARTIFACTS) --out $(REPORT)/gate

# Gate benchmark on the change suites (relevant / irrelevant changes, expert-sized deadlines): docs/11
gate-bench: install
	$(PY) -m evaluation.gate_bench --artifacts $(ARTIFACTS) --out $(REPORT)/gate_bench

# The main job on the embedded default: train -> export -> parity -> closed loop with the gate -> report.
demo: train export parity
	$(PY) -m evaluation run --artifacts $(ARTIFACTS) --backend onnxruntime --gate $(GATE) --episodes 50 --perturb --seed 0 \
	  --json $(REPORT)/demo.json
	@# what fp16 TensorRT engines would do to the task: the calibrated fp16 plan, emulated in fp32, in the same loop
	$(PY) -m export.precision.mixed_precision --src $(ARTIFACTS) --dst $(ARTIFACTS)-fp16-emulated --emulated
	$(PY) -m evaluation run --artifacts $(ARTIFACTS)-fp16-emulated --backend onnxruntime --gate $(GATE) --episodes 50 \
	  --perturb --seed 0 --json $(REPORT)/demo-fp16.json
	@# engines only where a real TensorRT loads (the venv's tensorrt-stubs for mypy import as `tensorrt` too)
	@if $(PY) -c "import sys; from runtime.trt_env import tensorrt_missing_reason as r; sys.exit(1 if r() else 0)"; \
	then $(MAKE) engine; \
	else echo "[demo] TensorRT not present: engines skipped (build them on the Jetson/GPU with 'make engine')"; fi

bench: install
	$(PY) -m scripts.bench --out $(REPORT)/bench
	@if [ -f $(CHECKPOINT)/config.json ] && [ -f $(ARTIFACTS)/manifest.json ]; then \
	  $(PY) -m scripts.bench_reactivity --checkpoint $(CHECKPOINT) --artifacts $(ARTIFACTS) --out $(REPORT)/bench; \
	else echo "[bench] no trained model in $(CHECKPOINT) / $(ARTIFACTS): the reactivity table needs 'make train export'"; fi

soak: install
	$(PY) -m evaluation.soak --artifacts $(ARTIFACTS) --ticks 100000

export-full: install
	$(PY) -m export.graphs.onnx_export --preset full --out artifacts/onnx-full

parity-full: install
	$(PY) -m export.graphs.parity --preset full --artifacts artifacts/onnx-full

clean:
	rm -rf artifacts outputs reports
