"""The figures of the GPU check (``scripts/gpu_check.sh`` runs the setup and the gpu tests first): on
one CUDA GPU, within the deadline it is given, the figures that say whether agentgym's learners and
rollouts work there, as one table:

1. a bf16 learner step for every learner on a 0.5B model: ``Qwen/Qwen2.5-0.5B-Instruct`` from the
   Hugging Face hub, or, where the hub cannot be reached, a randomly initialised Qwen2 of its shape
   (``random-0.5b``): seconds, tokens/s (the tokens the student and the teacher forwards process)
   and peak GPU memory;
2. HINT-SD vs dense SD seconds per learner step on the same batch (HINT-SD distils the selected
   steps of failed episodes only, dense SD every step: the learner-side part of HINT-SD's 2.26x);
3. an in-process vLLM CUDA rollout after a LoRA push, with the push verified (max |log-prob
   difference| between vLLM and the trainer on the probe);
4. the first update of ``--preset hint_sd_paper`` (``agentgym train``, vLLM rollouts when installed):
   Qwen3-4B-Instruct-2507, or the 0.5B hub model where the 4B cannot be downloaded in time;
5. a 2-update training run on BFCL v3 multi-turn (HINT-SD, reference hindsight): seconds/update.

``--cpu``: the dry run on CPU with the tiny model in float32 (every learner, the HINT-SD / dense
comparison and the BFCL run; the vLLM part and the paper preset are skipped with the reason), under a
minute; the test suite runs it. ``--out FILE`` also writes the rows as JSON; ``--record DIR`` writes
``rows.json`` and ``table.md`` there. ``GPU_CHECK_DEADLINE_S``: the seconds it may spend (checks
that no longer fit are skipped with the reason). The package never sets offline mode; this script
sets ``HF_HUB_OFFLINE=1`` for itself when the hub cannot be reached, and says so.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

LEARNERS = ["grpo", "dense_sd", "hint_sd", "serl", "gigpo"]
HUB_05B = "Qwen/Qwen2.5-0.5B-Instruct"
PAPER_4B = "Qwen/Qwen3-4B-Instruct-2507"
DEADLINE = time.monotonic() + float(os.environ.get("GPU_CHECK_DEADLINE_S", "1e9"))


def seconds_left() -> float:
    return DEADLINE - time.monotonic()


def hub_reachable(timeout: float = 5.0) -> bool:
    """Whether the Hugging Face endpoint answers a TCP connection within ``timeout`` seconds."""
    import socket
    from urllib.parse import urlparse
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
        return True
    except OSError:
        return False


def fetch_within(repo_id: str, seconds: float) -> str | None:
    """Download ``repo_id`` into the Hugging Face cache in a subprocess given ``seconds``; its local
    folder, or None (unreachable, gated, or not done in time: the partial download is kept)."""
    import subprocess
    if seconds <= 5:
        return None
    code = "from agentgym.agents.models import fetch_hub_model; print(fetch_hub_model(%r))" % repo_id
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=seconds)
    except subprocess.TimeoutExpired:
        return None
    return proc.stdout.strip().splitlines()[-1] if proc.returncode == 0 and proc.stdout.strip() else None
HINT = "The word is apple: answer with exactly that word."


class Check:
    """The table: one row per measurement, a status per row (ok / skipped / FAILED and why)."""

    def __init__(self, device: str):
        self.rows: list[dict[str, Any]] = []
        self.device = device

    def run(self, name: str, model: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            row = {"check": name, "model": model, "status": "ok", **fn()}
        except Skip as exc:
            row = {"check": name, "model": model, "status": "skipped", "note": str(exc)}
        except Exception as exc:  # a failed check is a row of the table, the next check still runs
            traceback.print_exc(file=sys.stderr)
            row = {"check": name, "model": model, "status": "FAILED", "note": f"{type(exc).__name__}: {exc}"[:160]}
        row["wall_s"] = round(time.perf_counter() - started, 2)
        self.rows.append(row)
        print(f"[gpu_check] {name} / {model}: {row['status']} ({row['wall_s']} s)", file=sys.stderr, flush=True)
        return row

    def table(self) -> str:
        cols = ["check", "model", "status", "seconds", "tokens_per_s", "peak_mem_gb", "value", "note"]
        cells = [[_fmt(r.get(c)) for c in cols] for r in self.rows]
        widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
        line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"  # noqa: E731
        out = [line(cols), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
        out += [line(row) for row in cells]
        return "\n".join(out)


class Skip(Exception):
    """This check cannot run here; the message says why."""


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


# ------------------------------------------------------------------------------------------ batches
def _batch(tokenizer, context_tokens: int, dense: bool):
    """Echo-env episodes (two successes, two 3-step failures) of scripted actions, recorded through
    the normal rollout path, with ``context_tokens`` of filler put in front of every step's prompt
    (the multi-turn contexts of the real benchmarks are long), and hinted targets: every step
    (``dense``) or the first step of each failed episode (HINT-SD's selection)."""
    from agentgym.agents.scripted import ScriptedPolicy, by_turn
    from agentgym.learners import Batch
    from agentgym.rollout import rollout
    from agentgym.types import Target
    trajs = []
    for answers in (["apple"], ["apple"], ["pear", "plum", "kiwi"], ["plum", "pear", "fig"]):
        [t] = rollout(ScriptedPolicy(by_turn(answers, default=answers[-1]), tokenizer), "agentgym/Echo-v0",
                      [{"word": "apple"}], progress=False)
        trajs.append(t.model_copy(update={"group_id": "g"}))
    filler = tokenizer.encode(" the file folder list move copy search find open close read write", add_special_tokens=False)
    pad = (filler * (context_tokens // max(1, len(filler)) + 1))[:context_tokens]
    for t in trajs:
        for s in t.steps:
            s.prompt_ids = pad + list(s.prompt_ids)
    targets = [[Target(step=s.index, span=(0, len(s.action_ids)), hint=HINT) for s in t.steps
                if dense or (not t.success and s.index == 0)] for t in trajs]
    return Batch(trajs, targets)


def _load(name: str, device, dtype, lora: bool = True):
    import peft
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from agentgym.agents.models import resolve_model
    source = resolve_model(name)
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(source.path)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model = source.build().to(dtype) if source.build is not None else \
        AutoModelForCausalLM.from_pretrained(source.path, dtype=dtype)
    if lora:
        model = peft.get_peft_model(model, peft.LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
    return model.to(device), tok, source


def _peak_gb(device) -> float | None:
    import torch
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return None


def _reset_peak(device) -> None:
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def learner_step(name: str, model_name: str, device, dtype, context_tokens: int, *, dense_targets: bool | None = None
                 ) -> dict[str, Any]:
    """One timed update of learner ``name`` on the Echo batch (after a warm-up one on CUDA)."""
    import torch

    from agentgym.learners import make_learner
    model, tok, _ = _load(model_name, device, dtype)
    settings = {"lr": 1e-5, "token_budget": 16384}
    if name in ("dense_sd", "hint_sd"):
        settings["topk"] = 100
    learner = make_learner(name, model, tok, settings)
    dense = (name != "hint_sd") if dense_targets is None else dense_targets
    batch = _batch(tok, context_tokens, dense=dense)
    if device.type == "cuda":
        learner.update(batch)  # warm-up: kernels, allocator, lazy init
    _reset_peak(device)
    started = time.perf_counter()
    metrics = learner.update(batch)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    student = sum(len(s.prompt_ids) + len(s.action_ids) for t in batch.trajectories for s in t.steps)
    tokens = student + metrics.get("teacher_tokens", 0.0)
    out = {"seconds": seconds, "tokens_per_s": tokens / seconds, "peak_mem_gb": _peak_gb(device),
           "value": f"loss {metrics['loss']:.4g}", "note": f"{int(tokens)} tokens (teacher {int(metrics.get('teacher_tokens', 0))})"}
    if not (metrics["loss"] == metrics["loss"]) or metrics["skipped_nonfinite"]:
        raise RuntimeError(f"non-finite loss {metrics['loss']}")
    del learner, model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def sd_ratio(model_name: str, device, dtype, context_tokens: int) -> dict[str, Any]:
    """HINT-SD vs dense SD seconds per step, the same episodes (targets as each learner selects)."""
    hint = learner_step("hint_sd", model_name, device, dtype, context_tokens, dense_targets=False)
    dense = learner_step("dense_sd", model_name, device, dtype, context_tokens, dense_targets=True)
    ratio = dense["seconds"] / hint["seconds"]
    return {"seconds": hint["seconds"], "value": f"dense/hint {ratio:.2f}x",
            "note": f"hint_sd {hint['seconds']:.3f} s, dense_sd {dense['seconds']:.3f} s per learner step "
                    f"(learner side only; dense SD's per-step judge calls come on top)"}


def vllm_rollout(model_name: str, device) -> dict[str, Any]:
    """An in-process vLLM engine with LoRA: push the trained adapter, verify it, roll out."""
    import importlib.util
    if device.type != "cuda":
        raise Skip("--cpu: the vLLM CUDA rollout needs a GPU (the CPU engine is tested by the vllm marker)")
    if importlib.util.find_spec("vllm") is None:
        raise Skip("vllm is not installed (./setup.sh --gpu installs the vllm extra)")
    import torch

    from agentgym.agents import SamplingParams, TransformersPolicy, VLLMPolicy
    from agentgym.learners import make_learner
    from agentgym.rollout import RolloutRunner
    model, tok, source = _load(model_name, device, torch.bfloat16)
    learner = make_learner("hint_sd", model, tok, {"lr": 1e-4})
    learner.update(_batch(tok, 64, dense=False))  # the adapter differs from the base: the push matters
    student = TransformersPolicy(learner.unwrapped, tok, device=str(device), dtype=torch.bfloat16, trainable=True)
    engine = VLLMPolicy(source.path, tokenizer=tok, enable_lora=True, max_lora_rank=64, dtype="bfloat16",
                        gpu_memory_utilization=0.3, max_model_len=8192)
    try:
        started = time.perf_counter()
        diff = engine.push_weights(student)
        push = time.perf_counter() - started
        started = time.perf_counter()
        trajs = RolloutRunner(engine, "agentgym/Echo-v0", [{"word": "apple"}], group_size=8,
                              sampling=SamplingParams(temperature=1.0, max_new_tokens=64, seed=0),
                              progress=False, run_id="gpu-check").run()
        seconds = time.perf_counter() - started
    finally:
        engine.close()
    tokens = sum(len(s.action_ids) for t in trajs for s in t.steps)
    return {"seconds": seconds, "tokens_per_s": tokens / seconds, "peak_mem_gb": _peak_gb(device),
            "value": f"push verified, max |dlogp| {diff:.3g}",
            "note": f"LoRA push {push:.2f} s; {len(trajs)} episodes, {tokens} generated tokens"}


def bfcl_run(model_name: str, device, cpu: bool) -> dict[str, Any]:
    """``agentgym train`` (the demo preset: HINT-SD, BFCL v3 multi-turn, reference hindsight) for 2 updates."""
    from agentgym.train import Trainer, cli_config
    run_dir = tempfile.mkdtemp(prefix="agentgym-gpu-check-")
    argv = ["--model.name", model_name, "--train.updates", "2", "--train.run_dir", run_dir,
            "--train.progress", "false", "--train.tensorboard", "false", "--env.eval_tasks", "0",
            "--env.eval_task_ids", "[]",
            "--model.device", "cpu" if cpu else "cuda"]
    if cpu:
        argv += ["--rollout.max_new_tokens", "8", "--env.group_size", "2"]
    cfg, _, _ = cli_config(argv)
    started = time.perf_counter()
    summary = Trainer(cfg).run()
    seconds = time.perf_counter() - started
    records = [json.loads(line) for line in Path(run_dir, "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r.get("phase") == "train"]
    if len(train) != 2:
        raise RuntimeError(f"expected 2 train records, got {len(train)}")
    return {"seconds": summary["seconds_per_update"], "peak_mem_gb": _peak_gb(device),
            "value": f"loss {train[-1]['loss']:.4g}, targets {sum(r['num_targets'] for r in train)}",
            "note": f"2 updates in {seconds:.1f} s (run folder {run_dir})"}


def paper_first_update(model_name: str | None, note: str, device, cpu: bool) -> dict[str, Any]:
    """``agentgym train --preset hint_sd_paper`` for one update (no evaluation), in a subprocess with
    what is left of the deadline: seconds of the update, targets, loss, and whether it carried a gradient."""
    import importlib.util
    import subprocess
    if cpu:
        raise Skip("--cpu: the paper preset (a 4B model, 1024-token actions, 8 episodes of up to 20 steps) needs a GPU")
    if model_name is None:
        raise Skip(note)
    left = seconds_left() - 20
    if left < 60:
        raise Skip(f"{left:.0f} s left of the deadline")
    run_dir = tempfile.mkdtemp(prefix="agentgym-paper-")
    argv = [sys.executable, "-m", "agentgym.cli", "train", "--preset", "hint_sd_paper", "--model.name", model_name,
            "--train.updates", "1", "--env.eval_tasks", "0", "--train.run_dir", run_dir, "--train.progress", "false",
            "--train.max_no_gradient_fraction", "1", "--train.tensorboard", "false"]
    if importlib.util.find_spec("vllm") is not None:
        argv += ["--rollout.backend", "vllm", "--rollout.vllm.gpu_memory_utilization", "0.5"]
    started = time.perf_counter()
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=left)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"the first update did not finish in {left:.0f} s (run folder {run_dir})") from None
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1][:200] if proc.stderr.strip() else f"exit {proc.returncode}")
    records = [json.loads(line) for line in Path(run_dir, "metrics.jsonl").read_text().splitlines()]
    [train] = [r for r in records if r.get("phase") == "train"]
    tokens = train.get("action_tokens", 0.0)
    return {"seconds": train["seconds"], "tokens_per_s": tokens / train["seconds"] if train["seconds"] else None,
            "value": f"loss {train['loss']:.4g}, targets {train['num_targets']}, no_gradient {train.get('no_gradient')}",
            "note": f"{note}; rollout {'vllm' if '--rollout.backend' in argv else 'transformers'}; feedback "
                    f"{train.get('feedback_seconds', 0):.1f} s; process {seconds:.0f} s with model load"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="dry run on CPU with the tiny model (no vLLM part)")
    parser.add_argument("--out", default=None, help="also write the rows as JSON to this file")
    parser.add_argument("--record", default=None, help="a folder to write rows.json and table.md into")
    parser.add_argument("--context-tokens", type=int, default=None,
                        help="filler tokens before each step's prompt (default: 1024 on GPU, 32 with --cpu)")
    args = parser.parse_args(argv)

    import torch

    import agentgym  # noqa: F401  (registers the envs)
    if args.cpu:
        device, dtype, models = torch.device("cpu"), torch.float32, ["tiny"]
        torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    else:
        if not torch.cuda.is_available():
            print("gpu_check: no CUDA device (torch " + torch.__version__ + "); run with --cpu for the dry run, "
                  "or install the GPU stack with ./setup.sh --gpu", file=sys.stderr)
            return 2
        device, dtype = torch.device("cuda"), torch.bfloat16
        online = hub_reachable()
        if not online:
            os.environ["HF_HUB_OFFLINE"] = "1"  # this script's own choice: nothing to wait for
            print("gpu_check: the Hugging Face hub is not reachable: HF_HUB_OFFLINE=1 for this check", file=sys.stderr)
        local_05b = fetch_within(HUB_05B, min(180.0, seconds_left() / 3))
        models = [HUB_05B] if local_05b else ["random-0.5b"]
    context = args.context_tokens if args.context_tokens is not None else (32 if args.cpu else 1024)
    where = "cpu (dry run)" if args.cpu else torch.cuda.get_device_name(device)
    check = Check(where)
    started = time.perf_counter()
    for model in models:
        for name in LEARNERS:
            check.run(f"learner step {name}", model, lambda: learner_step(name, model, device, dtype, context))
    check.run("hint_sd vs dense_sd", models[0], lambda: sd_ratio(models[0], device, dtype, context))
    served = models[0] if models[0] == HUB_05B else "smollm2"  # vLLM needs a model folder, not a random init
    check.run("vllm rollout + LoRA push", served, lambda: vllm_rollout(served, device))
    paper, why = None, "--cpu"
    if not args.cpu:
        paper = PAPER_4B if fetch_within(PAPER_4B, min(240.0, seconds_left() - 200)) else \
            (HUB_05B if models[0] == HUB_05B else None)
        why = (f"{PAPER_4B}" if paper == PAPER_4B else
               f"{PAPER_4B} could not be downloaded in time: {HUB_05B} instead" if paper else
               "no hub model could be downloaded (hub unreachable): the paper preset needs one")
    check.run("hint_sd_paper first update", paper or PAPER_4B, lambda: paper_first_update(paper, why, device, args.cpu))

    def bfcl() -> dict[str, Any]:
        if not args.cpu and seconds_left() < 90:
            raise Skip(f"{seconds_left():.0f} s left of the deadline")
        return bfcl_run(models[0], device, args.cpu)
    check.run("bfcl 2-update run", models[0], bfcl)
    total = time.perf_counter() - started
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    print(f"\nagentgym gpu_check on {where}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, torch "
          f"{torch.__version__}, dtype {str(dtype).replace('torch.', '')}, context +{context} tokens, "
          f"{total:.1f} s total, peak process RSS {peak_rss:.2f} GiB")
    print(check.table())
    rows = json.dumps({"device": where, "seconds": total, "torch": torch.__version__, "rows": check.rows}, indent=2)
    if args.out:
        Path(args.out).write_text(rows)
    if args.record:
        Path(args.record).mkdir(parents=True, exist_ok=True)
        Path(args.record, "rows.json").write_text(rows)
        Path(args.record, "table.md").write_text(check.table() + "\n")
    return 1 if any(r["status"] == "FAILED" for r in check.rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
