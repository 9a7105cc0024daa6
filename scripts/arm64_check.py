"""`make arm64-check`: the Python runtime on ARM64 (qemu-user emulation in a Debian arm64 root)
gives the tokens it gives on x86, for the embedded model's fp32 and int4 bundles, ONNX and ORT
format, on text, image and audio prompts.

    python -m scripts.arm64_check --root build/arm64-root [--items 4] [--cpu cortex-a76]   # x86, as root

Steps (the root, with onnxruntime's aarch64 wheel and the runtime's other dependencies in
/opt/site, is made by mk/arm64.mk): export the four bundles on x86 into ROOT/work, with the
prompts and their media; run every prompt greedily on x86 (this script, `run`), then the same
inside the root (`chroot ROOT python3 /opt/phi4edge/arm64_check.py run /work` on qemu's `--cpu`
model, the package's runtime and format code copied to /opt/phi4edge; /proc mounted for the run,
/sys never: onnxruntime crashed under qemu with it); compare (`compare`) and print a table. The exit status is 1 when a
token differs at a step where the x86 logits were confident (the rule of tests/compare.py: a
rounding difference cannot flip a choice whose lead exceeds twice the error), 0 otherwise.

`run` imports only the runtime (no torch, no export code): it is the part that runs under emulation.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUNDLES = [(precision, fmt) for precision in ("fp32", "int4") for fmt in ("onnx", "ort")]
MAX_NEW = 12
# Lead of the top logit over the second, relative to the largest |logit|, above which a token must
# be the same on both ISAs. fp32: tests/compare.py's FP32_MARGIN (kernels differ by ~1e-6 relative).
# int4: MatMulNBits computes in int8 (accuracy level 4) with ISA-specific kernels; measured with this
# script (12 prompts per modality, x86 Xeon with AVX-512 VNNI/AMX against qemu's cortex-a76 and max
# models), ARM and x86 int4 logits differed by up to 2.0% of the largest logit (audio prompts), so a
# flip needs a lead under ~4%: 5%. The table prints the differences of each run, and how many steps
# were confident (all of them, for the embedded model).
INT4_MARGIN = 0.05
DEFAULT_CPUS = ["cortex-a76", "max,sve=off,sme=off"]


def requests(items: int) -> list[dict]:
    """The demo's samples, then the first `items` - 1 of each held-out set (models/embedded)."""
    embedded = REPO / "models" / "embedded"
    samples = json.loads((embedded / "samples" / "samples.json").read_text())
    out = [{"kind": "text", "prompt": "Count from three to seven.", "file": None},
           {"kind": "image", "prompt": samples["image"]["prompt"], "file": str(embedded / "samples" / samples["image"]["file"])},
           {"kind": "audio", "prompt": samples["audio"]["prompt"], "file": str(embedded / "samples" / samples["audio"]["file"])}]
    for kind, name in (("text", "text.jsonl"), ("image", "image.jsonl"), ("audio", "speech.jsonl")):
        lines = (embedded / "eval" / name).read_text().splitlines()[:items - 1]
        for line in lines:
            item = json.loads(line)
            out.append({"kind": kind, "prompt": item["prompt"],
                        "file": str(embedded / "eval" / item["file"]) if "file" in item else None})
    return out


def prepare(work: Path, items: int) -> None:
    """x86: the four bundles, the prompts and their media under `work` (replaced each time)."""
    from phi4edge.export import export_model
    from phi4edge.export.mobile import mobile_bundle
    from phi4edge.models import EMBEDDED
    shutil.rmtree(work, ignore_errors=True)
    (work / "media").mkdir(parents=True)
    for precision in ("fp32", "int4"):
        onnx_bundle = export_model(EMBEDDED / "checkpoint", work / "bundles" / f"{precision}-onnx", precision=precision,
                                   show_progress=False)
        mobile_bundle(onnx_bundle, work / "bundles" / f"{precision}-ort")
    reqs = requests(items)
    for i, r in enumerate(reqs):
        if r["file"]:
            target = work / "media" / f"{i:03d}{Path(r['file']).suffix}"
            shutil.copy2(r["file"], target)
            r["file"] = target.relative_to(work).as_posix()
    (work / "requests.json").write_text(json.dumps(reqs, indent=1))


def label(cpu: str | None = None) -> str:
    """Names a run's results: x86_64, or aarch64-CPU (qemu's CPU model, e.g. aarch64-cortex-a76)."""
    return f"aarch64-{cpu.replace(',', '_').replace('=', '-')}" if cpu else "x86_64"


def run(work: Path, threads: int) -> None:
    """Either ISA: greedy tokens of every prompt on every bundle, and the logits behind them
    (teacher-forced with score()), into work/results-LABEL.json and .npz."""
    import numpy as np

    from phi4edge import load
    start = time.perf_counter()
    reqs = json.loads((work / "requests.json").read_text())
    arch = platform.machine()
    cpu = os.environ.get("QEMU_CPU", "")
    name = label(cpu) if arch == "aarch64" else arch
    results, arrays = [], {}
    for precision, fmt in BUNDLES:
        print(f"{name}: {precision}-{fmt} ({time.perf_counter() - start:.0f} s)", flush=True)
        model = load(work / "bundles" / f"{precision}-{fmt}", threads=threads)
        for i, r in enumerate(reqs):
            media = {"images": [work / r["file"]]} if r["kind"] == "image" else \
                {"audios": [work / r["file"]]} if r["kind"] == "audio" else {}
            answer = model.generate(r["prompt"], max_new_tokens=MAX_NEW, **media)
            features = None
            if media.get("images"):
                features = {"image_features": model.image_features([model.prepare_image(p) for p in media["images"]])}
            elif media.get("audios"):
                features = {"audio_features": model.audio_features([model.prepare_audio(p) for p in media["audios"]], False)}
            logits = model.score(answer.prompt_token_ids, answer.token_ids, adapter=answer.adapter, media=features)
            key = f"{precision}/{fmt}/{i}"
            arrays[key] = logits
            results.append({"key": key, "precision": precision, "format": fmt, "kind": r["kind"], "item": i,
                            "tokens": answer.token_ids, "text": answer.text, "adapter": answer.adapter})
    import onnxruntime
    meta = {"arch": arch, "python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
            "seconds": time.perf_counter() - start, "threads": threads, "cpu": cpu}
    (work / f"results-{name}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    np.savez(work / f"results-{name}.npz", **arrays)
    print(f"{name}: {len(results)} generations in {meta['seconds']:.1f} s (onnxruntime {meta['onnxruntime']})")


def copy_runtime(root: Path) -> None:
    """The package's format and runtime code (all the runtime imports) into ROOT/opt/phi4edge."""
    dest = root / "opt" / "phi4edge"
    shutil.rmtree(dest, ignore_errors=True)
    (dest / "phi4edge").mkdir(parents=True)
    for f in (REPO / "phi4edge").glob("*.py"):
        shutil.copy2(f, dest / "phi4edge" / f.name)
    shutil.copytree(REPO / "runtime", dest / "phi4edge" / "runtime", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(Path(__file__), dest / "arm64_check.py")


# onnxruntime's cpuinfo library reads /sys, which the root does not have (see the docstring); it
# says so on every session, and onnxruntime falls back to the CPU features the kernel (here qemu)
# reports in the auxiliary vector. Those lines are counted, not repeated.
CPUINFO_NOISE = ("Error in cpuinfo:", "onnxruntime cpuid_info warning:", "onnxruntime warning: cpuinfo_initialize failed")


def run_arm(root: Path, threads: int, cpu: str) -> None:
    """`run` inside the arm64 root on qemu's `cpu` model, /proc mounted for it (external data needs
    /proc/self/fd)."""
    proc = root / "proc"
    mounted = False
    if not os.path.ismount(proc):
        subprocess.run(["mount", "-t", "proc", "proc", str(proc)], check=True)
        mounted = True
    try:
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8",
               "PYTHONPATH": "/opt/site:/opt/phi4edge", "PYTHONDONTWRITEBYTECODE": "1", "QEMU_CPU": cpu}
        child = subprocess.Popen([shutil.which("chroot") or "/usr/sbin/chroot", str(root), "/usr/bin/python3",
                                  "/opt/phi4edge/arm64_check.py", "run", "/work", "--threads", str(threads)],
                                 env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        noise = 0
        assert child.stdout is not None
        for line in child.stdout:
            if line.startswith(CPUINFO_NOISE):
                noise += 1
            else:
                print(line, end="", flush=True)
        if child.wait():
            raise SystemExit(f"the arm64 run failed (exit {child.returncode})")
        if noise:
            print(f"{label(cpu)}: onnxruntime's cpuinfo could not read /sys (not in the root): {noise} warning lines "
                  "hidden; CPU features came from qemu's auxiliary vector")
    finally:
        if mounted:
            subprocess.run(["umount", str(proc)], check=False)


def compare(work: Path, arm: str = "aarch64", x86: str = "x86_64") -> int:
    """The table, ARM (results-`arm`) against x86; 1 if a confident token differs."""
    import numpy as np

    from tests.compare import FP32_MARGIN, margins
    docs = {a: json.loads((work / f"results-{a}.json").read_text()) for a in (arm, x86)}
    logits = {a: np.load(work / f"results-{a}.npz") for a in (arm, x86)}
    by_key = {a: {r["key"]: r for r in docs[a]["results"]} for a in (arm, x86)}
    rows, failures = {}, []
    for key, ref in by_key[x86].items():
        got = by_key[arm][key]
        margin = FP32_MARGIN if ref["precision"] == "fp32" else INT4_MARGIN
        a, b = logits[x86][key], logits[arm][key]
        same = got["tokens"] == ref["tokens"]
        k = next((i for i, (s, t) in enumerate(zip(ref["tokens"], got["tokens"])) if s != t), None)
        k = k if k is not None else min(len(ref["tokens"]), len(got["tokens"]))
        common = min(k + 1, len(a), len(b))   # rows computed on the same prefix on both sides
        scale = np.maximum(1.0, np.abs(a[:common]).max(axis=-1))
        diff = float((np.abs(a[:common] - b[:common]).max(axis=-1) / scale).max()) if common else 0.0
        leads = margins(a) >= margin * np.maximum(1.0, np.abs(a).max(axis=-1))
        confident_flip = False
        if not same and k < len(a):
            confident_flip = bool(margins(a[k]) >= margin * max(1.0, float(np.abs(a[k]).max())))
            if confident_flip:
                failures.append(f"{key} ({ref['kind']}): step {k} x86 {ref['tokens'][k]} vs ARM {got['tokens'][k]}, "
                                f"x86 lead {float(margins(a[k])):.4g}")
        row = rows.setdefault((ref["precision"], ref["format"], ref["kind"]), {"n": 0, "equal": 0, "diff": 0.0,
                                                                               "flips": 0, "bad": 0, "steps": 0,
                                                                               "confident": 0})
        row["steps"] += len(a)
        row["confident"] += int(leads.sum())
        row["n"] += 1
        row["equal"] += same
        row["diff"] = max(row["diff"], diff)
        row["flips"] += (not same) and not confident_flip
        row["bad"] += confident_flip
    # the same arch, ORT against ONNX: bit for bit where no x86-only layout (NCHWc) is involved
    same_arch = {}
    for a in (x86, arm):
        for key, r in by_key[a].items():
            if r["format"] == "ort":
                other = key.replace("/ort/", "/onnx/")
                identical = np.array_equal(logits[a][key], logits[a][other]) and r["tokens"] == by_key[a][other]["tokens"]
                cell = same_arch.setdefault((a, r["precision"], r["kind"]), [0, 0])
                cell[0] += identical
                cell[1] += 1
    print(f"\nARM64 (qemu-user -cpu {docs[arm]['meta']['cpu'] or 'max'}, Python {docs[arm]['meta']['python']}, "
          f"onnxruntime {docs[arm]['meta']['onnxruntime']}, "
          f"{docs[arm]['meta']['seconds']:.0f} s) vs x86-64 ({docs[x86]['meta']['seconds']:.0f} s); greedy, "
          f"{MAX_NEW} new tokens at most")
    print(f"{'bundle':7s} {'format':6s} {'prompt':6s} {'tokens equal':>12s} {'confident steps':>16s} "
          f"{'max |logit diff|':>17s} {'flips (unconfident)':>20s} {'confident mismatches':>21s}")
    for (precision, fmt, kind), row in sorted(rows.items(), key=lambda kv: (kv[0][0], kv[0][1], "tia".index(kv[0][2][0]))):
        print(f"{precision:7s} {fmt:6s} {kind:6s} {row['equal']:>6d} / {row['n']:<3d} "
              f"{row['confident']:>7d} / {row['steps']:<4d}  {row['diff']:>17.2e} {row['flips']:>20d} {row['bad']:>21d}")
    print(f"(confident steps: x86's top logit leads by at least {FP32_MARGIN:g} (fp32) or {INT4_MARGIN:g} (int4) of "
          "the largest |logit|; logit difference: largest over the steps both sides computed on the same "
          "prefix, relative to the step's largest |logit|)")
    print("\nORT-format bundle's logits identical to the ONNX bundle's (bit for bit), on the same ISA:")
    for a in (x86, arm):
        for precision in ("fp32", "int4"):
            cells = "  ".join(f"{kind} {same_arch[a, precision, kind][0]}/{same_arch[a, precision, kind][1]}"
                              for kind in ("text", "image", "audio") if (a, precision, kind) in same_arch)
            print(f"  {a:32s} {precision}: {cells}")
    if failures:
        print("\nFAILED: tokens differ where x86 was confident:\n  " + "\n  ".join(failures))
        return 1
    print("\nOK: no token differs where the x86 logits were confident")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", nargs="?", default="all", choices=["all", "run", "compare"])
    parser.add_argument("work", nargs="?", type=Path, help="run/compare: the work folder")
    parser.add_argument("--root", type=Path, default=REPO / "build" / "arm64-root", help="the Debian arm64 root")
    parser.add_argument("--items", type=int, default=4, help="prompts per modality (the demo's sample + held-out items)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cpu", action="append", default=None,
                        help="qemu's CPU model (qemu-aarch64-static -cpu help; repeatable). Default: cortex-a76 "
                             "(ARMv8.2 with dot product: onnxruntime's NEON/sdot kernels) and max,sve=off,sme=off "
                             "(ARMv8.x and later features but SVE/SME, i8mm among them: its i8mm kernels), "
                             "phone cores as onnxruntime sees them. Plain max adds SVE and SME, whose "
                             "emulation made the whole check 35x slower (42 minutes).")
    args = parser.parse_args()
    if args.mode == "run":
        run(args.work, args.threads)
        return
    work = args.work or args.root / "work"
    cpus = args.cpu or DEFAULT_CPUS
    if args.mode == "compare":
        sys.exit(max(compare(work, label(cpu)) for cpu in cpus))
    start = time.perf_counter()
    prepare(work, args.items)
    run(work, args.threads)
    copy_runtime(args.root)
    for cpu in cpus:
        run_arm(args.root, args.threads, cpu)
    status = max(compare(work, label(cpu)) for cpu in cpus)
    print(f"arm64-check: {time.perf_counter() - start:.0f} s in all")
    sys.exit(status)


if __name__ == "__main__":
    main()
