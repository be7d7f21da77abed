"""Engine replicas on a local Ray cluster: placement, conversations kept on a replica, failover, config errors."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import textwrap
import time

import psutil
import pytest
import torch
import yaml
from safetensors.torch import load_file

from test_cli import ROOT, VLRL, vlrl
from vlrl.config import DistributedConfig, EngineConfig, ModelConfig
from vlrl.trainer.logprobs import sequence_logprobs
from vlrl.types import SamplingParams

pytestmark = pytest.mark.slow
RAY = DistributedConfig(backend="ray", placement_timeout_s=120)
HALF_CPU = {"CPU": 0.5}  # two replicas and the driver share this machine's 2 cores


@pytest.fixture(scope="module")
def ray_cluster():
    from vlrl.distributed.cluster import connect, disconnect

    started = connect("")
    yield
    disconnect(started)


@pytest.fixture(scope="module")
def router(ray_cluster, tiny_dir, loop):
    from vlrl.distributed import open_engine

    engine = loop.run_until_complete(open_engine(
        ModelConfig(str(tiny_dir)), EngineConfig(replicas=2, replica_resources=HALF_CPU), RAY))
    yield engine
    loop.run_until_complete(engine.close())


async def together(*aws):
    return await asyncio.gather(*aws)


def no_eos(router) -> SamplingParams:
    """Every request runs its whole budget: the tiny random model may otherwise stop at once."""
    return SamplingParams(max_tokens=48, seed=0, suppress_token_ids=router.eos_ids)


def test_requests_spread_and_a_conversation_keeps_its_replica(run, router, tokenizer):
    router.take_stats()
    prompt = tokenizer("How many bars are there?")["input_ids"]
    sampling = no_eos(router)

    async def conversation(i: int) -> None:  # two turns, then a verifier call, as a trajectory makes them
        ids = list(prompt)
        for turn in range(2):
            out = await router.complete(ids, [], sampling, f"conv{i}/t{turn}")
            assert len(out.token_ids) == 48 and len(out.logprobs) == 48
            ids += list(out.token_ids) + tokenizer(" Look again.")["input_ids"]
        await router.score_next(f"conv{i}/verify", ids, [], tokenizer.convert_tokens_to_ids(["Yes", "No"]))

    run(together(*(conversation(i) for i in range(8))))
    stats = router.take_stats()
    assert stats["replica_0_requests"] > 0 and stats["replica_1_requests"] > 0  # spread
    assert stats["replica_0_requests"] + stats["replica_1_requests"] == 8 * 3
    assert stats["replica_failovers"] == 0 and stats["replicas_alive"] == 2
    served = [set(info["served"]) for info in run(router.replica_info())]
    for i in range(8):
        mine = {f"conv{i}/t0", f"conv{i}/t1", f"conv{i}/verify"}
        assert sum(mine <= s for s in served) == 1, f"conversation {i} was split over replicas"


def test_weights_reach_every_replica_with_their_version(run, router, tokenizer, vision, trainer_model):
    state = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v
             for k, v in trainer_model.state_dict().items()}
    run(router.update_weights(state, 7))
    assert router.version == 7 and [i["version"] for i in run(router.replica_info())] == [7, 7]
    prompt = tokenizer("Which bar is the highest?")["input_ids"]
    outs = run(together(*(router.complete(prompt, [], no_eos(router), f"w{i}/t0") for i in range(4))))
    model = type(trainer_model)(trainer_model.config).eval()
    model.load_state_dict(state)
    for out in outs:
        assert set(out.versions) == {7}
        full = sequence_logprobs(model, vision, [(prompt + list(out.token_ids), [])])[0].logprobs[len(prompt) - 1:]
        assert (full - torch.tensor(out.logprobs)).abs().max() < 1e-3  # the replicas sample with these weights
    run(router.update_weights(trainer_model.state_dict(), 8))


def test_an_aborted_request_keeps_its_tokens_and_resumes_on_its_replica(run, router, tokenizer, vision,
                                                                        trainer_model):
    """What the overlap scheduler's pause does: abort mid-stream, then continue from prompt + the tokens kept."""
    prompt = tokenizer("Which bar is the lowest?")["input_ids"]
    sampling = SamplingParams(max_tokens=160, seed=2, suppress_token_ids=router.eos_ids)

    async def abort_midway():
        ids, logprobs, finish = [], [], None
        async for delta in router.generate(prompt, [], sampling, "pause0/t0"):
            ids += delta.token_ids
            logprobs += delta.logprobs
            finish = delta.finish_reason
            if len(ids) >= 20 and finish is None and not router_aborted:
                router_aborted.append(await router.abort("pause0/t0"))
        return ids, logprobs, finish

    router_aborted: list = []
    ids, logprobs, finish = run(abort_midway())
    assert finish == "abort" and 20 <= len(ids) < 160
    assert list(router_aborted[0].token_ids) == ids[: len(router_aborted[0].token_ids)]
    rest = run(router.complete(prompt + ids, [], SamplingParams(max_tokens=160 - len(ids), seed=3,
                                                                 suppress_token_ids=router.eos_ids), "pause0/t0/r1"))
    ids, logprobs = ids + list(rest.token_ids), logprobs + list(rest.logprobs)
    assert len(ids) == 160
    full = sequence_logprobs(trainer_model, vision, [(prompt + ids, [])])[0].logprobs[len(prompt) - 1:]
    assert (full - torch.tensor(logprobs)).abs().max() < 1e-3
    served = [set(info["served"]) for info in run(router.replica_info())]
    assert sum({"pause0/t0", "pause0/t0/r1"} <= s for s in served) == 1  # resumed on the replica with its prefix


def test_a_replica_killed_mid_rollout_loses_no_token_and_is_replaced(run, router, tokenizer, vision, trainer_model):
    """SIGKILL one replica while its requests stream: each goes on at the survivor from the tokens it had."""
    router.take_stats()
    prompt = tokenizer("What is the value of the largest bar?")["input_ids"]
    sampling = SamplingParams(max_tokens=160, seed=1, suppress_token_ids=router.eos_ids)
    victim = run(router.replica_info())[0]["pid"]
    seen: dict[str, int] = {}

    async def stream(i: int):
        ids, logprobs = [], []
        async for delta in router.generate(prompt, [], sampling, f"kill{i}/t0"):
            ids += delta.token_ids
            logprobs += delta.logprobs
            seen[f"kill{i}"] = len(ids)
        return ids, logprobs, delta.finish_reason

    async def kill_when_streaming() -> None:
        while sum(seen.values()) < 40:
            await asyncio.sleep(0.01)
        os.kill(victim, signal.SIGKILL)

    *outs, _ = run(together(*(stream(i) for i in range(8)), kill_when_streaming()))
    stats = router.take_stats()
    assert stats["replica_losses"] == 1 and stats["replica_failovers"] >= 1
    for ids, logprobs, finish in outs:
        assert len(ids) == 160 and finish == "length"
        full = sequence_logprobs(trainer_model, vision, [(prompt + ids, [])])[0].logprobs[len(prompt) - 1:]
        assert (full - torch.tensor(logprobs)).abs().max() < 1e-3  # the survivor continued the exact prefix

    async def replaced() -> list[dict]:
        for _ in range(600):
            infos = await router.replica_info()
            if len(infos) == 2:
                return infos
            await asyncio.sleep(0.1)
        raise AssertionError("the lost replica was not restarted")

    infos = run(replaced())
    assert victim not in {i["pid"] for i in infos} and {i["version"] for i in infos} == {8}  # the latest weights
    assert router.take_stats()["replica_restarts"] == 1


def test_replicas_the_cluster_cannot_place_fail_with_what_is_free(run, ray_cluster, tiny_dir):
    from vlrl.distributed import open_engine

    cfg = EngineConfig(replicas=1, replica_resources={"CPU": 64})
    with pytest.raises(TimeoutError, match=r"could not place 1 engine replicas with \{'CPU': 64\} .* free"):
        run(open_engine(ModelConfig(str(tiny_dir)), cfg, DistributedConfig(backend="ray", placement_timeout_s=2)))


TRAIN_ON_RAY = ["distributed.backend=ray", "engine.replicas=2", "engine.replica_resources={CPU: 0.5}",
                "checkpoint_every=0"]


def records_of(run_dir, name: str = "metrics.jsonl") -> list[dict]:
    return [json.loads(line) for line in (run_dir / name).read_text().splitlines()]


@pytest.mark.parametrize("decode_during_update", [False, True], ids=["paused-through-update", "disaggregated"])
def test_overlap_with_a_streaming_verifier_runs_unchanged_over_replicas(train_config, tmp_path, decode_during_update):
    vlrl("train", str(train_config), *TRAIN_ON_RAY, "rollout.schedule=overlap", "rollout.extra_groups=2", "steps=3",
         "rollout.max_new_tokens=64", f"rollout.decode_during_update={str(decode_during_update).lower()}",
         "distributed.trainer_threads=1", "verifier.model=policy", "verifier.weight=0.25", "verifier.chunk_tokens=4")
    run_dir = (tmp_path / "runs" / "latest").resolve()
    records = records_of(run_dir)
    for r in records:
        assert r["engine/replica_0_requests"] > 0 and r["engine/replica_1_requests"] > 0
        assert r["engine/replicas_alive"] == 2 and r["rollout/trajectories"] == 6
        assert r["engine/busy_s"] >= r["engine/decode_s"] + r["engine/prefill_s"] > 0  # the replicas' own counters
        assert r["verifier/early_tokens"] > 0 and r["perf/version"] == r["step"] + 1
        assert r["sched/requests_paused"] == 0 or not decode_during_update  # disaggregated: nothing is aborted
    assert sum(r["engine/decode_rows"] for r in records) > 0
    groups = json.loads((run_dir / "summary.json").read_text())["groups"]
    assert groups["entered"] == groups["trained"] + groups["in_flight_at_end"] == sum(
        r["sched/groups_started"] for r in records)
    assert groups["trained"] == sum(r["rollout/trajectories"] for r in records) // 3  # the steps' records agree


def test_a_replica_killed_during_training_is_failed_over_and_every_trajectory_trained(train_config, tmp_path):
    proc = subprocess.Popen([*VLRL, "train", str(train_config), *TRAIN_ON_RAY, "steps=4", "rollout.prompts_per_step=4",
                             "rollout.max_new_tokens=48"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    metrics = tmp_path / "runs" / "latest" / "metrics.jsonl"
    deadline = time.monotonic() + 600
    while not (metrics.exists() and metrics.read_text().strip()):  # step 0 is done: step 1's rollout begins
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.stdout else ""
        time.sleep(0.02)
    replicas = [p for p in psutil.Process(proc.pid).children(recursive=True)
                if "EngineReplica" in " ".join(p.cmdline())]
    assert len(replicas) == 2
    replicas[0].kill()
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    assert "engine replica" in out and "is lost" in out
    records = records_of((tmp_path / "runs" / "latest").resolve())
    assert [r["step"] for r in records] == [0, 1, 2, 3]
    assert all(r["rollout/trajectories"] == 12 and not r["rollout/dropped"] for r in records)  # every one trained
    assert sum(r["engine/replica_losses"] for r in records) == 1
    assert sum(r["engine/replica_failovers"] for r in records) >= 1
    assert sum(r["engine/replica_restarts"] for r in records) <= 1


@pytest.mark.vllm
def test_vllm_replicas_sample_spread_and_take_new_weights(run, ray_cluster, tiny_dir, tokenizer, vision,
                                                          trainer_model):
    from vlrl.distributed import open_engine

    cfg = EngineConfig(kind="vllm", replicas=2, replica_resources=HALF_CPU, kv_cache_gib=1)
    router = run(open_engine(ModelConfig(str(tiny_dir)), cfg, RAY))
    try:
        state = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v
                 for k, v in trainer_model.state_dict().items()}
        run(router.update_weights(state, 3))
        prompt = tokenizer("Which bar is the highest?")["input_ids"]
        outs = run(together(*(router.complete(prompt, [], no_eos(router), f"v{i}/t0") for i in range(6))))
        assert router.take_stats()["replica_1_requests"] > 0
        model = type(trainer_model)(trainer_model.config).eval()
        model.load_state_dict(state)
        for out in outs:
            assert len(out.token_ids) == 48 and set(out.versions) == {3}
            full = sequence_logprobs(model, vision, [(prompt + list(out.token_ids), [])])[0].logprobs[len(prompt) - 1:]
            assert (full - torch.tensor(out.logprobs)).abs().max() < 1e-2
    finally:
        run(router.close())


def handmade_items(tokenizer, n: int = 6, vision=None) -> list:
    """Trajectories of different lengths (a prompt and a policy turn) with advantages of both signs; with
    ``vision``, every third prompt shows a chart."""
    from vlrl.demo import bar_chart, question_prompt
    from vlrl.trainer.batches import TrainItem
    from vlrl.types import Segment, Trajectory

    items = []
    for i in range(n):
        question = f"Question {i}: which bar is the highest?"
        chart = bar_chart([3.0, 7.0, 1.0 + i]) if vision is not None and i % 3 == 0 else None
        prompt = Segment("prompt", tuple(question_prompt(tokenizer, vision, question, chart)), images=(chart,)) \
            if chart is not None else Segment("prompt", tuple(tokenizer(question)["input_ids"]))
        answer = tuple(tokenizer(" The answer is bar " + "ABCDEF"[i % 6] * (1 + 3 * i))["input_ids"])
        policy = Segment("policy", answer, logprobs=(-1.0,) * len(answer), versions=(0,) * len(answer))
        items.append(TrainItem(Trajectory(f"t{i}", f"s{i}", [prompt, policy]), (-1.0) ** i * (0.5 + 0.1 * i)))
    return items


def new_trainer(tiny_dir, vision, **optim):
    from transformers import AutoModelForImageTextToText

    from vlrl.algos.losses import ClippedSurrogate
    from vlrl.config import LossConfig, OptimConfig
    from vlrl.trainer.policy import PolicyTrainer

    model = AutoModelForImageTextToText.from_pretrained(tiny_dir, dtype=torch.float32)
    return PolicyTrainer(model, vision, OptimConfig(lr=1e-3, **optim), ClippedSurrogate(LossConfig()), total_steps=10)


def start_ranks(run, tiny_dir, vision, strategy: str = "dp", **optim):
    """Rank 0 here and rank 1 in a Ray actor, joined in a gloo process group; yields (rank 0, the ranks)."""
    from vlrl.distributed.ranks import RemoteRanks
    from vlrl.worker_thread import WorkerThread

    trainer, compute = new_trainer(tiny_dir, vision, **optim), WorkerThread("rank-0")
    cfg = DistributedConfig(backend="ray", world_size=2, rank_resources=HALF_CPU, collective_timeout_s=60,
                            strategy=strategy)
    ranks = run(RemoteRanks.start(trainer, tiny_dir, cfg, compute))
    yield trainer, ranks
    ranks.close()
    compute.close()


@pytest.fixture
def two_ranks(run, ray_cluster, tiny_dir, vision):
    yield from start_ranks(run, tiny_dir, vision)


@pytest.fixture
def sharded_ranks(run, ray_cluster, tiny_dir, vision):
    """Two ranks that shard the model; one trajectory per micro-batch, so the ranks' counts differ."""
    yield from start_ranks(run, tiny_dir, vision, "fsdp", micro_batch_tokens=1)


def test_data_parallel_steps_equal_one_process_and_keep_the_ranks_equal(two_ranks, tiny_dir, vision, tokenizer):
    trainer, ranks = two_ranks
    single = new_trainer(tiny_dir, vision)
    items = handmade_items(tokenizer)
    for _ in range(2):
        alone, shared = single.step(items), trainer.step(items)
        assert shared["policy_tokens"] == alone["policy_tokens"]  # figures summed over the ranks
        for key in ("loss", "grad_norm", "entropy", "ratio"):
            assert shared[key] == pytest.approx(alone[key], rel=1e-5, abs=1e-7), key
    imitated = [single.imitate([it.trajectory for it in items]), trainer.imitate([it.trajectory for it in items])]
    assert imitated[1]["sft_loss"] == pytest.approx(imitated[0]["sft_loss"], rel=1e-5)
    mine, (theirs,) = trainer.model.state_dict(), ranks.weights()
    for name, tensor in single.model.state_dict().items():
        # as one process, up to the order of the sums: Adam divides by sqrt(v), which turns gradient differences
        # of ~1e-7 into weight differences of ~1e-5 where v is small; 1e-4 is a tenth of one step at lr 1e-3
        assert torch.allclose(mine[name], tensor, atol=1e-4), name
        assert torch.equal(theirs[name], mine[name]), name  # the ranks took the very same steps


def test_sharded_ranks_train_as_one_process_and_gather_the_whole_state(sharded_ranks, tiny_dir, vision, tokenizer,
                                                                       tmp_path):
    from vlrl.recipes.checkpoint import RunState, load_checkpoint, save_checkpoint

    trainer, ranks = sharded_ranks
    single = new_trainer(tiny_dir, vision, micro_batch_tokens=1)
    whole = single.model.state_dict()
    layer, tower = "model.language_model.layers.0.mlp.up_proj.weight", "model.visual.patch_embed.proj.weight"
    (theirs,) = ranks.weights()  # each rank keeps half of a layer, and the whole vision tower
    assert trainer.model.state_dict()[layer].to_local().shape[0] == theirs[layer].shape[0] == len(whole[layer]) // 2
    assert torch.equal(theirs[tower], whole[tower])
    items = handmade_items(tokenizer, n=5, vision=vision)  # 3 micro-batches on one rank, 2 on the other
    for _ in range(2):
        alone, shared = single.step(items), trainer.step(items)
        assert shared["policy_tokens"] == alone["policy_tokens"]
        for key in ("loss", "entropy", "ratio"):
            assert shared[key] == pytest.approx(alone[key], rel=1e-5, abs=1e-7), key
        # the norm of whole gradients vs the sum over slices: torch's float32 norm on CPU is good to ~1e-5
        assert shared["grad_norm"] == pytest.approx(alone["grad_norm"], rel=1e-4)
    imitated = [single.imitate([it.trajectory for it in items]), trainer.imitate([it.trajectory for it in items])]
    assert imitated[1]["sft_loss"] == pytest.approx(imitated[0]["sft_loss"], rel=1e-5)
    for alone, shared in zip(single.logprobs(items), trainer.logprobs(items), strict=True):
        assert torch.allclose(shared, alone, atol=1e-4)
    gathered, state = trainer.weights(), trainer.optimizer_state()
    assert all(not hasattr(v, "to_local") for v in gathered.values())
    for name, tensor in single.model.state_dict().items():
        assert torch.allclose(gathered[name], tensor, atol=1e-4), name  # the tolerance: see the test above
    expected = single.optimizer.state_dict()
    assert state["param_groups"] == expected["param_groups"] and state["state"].keys() == expected["state"].keys()
    for index, moments in expected["state"].items():
        assert torch.equal(state["state"][index]["step"], moments["step"])
        scale = float(moments["exp_avg"].abs().max())  # the gradients of weights that differ by ~1e-5 (above)
        assert torch.allclose(state["state"][index]["exp_avg"], moments["exp_avg"], rtol=1e-3, atol=1e-3 * scale), index
    # a sharded run's checkpoint is a whole model and optimizer that one process resumes
    save_checkpoint(tmp_path / "step-3", trainer, RunState(step=3), tiny_dir)
    resumed = new_trainer(tiny_dir, vision)
    load_checkpoint(tmp_path / "step-3", resumed)
    for name, tensor in resumed.model.state_dict().items():
        assert torch.equal(tensor, gathered[name]), name
    for index, moments in resumed.optimizer.state_dict()["state"].items():
        assert torch.equal(moments["exp_avg_sq"], state["state"][index]["exp_avg_sq"]), index


def test_a_lost_trainer_rank_ends_the_step_naming_it(two_ranks, tokenizer):
    from vlrl.distributed import TrainerRankLost

    trainer, ranks = two_ranks
    os.kill(ranks.pids[0], signal.SIGKILL)
    with pytest.raises(TrainerRankLost, match=rf"trainer rank 1 \(pid {ranks.pids[0]}\) died during the step"):
        trainer.step(handmade_items(tokenizer))


@pytest.fixture
def warm_config(train_config, tmp_path, tiny_dir):
    """A warm start on a teacher's tool-using traces, then GRPO with KL and two epochs per rollout."""
    path = tmp_path / "warm.yaml"
    path.write_text(textwrap.dedent(f"""
        name: warm
        model: {{path: {tiny_dir}}}
        env: {{max_turns: 2, action_formats: [code], sandbox: {{workers: 2}}}}
        task: {{name: synthetic_tables, args: {{difficulty: easy, families: [extrema, comparison]}},
                reward: "{tmp_path / 'reward.py'}:distinct_characters"}}
        rollout: {{prompts_per_step: 2, group_size: 3, max_new_tokens: 12}}
        algo: {{epochs: 2, loss: {{kl_coef: 0.05}}}}
        warmstart: {{agent: teacher, agent_args: {{p_tool: 1.0, p_correct: 0.5}}, samples: 12, steps: 3,
                    batch_size: 5}}
        steps: 3
        checkpoint_every: 1
        log: {{dir: {tmp_path / 'runs'}, progress: false, transcripts_every: 0}}
    """))
    return path


RANKS = ["distributed.world_size=2", "distributed.rank_resources={CPU: 0.5}"]


def test_two_replicas_and_two_ranks_train_as_one_process(warm_config, tmp_path):
    """Data parallel and fully sharded ranks, each with two replicas, against one process."""
    runs = {}
    for name, overrides in (("single", []), ("dp", [*TRAIN_ON_RAY[:3], *RANKS]),
                            ("fsdp", [*TRAIN_ON_RAY[:3], *RANKS, "distributed.strategy=fsdp"])):
        vlrl("train", str(warm_config), *overrides, f"name={name}")
        runs[name] = (tmp_path / "runs" / "latest").resolve()
    one = records_of(runs["single"])
    final = load_file(runs["single"] / "checkpoints" / "step-3" / "model" / "model.safetensors")
    warm = [r["warmstart/loss"] for r in records_of(runs["single"], "warmstart.jsonl")]
    for name in ("dp", "fsdp"):
        two = records_of(runs[name])
        assert [r["reward/mean"] for r in two] == [r["reward/mean"] for r in one]  # sampled as one engine did
        assert all(r["engine/replica_0_requests"] > 0 and r["engine/replica_1_requests"] > 0 for r in two)
        for a, b in zip(one, two):
            for key in ("loss/policy", "loss/kl", "loss/grad_norm", "loss/entropy", "loss/policy_tokens"):
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-7), (name, key)
        assert [r["warmstart/loss"] for r in records_of(runs[name], "warmstart.jsonl")] == pytest.approx(warm, rel=1e-5)
        theirs = load_file(runs[name] / "checkpoints" / "step-3" / "model" / "model.safetensors")
        assert all(torch.allclose(theirs[k], final[k], atol=1e-4) for k in final), name  # see the test above


def test_a_rank_killed_during_training_ends_the_step_and_the_run_resumes(train_config, tmp_path):
    proc = subprocess.Popen([*VLRL, "train", str(train_config), *TRAIN_ON_RAY[:3], *RANKS, "steps=4"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "runs" / "latest" / "metrics.jsonl"
    deadline = time.monotonic() + 600
    while not (metrics.exists() and metrics.read_text().strip()):  # RL step 0 is done and checkpointed
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    rank = next(p for p in psutil.Process(proc.pid).children(recursive=True)
                if "TrainerRank" in " ".join(p.cmdline()))
    rank.kill()
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert f"trainer rank 1 (pid {rank.pid}) died" in err and "resuming (1/1)" in err
    resumed = (tmp_path / "runs" / "latest").resolve()
    resume = yaml.safe_load((resumed / "config.yaml").read_text())["resume"]
    assert "/checkpoints/step-" in resume  # the second run started from the first one's checkpoint
    assert [r["step"] for r in records_of(resumed)] == [0, 1, 2, 3]


def same_numbers(a, b, path="") -> None:
    """``a`` and ``b`` equal, floats to 1e-5. Not compared: timings (keys "seconds" and "*_s") and the tokens a
    verification read anew ("verify_tokens": what one engine's cache held, another's did not)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            if key not in ("seconds", "verify_tokens") and not key.endswith("_s"):
                same_numbers(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            same_numbers(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert b == pytest.approx(a, abs=1e-5), path
    else:
        assert a == b, path


def test_eval_over_replicas_gives_the_single_engines_results(tmp_path, tiny_dir):
    common = ["configs/eval_quick.yaml", f"model.path={tiny_dir}", "questions=4", "samples=3", "judge.external=",
              "batch_questions=4", "transcripts=0", "task.args.charts.workers=1"]
    vlrl("eval", *common, f"out={tmp_path / 'one'}")
    vlrl("eval", *common, f"out={tmp_path / 'two'}", *TRAIN_ON_RAY[:3])
    one, two = ([json.loads(line) for line in (tmp_path / name / "results.jsonl").read_text().splitlines()]
                for name in ("one", "two"))
    assert len(one) == 4 and all(len(line["samples"]) == 3 for line in one)
    same_numbers(sorted(one, key=lambda r: r["index"]), sorted(two, key=lambda r: r["index"]))


def test_bench_scale_json(tiny_dir):
    out = vlrl("bench", "scale", "--quick", "--steps", "2", "--model", str(tiny_dir), "--json").stdout
    figures = json.loads(out.strip().splitlines()[-1])
    assert set(figures) == {"tokens_per_s_1", "tokens_per_s_2", "ray_overhead_ratio"}
    assert figures["tokens_per_s_1"] > 0 and figures["tokens_per_s_2"] > 0 and figures["ray_overhead_ratio"] > 0
    two = [line for line in out.splitlines() if line.startswith("  ray x2")]
    assert len(two) == 2 and all(" / " in line for line in two)  # both replicas served requests: "n / m"
