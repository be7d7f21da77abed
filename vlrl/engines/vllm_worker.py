"""Worker extension vLLM mixes into its worker class (``worker_extension_cls``).

Its methods are reached through ``AsyncLLM.collective_rpc`` and run inside every
worker process, next to the model, so weights are replaced in place without a restart.
"""

from __future__ import annotations

import os

from safetensors.torch import load_file

from vlrl.lifeline import die_with


class WeightLoader:
    """Loads named tensors from a safetensors file into the running model; ends with the vlrl process."""

    def vlrl_die_with(self, root: int) -> int:
        """End this worker, and the engine core process that started it, once ``root`` (the vlrl process that made
        the engine) is gone, however it ended; returns this worker's pid."""
        if os.getpid() != root:  # a process of vLLM's: under the engine core, or the engine core itself
            die_with(root, also=() if os.getppid() == root else (os.getppid(),))
        return os.getpid()

    def vlrl_load_weights(self, path: str) -> int:
        """Load every tensor of ``path`` (names as in the HF checkpoint); return how many.

        Goes through vLLM's in-place ``reload_weights``, which restores layers whose
        weights were repacked for the CPU / GPU kernels and packs them again.
        """
        weights = load_file(path)
        self.model_runner.reload_weights(  # type: ignore[attr-defined]
            weights_iterator=iter(weights.items()), is_checkpoint_format=True
        )
        return len(weights)
