# The Kotlin engine (android_demo/engine) on the desktop JVM, held to the Python runtime: bundles of
# the embedded model exported here, answered by Python (android_demo/engine/vectors/*.py), then the
# engine's JUnit tests on the same bundles (Maven; onnxruntime's Java package from Maven Central).
# Part of `make test`.
ANDROID_TEST := build/android-test
MVN ?= mvn

.PHONY: android-test
android-test: install
	command -v $(MVN) >/dev/null || { echo "android-test needs Maven and a JDK 17 (apt-get install maven openjdk-17-jdk-headless)"; exit 1; }
	rm -rf $(ANDROID_TEST) && mkdir -p $(ANDROID_TEST)/bundles
	$(VENV)/bin/phi4edge export models/embedded/checkpoint -o $(ANDROID_TEST)/bundles/fp32 --precision fp32
	$(VENV)/bin/phi4edge export models/embedded/checkpoint -o $(ANDROID_TEST)/bundles/int4 --precision int4
	for script in android_demo/engine/vectors/*.py; do $(PY) $$script $(ANDROID_TEST) || exit 1; done
	cd android_demo/engine && $(MVN) -B -q test -Dbundles=$(CURDIR)/$(ANDROID_TEST)
