"""A PNG summary of a `phi4edge bench` result (matplotlib, imported only when a chart is asked for)."""
from __future__ import annotations

from pathlib import Path

from ..errors import Phi4EdgeError


def bench_chart(result: dict, path: str | Path, title: str) -> Path:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise Phi4EdgeError("--chart needs matplotlib: pip install 'phi4edge[bench]'") from None
    fig, (speed, roof) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    labels = [f"prefill {n}" for n in result["prefill_tokens_per_s"]] + ["decode"]
    values = list(result["prefill_tokens_per_s"].values()) + [result["decode_tokens_per_s"]]
    if "adapter" in result:
        labels.append(f"decode + {result['adapter']['name']}")
        values.append(result["adapter"]["decode_tokens_per_s"])
    bars = speed.barh(labels, values, color=["#7aa6c2"] * len(result["prefill_tokens_per_s"]) + ["#2f6b8f"] +
                      (["#c2843f"] if "adapter" in result else []))
    speed.bar_label(bars, fmt="%.1f", padding=3)
    speed.set_xlabel("tokens / s (median)")
    speed.invert_yaxis()
    speed.margins(x=0.15)
    speed.set_title("Throughput")
    roof.bar(["measured", "roofline"], [result["decode_tokens_per_s"], result["roofline_tokens_per_s"]],
             color=["#2f6b8f", "#cccccc"])
    roof.set_ylabel("decode tokens / s")
    roof.set_title(f"{result['fraction_of_roofline']:.0%} of the memory-bandwidth roofline")
    loaded = result.get("memory_after_load")
    memory = f"RSS after load {loaded['rss_over_weights']:.2f}x the weights; " if loaded else ""
    roof.text(0.5, -0.22, f"{result['decode_bytes_per_token'] / 1e6:.0f} MB/token at {result['read_bandwidth_gbs']:.1f} GB/s; "
              f"TTFT {result['time_to_first_token_ms']:.0f} ms;\n{memory}peak RSS {result['peak_rss_mb']:.0f} MB",
              transform=roof.transAxes, ha="center", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
