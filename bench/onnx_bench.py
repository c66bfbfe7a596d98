"""ONNX Runtime against torch for the query path (issue 6), measured in one run.

    python -m bench.onnx_bench [--quick] [--threads N]

ViT-B/32 architecture, random weights (cost does not depend on the weights' values), exported to
ONNX once and cached; a 25k-vector embedded (FAISS) index. For each variant, fresh processes run
what the Lambda's init and first request do (settings, encoder, index, model check, encode,
search), timed from process start to the first text answer; then warm queries and the process's
peak RSS. Also: import and session-creation times, a 10-token text encode for torch, ONNX fp32
and ONNX int8 in one process, int8's accuracy cost, and the installed size of each variant's
dependencies plus model files.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import CACHE, clustered_vectors, pct, timed, vit_b32_dir, write_results
from bench.depsize import dir_mb, installed_mb

REPO = Path(__file__).resolve().parent.parent
QUERY = "a photo of two dogs on the beach"  # 10 tokens with start and end
QUERIES = [QUERY, "a red car", "snow covered mountains", "a cup of coffee on a wooden table",
           "portrait of a woman in the city at night", "green trees near the river", "old house"]
TARGETS = {"cold_start_s": 1.0, "cold_speedup": 4.0, "warm_p50_ms": 12.0, "peak_rss_mb": 300.0}

def warm_query(i: int) -> str:
    return f"{QUERIES[i % len(QUERIES)]} {i}"  # unique: a server-side cache must not answer


# What the handler does at init and on its first text request, without the HTTP around it.
CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
from clipsearch.config import IndexSettings, ModelSettings
from clipsearch.models import load_encoder
from clipsearch.index import check_model, open_index
t_import = time.perf_counter()
model = ModelSettings.from_env()
if model.threads is None:  # as the handler chooses
    import dataclasses
    from server.app import query_threads
    model = dataclasses.replace(model, threads=query_threads(model.encoder))
encoder = load_encoder(model)
index = open_index(IndexSettings.from_env())
check_model(index, encoder.model_id, encoder.dim)
t_init = time.perf_counter()
hits = index.search(encoder.encode_text(sys.argv[1])[0], k=10)
t_first = time.perf_counter()
print(json.dumps({"event": "first", "hits": len(hits)}), flush=True)
queries, ms, enc_ms = json.loads(sys.argv[2]), [], []
for i in range(int(sys.argv[3])):
    a = time.perf_counter()
    vector = encoder.encode_text(f"{queries[i % len(queries)]} {i}")[0]
    b = time.perf_counter()
    index.search(vector, k=10)
    ms.append((time.perf_counter() - a) * 1000)
    enc_ms.append((b - a) * 1000)
print(json.dumps({"event": "done", "import_s": t_import - t0, "init_s": t_init - t_import,
                  "first_query_s": t_first - t_init, "warm_ms": ms, "encode_ms": enc_ms, "towers": list(encoder.loaded_towers),
                  "heavy_modules": sorted({m.split(".")[0] for m in sys.modules} & {"torch", "transformers"}),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}), flush=True)
"""


def prepare(source: Path) -> tuple[Path, Path]:
    """The cached ONNX export (fp32 + int8 text) and the 25k-vector index of the source's model."""
    from clipsearch.models import read_card, resolve_model_id
    from clipsearch.models.export import export
    from clipsearch.index import Document
    from clipsearch.index.faiss_index import FaissIndex
    from clipsearch.index.faiss_files import INDEX_MANIFEST

    onnx_dir = CACHE / "onnx-vit-b-32"
    card = read_card(onnx_dir)
    current = (card.onnx if card else None) or {}
    if not current.get("quantization") or "text_graph" not in current:  # older than int8, the graph or the card
        print("exporting ViT-B/32 to ONNX (once) ...", flush=True)
        export(str(source), onnx_dir, int8_text=True)
    index_dir = CACHE / "onnx-bench-index-25k"
    model_id = resolve_model_id(str(source))
    if not (index_dir / INDEX_MANIFEST).is_file():
        vectors = clustered_vectors(25_000)
        index = FaissIndex.open(index_dir, model_id=model_id, dim=512)
        with index.loading():
            index.upsert(Document(f"p{i:05d}", v, {"photographer": f"ph{i % 300}", "width": 640, "height": 480})
                         for i, v in enumerate(vectors))
            index.save()
    return onnx_dir, index_dir


# The function's memory size, which is what buys Lambda vCPUs (1 per 1,769 MB), the emulator passes
# on to the handler, whose ONNX encoder takes one thread per whole vCPU (server.app.query_threads).
# The variants run as a two-vCPU function; `onnx_fp32_1vcpu` shows the same export on one.
VARIANTS = {"torch": 3538, "onnx_fp32": 3538, "onnx_int8": 3538, "onnx_fp32_1vcpu": 1769}


def variant_env(name: str, source: Path, onnx_dir: Path, index_dir: Path, threads: int | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("ENCODER", "ONNX_PATH", "MODEL_ID", "MODEL_PATH",
                                                            "ONNX_TEXT_INT8", "TORCH_THREADS", "INDEX_MEMORY")}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(REPO), BACKEND="faiss",
               INDEX_PATH=str(index_dir), MODEL_PATH=str(source), AWS_LAMBDA_FUNCTION_MEMORY_SIZE=str(VARIANTS[name]))
    if threads:
        env["TORCH_THREADS"] = str(threads)
    if name.startswith("onnx"):
        env.update(ENCODER="onnx", ONNX_PATH=str(onnx_dir), ONNX_TEXT_INT8="true" if name == "onnx_int8" else "false")
    else:
        env["ENCODER"] = "torch"
    return env


def cold_start(env: dict[str, str], warm: int) -> dict:
    """One fresh process: seconds from spawn to its first text answer, then its warm figures."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", CHILD, QUERY, json.dumps(QUERIES), str(warm)], env=env,
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline()
    cold = time.perf_counter() - t0
    out, err = proc.communicate(timeout=300)
    if proc.returncode or not first.startswith('{"event": "first"'):
        raise RuntimeError(f"query process failed (exit {proc.returncode}): {err[-2000:]}")
    return {"cold_s": cold, **json.loads(out.strip().splitlines()[-1])}


def bench_processes(variants: dict[str, dict], rounds: int, warm: int, measure=cold_start) -> dict:
    """Cold starts interleaved across variants (so machine noise hits all alike), medians."""
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    for r in range(rounds):
        for name, env in variants.items():
            runs[name].append(measure(env, warm))
            print(f"  round {r + 1}/{rounds} {name}: cold {runs[name][-1]['cold_s']:.2f} s", flush=True)
    out = {}
    for name, rs in runs.items():
        med = lambda key: round(float(np.median([x[key] for x in rs])), 3)  # noqa: E731
        warm = lambda key: pct(np.concatenate([x[key][3:] for x in rs]))  # noqa: E731 - first 3 warm up
        fig = {"cold_start_s": med("cold_s"), "cold_runs_s": [round(x["cold_s"], 3) for x in rs],
               "peak_rss_mb": round(max(x["peak_rss_mb"] for x in rs)),
               # in-process: encode + search; emulator: a direct invocation's round trip through the RIE
               "warm_query": warm("warm_ms"), "warm_encode_p50_ms": warm("encode_ms")["p50_ms"],
               "towers": rs[0]["towers"], "imports_torch": bool(rs[0]["heavy_modules"])}
        if "handler_ms" in rs[0]:
            fig["warm_handler_total_p50_ms"] = warm("handler_ms")["p50_ms"]
            fig["warm_via_port_9000_front_p50_ms"] = warm("front_ms")["p50_ms"]
            fig["warm_via_local_gateway_p50_ms"] = warm("gateway_ms")["p50_ms"]
        for key in ("import_s", "init_s", "first_query_s"):
            if key in rs[0]:
                fig[key] = med(key)
        out[name] = fig
    return out


def _vm_hwm_mb(pid: int) -> float:
    """A live process's peak RSS (VmHWM), read from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


def stack_cold_start(env: dict[str, str], warm: int) -> dict:
    """Through the emulator: start the local stack, POST /search until the first text answer."""
    import requests

    from server.local import LocalLambda

    body = {"query": QUERY, "input_type": "text", "k": 10}
    stack = LocalLambda(env=env, log=os.devnull)
    t0 = time.perf_counter()
    stack.start(wait=False)
    try:
        with requests.Session() as http:
            while True:
                try:
                    r = http.post(stack.search_url, json=body, timeout=60)
                except requests.ConnectionError:
                    r = None
                if r is not None and r.status_code == 200:
                    break
                if time.perf_counter() - t0 > 120:
                    raise RuntimeError(f"no answer from the local stack: {r.status_code if r else 'refused'} "
                                       f"{r.text[:500] if r else ''}")
                time.sleep(0.01)
            cold = time.perf_counter() - t0
            ms, encode_ms, server_ms, front_ms, gateway_ms = [], [], [], [], []
            for i in range(warm):
                # A direct invocation on the emulator's own port (what the Lambda service does for
                # API Gateway in AWS); every text unique, or the handler's text-vector cache would answer.
                a = time.perf_counter()
                r = http.post(stack.rie_url, json={**body, "query": warm_query(i)}, timeout=60)
                ms.append((time.perf_counter() - a) * 1000)
                r.raise_for_status()
                took = json.loads(r.json()["body"])["took_ms"]
                encode_ms.append(took["encode"])
                server_ms.append(took["total"])
            # The local plumbing adds its own HTTP hop, reported apart: port 9000's front (which
            # queues invocations, as the emulator takes one at a time) and the local gateway.
            for i in range(warm // 3 + 4):
                a = time.perf_counter()
                http.post(stack.invoke_url, json={**body, "query": "front " + warm_query(i)}, timeout=60).raise_for_status()
                front_ms.append((time.perf_counter() - a) * 1000)
                a = time.perf_counter()
                http.post(stack.search_url, json={**body, "query": "gw " + warm_query(i)}, timeout=60).raise_for_status()
                gateway_ms.append((time.perf_counter() - a) * 1000)
        runtime = stack.runtime_process()
        maps = "".join(m.path for m in runtime.memory_maps())
        return {"cold_s": cold, "warm_ms": ms, "encode_ms": encode_ms, "handler_ms": server_ms, "front_ms": front_ms,
                "gateway_ms": gateway_ms,
                "peak_rss_mb": _vm_hwm_mb(runtime.pid), "towers": ["text"],
                "heavy_modules": ["torch"] if "libtorch" in maps else []}
    finally:
        stack.stop()


def _subprocess_seconds(code: str, n: int) -> float:
    times = []
    for _ in range(n):
        out = subprocess.run([sys.executable, "-c", f"import time; t=time.perf_counter(); {code}; "
                              "print(time.perf_counter()-t)"], capture_output=True, text=True, check=True,
                             env=dict(os.environ, HF_HUB_OFFLINE="1"))
        times.append(float(out.stdout.strip().splitlines()[-1]))
    return round(float(np.median(times)), 3)


def bench_in_process(source: Path, onnx_dir: Path, threads: list[int], repeat: int, n_imports: int) -> dict:
    """Imports, session creation and one 10-token text encode: torch, ONNX fp32, ONNX int8."""
    import torch

    from clipsearch.models.torch_encoder import TorchEncoder
    from clipsearch.models.onnx_encoder import OnnxEncoder

    out: dict = {"import_s": {
        "onnxruntime+tokenizers": _subprocess_seconds("import onnxruntime, tokenizers", n_imports),
        "torch+transformers": _subprocess_seconds("import torch, transformers; from transformers import "
                                                  "CLIPTextModelWithProjection", n_imports)}}
    sessions = []
    for _ in range(3):
        t0 = time.perf_counter()
        OnnxEncoder(onnx_dir, threads=threads[0])
        sessions.append(time.perf_counter() - t0)
    out["onnx_text_session_s"] = round(float(np.median(sessions)), 3)
    t0 = time.perf_counter()
    TorchEncoder(str(source), threads=threads[0])
    out["torch_text_load_s_after_import"] = round(time.perf_counter() - t0, 3)
    out["encode_10_tokens"] = {}
    for n in threads:
        torch.set_num_threads(n)
        encoders = {"torch": TorchEncoder(str(source), threads=n), "onnx_fp32": OnnxEncoder(onnx_dir, threads=n),
                    "onnx_int8": OnnxEncoder(onnx_dir, threads=n, text_int8=True)}
        assert encoders["onnx_fp32"].tokenize([QUERY])[0].shape[1] == 10
        ms: dict[str, list[np.ndarray]] = {k: [] for k in encoders}
        for _ in range(3):  # interleaved blocks: noise from other processes spreads over all three
            for name, enc in encoders.items():
                ms[name].append(timed(lambda: enc.encode_text(QUERY), repeat // 3, warmup=3))
        fig = {name: pct(np.concatenate(v)) for name, v in ms.items()}
        fig["speedup_fp32_vs_torch"] = round(fig["torch"]["p50_ms"] / fig["onnx_fp32"]["p50_ms"], 2)
        out["encode_10_tokens"][f"threads_{n}"] = fig
    return out


def accuracy(source: Path, onnx_dir: Path, index_dir: Path) -> dict:
    """ONNX fp32 against torch, and int8 against fp32: max abs diff, mean-centred cosine, top-10."""
    from clipsearch.models.torch_encoder import TorchEncoder
    from clipsearch.models.onnx_encoder import OnnxEncoder
    from clipsearch.index.faiss_index import FaissIndex

    words = "dogs cats beach mountains city street car flowers bird river bridge portrait food".split()
    texts = QUERIES + [f"a photo of {a} and {b}" for a in words for b in words[:4]]
    vecs = {"torch": TorchEncoder(str(source), threads=2).encode_text(texts),
            "onnx_fp32": OnnxEncoder(onnx_dir, threads=2).encode_text(texts),
            "onnx_int8": OnnxEncoder(onnx_dir, threads=2, text_int8=True).encode_text(texts)}
    index = FaissIndex.load(index_dir)

    def compare(a: np.ndarray, b: np.ndarray) -> dict:
        mean = a.mean(0)
        ca, cb = a - mean, b - mean
        centred = (ca * cb).sum(1) / (np.linalg.norm(ca, axis=1) * np.linalg.norm(cb, axis=1))
        overlap = [len({h.id for h in index.search(x, k=10)} & {h.id for h in index.search(y, k=10)}) / 10
                   for x, y in zip(a[:40], b[:40])]
        return {"max_abs_diff": float(f"{np.abs(a - b).max():.3g}"), "cosine_min": round(float((a * b).sum(1).min()), 6),
                "mean_centred_cosine_mean": round(float(centred.mean()), 4),
                "mean_centred_cosine_min": round(float(centred.min()), 4),
                "top10_overlap_on_index": round(float(np.mean(overlap)), 3)}

    return {"texts": len(texts), "onnx_fp32_vs_torch": compare(vecs["torch"], vecs["onnx_fp32"]),
            "onnx_int8_vs_onnx_fp32": compare(vecs["onnx_fp32"], vecs["onnx_int8"]),
            "note": "random weights: vectors of different texts are nearly identical, so read the mean-centred "
                    "cosine and the top-10 overlap, not the plain cosine; the index holds synthetic vectors"}


def sizes(source: Path, onnx_dir: Path) -> dict:
    torch_deps, torch_top = installed_mb(REPO / "requirements.txt")
    onnx_deps, onnx_top = installed_mb(REPO / "requirements-onnx.txt")
    torch_model = dir_mb(source)
    onnx_model = dir_mb(onnx_dir, exclude=("text.int8",))
    onnx_int8 = dir_mb(onnx_dir, exclude=("text.onnx",))
    top = lambda d: {k: round(v, 1) for k, v in list(d.items())[:6]}  # noqa: E731
    return {"torch": {"dependencies_mb": round(torch_deps), "model_mb": round(torch_model),
                      "total_mb": round(torch_deps + torch_model), "largest": top(torch_top)},
            "onnx": {"dependencies_mb": round(onnx_deps), "model_mb": round(onnx_model),
                     "total_mb": round(onnx_deps + onnx_model), "model_int8_text_mb": round(onnx_int8),
                     "largest": top(onnx_top)},
            "note": "site-packages of each requirements file's closure (this venv's versions) + model files; "
                    "the torch model is the full safetensors checkpoint, the ONNX one both towers fp32"}


def verdict(proc: dict) -> dict:
    onnx, torch_ = proc["onnx_fp32"], proc["torch"]
    speedup = torch_["cold_start_s"] / onnx["cold_start_s"]
    checks = {
        "cold_start_s<=1.0": onnx["cold_start_s"] <= TARGETS["cold_start_s"],
        "cold_speedup>=4x": speedup >= TARGETS["cold_speedup"],
        "warm_p50_ms<=12": onnx["warm_query"]["p50_ms"] <= TARGETS["warm_p50_ms"],
        "peak_rss_mb<=300": onnx["peak_rss_mb"] <= TARGETS["peak_rss_mb"],
        "no_torch_imported": not onnx["imports_torch"],
    }
    return {"cold_speedup": round(speedup, 2), "checks": checks, "all_met": all(checks.values())}


def _has_local_lambda() -> bool:
    try:
        return importlib.util.find_spec("server.local") is not None
    except ModuleNotFoundError:  # no server package on this checkout
        return False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer cold starts and repeats")
    ap.add_argument("--in-process", action="store_true", help="fresh processes without the emulator")
    # By default the handler's own choice (server.app.query_threads): 1 for torch, the CPUs the
    # emulator's memory size buys for ONNX (2 here).
    ap.add_argument("--threads", type=int, default=0,
                    help="TORCH_THREADS for the query processes (default: unset, the handler's choice)")
    args = ap.parse_args(argv)
    rounds, warm, repeat, n_imports = (3, 60, 90, 3) if args.quick else (7, 200, 300, 5)
    source = vit_b32_dir()
    onnx_dir, index_dir = prepare(source)
    threads = args.threads or None
    variants = {name: variant_env(name, source, onnx_dir, index_dir, threads)
                for name in VARIANTS}
    use_stack = not args.in_process and _has_local_lambda()
    where = "through the emulator" if use_stack else "in fresh processes"
    print(f"cold starts (process start -> first text answer) {where}, then warm queries ...", flush=True)
    proc = bench_processes(variants, rounds, warm, stack_cold_start if use_stack else cold_start)
    figures = {
        "model": "ViT-B/32 architecture, random weights",
        "index": "faiss, 25,000 x 512 (exact search), held as the server holds it (INDEX_MEMORY default: float16)",
        "mode": ("emulator: server.local.LocalLambda (Lambda RIE + awslambdaric + handler + gateway), timed from "
                 "starting it to the first 200 on POST /search; warm = direct invocations on the RIE's own port "
                 "(and, apart, through port 9000's queueing front and through the local gateway)" if use_stack else
                 "in-process: a fresh Python process runs the handler's init + first query (no emulator)"),
        "threads": threads or "the handler's default (server.app.query_threads)", "rounds": rounds,
        "function_memory_mb": VARIANTS,
        "processes": proc, "verdict": verdict(proc),
        "in_process": bench_in_process(source, onnx_dir, [1, 2], repeat, n_imports),
        "accuracy": accuracy(source, onnx_dir, index_dir),
        "installed_size": sizes(source, onnx_dir),
        "targets": TARGETS,
    }
    print(json.dumps(figures, indent=2))
    write_results("onnx", figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
