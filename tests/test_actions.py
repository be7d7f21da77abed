import pytest

from vlrl.builtin.envs.actions import CodeAction, ToolCall, parse_turn


def test_json_tool_calls_several_per_turn_in_order():
    text = ('THOUGHT: look at 2019.\n<tool_call>{"name": "focus_on_x_values_with_draw", '
            '"arguments": {"x_values_to_focus_on": ["2019"]}}</tool_call>\n'
            '<tool_call>{"name": "zoom_in", "arguments": "{\\"box\\": [0, 0, 10, 10]}"}</tool_call>')
    turn = parse_turn(text)
    assert turn.actions == (ToolCall("focus_on_x_values_with_draw", {"x_values_to_focus_on": ["2019"]}),
                            ToolCall("zoom_in", {"box": [0, 0, 10, 10]}))
    assert turn.errors == () and not turn.is_final and turn.trailing == ""


def test_code_blocks_and_mixed_order():
    text = ("```python\nimage_2 = focus_on_columns_with_mask(image_1, ['Year'], columns_bbox)\n"
            "display(image_2)\n```\nthen\n<tool_call>{\"name\": \"crop\", \"arguments\": {}}</tool_call>")
    turn = parse_turn(text)
    assert isinstance(turn.actions[0], CodeAction) and "display(image_2)" in turn.actions[0].code
    assert turn.actions[1] == ToolCall("crop", {})


def test_a_turn_without_actions_is_the_final_answer():
    assert parse_turn("The tallest bar is 2019.\nFINAL ANSWER: 2019").answer == "2019"
    assert parse_turn("just 42").answer == "just 42"
    assert parse_turn("FINAL ANSWER: 1\nwait\nfinal answer:  7 \nmore").answer == "7"
    assert parse_turn("```\nnot python\n```").is_final  # a plain fence is text, not code


@pytest.mark.parametrize(
    "text, needle",
    [
        ('<tool_call>{"name": "crop", "arguments": {</tool_call>', "tool call 1 is not valid JSON"),
        ('<tool_call>["crop"]</tool_call>', "must be a JSON object"),
        ('<tool_call>{"arguments": {}}</tool_call>', 'needs a "name" string'),
        ('<tool_call>{"name": "crop", "arguments": [1]}</tool_call>', '"arguments" must be an object, got list'),
        ('<tool_call>{"name": "crop", "arguments": "{bad"}</tool_call>', "is a string that is not valid JSON"),
        ('<tool_call>{"name": "crop", "args": {}}</tool_call>', "unexpected key(s) ['args']"),
        ('<tool_call>{"name": "crop", "arguments": {}}', "tool call 1 has no closing </tool_call>"),
        ("```python\ndef f(:\n```", "code block 1 does not compile: line 1"),
        ("```python\nx = 1\n", "code block 1 has no closing ```"),
        ("```python\n   \n```", "code block 1 is empty"),
        ("```python\nx = '\x00'\x00\n```", "code block 1 does not compile"),
    ],
)
def test_malformed_actions_become_errors_not_answers(text, needle):
    turn = parse_turn(text)
    assert turn.actions == () and not turn.is_final
    assert len(turn.errors) == 1 and needle in turn.errors[0]


def test_good_and_bad_actions_in_one_turn_are_both_kept():
    text = ('<tool_call>{"name": "crop", "arguments": {}}</tool_call>'
            '<tool_call>{oops}</tool_call>'
            '<tool_call>{"name": "zoom_in", "arguments": {}}</tool_call>')
    turn = parse_turn(text)
    assert [a.name for a in turn.actions] == ["crop", "zoom_in"]
    assert len(turn.errors) == 1 and turn.errors[0].startswith("tool call 2 ")


def test_text_after_the_action_is_not_run():
    text = ("```python\ndisplay(image_1)\n```\nOBSERVATION: Execution success (hallucinated)\n"
            "FINAL ANSWER: 5")
    turn = parse_turn(text)
    assert len(turn.actions) == 1 and not turn.is_final
    assert turn.trailing.startswith("OBSERVATION")


def test_adversarial_text():
    # a tool-call tag inside code stays code; a code fence inside JSON stays a string
    turn = parse_turn("```python\ns = '<tool_call>{}</tool_call>'\n```")
    assert turn.actions == (CodeAction("s = '<tool_call>{}</tool_call>'\n"),)
    turn = parse_turn('<tool_call>{"name": "t", "arguments": {"s": "```python\\nx\\n```"}}</tool_call>')
    assert turn.actions == (ToolCall("t", {"s": "```python\nx\n```"}),)
    # nested opening tags: the inner text is not JSON
    assert parse_turn("<tool_call><tool_call>{}</tool_call></tool_call>").errors[0].startswith("tool call 1 is not valid")
    # a megabyte of garbage with an unclosed tag parses quickly into one error
    turn = parse_turn("<tool_call>" + "x" * 1_000_000)
    assert turn.errors == ("tool call 1 has no closing </tool_call>",)
    # control characters around the answer are just text
    assert parse_turn("\x07\x1b[2J FINAL ANSWER: Yes\n\x00").answer == "Yes"
