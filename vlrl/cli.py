"""The `vlrl` command: model building, generation, training (and seed sweeps), evaluation, environments, tools,
data, benchmarks, the scheduler's twin."""

from __future__ import annotations

import argparse
import os
import sys

from vlrl.allocator import keep_freed_memory
from vlrl.commands import bench, compare, data, env, eval, generate, model, plan, sweep, tools, train

# subcommand modules in the order `vlrl --help` lists them; each declares its arguments and runs itself
COMMANDS = (model, generate, train, sweep, compare, eval, env, tools, data, bench, plan)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    keep_freed_memory()  # before any thread allocates: see vlrl/allocator.py
    parser = argparse.ArgumentParser(prog="vlrl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_to(sub)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, OSError, LookupError) as e:  # bad input, a full disk: say what and where, no traceback
        print(f"vlrl: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
