"""Every held-out metric against values worked out by hand, and the recipe field that picks them."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import SMOKE

from unimodal.config import Recipe, RecipeError
from unimodal.objectives.metrics import accuracy, bleu, edit_distance, exact_match, recall_at_k, word_error_rate
from unimodal.recipe import load_recipe


def test_exact_match_ignores_spacing_only():
    predictions = ["seven ", "one  two", "Three", "4"]
    references = ["seven", "one two", "three", "four"]
    assert exact_match(predictions, references) == 2 / 4  # case and spelling count


def test_accuracy_of_ids_and_of_booleans():
    assert accuracy(torch.tensor([5, 2, 9, 4]), torch.tensor([5, 2, 0, 4])) == 3 / 4
    assert accuracy(torch.tensor([True, False, False]), torch.tensor([True, True, False])) == 2 / 3


def test_edit_distance_counts_each_kind_of_edit():
    ref = ["the", "cat", "sat"]
    assert edit_distance(["the", "cat", "sat"], ref) == 0
    assert edit_distance(["the", "cat", "sat", "down"], ref) == 1  # insertion
    assert edit_distance(["the", "dog", "sat"], ref) == 1  # substitution
    assert edit_distance(["the", "sat"], ref) == 1  # deletion
    assert edit_distance(["sat", "the", "cat"], ref) == 2  # a move is a deletion and an insertion
    assert edit_distance([], ref) == 3 and edit_distance(["a", "b"], []) == 2
    assert edit_distance("kitten", "sitting") == 3  # the textbook case, on characters


def test_word_error_rate_sums_edits_and_words_over_the_set():
    assert word_error_rate(["the cat sat down"], ["the cat sat"]) == pytest.approx(1 / 3)
    assert word_error_rate(["the dog sat"], ["the cat sat"]) == pytest.approx(1 / 3)
    assert word_error_rate(["the sat"], ["the cat sat"]) == pytest.approx(1 / 3)
    # corpus level: (1 + 3) edits over (3 + 1) words, not the mean of 1/3 and 3/1
    assert word_error_rate(["the cat sat down", "a b c"], ["the cat sat", "x"]) == pytest.approx(4 / 4)
    assert word_error_rate(["one two three four"], ["one"]) == 3.0  # insertions take it above 1
    with pytest.raises(ValueError, match="empty"):
        word_error_rate([""], [""])


def test_bleu_matches_the_formula_by_hand():
    # one sentence, same length: n-gram precisions 4/5, 3/4, 2/3, 1/2; no brevity penalty
    assert bleu(["a b c d e"], ["a b c d f"]) == pytest.approx(100 * (4 / 5 * 3 / 4 * 2 / 3 * 1 / 2) ** 0.25, abs=1e-6)
    # every n-gram right but 4 words for 6: brevity penalty exp(1 - 6/4)
    assert bleu(["a b c d"], ["a b c d e f"]) == pytest.approx(100 * math.exp(1 - 6 / 4), abs=1e-6)
    # the corpus: counts and lengths summed before dividing (8/9, 6/7, 4/5, 2/3; 9 words for 11)
    both = bleu(["a b c d e", "a b c d"], ["a b c d f", "a b c d e f"])
    assert both == pytest.approx(100 * (8 / 9 * 6 / 7 * 4 / 5 * 2 / 3) ** 0.25 * math.exp(1 - 11 / 9), abs=1e-6)
    assert bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(100)


def test_recall_at_k_on_a_small_similarity_matrix():
    sim = torch.tensor(
        [
            [0.9, 0.1, 0.5],  # true pair first
            [0.8, 0.2, 0.3],  # true pair third: 0.8 and 0.3 above it
            [0.1, 0.7, 0.6],  # true pair second: 0.7 above it
        ]
    )
    assert [recall_at_k(sim, k) for k in (1, 2, 3)] == pytest.approx([1 / 3, 2 / 3, 1])
    assert recall_at_k(sim.T, 1) == pytest.approx(2 / 3)  # the other direction: columns as queries
    assert recall_at_k(torch.ones(4, 4), 1) == 1.0  # ties count for the true pair


def test_metrics_refuse_an_empty_set():
    for metric in (exact_match, word_error_rate, bleu):
        with pytest.raises(ValueError, match="empty eval set"):
            metric([], [])
    with pytest.raises(ValueError, match="empty eval set"):
        accuracy(torch.zeros(0), torch.zeros(0))


def sets(*fields: str) -> list[str]:
    return [f"data.datasets.0.{f}" for f in fields]


def test_metrics_default_per_objective_and_reload_from_the_saved_recipe():
    def metrics(*fields: str) -> list[str]:
        return load_recipe(SMOKE / "stage1.yaml", sets(*fields), check_files=False).data.datasets[0].metrics

    assert metrics() == ["exact_match"]
    assert metrics("metrics=[wer, bleu, exact_match]") == ["wer", "bleu", "exact_match"]
    assert metrics("objective=mlm", "target=null", "inputs={text: txt}") == ["accuracy"]
    assert metrics("objective=itm", "target=null", "inputs={image: png, text: txt}") == ["accuracy"]
    assert metrics("objective=contrastive", "target=null", "inputs={image: png, text: txt}") == ["recall@1"]
    assert metrics(
        "objective=contrastive", "target=null", "inputs={image: png, text: txt}", "metrics=[recall@1, recall@10]"
    ) == ["recall@1", "recall@10"]
    assert metrics("objective=mim", "target=null") == []
    recipe = load_recipe(SMOKE / "stage1.yaml", sets("metrics=[bleu]"), check_files=False)
    assert Recipe.model_validate(recipe.model_dump(mode="json")) == recipe  # what recipe.yaml holds loads again


def test_a_metric_the_objective_cannot_report_is_named():
    cases = [
        (["metrics=[recall@5]"], "metrics: recall@5 not for objective seq2seq (it takes exact_match, wer, bleu)"),
        (
            ["objective=contrastive", "target=null", "inputs={image: png, text: txt}", "metrics=[bleu]"],
            "metrics: bleu not for objective contrastive (it takes recall@K)",
        ),
        (
            ["objective=mim", "target=null", "metrics=[accuracy]"],
            "metrics: accuracy not for objective mim (it takes none)",
        ),
        (["metrics=[wer, wer]"], "names one twice"),
        (["metrics=[rouge]"], "data.datasets.0.metrics.0"),
        (["metrics=[recall@0]"], "data.datasets.0.metrics.0"),
    ]
    for fields, words in cases:
        with pytest.raises(RecipeError, match=r"data.datasets.0") as err:
            load_recipe(SMOKE / "stage1.yaml", sets(*fields), check_files=False)
        assert words in str(err.value), (fields, str(err.value))
