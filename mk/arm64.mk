# `make arm64-check`: the Python runtime under ARM64 emulation gives x86's greedy tokens (embedded
# model; fp32 and int4; ONNX and ORT format; text, image and audio prompts). Needs root (apt-get,
# debootstrap, chroot, mount) and qemu-user's binfmt registration. Not part of `make test`.
#
# - $(ARM64_ROOT): a Debian bookworm arm64 root (debootstrap, minbase + python3), made once and kept;
# - $(ARM64_ROOT)/opt/site: onnxruntime's aarch64 wheel and the runtime's other dependencies at
#   constraints.txt's versions (pip --platform; no torch: the runtime never needs it), redone when
#   constraints.txt changes;
# - scripts/arm64_check.py: exports the bundles on x86, runs the prompts on x86 and in the root
#   (/proc mounted for the run only; /sys never: onnxruntime crashed under qemu with it), prints
#   the table; exit 1 on a token mismatch where x86 was confident.
# ARM64_ITEMS: prompts per modality (the demo's sample and the first held-out items). ARM64_CPUS:
# qemu CPU models to run on (see scripts/arm64_check.py --help; plain `max` emulates SVE and SME, 35x slower).
ARM64_ROOT    ?= build/arm64-root
ARM64_MIRROR  ?= http://deb.debian.org/debian
ARM64_ITEMS   ?= 4
ARM64_CPUS    ?= cortex-a76 max,sve=off,sme=off
ARM64_PACKAGES := numpy onnxruntime onnx safetensors ml_dtypes tokenizers jinja2 click tqdm pillow soundfile soxr jiwer
ARM64_WHEEL_TAGS := --platform manylinux_2_28_aarch64 --platform manylinux_2_17_aarch64 \
                    --platform manylinux2014_aarch64 --platform linux_aarch64 \
                    --only-binary=:all: --python-version 3.11 --implementation cp

.PHONY: arm64-check arm64-tools

arm64-tools:
	@command -v qemu-aarch64-static >/dev/null && command -v debootstrap >/dev/null || \
		apt-get install -y -qq qemu-user-static binfmt-support debootstrap
	@test -e /proc/sys/fs/binfmt_misc/qemu-aarch64 || { \
		mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc; \
		update-binfmts --enable qemu-aarch64; }

$(ARM64_ROOT)/.debootstrap-done:
	$(MAKE) arm64-tools
	for d in $(ARM64_ROOT) $(ARM64_ROOT).partial; do ! mountpoint -q $$d/proc || umount $$d/proc; done
	rm -rf --one-file-system $(ARM64_ROOT).partial
	mkdir -p $(dir $(ARM64_ROOT))   # debootstrap cannot make the parent folder (a fresh clone has no build/)
	debootstrap --arch=arm64 --variant=minbase --include=python3,libstdc++6,libgomp1 bookworm \
		$(ARM64_ROOT).partial $(ARM64_MIRROR)
	rm -rf --one-file-system $(ARM64_ROOT) && mv $(ARM64_ROOT).partial $(ARM64_ROOT)
	touch $@

$(ARM64_ROOT)/opt/site/.installed: constraints.txt $(ARM64_ROOT)/.debootstrap-done | $(STAMP)
	rm -rf $(ARM64_ROOT)/opt/site.partial
	$(PY) -m pip install -q --target $(ARM64_ROOT)/opt/site.partial $(ARM64_WHEEL_TAGS) $(PIN) $(ARM64_PACKAGES)
	rm -rf $(ARM64_ROOT)/opt/site && mv $(ARM64_ROOT)/opt/site.partial $(ARM64_ROOT)/opt/site
	touch $@

arm64-check: install $(ARM64_ROOT)/opt/site/.installed
	$(MAKE) arm64-tools
	$(PY) -m scripts.arm64_check --root $(ARM64_ROOT) --items $(ARM64_ITEMS) $(addprefix --cpu ,$(ARM64_CPUS))
