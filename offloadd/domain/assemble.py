"""Builds the `chat.completion` a poller reads from the `chat.completion.chunk`s streamed so far.

Chunks come from an upstream we do not control, so nothing here trusts their shape:
a field of the wrong type is ignored, indices are only keys (never list positions to
pad up to), and the result grows only with what was streamed.
"""

from __future__ import annotations

from typing import Any

TEXT_KEYS = ("content", "refusal", "reasoning_content")
HEAD_KEYS = ("id", "created", "model", "system_fingerprint", "service_tier")
_SCALARS = (str, int, float)  # a tuple: `str | int | float` would build a union per chunk


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def _index(value: Any, default: int) -> int:
    """An index as the upstream meant it, or `default` when it is not an integer."""
    return value if isinstance(value, int) and not isinstance(value, bool) else default


class _Choice:
    def __init__(self, index: int):
        self.index = index
        self.role = "assistant"
        self.text: dict[str, str] = {}
        self.calls: dict[int, dict] = {}
        self.finish_reason: str | None = None
        self.logprobs: list | None = None

    def add(self, choice: dict) -> None:
        delta = _dict(choice.get("delta"))
        if isinstance(delta.get("role"), str):
            self.role = delta["role"]
        for key in TEXT_KEYS:
            if isinstance(delta.get(key), str):
                self.text[key] = self.text.get(key, "") + delta[key]
        for call in _list(delta.get("tool_calls")):
            if isinstance(call, dict):
                self._call(call)
        if isinstance(choice.get("finish_reason"), str):
            self.finish_reason = choice["finish_reason"]
        logprobs = choice.get("logprobs")
        if isinstance(logprobs, dict):
            self.logprobs = (self.logprobs or []) + _list(logprobs.get("content"))

    def _call(self, delta: dict) -> None:
        index = _index(delta.get("index"), max(self.calls, default=-1) + 1)
        call = self.calls.setdefault(
            index, {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
        )
        for key in ("id", "type"):
            if isinstance(delta.get(key), str):
                call[key] = delta[key]
        function = _dict(delta.get("function"))
        for key in ("name", "arguments"):
            if isinstance(function.get(key), str):
                call["function"][key] += function[key]

    def body(self) -> dict:
        message: dict = {"role": self.role, "content": self.text.get("content")}
        message.update({k: v for k, v in self.text.items() if k != "content"})
        if self.calls:
            message["tool_calls"] = [self.calls[i] for i in sorted(self.calls)]
        out: dict = {"index": self.index, "message": message, "finish_reason": self.finish_reason}
        if self.logprobs is not None:
            out["logprobs"] = {"content": self.logprobs}
        return out


class Completion:
    """Folds chunks into one completion: text, tool calls, finish reasons, usage."""

    def __init__(self) -> None:
        self.head: dict = {}
        self.choices: dict[int, _Choice] = {}
        self.usage: dict | None = None

    def add(self, chunk: dict) -> None:
        for key in HEAD_KEYS:
            if isinstance(chunk.get(key), _SCALARS) and not isinstance(chunk[key], bool):
                self.head[key] = chunk[key]
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        for choice in _list(chunk.get("choices")):
            if isinstance(choice, dict):
                index = _index(choice.get("index"), 0)
                self.choices.setdefault(index, _Choice(index)).add(choice)

    def empty(self) -> bool:
        return not self.head and not self.choices

    @property
    def finish_reason(self) -> str | None:
        first = self.choices.get(0) or next(iter(self.choices.values()), None)
        return first.finish_reason if first else None

    def body(self) -> dict:
        return {
            "id": self.head.get("id"),
            "object": "chat.completion",
            "created": self.head.get("created"),
            "model": self.head.get("model"),
            **{k: v for k, v in self.head.items() if k not in ("id", "created", "model")},
            "choices": [self.choices[i].body() for i in sorted(self.choices)],
            "usage": self.usage,
        }
