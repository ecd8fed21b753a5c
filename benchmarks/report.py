"""The table ``make bench`` prints (and writes to ``*-table.md``): one or more rows per figure."""
from __future__ import annotations


def _fmt_s(x):
    return f"{x:.3g} s" if x is not None else "-"


def _gb(x):
    return f"{x / 1e9:.2f} GB"


def _met(m):
    return "n/a" if m is None else ("MET" if m else "NOT MET")


def table(meta, figs) -> str:
    L = [f"Dream Engine benchmarks — {meta['date']} — size {meta['size']}{' (quick)' if meta['quick'] else ''} — "
         f"{meta['machine']['cpu']}, {meta['machine']['cores']} cores, torch {meta['machine']['torch']}, "
         f"OMP_WAIT_POLICY={meta['omp_wait_policy']}", ""]
    L += table_rows(figs)
    L.append("")
    L.append(f"total {meta['total_s']:.0f} s")
    return "\n".join(L)


def table_rows(figs) -> list:
    L = ["| fig | measure | value | target | status |", "|---|---|---|---|---|"]
    for n, f in sorted(figs.items()):
        if f.get("not_measured"):
            L.append(f"| {n} | {f['title']} | not measured: {f['not_measured'][:160]} | | n/a |")
        else:
            L += ROWS[n](f)
    return L


def _rows1(f) -> list:
    return [f"| 1 | bf16 matmul peak (encoder shapes) | {f['peak_bf16_tflops']:.3f} TFLOP/s | | |",
            f"| 1 | fp32 matmul peak (encoder shapes) | {f['peak_fp32_tflops']:.3f} TFLOP/s | | |",
            f"| 1 | copy bandwidth (read+write) | {f['bandwidth_gbps']:.1f} GB/s | | |"]


def _rows2(f) -> list:
    L = []
    for r in f["cases"]:
        need = "one LM pass: the negative is constant" if r.get("uncond_constant", False) else "both LM passes"
        L.append(f"| 2{r['case']} | {r['label']}: {r['cond_tokens']}+{r['uncond_tokens']} tokens; required "
                 f"work ({need}) {r['flops'] / 1e9:.0f} GFLOP, {_gb(r['weight_bytes'])} weights | "
                 f"{r['seconds']:.3f} s [{r['min']:.3f}–{r['max']:.3f}] = {r['ratio']:.2f}× floor "
                 f"{r['floor_s']:.3f} s (fig-1 peak); {r['ratio_calibrated']:.2f}× with the peak measured "
                 f"after each repeat"
                 + (f" (text cache off: {r['no_text_cache']['seconds']:.3f} s, "
                    f"{r['no_text_cache']['ratio_calibrated']:.2f}×)" if r.get("no_text_cache") else "")
                 + f" | ≤ 1.5× | {_met(r['met'])} |")
        p = r.get("plain_transformers")
        if p:
            L.append(f"| 2{r['case']} | peer: plain transformers `language_model` forward, same "
                     f"{p['tokens']} tokens ({p['flops'] / 1e9:.0f} GFLOP) | {p['seconds']:.3f} s "
                     f"[{p['min']:.3f}–{p['max']:.3f}] = {p['ratio']:.2f}× its floor {p['floor_s']:.3f} s; "
                     f"{p['ratio_calibrated']:.2f}× calibrated; pack / peer = {p['pack_over_peer']:.2f}× "
                     f"| reference | |")
    return L


def _rows3(f) -> list:
    L = []
    for r in f["rows"]:
        fmt = _gb if "RSS" in r["what"] else _fmt_s
        L.append(f"| 3 | {r['what']}: Dream Engine {fmt(r['dream_engine'])} vs TripleCLIP "
                 f"{fmt(r['tripleclip'])} | {r['ratio']:.3f}× | ≤ {r['target']}× | {_met(r['met'])} |")
    return L


def _rows4(f) -> list:
    return [f"| 4 | cold load to first conditioning: Dream Engine {f['dream_engine_s']:.1f} s vs "
            f"TripleCLIP {f['tripleclip_s']:.1f} s (page cache warm) | {f['ratio']:.2f}× | ≤ 0.5× | "
            f"{_met(f['met'])} |"]


def _rows5(f) -> list:
    return [f"| 5 | re-queue, only the seed changed: encoder calls | {f.get('encoder_calls_requeue')} "
            f"(first run {f.get('encoder_calls_first')}, node {f.get('encode_node_s', 0):.2f} s; "
            f"re-queue prompt {f.get('requeue_prompt_s', 0):.2f} s vs first {f.get('first_prompt_s', 0):.2f} s) "
            f"| 0 | {_met(f['met'])} |"]


def _rows6(f) -> list:
    L = []
    for key, x in (("images", "n_images"), ("resolution", "max_pixels")):
        pts = ", ".join(f"{p[x] if x == 'n_images' else p[x] // 784}{'' if x == 'n_images' else '·28²'}: "
                        f"{p['seconds']:.2f} s/{p['lm_tokens']} tok" for p in f[key]["points"])
        fit = f[key]["fit_vs_tokens"]
        L.append(f"| 6 | time vs {key} ({pts}) | linear fit in LM tokens R² = "
                 f"{fit['r2']:.3f} | curve | n/a |" if fit else f"| 6 | {key} ({pts}) | | | n/a |")
    return L


def _rows7(f) -> list:
    return [f"| 7 | stage-2 step {f['step_s']:.3f} s vs bare fwd+bwd {f['bare_s']:.3f} s; "
            f"{f.get('samples_per_s', 0):.2f} samples/s with data loading | {f['ratio']:.2f}× | ≤ 1.2× | "
            f"{_met(f['met'])} |"]


def _rows8(f) -> list:
    h, s = f["cancel_latency_s"]["hooked"], f["cancel_latency_s"]["stages_only"]
    enc = f["encode_s"]
    return [f"| 8 | cancel on a {f['n_images']}-image prompt ({f['cond_tokens']}+{f['uncond_tokens']} "
            f"tokens, encode {enc['median']:.2f} s): latency max "
            + (f"{h['max']:.3f} s (median {h['median']:.3f} s)" if h else "n/a")
            + f" with checks at {f['hook_points']} layers/blocks vs "
            + (f"{s['max']:.3f} s" if s else "n/a") + " between stages only; hook cost "
            f"{f['checks_per_encode']} checks × {f['check_s'] * 1e6:.1f} µs = {f['hook_cost']:.3%} | "
            + (f"{h['max']:.3f} s" if h else "n/a") + f" | ≤ 0.5 s, < 1 % | {_met(f['met'])} |"]


ROWS = {1: _rows1, 2: _rows2, 3: _rows3, 4: _rows4, 5: _rows5, 6: _rows6, 7: _rows7, 8: _rows8}
