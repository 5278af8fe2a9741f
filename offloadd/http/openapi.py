"""The OpenAPI 3.1 description of the whole API, served at `/openapi.json`.

The create body's schema comes from `validate.body_schema` (the validator's own
definitions and this server's limits); the answers' shapes, fixed by the original, are
written here. The test suite checks it against the real answers with schemathesis.
"""

from __future__ import annotations

from offloadd import __version__
from offloadd.config import Config
from offloadd.domain.messages import messages_schema
from offloadd.domain.validate import body_schema
from offloadd.storage.layout import OPENAPI_PATH

_ERROR = {
    "type": "object",
    "required": ["status", "error"],
    "properties": {
        "status": {"const": "error"},
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        },
    },
}
_ENDPOINTS = {
    "type": "object",
    "required": ["status_url", "stop_url"],
    "properties": {
        "status_url": {"type": "string"},
        "stream_events_url": {"type": "string"},
        "stop_url": {"type": "string"},
        "bearer_token": {"type": "string"},
        "from_status_url": {"type": "string"},
    },
}
_AUTHORIZATION = {
    "type": "object",
    "required": ["access"],
    "properties": {
        "access": {"enum": ["public", "private"]},
        "bearer_token": {"type": "string"},
        "stream_url_arg": {"type": "string"},
    },
}
_CREATED = {
    "type": "object",
    "required": ["status", "created_at", "conversation_id", "README", "authorization", "endpoints"],
    "properties": {
        "status": {"const": "success"},
        "created_at": {"type": "integer"},
        "conversation_id": {"type": "string"},
        "README": {"type": "string"},
        "authorization": _AUTHORIZATION,
        "endpoints": _ENDPOINTS,
    },
}
_STATUS = {
    "type": "object",
    "required": [
        "status",
        "created_at",
        "conversation_id",
        "README",
        "endpoints",
        "request",
        "parameters",
        "response",
        "error",
        "events",
    ],
    "properties": {
        "status": {"enum": ["waiting", "streaming", "done", "error", "stopped"]},
        "created_at": {"type": "integer"},
        "conversation_id": {"type": "string"},
        "README": {"type": "string"},
        "authorization": _AUTHORIZATION,
        "endpoints": _ENDPOINTS,
        "request": {"type": "object"},
        "options": {"type": "object"},
        "parameters": {"type": "object"},
        "response": {"type": "object"},
        "error": {"type": ["object", "null"]},
        "events": {"type": "integer"},
        "webhook": {"type": "object"},
    },
}
_STOPPED = {
    "type": "object",
    "required": ["status", "conversation_id", "conversation_status"],
    "properties": {
        "status": {"const": "success"},
        "conversation_id": {"type": "string"},
        "conversation_status": {"enum": ["waiting", "streaming", "done", "error", "stopped"]},
        "stop_requested": {"type": "boolean"},
    },
}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict:
    return {str(code): _json(_ERROR, "error") for code in codes}


_PATH_PARAMS = [
    {"name": "kind", "in": "path", "required": True, "schema": {"enum": ["1", "2"]}},
    {"name": "scope", "in": "path", "required": True, "schema": {"enum": ["pub", "priv"]}},
    *(
        {"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
        for n in ("year", "month", "day", "hour", "minute", "second", "uuid")
    ),
]
_BASE = OPENAPI_PATH


def _get(summary: str, media: str) -> dict:
    schema = {"type": "object"} if media == "application/json" else {"type": "string"}
    content = {media: {"schema": schema}}
    return {
        "get": {
            "summary": summary,
            "responses": {"200": {"description": summary, "content": content}},
        }
    }


def _chat_completions(config: Config) -> dict:
    """OpenAI's own endpoint: the answer is OpenAI's (`chat.completion` or its stream)."""
    headers = {
        name: {"schema": {"type": "string"}, "description": what}
        for name, what in (
            ("X-Offloadd-Status-Url", "the request's status URL"),
            ("X-Offloadd-Stream-Url", "its event stream, to follow or resume"),
            ("X-Offloadd-Stop-Url", "its stop URL"),
        )
    }
    return {
        "post": {
            "summary": "OpenAI Chat Completions, offloaded (`stream` true or false)",
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": body_schema(config)}},
            },
            "parameters": [
                {"name": "X-OpenAI-API-Key", "in": "header", "schema": {"type": "string"}},
                {
                    "name": "X-Offloadd-Stop-On-Disconnect",
                    "in": "header",
                    "description": "`true`, `1` or `yes`: a disconnect stops the request",
                    "schema": {"type": "string"},
                },
            ],
            "responses": {
                "200": {
                    "description": "the `chat.completion`, or its stream",
                    "headers": headers,
                    "content": {
                        "application/json": {"schema": {"type": "object"}},
                        "text/event-stream": {"schema": {}},
                    },
                },
                **_errors(400, 401, 404, 409, 413, 415, 429, 502, 503),
            },
        }
    }


_ANTHROPIC_ERROR = {
    "type": "object",
    "required": ["type", "error"],
    "properties": {
        "type": {"const": "error"},
        "error": {
            "type": "object",
            "required": ["type", "message"],
            "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
        },
    },
}


def _messages() -> dict:
    """Anthropic's Messages API: its answers and errors are Anthropic's."""
    errors = (400, 401, 403, 404, 405, 408, 409, 413, 415, 429, 500, 502, 503, 504, 529)
    return {
        "post": {
            "summary": "Anthropic Messages API, offloaded (`stream` true or false)",
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": messages_schema()}},
            },
            "responses": {
                "200": {
                    "description": "the `message`, or its event stream (named events)",
                    "content": {
                        "application/json": {"schema": {"type": "object"}},
                        "text/event-stream": {"schema": {}},
                    },
                },
                **{str(c): _json(_ANTHROPIC_ERROR, "Anthropic's error") for c in errors},
            },
        }
    }


_RESPONSE_ID = [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}]
_RESPONSE = {"type": "object", "required": ["id", "object", "status"]}


def _responses() -> dict:
    """OpenAI's Responses API, background mode included."""
    body = {
        "type": "object",
        "required": ["input"],
        "properties": {
            "input": {"type": ["string", "array"], "minLength": 1, "minItems": 1},
            "model": {"type": "string", "minLength": 1},
            "stream": {"type": ["boolean", "null"]},
            "background": {"type": ["boolean", "null"]},
            "previous_response_id": {"type": ["string", "null"]},
        },
        "additionalProperties": True,
    }
    answer = {
        "description": "the response object (queued in background mode), or its event stream",
        "content": {
            "application/json": {"schema": _RESPONSE},
            "text/event-stream": {"schema": {}},
        },
    }
    return {
        "/v1/responses": {
            "post": {
                "summary": "OpenAI Responses API, offloaded (`stream`, `background`)",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": body}},
                },
                "responses": {
                    "200": answer,
                    **_errors(400, 401, 404, 409, 413, 415, 429, 502, 503),
                },
            }
        },
        "/v1/responses/{id}": {
            "get": {
                "summary": "The response so far, or (`stream=true&starting_after=N`) its events",
                "parameters": [
                    *_RESPONSE_ID,
                    {"name": "stream", "in": "query", "schema": {"enum": ["true", "false"]}},
                    {"name": "starting_after", "in": "query", "schema": {"type": "integer"}},
                ],
                "responses": {
                    "200": answer,
                    "204": {"description": "nothing after `starting_after`: the stream ended"},
                    **_errors(400, 404),
                },
            }
        },
        "/v1/responses/{id}/cancel": {
            "post": {
                "summary": "Cancel (closes the upstream connection); idempotent",
                "parameters": _RESPONSE_ID,
                "responses": {"200": _json(_RESPONSE, "the response"), **_errors(404)},
            }
        },
    }


def _create(summary: str, config: Config) -> dict:
    return {
        "post": {
            "summary": summary,
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": body_schema(config)}},
            },
            "parameters": [
                {"name": "X-OpenAI-API-Key", "in": "header", "schema": {"type": "string"}},
            ],
            "responses": {
                "200": _json(_CREATED, "created; the upstream call runs on"),
                **_errors(400, 401, 404, 413, 415, 429, 503),
            },
        }
    }


def document(config: Config) -> dict:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "offloadd",
            "version": __version__,
            "description": "A self-hosted OffloadGPT: create a Chat Completions request once, "
            "follow its answer over Server-Sent Events, read its status, stop it.",
        },
        "paths": {
            "/v1/stream-chatgpt": _create("Create a request to follow as an event stream", config),
            "/v1/async-chatgpt": _create("Create a request to poll", config),
            "/v1/chat/completions": _chat_completions(config),
            "/v1/messages": _messages(),
            **_responses(),
            f"{_BASE}.json": {
                "get": {
                    "summary": "The status document",
                    "parameters": _PATH_PARAMS,
                    "responses": {"200": _json(_STATUS, "status"), **_errors(404)},
                }
            },
            f"{_BASE}.txt": {
                "get": {
                    "summary": "The event stream (Server-Sent Events)",
                    "parameters": [
                        *_PATH_PARAMS,
                        {"name": "Last-Event-ID", "in": "header", "schema": {"type": "string"}},
                        {"name": "token", "in": "query", "schema": {"type": "string"}},
                    ],
                    "responses": {
                        "200": {
                            "description": "the stream",
                            "content": {"text/event-stream": {"schema": {}}},
                        },
                        "204": {"description": "the reader already has the whole stream"},
                        **_errors(404),
                    },
                }
            },
            f"{_BASE}/stop": {
                op: {
                    "summary": "Stop the request",
                    "parameters": _PATH_PARAMS,
                    "responses": {
                        "200": _json(_STOPPED, "stopped (or already ended)"),
                        **_errors(404),
                    },
                }
                for op in ("get", "post")
            },
            "/v1/info": _get("What a client needs to know first", "application/json"),
            "/metrics": _get("Prometheus metrics", "text/plain"),
            "/": _get("The chat page", "text/html"),
            "/healthz": {
                "get": {
                    "summary": "Liveness",
                    "responses": {
                        "200": _json({"type": "object"}, "serving"),
                        "503": _json({"type": "object"}, "shutting down"),
                    },
                }
            },
        },
    }
