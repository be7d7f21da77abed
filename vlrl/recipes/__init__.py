"""The training recipes: a run built from the library, read top to bottom (``train``: GRPO / PPO with tools)."""
