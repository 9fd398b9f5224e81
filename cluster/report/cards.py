"""Model cards: a Hugging Face style README.md beside every quantized checkpoint, ready to upload.

YAML front matter (base model, `base_model_relation: quantized`, library, license when conf/ knows
it, tags naming the scheme and algorithm), then the recipe, recovery per suite with its interval,
the serving numbers per hardware x use case and the tool versions, all from the datasets. A card is
written only inside the run directory being reported (a moved run's artifacts are found under its
own `artifacts/`), atomically, so a report of a copy never writes into the original.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cluster.config.schema import ReportConfig
from cluster.report.data import RunData
from cluster.store.provenance import write_text_atomically
from serve.slo import describe

Row = dict[str, Any]
SCHEME_TAGS = {"FP8_DYNAMIC": ("fp8", "w8a8"), "W8A8": ("int8", "w8a8"), "W4A16": ("int4", "w4a16")}


def card_dir(root: Path, path: str) -> Path | None:
    """Where the checkpoint lives inside this run directory (None: outside it, so no card)."""
    p, root = Path(path), Path(root).resolve()
    if p.is_dir() and p.resolve().is_relative_to(root):
        return p
    parts = p.parts
    if "artifacts" in parts:
        moved = root.joinpath(*parts[len(parts) - parts[::-1].index("artifacts") - 1 :])
        if moved.is_dir():
            return moved
    return None


def _yaml_list(items: list[str]) -> str:
    return "\n".join(f"- {t}" for t in items)


def front_matter(data: RunData, q: Row) -> str:
    """The card's YAML header (`base_model` only for a model on the Hub: the Hub links it)."""
    m = data.catalog.models.get(q["model"]) if data.catalog else None
    tags = ["quantized", "compressed-tensors", "llmcompressor", "vllm", "quantsweep"]
    tags += [*SCHEME_TAGS.get(q["scheme"] or "", ()), q["algorithm"]]
    lines = ["---"]
    if m and m.hub_id:
        lines += [f"base_model: {m.hub_id}", "base_model_relation: quantized"]
    else:
        lines.append(f"# base model: {q['model']} (not on the Hugging Face Hub)")
    lines.append("library_name: transformers")
    if m and m.license:
        lines.append(f"license: {m.license}")
    lines += ["pipeline_tag: text-generation", "tags:", _yaml_list(list(dict.fromkeys(tags))), "---"]
    return "\n".join(lines)


def _accuracy(data: RunData, q: Row) -> str:
    rows = [
        r
        for r in data.recovery
        if (r["sweep"], r["model"], r["format"]) == (q["sweep"], q["model"], q["format"])
    ]
    if not rows:
        return "Not evaluated in this run."
    out = ["| suite | score | baseline | recovery % | 95% CI | status |", "|---|---:|---:|---:|---|---|"]
    for r in sorted(rows, key=lambda r: r["suite"]):
        pct = "-" if r["recovery_pct"] is None else f"{r['recovery_pct']:.2f}"
        ci = (
            "-"
            if r["recovery_ci_low"] is None
            else f"{r['recovery_ci_low']:.2f} – {r['recovery_ci_high']:.2f}"
        )
        score = "-" if r["score"] is None else f"{r['score']:.2f}"
        base = "-" if r["baseline_score"] is None else f"{r['baseline_score']:.2f}"
        status = r["status"] + (f": {r['reason']}" if r["reason"] else "")
        out.append(f"| {r['suite']} | {score} | {base} | {pct} | {ci} | {status} |")
    return "\n".join(out)


def _serving(data: RunData, cfg: ReportConfig, q: Row, crs: list[Row]) -> str:
    rows = [
        r
        for r in data.judged(cfg.slo)
        if (r["sweep"], r["model"], r["format"]) == (q["sweep"], q["model"], q["format"])
    ]
    if not rows:
        return "Not load-tested in this run."
    out = [
        f"SLO: {describe(cfg.slo)}.",
        "",
        "| hardware | use case | single-stream latency s | queries/$ (sync) | max req/s meeting SLO "
        "| queries/$ (async) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    num = lambda x, f="{:,.2f}": "-" if x is None else f.format(x)  # noqa: E731
    for hw, uc in sorted({(r["hardware"], r["use_case"]) for r in rows}):
        cell = [r for r in rows if (r["hardware"], r["use_case"]) == (hw, uc)]
        s = next((r for r in cell if r["mode"] == "sync"), {})
        a = next((r for r in cell if r["mode"] == "async"), {})
        if s.get("status") != "measured" and a.get("status") != "measured":
            why = (s or a).get("skip_reason") or "not measured"
            out.append(f"| {hw} | {data.use_case_label(uc)} | {why} | | | |")
            continue
        lat = s.get("mean_e2el_ms") and s["mean_e2el_ms"] / 1000
        out.append(
            f"| {hw} | {data.use_case_label(uc)} | {num(lat)} "
            f"| {num(s.get('queries_per_dollar'), '{:,.0f}')} "
            f"| {num(a.get('slo_max_qps'))} | {num(a.get('slo_queries_per_dollar'), '{:,.0f}')} |"
        )
    mine = [
        c
        for c in crs
        if (c["model"], c["format"]) == (q["model"], q["format"]) and c["cost_reduction"] is not None
    ]
    if mine:
        out += ["", "Cost-reduction factor vs the baseline (mean over use cases of queries/$ ratios):", ""]
        out += [
            f"- {c['hardware']} ({c['device_count']} device(s)), {c['mode']}: {c['cost_reduction']:.2f}"
            for c in mine
        ]
    return "\n".join(out)


def card(data: RunData, cfg: ReportConfig, q: Row, crs: list[Row]) -> str:
    """The README.md text of one quantized checkpoint."""
    label = data.format_label(q["format"])
    fmt = data.catalog.formats.get(q["format"]) if data.catalog else None
    what = f" ({fmt.weights} weights, {fmt.activations} activations)" if fmt else ""
    versions = "\n".join(f"- {k}: {v}" for k, v in (q["versions"] or []))
    fallback = ", ".join(q["rtn_fallback_modules"]) or "none"
    usage = "```bash\nvllm serve <this directory>\n```"
    return (
        "\n\n".join(
            [
                front_matter(data, q),
                f"# {q['model']} · {label}",
                f"{label}{what}: {q['algorithm']} quantization of `{q['model']}` with llm-compressor, "
                "made and measured by "
                f"quantsweep (sweep `{q['sweep']}`, run `{q['run_id']}`).",
                "## Recipe",
                f"```yaml\n{q['recipe_yaml'].rstrip()}\n```",
                f"GPTQ layers that fell back to round-to-nearest: {fallback}. Health check: {q['health']}"
                + (f" ({q['health_detail']})" if q["health_detail"] else "")
                + ".",
                "## Accuracy recovery vs the baseline",
                _accuracy(data, q),
                "## Serving (vLLM)",
                _serving(data, cfg, q, crs),
                "## Use with vLLM",
                usage,
                "## Provenance",
                f"Tool versions:\n\n{versions}\n\ngit `{q['git_sha']}`, config `{q['config_hash']}`, "
                f"created {q['created_at']:%Y-%m-%d %H:%M} UTC.",
            ]
        )
        + "\n"
    )


def write_cards(data: RunData, cfg: ReportConfig, crs_of: dict[str, list[Row]]) -> list[tuple[Row, str]]:
    """Write a card beside every quantized checkpoint of the run; (quantized row, where or why not) each."""
    out = []
    for q in sorted(data.quantized, key=lambda r: (r["sweep"], r["model"], r["format"])):
        if q["algorithm"] == "none" or q["artifact_key"] == "base":
            continue
        where = card_dir(data.root, q["path"])
        if where is None:
            out.append((q, f"no card: {q['path']} is not inside {data.root}"))
            continue
        write_text_atomically(where / "README.md", card(data, cfg, q, crs_of.get(q["sweep"], [])))
        out.append((q, str(where / "README.md")))
    return out
