"""Rule-based rewards: the official ChartQA metric pinned case by case, and where the lenient one differs."""

from __future__ import annotations

import pytest

from vlrl.answer import extract_answer, has_final_answer
from vlrl.builtin.tasks.rewards import (
    chartqa_lenient,
    chartqa_relaxed,
    chartqa_relaxed_list,
    exact_match,
    format_reward,
    lenient_correctness,
    multi_answer,
    normalize,
    relaxed_correctness,
    relaxed_list_correctness,
)
from vlrl.registry import resolve

# (prediction, target, official, lenient): written from the definition, not from the code
CASES = [
    ("62", "62", True, True),
    ("62%", "62", False, True),  # official: 62% is 0.62
    ("0.62", "62%", True, True),  # official: 62% is 0.62
    ("62", "62%", False, True),
    ("64", "62", True, True),  # 3.2% off
    ("66", "62", False, False),  # 6.5% off
    ("1,470", "1470", False, True),  # official: a comma makes it a string
    ("1470", "1,470", False, True),
    ("1,470", "1,470", True, True),  # ... and equal strings match
    ("0", "0", True, True),  # zero target: strings must match
    ("0.0", "0", False, True),
    ("0.01", "0", False, False),
    ("2019", "2019", True, True),  # years are numbers
    ("2018", "2019", True, True),  # ... so a year off by one is within 5%
    ("1900", "2019", False, False),
    ("-5", "-5.1", True, True),  # negative numbers, relative to |target|
    ("5", "-5", False, False),
    ("YES", "Yes", True, True),  # case
    ("Yes.", "Yes", False, True),  # trailing period
    (" 62", "62", True, True),  # float() ignores spaces
    (" Yes", "Yes", False, True),  # strings are not stripped officially
    ("about 62 percent", "62", False, True),  # a number inside a short answer
    ("$5.2", "5.2", False, True),
    ("62%%", "0.62", True, True),  # every trailing % is stripped
    ("nan", "nan", False, True),  # official: float('nan') never matches; lenient: equal text
    ("South Korea", "south korea", True, True),
    ("Korea", "South Korea", False, False),
]


@pytest.mark.parametrize("prediction, target, official, lenient", CASES)
def test_relaxed_is_the_official_metric_and_lenient_differs_only_where_documented(prediction, target, official,
                                                                                   lenient):
    assert relaxed_correctness(prediction, target) is official
    assert lenient_correctness(prediction, target) is lenient
    assert not (official and not lenient)  # lenient accepts all the official metric accepts


def test_best_over_accepted_answers_and_parts():
    score = chartqa_relaxed("THOUGHT: looked.\nFINAL ANSWER: 41", ["40", "forty"])
    assert score.total == 1.0 and score.parts == {"accuracy": 1.0, "format": 1.0}
    score = chartqa_relaxed("41", ["30", "forty"])
    assert score.total == 0.0 and score.parts == {"accuracy": 0.0, "format": 0.0}
    assert chartqa_lenient("The answer is \\boxed{62\\%}", ["62"]).total == 1.0  # LaTeX percent: 62 or 0.62
    assert chartqa_relaxed("The answer is \\boxed{62\\%}", ["62"]).total == 0.0
    with pytest.raises(ValueError, match="at least one accepted answer"):
        chartqa_relaxed("1", [])


def test_extraction_is_separate_from_comparison():
    assert extract_answer("x\nFINAL ANSWER: 3\nFinal Answer:  7 ") == "7"
    assert extract_answer("so \\boxed{\\frac{1}{2}} and \\boxed{a{b}c}") == "a{b}c"
    assert extract_answer("reasoning\n\n  Paris  \n") == "Paris"
    assert extract_answer(" Yes") == " Yes"  # a bare one-line prediction is left as given
    assert extract_answer("\\boxed{unclosed") == "\\boxed{unclosed"
    assert has_final_answer("FINAL ANSWER: 2") and has_final_answer("\\boxed{2}")
    assert not has_final_answer("FINAL ANSWER:   \n") and not has_final_answer("2")
    # VTool-R1 closes its answer with TERMINATE (the period before it ends the sentence)
    assert extract_answer("THOUGHT 1: done.\nFINAL ANSWER: 3. TERMINATE") == "3"
    assert extract_answer("FINAL ANSWER: a || b TERMINATE") == "a || b"
    assert extract_answer("FINAL ANSWER: Terminated") == "Terminated"  # a word, not the marker


def test_vtool_answers_score_under_the_relaxed_and_the_list_rewards():
    assert chartqa_relaxed("FINAL ANSWER: 3. TERMINATE", ["3"]).total == 1.0
    assert chartqa_relaxed("FINAL ANSWER: Yes. TERMINATE", ["Yes"]).total == 1.0
    assert multi_answer("FINAL ANSWER: a || b TERMINATE", ["b||a"]).total == 1.0
    assert chartqa_relaxed_list("FINAL ANSWER: 12 || 61 TERMINATE", ["60||12"]).total == 1.0  # 1.6% off
    assert chartqa_relaxed_list("FINAL ANSWER: 12 TERMINATE", ["60||12"]).total == 0.0
    # one item: exactly the official metric, the prediction unsplit
    for prediction, target, official, _ in CASES:
        assert relaxed_list_correctness(prediction, target) == official, (prediction, target)


def test_exact_multi_and_format():
    assert exact_match("FINAL ANSWER:  new   york.", ["New York"]).total == 1.0
    assert exact_match("FINAL ANSWER: 62.0", ["62"]).total == 0.0
    assert multi_answer("FINAL ANSWER: [South Korea, Thailand]", ["Thailand||South Korea"]).total == 1.0
    assert multi_answer("FINAL ANSWER: 1,470 and 12%", ["12||1470"]).total == 1.0
    assert multi_answer("FINAL ANSWER: Thailand", ["Thailand||South Korea"]).total == 0.0
    assert multi_answer("FINAL ANSWER: Thailand; Thailand", ["Thailand||South Korea"]).total == 0.0
    assert format_reward("FINAL ANSWER: x", ["y"]).total == 1.0 and format_reward("x", ["x"]).total == 0.0


def test_normalize_reads_short_answers_only():
    assert normalize("About 1,234.5 Million.") == normalize("about 1234.5 million")
    assert normalize("About 1,234.5 Million.").number == 1234.5
    assert normalize("the value in 2019 was 12 and in 2020 was 14").number is None


@pytest.mark.parametrize("name", ["chartqa_relaxed", "chartqa_lenient", "exact_match", "multi_answer",
                                  "chartqa_relaxed_list", "format"])
def test_rewards_are_found_by_name(name):
    assert resolve("reward", name)("FINAL ANSWER: 5", ["5"]).total == 1.0
