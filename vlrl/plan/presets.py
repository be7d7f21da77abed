"""GPU presets: the twin's costs for published setups, derived from cited figures (a projection, not a measurement).

A preset is a model on a node of GPUs, with the batch of a published recipe. Its costs
come from a few numbers, each with its source here and in the README:

- decode is memory-bound: a step reads the weights (split over the replica's tensor-parallel
  GPUs) and each request's KV, at the share of the HBM bandwidth vLLM reaches; the
  arithmetic per request goes at the rate a forward pass reaches in training;
- prefill and the trainer go at the tokens per second per GPU measured for training a 7B
  model with FSDP (a forward is a third of a forward + backward); before its update the
  trainer also recomputes the old policy's logprobs (one more forward);
- the weight push: NCCL broadcast between separate engine and trainer GPUs, or, colocated,
  waking the engine from sleep mode to load the new weights.

Assumptions, beyond the sources: the engine replicas share the batch evenly; the vision
encoder's work on image tokens (0.68B of the 8.29B parameters) is not counted; tensor
parallelism costs no communication; the optimizer step is inside the training throughput.
"""

from __future__ import annotations

from dataclasses import dataclass

from vlrl.plan.costs import Costs, Placements

H100_HBM_BYTES_S = 3.35e12  # H100 SXM5 HBM3 bandwidth: NVIDIA H100 Tensor Core GPU datasheet
BANDWIDTH_SHARE = 0.77  # vLLM decode of Llama-3.1-8B at batch 1 reaches 77% of the HBM ceiling (A100 40GB, vLLM
#                         0.23: johnmusgrave.com/p/vllm-throughput-latency-sweep-on)
TRAIN_TOKENS_S_PER_GPU = 7500  # 7B, H100, HSDP, no activation checkpointing: IBM fms-fsdp README (training table)
FORWARD_SHARE = 1 / 3  # a forward pass is a third of a forward + backward (2N of 6N FLOPs per token)
NCCL_SYNC_S = 0.3  # 7B weights trainer -> engine by NCCL broadcast: "under 300ms", verl docs/advance/one_step_off.md
WAKE_SYNC_S = 2.6  # colocated: vLLM sleep mode, level-2 wake 0.8-2.6 s (vLLM blog, 2025-10-26, "sleep-mode"): the top
TOOL_S = 0.011  # the focus tool through vlrl's sandbox: `vlrl plan calibrate`, 2-vCPU AMD EPYC, 2026-12-06
REPLICA_MAX_SEQS = 1024  # vLLM's default max_num_seqs on GPUs of >= 70 GiB (vllm/engine/arg_utils.py)


@dataclass(frozen=True)
class Model:
    """What the costs need of a model."""

    params: float  # all weights, read by every decode step (bf16)
    kv_bytes_per_token: int  # 2 (K, V) x layers x KV heads x head dim x 2 bytes


# Qwen2.5-VL-7B-Instruct: 8.29B parameters (model card); its language model is Qwen2.5-7B's: 28 layers, 4 KV heads of
# dimension 128 (config.json)
QWEN25_VL_7B = Model(8.29e9, 2 * 28 * 4 * 128 * 2)


@dataclass(frozen=True)
class Preset:
    """A model on ``gpus`` GPUs with a recipe's batch; placements for colocated and every engine : trainer split."""

    model: Model
    gpus: int
    tensor_parallel: int  # GPUs per engine replica
    groups: int  # prompts per step
    group_size: int
    prompt_tokens: int  # a chart question's tokens, its image's included
    observation_tokens: int  # a tool's returned image and its text
    response_cap: int  # the recipe's max_response_length: a workload's lengths are scaled to it
    source: str

    def costs(self, engine_gpus: int, trainer_gpus: int, sync_s: float, name: str) -> Costs:
        bandwidth = H100_HBM_BYTES_S * BANDWIDTH_SHARE
        forward_tokens_s = TRAIN_TOKENS_S_PER_GPU / FORWARD_SHARE
        return Costs(
            decode_base_s=2 * self.model.params / (self.tensor_parallel * bandwidth),
            decode_per_request_s=1 / (forward_tokens_s * engine_gpus),
            decode_per_context_token_s=self.model.kv_bytes_per_token / (engine_gpus * bandwidth),
            prefill_per_token_s=1 / (forward_tokens_s * engine_gpus),
            tool_s=TOOL_S,
            update_base_s=0.0,
            update_per_token_s=(1 + FORWARD_SHARE) / (TRAIN_TOKENS_S_PER_GPU * trainer_gpus),
            sync_s=sync_s,
            source=f"preset {name}: {self.source} (a projection from published figures; see vlrl/plan/presets.py)",
        )

    def splits(self) -> dict[str, int]:
        """Placement name -> the GPUs the engines hold: ``colocated`` (the engines and the trainer take turns on
        all GPUs), ``disaggregated`` (half each) and ``disaggregated E:T`` for every other split in whole replicas."""
        out = {"colocated": self.gpus}
        for engine in range(self.tensor_parallel, self.gpus, self.tensor_parallel):
            out["disaggregated" if 2 * engine == self.gpus else f"disaggregated {engine}:{self.gpus - engine}"] = engine
        return out

    def placements(self, name: str) -> Placements:
        """The costs of every placement of ``splits``."""
        return {placement: self.costs(engine, self.gpus, WAKE_SYNC_S, name) if placement == "colocated"
                else self.costs(engine, self.gpus - engine, NCCL_SYNC_S, name)
                for placement, engine in self.splits().items()}

    def slots(self, placement: str) -> int:
        """Requests the engines decode together under ``placement``: vLLM's default batch per replica."""
        return self.splits()[placement] // self.tensor_parallel * REPLICA_MAX_SEQS


PRESETS = {
    # verl's Qwen2.5-VL-7B GRPO example (examples/grpo_trainer/run_qwen2_5_vl-7b.sh): 8 GPUs, 512 prompts x 5, rollout
    # tensor parallel 2, max_response_length 2048. A chart at ~800x600 is ~612 visual tokens (28x28 pixels each) + ~190
    # of text; a tool's image as large
    "qwen2.5-vl-7b-8xh100": Preset(QWEN25_VL_7B, 8, 2, 512, 5, 800, 640, 2048,
                                   "Qwen2.5-VL-7B on 8xH100, verl's GRPO batch 512 x 5"),
}


def preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return PRESETS[name]
