"""A tiny random-weight causal LM with a real tokenizer, built offline in about a second.

`build_tiny_lm(path)` saves a Llama-architecture model (hidden size 32, 2 layers) and a
byte-level BPE tokenizer trained on a few sentences, with BOS/EOS/PAD tokens and a small chat
template, so any code that loads "a local model directory" can be exercised for real.
`write_tiny_gguf(model_dir, path)` writes the same model as an F32 GGUF file.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

SENTENCES = [
    "A person raises both arms above the head and jumps forward.",
    "The person bends the knees, swings the arms back and leaps into the air.",
    "Someone walks slowly in a circle, then turns around and sits down on a chair.",
    "The man kicks with the right leg while keeping the left foot on the ground.",
    "She waves the right hand from side to side at shoulder height.",
    "Describe a person's body movements who is performing the action jump in details",
    "Describe a person's body movements when performing the action: wave",
    "You describe only physical body movements of a person in 1-3 sentences.",
]
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def build_tokenizer(vocab_size: int = 400, chat_template: bool = True, pad_token: bool = True):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, show_progress=False, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(SENTENCES, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        pad_token="<pad>" if pad_token else None,
        additional_special_tokens=SPECIALS[4:],
    )
    if chat_template:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def _teach_sentences(model, tokenizer, steps: int) -> None:
    """A few hundred optimiser steps on SENTENCES, each answer ended by EOS: the model then writes
    sentence-like text that ends (a random one is cut off by max_tokens mid-word, which cleaning rejects)."""
    import torch

    from actiongpt_plugin.templates import RELEASE

    answers = ["A person jumps forward.", "The man kicks with the right leg.", "Someone walks slowly in a circle.",
               "She waves the right hand.", "The person sits down on a chair."]
    prompts = [RELEASE.render(p).as_messages() for p in ("jump", "kick", "walk in a circle", "wave", "sit down")]
    rows = [tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) + answer + tokenizer.eos_token
            for m, answer in zip(prompts, answers)]
    batch = tokenizer(rows, return_tensors="pt", padding=True, add_special_tokens=False)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        optimiser.zero_grad()
        model(**batch, labels=labels).loss.backward()
        optimiser.step()
    model.eval()


def build_tiny_lm(path, *, chat_template: bool = True, pad_token: bool = True, seed: int = 0,
                  train_steps: int = 0) -> Path:
    """Save a tiny Llama and its tokenizer into ``path``; returns the path.

    Random weights, unless ``train_steps``: then it has learnt to write a sentence and stop."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    path = Path(path)
    tokenizer = build_tokenizer(chat_template=chat_template, pad_token=pad_token)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
        initializer_range=0.2,  # larger than usual: peaked logits, so greedy argmax has no near-ties
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    if train_steps:
        _teach_sentences(model, tokenizer, train_steps)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    )
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def write_tiny_gguf(model_dir, path) -> Path:
    """Write the tiny model of ``model_dir`` as an F32 GGUF file, the way llama.cpp's converter lays
    out a Llama (q/k rows permuted for its rotary layout; transformers undoes that on load)."""
    import gguf
    import numpy as np
    from transformers import AutoTokenizer, LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    c = model.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_freq_base(getattr(c, "rope_theta", None) or c.rope_parameters["rope_theta"])
    w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    w.add_vocab_size(c.vocab_size)

    vocab = tok.backend_tokenizer.get_vocab(with_added_tokens=True)
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda item: item[1])]
    special = set(tok.all_special_tokens)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens])
    merges = json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    w.add_bos_token_id(tok.bos_token_id)
    w.add_eos_token_id(tok.eos_token_id)
    w.add_pad_token_id(tok.pad_token_id)
    w.add_unk_token_id(tok.unk_token_id)
    if tok.chat_template:
        w.add_chat_template(tok.chat_template)

    def permute(t, heads):  # HF rotary halves -> llama.cpp interleaved pairs
        return t.reshape(heads, 2, t.shape[0] // heads // 2, *t.shape[1:]).swapaxes(1, 2).reshape(t.shape)

    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    w.add_tensor("output.weight", sd["lm_head.weight"])
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}."
        names = {
            "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
            "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
            "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
        }
        for g, h in names.items():
            w.add_tensor(f"blk.{i}.{g}.weight", sd[p + h + ".weight"])
        w.add_tensor(f"blk.{i}.attn_q.weight", permute(sd[p + "self_attn.q_proj.weight"], c.num_attention_heads))
        w.add_tensor(f"blk.{i}.attn_k.weight", permute(sd[p + "self_attn.k_proj.weight"], c.num_key_value_heads))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(path)
