"""VisualToolEnv: prompts from tool schemas, actions run in the sandbox, observations through the chat template."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest

from vlrl.builtin.envs.agents import ScriptedAgent
from vlrl.builtin.envs.visual_tool import VisualToolEnv
from vlrl.builtin.tasks.charts import synthetic_charts
from vlrl.builtin.tools import focus
from vlrl.config import EnvConfig, PlayConfig, SandboxConfig, load_config
from vlrl.rollout.play import text_turn
from vlrl.types import Sample
from vlrl.vision import chat_prompt_ids

ROOT = Path(__file__).resolve().parents[1]
SANDBOX = SandboxConfig(workers=1, timeout_s=5.0, cpu_seconds=3.0)


@pytest.fixture(scope="module")
def sample() -> Sample:
    return next(synthetic_charts(seed=3, kinds=["v_bar"], families=["retrieval"]))


@pytest.fixture
def open_env(run, tokenizer, vision):
    """open_env(**EnvConfig fields) -> a started VisualToolEnv; all are closed after the test."""
    started = []

    def make(**fields):
        env = VisualToolEnv(EnvConfig(sandbox=SANDBOX, **fields), tokenizer, vision)
        run(env.__aenter__())
        started.append(env)
        return env

    yield make
    for env in started:
        run(env.__aexit__(None, None, None))


def label_of(sample: Sample) -> str:
    return re.search(r"value of (\w+)\?", sample.question).group(1)


def test_reset_describes_the_offered_tools_and_labels_but_not_the_boxes(open_env, tokenizer, vision, sample):
    env = open_env(action_formats=["json", "code"])
    episode = env.reset(sample, "reset")
    traj = episode.trajectory
    assert traj.images == list(sample.images) and traj.loss_mask == [0] * len(traj.token_ids)
    vision.check(traj.token_ids, [vision.token_count(im) for im in sample.images])
    text = tokenizer.decode(traj.token_ids)
    assert "focus_on_x_values_with_mask" in text and "zoom_in" in text
    assert "focus_on_columns" not in text and "focus_on_y_values" not in text  # the sample has no such boxes
    labels = [b["label"] for b in sample.metadata["x_values_bbox"]]
    assert "X-axis labels: " + " | ".join(labels) in text
    assert '"x1":' not in text and "'x1':" not in text  # boxes stay hidden
    assert "x_values_bbox" in text  # ... but code may use the variable by name
    assert text.rstrip().endswith("<|im_start|>assistant")


@pytest.mark.parametrize("formats", [["json"], ["code"]])
def test_scripted_episode_matches_the_chat_template_and_the_tool(open_env, run, tokenizer, vision, sample, formats):
    env = open_env(action_formats=formats)
    episode = env.reset(sample, f"scripted-{formats[0]}")
    agent = ScriptedAgent()
    first = agent.act(episode)
    step = run(episode.step(text_turn(tokenizer, first)))
    assert not step.done and len(step.observation.images) == 1
    assert "OBSERVATION: Execution success. The result is image_2." in step.observation.text
    expected = focus.focus_on_x_values_with_mask(sample.images[0], [label_of(sample)],
                                                 sample.metadata["x_values_bbox"])
    assert np.array_equal(np.asarray(step.observation.images[0]), np.asarray(expected))
    traj = episode.trajectory
    # the whole trajectory is what the chat template renders for the same conversation
    messages = [
        {"role": "system", "content": episode.transcript[0].text},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": episode.transcript[1].text}]},
        {"role": "assistant", "content": first},
        {"role": "tool", "content": [{"type": "text", "text": step.observation.text}, {"type": "image"}]},
    ]
    assert traj.token_ids == chat_prompt_ids(tokenizer, vision, messages, traj.images)
    assert traj.loss_mask.count(1) == len(text_turn(tokenizer, first).token_ids)
    done = run(episode.step(text_turn(tokenizer, agent.act(episode))))
    assert done.done and done.reason == "answer" and traj.finish_reason == "answer"
    assert traj.answer == sample.answers[0]
    assert traj.tool_stats() == {"tool_calls": 1, "tool_errors": 0, "parse_errors": 0, "sandbox_restarts": 0}
    with pytest.raises(RuntimeError, match="already ended"):
        run(episode.step(text_turn(tokenizer, "more")))


def test_bad_actions_become_error_observations_and_are_counted(open_env, run, tokenizer, vision, sample):
    env = open_env(action_formats=["json", "code"], max_tool_calls=10)
    episode = env.reset(sample, "errors")
    turn = "\n".join([
        '<tool_call>{"name": "zoom_in", "arguments": {"box": [0, 0</tool_call>',  # malformed JSON
        '<tool_call>{"name": "rotate", "arguments": {}}</tool_call>',  # unknown tool
        '<tool_call>{"name": "zoom_in", "arguments": {"box": "left half"}}</tool_call>',  # wrong type
        '<tool_call>{"name": "focus_on_columns_with_mask", "arguments": {"columns_to_focus_on": ["A"]}}</tool_call>',
        "```python\nif True print(1)\n```",  # does not compile
        "```python\nprint('looked')\n```",  # displays nothing
    ])
    step = run(episode.step(text_turn(tokenizer, turn)))
    assert not step.done and step.observation.images == ()
    errors = re.findall(r"^error: (.*)$", step.observation.text, re.M)
    assert len(errors) == 6, step.observation.text
    for needle in ["not valid JSON", "unknown tool 'rotate'", "argument 'box'", "unknown tool 'focus_on_columns",
                   "does not compile", "displayed no image"]:
        assert any(needle in e for e in errors), (needle, errors)
    assert episode.trajectory.tool_stats() == {"tool_calls": 4, "tool_errors": 4, "parse_errors": 2,
                                               "sandbox_restarts": 0}
    vision.check(episode.trajectory.token_ids, [vision.token_count(im) for im in episode.trajectory.images])


def test_an_env_told_to_end_on_an_invalid_action_ends_there_without_an_answer(open_env, run, tokenizer, sample):
    broken = '<tool_call>{"name": "zoom_in", "arguments": {"box": [0, 0</tool_call>'
    episode = open_env(invalid_action="end").reset(sample, "strict")
    step = run(episode.step(text_turn(tokenizer, broken)))
    traj = episode.trajectory
    assert step.done and step.reason == "invalid_action" and traj.finish_reason == "invalid_action"
    assert traj.answer is None and traj.tool_stats()["parse_errors"] == 1
    valid = open_env(invalid_action="end").reset(sample, "strict-valid")
    assert not run(valid.step(text_turn(tokenizer, zoom()))).done  # a call that parses still runs
    lenient = open_env().reset(sample, "lenient")
    assert not run(lenient.step(text_turn(tokenizer, broken))).done


def test_json_only_env_reads_a_code_block_as_text(open_env, run, tokenizer, sample):
    episode = open_env(action_formats=["json"]).reset(sample, "json-only")
    step = run(episode.step(text_turn(tokenizer, "```python\ndisplay(image_1)\n```\nFINAL ANSWER: 7")))
    assert step.done and step.reason == "answer" and episode.trajectory.answer == "7"


def zoom(box="[0, 0, 99, 99]") -> str:
    return f'<tool_call>{{"name": "zoom_in", "arguments": {{"box": {box}}}}}</tool_call>'


@pytest.mark.parametrize(
    "limits, turns, reason",
    [
        ({"max_turns": 2}, [zoom(), zoom()], "max_turns"),
        ({"max_tool_calls": 2}, [zoom() + zoom(), zoom()], "max_tool_calls"),
        ({"max_images": 2}, [zoom(), zoom()], "image_budget"),
    ],
)
def test_limits_end_the_episode_with_their_reason(open_env, run, tokenizer, sample, limits, turns, reason):
    episode = open_env(**limits).reset(sample, f"limit-{reason}")
    for k, turn in enumerate(turns):
        step = run(episode.step(text_turn(tokenizer, turn)))
        assert step.done == (k == len(turns) - 1), (k, step)
    assert step.reason == reason == episode.trajectory.finish_reason
    assert episode.trajectory.answer is None


def test_an_observation_that_would_overflow_the_context_ends_the_episode(open_env, run, tokenizer, sample):
    prompt = len(open_env().reset(sample, "measure").trajectory.token_ids)
    episode = open_env(max_context_tokens=prompt + 100).reset(sample, "limit-context")
    step = run(episode.step(text_turn(tokenizer, zoom("[0, 0, 400, 300]"))))  # an image of ~250 tokens
    assert step.done and step.reason == "context" == episode.trajectory.finish_reason
    assert episode.trajectory.segments[-1].kind == "policy"  # nothing half-inserted


def visual_tokens(vision, images) -> int:
    return sum(vision.token_count(im) for im in images)


def test_a_tool_image_over_the_visual_budget_is_downscaled_to_what_is_left(open_env, run, tokenizer, vision, sample):
    """A zoom that would return ~250 visual tokens into a budget with 60 left comes back smaller, same aspect, and
    the trajectory's ids hold exactly its tokens."""
    question = visual_tokens(vision, sample.images)
    episode = open_env(max_visual_tokens=question + 60).reset(sample, "visual-fit")
    step = run(episode.step(text_turn(tokenizer, zoom("[0, 0, 400, 300]"))))
    traj = episode.trajectory
    assert not step.done and len(traj.images) == len(sample.images) + 1
    image = traj.images[-1]
    assert 40 <= vision.token_count(image) <= 60
    assert abs(image.width / image.height - 4 / 3) < 0.2
    assert traj.token_ids.count(vision.image_token_id) == visual_tokens(vision, traj.images) <= question + 60
    unbounded = open_env().reset(sample, "visual-free")
    run(unbounded.step(text_turn(tokenizer, zoom("[0, 0, 400, 300]"))))
    assert vision.token_count(unbounded.trajectory.images[-1]) > 150  # the budget, not the tool, made it small


def test_a_visual_budget_too_small_for_any_image_ends_the_episode(open_env, run, tokenizer, vision, sample):
    question = visual_tokens(vision, sample.images)
    episode = open_env(max_visual_tokens=question + 3).reset(sample, "visual-end")  # the smallest image takes 4
    step = run(episode.step(text_turn(tokenizer, zoom())))
    assert step.done and step.reason == "visual_budget" == episode.trajectory.finish_reason
    assert episode.trajectory.segments[-1].kind == "policy"  # nothing half-inserted
    with pytest.raises(ValueError, match=rf"sample {sample.id!r}: its images take {question} visual tokens, over "
                                         rf"env.max_visual_tokens={question - 1}"):
        open_env(max_visual_tokens=question - 1).reset(sample, "visual-over")


def test_tool_images_are_capped_at_their_own_pixels(open_env, run, tokenizer, vision, sample):
    episode = open_env(tool_image_max_pixels=28 * 28 * 16).reset(sample, "tool-pixels")
    run(episode.step(text_turn(tokenizer, zoom("[0, 0, 400, 300]"))))
    assert vision.token_count(episode.trajectory.images[-1]) <= 16
    assert visual_tokens(vision, episode.trajectory.images[:-1]) == visual_tokens(vision, sample.images)
    with pytest.raises(ValueError, match="env.tool_image_max_pixels=100 is below the processor's smallest image"):
        open_env(tool_image_max_pixels=100)


def test_last_turn_is_announced_and_truncated_turns_end_with_length(open_env, run, tokenizer, sample):
    episode = open_env(max_turns=2).reset(sample, "last-turn")
    step = run(episode.step(text_turn(tokenizer, zoom())))
    assert "This is your last turn" in step.observation.text
    cut = dataclasses.replace(text_turn(tokenizer, "FINAL ANSWER: 4"), finish_reason="length")
    assert run(episode.step(cut)).reason == "length"
    aborted = dataclasses.replace(text_turn(tokenizer, "x"), finish_reason="abort")
    with pytest.raises(ValueError, match="finished turn"):
        run(open_env().reset(sample, "aborted").step(aborted))


def test_samples_that_cannot_fit_are_refused_by_name(open_env, sample):
    env = open_env(max_context_tokens=200, max_images=1)
    with pytest.raises(ValueError, match=f"sample '{sample.id}'.*max_context_tokens=200"):
        env.reset(sample, "too-long")
    two = dataclasses.replace(sample, images=sample.images * 2)
    with pytest.raises(ValueError, match="2 images exceed env.max_images=1"):
        env.reset(two, "too-many")


def test_readme_custom_tool_named_in_a_config_works_in_an_episode(tmp_path, monkeypatch, run, tokenizer, vision,
                                                                   sample):
    """The README's 'Add your own tool' example, verbatim: the tool file and the config that names it."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Add your own tool", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    config = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) <= 12
    (tmp_path / "my_tools.py").write_text(code)
    (tmp_path / "my_env.yaml").write_text(config)
    monkeypatch.chdir(tmp_path)  # the config names the file relative to where the user runs vlrl
    env = VisualToolEnv(load_config(PlayConfig, "my_env.yaml", ["env.sandbox.workers=1"]).env, tokenizer, vision)
    run(env.__aenter__())
    try:
        episode = env.reset(sample, "custom")
        assert "grayscale" in episode.transcript[0].text
        call = '<tool_call>{"name": "grayscale", "arguments": {"image": "image_1"}}</tool_call>'
        step = run(episode.step(text_turn(tokenizer, call)))
        assert step.observation is not None and step.observation.images, episode.trajectory.actions
        out = np.asarray(step.observation.images[0].convert("RGB")).astype(int)
        assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
        assert np.asarray(sample.images[0]).astype(int).std(axis=2).max() > 0  # the input was in colour
    finally:
        run(env.__aexit__(None, None, None))


def test_a_templates_folder_replaces_the_prompts_it_holds(open_env, run, tokenizer, sample):
    """The quickstart's compact prompts: tools by name, the answer line, tool results as the new image's name."""
    env = open_env(templates=str(ROOT / "configs/templates/compact"), max_turns=2)
    episode = env.reset(sample, "compact")
    system = episode.transcript[0].text
    assert "focus_on_x_values_with_mask(image, x_values_to_focus_on)" in system and "FINAL ANSWER" in system
    assert '"description"' not in system  # no schemas: each prompt token costs time in every step
    agent = ScriptedAgent(brief=True)
    first = agent.act(episode)
    assert "THOUGHT" not in first and '"image"' not in first
    step = run(episode.step(text_turn(tokenizer, first)))
    assert step.observation.text.strip() == "image_2" and len(step.observation.images) == 1
    done = run(episode.step(text_turn(tokenizer, agent.act(episode))))
    assert done.reason == "answer" and episode.trajectory.answer == sample.answers[0]
    with pytest.raises(ValueError, match="env.templates 'no/such/folder' is not a folder"):
        VisualToolEnv(EnvConfig(templates="no/such/folder"), tokenizer, None)
