"""`vlrl model tiny | reward-head`: build model folders without a download."""

from __future__ import annotations

import argparse


def add_to(sub: argparse._SubParsersAction) -> None:
    model = sub.add_parser("model", help="build model folders")
    model_sub = model.add_subparsers(dest="model_command", required=True)
    tiny = model_sub.add_parser("tiny", help="write a tiny random Qwen2-VL folder (no download)")
    tiny.add_argument("--out", required=True, help="folder to write")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--arch", default="qwen2-vl", choices=["qwen2-vl", "qwen2.5-vl", "qwen2"],
                      help="qwen2: a text-only language model (a judge), no vision")
    tiny.add_argument("--max-pixels", type=int, default=None,
                      help="largest image the processor passes (28 x 28 pixels per image token; default "
                           "448 x 448, or the shape's)")
    tiny.add_argument("--shape", default=None,
                      help="e.g. qwen2.5-vl-7b: a released checkpoint's shapes (vocabulary, special-token ids, context, vision patching, "
                           "pixel bounds) at a small width and depth; --arch is then qwen2.5-vl")
    tiny.set_defaults(run=run_tiny)
    head = model_sub.add_parser("reward-head", help="a reward-model folder: a VLM with a classic scalar head "
                                                    "(e.g. a *ForSequenceClassification's score.weight) written in")
    head.add_argument("base", help="the VLM folder the head was trained on")
    head.add_argument("--head", required=True, help="a .safetensors file holding the head's weight (and bias)")
    head.add_argument("--key", default="score.weight", help="the weight's name in that file")
    head.add_argument("--out", required=True, help="folder to write")
    head.set_defaults(run=run_reward_head)


def run_tiny(args: argparse.Namespace) -> int:
    from vlrl.model.tiny import build_tiny_model

    out = build_tiny_model(args.out, seed=args.seed, arch=args.arch, max_pixels=args.max_pixels, shape=args.shape)
    print(f"wrote tiny {args.shape or args.arch} model to {out}")
    return 0


def run_reward_head(args: argparse.Namespace) -> int:
    from vlrl.rewards.head import write_reward_model

    print(f"wrote reward model to {write_reward_model(args.base, args.head, args.out, args.key)}")
    return 0
