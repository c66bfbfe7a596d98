"""Metric code on synthetic ground truth whose recall is known exactly."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eval.metrics import precision_at_k, recall_at_k, relevant_rank
from eval.reference import REFERENCES, dataset_family, references_for
from eval.report import build_report, format_table, write_report


def ranking(*keys: str, scores: list[float] | None = None):
    """Keys best first with strictly falling scores, unless given."""
    scores = scores if scores is not None else [1.0 - 0.1 * i for i in range(len(keys))]
    return list(zip(keys, scores))


# -- relevant_rank ----------------------------------------------------------------------------
def test_rank_is_the_position_of_the_best_relevant_key():
    r = ranking("a", "b", "c", "d")
    assert relevant_rank(r, {"c"}) == 3
    assert relevant_rank(r, {"d", "b"}) == 2
    assert relevant_rank(r, {"a"}) == 1
    assert relevant_rank(r, {"z"}) is None
    assert relevant_rank([], {"a"}) is None
    for ties in ("pessimistic", "order"):
        assert relevant_rank(r, {"c"}, ties=ties) == 3


def test_pessimistic_ties_put_the_relevant_key_after_every_tied_wrong_one():
    r = ranking("rel", "x", "y", "z", scores=[0.9, 0.9, 0.9, 0.5])
    assert relevant_rank(r, {"rel"}) == 3  # x and y tie with it: worst order puts them first
    assert relevant_rank(r, {"rel"}, ties="order") == 1  # the backend's tie-break, trusted
    # a wrong key strictly ahead plus one tied behind
    r = ranking("x", "rel", "y", scores=[0.95, 0.9, 0.9])
    assert relevant_rank(r, {"rel"}) == 3
    assert relevant_rank(r, {"rel"}, ties="order") == 2


def test_two_tied_relevant_keys_count_once():
    r = ranking("r1", "x", "r2", scores=[0.9, 0.9, 0.9])
    assert relevant_rank(r, {"r1", "r2"}) == 2  # worst order: x, then a relevant one


def test_a_tie_running_past_a_truncated_list_is_a_miss():
    r = ranking("a", "rel", "b", scores=[0.95, 0.9, 0.9])
    # complete list: rank 3; cut at k=3 with the tie reaching the cut: unseen keys may tie too
    assert relevant_rank(r, {"rel"}, truncated=False) == 3
    assert relevant_rank(r, {"rel"}, truncated=True) is None
    # the cut falls below the relevant score: nothing unseen can tie with it
    r = ranking("a", "rel", "b", scores=[0.95, 0.9, 0.8])
    assert relevant_rank(r, {"rel"}, truncated=True) == 2
    # order mode trusts positions even at the cut
    assert relevant_rank(ranking("a", "rel", scores=[0.9, 0.9]), {"rel"}, ties="order", truncated=True) == 2


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="ties"):
        relevant_rank(ranking("a"), {"a"}, ties="optimistic")
    with pytest.raises(ValueError, match="K"):
        recall_at_k([1], [0])
    with pytest.raises(ValueError, match="K"):
        precision_at_k(ranking("a"), {"a"}, 0)


# -- recall_at_k ------------------------------------------------------------------------------
def test_recall_on_hand_built_rankings():
    relevant = {"q1": {"i1"}, "q2": {"i2"}, "q3": {"i3"}, "q4": {"i4"}}
    rankings = {
        "q1": ranking("i1", "i2", "i3"),  # rank 1
        "q2": ranking("i1", "i3", "i4", "i5", "i2"),  # rank 5
        "q3": ranking("i1", "i2"),  # fewer than K results, relevant missing: a miss
        "q4": ranking("i1", "i4", "i2", scores=[0.9, 0.8, 0.8]),  # tie: rank 3 pessimistic, 2 by order
    }
    ranks = [relevant_rank(rankings[q], relevant[q]) for q in relevant]
    assert ranks == [1, 5, None, 3]
    assert recall_at_k(ranks, [1, 2, 3, 5, 10]) == {1: 0.25, 2: 0.25, 3: 0.5, 5: 0.75, 10: 0.75}
    by_order = [relevant_rank(rankings[q], relevant[q], ties="order") for q in relevant]
    assert recall_at_k(by_order, [2]) == {2: 0.5}


def test_text_to_image_with_several_captions_per_image():
    # 3 images, 2 captions each (6 queries). Each caption's relevant set is its image's document.
    caption_image = {"c0": "A", "c1": "A", "c2": "B", "c3": "B", "c4": "C", "c5": "C"}
    hits = {
        "c0": ranking("A", "B", "C"),
        "c1": ranking("B", "A", "C"),
        "c2": ranking("B", "C", "A"),
        "c3": ranking("C", "A", "B"),
        "c4": ranking("A", "B"),  # only two results: C never returned
        "c5": ranking("C", "B", "A"),
    }
    ranks = [relevant_rank(hits[c], {img}) for c, img in caption_image.items()]
    assert recall_at_k(ranks, [1, 2, 3]) == {1: 3 / 6, 2: 4 / 6, 3: 5 / 6}
    # image->text: each image's relevant set is all of its captions
    image_hits = {"A": ranking("c2", "c1", "c0"), "B": ranking("c4", "c5", "c0", "c3"), "C": ranking("c5")}
    captions_of = {"A": {"c0", "c1"}, "B": {"c2", "c3"}, "C": {"c4", "c5"}}
    ranks = [relevant_rank(image_hits[i], captions_of[i]) for i in "ABC"]
    assert ranks == [2, 4, 1]
    assert recall_at_k(ranks, [1, 2, 5]) == {1: 1 / 3, 2: 2 / 3, 5: 1.0}


def test_recall_of_no_queries_is_nan():
    assert all(math.isnan(v) for v in recall_at_k([], [1, 5]).values())


def test_precision_counts_missing_slots_as_wrong():
    r = ranking("a", "x", "b")
    assert precision_at_k(r, {"a", "b"}, 1) == 1.0
    assert precision_at_k(r, {"a", "b"}, 2) == 0.5
    assert precision_at_k(r, {"a", "b"}, 10) == 0.2  # 2 right out of 10 slots, 7 slots empty


# -- properties -------------------------------------------------------------------------------
rank_lists = st.lists(st.one_of(st.none(), st.integers(min_value=1, max_value=50)), min_size=1, max_size=60)


@settings(max_examples=200, deadline=None)
@given(rank_lists, st.lists(st.integers(min_value=1, max_value=60), min_size=2, max_size=6, unique=True))
def test_recall_is_monotone_in_k_and_a_fraction(ranks, ks):
    ks = sorted(ks)
    values = recall_at_k(ranks, ks)
    assert all(0.0 <= v <= 1.0 for v in values.values())
    assert all(values[a] <= values[b] for a, b in zip(ks, ks[1:]))


@st.composite
def queries(draw):
    """Rankings over distinct keys with random (possibly tied) scores, sorted best first."""
    n_keys = draw(st.integers(min_value=1, max_value=12))
    out = []
    for _ in range(draw(st.integers(min_value=1, max_value=8))):
        scores = draw(st.lists(st.sampled_from([0.1, 0.2, 0.5, 0.7, 0.9]), min_size=n_keys, max_size=n_keys))
        keys = [f"k{i}" for i in range(n_keys)]
        ranked = sorted(zip(keys, scores), key=lambda p: -p[1])
        rel = set(draw(st.lists(st.sampled_from(keys), min_size=1, max_size=3)))
        out.append((ranked, rel))
    return out


@settings(max_examples=200, deadline=None)
@given(queries())
def test_relevant_first_with_the_top_score_gives_recall_one(qs):
    ranks = []
    for ranked, rel in qs:
        target = sorted(rel)[0]
        others = [(k, s) for k, s in ranked if k != target]
        top = max(s for _, s in ranked) + 0.05  # strictly above everything else
        ranks.append(relevant_rank([(target, top), *others], rel))
    assert recall_at_k(ranks, [1, 5]) == {1: 1.0, 5: 1.0}


@settings(max_examples=200, deadline=None)
@given(queries())
def test_pessimistic_never_beats_the_backend_order(qs):
    for ranked, rel in qs:
        pess, order = relevant_rank(ranked, rel), relevant_rank(ranked, rel, ties="order")
        assert order is not None and pess is not None and pess >= order
        if len({s for _, s in ranked}) == len(ranked):  # no ties: both rules agree
            assert pess == order


def test_a_shuffled_ranking_scores_lower_than_the_true_one():
    # 200 queries over 50 clustered items: the true nearest item is the relevant one.
    rng = np.random.default_rng(7)
    items = rng.normal(size=(50, 16))
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    truth = rng.integers(0, 50, size=200)
    qs = items[truth] + 0.05 * rng.normal(size=(200, 16))
    scores = qs @ items.T
    ranks_true, ranks_shuffled = [], []
    shuffle = random.Random(3)
    for q in range(200):
        order = np.argsort(-scores[q])[:11]
        ranked = [(str(i), float(scores[q, i])) for i in order]
        ranks_true.append(relevant_rank(ranked, {str(truth[q])}, ties="order"))
        broken = ranked[:]
        shuffle.shuffle(broken)
        ranks_shuffled.append(relevant_rank(broken, {str(truth[q])}, ties="order"))
    good, bad = recall_at_k(ranks_true, [1, 5]), recall_at_k(ranks_shuffled, [1, 5])
    assert good[1] == 1.0
    assert bad[1] < 0.5 and bad[5] < good[5]


# -- references and the report ------------------------------------------------------------------
def test_reference_figures_are_the_published_ones():
    by = {(r.dataset, r.group, r.model_id): r.values for r in REFERENCES}
    openai = "openai/clip-vit-base-patch32"
    assert by[("flickr30k", "text_to_image", openai)] == {"R@1": 0.588, "R@5": 0.836, "R@10": 0.900}
    assert by[("coco", "text_to_image", openai)] == {"R@1": 0.304, "R@5": 0.559, "R@10": 0.669}
    assert by[("cifar100", "zero_shot", openai)] == {"top-1": 0.5515, "top-5": 0.8134}
    assert by[("flickr30k", "text_to_image", "laion/CLIP-ViT-B-32-laion2B-s34B-b79K")] == {"R@1": 0.668}
    assert by[("xm3600", "text_to_image[en]", "google/siglip2-base-patch16-224")] == {"mean": 0.752}
    assert all(r.source.startswith(("open_clip", "rclip", "Immich")) and ("github.com" in r.source or
                                                                          "immich.app" in r.source) for r in REFERENCES)


def test_references_follow_the_measured_checkpoint():
    laion = references_for("flickr30k", "laion/CLIP-ViT-B-32-laion2B-s34B-b79K")
    assert [(r.group, r.values) for r in laion] == [("text_to_image", {"R@1": 0.668})]
    fallback = references_for("flickr30k", "clipsearch/random-siglip2-b16-seed0")  # no figures: OpenAI's
    assert {r.model_id for r in fallback} == {"openai/clip-vit-base-patch32"} and len(fallback) == 2
    assert {r.model for r in references_for("crossmodal-3600", "google/siglip-base-patch16-224")} == {"SigLIP ViT-B/16"}


@pytest.mark.parametrize("name,family", [
    ("dataset_flickr30k", "flickr30k"), ("Flickr30K", "flickr30k"), ("coco", "coco"), ("MS-COCO", "coco"),
    ("cifar-100", "cifar100"), ("CIFAR100", "cifar100"), ("imagenet", None), ("cifar", None),
    ("xm3600", "xm3600"), ("Crossmodal-3600", "xm3600"),
])
def test_dataset_family(name, family):
    assert dataset_family(name) == family
    assert all(r.dataset == family for r in references_for(name))


def test_report_json_and_table(tmp_path):
    report = build_report(
        task="retrieval", dataset={"name": "flickr30k", "split": "test", "layout": "karpathy-json", "limit": None},
        index_info={"backend": "faiss", "index_type": "flat", "params": {}, "count": 3},
        model_id="openai/clip-vit-base-patch32", encoder="torch", counts={"skipped": {"missing image file": 2}},
        metrics={"text_to_image": {"R@1": 0.5, "R@5": float("nan")}}, ties="pessimistic", ks=[1, 5],
        timings={}, ingest={})
    table = format_table(report)
    assert "text->image R@1" in table and "50.00" in table and "58.80 [1]" in table
    assert "skipped 2 (missing image file 2)" in table and "open_clip" in table
    assert "note:" not in table  # same model, test split, no limit: nothing to warn about
    out = tmp_path / "sub" / "r.json"
    write_report(report, out)
    import json

    data = json.loads(out.read_text())
    assert data["metrics"]["text_to_image"] == {"R@1": 0.5, "R@5": None}  # NaN written as null
    assert data["reference"][0]["values"]["R@1"] == 0.588
