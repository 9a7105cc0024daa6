# OpenVINO check (docs/openvino.md), not in `make test`: the embedded model's bundles (CPU form and
# WebGPU form, fp32 and int4) on onnxruntime-openvino's OpenVINOExecutionProvider (device CPU, the only
# OpenVINO device here) against the CPU on text, image and audio prompts, and where the CPU form's
# NaN comes from. onnxruntime-openvino ships its own onnxruntime, so it gets its own venv
# (build/ov-venv, made on first run). ~30 s after the first. Table: build/openvino/openvino.md.
#   make openvino-check

OPENVINO_OUT := build/openvino

.PHONY: openvino-check

openvino-check: install
	$(PY) -m scripts.openvino_check --out $(OPENVINO_OUT)
