"""A chat request's messages as the model's chat template takes them, and the rendered prompt.

Text-only requests render as they always have: content parts joined into one string. A request
with images gives the template content parts (`{"type": "image"}` for each image), as vision
templates expect; a template that does not place them (one written for text) gets the image
placeholder inline in the joined text instead, so each image still has exactly one placeholder.
"""

from __future__ import annotations

import json
from typing import Any

from gateway.core.catalogue import ServedModel
from gateway.core.protocol import ChatCompletionRequest, ContentPart, ToolCall
from gateway.errors import InvalidRequest


def render_prompt(model: ServedModel, request: ChatCompletionRequest, images: int) -> str:
    """The prompt text of `request` for `model`, with one placeholder per image."""
    template = model.chat_template
    if template is None:
        raise InvalidRequest(
            f"Model '{model.id}' has no chat template; use /v1/completions.", param="model"
        )
    calls_as_text = not template.renders_tool_calls
    # `tool_choice: none` means no call: a model shown the tools could still write one as text.
    tools = None if request.tool_choice == "none" else request.tools
    if not images:
        return template.render(chat_messages(request, calls_as_text=calls_as_text), tools=tools)
    token = model.image_token
    try:
        prompt = template.render(
            chat_messages(request, parts=True, calls_as_text=calls_as_text), tools=tools
        )
    except InvalidRequest:
        if token is None:  # nothing else to try
            raise
    else:
        if token is None or prompt.count(token) == images:
            return prompt
    messages = chat_messages(request, image_token=token, calls_as_text=calls_as_text)
    prompt = template.render(messages, tools=tools)
    if prompt.count(token) != images:
        raise InvalidRequest(
            f"The chat template of model '{model.id}' does not place the request's images.",
            param="messages",
        )
    return prompt


def chat_messages(
    request: ChatCompletionRequest,
    *,
    image_token: str | None = None,
    parts: bool = False,
    calls_as_text: bool = False,
) -> list[dict[str, Any]]:
    """The messages as the chat template expects them: content parts joined into one string,
    where an image part is `image_token` (dropped without one); with `parts`, lists of
    `{"type": "text", "text": ...}` and `{"type": "image"}` parts, as vision templates take.
    With `calls_as_text` (a template without a tool format), an assistant's `tool_calls` with no
    content become its content, as the JSON the gateway constrains tool calls to."""
    messages = []
    for message in request.messages:
        content: Any = message.content
        if isinstance(content, list):
            if parts:
                content = [_template_part(part) for part in content]
            else:
                pieces = [part.text if part.type == "text" else image_token for part in content]
                content = "\n".join(piece for piece in pieces if piece is not None)
        # `developer` is OpenAI's newer name for `system`; chat templates know only `system`.
        role = "system" if message.role == "developer" else message.role
        entry: dict[str, Any] = {"role": role, "content": content}
        if message.name is not None:
            entry["name"] = message.name
        if message.tool_calls is not None:
            entry["tool_calls"] = [call.model_dump() for call in message.tool_calls]
            if calls_as_text and content is None:
                entry["content"] = calls_text(message.tool_calls)
        if message.tool_call_id is not None:
            entry["tool_call_id"] = message.tool_call_id
        messages.append(entry)
    return messages


def calls_text(calls: list[ToolCall]) -> str:
    """Tool calls as `{"name", "arguments"}` JSON (an array of several): what the model was
    constrained to write when it made them (`gateway.core.structured`)."""
    written = []
    for call in calls:
        try:
            arguments = json.loads(call.function.arguments)
        except ValueError:  # the client's own text: kept as it is
            arguments = call.function.arguments
        written.append({"name": call.function.name, "arguments": arguments})
    return json.dumps(written[0] if len(written) == 1 else written, ensure_ascii=False)


def _template_part(part: ContentPart) -> dict[str, Any]:
    if part.type == "text":
        return {"type": "text", "text": part.text or ""}
    return {"type": "image"}
