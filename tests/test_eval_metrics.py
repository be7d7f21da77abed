"""The evaluation's metrics against hand-computed values and brute-force enumeration."""

import itertools
import math
import random
from collections import Counter

import pytest

from vlrl.builtin.tasks.rewards import exact_correctness, lenient_correctness
from vlrl.eval.metrics import (
    accuracy_at,
    auroc,
    best_of_k,
    cluster_answers,
    default_ks,
    expected_calibration_error,
    maj_at_k,
    majority_vote,
    pass_at_k,
    roc_curve,
    subsets,
    weighted_maj_at_k,
)


def test_pass_at_k_matches_the_formula_by_hand_and_brute_force_over_subsets():
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 1 - C(3,2)/C(5,2)
    assert pass_at_k(4, 0, 4) == 0.0 and pass_at_k(4, 1, 4) == 1.0 and pass_at_k(6, 5, 2) == 1.0
    for n in range(1, 8):
        for c in range(n + 1):
            samples = [1] * c + [0] * (n - c)
            for k in range(1, n + 1):
                hits = [any(samples[i] for i in s) for s in itertools.combinations(range(n), k)]
                assert pass_at_k(n, c, k) == pytest.approx(sum(hits) / len(hits)), (n, c, k)


def test_maj_at_k_with_ties_goes_to_the_answer_drawn_first():
    answers = ["A", "B", "A", "B"]
    clusters = cluster_answers(answers, exact_correctness)
    assert clusters == [0, 1, 0, 1]
    correct = [1, 0, 1, 0]
    # k=2 subsets: (0,1) tie->A, (0,2) A, (0,3) tie->A, (1,2) tie->B, (1,3) B, (2,3) tie->A
    assert maj_at_k(correct, clusters, 2) == pytest.approx(4 / 6)
    assert maj_at_k(correct, clusters, 4) == 1.0  # 2 - 2, A drawn first
    assert maj_at_k(correct, clusters, 1) == pytest.approx(0.5)  # = mean accuracy
    assert majority_vote((1, 2, 3), clusters) == 1  # B has two votes, reported as its first member


def test_maj_at_k_counts_a_subset_without_answers_as_wrong_and_no_answer_never_votes():
    answers = [None, None, "7", "8", "8"]
    clusters = cluster_answers(answers, exact_correctness)
    assert clusters == [-1, -1, 2, 3, 3]
    correct = [0, 0, 1, 0, 0]
    assert majority_vote((0, 1), clusters) is None
    by_hand = []
    for s in itertools.combinations(range(5), 2):
        votes = Counter(answers[i] for i in s if answers[i] is not None)
        if not votes:
            by_hand.append(0)
            continue
        top = max(votes.values())
        winner = next(answers[i] for i in s if answers[i] is not None and votes[answers[i]] == top)
        by_hand.append(winner == "7")
    assert maj_at_k(correct, clusters, 2) == pytest.approx(sum(by_hand) / len(by_hand))
    assert maj_at_k(correct, clusters, 3) == pytest.approx(
        sum(majority_vote(s, clusters) == 2 for s in itertools.combinations(range(5), 3)) / 10)


def test_answers_vote_together_exactly_when_the_reward_calls_them_the_same():
    answers = ["62", "62%", "about 62", "B", None, "b"]
    assert cluster_answers(answers, lenient_correctness) == [0, 0, 0, 3, -1, 3]
    assert cluster_answers(answers, exact_correctness) == [0, 1, 2, 3, -1, 3]


def test_best_of_k_and_weighted_majority_by_hand():
    correct = [0, 1, 1, 0]
    scores = [0.9, 0.2, 0.5, 0.5]
    # (0,1)->0 (0,2)->0 (0,3)->0 (1,2)->2 (1,3)->3 (2,3)->tie, 2 drawn first
    assert best_of_k(correct, scores, 2) == pytest.approx(2 / 6)
    assert best_of_k(correct, scores, 4) == 0.0
    assert best_of_k(correct, scores, 1) == pytest.approx(0.5)
    clusters = [0, 1, 1, 3]  # samples 1 and 2 agree
    # all four: cluster 0 weighs 0.9, cluster 1 weighs 0.7, cluster 3 weighs 0.5 -> sample 0, wrong
    assert weighted_maj_at_k(correct, clusters, scores, 4) == 0.0
    assert maj_at_k(correct, clusters, 4) == 1.0  # unweighted, cluster 1 has two votes
    # k=3: (0,1,2) 0.9 vs 0.7 -> 0; (0,1,3) -> 0; (0,2,3) -> 0; (1,2,3) 0.7 vs 0.5 -> 1
    assert weighted_maj_at_k(correct, clusters, scores, 3) == pytest.approx(1 / 4)


def test_many_subsets_are_sampled_and_estimate_the_exact_value():
    rng = random.Random(3)
    n, k = 16, 6
    answers = [rng.choice("ABC") for _ in range(n)]
    correct = [float(a == "A") for a in answers]
    clusters = cluster_answers(answers, exact_correctness)
    exact = maj_at_k(correct, clusters, k, max_subsets=math.comb(n, k))
    drawn = subsets(n, k, 2000, seed=1)
    assert len(drawn) == 2000 and all(len(set(s)) == k and list(s) == sorted(s) for s in drawn)
    assert maj_at_k(correct, clusters, k, max_subsets=2000, seed=1) == pytest.approx(exact, abs=0.03)
    assert subsets(n, k, 2000, seed=1) == drawn  # seeded


def test_auroc_equals_the_direct_pairwise_count():
    rng = random.Random(0)
    for _ in range(20):
        labels = [rng.random() < 0.4 for _ in range(30)]
        scores = [round(rng.random(), 1) for _ in range(30)]  # many ties
        pos = [s for s, y in zip(scores, labels) if y]
        neg = [s for s, y in zip(scores, labels) if not y]
        if not pos or not neg:
            continue
        direct = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg) / (len(pos) * len(neg))
        assert auroc(scores, labels) == pytest.approx(direct)
    assert auroc([0.1, 0.9], [1, 1]) is None
    assert auroc([0.9, 0.1, 0.8], [1, 0, 1]) == 1.0


def test_roc_curve_ends_at_one_and_its_area_is_the_auroc():
    scores = [0.9, 0.8, 0.8, 0.3, 0.2, 0.2]
    labels = [1, 0, 1, 1, 0, 0]
    fpr, tpr = roc_curve(scores, labels)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    area = sum((fpr[i + 1] - fpr[i]) * (tpr[i + 1] + tpr[i]) / 2 for i in range(len(fpr) - 1))
    assert area == pytest.approx(auroc(scores, labels))


def test_verifier_accuracy_and_calibration_by_hand():
    scores = [0.1, 0.15, 0.9, 0.95]
    labels = [0, 1, 1, 1]
    assert accuracy_at(scores, labels) == 0.75
    # bin [0.1, 0.2): mean 0.125, accuracy 0.5; bin [0.9, 1]: mean 0.925, accuracy 1
    assert expected_calibration_error(scores, labels) == pytest.approx((2 * 0.375 + 2 * 0.075) / 4)
    assert expected_calibration_error([1.0, 1.0], [1, 1]) == 0.0
    assert accuracy_at([], []) is None


def test_k_larger_than_n_and_bad_counts_are_refused():
    with pytest.raises(ValueError, match="k = 8 needs at least k samples per question, got N = 4"):
        maj_at_k([1, 0, 0, 1], [0, 1, 2, 0], 8)
    with pytest.raises(ValueError, match="c must be in"):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError, match="k must be >= 1"):
        pass_at_k(4, 1, 0)


def test_default_ks_double_up_to_n():
    assert default_ks(8) == [1, 2, 4, 8]
    assert default_ks(6) == [1, 2, 4, 6]
    assert default_ks(1) == [1]
