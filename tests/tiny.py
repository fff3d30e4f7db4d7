"""Tiny real models for tests: a few-layer Llama with a tokenizer trained on the spot."""

from __future__ import annotations

import json
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
CORPUS = [
    "How do I reset my password? Use Settings > Security.",
    "Can I export my data? Yes, as CSV from Settings > Data.",
    "What does the Team plan cost? Eight dollars per user per month.",
    "The capital of France is Paris.",
] * 20


def make_tiny_llama(folder: Path, seed: int = 0, hidden: int = 32, layers: int = 2) -> Path:
    """Save a random tiny LlamaForCausalLM with tokenizer and chat template into `folder`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    special = [
        "<unk>",
        "<s>",
        "</s>",
        "<pad>",
        "<|user|>",
        "<|assistant|>",
        "<|system|>",
        "<|end|>",
    ]
    tokenizer.train_from_iterator(
        CORPUS,
        trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=special,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="<|end|>",
        pad_token="<pad>",
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    (folder / "README.md").write_text("---\nlicense: mit\n---\n# tiny\n")
    return folder


def model_spec(name: str, source: dict, **extra: object) -> str:
    spec = {"source": source, **extra}
    return (
        "apiVersion: llmops/v1\nkind: Model\n"
        f"metadata: {{name: {name}}}\nspec: {json.dumps(spec)}\n"
    )


def make_mute_model(tiny: Path, folder: Path) -> Path:
    """A copy of a tiny model whose output layer is all zeros: it loads, then picks token 0
    (<unk>, a special token) every time, so it answers every prompt with nothing."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny)
    model.lm_head.weight.data.zero_()
    model.save_pretrained(folder)
    return _copy_tokenizer(tiny, folder)


def make_noisy_model(tiny: Path, folder: Path, std: float = 0.5, seed: int = 1) -> Path:
    """A copy of a tiny model with Gaussian noise (`std`, 25 times the initial weights' 0.02)
    added to every weight, as a corrupted checkpoint would have: it loads, trains and answers,
    but its held-out perplexity is about 14,000 instead of 374."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * std)
    model.save_pretrained(folder)
    return _copy_tokenizer(tiny, folder)


def _copy_tokenizer(tiny: Path, folder: Path) -> Path:
    for path in tiny.iterdir():
        if "token" in path.name or path.name == "chat_template.jinja":
            (folder / path.name).write_bytes(path.read_bytes())
    return folder


def make_scripted_model(tiny: Path, folder: Path, reply: str) -> Path:
    """A copy of a tiny model that answers every prompt with `reply`, whatever it is asked.

    Attention and MLP outputs are zeroed, so the last position's hidden state is the embedding
    of the last token alone: the model is a bigram table. Each token of the reply gets its
    own hidden dimension, and the output layer maps <|assistant|> to the reply's first token,
    each reply token to the next, and the last to <|end|>. Used as a judge that always gives
    the same verdict (e.g. "Verdict: A", a judge biased to the first position)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny)
    chain = [tokenizer.convert_tokens_to_ids("<|assistant|>")]
    chain += tokenizer.encode(reply, add_special_tokens=False)
    if len(set(chain)) != len(chain):
        raise ValueError(f"reply {reply!r} repeats a token; a bigram model cannot say it")
    model = AutoModelForCausalLM.from_pretrained(tiny)
    hidden = model.config.hidden_size
    if len(chain) > hidden:
        raise ValueError(f"reply {reply!r} has more tokens than the model has dimensions")
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.zero_()
        model.model.norm.weight.fill_(1.0)
        model.lm_head.weight.zero_()
        for dim, token in enumerate(chain):
            model.model.embed_tokens.weight[token, dim] = 1.0
            following = chain[dim + 1] if dim + 1 < len(chain) else tokenizer.eos_token_id
            model.lm_head.weight[following, dim] = 10.0
    model.save_pretrained(folder)
    return _copy_tokenizer(tiny, folder)


def duel_arena(limit: int, battles: int, rounds: int) -> str:
    """An Arena spec: tiny against mute, judged by `judge` (see add_duel_contenders)."""
    return f"""
apiVersion: llmops/v1
kind: Arena
metadata: {{name: duel}}
spec:
  models: [tiny, mute]
  prompts: {{type: file, path: data/eval.jsonl, field: question, limit: {limit}}}
  battles_per_pair: {battles}
  generation: {{max_new_tokens: 6}}
  judge:
    model: judge
    rubric: "Prefer the answer that answers the question."
    max_new_tokens: 16
  human_votes: true
  bootstrap: {{rounds: {rounds}, seed: 0}}
"""


def add_duel_contenders(tiny: Path, root: Path) -> None:
    """The duel's other models with their specs: `mute` (answers nothing) and `judge` (answers
    "Verdict: A" whatever it is shown: biased to the first position)."""
    make_mute_model(tiny, root / "models/mute")
    make_scripted_model(tiny, root / "models/judge", "Verdict: A")
    for name in ("mute", "judge"):
        (root / f"specs/models/{name}.yaml").write_text(
            model_spec(name, {"type": "local", "path": f"models/{name}"})
        )


def plant_massive_activation(src: Path, dest: Path, plants: list[tuple[int, int]]) -> Path:
    """A copy of a tiny model where each (token id, dim) of `plants` has embedding value 60:
    one huge residual dimension on that token, carried through every layer the way attention
    sinks are in pretrained LLMs (a "massive activation")."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dest)
    tensors = load_file(str(src / "model.safetensors"))
    for token, dim in plants:
        tensors["model.embed_tokens.weight"][token, dim] = 60.0
    save_file(tensors, str(dest / "model.safetensors"), metadata={"format": "pt"})
    return dest


def make_random_adapter(base: Path, folder: Path, seed: int, rank: int = 4) -> Path:
    """A LoRA adapter for `base` with random weights (so greedy answers differ from the base
    and from other seeds), saved adapter-only and naming its base by a relative path."""
    import json
    import os

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base))
    config = LoraConfig(
        r=rank,
        lora_alpha=rank * 4,
        target_modules=["q_proj", "v_proj", "o_proj", "down_proj"],
        init_lora_weights=False,
    )
    get_peft_model(model, config).save_pretrained(str(folder), safe_serialization=True)
    path = folder / "adapter_config.json"
    saved = json.loads(path.read_text())
    saved["base_model_name_or_path"] = os.path.relpath(base, folder)
    path.write_text(json.dumps(saved))
    return folder
