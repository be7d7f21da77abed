"""`vlrl eval`: the report's figures by hand, the no-image verifier input, and end to end on a taught tiny model."""

from __future__ import annotations

import asyncio
import json
import math
import textwrap

import pytest

from test_cli import ROOT, vlrl
from vlrl.builtin.tasks.rewards import chartqa_lenient
from vlrl.config import EvalConfig, load_config
from vlrl.eval.report import build_report, write_report
from vlrl.eval.run import ablated, outcome, revision
from vlrl.types import Sample, Segment, Trajectory
from vlrl.vision import chat_prompt_ids

QUICK = ROOT / "configs" / "eval_quick.yaml"


def _sample(answer, **extra):
    return {"answer": answer, "correct": float(answer == "A"), "tool_calls": 0, "tool_errors": 0, "cluster": 0,
            "scores": {"self": 0.5}} | extra


def test_the_report_figures_by_hand(tmp_path):
    q0 = [_sample("A", tool_calls=2, tool_errors=1, scores={"self": 0.9, "self_noimage": 0.4},
                  tool_revision={"changed": True, "before": 0.0, "after": 1.0},
                  second_look={"changed": True, "before": 1.0, "after": 0.0, "answer": "B"}),
          _sample("B", cluster=1, tool_calls=1, scores={"self": 0.2, "self_noimage": 0.6},
                  second_look={"changed": False, "before": 0.0, "after": 0.0, "answer": None})]
    q1 = [_sample("B", scores={"self": 0.7, "self_noimage": 0.3}, second_look={"error": "context full"}),
          _sample("B", scores={"self": 0.1, "self_noimage": 0.8},
                  tool_revision={"changed": False, "before": 0.0, "after": 0.0},
                  second_look={"changed": True, "before": 0.0, "after": 1.0, "answer": "A"})]
    q2 = [{"answer": None, "correct": 0.0, "dropped": "error: RuntimeError", "cluster": -1}] * 2
    records = [{"index": i, "samples": s, "greedy": {"correct": float(i == 0)}, "wall_share_s": 10.0 * (i + 1),
                "dropped": {"error: RuntimeError": 2} if i == 2 else {}} for i, s in enumerate([q0, q1, q2])]
    cfg = EvalConfig(samples=2, bootstrap=200)
    report = build_report(records, cfg, seconds=30.0)
    f = {name: fig["value"] for name, fig in report["figures"].items()}
    assert report["ks"] == [1, 2] and report["judges"] == ["self", "self_noimage"]
    assert f["greedy_accuracy"] == pytest.approx(1 / 3)
    assert f["mean_accuracy"] == pytest.approx(1 / 6)  # one right sample of six; the dropped ones count wrong
    assert f["pass@2"] == pytest.approx(1 / 3) and f["pass@1"] == pytest.approx(1 / 6)
    assert f["maj@2"] == pytest.approx(1 / 3)  # q0: A and B tie, A was drawn first
    assert f["bestof@2_self"] == pytest.approx(1 / 3)  # q0: 0.9 picks A
    assert f["bestof@2_self_noimage"] == 0.0  # q0: 0.6 picks B
    assert f["tool_call_rate"] == pytest.approx(2 / 4)  # dropped samples have no tool figures
    assert f["tool_error_rate"] == pytest.approx(1 / 3)  # one failed call of three
    assert f["accuracy_with_tool"] == pytest.approx(1 / 2) and f["accuracy_without_tool"] == 0.0
    assert f["tool_revision_rate"] == pytest.approx(1 / 2) and f["tool_revision_fixed"] == pytest.approx(1 / 2)
    assert f["tool_revision_broken"] == 0.0
    assert f["second_look_changed"] == pytest.approx(2 / 3)  # the failed second look is counted apart
    assert f["second_look_fixed"] == pytest.approx(1 / 3) and f["second_look_broken"] == pytest.approx(1 / 3)
    assert f["second_look_accuracy"] == pytest.approx(1 / 3)
    assert report["counts"]["second_look_errors"] == 1 and report["counts"]["dropped"] == {"error: RuntimeError": 2}
    # the verifier on the four judged answers: right A (0.9), wrong B (0.2, 0.7, 0.1)
    assert f["verifier_auroc_image"] == 1.0 and f["verifier_accuracy_image"] == pytest.approx(3 / 4)
    assert f["verifier_auroc_noimage"] == pytest.approx(1 / 3)  # 0.4 beats only 0.3 of 0.6, 0.3, 0.8
    assert f["verifier_ece_image"] == pytest.approx((0.1 + 0.2 + 0.7 + 0.1) / 4)
    for fig in report["figures"].values():
        if fig["ci95"] is not None:
            assert fig["ci95"][0] <= fig["value"] + 1e-9 and fig["value"] - 1e-9 <= fig["ci95"][1]
    assert report["questions_per_minute"] == pytest.approx(3.0)  # three questions in 10 + 20 + 30 s
    write_report(tmp_path, report)
    md = (tmp_path / "report.md").read_text()
    assert "| 2 | 33.3 [" in md and "after a tool result" in md and "after a second look" in md
    assert json.loads((tmp_path / "report.json").read_text())["figures"]["maj@2"]["value"] == pytest.approx(1 / 3)
    assert (tmp_path / "accuracy_vs_k.png").stat().st_size > 5000 and (tmp_path / "roc.png").stat().st_size > 5000


def test_the_verifier_without_the_image_reads_every_token_but_the_images(tokenizer, vision):
    from PIL import Image

    image = Image.new("RGB", (64, 64), "white")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Which bar? B or C"}]}]
    ids = chat_prompt_ids(tokenizer, vision, messages, [image])
    stripped = vision.strip_images(ids)
    assert not set(stripped) & set(vision.vision_token_ids)
    assert len(ids) - len(stripped) == vision.token_count(image) + 2  # the pads, vision_start and vision_end
    assert tokenizer.decode(stripped) == tokenizer.decode(ids).replace(
        "<|vision_start|>" + "<|image_pad|>" * vision.token_count(image) + "<|vision_end|>", "")


def test_the_verifier_ablations_read_the_images_and_text_they_name(tokenizer, vision):
    from PIL import Image

    chart, zoomed = Image.new("RGB", (64, 64), "white"), Image.new("RGB", (56, 56), "red")
    prompt = chat_prompt_ids(tokenizer, vision, [{"role": "user", "content": [
        {"type": "image"}, {"type": "text", "text": "Which bar is tallest?"}]}], [chart])
    block = [vision.vision_start_id, *[vision.image_token_id] * vision.token_count(zoomed), vision.vision_end_id]

    def seg(kind, text, images=(), extra=()):
        ids = (*tokenizer.encode(text, add_special_tokens=False), *extra)
        return Segment(kind, ids, images, *(((0.0,) * len(ids), (0,) * len(ids)) if kind == "policy" else ()))

    traj = Trajectory("t", "s", [Segment("prompt", tuple(prompt), (chart,)),
                                 seg("policy", "<tool_call>{}</tool_call>"),
                                 seg("observation", "result:", (zoomed,), tuple(block)),
                                 seg("policy", "THOUGHT: B. FINAL ANSWER: B")])
    original, seen = ablated(traj, 1, "original", "B", vision, tokenizer)
    assert seen == [chart] and original == list(prompt) + [t for s in traj.segments[1:] for t in s.token_ids
                                                           if t not in block]
    edited, seen = ablated(traj, 1, "edited", "B", vision, tokenizer)
    assert seen == [zoomed] and block == [t for t in edited if t in set(block)]
    assert vision.strip_images(prompt) == edited[:len(vision.strip_images(prompt))]  # the chart gone, text kept
    bare, seen = ablated(traj, 1, "answer_only", "B", vision, tokenizer)
    assert seen == [chart] and tokenizer.decode(bare) == tokenizer.decode(prompt) + "FINAL ANSWER: B<|im_end|>"
    assert "THOUGHT" not in tokenizer.decode(bare)  # no reasoning
    with pytest.raises(Exception, match="ablations"):
        load_config(EvalConfig, None, ["judge.policy=false", "judge.ablations=[edited]"])


def test_an_answer_stated_before_a_tool_result_then_changed_is_a_revision(tokenizer):
    def policy(text):
        ids = tuple(tokenizer.encode(text, add_special_tokens=False))
        return Segment("policy", ids, logprobs=(0.0,) * len(ids), versions=(0,) * len(ids))

    traj = Trajectory("t", "s", [Segment("prompt", (1, 2)), policy("FINAL ANSWER: B\n<tool_call>{}</tool_call>"),
                                 Segment("observation", (3,)), policy("Looked again. FINAL ANSWER: C")],
                      reward=1.0, reward_parts={"accuracy": 1.0})
    traj.actions = []
    got = outcome(traj, tokenizer)
    assert got["answer"] == "C" and got["stated"] == ["B"] and got["turns"] == 2 and got["correct"] == 1.0
    sample = Sample("s", (), "?", ("C",))
    assert revision(chartqa_lenient, "B", "C", sample) == {"changed": True, "before": 0.0, "after": 1.0}
    assert revision(chartqa_lenient, "62", "62%", Sample("s", (), "?", ("62",)))["changed"] is False
    assert revision(chartqa_lenient, "C", None, sample) == {"changed": False, "before": 1.0, "after": 1.0}


def test_k_beyond_n_and_a_dataset_without_answers_are_refused_before_any_work(tmp_path, tiny_dir):
    bad = vlrl("eval", str(QUICK), f"model.path={tiny_dir}", "samples=4", "ks=[1,8]", check=False)
    assert bad.returncode == 2 and "k = 8 needs at least k samples per question, got samples (N) = 4" in bad.stderr
    task = tmp_path / "unlabelled.py"
    task.write_text(textwrap.dedent("""
        from PIL import Image
        from vlrl.types import Sample

        def questions(seed=0):
            for i in range(3):
                yield Sample(f"u{i}", (Image.new("RGB", (32, 32)),), "Which bar?", ())
        questions.reward = "exact_match"
    """))
    bad = vlrl("eval", str(QUICK), f"model.path={tiny_dir}", "judge.external=", f"task.name={task}:questions", "task.args={}",
               f"out={tmp_path / 'ev'}", check=False)
    assert bad.returncode == 2 and "question 'u0' has no answer to score against" in bad.stderr


def test_an_external_verifier_with_another_tokenizer_is_refused(tmp_path, tiny_dir, tokenizer):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(tiny_dir, other)
    tokenizer_copy = type(tokenizer).from_pretrained(tiny_dir)
    tokenizer_copy.add_tokens(["<|a-word-the-policy-lacks|>"])
    tokenizer_copy.save_pretrained(other)
    bad = vlrl("eval", str(QUICK), f"model.path={tiny_dir}", f"judge.external={other}", "questions=2",
               f"out={tmp_path / 'ev'}", check=False)
    assert bad.returncode == 2 and f"judge.external '{other}' has a different tokenizer" in bad.stderr


@pytest.fixture(scope="module")
def taught(tmp_path_factory):
    """A tiny model warm-started on the quickstart's teacher: right about half the time, with tool calls."""
    root = tmp_path_factory.mktemp("taught")
    vlrl("model", "tiny", "--out", str(root / "tiny"), "--max-pixels", "12544")
    vlrl("train", "configs/quickstart.yaml", f"model.path={root / 'tiny'}", f"log.dir={root / 'runs'}",
         "log.progress=false", "steps=1", "rollout.prompts_per_step=2", "warmstart.samples=64", "warmstart.steps=30",
         "warmstart.batch_size=16", "heldout.samples=0", "log.transcripts_every=0")
    return root / "runs" / "latest" / "checkpoints" / "last" / "model"


REQUIRED = ("pass@1", "pass@4", "maj@4", "bestof@4_self", "bestof@4_self_noimage", "bestof@4_external",
            "verifier_auroc_image", "verifier_auroc_noimage", "bestof@4_selfgen", "verifier_auroc_gen",
            "bestof@4_self_original", "bestof@4_self_edited", "bestof@4_self_answer_only", "verifier_auroc_edited",
            "revision_rate", "accuracy_with_revision",
            "accuracy_without_revision", "questions", "seconds")


@pytest.mark.slow
def test_eval_end_to_end_reports_every_figure_and_resumes(tmp_path, taught, tiny_dir):
    """The external verifier is the untrained tiny model with another image size: its image runs are re-expanded."""
    out = tmp_path / "ev"
    common = ["eval", str(QUICK), f"model.path={taught}", f"judge.external={tiny_dir}", "samples=4",
              f"out={out}", "batch_questions=3", "transcripts=2"]
    done = vlrl(*common, "questions=6", "--json")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(REQUIRED) <= set(figures) and figures["questions"] == 6
    for key in ("pass@1", "pass@2", "maj@2", "bestof@2_external", "wmaj@4_self", "verifier_auroc_external",
                "verifier_ece_noimage", "second_look_changed", "tool_call_rate", "greedy_accuracy"):
        assert figures[key] is not None and 0 <= figures[key] <= 1, key
    assert 0 < figures["mean_accuracy"] < 1  # right and wrong answers, so every verifier figure is defined
    assert figures["pass@1"] == pytest.approx(figures["mean_accuracy"])
    assert figures["pass@1"] <= figures["pass@2"] <= figures["pass@4"]
    assert figures["maj@4"] <= figures["pass@4"] and figures["bestof@4_self"] <= figures["pass@4"]
    lines = (out / "results.jsonl").read_text().splitlines()
    assert [json.loads(line)["index"] for line in lines] == list(range(6))
    assert all(len(json.loads(line)["samples"]) == 4 for line in lines)
    report = json.loads((out / "report.json").read_text())
    assert report["figures"]["maj@4"]["ci95"][0] <= figures["maj@4"] <= report["figures"]["maj@4"]["ci95"][1]
    assert {"accuracy_vs_k.png", "accuracy_vs_tokens.png", "roc.png", "report.md"} <= {p.name for p in out.iterdir()}
    compute = report["equal_compute"]  # every verifier's cost counted from what its engine did
    assert compute["generated_tokens"] > 0 and set(compute["verify_tokens"]) == {
        "self", "self_noimage", "external", "selfgen", "self_original", "self_edited", "self_answer_only"}
    assert all(tokens > 0 for tokens in compute["verify_tokens"].values())
    assert sum(report["written"]["selfgen"][v] for v in ("yes", "no", "none", "error")) == 6 * 4
    for kind in ("right", "wrong"):
        kept = list((out / "transcripts" / kind).iterdir())
        assert len(kept) == 2 and (kept[0] / "transcript.md").is_file() and list(kept[0].glob("image_*.png"))
    more = vlrl(*common, "questions=8", "--json")  # resumes: the first six are not run again
    assert "6 already in" in more.stdout
    again = (out / "results.jsonl").read_text().splitlines()
    assert again[:6] == lines and [json.loads(line)["index"] for line in again[6:]] == [6, 7]
    assert json.loads(more.stdout.strip().splitlines()[-1])["questions"] == 8
    other = vlrl(*common, "questions=8", "samples=2", check=False)  # other settings never mix into these results
    assert other.returncode == 2 and "samples" in other.stderr and "other settings" in other.stderr


@pytest.mark.slow
def test_eval_compare_end_to_end(tmp_path, taught, tiny_dir):
    out = tmp_path / "cmp"
    done = vlrl("eval", str(QUICK), f"judge.external={tiny_dir}", "judge.generate=[]", "judge.ablations=[]",
                "second_look=false", "questions=3", "samples=2", f"out={out}", "--compare", str(tiny_dir),
                str(taught), "--names", "untrained", "taught", "--json")
    values = json.loads(done.stdout.strip().splitlines()[-1])
    result = json.loads((out / "compare.json").read_text())
    assert result["models"] == ["untrained", "taught"] and result["questions"] == 3
    for name, folder in (("untrained", "0-untrained"), ("taught", "1-taught")):
        alone = json.loads((out / folder / "report.json").read_text())["figures"]
        assert values["maj@2"][name] == alone["maj@2"]["value"]  # each model's figure as its own report gives it
    assert (out / "compare.png").stat().st_size > 5000 and "untrained - " not in (out / "compare.md").read_text()
    assert "taught - untrained" in (out / "compare.md").read_text()


@pytest.mark.slow
def test_the_no_image_condition_sends_no_image_and_a_verifier_without_yes_no_stops_the_run(tmp_path, taught,
                                                                                          monkeypatch):
    from vlrl.engines.hf import HFEngine
    from vlrl.eval.run import evaluate
    from vlrl.types import NextTokenScores
    from vlrl.vision import VisionInputs

    monkeypatch.chdir(ROOT)
    seen: dict[str, tuple[list[int], int]] = {}
    score_next = HFEngine.score_next

    async def spy(self, key, prompt_ids, images, token_ids):
        seen[key] = (list(prompt_ids), len(images))
        return await score_next(self, key, prompt_ids, images, token_ids)

    monkeypatch.setattr(HFEngine, "score_next", spy)
    cfg = load_config(EvalConfig, QUICK, [f"model.path={taught}", "judge.external=", "questions=2", "samples=2",
                                          "second_look=false", f"out={tmp_path / 'a'}"])
    asyncio.run(evaluate(cfg))
    vision = VisionInputs(taught)
    noimage = {k: v for k, v in seen.items() if k.endswith("/self-noimage/verify")}  # the verifier's request keys
    image = {k: v for k, v in seen.items() if k.endswith("/self/verify")}
    assert len(noimage) == len(image) == 4
    for key, (ids, n_images) in noimage.items():
        assert n_images == 0 and not set(ids) & set(vision.vision_token_ids), key
        with_image, _ = image[key.replace("/self-noimage/", "/self/")]
        assert ids == vision.strip_images(with_image)  # the same text, only the image gone
    assert all(n >= 1 and vision.image_token_id in ids for ids, n in image.values())

    async def no_yes_no(self, key, prompt_ids, images, token_ids):
        return NextTokenScores((-math.inf,) * len(token_ids))

    monkeypatch.setattr(HFEngine, "score_next", no_yes_no)
    cfg.out = str(tmp_path / "b")
    with pytest.raises(ValueError, match=r"verifier: no Yes/No probability for trajectory 'q\d-0-\d/self"):
        asyncio.run(evaluate(cfg))
    assert not (tmp_path / "b" / "results.jsonl").exists()  # no question was recorded with a broken verdict


@pytest.mark.slow
@pytest.mark.vllm
def test_eval_on_the_vllm_engine(tmp_path, taught):
    done = vlrl("eval", str(QUICK), f"model.path={taught}", "engine.kind=vllm", "judge.external=", "questions=3",
                "samples=2", "second_look=false", f"out={tmp_path / 'ev'}", "--json")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["questions"] == 3 and 0 <= figures["bestof@2_self"] <= figures["pass@2"] <= 1
    assert figures["verifier_accuracy_image"] is not None and figures["verifier_accuracy_noimage"] is not None
    assert "Exception ignored" not in done.stderr  # the engine is shut down once, while the interpreter still runs


@pytest.mark.slow
def test_an_evaluation_killed_mid_run_resumes_without_losing_or_repeating_a_question(tmp_path, taught):
    import subprocess
    import sys
    import time

    out = tmp_path / "ev"
    args = [sys.executable, "-m", "vlrl.cli", "eval", str(QUICK), f"model.path={taught}", "judge.external=",
            "second_look=false", "questions=8", "samples=2", "batch_questions=2", f"out={out}"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = out / "results.jsonl"
    deadline = time.monotonic() + 300
    while not (results.is_file() and len(results.read_text().splitlines()) >= 2) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    kept = results.read_text().splitlines()
    assert 2 <= len(kept) < 8, "the kill came after the run ended: nothing was interrupted"
    with results.open("a") as f:  # and a line cut off as a kill during the write leaves it
        f.write(kept[-1][:40])
    done = subprocess.run([*args, "--json"], cwd=ROOT, capture_output=True, text=True, timeout=600, check=True)
    assert f"{len(kept)} already in" in done.stdout and "is cut off; its question will run again" in done.stdout
    lines = results.read_text().splitlines()
    assert lines[:len(kept)] == kept  # the questions done before the kill were not run again
    assert sorted(json.loads(line)["index"] for line in lines) == list(range(8))
    assert json.loads(done.stdout.strip().splitlines()[-1])["questions"] == 8


@pytest.mark.slow
@pytest.mark.parametrize("task", [
    ["task.name=refocus", "task.args={{path: {realdata}/chartqa_test_refocus_bbox, split: test}}"],
    ["task.name=tablevqa", "task.args={{path: {realdata}/wtq_vwtq_rendered_tables}}", "env.tools=[chart_table_focus]"],
], ids=["chartqa-refocus", "tablevqa"])
def test_eval_reads_real_chartqa_and_tablevqa(tmp_path, taught, realdata, task):
    out = tmp_path / "ev"
    overrides = [t.format(realdata=realdata) for t in task]
    done = vlrl("eval", str(QUICK), f"model.path={taught}", "judge.external=", "second_look=false", "questions=3",
                "samples=2", f"out={out}", *overrides, "--json")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["questions"] == 3 and figures["verifier_accuracy_image"] is not None
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert all(r["answers"] and len(r["samples"]) == 2 for r in records)
