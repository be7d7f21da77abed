"""Worker extension vLLM mixes into its worker class (``worker_extension_cls``).

Its methods are reached through ``AsyncLLM.collective_rpc`` and run inside every
worker process, next to the model, so weights are replaced in place without a restart.
"""

from __future__ import annotations

from safetensors.torch import load_file


class WeightLoader:
    """Loads named tensors from a safetensors file into the running model."""

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
