# `make qnn-check`: the embedded model on Qualcomm's QNN HTP backend as onnxruntime-qnn's x86-64
# simulator runs it (no phone or NPU): nodes per provider of every graph (the QNN bundle's with the
# CPU fallback disabled), compile vs context-binary load times, `phi4edge eval` of the CPU bundle and
# of the QNN bundle over the held-out sets side by side with how many greedy answers agree, and
# `phi4edge bench` of both. Report: $(QNN_WORK)/report.md. Not part of `make test` (tests/test_qnn.py
# is its quick part there).
#
# The simulator takes 0.5-2 s per decoder call: the whole held-out sets (700 items, 3 processes) took
# about 1.5 hours on 2 cores shared with other work. QNN_LIMIT=N evaluates the first N items of each
# set; finished parts are kept in $(QNN_WORK)/eval and reused (delete them, or the bundles, to
# measure again).
QNN_WORK  ?= build/qnn
QNN_LIMIT ?=
QNN_JOBS  ?= 3

.PHONY: qnn-check

qnn-check: install
	$(PY) -m scripts.qnn_check --work $(QNN_WORK) --jobs $(QNN_JOBS) $(if $(QNN_LIMIT),--limit $(QNN_LIMIT))
