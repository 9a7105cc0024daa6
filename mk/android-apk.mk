# `make android-apk`: the Android demo (android_demo/app, with the engine's sources from
# android_demo/engine) as a signed APK, built without the Android SDK or Gradle, from Debian's
# packages, Maven Central and the npm registry; android_demo/app/README.md says what each tool is.
# Downloads are cached in build/android/cache, so a rerun only recompiles what changed. Run as root
# (it apt-get installs the Debian tools it lacks). Outputs: build/android/phi4edge-demo.apk.

APK_APP     := android_demo/app
APK_ENGINE  := android_demo/engine/src/main/kotlin
APK_OUT     := build/android
APK_CACHE   := $(APK_OUT)/cache
APK_WORK    := $(APK_OUT)/work
APK         := $(APK_OUT)/phi4edge-demo.apk

APK_ID         := phi4edge.demo
APK_VERSION    := 0.1.0
# minSdk: what onnxruntime's AAR asks for
APK_MIN_SDK    := 24
APK_TARGET_SDK := 34
# ABIs whose onnxruntime libraries go in: phones are arm64-v8a; add x86_64 for an emulator
APK_ABIS       ?= arm64-v8a

# onnxruntime's official Android AAR (1.29.0), as the npm package below carries it (Maven Central
# does not serve com.microsoft.onnxruntime:onnxruntime-android here); pinned by digest.
APK_ORT_NPM    := com.github.asus4.onnxruntime@0.4.9
APK_ORT_SHA256 := 98cddbac92640b4a6af72a03c42e0491851f366d3da66bbaeb5dd66310946cf2
# android.jar (API 23) from Debian bullseye's libandroid-23-java, fetched with a private apt
# configuration under build/ (the system's apt sources are not touched)
APK_DEB_SOURCE := deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bullseye main
APK_DEB_PKG    := libandroid-23-java=6.0.1+r72-6
# bookworm packages: aapt2, zipalign, apksigner, and framework-res.apk for aapt2 to link against
APK_DEBS       := aapt apksigner zipalign android-framework-res zip unzip
APK_FRAMEWORK  := /usr/share/android-framework-res/framework-res.apk

APK_ANDROID_JAR := $(APK_CACHE)/android-23.jar
APK_ORT         := $(APK_CACHE)/onnxruntime
APK_M2          := $(APK_CACHE)/m2

# android.jar is API 23 (the newest Debian packages), minSdk is 24: the Java 8 classes Android added
# in API 24 (its libcore became OpenJDK 8's) that the engine uses are taken as compile-time
# signatures from Java 8's API as the JDK records it (lib/ct.sym, what javac --release 8 reads); they
# are never dexed (the phone has them). Kotlin that uses a class android.jar lacks fails to compile:
# add it here only if Android has it at APK_MIN_SDK ("Added in API level" on developer.android.com).
APK_API24       := java/util/Optional java/util/SplittableRandom
APK_CT_SYM      := $(dir $(realpath $(shell command -v javac)))../lib/ct.sym
APK_API_JARS    := $(APK_ANDROID_JAR) $(APK_WORK)/api24.jar

APK_EMPTY       :=
apk_path         = $(subst $(APK_EMPTY) $(APK_EMPTY),:,$(strip $1))
APK_KOTLINC_CP  := $(patsubst %,$(APK_M2)/%.jar,kotlin-compiler-embeddable kotlin-stdlib kotlin-script-runtime kotlin-reflect kotlin-daemon-embeddable kotlinx-coroutines-core-jvm annotations)
APK_KOTLINC     := java -Xmx2g -cp $(call apk_path,$(APK_KOTLINC_CP)) org.jetbrains.kotlin.cli.jvm.K2JVMCompiler
APK_D8          := java -Xmx2g -cp $(APK_M2)/r8.jar com.android.tools.r8.D8 --release --min-api $(APK_MIN_SDK) $(patsubst %,--lib %,$(APK_API_JARS))
APK_LIB_JARS    := $(APK_ORT)/classes.jar $(APK_M2)/gson.jar $(APK_M2)/kotlin-stdlib.jar

APK_SOURCES := $(shell find $(APK_APP)/src/main/kotlin $(APK_ENGINE) -name '*.kt' 2>/dev/null | sort)
APK_RES     := $(shell find $(APK_APP)/src/main/res -type f 2>/dev/null)

.PHONY: android-apk apk-debian-tools

android-apk: $(APK)
	@echo "== apksigner verify --verbose"
	apksigner verify --verbose $(APK)
	@echo "== aapt2 dump badging"
	aapt2 dump badging $(APK)
	@echo "== onnxruntime's native libraries and the dex inside"
	unzip -l $(APK) 'lib/*' 'classes*.dex'
	@for c in phi4edge/demo/MainActivity phi4edge/demo/CaptureProvider phi4edge/engine/Engine ai/onnxruntime/OrtSession; do \
	  unzip -p $(APK) 'classes*.dex' | grep -aq "L$$c;" || { echo "missing from the dex: $$c"; exit 1; }; done
	zipalign -c -p 4 $(APK) && echo "zipalign -c: aligned"
	@ls -l $(APK)

# Checked on every run (dpkg -s is instant); installed only when missing
apk-debian-tools:
	@dpkg -s $(APK_DEBS) >/dev/null 2>&1 || { echo "apt-get install $(APK_DEBS)"; mkdir -p $(APK_OUT); \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APK_DEBS); } >$(APK_OUT)/apt.log 2>&1 \
	  || { cat $(APK_OUT)/apt.log; exit 1; }; }

$(APK_ANDROID_JAR): | apk-debian-tools
	rm -rf $(APK_CACHE)/apt && mkdir -p $(APK_CACHE)/apt/lists/partial $(APK_CACHE)/apt/archives/partial
	echo '$(APK_DEB_SOURCE)' > $(APK_CACHE)/apt/sources.list
	cd $(APK_CACHE)/apt && APT="-o Dir::Etc::SourceList=$$PWD/sources.list -o Dir::Etc::SourceParts=/nonexistent \
	    -o Dir::State::Lists=$$PWD/lists -o Dir::Cache=$$PWD -o Dir::State::Status=/dev/null -o APT::Sandbox::User=root" \
	  && apt-get $$APT -qq update && apt-get $$APT -qq download $(APK_DEB_PKG) \
	  && dpkg-deb -x libandroid-23-java_*.deb root
	cp $(APK_CACHE)/apt/root/usr/share/java/com.android.android-23.jar $@.tmp && mv $@.tmp $@
	rm -rf $(APK_CACHE)/apt

$(APK_WORK)/api24.jar: mk/android-apk.mk | apk-debian-tools
	rm -rf $(APK_WORK)/api24 && mkdir -p $(APK_WORK)/api24 $(@D)
	for c in $(APK_API24); do \
	  e=$$(unzip -Z1 $(APK_CT_SYM) | grep -E "^[^/]*8[^/]*/java\.base/$$c\.sig$$") || { echo "$$c is not in Java 8's API"; exit 1; }; \
	  mkdir -p $(APK_WORK)/api24/$$(dirname $$c) && unzip -p $(APK_CT_SYM) "$$e" > $(APK_WORK)/api24/$$c.class || exit 1; done
	jar cf $@ -C $(APK_WORK)/api24 .

$(APK_ORT)/classes.jar: | apk-debian-tools
	rm -rf $(APK_CACHE)/npm $(APK_ORT) && mkdir -p $(APK_CACHE)/npm $(APK_ORT)
	cd $(APK_CACHE)/npm && npm pack --silent $(APK_ORT_NPM) >/dev/null \
	  && tar xzf *.tgz package/Plugins/Android/onnxruntime.aar
	echo '$(APK_ORT_SHA256)  $(APK_CACHE)/npm/package/Plugins/Android/onnxruntime.aar' | sha256sum -c --quiet
	cd $(APK_ORT) && unzip -q ../npm/package/Plugins/Android/onnxruntime.aar classes.jar 'jni/*' AndroidManifest.xml
	rm -rf $(APK_CACHE)/npm

$(APK_M2)/.stamp: android_demo/tools/pom.xml
	rm -rf $(APK_M2)
	mvn -q -B -Dstyle.color=never -f android_demo/tools/pom.xml dependency:copy-dependencies -Dmdep.stripVersion=true -DoutputDirectory=$(abspath $(APK_M2))
	touch $@

$(APK_OUT)/debug.keystore:
	mkdir -p $(@D)
	keytool -genkeypair -keystore $@ -storepass android -keypass android -alias androiddebugkey \
	  -keyalg RSA -keysize 2048 -validity 10000 -dname "CN=Android Debug,O=Android,C=US" >/dev/null 2>&1

# Resources: aapt2 compiles res/ and links it with the manifest, as the Android Gradle plugin
# would (namespace and SDK levels passed in, as build.gradle.kts sets them), writing R.java.
$(APK_WORK)/base.apk: $(APK_APP)/src/main/AndroidManifest.xml $(APK_RES) | apk-debian-tools
	rm -rf $(APK_WORK)/res $(APK_WORK)/gen && mkdir -p $(APK_WORK)/res $(APK_WORK)/gen
	aapt2 compile --dir $(APK_APP)/src/main/res -o $(APK_WORK)/res/compiled.zip
	sed 's|<manifest |<manifest package="$(APK_ID)" |' $< > $(APK_WORK)/res/AndroidManifest.xml
	aapt2 link -o $@ -I $(APK_FRAMEWORK) --manifest $(APK_WORK)/res/AndroidManifest.xml \
	  --min-sdk-version $(APK_MIN_SDK) --target-sdk-version $(APK_TARGET_SDK) \
	  --version-code 1 --version-name $(APK_VERSION) --java $(APK_WORK)/gen $(APK_WORK)/res/compiled.zip

# Engine and app: Kotlin compiled against android.jar alone (-no-jdk), as on Android, so a call
# to a JDK API that Android lacks fails here rather than on a phone. Java 8 bytecode; R.java by javac.
$(APK_WORK)/classes.jar: $(APK_WORK)/base.apk $(APK_SOURCES) $(APK_API_JARS) $(APK_ORT)/classes.jar $(APK_M2)/.stamp
	@test -n "$(wildcard $(APK_ENGINE)/phi4edge/engine/Engine.kt)" || { echo "no engine sources in $(APK_ENGINE)"; exit 1; }
	rm -rf $(APK_WORK)/classes && mkdir -p $(APK_WORK)/classes
	javac -nowarn --release 8 -d $(APK_WORK)/classes $$(find $(APK_WORK)/gen -name '*.java')
	$(APK_KOTLINC) -no-jdk -no-reflect -no-stdlib -jvm-target 1.8 -module-name phi4edge-demo -nowarn \
	  -cp $(call apk_path,$(APK_API_JARS) $(APK_LIB_JARS) $(APK_WORK)/classes) \
	  -d $(APK_WORK)/classes $(APK_SOURCES)
	cd $(APK_WORK)/classes && jar cf ../classes.jar .

# Dex: the libraries once (D8 desugars onnxruntime's Java 17 bytecode: lambdas, nest-mates), then
# the app's own classes, then the two merged; D8 splits into classes2.dex... should it need to.
$(APK_WORK)/dex-libs/.stamp: $(APK_ORT)/classes.jar $(APK_M2)/.stamp $(APK_API_JARS)
	rm -rf $(@D) && mkdir -p $(@D)
	$(APK_D8) --output $(@D) $(APK_LIB_JARS)
	touch $@

$(APK_WORK)/dex/.stamp: $(APK_WORK)/classes.jar $(APK_WORK)/dex-libs/.stamp
	rm -rf $(APK_WORK)/dex-app $(@D) && mkdir -p $(APK_WORK)/dex-app $(@D)
	$(APK_D8) $(patsubst %,--classpath %,$(APK_LIB_JARS)) --output $(APK_WORK)/dex-app $<
	$(APK_D8) --output $(@D) $(APK_WORK)/dex-libs/*.dex $(APK_WORK)/dex-app/*.dex
	touch $@

# The APK: aapt2's resources + dex + onnxruntime's .so files (compressed: the manifest leaves
# extractNativeLibs at its default, true), 4-byte aligned, then signed (v2 + v3 schemes) with a
# debug key that keytool makes in build/android.
$(APK): $(APK_WORK)/base.apk $(APK_WORK)/dex/.stamp $(APK_ORT)/classes.jar $(APK_OUT)/debug.keystore
	rm -rf $(APK_WORK)/stage && mkdir -p $(APK_WORK)/stage
	cp $(APK_WORK)/base.apk $(APK_WORK)/unsigned.apk
	cp $(APK_WORK)/dex/*.dex $(APK_WORK)/stage/
	for abi in $(APK_ABIS); do mkdir -p $(APK_WORK)/stage/lib/$$abi && cp $(APK_ORT)/jni/$$abi/*.so $(APK_WORK)/stage/lib/$$abi/; done
	cd $(APK_WORK)/stage && zip -q -X -r ../unsigned.apk .
	zipalign -f -p 4 $(APK_WORK)/unsigned.apk $(APK_WORK)/aligned.apk
	apksigner sign --ks $(APK_OUT)/debug.keystore --ks-pass pass:android --key-pass pass:android \
	  --v1-signing-enabled false --v2-signing-enabled true --v3-signing-enabled true --v4-signing-enabled false --out $@.tmp $(APK_WORK)/aligned.apk && mv $@.tmp $@
