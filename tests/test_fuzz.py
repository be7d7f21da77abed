"""Bad input, fuzzed: seeded random model output and config files, each case bounded in time. Every one ends in
a parsed turn (actions, errors or an answer) or a named configuration error; nothing else escapes."""

from __future__ import annotations

import json
import random
import string
import time
from collections import Counter

import yaml

from vlrl.builtin.envs.actions import parse_turn
from vlrl.config import ConfigError, EvalConfig, TrainConfig, load_config, to_dict

CASES = 300
SPECIAL = ["<|im_end|>", "<|im_start|>", "<|image_pad|>", "<|vision_start|>", "<tool_call>", "</tool_call>",
           "```python", "```", "FINAL ANSWER:", "display(", "\x00", "\ufffd", "{", "}", '"name"', '"arguments"']


def _model_output(rng: random.Random) -> str:
    """What a broken policy writes: random bytes, pieces of the formats, unterminated or nested blocks."""
    kind = rng.randrange(6)
    if kind == 0:
        return bytes(rng.getrandbits(8) for _ in range(rng.randrange(2000))).decode("utf-8", errors="replace")
    if kind == 1:  # a 1 MB tool call
        return '<tool_call>{"name": "crop", "arguments": {"box": [' + "1, " * 350_000 + "1]}}</tool_call>"
    if kind == 2:  # nested code fences
        depth = rng.randrange(1, 30)
        return "```python\n" * depth + "display(image_1)\n" + "```\n" * rng.randrange(depth + 1)
    if kind == 3:  # an unterminated tool call with a huge string
        return '<tool_call>{"name": "' + "x" * rng.randrange(10_000) + '", "arguments": {'
    pieces = [rng.choice(SPECIAL) if rng.random() < 0.5 else
              "".join(rng.choice(string.printable) for _ in range(rng.randrange(40))) for _ in range(rng.randrange(60))]
    return "".join(pieces)


def test_random_model_output_becomes_actions_errors_or_an_answer():
    rng = random.Random(0)
    for case in range(CASES):
        text = _model_output(rng)
        began = time.perf_counter()
        turn = parse_turn(text)
        assert time.perf_counter() - began < 2.0, f"case {case} took {time.perf_counter() - began:.1f} s"
        assert turn.actions or turn.errors or turn.is_final, case
        assert all(isinstance(e, str) and e for e in turn.errors)


def _mutate(node, rng: random.Random, rate: float):
    """A config with (at ``rate``) values swapped for others of any type, keys dropped, added or misspelt."""
    junk = [None, -1, 0, 1e308, float("nan"), "", "x" * 500, [], {}, [1, "a"], {"k": "v"}, True, "auto", "-3"]
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            roll = rng.random()
            if roll < rate / 2:
                continue
            if roll < rate:
                key = key + rng.choice(["_", "s", "X"])
            out[key] = rng.choice(junk) if rng.random() < rate else _mutate(value, rng, rate)
        if rng.random() < rate:
            out[rng.choice(["unknown", "steps", "model"])] = rng.choice(junk)
        return out
    if isinstance(node, list):
        return [_mutate(v, rng, rate) for v in node]
    return rng.choice(junk) if rng.random() < rate else node


def test_random_config_files_load_or_fail_with_a_named_error(tmp_path):
    rng = random.Random(1)
    bases = [to_dict(TrainConfig()), to_dict(EvalConfig())]
    outcomes = Counter(loaded=0, named=0, checked=0)
    for case in range(CASES):
        cls = (TrainConfig, EvalConfig)[case % 2]
        path = tmp_path / f"case-{case}.yaml"
        rate = rng.choice([0.0, 0.005, 0.02, 0.1])
        text = yaml.safe_dump(_mutate(bases[case % 2], rng, rate)) if case % 7 else "".join(
            rng.choice(string.printable) for _ in range(rng.randrange(300)))
        path.write_text(text)
        try:
            load_config(cls, path)
            outcomes["loaded"] += 1
        except ValueError as e:  # ConfigError, or a section's own check naming the value
            assert str(e), case
            outcomes["named" if isinstance(e, ConfigError) else "checked"] += 1
    assert outcomes["loaded"] > 0 and outcomes["named"] + outcomes["checked"] > 0, outcomes  # both ways taken

def test_an_override_that_is_not_yaml_is_named():
    try:
        load_config(TrainConfig, None, ["steps=[1, 2"])
    except ConfigError as e:
        assert "override 'steps=[1, 2': its value is not valid YAML" in str(e)
    else:
        raise AssertionError("no error")


def test_random_model_output_through_the_env_ends_or_goes_on_with_a_named_reason(run, tokenizer, vision):
    """The same kinds of garbage as a policy turn, through the tools env and its sandbox: each turn is an
    observation (with the errors named) or an end with a finish reason; the episode keeps its trajectory."""
    from vlrl.builtin.envs.visual_tool import VisualToolEnv
    from vlrl.builtin.tasks.charts import synthetic_charts
    from vlrl.config import EnvConfig, SandboxConfig
    from vlrl.rollout.play import text_turn

    sample = next(synthetic_charts(seed=5, kinds=["v_bar"], families=["retrieval"]))
    rng = random.Random(2)

    async def episodes():
        config = EnvConfig(max_turns=3, action_formats=["json", "code"], sandbox=SandboxConfig(workers=1, timeout_s=5))
        async with VisualToolEnv(config, tokenizer, vision) as env:
            for case in range(24):
                episode = env.reset(sample, f"fuzz-{case}")
                prompt = len(episode.trajectory.token_ids)
                while not episode.done:
                    step = await episode.step(text_turn(tokenizer, _model_output(rng)[:20_000]))
                    assert step.done or step.observation is not None
                assert episode.trajectory.finish_reason is not None, case
                assert len(episode.trajectory.token_ids) > prompt
                await episode.close()

    run(episodes())


def _row_mutation(rng: random.Random, images: dict[str, str]) -> dict:
    """One way a dataset row goes wrong (or none)."""
    nan = float("nan")
    return rng.choice([
        {}, {"image": images["corrupt"]}, {"image": images["truncated"]}, {"image": images["empty"]},
        {"image": images["bomb"]}, {"image": "missing.png"}, {"image": 7}, {"question": None}, {"question": ""},
        {"question": ["a", "b"]}, {"question": "?" * 100_000}, {"answer": None}, {"answer": ""}, {"answer": {"a": 1}},
        {"x_values_bbox": [{"x1": nan, "y1": 0, "x2": 5, "y2": 5}]}, {"x_values_bbox": [{"x1": 9, "y1": 9, "x2": 1,
                                                                                        "y2": 1}]},
        {"x_values_bbox": [{"x1": "a", "y1": 0, "x2": 5, "y2": 5}]}, {"x_values_bbox": [{"x1": 0}]},
        {"x_values_bbox": "boxes"}, {"x_values": [None]}, {"x_values": 3}, {"id": None},
    ])


def test_random_dataset_rows_load_or_are_counted_by_problem(tmp_path):
    """Corrupt, truncated, empty and decompression-bomb images, wrong types, NaN and inverted boxes, empty and huge
    questions: with on_error skip every row is a sample or a counted problem, and nothing else happens."""
    from PIL import Image

    from vlrl.builtin.tasks.loaders import refocus

    good_png = tmp_path / "good.png"
    Image.new("RGB", (120, 80), "white").save(good_png)
    data = good_png.read_bytes()
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.png").write_bytes(b"")
    Image.new("1", (40_000, 40_000)).save(tmp_path / "bomb.png")  # 1.6 billion pixels in a few hundred kB
    images = {name: f"{name}.png" for name in ("corrupt", "truncated", "empty", "bomb")}
    rng = random.Random(4)
    good = {"question": "Q?", "answer": "1", "image": "good.png", "x_values": ["A"], "y_values": [],
            "x_values_bbox": [{"x1": 1, "y1": 1, "x2": 20, "y2": 20}], "y_values_bbox": []}
    rows = [good | {"id": f"r{k}"} | _row_mutation(rng, images) for k in range(120)]
    path = tmp_path / "test.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    began = time.perf_counter()
    loaded = refocus(path=str(path), on_error="skip")
    kept = list(loaded)
    assert time.perf_counter() - began < 60
    assert loaded.rows_read == len(rows) == len(kept) + loaded.errors.total  # nothing silently dropped
    assert kept and loaded.errors.total and all(s.question and s.answers and s.images for s in kept)


WEIRD_TOOL = '''
from PIL import Image
from vlrl.tool import tool

MODES = ["1", "L", "P", "RGBA", "I", "F", "CMYK", "LA", "RGB"]
SIZES = [(1, 1), (3000, 20), (20, 3000), (2000, 2000), (5000, 5000), (28, 28)]

@tool
def weird(mode: int, size: int) -> Image.Image:
    """An image of any mode and size."""
    return Image.new(MODES[mode % len(MODES)], SIZES[size % len(SIZES)])
'''


def test_tool_images_of_any_mode_and_size_are_shown_or_refused_by_name(run, tokenizer, vision, tmp_path):
    """Every PIL mode, slivers, a 1x1 and images far past the processor's bound: the observation holds the image
    (its tokens matching what the processor makes of it) or a named error, and the episode goes on."""
    from vlrl.builtin.envs.visual_tool import VisualToolEnv
    from vlrl.builtin.tasks.charts import synthetic_charts
    from vlrl.config import EnvConfig, SandboxConfig
    from vlrl.rollout.play import text_turn

    (tmp_path / "weird.py").write_text(WEIRD_TOOL)
    sample = next(synthetic_charts(seed=5, kinds=["v_bar"], families=["retrieval"]))
    rng = random.Random(6)
    shown = refused = 0

    async def episodes():
        nonlocal shown, refused
        config = EnvConfig(tools=[str(tmp_path / "weird.py")], max_turns=2, max_images=3,
                           sandbox=SandboxConfig(workers=1, timeout_s=10, memory_mb=2048))
        async with VisualToolEnv(config, tokenizer, vision) as env:
            for case in range(16):
                episode = env.reset(sample, f"weird-{case}")
                call = json.dumps({"name": "weird", "arguments": {"mode": rng.randrange(9), "size": rng.randrange(6)}})
                step = await episode.step(text_turn(tokenizer, f"<tool_call>{call}</tool_call>"))
                assert not step.done, episode.trajectory.finish_reason
                if step.observation.images:
                    traj = episode.trajectory
                    vision.check(traj.token_ids, [vision.token_count(im) for im in traj.images], where=f"case {case}")
                    shown += 1
                else:
                    assert "error: " in step.observation.text
                    refused += 1
                await episode.close()

    run(episodes())
    assert shown and refused
