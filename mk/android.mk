# The Kotlin engine (android_demo/engine) on the desktop JVM, held to the Python runtime: bundles of
# the embedded model exported here (fp32, int4 and int4 with the screened head; ONNX and ORT format), answered by Python
# (android_demo/engine/vectors/*.py), then the engine's JUnit tests on the same bundles (Maven;
# onnxruntime's Java package from Maven Central). Part of `make test`.
ANDROID_TEST := build/android-test
MVN ?= mvn
# ORT-format files load in the onnxruntime that wrote them or a newer one, and Maven Central's
# newest Java/Android onnxruntime is 1.29.0 (onnxruntime 1.29 refuses files 1.32 writes:
# "Unrecognized attribute: causal for operator GroupQueryAttention"). So the mobile bundles are
# converted by `phi4edge mobile` running on onnxruntime 1.29.0, in a venv of its own (no torch).
APP_ORT     := 1.29.0
ORT_VENV    := build/ort-$(APP_ORT)
ORT_STAMP   := $(ORT_VENV)/.installed

$(ORT_STAMP): pyproject.toml constraints.txt mk/android.mk
	rm -rf $(ORT_VENV) && $(PYTHON) -m venv $(ORT_VENV)
	grep -v -i -E '^(onnxruntime|torch|nvidia|triton)' constraints.txt > $(ORT_VENV)/constraints.txt
	$(ORT_VENV)/bin/pip install -q -c $(ORT_VENV)/constraints.txt onnxruntime==$(APP_ORT) -e .
	touch $(ORT_STAMP)

.PHONY: android-test
android-test: install $(ORT_STAMP)
	command -v $(MVN) >/dev/null || { echo "android-test needs Maven and a JDK 17 (apt-get install maven openjdk-17-jdk-headless)"; exit 1; }
	rm -rf $(ANDROID_TEST) && mkdir -p $(ANDROID_TEST)/bundles
	for p in fp32 int4 int4-screened; do \
	  $(VENV)/bin/phi4edge export models/embedded/checkpoint -o $(ANDROID_TEST)/bundles/$$p --precision $${p%-screened} \
	    $$(case $$p in *-screened) echo --head int8-screened;; esac) && \
	  $(ORT_VENV)/bin/phi4edge mobile $(ANDROID_TEST)/bundles/$$p -o $(ANDROID_TEST)/bundles/$$p-ort || exit 1; done
	for script in android_demo/engine/vectors/*.py; do $(PY) $$script $(ANDROID_TEST) || exit 1; done
	cd android_demo/engine && $(MVN) -B -q test -Dbundles=$(CURDIR)/$(ANDROID_TEST)
