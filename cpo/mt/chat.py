"""Chat-template prompt formats: the request is a user turn, the translation the assistant turn (``prompt=chat``,
``prompt=tower``).

Instruction-tuned models (TowerInstruct, Qwen, Gemma, Llama-3 Instruct, ...) are trained and used inside their
chat template; a format here renders the request with the tokenizer's own template (``apply_chat_template``),
so training, validation, evaluation and generation see exactly the tokens the model sees at inference.

What is decided, and how (README "Prompt formats"):

- the **prompt** is the template's rendering of the system (optional) and user messages with the generation
  prompt (``add_generation_prompt=True``), tokenized without adding special tokens: the template writes its own
  BOS where it has one, so none is doubled. Only where the template writes no BOS but the tokenizer adds one to
  plain text (a Llama-2-based ChatML model such as TowerInstruct) is that BOS put first (``add_bos``, null:
  this rule);
- the **completion** is the assistant message as the template renders it after that prompt, *including* the
  template's end-of-turn token(s) (``<|im_end|>``, ``<|eot_id|>``, ``<end_of_turn>``) and nothing the template
  adds after them (the new line ChatML and Gemma write after a turn is not something the model generates). The
  end of turn is read off the template: the special tokens that follow an assistant message's text when it is
  rendered (``end_of_turn`` names them instead). A template that ends an assistant turn with no special token
  gets EOS after the completion, as a base model;
- **generation** stops at the end-of-turn token (and at EOS), and the translation is the text before it;
- **truncation** cuts the source text only: the role markers, the instruction and the generation prompt stay.
"""
from __future__ import annotations

from pathlib import Path

from cpo.errors import ConfigError
from cpo.io import DataError
from cpo.mt.cleaning import clean_turn
from cpo.mt.prompt import (BoundPrompt, EncodedPrompt, PromptFormat, check_placeholders, fill, fit_source,
                           too_short)

#: The default instruction of ``prompt=chat``; ``{src_lang}``/``{tgt_lang}`` are language names (German).
CHAT_INSTRUCTION = ("Translate the following {src_lang} text into {tgt_lang}. Reply with the translation only."
                    "\n\n{source}")
#: TowerInstruct's documented instruction (the Unbabel/TowerInstruct-7B-v0.2 model card), as its user turn.
TOWER_INSTRUCTION = "Translate the following text from {src_lang} into {tgt_lang}.\n{src_lang}: {source}\n{tgt_lang}:"
#: Stands for an assistant message's text while the template is probed for what surrounds it.
_PROBE = "CPOPROBEANSWER"
ROLES = ("system", "user", "assistant")


class ChatPrompt(PromptFormat):
    """The request as a user turn of the model's chat template; the translation is the assistant turn.

    ``instruction`` is the user message (a format string naming ``{source}`` once; ``{src_lang}``, ``{tgt_lang}``
    are language names, ``{src_code}``, ``{tgt_code}`` codes); ``system`` an optional system message (null: none,
    the template's own default where it has one). ``chat_template`` (a Jinja string or a ``.jinja`` file; null:
    the tokenizer's) replaces the tokenizer's template; ``template_kwargs`` are passed to it (e.g.
    ``{enable_thinking: false}`` for Qwen3). ``end_of_turn`` (a list of token strings; null: read off the
    template) and ``add_bos`` (true/false; null: see the module docstring) override what is derived.
    """

    def __init__(self, instruction: str = CHAT_INSTRUCTION, system: str | None = None,
                 chat_template: str | None = None, template_kwargs: dict | None = None,
                 end_of_turn: list[str] | None = None, add_bos: bool | None = None):
        check_placeholders(instruction, "prompt.instruction", source=True)
        if system is not None:
            check_placeholders(system, "prompt.system", source=False)
        if chat_template is not None and str(chat_template).endswith(".jinja"):
            path = Path(chat_template).expanduser()
            if not path.is_file():
                raise ConfigError(f"prompt.chat_template={chat_template}: no such file")
            chat_template = path.read_text(encoding="utf-8")  # recorded inline: the file may not travel
        if end_of_turn is not None:
            end_of_turn = [end_of_turn] if isinstance(end_of_turn, str) else list(end_of_turn)
            if not end_of_turn or not all(isinstance(t, str) and t for t in end_of_turn):
                raise ConfigError(f"prompt.end_of_turn must be null or a list of token strings, got {end_of_turn!r}")
        self.instruction, self.system, self.chat_template = instruction, system, chat_template
        self.template_kwargs = dict(template_kwargs or {})
        self.end_of_turn, self.add_bos = end_of_turn, add_bos
        self._args = {"instruction": instruction, "system": system, "chat_template": chat_template,
                      "template_kwargs": self.template_kwargs, "end_of_turn": end_of_turn, "add_bos": add_bos}

    def bind(self, tokenizer, max_length: int | None = None, truncation: str = "left") -> "ChatEncoder":
        return ChatEncoder(self, tokenizer, max_length, truncation)

    def messages(self, source: str, src_lang: str | None, tgt_lang: str | None) -> list[dict]:
        out = [{"role": "system", "content": fill(self.system, "", src_lang, tgt_lang)}] if self.system else []
        return out + [{"role": "user", "content": fill(self.instruction, source, src_lang, tgt_lang)}]


def _special_tokens(tok) -> list[str]:
    """Every special or added token string of ``tok`` (a turn marker may be added without the special flag),
    longest first (for matching the start of a text)."""
    names = set(tok.all_special_tokens)
    names |= {t.content for t in getattr(tok, "added_tokens_decoder", {}).values()}
    return sorted((n for n in names if n), key=len, reverse=True)


class ChatEncoder(BoundPrompt):
    """A :class:`ChatPrompt` bound to a tokenizer: probes the template once, then encodes and cleans."""

    def __init__(self, fmt: ChatPrompt, tokenizer, max_length: int | None = None, truncation: str = "left"):
        super().__init__(tokenizer, max_length, truncation)
        self.fmt = fmt
        self.name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        self.template = fmt.chat_template or getattr(tokenizer, "chat_template", None)
        if not self.template:
            raise ConfigError(
                f"prompt=chat renders requests with the model's chat template, and the tokenizer of {self.name} has "
                "none: use prompt=alma or prompt=template for a base model, or give the template with "
                "prompt.chat_template=<file.jinja>")
        self._probe()

    def describe(self) -> dict:
        return self.fmt.describe()

    # ------------------------------------------------------------------ the template
    def render(self, messages: list[dict], generation_prompt: bool) -> str:
        try:
            # chat_template=None: the tokenizer's own (which may be a dict of named templates)
            return self.tok.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=generation_prompt,
                                                chat_template=self.fmt.chat_template, **self.fmt.template_kwargs)
        except Exception as e:  # jinja2's TemplateError (raise_exception), or a template reading a missing field
            hint = " (set prompt.system=null if it takes no system message)" if self.fmt.system else ""
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(f"the chat template of {self.name} refuses the conversation it was given: "
                              f"{first}{hint}") from None

    def _probe(self) -> None:
        """What the template writes around an assistant message: its end-of-turn token(s) and what follows."""
        prompt_msgs = self.fmt.messages("x", "de", "en")
        prompt = self.render(prompt_msgs, True)
        full = self.render(prompt_msgs + [{"role": "assistant", "content": _PROBE}], False)
        if not full.startswith(prompt) or _PROBE not in full[len(prompt):]:
            raise ConfigError(f"the chat template of {self.name} does not render a conversation as its generation "
                              "prompt followed by the answer, so no completion can be cut from it: use another "
                              "template (prompt.chat_template=...) or prompt=template")
        after = full[full.rindex(_PROBE) + len(_PROBE):]
        if self.fmt.end_of_turn is not None:
            eot = list(self.fmt.end_of_turn)
            if not after.startswith("".join(eot)):
                raise ConfigError(f"prompt.end_of_turn={eot}: the chat template of {self.name} ends an assistant "
                                  f"turn with {after!r}; name what it writes")
        else:
            eot, rest, specials = [], after, _special_tokens(self.tok)
            while True:
                token = next((s for s in specials if rest.startswith(s)), None)
                if token is None:
                    break
                eot.append(token)
                rest = rest[len(token):]
        eot_text = "".join(eot)
        self.trailer = after[len(eot_text):]  # what the template writes after the turn: not generated
        pieces = [self._ids(t) for t in eot]
        if any(len(p) != 1 for p in pieces):
            raise ConfigError(f"prompt.end_of_turn={eot}: each must be one token of {self.name}'s vocabulary")
        self.eot_ids = [p[0] for p in pieces]
        eos = self.tok.eos_token_id
        ends = self.eot_ids[:1] + ([eos] if eos is not None else [])
        self._stop_ids = list(dict.fromkeys(ends))
        # BOS: the template's own, or the tokenizer's where plain text gets one and the template writes none.
        bos = self.tok.bos_token_id
        plain = self.tok("x")["input_ids"]
        adds_bos = bos is not None and plain[:1] == [bos] and len(plain) > len(self._ids("x"))
        want = adds_bos if self.fmt.add_bos is None else bool(self.fmt.add_bos)
        self._bos = [bos] if want and bos is not None and self._ids(prompt)[:1] != [bos] else []

    @property
    def stop_ids(self) -> list[int]:
        return self._stop_ids

    def stop_ids_for(self, model) -> list[int]:
        """The end of turn first, then EOS and the model's own end ids (its generation config's, e.g. Llama-3.1's
        ``<|end_of_text|>`` and ``<|eom_id|>``): a turn ends at any of them, and cleaning cuts there too."""
        own = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        own = [own] if isinstance(own, int) else list(own or [])
        self._stop_ids = list(dict.fromkeys(self._stop_ids + own))
        return self._stop_ids

    # ------------------------------------------------------------------ encoding
    def _encoded(self, messages: list[dict], source: str, render_cut) -> EncodedPrompt | None:
        """The prompt of ``messages``; ``render_cut(kept)`` gives the messages with ``source`` cut to ``kept``."""
        text = self.render(messages, True)
        full = self._bos + self._ids(text)
        head = len(self._bos)
        if self.max_length is None or len(full) <= self.max_length:
            return EncodedPrompt(text, full, full, False, head, "", tuple(messages))

        def render(kept: str) -> list[int]:
            return self._bos + self._ids(self.render(render_cut(kept), True))

        ids = fit_source(render, source, self.tok, self.max_length)
        if ids is None:
            raise too_short(self.max_length, len(render("")))
        if self.truncation == "reject":
            return None
        return EncodedPrompt(text, ids, full, True, head, "", tuple(messages))

    def encode(self, source: str, src_lang: str, tgt_lang: str) -> EncodedPrompt | None:
        def cut(kept: str) -> list[dict]:
            return self.fmt.messages(kept, src_lang, tgt_lang)

        # A cut source is put back into the instruction: the user turn is rebuilt around the kept text.
        return self._encoded(self.fmt.messages(source, src_lang, tgt_lang), source, cut)

    def encode_messages(self, messages, where: str | None = None) -> EncodedPrompt | None:
        """A conversational row's prompt: its own messages; an over-long one loses the beginning of its last user
        message's text."""
        msgs = [dict(m) for m in messages]
        last = max(k for k, m in enumerate(msgs) if m["role"] == "user")

        def cut(kept: str) -> list[dict]:
            return msgs[:last] + [{**msgs[last], "content": kept}] + msgs[last + 1:]

        return self._encoded(msgs, msgs[last]["content"], cut)

    def completion_ids(self, prompt: EncodedPrompt, completion: str) -> tuple[list[int], bool]:
        """The assistant turn as the template renders it after the (untruncated) prompt, end of turn included,
        what the template writes after the turn excluded; tokenized as the continuation of the prompt."""
        if prompt.messages is None:  # a row that brings its own prompt text: TRL's rule
            return self.continuation_ids(prompt, completion)
        full = self.render(list(prompt.messages) + [{"role": "assistant", "content": completion}], False)
        answer = full[len(prompt.text):] if full.startswith(prompt.text) else None
        if answer is None or not answer.endswith(self.trailer):
            raise DataError(f"the chat template of {self.name} renders this conversation's answer unlike its probe "
                            f"(completion {completion[:40]!r}); use prompt.chat_template=... or prompt=template")
        answer = answer[: len(answer) - len(self.trailer)]
        body = prompt.full_ids[prompt.head:]
        joint = self._ids(prompt.text + answer)
        if joint[: len(body)] == body and len(joint) > len(body):
            ids, exact = joint[len(body):], True
        else:
            ids, exact = self._ids(answer), False
        if not self.eot_ids:  # the template ends a turn with no special token: stop with EOS, as a base model
            ids = ids + [self.tok.eos_token_id]
        return ids, exact

    def clean(self, generated_ids: list[int], tgt_lang: str) -> tuple[str, str]:
        return clean_turn(self.tok, generated_ids, self._stop_ids)


def check_messages(messages, where: str, key: str) -> list[dict]:
    """A list of ``{"role", "content"}`` messages with known roles and text content; one sentence otherwise."""
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: field {key!r} must be a non-empty list of chat messages")
    out = []
    for k, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise DataError(f"{where}: field {key!r}, message {k}: expected {{\"role\": ..., \"content\": \"...\"}}, "
                            f"got {m!r:.80}")
        if m["role"] not in ROLES:
            raise DataError(f"{where}: field {key!r}, message {k}: role {m['role']!r} is not one of "
                            f"{', '.join(ROLES)}")
        out.append({"role": m["role"], "content": m["content"]})
    return out
