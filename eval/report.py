"""The report: one JSON document and the console table made from it.

Metric values are fractions in the JSON and percentages in the table. The JSON carries what a
comparison needs: the checkpoint and its family, backend, index type and parameters
(`index.info()`), dataset and split, counts of what was skipped, the tie rule, and the published
reference figures (the measured checkpoint's where there are some). A multilingual set gets one
text->image row per language, in a table of its own.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import asdict
from pathlib import Path

from eval.reference import references_for

REPORT_VERSION = 1

GROUP_TITLES = {
    "text_to_image": "text->image",
    "image_to_text": "image->text",
    "image_to_image_self": "image->image (self)",
    "zero_shot": "zero-shot",
    "class_query": "class-name query",
    "text_to_image_vs_exact": "text->image vs exact",
    "class_query_vs_exact": "class-name query vs exact",
}


_LANGUAGE_GROUP = re.compile(r"^(text_to_image|image_to_text)\[(\w+)\]$")


def build_report(*, task: str, dataset: dict, index_info: dict, model_id: str, encoder: str, counts: dict,
                 metrics: dict, ties: str, ks: list[int], timings: dict, ingest: dict,
                 family: str | None = None) -> dict:
    return {
        "report_version": REPORT_VERSION,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "task": task,
        "model_id": model_id,
        "family": family,
        "encoder": encoder,
        "backend": index_info.get("backend"),
        "index": index_info,
        "dataset": dataset,
        "ks": ks,
        "ties": ties,
        "counts": counts,
        "metrics": metrics,
        "reference": [asdict(r) for r in references_for(dataset.get("name", ""), model_id)],
        "ingest": ingest,
        "timings_s": timings,
    }


def write_report(report: dict, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # NaN (no queries) is not JSON: write null.
    clean = json.loads(json.dumps(report, default=str), parse_constant=lambda _c: None)
    path.write_text(json.dumps(clean, indent=2, allow_nan=False) + "\n", encoding="utf-8")


def _pct(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{100 * value:.2f}"


def _count(value) -> str:
    if isinstance(value, dict):  # reasons -> counts
        total = sum(value.values())
        return f"{total} ({', '.join(f'{k} {v}' for k, v in value.items())})" if total else "0"
    return str(value)


def format_table(report: dict) -> str:
    ds, info, counts = report["dataset"], report["index"], report["counts"]
    params = ", ".join(f"{k}={v}" for k, v in (info.get("params") or {}).items()) or "-"
    refs = {(r["group"], name): (value, r) for r in report["reference"] for name, value in r["values"].items()}
    sources: list[tuple[str, str]] = []  # (model, source), numbered in order of first use
    family = f"{report['family']}, " if report.get("family") else ""
    lines = [
        f"{report['task']}: {ds.get('name')} (split {ds.get('split')}, {ds.get('layout')})",
        f"model {report['model_id']} ({family}{report['encoder']}) | backend {report['backend']} | index "
        f"{info.get('index_type')} ({params}) | {info.get('count')} documents",
        "counts: " + ", ".join(f"{k} {_count(v)}" for k, v in counts.items()),
        f"ties: {report['ties']}",
        "",
    ]
    rows = [(group, name, value) for group, values in report["metrics"].items() for name, value in values.items()
            if not _LANGUAGE_GROUP.match(group)]
    label = lambda group, name: f"{GROUP_TITLES.get(group, group)} {name}"  # noqa: E731
    width = max([len("metric")] + [len(label(g, n)) for g, n, _ in rows]) + 2
    if rows:
        lines.append(f"{'metric':<{width}}{'ours':>8}{'reference':>11}")
    for group, name, value in rows:
        ref = refs.get((group, name))
        ref_text = ""
        if ref is not None:
            cite = (ref[1]["model"], ref[1]["source"])
            if cite not in sources:
                sources.append(cite)
            ref_text = f"{_pct(ref[0])} [{sources.index(cite) + 1}]"
        lines.append(f"{label(group, name):<{width}}{_pct(value):>8}{ref_text:>11}")
    lines.extend(_language_table(report, refs, sources))
    timings = dict(report["timings_s"])
    if report["ingest"].get("seconds") is not None:
        timings = {"ingest": report["ingest"]["seconds"], **timings}
    if timings:
        lines.append("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    for n, (model, source) in enumerate(sources, start=1):
        lines.append(f"[{n}] {model}: {source}")
    ref_models = {r.get("model_id") for r in report["reference"]}
    if sources and report["model_id"] not in ref_models:
        lines.append(f"note: the references are for {', '.join(sorted(m for m in ref_models if m))}; "
                     f"this run used {report['model_id']}")
    if sources and ds.get("split") != "test" and ds.get("layout") != "xm3600-jsonl":  # XM3600 has no splits
        lines.append(f"note: split {ds.get('split')!r}; the references are for the test split")
    if sources and ds.get("limit"):
        lines.append(f"note: --limit {ds['limit']}: fewer images than the full split make retrieval easier")
    return "\n".join(lines)


def _language_table(report: dict, refs: dict, sources: list[tuple[str, str]]) -> list[str]:
    """One row per language of a multilingual set: its text->image R@K, their mean, and the
    published figure for that language where there is one."""
    by_lang = {m.group(2): values for group, values in report["metrics"].items()
               if (m := _LANGUAGE_GROUP.match(group)) and m.group(1) == "text_to_image"}
    if not by_lang:
        return []
    names = list(next(iter(by_lang.values())))
    lines = ["", "text->image by language " + " ".join(f"{n:>7}" for n in names) + f"{'reference':>11}"]
    for lang, values in by_lang.items():
        ref = refs.get((f"text_to_image[{lang}]", "mean"))
        ref_text = ""
        if ref is not None:
            cite = (ref[1]["model"], ref[1]["source"])
            if cite not in sources:
                sources.append(cite)
            ref_text = f"{_pct(ref[0])} [{sources.index(cite) + 1}]"
        lines.append(f"{lang:<24}" + " ".join(f"{_pct(values.get(n)):>7}" for n in names) + f"{ref_text:>11}")
    for group, values in report["metrics"].items():
        m = _LANGUAGE_GROUP.match(group)
        if m and m.group(1) == "image_to_text":
            lines.append(f"image->text ({m.group(2)}): " + ", ".join(f"{n} {_pct(v)}" for n, v in values.items()))
    return lines
