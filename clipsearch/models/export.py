"""Export a checkpoint's text and image towers to ONNX, for the torch-free query path.

    python -m clipsearch.export_onnx SOURCE OUT_DIR [--model-id ID] [--towers text,vision]
                                                    [--int8-text] [--opset N]

SOURCE is a hub id or a local checkpoint directory of any family (`clipsearch.models.families`).
OUT_DIR receives `text.onnx` (inputs input_ids, and attention_mask for the families that use one,
int64, dynamic batch and sequence; output text_embeds), `vision.onnx` (input pixel_values,
float32, dynamic batch; output image_embeds), `tokenizer.json` (converted from the checkpoint's
SentencePiece model where it ships none), the tokenizer and preprocessor configs, and the model
card `clipsearch_model.json` recording the source model id (so an index built by the torch
encoder accepts this encoder's queries), its family and, under `onnx`, the graphs. `--int8-text`
also writes `text.int8.onnx` (dynamic int8 quantisation), chosen at run time by
ONNX_TEXT_INT8=true. Runs at build time: it needs torch and transformers, the encoder does not.

The text tower is written from `clipsearch.models.text_graph` (fewer, larger operations; the last
layer computes only the pooled token), checked against the checkpoint's own transformers forward
on padded batches; a checkpoint it does not reproduce gets the traced transformers module instead,
with a warning. The card's `onnx.text_graph` says which ("pooled" or "traced").
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

from clipsearch.models.card import CARD_FILE
from clipsearch.models.families import CLIP, Family, family_of

DEFAULT_OPSET = 17
TOWER_FILES = {"text": "text.onnx", "vision": "vision.onnx"}
TEXT_INT8_FILE = "text.int8.onnx"
# What the encoder reads besides the graphs and tokenizer.json; the rest travels along for tools
# that load the directory with transformers.
AUX_FILES = ("tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt", "preprocessor_config.json")


def exportable_tower(source: str, which: str, family: Family | None = None):
    """One tower as a module returning the embeddings the encoder normalises, and the tower's
    config. The text module takes (input_ids, attention_mask) for a family that uses a mask and
    (input_ids) for one that attends to its padding; its `family` attribute says which."""
    import torch

    from clipsearch.models import hf

    family = family or family_of(source)
    # Eager attention traces to plain MatMul/Softmax ops. (SDPA also traces correctly with torch
    # 2.13, checked on padded batches, but its graph follows each torch version's decomposition.)
    model = hf.load_tower(source, family, which, attn_implementation="eager")

    class Text(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model, self.family = model, family

        def forward(self, input_ids, attention_mask=None):
            return hf.run_text(self.model, family, input_ids, attention_mask)

    class Vision(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model, self.family = model, family

        def forward(self, pixel_values):
            return hf.tower_output(family, "vision", self.model(pixel_values=pixel_values))

    return (Text() if which == "text" else Vision()).eval(), model.config


def text_inputs(family: Family) -> list[str]:
    return ["input_ids", "attention_mask"] if family.text.attention_mask else ["input_ids"]


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


def parity_batch(cfg, seed: int = 0, family: Family = CLIP):
    """Token ids as a tokenizer would give them, padded three ways: (input_ids, attention_mask).

    CLIP: lengths 1 to the model's maximum; the end-of-text token where transformers will look for
    it (the highest id for pre-#24773 configs, whose eos_token_id is 2); padding with the pad id,
    with the end-of-text id (what CLIP's own tokenizer pads with), and a left-padded row unless the
    pad id is the end-of-text id (transformers would then pool a padding token).
    SigLIP: every row as long as the model's positions (its tokenizer pads to them), texts of 1 to
    all positions followed by the pad id; the mask is all ones (the tower attends to padding)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    vocab, longest = int(cfg.vocab_size), int(cfg.max_position_embeddings)
    if not family.text.attention_mask:
        pad = int(cfg.pad_token_id) if cfg.pad_token_id is not None and 0 <= cfg.pad_token_id < vocab else 0
        lengths = [1, 2, 7, 13, min(30, longest), longest - 1, longest]
        ids = np.full((len(lengths), longest), pad, dtype=np.int64)
        for row, n in enumerate(lengths):
            ids[row, :n] = rng.integers(0, vocab, n)
        return ids, np.ones_like(ids)
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

    family = reference.family
    ids, mask = parity_batch(cfg, family=family)
    args = (torch.from_numpy(ids), torch.from_numpy(mask))[: len(text_inputs(family))]
    with torch.no_grad():
        want = reference(*args).numpy()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        feeds = {"input_ids": ids, "attention_mask": mask}
        got = session.run(None, {i.name: feeds[i.name] for i in session.get_inputs()})[0]
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
    """Export `source` to `out_dir` and return the model card's path."""
    import torch
    import transformers

    from clipsearch.models.hf import checkpoint_card

    unknown = set(towers) - set(TOWER_FILES)
    if unknown or not towers:
        raise ValueError(f"towers must be a non-empty subset of {sorted(TOWER_FILES)}, got {list(towers)}")
    if int8_text and "text" not in towers:
        raise ValueError("--int8-text needs the text tower")
    family = family_of(source)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / CARD_FILE).unlink(missing_ok=True)  # no card over graphs half rewritten
    card = checkpoint_card(source, family, model_id)
    onnx: dict = {}
    if "text" in towers:
        onnx.update(export_text(source, family, out, opset))
        if int8_text:
            quantize_text(out / TOWER_FILES["text"], out / TEXT_INT8_FILE)
    if "vision" in towers:
        vision, vision_cfg = exportable_tower(source, "vision", family)
        size = int(vision_cfg.image_size)
        pixels = torch.zeros((1, 3, size, size), dtype=torch.float32)
        _export(vision, (pixels,), out / TOWER_FILES["vision"], ["pixel_values"], "image_embeds",
                {"pixel_values": {0: "batch"}, "image_embeds": {0: "batch"}}, opset)
        onnx["image_size"] = size
        del vision
    _copy_aux(source, family, out)
    onnx.update({
        "opset": opset,
        "towers": {t: TOWER_FILES[t] for t in towers},
        "quantization": {"text_int8": TEXT_INT8_FILE} if int8_text else {},
        "exported_with": {"torch": torch.__version__, "transformers": transformers.__version__},
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })
    card.onnx = onnx
    return card.write(out)


def export_text(source: str, family: Family, out: Path, opset: int) -> dict:
    """Write text.onnx: the rewritten graph if it reproduces the checkpoint, else the traced module."""
    import torch

    from clipsearch.models.text_graph import PooledText

    text, text_cfg = exportable_tower(source, "text", family)
    longest = int(text_cfg.max_position_embeddings)
    # SigLIP's graph is traced at the length it always runs at; CLIP's at a short padded batch.
    width = longest if family.text.pad_to_max else 5
    ids = (torch.arange(2 * width, dtype=torch.long).reshape(2, width) + 1) % int(text_cfg.vocab_size)
    mask = torch.ones_like(ids)
    mask[1, width - 2:] = 0
    names = text_inputs(family)
    seq = {0: "batch", 1: "sequence"}
    text_file = out / TOWER_FILES["text"]

    def write(module) -> str | None:
        _export(module, (ids, mask)[: len(names)], text_file, names, "text_embeds",
                {**{n: seq for n in names}, "text_embeds": {0: "batch"}}, opset)
        return _check_text_graph(text_file, text, text_cfg)

    text_graph = "pooled"
    try:
        problem = write(PooledText(text.model).eval())
    except Exception as exc:  # noqa: BLE001 - a checkpoint whose modules are not laid out as expected
        problem = f"it cannot be built: {type(exc).__name__}: {exc}"
    if problem:
        warnings.warn(f"the rewritten text graph does not match {source}'s forward ({problem}); "
                      "exporting the traced transformers module instead", stacklevel=3)
        text_graph, problem = "traced", write(text)
    if problem:
        raise ValueError(f"the exported text tower does not match {source}'s forward: {problem}")
    return {"text_graph": text_graph, "text_inputs": names,
            "max_text_tokens": min(family.text.max_tokens, longest)}


def _copy_aux(source: str, family: Family, out: Path) -> None:
    """tokenizer.json (the checkpoint's, or converted from its slow files) and the configs."""
    from clipsearch.models.hf import tokenizer_json

    src = Path(source)
    for name in AUX_FILES:
        if src.is_dir():
            if (src / name).is_file():
                shutil.copyfile(src / name, out / name)
            continue
        try:
            from huggingface_hub import hf_hub_download

            shutil.copyfile(hf_hub_download(source, name), out / name)
        except Exception:  # noqa: BLE001 - an optional file this repository does not have
            pass
    tokenizer_json(source, family).save(str(out / "tokenizer.json"))
    for f in out.iterdir():
        if f.is_file():
            f.chmod(0o644)  # Lambda runs the image as another user than the one that built it


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clipsearch.export_onnx", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="hub id or local checkpoint directory (CLIP, SigLIP, SigLIP 2)")
    parser.add_argument("out_dir", help="directory to write the ONNX graphs, tokenizer and model card to")
    parser.add_argument("--model-id", help="identity recorded in the model card (default: the source's)")
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
    card = json.loads(path.read_text())
    print(f"exported {card['model_id']} ({card['family']}, {card['dim']}-d, towers {', '.join(card['onnx']['towers'])}"
          f"{', text int8' if args.int8_text else ''}) to {args.out_dir} in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
