"""Full chat texts (prompt and response rendered by a chat template) split back into messages and a response.

The template's markers are learned by rendering a probe conversation with sentinel contents through the
model's own `Encoder.render` (chat template, or the plain "User: …" layout for tokenizers without one):

    [P_sys] S [sys→user] U [user→assistant] A [assistant→user] U … [generation] | response [end of turn]

A text is then cut at these markers. Texts that contain the markers inside a message are ambiguous and
may split wrongly; the prompt texts OpenRLHF sends alongside (`prompts`) avoid that for the prompt/response cut.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..data.encode import Encoder
from ..data.load import Message

_SYSTEM, _USER, _ASSISTANT, _USER2, _RESPONSE = "\x01S\x01", "\x01U\x01", "\x01A\x01", "\x01V\x01", "\x01R\x01"


@dataclass(frozen=True)
class _Layout:
    start: str  # text before the first message's content
    first_role: str  # role of that first message: system or user
    system_to_user: str  # between a system message and the first user message ("" without one)
    user_to_assistant: str
    assistant_to_user: str
    generation: str  # after the last user message, where the response starts


class ConversationSplitter:
    def __init__(self, encoder: Encoder):
        self.encoder = encoder
        tok = encoder.tokenizer
        self.strip_tokens = [t for t in {tok.eos_token, tok.pad_token} if t]
        _, rendered_response = encoder.render([{"role": "user", "content": _USER}], _RESPONSE)
        self.end_of_turn = rendered_response.split(_RESPONSE, 1)[1]
        self.layouts = [layout for layout in (self._probe(system=True), self._probe(system=False)) if layout]
        if not self.layouts:
            raise ValueError("the chat template does not render a probe conversation with recognisable markers")

    def _probe(self, system: bool) -> _Layout | None:
        messages = [{"role": "user", "content": _USER}, {"role": "assistant", "content": _ASSISTANT}, {"role": "user", "content": _USER2}]
        if system:
            messages.insert(0, {"role": "system", "content": _SYSTEM})
        try:
            text, _ = self.encoder.render(messages, _RESPONSE)
        except Exception:  # templates may refuse a system turn
            return None
        first = _SYSTEM if system else _USER
        marks = [first] + ([_USER] if system else []) + [_ASSISTANT, _USER2]
        if any(text.count(m) != 1 for m in marks):
            return None
        start, rest = text.split(first)
        system_to_user = ""
        if system:
            system_to_user, rest = rest.split(_USER)
        user_to_assistant, rest = rest.split(_ASSISTANT)
        assistant_to_user, generation = rest.split(_USER2)
        return _Layout(start, "system" if system else "user", system_to_user, user_to_assistant, assistant_to_user, generation)

    def split(self, query: str, prompt: str | None = None) -> tuple[list[Message], str]:
        """(messages, response) of one full text. `prompt`, when the query starts with it, fixes the cut;
        otherwise the cut is after the last generation marker. Raises ValueError when the text does not fit."""
        query = self._strip_trailing(query)
        if prompt and query.startswith(prompt):
            prompt_text, response = prompt, query[len(prompt) :]
        else:
            cut = max((query.rfind(layout.generation) + len(layout.generation) for layout in self.layouts if layout.generation in query), default=-1)
            if cut < 0:
                raise ValueError("no assistant turn marker of the chat template in the text")
            prompt_text, response = query[:cut], query[cut:]
        messages = self.parse_prompt(prompt_text)
        if messages is None:
            if prompt is None or prompt_text != prompt:
                raise ValueError("the prompt part does not follow the chat template")
            messages = [{"role": "user", "content": prompt.strip()}]  # a plain prompt text, not templated
        return messages, response

    def parse_prompt(self, text: str) -> list[Message] | None:
        """Messages of a rendered prompt (ending where the assistant starts), or None if it does not parse."""
        for layout in self.layouts:
            if not (text.startswith(layout.start) and text.endswith(layout.generation)) or len(text) < len(layout.start) + len(layout.generation):
                continue
            body = text[len(layout.start) : len(text) - len(layout.generation)]
            messages: list[Message] = []
            if layout.first_role == "system":
                if layout.system_to_user not in body:
                    continue
                content, body = body.split(layout.system_to_user, 1)
                messages.append({"role": "system", "content": content})
            turns = body.split(layout.assistant_to_user)
            for i, turn in enumerate(turns):
                if i < len(turns) - 1:
                    if layout.user_to_assistant not in turn:
                        break
                    user, assistant = turn.split(layout.user_to_assistant, 1)
                    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
                else:
                    messages.append({"role": "user", "content": turn})
            else:
                return messages
        return None

    def _strip_trailing(self, text: str) -> str:
        """Drop the end-of-turn marker, padding and end-of-sequence tokens at the end of a text."""
        markers = sorted({m for m in (*self.strip_tokens, self.end_of_turn, self.end_of_turn.strip()) if m}, key=len, reverse=True)
        while marker := next((m for m in markers if text.endswith(m)), None):
            text = text[: -len(marker)]
        return text


def split_texts(splitter: ConversationSplitter | None, texts: list[str], hints: list[str] | None, field: str) -> tuple[list, list[str]]:
    """Prompts (messages) and responses of full texts rendered with a chat template, cut by `splitter` or,
    without one, at their prompt `hints` (each text must start with its hint). Raises ValueError naming
    `field`[i] for a text that does not split."""
    prompts, responses = [], []
    for i, text in enumerate(texts):
        hint = hints[i] if hints else None
        if splitter is None:
            if not (hint and text.startswith(hint)):
                raise ValueError(f"{field}[{i}]: this source has no model whose chat template could split the text; send `prompts` that each text starts with")
            messages, response = [{"role": "user", "content": hint.strip()}], text[len(hint) :]
        else:
            try:
                messages, response = splitter.split(text, hint)
            except ValueError as err:
                raise ValueError(f"{field}[{i}]: {err}") from None
        prompts.append(messages)
        responses.append(response)
    return prompts, responses
