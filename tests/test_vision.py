import gc

import pytest
from PIL import Image

from vlrl.demo import bar_chart, question_prompt


def test_token_count_matches_the_processor(vision, tiny_dir):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_dir)
    for size in [(112, 112), (140, 84), (300, 200), (20, 500)]:
        image = Image.new("RGB", size, "white")
        enc = processor.image_processor(images=[image], return_tensors="pt")
        t, h, w = enc["image_grid_thw"][0].tolist()
        assert vision.token_count(image) == t * h * w // 4
        assert vision.grid([vision.prepare(image)]).tolist() == [[t, h, w]]


def test_prepared_images_are_on_the_grid_and_stable(vision):
    prepared = vision.prepare(Image.new("RGBA", (300, 200)))
    assert prepared.mode == "RGB" and prepared.width % 28 == 0 and prepared.height % 28 == 0
    assert vision.prepare(prepared).size == prepared.size  # a prepared image passes through


def test_an_image_is_prepared_once_and_another_gets_its_own(vision):
    """An engine is handed a trajectory's images with every turn and verifier piece: the resize runs once."""
    chart = bar_chart([3, 1, 2], size=(400, 300))
    prepared = vision.prepare(chart)
    assert vision.prepare(chart) is prepared and prepared.size != chart.size
    small = Image.new("P", (56, 56))  # another image, of another mode: converted and snapped on its own
    assert vision.prepare(small).mode == "RGB" and vision.prepare(small).size == (56, 56)
    assert vision.prepare(chart) is prepared
    kept = len(vision._prepared)
    del chart, prepared
    gc.collect()
    assert len(vision._prepared) == kept - 1  # a freed image's prepared form is not kept
    on_grid = Image.new("RGB", (56, 56))
    assert vision.prepare(on_grid) is on_grid and len(vision._prepared) == kept - 1  # nothing to keep for it


def test_expand_collapse_and_check(vision, tokenizer):
    ims = [bar_chart([1, 2]), bar_chart([1, 2], size=(140, 84))]
    pad = vision.image_token_id
    ids = [1, vision.vision_start_id, pad, vision.vision_end_id, 5, vision.vision_start_id, pad, vision.vision_end_id]
    expanded = vision.expand(ids, ims)
    assert [e - s for s, e in vision.pad_runs(expanded)] == [vision.token_count(im) for im in ims]
    assert vision.collapse(expanded) == ids
    vision.check(expanded, [vision.token_count(im) for im in ims])


def test_placeholder_mismatches_are_named(vision):
    im = bar_chart([1, 2])
    pad = vision.image_token_id
    n = vision.token_count(im)
    with pytest.raises(ValueError, match=r"1 <\|image_pad\|> run\(s\) in the token ids but 2 image\(s\)"):
        vision.check([1] + [pad] * n + [2], [n, n])
    with pytest.raises(ValueError, match=f"image 0 needs {n} <\\|image_pad\\|> tokens but its run at position 1 has {n - 1}"):
        vision.check([1] + [pad] * (n - 1) + [2], [n])
    with pytest.raises(ValueError, match="placeholder"):
        vision.expand([1, pad, 2], [im, im])


def test_question_prompt_has_one_expanded_image(vision, tokenizer):
    im = bar_chart([3, 1])
    ids = question_prompt(tokenizer, vision, "Which is higher?", im)
    assert len(vision.pad_runs(ids)) == 1
    assert "Which is higher?" in tokenizer.decode(ids)


def test_fit_keeps_an_image_that_fits_and_shrinks_one_that_does_not(vision):
    small, large = bar_chart([1, 2], size=(112, 112)), bar_chart([1, 2], size=(448, 224))
    assert vision.fit(small, vision.token_count(small)) is small
    shrunk = vision.fit(large, 20)
    assert vision.token_count(large) == 128 and 16 <= vision.token_count(shrunk) <= 20
    assert shrunk.width == 2 * shrunk.height  # the aspect kept, on the grid
    assert vision.fit(large, 3) is None  # the processor's smallest image is 4 tokens (56 x 56 pixels)
