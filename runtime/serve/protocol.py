"""The OpenAI chat-completions request and response shapes: a request body checked field by
field into a Turn (every refusal names the field), and the JSON the server answers with."""
from __future__ import annotations

import base64
import binascii
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from ...errors import RequestError
from ..sampling import SamplingParams
from .engine import Engine, Finished, Turn

# Accepted for compatibility and ignored when they ask for nothing different from the default.
IGNORED: dict[str, object] = {"user": None, "metadata": None, "store": None, "service_tier": None, "parallel_tool_calls": None,
           "frequency_penalty": 0, "presence_penalty": 0, "logprobs": False, "logit_bias": {}, "n": 1}
KNOWN = {"model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens", "temperature",
         "top_p", "top_k", "seed", "stop", "response_format", "adapter", *IGNORED}
AUDIO_FORMATS = {"wav", "flac", "ogg", "mp3"}
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
REFERENCE = re.compile(r"<\|(image|audio)_\d+\|>")


@dataclass(frozen=True)
class Limits:
    """What one request may ask for."""

    max_tokens: int = 512            # when the request names none
    max_messages: int = 512
    max_media: int = 16              # images and audio clips together
    temperature: float = 0.0         # when the request names none (greedy, as `phi4edge run`)
    allow_local_files: bool = False  # image_url / input_audio may name a file on this machine


@dataclass(frozen=True)
class ChatRequest:
    """A checked request: the turn (media still undecoded), how to answer, for which model id."""

    model: str
    turn: Turn
    media: tuple[tuple[str, bytes | Path, str], ...]   # (kind, data, field) in reference order
    schema: dict | None
    stream: bool
    include_usage: bool


def _type(body: dict, name: str, kinds: tuple[type, ...], what: str):
    value = body.get(name)
    if value is not None and (not isinstance(value, kinds) or isinstance(value, bool) and bool not in kinds):
        raise RequestError(f"'{name}' must be {what}, got {type(value).__name__}")
    return value


def parse_chat(body: object, models: dict[str, str | None], limits: Limits) -> ChatRequest:
    """Check a /v1/chat/completions body. `models`: model id -> adapter it selects."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    unknown = sorted(set(body) - KNOWN)
    if unknown:
        raise RequestError(f"unrecognized request argument: '{unknown[0]}'")
    for name, default in IGNORED.items():
        if default is not None and body.get(name) not in (None, default):
            raise RequestError(f"'{name}' is not supported by this server (only {default!r})")
    model = body.get("model")
    if not isinstance(model, str):
        raise RequestError("'model' is required: one of " + ", ".join(models))
    if model not in models:
        raise LookupError(f"the model '{model}' does not exist here; models: {', '.join(models)}")
    adapter = _type(body, "adapter", (str,), "an adapter name")
    if adapter is not None and models[model] is not None and adapter != models[model]:
        raise RequestError(f"'adapter' {adapter!r} contradicts the model '{model}'")
    max_tokens = _type(body, "max_completion_tokens", (int,), "an integer") or \
        _type(body, "max_tokens", (int,), "an integer") or limits.max_tokens
    if max_tokens < 1:
        raise RequestError(f"'max_tokens' must be at least 1, got {max_tokens}")
    temperature = _type(body, "temperature", (int, float), "a number")
    if temperature is not None and not 0 <= temperature <= 2:
        raise RequestError(f"'temperature' must be between 0 and 2, got {temperature}")
    top_p = _type(body, "top_p", (int, float), "a number")
    top_k = _type(body, "top_k", (int,), "an integer")
    seed = _type(body, "seed", (int,), "an integer")
    sampling = SamplingParams(temperature=limits.temperature if temperature is None else float(temperature),
                              top_k=top_k or 0, top_p=1.0 if top_p is None else float(top_p), seed=seed)
    stop = body.get("stop")
    stops = (stop,) if isinstance(stop, str) else tuple(stop) if isinstance(stop, list) else () if stop is None else None
    if stops is None or len(stops) > 4 or not all(isinstance(s, str) and s for s in stops):
        raise RequestError("'stop' must be a non-empty string or a list of at most 4 of them")
    stream = _type(body, "stream", (bool,), "true or false") or False
    options = _type(body, "stream_options", (dict,), "an object") or {}
    if set(options) - {"include_usage"}:
        raise RequestError(f"unrecognized stream_options field '{sorted(set(options) - {'include_usage'})[0]}'")
    messages, media = _messages(body.get("messages"), limits)
    turn = Turn(messages, max_tokens=max_tokens, sampling=sampling, stop=stops, adapter=adapter or models[model])
    return ChatRequest(model, turn, tuple(media), _schema(body.get("response_format")), stream,
                       bool(options.get("include_usage")))


def _schema(fmt: object) -> dict | None:
    if fmt is None:
        return None
    if not isinstance(fmt, dict):
        fmt = {}
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    spec = fmt.get("json_schema")
    if kind != "json_schema" or not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
        raise RequestError("'response_format' must be {'type': 'text'}, {'type': 'json_object'} or "
                           "{'type': 'json_schema', 'json_schema': {'name': ..., 'schema': {...}}}")
    schema = spec.get("schema", {})
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as e:
        raise RequestError(f"response_format.json_schema.schema is not a valid JSON schema ({e.message[:200]})") from None
    return schema


def _messages(raw: object, limits: Limits) -> tuple[list[dict], list[tuple[str, bytes | Path, str]]]:
    if not isinstance(raw, list) or not raw:
        raise RequestError("'messages' must be a non-empty list")
    if len(raw) > limits.max_messages:
        raise RequestError(f"'messages' has {len(raw)} entries; at most {limits.max_messages}")
    messages: list[dict] = []
    media: list[tuple[str, bytes | Path, str]] = []
    texts: list[str] = []   # what the client wrote, to check for references once the media are known
    for i, m in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise RequestError(f"{where}: expected an object with 'role' one of {', '.join(ROLES)}")
        if set(m) - {"role", "content", "name"}:
            raise RequestError(f"{where}: unsupported field '{sorted(set(m) - {'role', 'content', 'name'})[0]}'")
        content = m.get("content")
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(parts, list):
            raise RequestError(f"{where}.content must be text or a list of content parts")
        text = ""
        for j, part in enumerate(parts):
            piece = _part(part, f"{where}.content[{j}]", m["role"], media, limits)
            if part.get("type") == "text":
                texts.append(piece)
            text += piece
        messages.append({"role": ROLES[m["role"]], "content": text})
    kinds = {kind for kind, _, _ in media}
    for text in texts:
        if any(ref.group(1) in kinds for ref in REFERENCE.finditer(text)):
            raise RequestError("message text may not contain <|image_N|> or <|audio_N|> references: "
                               "send media as image_url / input_audio parts")
    return messages, media


def _part(part: object, where: str, role: str, media: list, limits: Limits) -> str:
    if not isinstance(part, dict):
        raise RequestError(f"{where}: a content part must be an object with a 'type'")
    kind = part.get("type")
    if kind == "text":
        if not isinstance(part.get("text"), str):
            raise RequestError(f"{where}.text must be a string")
        return part["text"]
    if kind not in ("image_url", "input_audio"):
        raise RequestError(f"{where}: content part type must be text, image_url or input_audio")
    if role != "user":
        raise RequestError(f"{where}: only user messages may carry images or audio")
    if len(media) >= limits.max_media:
        raise RequestError(f"{where}: more than {limits.max_media} images and audio clips in one request")
    if kind == "image_url":
        spec = part.get("image_url")
        url = spec.get("url") if isinstance(spec, dict) else spec
        if not isinstance(url, str):
            raise RequestError(f"{where}.image_url.url must be a string")
        media.append(("image", _data_url(url, f"{where}.image_url", limits), where))
        return f"<|image_{sum(k == 'image' for k, _, _ in media)}|>"
    spec = part.get("input_audio")
    if not isinstance(spec, dict) or not isinstance(spec.get("data"), str):
        raise RequestError(f"{where}.input_audio must be {{'data': base64, 'format': {'|'.join(sorted(AUDIO_FORMATS))}}}")
    if spec.get("format") not in AUDIO_FORMATS:
        raise RequestError(f"{where}.input_audio.format must be one of {', '.join(sorted(AUDIO_FORMATS))}")
    media.append(("audio", _base64(spec["data"], f"{where}.input_audio.data"), where))
    return f"<|audio_{sum(k == 'audio' for k, _, _ in media)}|>"


def _data_url(url: str, where: str, limits: Limits) -> bytes | Path:
    if url.startswith("data:"):
        header, sep, payload = url.partition(",")
        if not sep or not header.endswith(";base64"):
            raise RequestError(f"{where}: a data URL must be data:<type>;base64,<data>")
        return _base64(payload, where)
    if url.startswith("file://") or not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", url):   # a path
        if not limits.allow_local_files:
            raise RequestError(f"{where}: local files are refused (start the server with --allow-local-files)")
        path = Path(url.removeprefix("file://"))
        if not path.is_file():
            raise RequestError(f"{where}: no such file {path}")
        return path
    raise RequestError(f"{where}: only data: URLs are taken (this server fetches nothing from the network)")


def _base64(data: str, where: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(f"{where}: not valid base64") from None


def prepare(request: ChatRequest, engine: Engine) -> Turn:
    """Decode the media and compile the schema (CPU work, done before the request queues, so that
    a bad image is a 400 and not a failed stream)."""
    model = engine.model
    images = tuple(_item(model.prepare_image, data, where) for kind, data, where in request.media if kind == "image")
    audios = tuple(_item(model.prepare_audio, data, where) for kind, data, where in request.media if kind == "audio")
    constraint = engine.grammars.compile(request.schema) if request.schema is not None else None
    t = request.turn
    return Turn(t.messages, images, audios, t.max_tokens, t.sampling, t.stop, constraint, t.adapter)


def _item(prepare_one, data, where: str):
    from ...errors import Phi4EdgeError
    try:
        return prepare_one(data)
    except Phi4EdgeError as e:
        raise RequestError(f"{where}: {e}") from None


def error_body(message: str, kind: str = "invalid_request_error", code: str | None = None,
               param: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def usage(done: Finished) -> dict:
    return {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
            "total_tokens": done.prompt_tokens + done.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": done.cached_tokens}}


def completion(cid: str, model: str, text: str, done: Finished) -> dict:
    return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": done.finish_reason, "logprobs": None}],
            "usage": usage(done), "phi4edge": {"adapter": done.adapter, "stopped_by": done.stopped_by}}


def chunk(cid: str, model: str, delta: dict, finish: str | None = None, extra: dict | None = None) -> dict:
    return {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}], **(extra or {})}
