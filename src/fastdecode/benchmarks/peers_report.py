"""The tables of bench/peers.py (see peers.py for the method): paired
ratios per round and their median, time to first token, the machine and
the engines."""
from __future__ import annotations

import numpy as np

FOUR_BIT = ("q4_0", "q4_k_m", "int4")
GGUF_FORMAT = {"float32": "f32"}  # fastdecode's format -> the GGUF file llama.cpp runs for time to first token


def _row(rows, model, threads, c):
    return next((r for r in rows if r["model"] == model and r["threads"] == threads
                 and (r["engine"], r["format"]) == c), None)


def comparisons(rows: list[dict], groups) -> list[dict]:
    """Per (model, threads, fastdecode format, peer): fastdecode's tokens/s over the
    peer's, round by round (both ran in the same round), and the median."""
    out = []
    for model, threads in dict.fromkeys((r["model"], r["threads"]) for r in rows):
        for fmt, peers in groups:
            fd = _row(rows, model, threads, ("fastdecode", fmt))
            for peer in peers:
                p = _row(rows, model, threads, peer)
                if fd is None or p is None:
                    continue
                ratios = [a["decode_tokens_per_s"] / b["decode_tokens_per_s"] for a, b in zip(fd["rounds"], p["rounds"])
                          if a["decode_tokens_per_s"] and b["decode_tokens_per_s"]]
                agree = [x.get("same_tokens_as_fastdecode_float32") for x in p["rounds"][:1]]
                own = [x["perf"]["n_eval"] / x["perf"]["t_eval_ms"] * 1e3 for x in p["rounds"]
                       if x.get("perf", {}).get("t_eval_ms")]  # llama.cpp's own eval timers
                status = fd["status"] if fd["status"] != "ok" else p["status"]
                out.append({"model": model, "threads": threads, "fastdecode": fd["contender"],
                            "peer": p["contender"], "status": status,
                            "fastdecode_tokens_per_s": fd["decode_tokens_per_s"],
                            "peer_tokens_per_s": p["decode_tokens_per_s"], "ratios": ratios,
                            "peer_same_tokens_as_fastdecode_float32": agree[0] if agree else None,
                            "peer_own_timer": f"{p['engine']}'s own timer: {np.median(own):.1f} tok/s" if own else "",
                            "median_ratio": float(np.median(ratios)) if ratios and status == "ok" else None})
    return out


def time_to_first_token(rows: list[dict], groups) -> list[dict]:
    """fastdecode against llama.cpp on the same format: seconds of generate(1) after the long prompt."""
    out = []
    for model, threads in dict.fromkeys((r["model"], r["threads"]) for r in rows):
        for fmt, _ in groups:
            fd = _row(rows, model, threads, ("fastdecode", fmt))
            ll = _row(rows, model, threads, ("llama.cpp", GGUF_FORMAT.get(fmt, fmt)))
            if fd is None or ll is None:
                continue
            a = [x["ttft_s"] for x in fd["rounds"] if "ttft_s" in x]
            b = [x["ttft_s"] for x in ll["rounds"] if "ttft_s" in x]
            if fd["status"] == ll["status"] == "ok" and not (a or b):
                continue  # run without the long prompt (--no-ttft)
            ok = fd["status"] == "ok" and ll["status"] == "ok" and a and b
            out.append({"model": model, "threads": threads, "fastdecode": fd["contender"], "peer": ll["contender"],
                        "status": "ok" if ok else (fd["status"] if fd["status"] != "ok" else ll["status"]),
                        "fastdecode_s": float(np.median(a)) if ok else None,
                        "peer_s": float(np.median(b)) if ok else None,
                        "ratios": [y / x for x, y in zip(a, b)]})  # llama.cpp's time over fastdecode's
    return out


def l3_note(rows: list[dict], model: str, fmt: str, l3: int | None) -> str:
    """For 4-bit rows: whether the model's weights (bytes a step reads) fit in L3."""
    if fmt not in FOUR_BIT or not l3:
        return ""
    fd = next((r for r in rows if r["model"] == model and r["engine"] == "fastdecode" and r["format"] == fmt
               and r["rounds"]), None)
    nbytes = fd["rounds"][0].get("perf", {}).get("weight_bytes_per_token") if fd else None
    if not nbytes:
        return ""
    fits = "fits in" if nbytes <= l3 else "does not fit in"
    return f"{nbytes / 2**20:.0f} MiB of weights {fits} the {l3 / 2**20:.0f} MiB L3"


def _num(x, unit="", digits=1) -> str:
    return "-" if x is None else f"{x:.{digits}f}{unit}"


def _short(status: str) -> str:
    return status.splitlines()[0][:120]


def table(rows: list[dict], groups, l3: int | None = None) -> str:
    lines = ["| model | threads | fastdecode | peer | fastdecode tok/s | peer tok/s | ratio per round | median | "
             "peer = fd float32 | note |",
             "|---|---:|---|---|---:|---:|---|---:|---:|---|"]
    for c in comparisons(rows, groups):
        fmt = c["fastdecode"].split()[-1]
        note = "; ".join(x for x in (l3_note(rows, c["model"], fmt, l3), c["peer_own_timer"]) if x)
        if c["status"] != "ok":
            lines.append(f"| {c['model']} | {c['threads']} | {c['fastdecode']} | {c['peer']} | - | - | - | - | - | "
                         f"{_short(c['status'])} |")
            continue
        same = c["peer_same_tokens_as_fastdecode_float32"]
        lines.append(f"| {c['model']} | {c['threads']} | {c['fastdecode']} | {c['peer']} | "
                     f"{_num(c['fastdecode_tokens_per_s'])} | {_num(c['peer_tokens_per_s'])} | "
                     f"{' '.join(f'{x:.2f}' for x in c['ratios']) or '-'} | {_num(c['median_ratio'], 'x', 2)} | "
                     f"{'-' if same is None else same} | {note} |")
    return "\n".join(lines)


def ttft_table(rows: list[dict], groups) -> str:
    lines = ["| model | threads | fastdecode | llama.cpp | fastdecode s | llama.cpp s | llama.cpp / fastdecode |",
             "|---|---:|---|---|---:|---:|---:|"]
    for t in time_to_first_token(rows, groups):
        if t["status"] != "ok":
            lines.append(f"| {t['model']} | {t['threads']} | {t['fastdecode']} | {t['peer']} | - | - | "
                         f"{_short(t['status'])} |")
        else:
            lines.append(f"| {t['model']} | {t['threads']} | {t['fastdecode']} | {t['peer']} | {t['fastdecode_s']:.3f} | "
                         f"{t['peer_s']:.3f} | {np.median(t['ratios']):.2f}x |")
    return "\n".join(lines)


def describe(m: dict) -> str:
    l3 = f"{m['l3_bytes'] / 2**20:.0f} MiB L3" if m.get("l3_bytes") else "L3 unknown"
    vnni = "with" if "avx512_vnni" in m["simd_flags"] else "without"
    return (f"Machine: {m['cpu']}, {m['cores']} CPUs, {l3}, {vnni} avx512_vnni; SIMD flags: "
            f"{' '.join(m['simd_flags']) or 'none'}; fastdecode SIMD level {m['simd']}.")


def engines(rows: list[dict]) -> list[str]:
    """One line per engine: its version and interpreter (llama.cpp: the SIMD its build uses), or why it is missing."""
    out = []
    for engine, info in {r["engine"]: r["engine_info"] for r in rows}.items():
        if isinstance(info, str):
            out.append(f"- {engine}: {info}")
        else:
            extra = f"; {info['system_info']}" if info.get("system_info") else ""
            out.append(f"- {engine} {info['version']} ({info['python']}{extra})")
    return out
