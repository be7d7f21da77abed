"""Built-in inputs for smoke runs, benchmarks and tests: a bar chart and a two-turn tool chat.

The second turn mimics what a visual tool returns: an observation message holding a
new image, inserted mid-trajectory — the case peers most often get wrong.
"""

from __future__ import annotations

from typing import Any, Sequence

from PIL import Image, ImageDraw

from vlrl.vision import VisionInputs, chat_prompt_ids, followup_ids

COLORS = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948")


def bar_chart(values: Sequence[float], size: tuple[int, int] = (112, 112), highlight: int | None = None) -> Image.Image:
    """A plain vertical bar chart; ``highlight`` outlines one bar in red, as a tool would."""
    w, h = size
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    top = max(values) or 1.0
    slot = w / len(values)
    for i, v in enumerate(values):
        x0, x1 = int(i * slot + slot * 0.2), int((i + 1) * slot - slot * 0.2)
        y0 = int(h - 8 - (h - 16) * v / top)
        draw.rectangle([x0, y0, x1, h - 8], fill=COLORS[i % len(COLORS)])
        if highlight == i:
            draw.rectangle([x0 - 2, y0 - 2, x1 + 2, h - 6], outline="red", width=2)
    return image


def question_prompt(tokenizer: Any, vision: VisionInputs, question: str, image: Image.Image) -> list[int]:
    """Ids of a one-image user question followed by the assistant's turn opener."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return chat_prompt_ids(tokenizer, vision, messages, [image])


def tool_observation(tokenizer: Any, vision: VisionInputs, text: str, image: Image.Image) -> list[int]:
    """Ids that close an assistant turn and return a tool result holding ``image``."""
    tool = {"role": "tool", "content": [{"type": "image"}, {"type": "text", "text": text}]}
    return [tokenizer.convert_tokens_to_ids("<|im_end|>"), *followup_ids(tokenizer, vision, [tool], [image])]
