"""`helm test` checks of a LocalMoE release: `models`, `chat` or `stream` against the gateway.

Run by the pods of templates/tests (gateway image: Python and the `localmoe` CLI, nothing else):

    python smoke.py models|chat|stream http://<release>-localmoe-gateway:80

The token is `$TOKEN` when set (a Secret of yours, for a public key or a JWKS), else one minted
with the gateway's own HS256 secret by `localmoe token`. Exits non-zero, saying why, on failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request

CONFIG = os.environ.get("LOCALMOE_CONFIG_FILE", "/etc/localmoe/config.yaml")
PROMPT = [{"role": "user", "content": "Say hello."}]


def main(argv: list[str]) -> int:
    check, base = argv[1], argv[2].rstrip("/")
    token = _token()
    models = _request(f"{base}/v1/models", token)["data"]
    if not models:
        return _fail("GET /v1/models listed no model")
    model = models[0]["id"]
    if check == "models":
        print(f"ok: models {[m['id'] for m in models]}")
        return 0
    body = {"model": model, "messages": PROMPT, "max_tokens": 8, "temperature": 0}
    if check == "chat":
        reply = _request(f"{base}/v1/chat/completions", token, body)
        choice = reply["choices"][0]
        if choice["finish_reason"] not in ("stop", "length") or not reply["usage"]["total_tokens"]:
            return _fail(f"unexpected chat completion: {reply}")
        print(f"ok: chat with {model}: {choice['message']['content']!r}")
        return 0
    if check == "stream":
        chunks, done = _stream(f"{base}/v1/chat/completions", token, {**body, "stream": True})
        text = "".join(
            c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]
        )
        if not done or not text:
            return _fail(f"stream ended without [DONE] or text ({len(chunks)} chunks)")
        print(f"ok: streamed {len(chunks)} chunks from {model}: {text!r}")
        return 0
    return _fail(f"unknown check {check!r}: models, chat or stream")


def _token() -> str:
    if os.environ.get("TOKEN"):
        return os.environ["TOKEN"]
    minted = subprocess.run(
        ["localmoe", "token", "--sub", "helm-test", "--ttl", "10m", "--config", CONFIG],
        capture_output=True,
        text=True,
        check=True,
    )
    return minted.stdout.strip().splitlines()[-1]


def _request(url: str, token: str, body: dict | None = None) -> dict:
    with urllib.request.urlopen(_build(url, token, body), timeout=60) as response:
        return json.load(response)


def _stream(url: str, token: str, body: dict) -> tuple[list[dict], bool]:
    chunks, done = [], False
    with urllib.request.urlopen(_build(url, token, body), timeout=60) as response:
        for raw in response:
            line = raw.decode().strip()
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: "):
                chunks.append(json.loads(line[len("data: ") :]))
    return chunks, done


def _build(url: str, token: str, body: dict | None) -> urllib.request.Request:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    return urllib.request.Request(url, data=data, headers=headers)


def _fail(message: str) -> int:
    print(f"FAILED: {message}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
