"""Generative verification: the verdict parser on hand-written checks, the request it makes, its figures by hand."""

from __future__ import annotations

import pytest

from scripted_engine import ScriptedEngine
from vlrl.config import EvalConfig, JudgeConfig, load_config
from vlrl.eval.report import build_report
from vlrl.eval.written import WrittenVerifier, parse_verdict, prompt_text
from vlrl.types import SamplingParams

YES, NO = ["yes", "right", "correct"], ["no", "wrong", "incorrect"]


def verdict(text: str) -> str:
    return parse_verdict(text, "VERDICT:", YES, NO)


def test_the_verdict_is_the_word_after_the_last_marker():
    assert verdict("The tallest bar is B, as answered. VERDICT: yes") == "yes"
    assert verdict("B is shorter than C.\nverdict: **Wrong**.") == "no"  # any case, punctuation around it
    assert verdict("VERDICT: no ... looking again, B is taller. VERDICT: Correct") == "yes"  # both: the last
    assert verdict("VERDICT: yes, then VERDICT: no") == "no"
    assert verdict("I think the answer is right.") == "none"  # neither: no marker
    assert verdict("VERDICT: maybe") == "none"  # a marker with neither word
    assert verdict("VERDICT:") == "none"


def test_the_prompt_file_is_rendered_and_a_bad_one_is_named(tmp_path):
    text = prompt_text("", "VERDICT:", YES, NO)
    assert '"VERDICT: yes" if it is right' in text and '"VERDICT: no" if it is wrong' in text
    own = tmp_path / "mine.jinja"
    own.write_text("Right? Say {{ marker }} {{ yes | join('/') }} or {{ marker }} {{ no[0] }}.")
    assert prompt_text(str(own), "V:", ["y", "yy"], ["n"]) == "Right? Say V: y/yy or V: n."
    with pytest.raises(ValueError, match="is not a file"):
        prompt_text(str(tmp_path / "missing.jinja"), "V:", YES, NO)
    own.write_text("{{ nothing_here }}")
    with pytest.raises(ValueError, match="mine.jinja"):
        prompt_text(str(own), "V:", YES, NO)
    for bad in (["judge.generate_yes=[yes]", "judge.generate_no=[Yes]"], ["judge.generate=[self, self]"],
                ["judge.generate_marker= "]):
        with pytest.raises(Exception, match="judge"):
            load_config(EvalConfig, None, bad)


def test_a_written_check_follows_the_trajectory_and_its_tokens_are_counted(run, tokenizer):
    replies = {"t1/selfgen": "B is the tallest. VERDICT: yes", "t2/selfgen": "hmm", "t3/selfgen": "VERDICT: wrong"}
    ids = {key: tokenizer.encode(text, add_special_tokens=False) for key, text in replies.items()}
    prompts = {}

    class Recording(ScriptedEngine):
        async def generate(self, prompt_ids, images, sampling, request_id):
            prompts[request_id] = (list(prompt_ids), sampling)
            async for delta in super().generate(prompt_ids, images, sampling, request_id):
                yield delta

    engine = Recording(lambda _: 1, tokenizer.eos_token_id, tokens_of=lambda rid: ids[rid])
    writer = WrittenVerifier(engine, tokenizer, "Check it. End with VERDICT: yes or VERDICT: no.",
                             SamplingParams(max_tokens=64, temperature=0.7), "VERDICT:", YES, NO)
    trajectory = tokenizer.encode("<|im_start|>assistant\nFINAL ANSWER: B<|im_end|>", add_special_tokens=False)
    got = {key: run(writer.verify(key, trajectory, [])) for key in replies}
    assert {k: (w.verdict, w.score) for k, w in got.items()} == {
        "t1/selfgen": ("yes", 1.0), "t2/selfgen": ("none", 0.5), "t3/selfgen": ("no", 0.0)}
    assert got["t1/selfgen"].tokens == len(ids["t1/selfgen"]) + 1  # what it wrote, its end-of-turn included
    prompt, sampling = prompts["t1/selfgen"]
    assert prompt[:len(trajectory)] == trajectory and "Check it." in tokenizer.decode(prompt[len(trajectory):])
    assert sampling.temperature == 0.7 and sampling.seed is not None and sampling.seed != prompts["t2/selfgen"][1].seed


def test_written_verdicts_select_and_are_counted_in_the_report():
    def sample(right, verdict, score):
        return {"answer": "A" if right else "B", "correct": float(right), "tool_calls": 0, "tool_errors": 0,
                "cluster": 0 if right else 1, "scores": {"self": 0.5, "selfgen": score},
                "written": {"selfgen": {"verdict": verdict, "tokens": 10}}}

    q0 = [sample(False, "yes", 1.0), sample(True, "none", 0.5)]  # the written check picks the wrong one
    q1 = [sample(False, "no", 0.0), sample(True, "yes", 1.0)]
    q2 = [sample(False, "none", 0.5), {"answer": "B", "correct": 0.0, "tool_calls": 0, "tool_errors": 0,
                                        "cluster": 1, "scores": {"self": 0.5},
                                        "written": {"selfgen": {"verdict": "error", "tokens": 0}}}]
    records = [{"index": i, "id": f"q{i}", "samples": s} for i, s in enumerate([q0, q1, q2])]
    report = build_report(records, EvalConfig(samples=2, bootstrap=50), seconds=1.0)
    f = {name: fig["value"] for name, fig in report["figures"].items()}
    assert "selfgen" in report["judges"] and f["bestof@2_selfgen"] == pytest.approx(1 / 3)  # q1 only
    # right answers scored 0.5 and 1, wrong ones 1, 0 and 0.5: of the 6 pairs, right above wrong in 3, ties in 2
    assert f["verifier_auroc_gen"] == pytest.approx((3 + 2 * 0.5) / 6)
    assert report["written"] == {"selfgen": {"yes": 2, "no": 1, "none": 2, "error": 1, "tokens": 50}}
    assert JudgeConfig(generate=["self"]).generate == ["self"]
