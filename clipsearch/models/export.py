"""Export a CLIP checkpoint's text and image towers to ONNX, for the torch-free query path.

    python -m clipsearch.export_onnx SOURCE OUT_DIR [--model-id ID] [--towers text,vision]
                                                    [--int8-text] [--opset N]

SOURCE is a hub id or a local checkpoint directory. OUT_DIR receives `text.onnx` (inputs
input_ids and attention_mask, int64, dynamic batch and sequence; output text_embeds),
`vision.onnx` (input pixel_values, float32, dynamic batch; output image_embeds), the tokenizer
files, `preprocessor_config.json`, and the manifest `clipsearch_model.json` recording the
source model id, so an index built by the torch encoder accepts this encoder's queries.
`--int8-text` also writes `text.int8.onnx` (dynamic int8 quantisation), chosen at run time by
ONNX_TEXT_INT8=true. Runs at build time: it needs torch and transformers, the encoder does not.

The text tower is written from `clipsearch.text_graph` (fewer, larger operations; the last layer
computes only the pooled token), checked against the checkpoint's own transformers forward on a
padded batch; a checkpoint it does not reproduce gets the traced transformers module instead, with
a warning. The manifest's `text_graph` says which ("pooled" or "traced").
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Sequence

from clipsearch.models import MAX_TEXT_TOKENS, has_random_weights, resolve_model_id

MANIFEST = "clipsearch_model.json"
DEFAULT_OPSET = 17
TOWER_FILES = {"text": "text.onnx", "vision": "vision.onnx"}
TEXT_INT8_FILE = "text.int8.onnx"
# Everything a tokenizer or preprocessor might need; the encoder reads tokenizer.json and the
# two configs, the rest travels along for tools that load the directory with transformers.
AUX_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
             "merges.txt", "preprocessor_config.json")


def load_tower(source: str, which: str):
    """One tower as a module returning the projected embeddings (what the encoder normalises),
    and the tower's config."""
    import torch
    from transformers import CLIPTextModelWithProjection, CLIPVisionModelWithProjection

    from clipsearch.models import _quiet_transformers

    _quiet_transformers()
    cls = CLIPTextModelWithProjection if which == "text" else CLIPVisionModelWithProjection
    # Eager attention traces to plain MatMul/Softmax ops. (SDPA also traces correctly with torch
    # 2.13, checked on padded batches, but its graph follows each torch version's decomposition.)
    model = cls.from_pretrained(source, attn_implementation="eager").eval()

    class Text(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return self.model(input_ids=input_ids, attention_mask=attention_mask).text_embeds

    class Vision(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, pixel_values):
            return self.model(pixel_values=pixel_values).image_embeds

    return (Text() if which == "text" else Vision()).eval(), model.config


def _export(module, args: tuple, path: Path, inputs: list[str], output: str, axes: dict, opset: int) -> None:
    import torch

    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)  # shape asserts frozen: fine
    warnings.filterwarnings("ignore", category=DeprecationWarning)  # "legacy TorchScript exporter"
    # CLIP pools the end token's state with argmax indices, never negative.
    warnings.filterwarnings("ignore", message="Exporting aten::index operator")
    # The TorchScript exporter (deprecated but present in torch 2.13): CLIP's graph is static apart
    # from the batch and sequence axes the tracer is told about. The dynamo exporter gives the
    # same outputs (checked: within 7e-7 on padded batches) but needs onnxscript and onnx-ir, which
    # nothing else here uses, and takes ten times as long.
    with torch.no_grad():
        torch.onnx.export(module, args, str(path), dynamo=False, input_names=inputs, output_names=[output],
                          dynamic_axes=axes, opset_version=opset, do_constant_folding=True)
    externalize(path)


def parity_batch(cfg, seed: int = 0):
    """Token ids as a tokenizer would give them, padded three ways: (input_ids, attention_mask).

    Lengths 1 to the model's maximum; the end-of-text token where transformers will look for it
    (the highest id for pre-#24773 configs, whose eos_token_id is 2); padding with the pad id, with
    the end-of-text id (what CLIP's own tokenizer pads with), and a left-padded row unless the pad
    id is the end-of-text id (transformers would then pool a padding token)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    vocab, longest = int(cfg.vocab_size), int(cfg.max_position_embeddings)
    eos = vocab - 1 if cfg.eos_token_id == 2 else int(cfg.eos_token_id)
    bos = getattr(cfg, "bos_token_id", None)
    pad = int(cfg.pad_token_id if cfg.pad_token_id is not None else 0)
    lengths = [1, 2, 7, 13, min(30, longest), longest]
    extra = [9, 9] if pad != eos else [9]
    ids = np.full((len(lengths) + len(extra), longest), pad, dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, n in enumerate(lengths + extra):
        body = rng.integers(0, eos, n)
        body[body == pad] = (pad + 1) % eos
        if bos is not None and 0 <= int(bos) < eos and n > 1:
            body[0] = int(bos)
        body[-1] = eos
        if row == len(lengths):  # padded with the end-of-text token
            ids[row, n:] = eos
        at = longest - n if row == len(lengths) + 1 else 0  # the last row left-padded
        ids[row, at : at + n], mask[row, at : at + n] = body, 1
    return ids, mask


def _check_text_graph(path: Path, reference, cfg) -> str | None:
    """None when the graph at `path` gives `reference`'s output on `parity_batch`, else what differs."""
    import numpy as np
    import onnxruntime as ort
    import torch

    ids, mask = parity_batch(cfg)
    with torch.no_grad():
        want = reference(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        got = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]).run(
            None, {"input_ids": ids, "attention_mask": mask})[0]
    except Exception as exc:  # noqa: BLE001 - ORT raises bare Exception subclasses (Fail, InvalidGraph)
        return f"onnxruntime cannot run it: {exc}"
    if got.shape != want.shape or not np.isfinite(got).all():
        return f"output shape {got.shape} or values not finite"
    err = float(np.abs(got - want).max() / max(float(np.abs(want).max()), 1e-12))
    return None if err <= 1e-4 else f"largest difference {err:.2e} of the largest value"


def externalize(path: Path) -> None:
    """Move the weights out of the protobuf into `<name>.data` beside it, readable by all.

    ONNX Runtime memory-maps external weights instead of parsing them out of the protobuf and
    copying them: for ViT-B/32's text tower, session creation drops from about 0.5 s to 0.16 s
    and peak RSS from 400 MB to 210 MB. World-readable because Lambda runs the image as another
    user than the one that built it.
    """
    import onnx

    model = onnx.load(str(path))
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)  # onnx appends to an existing data file
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data.name, size_threshold=1024)
    for f in (path, data):
        if f.exists():
            f.chmod(0o644)


def quantize_text(src: Path, dest: Path) -> None:
    """Dynamic int8 (weights int8, activations quantised per call) of the text tower's MatMuls."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().setLevel(logging.ERROR)  # its "consider pre-processing" hint is for static quant

    # MatMul only: quantising the token-embedding Gather saves memory but costs most accuracy.
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        staged = Path(tmp) / dest.name
        # Per-channel scales: on ViT-B/32's text tower, mean-centred cosine to fp32 0.996 against
        # 0.994 per-tensor, at the same speed.
        quantize_dynamic(str(src), str(staged), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
                         per_channel=True)
        dest.with_name(dest.name + ".data").unlink(missing_ok=True)
        shutil.move(str(staged), str(dest))
    externalize(dest)


def export(
    source: str,
    out_dir: str | Path,
    *,
    model_id: str | None = None,
    towers: Sequence[str] = ("text", "vision"),
    int8_text: bool = False,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Export `source` to `out_dir` and return the manifest's path."""
    import torch
    import transformers

    unknown = set(towers) - set(TOWER_FILES)
    if unknown or not towers:
        raise ValueError(f"towers must be a non-empty subset of {sorted(TOWER_FILES)}, got {list(towers)}")
    if int8_text and "text" not in towers:
        raise ValueError("--int8-text needs the text tower")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest: dict = {"model_id": resolve_model_id(source, model_id), "random_weights": has_random_weights(source)}
    if "text" in towers:
        from clipsearch.models.text_graph import PooledText

        text, text_cfg = load_tower(source, "text")
        ids = torch.tensor([[1, 2, 3, 4, 5], [1, 2, 3, 0, 0]], dtype=torch.long)
        ids = ids.clamp(max=int(text_cfg.vocab_size) - 1)
        mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.long)
        seq = {0: "batch", 1: "sequence"}
        text_file = out / TOWER_FILES["text"]

        def export_text(module) -> str | None:
            _export(module, (ids, mask), text_file, ["input_ids", "attention_mask"], "text_embeds",
                    {"input_ids": seq, "attention_mask": seq, "text_embeds": {0: "batch"}}, opset)
            return _check_text_graph(text_file, text, text_cfg)

        # The rewritten graph (clipsearch.text_graph), faster, unless it does not reproduce this
        # checkpoint's own forward: then the module traced as transformers wrote it.
        text_graph = "pooled"
        try:
            problem = export_text(PooledText(text.model).eval())
        except Exception as exc:  # noqa: BLE001 - a checkpoint whose modules are not laid out as CLIP's
            problem = f"it cannot be built: {type(exc).__name__}: {exc}"
        if problem:
            warnings.warn(f"the rewritten text graph does not match {source}'s forward ({problem}); "
                          "exporting the traced transformers module instead", stacklevel=2)
            text_graph, problem = "traced", export_text(text)
        if problem:
            raise ValueError(f"the exported text tower does not match {source}'s forward: {problem}")
        if int8_text:
            quantize_text(text_file, out / TEXT_INT8_FILE)
        manifest.update(dim=int(text_cfg.projection_dim), text_graph=text_graph,
                        max_text_tokens=min(MAX_TEXT_TOKENS, int(text_cfg.max_position_embeddings)))
        del text  # the two towers need not sit in memory together
    if "vision" in towers:
        vision, vision_cfg = load_tower(source, "vision")
        size = int(vision_cfg.image_size)
        pixels = torch.zeros((1, 3, size, size), dtype=torch.float32)
        _export(vision, (pixels,), out / TOWER_FILES["vision"], ["pixel_values"], "image_embeds",
                {"pixel_values": {0: "batch"}, "image_embeds": {0: "batch"}}, opset)
        manifest.update(dim=int(vision_cfg.projection_dim), image_size=int(vision_cfg.image_size))
        del vision
    _copy_aux(source, out)
    manifest.update({
        "opset": opset,
        "towers": {t: TOWER_FILES[t] for t in towers},
        "quantization": {"text_int8": TEXT_INT8_FILE} if int8_text else {},
        "format": "onnx",
        "exported_with": {"torch": torch.__version__, "transformers": transformers.__version__},
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })
    path = out / MANIFEST
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def _copy_aux(source: str, out: Path) -> None:
    """Tokenizer and preprocessor files next to the graphs (from the hub if SOURCE is an id)."""
    src = Path(source)
    if src.is_dir():
        for name in AUX_FILES:
            if (src / name).is_file():
                shutil.copyfile(src / name, out / name)
    else:
        from transformers import AutoTokenizer, CLIPImageProcessor

        AutoTokenizer.from_pretrained(source).save_pretrained(str(out))
        CLIPImageProcessor.from_pretrained(source).save_pretrained(str(out))
    if not (out / "tokenizer.json").is_file():  # a slow-only checkpoint: let transformers convert it
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(source).save_pretrained(str(out))
    if not (out / "tokenizer.json").is_file():
        raise ValueError(f"{source} has no fast tokenizer (tokenizer.json) and none could be built")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clipsearch.export_onnx", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="hub id or local CLIP checkpoint directory")
    parser.add_argument("out_dir", help="directory to write the ONNX graphs, tokenizer and manifest to")
    parser.add_argument("--model-id", help="identity recorded in the manifest (default: the source's)")
    parser.add_argument("--towers", default="text,vision", help="comma-separated: text, vision (default both)")
    parser.add_argument("--int8-text", action="store_true", help="also write text.int8.onnx (dynamic int8)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    args = parser.parse_args(argv)
    towers = [t.strip() for t in args.towers.split(",") if t.strip()]
    if Path(args.source).exists() and not (Path(args.source) / "config.json").is_file():
        print(f"error: {args.source} is not a model checkpoint directory (no config.json)", file=sys.stderr)
        return 2
    try:
        t0 = time.perf_counter()
        path = export(args.source, args.out_dir, model_id=args.model_id, towers=towers,
                      int8_text=args.int8_text, opset=args.opset)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    manifest = json.loads(path.read_text())
    print(f"exported {manifest['model_id']} ({manifest['dim']}-d, towers {', '.join(manifest['towers'])}"
          f"{', text int8' if args.int8_text else ''}) to {args.out_dir} in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
