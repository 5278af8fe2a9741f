"""Builds the `chat.completion` a poller reads from the `chat.completion.chunk`s streamed so far."""

from __future__ import annotations


class Completion:
    """Folds chunks into one completion: text, tool calls, finish reasons, usage."""

    def __init__(self) -> None:
        self.head: dict = {}
        self.choices: dict[int, dict] = {}
        self.usage: dict | None = None

    def add(self, chunk: dict) -> None:
        for key in ("id", "created", "model", "system_fingerprint", "service_tier"):
            if chunk.get(key) is not None:
                self.head[key] = chunk[key]
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if isinstance(choice, dict):
                self._choice(choice)

    def _choice(self, choice: dict) -> None:
        index = choice.get("index", 0)
        slot = self.choices.setdefault(
            index,
            {
                "index": index,
                "message": {"role": "assistant", "content": None},
                "finish_reason": None,
            },
        )
        delta = choice.get("delta") or {}
        message = slot["message"]
        if delta.get("role"):
            message["role"] = delta["role"]
        for key in ("content", "refusal", "reasoning_content"):
            if isinstance(delta.get(key), str):
                message[key] = (message.get(key) or "") + delta[key]
        for call in delta.get("tool_calls") or ():
            _tool_call(message.setdefault("tool_calls", []), call)
        if choice.get("finish_reason"):
            slot["finish_reason"] = choice["finish_reason"]
        if choice.get("logprobs") is not None:
            slot.setdefault("logprobs", {"content": []})
            slot["logprobs"]["content"].extend(choice["logprobs"].get("content") or ())

    @property
    def finish_reason(self) -> str | None:
        first = self.choices.get(0) or next(iter(self.choices.values()), None)
        return first and first["finish_reason"]

    def body(self) -> dict:
        return {
            "id": self.head.get("id"),
            "object": "chat.completion",
            "created": self.head.get("created"),
            "model": self.head.get("model"),
            **{k: v for k, v in self.head.items() if k not in ("id", "created", "model")},
            "choices": [self.choices[i] for i in sorted(self.choices)],
            "usage": self.usage,
        }


def _tool_call(calls: list, delta: dict) -> None:
    index = delta.get("index", len(calls))
    while len(calls) <= index:
        calls.append({"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
    call = calls[index]
    if delta.get("id"):
        call["id"] = delta["id"]
    if delta.get("type"):
        call["type"] = delta["type"]
    function = delta.get("function") or {}
    for key in ("name", "arguments"):
        if isinstance(function.get(key), str):
            call["function"][key] += function[key]
