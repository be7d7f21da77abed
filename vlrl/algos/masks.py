"""Which policy tokens a trajectory trains on (``algo.loss_mask``, ``algo.mask_over_turns``).

- ``all_turns``: every token the policy wrote (vlrl's default).
- ``final_turn``: only the turn after the last tool result (VTool-R1 optimises the final
  answer given the edited image; its v2 masks the first turn and the observation). A
  trajectory that called no tool has one turn, and trains on it.
- ``mask_over_turns``: a trajectory cut by ``env.max_turns`` or ``env.max_tool_calls``
  trains on nothing and leaves its group's statistics (Mini-o3: not penalising long
  explorations keeps the model willing to make them). Its reward is still logged.
The trajectories themselves are left as generated; the algorithm trains on masked copies.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from vlrl.types import Trajectory

LossMask = Literal["all_turns", "final_turn"]
OVER_TURN = ("max_turns", "max_tool_calls")  # the finish reasons of a trajectory the turn limits cut


def over_turn(traj: Trajectory) -> bool:
    """Whether the turn or tool-call limit ended ``traj``."""
    return traj.finish_reason in OVER_TURN


def masked(traj: Trajectory, policy: LossMask, mask_over_turns: bool = False) -> Trajectory:
    """``traj`` with the policy segments that do not train marked untrained (the same object when all train)."""
    if policy not in ("all_turns", "final_turn"):
        raise ValueError(f"algo.loss_mask must be 'all_turns' or 'final_turn', got {policy!r}")
    segments = traj.segments
    if mask_over_turns and over_turn(traj):
        first = len(segments)
    elif policy == "final_turn":
        first = max((i for i, s in enumerate(segments) if s.kind == "observation"), default=-1) + 1
    else:
        return traj
    kept = [s if i >= first or s.kind != "policy" else dataclasses.replace(s, trained=False)
            for i, s in enumerate(segments)]
    return dataclasses.replace(traj, segments=kept)
