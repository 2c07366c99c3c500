"""RewardModel: a causal-LM backbone (optionally with LoRA) plus a scalar reward head.

r(x, y) = wᵀ h_T, where h_T is the backbone's last hidden state at the last non-padding token of
prompt + response. The LM head is left in place and usable.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import save_file
from torch.utils.checkpoint import checkpoint
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from .backbones import config_digest, load_backbone, model_files, resolve_device, resolve_model_name, score_head, set_attention
from .bayes import Posterior, reward_moments
from .bayes.predict import evaluating
from .config import ComputeConfig, ModelConfig
from .data.encode import PROGRESS_MIN_BATCHES, Encoded, Encoder, as_messages
from .data.load import Message
from .errors import UserError
from .files import atomic_path, explain_load_error, load_tensors, read_json
from .losses import implicit_reward
from .packing import Packed, pack, plan_batches, prompt_segments
from .scores import RewardScores

FORMAT_VERSION = 1
CONFIG_FILE = "rewardstack.json"
LOGPROB_CHUNK = 512  # response positions per LM-head chunk


class RewardModel(torch.nn.Module):
    def __init__(self, backbone: torch.nn.Module, tokenizer, config: ModelConfig, training: dict | None = None):
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.config = config
        self.training_config = training or {}
        self.head = torch.nn.Linear(backbone.config.hidden_size, 1, bias=False)
        torch.nn.init.zeros_(self.head.weight)
        self.encoder = Encoder(tokenizer, config.max_length, config.max_prompt_length)
        self.posterior = None  # a bayes.Posterior once fitted: score() then gives each reward a std
        self.backbone_is_base = False  # True: the backbone is config.model untouched, so save() does not copy it
        self._cache: dict[str, Any] = {}  # lazily loaded helpers (the reference model), not saved
        self.compute = ComputeConfig()  # how forward passes run; set with use()

    @classmethod
    def create(cls, config: ModelConfig) -> "RewardModel":
        """A fresh reward model: the backbone with LoRA adapters (or all weights trainable) and a head that
        is zero, or, for a sequence-classification reward model, its trained `score` head. A local backbone
        folder is recorded by its absolute path."""
        config = replace(config, model=resolve_model_name(config.model))
        score, has_lm_head = score_head(config.model)
        if config.objective != "bt" and not has_lm_head and not _tied_embeddings(config.model):
            raise UserError(f"{config.model}: a sequence classifier without an LM head cannot train the {config.objective} objective (it needs "
                            "log-probabilities): use --objective bt")
        backbone, tokenizer = load_backbone(config.model)
        if config.lora_r > 0:
            targets = config.lora_target_modules
            lora = LoraConfig(
                r=config.lora_r,
                lora_alpha=config.lora_alpha,
                lora_dropout=config.lora_dropout,
                target_modules=targets if targets == "all-linear" else [t.strip() for t in targets.split(",")],
            )
            backbone = get_peft_model(backbone, lora)
        model = cls(backbone, tokenizer, config)
        if score is not None:
            model.head.weight.data.copy_(score)
        model.head.requires_grad_(config.objective != "dpo")  # dpo rewards come from the LM head alone
        return model

    @classmethod
    def from_sequence_classifier(cls, name: str, max_length: int | None = None) -> "RewardModel":
        """A Hugging Face sequence-classification reward model (folder or Hub id) as a RewardModel with its
        own weights untouched and its `score` as the head, e.g. to give it a head posterior; saving it
        writes the head and a reference to `name`, not a copy of the weights."""
        from transformers import AutoConfig

        folder = model_files(name)
        if folder is None:
            raise UserError(f"{name}: not a local folder or cached Hugging Face model")
        limit = getattr(AutoConfig.from_pretrained(folder).get_text_config(), "max_position_embeddings", None) or 4096
        model = cls.create(ModelConfig(model=name, max_length=max_length or min(limit, 4096), lora_r=0))
        model.backbone_is_base = True
        return model

    def enable_gradient_checkpointing(self) -> None:
        """Recompute each decoder layer's activations in the backward pass instead of keeping them:
        activation memory O(layers) smaller for about one more forward pass of compute."""
        lm = self._base_lm()
        if hasattr(lm, "activation_checkpointing_enable"):  # the name from Transformers 5.x on
            lm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    @property
    def decoder(self) -> torch.nn.Module:
        """The transformer body without the LM head (LoRA layers included)."""
        return self._base_lm().get_decoder()

    def use(self, compute: ComputeConfig) -> "RewardModel":
        """Run forward passes as `compute` says: on its device (the posterior goes along), with its
        attention kernel, prompt sharing, packing and autocast."""
        self.compute = compute
        set_attention(self._base_lm(), compute.attn_implementation)
        self.to(resolve_device(compute.device))
        if self.posterior is not None:
            self.posterior.to(self.head.weight.device)
        return self

    def forward(self, packed: Packed, logprobs: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Rewards of the packed sequences, shape (members,) in `packed.indices` order; with `logprobs`,
        also their response log-probabilities log π(y|x) from the same backbone pass. The reward head
        and the log-probabilities compute in float32 under any autocast."""
        mask = packed.attention_mask(self._base_lm().config._attn_implementation)
        hidden = self.decoder(input_ids=packed.input_ids, attention_mask=mask, position_ids=packed.position_ids, use_cache=False).last_hidden_state
        flat = hidden.flatten(0, 1)
        with torch.autocast(flat.device.type, enabled=False):
            rewards = self.head(flat[packed.last].to(self.head.weight.dtype)).squeeze(-1)
            if not logprobs:
                return rewards
            return rewards, self.response_logprobs(flat, packed)

    def response_logprobs(self, flat_hidden: torch.Tensor, packed: Packed, chunk_size: int = LOGPROB_CHUNK) -> torch.Tensor:
        """log π(y|x) = Σ_t log p(y_t | x, y_<t) over response tokens only. The LM head and log-softmax run
        on the positions that predict response tokens, `chunk_size` rows at a time, recomputed in the
        backward pass, so memory stays near chunk_size × vocabulary whatever the response length."""
        lm_head = self._base_lm().get_output_embeddings()
        states, targets = flat_hidden[packed.response_state].to(lm_head.weight.dtype), packed.response_target
        parts = [
            checkpoint(_token_logprobs, lm_head, states[i : i + chunk_size], targets[i : i + chunk_size], use_reentrant=False)
            for i in range(0, len(targets), chunk_size)
        ]
        token_logps = torch.cat(parts) if parts else flat_hidden.new_zeros(0, dtype=lm_head.weight.dtype)
        return token_logps.new_zeros(len(packed.indices)).index_add(0, packed.response_owner, token_logps)

    @property
    def _no_split_modules(self) -> list[str]:
        """The backbone's decoder layer classes: accelerate's FSDP auto-wrap shards each such layer apart."""
        return list(getattr(self._base_lm(), "_no_split_modules", None) or [])

    def _base_lm(self) -> torch.nn.Module:
        return self.backbone.get_base_model() if isinstance(self.backbone, PeftModel) else self.backbone

    @torch.no_grad()
    def rewards(self, sequences: Sequence[Encoded], batch_size: int = 16, ref_cache_dir: str | Path | None = None) -> np.ndarray:
        """Rewards of encoded sequences in input order: the head's, or for a dpo model the implicit reward
        (log π_ref kept in `ref_cache_dir` when given)."""
        if self.config.objective == "dpo":
            return self.implicit_rewards(sequences, batch_size, ref_cache_dir=ref_cache_dir)
        return self._batched(sequences, batch_size, lambda packed: self(packed))

    @torch.no_grad()
    def head_rewards_and_logprobs(self, sequences: Sequence[Encoded], batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
        """The head's reward and log π(y|x) of each sequence, from one backbone pass."""
        both = self._batched(sequences, batch_size, lambda packed: torch.stack(self(packed, logprobs=True), dim=1))
        return both[:, 0], both[:, 1]

    @torch.no_grad()
    def implicit_rewards(
        self,
        sequences: Sequence[Encoded],
        batch_size: int = 16,
        logps: np.ndarray | None = None,
        ref_cache_dir: str | Path | None = None,
    ) -> np.ndarray:
        """β·(log π(y|x) − log π_ref(y|x)), or β·log π(y|x)/|y| for simpo (see losses.implicit_reward).
        `logps` skips the policy pass when log π is already known; log π_ref is read from or stored in
        `ref_cache_dir` (see cached_reference_logprobs)."""
        logps = torch.from_numpy(self.logprobs(sequences, batch_size) if logps is None else logps)
        lengths = torch.tensor([len(s.response_ids) for s in sequences], dtype=torch.float64)
        if self.config.policy_loss == "simpo":
            return implicit_reward(logps, None, self.config.beta, lengths).numpy()
        ref = cached_reference_logprobs(
            ref_cache_dir, self.config.model, sequences, lambda: self.logprobs(sequences, batch_size, reference=True)
        )
        return implicit_reward(logps, torch.from_numpy(ref), self.config.beta).numpy()

    @torch.no_grad()
    def logprobs(self, sequences: Sequence[Encoded], batch_size: int = 16, reference: bool = False) -> np.ndarray:
        """log π(y|x) of each sequence's response; `reference` uses the backbone as it was before training
        (LoRA disabled, or the base model reloaded after full fine-tuning)."""
        model = self._reference_model() if reference and not isinstance(self.backbone, PeftModel) else self
        context = self.backbone.disable_adapter() if reference and model is self else contextlib.nullcontext()
        with context:
            return model._batched(sequences, batch_size, lambda packed: model(packed, logprobs=True)[1])

    def _reference_model(self) -> "RewardModel":
        if "reference" not in self._cache:
            backbone, _ = load_backbone(self.config.model)
            self._cache["reference"] = RewardModel(backbone, self.tokenizer, self.config).use(self.compute).eval()
        return self._cache["reference"]

    def _batched(self, sequences: Sequence[Encoded], batch_size: int, compute) -> np.ndarray:
        """compute(packed) over forward passes of about `batch_size` sequences' worth of tokens (each
        prompt run once for all its responses with `share_prompts`), in input order."""
        if not sequences:
            return np.empty(0, dtype=np.float64)
        out = None  # shaped (sequences, *per-sequence shape) from the first batch
        device = self.head.weight.device
        segments = prompt_segments(sequences, self.compute.share_prompts)
        batches = plan_batches(sequences, segments, batch_size * max(len(s) for s in sequences))
        with evaluating(self), self.autocast():
            for batch in tqdm(batches, desc="score", leave=False, disable=len(batches) < PROGRESS_MIN_BATCHES):
                packed = pack(sequences, batch, self.tokenizer.pad_token_id, self.compute.pack_tokens)
                values = compute(packed.to(device)).double().cpu().numpy()
                if out is None:
                    out = np.empty((len(sequences),) + values.shape[1:], dtype=np.float64)
                out[packed.indices] = values
        return out

    def autocast(self):
        """bfloat16 autocast on the model's device when compute.bf16, else nothing."""
        return torch.autocast(self.head.weight.device.type, dtype=torch.bfloat16, enabled=self.compute.bf16)

    def score(
        self, prompts: Sequence[str | Sequence[Message]], responses: Sequence[str], batch_size: int = 16
    ) -> RewardScores:
        """Reward of each (prompt, response) row, with its standard deviation when the model has a Laplace
        posterior; `truncated` counts rows cut to max_length."""
        if len(prompts) != len(responses):
            raise UserError(f"score: {len(prompts)} prompts but {len(responses)} responses")
        sequences, truncated = [], 0
        for prompt, response in zip(prompts, responses):
            (encoded,), cut = self.encoder.encode(as_messages(prompt), [response])
            sequences.append(encoded)
            truncated += cut
        if self.posterior is not None:
            mean, var = reward_moments(self, sequences, batch_size)
            return RewardScores(mean=mean, std=np.sqrt(var), truncated=truncated)
        return RewardScores(mean=self.rewards(sequences, batch_size), truncated=truncated)

    def info(self) -> dict[str, Any]:
        """What a served model is, for clients: a local base model by its folder name alone."""
        base = Path(self.config.model).name if Path(self.config.model).is_absolute() else self.config.model
        return {"base_model": base, "objective": self.config.objective, "max_length": self.config.max_length, "posterior": self.posterior is not None}

    def trainable_parameters(self) -> dict[str, torch.nn.Parameter]:
        return {name: p for name, p in self.named_parameters() if p.requires_grad}

    def save(self, directory: str | Path) -> None:
        """Write weights (adapter or full backbone, and head) as safetensors, tokenizer and configs; the
        folder is written whole beside its place and then renamed into it."""
        with atomic_path(directory, directory=True) as folder:
            if isinstance(self.backbone, PeftModel):
                self.backbone.save_pretrained(folder / "adapter")
            elif not self.backbone_is_base:
                self.backbone.save_pretrained(folder / "backbone")
            save_file({"weight": self.head.weight.detach().cpu().contiguous()}, folder / "head.safetensors")
            self.tokenizer.save_pretrained(folder / "tokenizer")
            meta = {"format_version": FORMAT_VERSION, "model": asdict(self.config), "base_model_config": config_digest(self.config.model),
                    "backbone": "base" if self.backbone_is_base else "saved", "training": self.training_config}
            (folder / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
            if self.posterior is not None:
                self.posterior.save(folder)

    def export(self, directory: str | Path, card: str = "", keep_posterior: bool = False) -> None:
        """A standard Transformers folder other tools load: LoRA merged into the weights; for bt and haf
        models a sequence classifier (`AutoModelForSequenceClassification`, num_labels = 1, our head as its
        `score`), for a dpo model the causal LM (its implicit reward needs its reference, named in `card`);
        the tokenizer with its chat template, safetensors weights, and `card` as README.md. With
        `keep_posterior`, a head posterior (the one kind that merging leaves valid) and the files that let
        RewardModel.from_pretrained load the folder with it go beside."""
        from transformers import AutoModelForSequenceClassification

        if keep_posterior and (self.posterior is None or self.posterior.subset != "head" or self.config.objective == "dpo"):
            raise UserError("export --keep-posterior: needs a head posterior (rewardstack laplace --subset head); a posterior over LoRA "
                            "weights does not survive merging them")

        lm = copy.deepcopy(self.backbone)
        lm = lm.merge_and_unload() if isinstance(lm, PeftModel) else lm
        if self.config.objective == "dpo":
            exported = lm
        else:
            config = copy.deepcopy(lm.config)
            config.num_labels, config.id2label, config.label2id = 1, {0: "reward"}, {"reward": 0}
            config.pad_token_id = self.tokenizer.pad_token_id
            exported = AutoModelForSequenceClassification.from_config(config, dtype=torch.float32)
            getattr(exported, exported.base_model_prefix).load_state_dict(lm.get_decoder().state_dict())
            exported.score.weight.data.copy_(self.head.weight.data)
            exported.config.architectures = [type(exported).__name__]
        with atomic_path(directory, directory=True) as folder:
            exported.save_pretrained(folder)
            self.tokenizer.save_pretrained(folder)
            _readable_by_transformers_4(folder, self.tokenizer.chat_template)
            (folder / "README.md").write_text(card)
            if keep_posterior:
                self.posterior.save(folder)
                self.tokenizer.save_pretrained(folder / "tokenizer")
                save_file({"weight": self.head.weight.detach().cpu().contiguous()}, folder / "head.safetensors")
                meta = {"format_version": FORMAT_VERSION, "model": {**asdict(self.config), "lora_r": 0}, "backbone": "self", "training": self.training_config}
                (folder / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "RewardModel":
        """A model saved by `save`; a missing or damaged file is a UserError naming it."""
        directory = Path(directory)
        meta_path = directory / CONFIG_FILE
        if not meta_path.exists():
            raise UserError(f"{directory}: not a reward model directory (no {CONFIG_FILE})")
        meta = read_json(meta_path)
        if not isinstance(meta, dict) or not isinstance(meta.get("model"), dict):
            raise UserError(f"{meta_path}: no `model` settings in it")
        config = ModelConfig.from_dict(meta["model"])
        if meta.get("backbone") != "self":
            _check_base_model(config.model, meta.get("base_model_config"), meta_path)
        try:
            tokenizer = AutoTokenizer.from_pretrained(directory / "tokenizer", local_files_only=True)
        except Exception as err:  # tokenizers raise plain Exceptions for damaged files
            raise explain_load_error(directory / "tokenizer", "tokenizer", err) from None
        if meta.get("backbone") in ("base", "self"):  # a model's own weights with our head: the base (from_sequence_classifier) or this folder (export)
            backbone, _ = load_backbone(config.model if meta["backbone"] == "base" else str(directory))
        elif (directory / "adapter").exists():
            backbone, _ = load_backbone(config.model)
            try:
                backbone = PeftModel.from_pretrained(backbone, directory / "adapter", is_trainable=False)
            except Exception as err:  # peft and safetensors raise many types for damaged files
                raise explain_load_error(directory / "adapter", "LoRA adapter", err) from None
        else:
            try:
                backbone = AutoModelForCausalLM.from_pretrained(directory / "backbone", dtype=torch.float32, local_files_only=True, use_safetensors=True)
            except Exception as err:
                raise explain_load_error(directory / "backbone", "backbone", err) from None
        model = cls(backbone, tokenizer, config, meta.get("training"))
        model.backbone_is_base = meta.get("backbone") == "base"
        model.head.weight.data.copy_(load_tensors(directory / "head.safetensors")["weight"])
        trained = {name: p for name, p in model.named_parameters() if name.startswith("head.") or "lora_" in name}
        broken = next((name for name, p in trained.items() if not torch.isfinite(p).all()), None)
        if broken:
            raise UserError(f"{directory}: weight {broken} holds values that are not finite (a training run that diverged); train it again")
        model.posterior = Posterior.load(directory)
        return model.eval()


def _readable_by_transformers_4(folder: Path, chat_template: str | None) -> None:
    """Transformers 4 (still used by reward-bench and many RL stacks) misreads what Transformers 5 writes:
    it ignores `rope_parameters` (and would use the default RoPE base), cannot load a tokenizer named
    `TokenizersBackend`, adds token_type_ids that decoder models refuse, and may not read
    chat_template.jinja. Write the older fields beside the new ones; Transformers 5 reads either."""
    config = read_json(folder / "config.json")
    rope = config.get("rope_parameters")
    if isinstance(rope, dict) and "rope_theta" in rope:
        config.setdefault("rope_theta", rope["rope_theta"])
        if rope.get("rope_type", "default") != "default":
            config.setdefault("rope_scaling", {k: v for k, v in rope.items() if k != "rope_theta"})
    config.setdefault("torch_dtype", config.get("dtype", "float32"))
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    tokenizer = read_json(folder / "tokenizer_config.json")
    if tokenizer.get("tokenizer_class") == "TokenizersBackend":
        tokenizer["tokenizer_class"] = "PreTrainedTokenizerFast"
    tokenizer.setdefault("model_input_names", ["input_ids", "attention_mask"])
    if chat_template:
        tokenizer.setdefault("chat_template", chat_template)
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer, indent=2) + "\n")


def _check_base_model(name: str, digest: str | None, meta_path: Path) -> None:
    """A local base model must still be where it was, with the config it had when the model was trained."""
    if not Path(name).is_absolute():
        return
    if not Path(name).is_dir():
        raise UserError(f"{meta_path}: its base model {name} is not there any more (moved or deleted?); put it back, or edit `model` in this file")
    if digest is not None and config_digest(name) != digest:
        raise UserError(f"{meta_path}: the base model in {name} has changed since training (its config.json differs)")


def _tied_embeddings(name: str) -> bool:
    from transformers import AutoConfig

    folder = model_files(name)
    return folder is not None and bool(getattr(AutoConfig.from_pretrained(folder).get_text_config(), "tie_word_embeddings", False))


def cached_reference_logprobs(
    cache_dir: str | Path | None, backbone: str, sequences: Sequence[Encoded], compute: Callable[[], np.ndarray]
) -> np.ndarray:
    """log π_ref of `sequences` from compute(), stored in `cache_dir` (when given) under a hash of the
    backbone name and every token id, and read back by any later run on the same backbone and tokens."""
    if cache_dir is None:
        return compute()
    digest = hashlib.sha256(json.dumps([backbone, [s.ids for s in sequences]]).encode()).hexdigest()[:24]
    path = Path(cache_dir) / f"reflogps-{digest}.safetensors"
    if path.exists():
        return load_tensors(path)["logps"].numpy()
    logps = compute()
    with atomic_path(path) as temporary:
        save_file({"logps": torch.from_numpy(logps)}, temporary)
    return logps


def _token_logprobs(lm_head: torch.nn.Module, states: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) under the LM head for each row of `states`."""
    logits = lm_head(states)
    return torch.log_softmax(logits, dim=-1, dtype=torch.promote_types(logits.dtype, torch.float32)).gather(-1, targets[:, None]).squeeze(-1)
