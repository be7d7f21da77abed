"""Image inputs as every component sees them: one path from PIL images to model tensors.

The engines, the trainer and (later) the verifier all go through ``VisionInputs`` so
they see identical pixels and agree on how many ``<|image_pad|>`` tokens each image
takes. Images are first snapped to Qwen's patch grid with ``qwen_vl_utils.smart_resize``;
an image that is already on the grid is passed through untouched, so vLLM's own
processor, given the same PIL image, produces the same grid. Pixel bounds other than the
folder's (``model.min_pixels`` / ``max_pixels``) go to every one of them: the processor
here, and vLLM's through ``mm_processor_kwargs``.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image, UnidentifiedImageError
from qwen_vl_utils import smart_resize
from transformers import AutoConfig, AutoImageProcessor


@dataclass(frozen=True)
class ImageBatch:
    """Model-ready tensors for a list of images, in order."""

    pixel_values: torch.Tensor  # (sum of patches, C * T * P * P)
    grid_thw: torch.Tensor  # (n_images, 3)
    token_counts: tuple[int, ...]  # <|image_pad|> tokens per image


PREPARED_KEPT = 4096  # images whose prepared form ``VisionInputs.prepare`` remembers


class VisionInputs:
    """PIL images --> ImageBatch, and checks that ids and images match."""

    def __init__(self, model_dir: str | Path, min_pixels: int = 0, max_pixels: int = 0):
        """``min_pixels`` / ``max_pixels``: the bounds an image is resized into; 0: the folder's processor's."""
        # image id -> (a weak reference to the image, its prepared form): an engine is handed a trajectory's same
        # images with every turn and every verifier piece, and resizing them each time was most of admitting one
        self._prepared: OrderedDict[int, tuple[weakref.ref, Image.Image]] = OrderedDict()
        self.model_dir = str(model_dir)
        config = AutoConfig.from_pretrained(model_dir)
        self.text_only = not hasattr(config, "vision_config")  # a language model: ids only, never an image
        if self.text_only:
            if min_pixels or max_pixels:
                raise ValueError(f"{model_dir} is a text-only model: it has no pixel bounds (got min_pixels "
                                 f"{min_pixels}, max_pixels {max_pixels})")
            self.processor = None
            self.image_token_id = self.vision_start_id = self.vision_end_id = self.video_token_id = -1
            self.merge = self.patch = self.min_pixels = self.max_pixels = 0
            return
        self.processor = AutoImageProcessor.from_pretrained(model_dir)
        if min_pixels or max_pixels:
            size = self.processor.size
            lo, hi = min_pixels or size.shortest_edge, max_pixels or size.longest_edge
            unit = config.vision_config.patch_size * config.vision_config.spatial_merge_size
            if not unit * unit <= lo <= hi:
                raise ValueError(f"pixel bounds [{lo}, {hi}] for {model_dir} (min_pixels {min_pixels}, max_pixels "
                                 f"{max_pixels}; 0 takes the folder's {size.shortest_edge} / {size.longest_edge}): "
                                 f"need {unit * unit} (one {unit}x{unit} visual token) <= min <= max")
            self.processor = AutoImageProcessor.from_pretrained(model_dir, size={"shortest_edge": lo,
                                                                                 "longest_edge": hi})
        self.image_token_id: int = config.image_token_id
        self.vision_start_id: int = config.vision_start_token_id
        self.vision_end_id: int = config.vision_end_token_id
        self.video_token_id: int = config.video_token_id
        self.merge: int = config.vision_config.spatial_merge_size
        self.patch: int = config.vision_config.patch_size
        # transformers 5 keeps Qwen's min / max pixels as the size's shortest / longest edge
        self.min_pixels: int = self.processor.size.shortest_edge
        self.max_pixels: int = self.processor.size.longest_edge

    @property
    def vision_token_ids(self) -> tuple[int, ...]:
        """Ids a policy must never sample: they only make sense next to an image (none for a text-only model)."""
        if self.text_only:
            return ()
        return (self.image_token_id, self.video_token_id, self.vision_start_id, self.vision_end_id)

    def prepare(self, image: Image.Image) -> Image.Image:
        """RGB image snapped to the patch grid within [min_pixels, max_pixels] (the same object for the same image,
        which is never to be changed in place once given)."""
        kept = self._prepared.get(id(image))
        if kept is not None and kept[0]() is image:
            return kept[1]
        prepared = image if image.mode == "RGB" else image.convert("RGB")
        h, w = self.grid_size(prepared.height, prepared.width)
        if (w, h) != prepared.size:
            prepared = prepared.resize((w, h), Image.BICUBIC)
        if prepared is not image:  # an image already prepared is its own answer: keeping it would keep it alive
            key = id(image)
            self._prepared[key] = (weakref.ref(image, lambda ref: self._forget(key, ref)), prepared)
            if len(self._prepared) > PREPARED_KEPT:
                self._prepared.popitem(last=False)
        return prepared

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) of an image prepared from one of ``height`` x ``width`` (Qwen's ``smart_resize``), which
        must keep its own size when resized again, as every processor downstream does. Within bounds where min equals
        max it need not (the floor shrinks an image below min, the ceiling grows it past max): such an image, and one
        so narrow that a side goes to nothing, is refused with its size."""
        resize = partial(smart_resize, factor=self.patch * self.merge, min_pixels=self.min_pixels,
                         max_pixels=self.max_pixels)
        size = resize(height, width)
        if min(size) == 0 or resize(*size) != size:
            raise ValueError(f"an image of {width}x{height} pixels has no stable size within the pixel bounds "
                             f"[{self.min_pixels}, {self.max_pixels}]: widen them (model.min_pixels / max_pixels)")
        return size

    def _forget(self, key: int, ref: weakref.ref) -> None:
        """The image of ``ref`` was freed: its prepared form goes with it (unless its id already names another)."""
        kept = self._prepared.get(key)
        if kept is not None and kept[0] is ref:
            del self._prepared[key]

    def token_count(self, image: Image.Image) -> int:
        """Number of <|image_pad|> tokens the image occupies once prepared."""
        prepared = self.prepare(image)
        unit = self.patch * self.merge
        return (prepared.height // unit) * (prepared.width // unit)

    def fit(self, image: Image.Image, max_tokens: int) -> Image.Image | None:
        """``image`` as it is if it takes at most ``max_tokens`` visual tokens, else downscaled (aspect kept, on the
        patch grid) to the largest size that does; None when even the processor's smallest image takes more."""
        if self.token_count(image) <= max_tokens:
            return image
        unit = self.patch * self.merge
        if max_tokens * unit * unit < self.min_pixels:
            return None
        h, w = smart_resize(image.height, image.width, factor=unit, min_pixels=self.min_pixels,
                            max_pixels=min(self.max_pixels, max_tokens * unit * unit))
        return self.prepare(image).resize((w, h), Image.BICUBIC)

    def grid(self, prepared: Sequence[Image.Image]) -> torch.Tensor | None:
        """(n, 3) patch grids (t, h, w) of prepared images, without running the processor."""
        if not prepared:
            return None
        return torch.tensor([[1, im.height // self.patch, im.width // self.patch] for im in prepared])

    def prepare_for(self, ids: Sequence[int], images: Sequence[Image.Image], where: str) -> list[Image.Image]:
        """The prepared images of a request, after checking that ``ids`` hold their runs."""
        if self.text_only and images:
            raise ValueError(f"{where}: {self.model_dir} is a text-only model and takes no images, got {len(images)}")
        prepared = [self.prepare(im) for im in images]
        self.check(ids, [self.token_count(im) for im in prepared], where=where)
        return prepared

    def encode(self, images: Sequence[Image.Image]) -> ImageBatch | None:
        if not images:
            return None
        prepared = [self.prepare(im) for im in images]
        out = self.processor(images=prepared, return_tensors="pt")
        grid = out["image_grid_thw"]
        counts = tuple(int(t * h * w) // self.merge**2 for t, h, w in grid.tolist())
        return ImageBatch(out["pixel_values"], grid, counts)

    def pad_runs(self, ids: Sequence[int]) -> list[tuple[int, int]]:
        """(start, end) of every maximal run of <|image_pad|> in ``ids``."""
        runs, start = [], None
        for i, tok in enumerate(ids):
            if tok == self.image_token_id and start is None:
                start = i
            elif tok != self.image_token_id and start is not None:
                runs.append((start, i))
                start = None
        if start is not None:
            runs.append((start, len(ids)))
        return runs

    def check(self, ids: Sequence[int], token_counts: Sequence[int], where: str = "prompt") -> list[tuple[int, int]]:
        """Raise ValueError unless each <|image_pad|> run has its image, in order and of its size."""
        runs = self.pad_runs(ids)
        if len(runs) != len(token_counts):
            raise ValueError(
                f"{where}: {len(runs)} <|image_pad|> run(s) in the token ids but {len(token_counts)} image(s) given"
            )
        for i, ((start, end), count) in enumerate(zip(runs, token_counts)):
            if end - start != count:
                raise ValueError(
                    f"{where}: image {i} needs {count} <|image_pad|> tokens but its run at "
                    f"position {start} has {end - start}"
                )
        return runs

    def collapse(self, ids: Sequence[int]) -> list[int]:
        """Inverse of ``expand``: one <|image_pad|> per image run (what vLLM's processor expects)."""
        return [t for i, t in enumerate(ids) if t != self.image_token_id or i == 0 or ids[i - 1] != t]

    def strip_images(self, ids: Sequence[int], keep: Sequence[bool] = ()) -> list[int]:
        """``ids`` without its images: each ``<|vision_start|> ... <|vision_end|>`` block removed whole, but for
        the k-th when ``keep[k]`` is true (the images kept are those ``keep`` marks, in order).

        What a verifier reads to judge an answer without seeing the image (or seeing only some
        of them); the text around each image is kept as it is.
        """
        out, inside, block, kept = [], False, -1, False
        for tok in ids:
            if tok == self.vision_start_id and not inside:
                inside, block = True, block + 1
                kept = block < len(keep) and keep[block]
            if inside and kept:
                out.append(tok)
            elif not inside and tok not in self.vision_token_ids:
                out.append(tok)
            if tok == self.vision_end_id and inside:
                inside = False
        return out

    def expand(self, ids: Sequence[int], images: Sequence[Image.Image]) -> list[int]:
        """Replace each single <|image_pad|> placeholder by the run its image needs."""
        counts = [self.token_count(im) for im in images]
        out, k = [], 0
        for tok in ids:
            if tok == self.image_token_id:
                if k >= len(counts):
                    raise ValueError(f"more <|image_pad|> placeholders than the {len(counts)} image(s) given")
                out.extend([tok] * counts[k])
                k += 1
            else:
                out.append(tok)
        if k != len(counts):
            raise ValueError(f"{k} <|image_pad|> placeholder(s) for {len(counts)} image(s)")
        return out


def chat_prompt_ids(
    tokenizer: Any,
    vision: VisionInputs,
    messages: list[dict[str, Any]],
    images: Sequence[Image.Image],
    add_generation_prompt: bool = True,
) -> list[int]:
    """Token ids of a chat (through the model's chat template) with image runs expanded."""
    enc = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=True)
    ids = enc["input_ids"] if hasattr(enc, "keys") else enc
    return vision.expand(ids, images)


def followup_ids(tokenizer: Any, vision: VisionInputs, messages: list[dict[str, Any]],
                 images: Sequence[Image.Image]) -> list[int]:
    """Ids that follow an assistant turn's ``<|im_end|>`` when ``messages`` come next,
    through the opener of the next assistant turn.

    Rendered through the model's own chat template with image runs expanded, so what an
    environment inserts mid-trajectory is exactly what the template would produce.
    """
    convo: list[dict[str, Any]] = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    before = chat_prompt_ids(tokenizer, vision, convo, [], add_generation_prompt=False)
    after = chat_prompt_ids(tokenizer, vision, convo + messages, images)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    cut = len(before) - before[::-1].index(im_end)
    if after[:cut] != before[:cut]:
        raise ValueError("the chat template renders earlier turns differently once more messages follow")
    return after[cut:]


def read_image(path: str) -> Image.Image:
    """An RGB image from ``path``, or ValueError naming the file."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (FileNotFoundError, UnidentifiedImageError, OSError) as e:
        raise ValueError(f"cannot read image {path!r}: {e}") from e
