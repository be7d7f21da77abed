import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Annotated, Literal

import pytest
from PIL import Image

from vlrl.registry import resolve
from vlrl.tool import (
    Box,
    Metadata,
    ToolDefinitionError,
    ToolError,
    ToolOutput,
    as_output,
    describe,
    load_tools,
    tool,
)


def test_signature_and_docstring_become_the_schema():
    def measure(image: Image.Image, labels: list[str], box: Box, mode: Literal["fast", "exact"] = "fast",
                scale: float | None = None, bars: Annotated[dict, Metadata("x_values_bbox")] = None) -> str:
        """Measure bars.

        More detail the model also reads.

        Args:
            labels: bar labels to measure.
            box: [x1, y1, x2, y2]
                in pixels.
            mode: how carefully.
        """

    spec = describe(measure)
    assert spec.name == "measure"
    assert spec.description == "Measure bars. More detail the model also reads."
    props = spec.parameters["properties"]
    assert props["labels"] == {"type": "array", "items": {"type": "string"}, "description": "bar labels to measure."}
    assert props["box"] == {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4,
                            "description": "[x1, y1, x2, y2] in pixels."}
    assert props["mode"] == {"type": "string", "enum": ["fast", "exact"], "description": "how carefully.",
                             "default": "fast"}
    assert props["scale"] == {"type": "number", "default": None}
    assert props["image"]["type"] == "string"
    assert "bars" not in props  # bound from metadata, never shown
    assert spec.parameters["required"] == ["labels", "box"]
    assert spec.metadata_params == {"bars": "x_values_bbox"}
    assert spec.schema["function"]["name"] == "measure"


@pytest.mark.parametrize(
    "source, needle",
    [
        ("def t(x):\n    '''Doc.'''", "parameter 'x': needs a type annotation"),
        ("def t(x: dict):\n    '''Doc.'''", "parameter 'x': type <class 'dict'> cannot be described as JSON"),
        ("def t(x: list):\n    '''Doc.'''", "say what the list holds"),
        ("def t(*xs: int):\n    '''Doc.'''", "*args / **kwargs cannot be described"),
        ("def t(x: int):\n    pass", "has no docstring"),
        ("def t(x: tuple[int, str]):\n    '''Doc.'''", "only tuples of one element type"),
    ],
)
def test_undescribable_tools_are_refused_clearly(source, needle):
    scope: dict = {}
    exec(source, scope)
    with pytest.raises(ToolDefinitionError) as e:
        describe(scope["t"])
    assert needle in str(e.value) and "'t'" in str(e.value)


def test_bind_checks_arguments_picks_images_and_binds_metadata():
    def shade(image: Image.Image, labels: list[str], alpha: float = 0.5,
              boxes: Annotated[list, Metadata("columns_bbox")] = ()) -> Image.Image:
        """Shade columns."""

    spec = describe(shade)
    im1, im2 = Image.new("RGB", (8, 8)), Image.new("RGB", (8, 8), "red")
    meta = {"columns_bbox": [{"label": "a", "x1": 0, "y1": 0, "x2": 3, "y2": 7}]}
    kwargs = spec.bind({"labels": ["a"], "alpha": 1}, [im1, im2], meta)
    assert kwargs["image"] is im2 and kwargs["alpha"] == 1.0 and kwargs["boxes"] is meta["columns_bbox"]
    assert spec.bind({"labels": [], "image": "image_1"}, [im1, im2], meta)["image"] is im1
    cases = [
        ({"labels": "a"}, "argument 'labels': expected a list, got str 'a'"),
        ({"labels": [1]}, "argument 'labels'[0]: expected str, got int 1"),
        ({}, "missing required argument(s) ['labels']"),
        ({"labels": [], "colour": "x"}, "unknown argument(s) ['colour']"),
        ({"labels": [], "boxes": []}, "['boxes'] come from the sample and cannot be passed"),
        ({"labels": [], "image": "image_3"}, "must name an image, image_1 to image_2, got 'image_3'"),
        ({"labels": [], "alpha": "high"}, "argument 'alpha': expected a number"),
    ]
    for args, needle in cases:
        with pytest.raises(ToolError) as e:
            spec.bind(args, [im1, im2], meta)
        assert needle in str(e.value) and str(e.value).startswith("shade:")
    with pytest.raises(ToolError, match="this sample has no 'columns_bbox' metadata"):
        spec.bind({"labels": []}, [im1], {})


def test_class_tools_keep_state_per_episode():
    @tool(name="test_counter")
    class Counter:
        """Count calls."""

        def __init__(self) -> None:
            self.n = 0

        def __call__(self, step: int = 1) -> str:
            self.n += step
            return str(self.n)

    first, second = Counter.instantiate(), Counter.instantiate()
    assert first(step=2) == "2" and first() == "3" and second() == "1"
    assert Counter.parameters["properties"] == {"step": {"type": "integer", "default": 1}}
    with pytest.raises(TypeError, match="class tool"):
        Counter()


def test_outputs_are_normalized():
    im = Image.new("RGB", (4, 4))
    assert as_output(im, "t") == ToolOutput(images=(im,))
    assert as_output("42", "t") == ToolOutput(text="42")
    with pytest.raises(ToolError, match="t returned int, not an image"):
        as_output(42, "t")


def test_a_ten_line_user_tool_file_works_like_a_builtin(tmp_path):
    f = tmp_path / "my_tools.py"
    f.write_text(textwrap.dedent('''
        from PIL import Image, ImageOps
        from vlrl.tool import tool

        @tool
        def invert(image: Image.Image) -> Image.Image:
            """Invert the colours, to make faint lines stand out."""
            return ImageOps.invert(image.convert("RGB"))
    '''))
    tools = load_tools([str(f)])
    assert list(tools) == ["invert"]
    out = tools["invert"](Image.new("RGB", (2, 2), (10, 20, 30)))
    assert out.getpixel((0, 0)) == (245, 235, 225)
    assert resolve("tool", "invert") is tools["invert"]


def test_builtins_load_through_entry_points_and_modules():
    by_ep = load_tools(["chart_table_focus", "drawing", "bar_compare"])
    by_module = load_tools(["vlrl.builtin.tools.focus", "vlrl.builtin.tools.draw", "vlrl.builtin.tools.bars"])
    assert by_ep == by_module and len(by_ep) == 18
    assert load_tools(["zoom_in"]) == {"zoom_in": by_ep["zoom_in"]}
    with pytest.raises(LookupError, match="unknown tool 'no_such_tool'"):
        load_tools(["no_such_tool"])


def test_a_user_tool_may_take_the_name_of_a_builtin_the_run_does_not_load(tmp_path):
    """The scripted teacher reads the focus tools' targets; that must not register the built-in tools,
    or a user's own ``focus_on_rows_with_draw`` is refused as a duplicate."""
    f = tmp_path / "my_focus.py"
    f.write_text(textwrap.dedent('''
        from PIL import Image
        from vlrl.tool import tool

        @tool
        def focus_on_rows_with_draw(image: Image.Image, rows_to_focus_on: list[str]) -> Image.Image:
            """My own row focus."""
            return image
    '''))
    script = f"import vlrl.builtin.envs.agents; from vlrl.tool import load_tools; print(sorted(load_tools([{str(f)!r}])))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['focus_on_rows_with_draw']"
