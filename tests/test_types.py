import pytest
from PIL import Image

from vlrl.types import Completion, SamplingParams, Segment, Trajectory


def test_trajectory_keeps_tokens_masks_logprobs_versions_aligned():
    im1, im2 = Image.new("RGB", (28, 28)), Image.new("RGB", (56, 28))
    traj = Trajectory("t", "s", [Segment("prompt", (1, 2, 3), images=(im1,))])
    traj.add_policy(Completion("t", (4, 5), (-0.5, -1.5), (0, 0), "stop"))
    traj.add_observation((6, 7, 8), (im2,))
    traj.add_policy(Completion("t", (9,), (-2.0,), (1,), "length"))
    assert traj.token_ids == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert traj.loss_mask == [0, 0, 0, 1, 1, 0, 0, 0, 1]
    assert traj.behavior_logprobs == [0, 0, 0, -0.5, -1.5, 0, 0, 0, -2.0]
    assert traj.versions == [-1, -1, -1, 0, 0, -1, -1, -1, 1]
    assert traj.images == [im1, im2]
    assert traj.finish_reason == "length"


def test_segments_reject_misaligned_or_misplaced_fields():
    with pytest.raises(ValueError, match="2 tokens but 1 logprobs"):
        Segment("policy", (1, 2), logprobs=(-1.0,), versions=(0, 0))
    with pytest.raises(ValueError, match="only policy segments"):
        Segment("observation", (1,), logprobs=(-1.0,))
    with pytest.raises(ValueError, match="cannot carry images"):
        Segment("policy", (1,), images=(Image.new("RGB", (8, 8)),), logprobs=(-1.0,), versions=(0,))


@pytest.mark.parametrize(
    "kwargs, needle",
    [({"max_tokens": -1}, "max_tokens"), ({"temperature": -0.1}, "temperature"), ({"temperature": 2.5}, "temperature"),
     ({"top_p": 0.0}, "top_p"), ({"top_k": -2}, "top_k")],
)
def test_sampling_params_bounds(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        SamplingParams(**kwargs)
