"""Tiny tokenizers carrying the chat templates of three model families, and a model whose greedy output is known.

The templates are written here from the families' public tokenizer_config.json (the parts a translation
request uses; tool calling left out):

- ``qwen``: ChatML as Qwen2.5-Instruct writes it (Qwen/Qwen2.5-7B-Instruct): a default system message, every
  turn ``<|im_start|>{role}\\n{content}<|im_end|>\\n``, no BOS token at all, EOS ``<|im_end|>``;
- ``llama3``: Llama-3.1-Instruct (meta-llama/Llama-3.1-8B-Instruct): ``{{ bos_token }}``, a system header
  that always carries the knowledge and today dates (the template's fixed default date), turns
  ``<|start_header_id|>{role}<|end_header_id|>\\n\\n{content | trim}<|eot_id|>``; its tokenizer also adds BOS
  to plain text (the risk of a doubled BOS);
- ``gemma``: Gemma-2-it (google/gemma-2-9b-it): ``{{ bos_token }}``, no system role (raises), turns
  ``<start_of_turn>{user|model}\\n{content | trim}<end_of_turn>\\n``; its tokenizer adds BOS to plain text too.

``chain_model`` builds a Llama whose next token depends on the current token only, through a table: greedy
generation from a prompt then writes a known sequence (e.g. two words, the end-of-turn token, then more
words), so a test sees whether generation stopped where the template's turn ends.
"""
from __future__ import annotations

QWEN_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if (message.role == 'user') or (message.role == 'system' and not loop.first) or "
    "(message.role == 'assistant') %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

LLAMA3_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if not date_string is defined %}{%- set date_string = '26 Jul 2024' %}{%- endif %}"
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- set system_message = messages[0]['content']|trim %}{%- set messages = messages[1:] %}"
    "{%- else %}{%- set system_message = '' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{{- 'Cutting Knowledge Date: December 2023\\n' }}"
    "{{- 'Today Date: ' + date_string + '\\n\\n' }}"
    "{{- system_message }}{{- '<|eot_id|>' }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + "
    "'<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)

GEMMA_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}"
)

# family -> (template, BOS, EOS (the instruct tokenizer's), end-of-turn, other special tokens, tokenizer adds BOS)
FAMILIES = {
    "qwen": (QWEN_TEMPLATE, None, "<|im_end|>", "<|im_end|>", ["<|im_start|>", "<|endoftext|>"], False),
    "llama3": (LLAMA3_TEMPLATE, "<|begin_of_text|>", "<|eot_id|>", "<|eot_id|>",
               ["<|start_header_id|>", "<|end_header_id|>", "<|end_of_text|>"], True),
    "gemma": (GEMMA_TEMPLATE, "<bos>", "<eos>", "<end_of_turn>", ["<start_of_turn>", "<end_of_turn>"], True),
}

TEXTS = [f"the {a} sees {b} dogs near the river {i}" for i, (a, b) in enumerate(
    [("man", "two"), ("woman", "five"), ("child", "nine")] * 40)]
TEXTS += [f"der {a} sieht {b} Hunde am Fluss {i}"
          for i, (a, b) in enumerate([("Mann", "zwei"), ("Frau", "fünf")] * 40)]
TEXTS += ["Translate the following German text into English. Reply with the translation only.",
          "system user assistant model Cutting Knowledge Date: December 2023 Today Date: 26 Jul 2024",
          "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
          "Translate this from German to English:\nGerman: der Mann\nEnglish: the man"] * 5


def chat_tokenizer(family: str, vocab_size: int = 400):
    """A byte-level BPE tokenizer (cpo.train.tiny) with the family's special tokens and chat template."""
    from tokenizers import processors

    from cpo.train.tiny import train_bpe_tokenizer

    template, bos, eos, eot, others, adds_bos = FAMILIES[family]
    tok = train_bpe_tokenizer(TEXTS, vocab_size)
    specials = [t for t in (bos, eos, eot, *others) if t is not None]
    tok.add_special_tokens({"additional_special_tokens": list(dict.fromkeys(specials))})
    tok.eos_token = eos
    tok.bos_token = bos
    if adds_bos:
        tok._tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.convert_tokens_to_ids(bos))])
    tok.chat_template = template
    return tok


def end_of_turn(family: str) -> str:
    return FAMILIES[family][3]


def chain_model(tok, chain: dict[int, int], hidden_size: int = 32, margin: float = 20.0, seed: int = 0):
    """A tiny Llama whose logits depend on the current token alone: after token ``t`` it predicts ``chain[t]``
    by a wide margin (tokens outside the table predict arbitrarily). Every layer's output projections are zero,
    so the residual stream is the token's embedding; the table's tokens get orthogonal embeddings."""
    import torch

    from cpo.train.tiny import build_tiny_llama

    keys = list(dict.fromkeys(chain))
    assert len(keys) <= hidden_size
    model = build_tiny_llama(tok, hidden_size=hidden_size, num_hidden_layers=1, num_attention_heads=4,
                             num_key_value_heads=2, seed=seed)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb, head = model.model.embed_tokens.weight, model.lm_head.weight
        head.zero_()
        for k, t in enumerate(keys):
            emb[t] = 0.0
            emb[t, k] = 1.0
            head[chain[t], k] = margin
    return model
