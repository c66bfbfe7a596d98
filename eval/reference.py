"""Published figures printed beside ours, with where they come from. Values are fractions.

What each figure measured, so a comparison is like for like:

- open_clip's retrieval table (CLIP_benchmark): model ``ViT-B-32`` pretrained ``openai`` (the
  weights of Hugging Face's `openai/clip-vit-base-patch32`), zero-shot, on the Karpathy *test*
  split: Flickr30k 1,000 images / 5,000 captions, MS-COCO 5,000 images / ~25,000 captions, every
  caption a query; "image retrieval" is our text->image, "text retrieval" our image->text;
  Recall@K = at least one right answer in the first K.
- open_clip's table for other checkpoints of the same size (Flickr30k text->image R@1 only, as
  quoted in docs/models.md): ViT-B-32 / laion2b_s34b_b79k (Hugging Face
  `laion/CLIP-ViT-B-32-laion2B-s34B-b79K`), ViT-B-32-256 / datacomp_s34b_b86k
  (`laion/CLIP-ViT-B-32-256x256-DataComp-s34B-b86K`), ViT-B-16-SigLIP / webli
  (`google/siglip-base-patch16-224`). The Hugging Face ids are where the same weights are
  published, as far as the names say; the files were not compared here.
- Immich's smart-search model table (docs.immich.app/features/searching): Crossmodal-3600,
  English captions, text->image recall. Immich's model collections are "sorted by average
  recall@k"; which K its single figure averages is not stated there, so our table's "mean"
  column (the mean of R@1, R@5 and R@10) is the nearest like-for-like, not an exact one.
- rclip's CIFAR-100 benchmark: the 10,000 *test* images, each bare class name as written by
  torchvision (`aquarium_fish`, no prompt template) as a text; an image is right at top-K when its
  class is among the K class texts most similar to it. Our ``zeroshot`` task with the default
  ``--prompt "{}"`` over CIFAR-100 exported to folders named by those classes does the same.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

OPEN_CLIP = (
    "open_clip docs/openclip_retrieval_results.csv (CLIP_benchmark), row ViT-B-32 / openai, "
    "https://github.com/mlfoundations/open_clip/blob/main/docs/openclip_retrieval_results.csv"
)
IMMICH = "Immich's smart-search model table, Crossmodal-3600 English, https://docs.immich.app/features/searching"
RCLIP = (
    "rclip's published CIFAR-100 figures, measured by benchmarks/benchmark-cifar.py, "
    "https://github.com/yurijmikhalevich/rclip"
)
OPEN_CLIP_TABLE = ("open_clip docs/openclip_retrieval_results.csv (CLIP_benchmark), "
                   "https://github.com/mlfoundations/open_clip/blob/main/docs/openclip_retrieval_results.csv")
VIT_B32 = "CLIP ViT-B/32 (OpenAI)"
OPENAI_B32 = "openai/clip-vit-base-patch32"
LAION_B32 = "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"
DATACOMP_B32 = "laion/CLIP-ViT-B-32-256x256-DataComp-s34B-b86K"
SIGLIP_B16 = "google/siglip-base-patch16-224"
SIGLIP2_B16 = "google/siglip2-base-patch16-224"
SIGLIP2_B32 = "google/siglip2-base-patch32-256"


@dataclass(frozen=True)
class Reference:
    dataset: str  # family: "flickr30k" | "coco" | "cifar100" | "xm3600"
    group: str  # metric group in our report: "text_to_image" | "image_to_text" | "zero_shot" | "text_to_image[en]"
    model: str
    values: dict[str, float]
    source: str
    model_id: str = OPENAI_B32  # the Hugging Face checkpoint the figures are for


REFERENCES: tuple[Reference, ...] = (
    Reference("flickr30k", "text_to_image", VIT_B32, {"R@1": 0.588, "R@5": 0.836, "R@10": 0.900}, OPEN_CLIP),
    Reference("flickr30k", "image_to_text", VIT_B32, {"R@1": 0.789, "R@5": 0.949, "R@10": 0.982}, OPEN_CLIP),
    Reference("coco", "text_to_image", VIT_B32, {"R@1": 0.304, "R@5": 0.559, "R@10": 0.669}, OPEN_CLIP),
    Reference("coco", "image_to_text", VIT_B32, {"R@1": 0.501, "R@5": 0.750, "R@10": 0.835}, OPEN_CLIP),
    Reference("cifar100", "zero_shot", VIT_B32, {"top-1": 0.5515, "top-5": 0.8134}, RCLIP),
    Reference("flickr30k", "text_to_image", "CLIP ViT-B/32 (LAION-2B)", {"R@1": 0.668}, OPEN_CLIP_TABLE, LAION_B32),
    Reference("flickr30k", "text_to_image", "CLIP ViT-B/32-256 (DataComp)", {"R@1": 0.649}, OPEN_CLIP_TABLE,
              DATACOMP_B32),
    Reference("flickr30k", "text_to_image", "SigLIP ViT-B/16", {"R@1": 0.747}, OPEN_CLIP_TABLE, SIGLIP_B16),
    Reference("xm3600", "text_to_image[en]", VIT_B32, {"mean": 0.594}, IMMICH),
    Reference("xm3600", "text_to_image[en]", "CLIP ViT-B/32 (LAION-2B)", {"mean": 0.688}, IMMICH, LAION_B32),
    Reference("xm3600", "text_to_image[en]", "SigLIP ViT-B/16", {"mean": 0.716}, IMMICH, SIGLIP_B16),
    Reference("xm3600", "text_to_image[en]", "SigLIP 2 ViT-B/32-256", {"mean": 0.732}, IMMICH, SIGLIP2_B32),
    Reference("xm3600", "text_to_image[en]", "SigLIP 2 ViT-B/16", {"mean": 0.752}, IMMICH, SIGLIP2_B16),
)


def dataset_family(name: str) -> str | None:
    """'dataset_flickr30k', 'Flickr30K' -> 'flickr30k'; 'coco', 'mscoco' -> 'coco'; 'cifar-100' -> 'cifar100';
    'crossmodal-3600', 'xm3600' -> 'xm3600'."""
    flat = re.sub(r"[^a-z0-9]", "", name.lower())
    if "xm3600" in flat or "crossmodal3600" in flat:
        return "xm3600"
    for family in ("flickr30k", "cifar100", "coco"):
        if family in flat:
            return family
    return None


def references_for(dataset_name: str, model_id: str | None = None) -> list[Reference]:
    """The published figures for this dataset: the measured checkpoint's where there are some,
    else OpenAI ViT-B/32's (the report then says they are for another model)."""
    family = dataset_family(dataset_name)
    refs = [r for r in REFERENCES if r.dataset == family]
    own = [r for r in refs if r.model_id == model_id]
    return own or [r for r in refs if r.model_id == OPENAI_B32]
