"""A stand-in for ``prism-launcher`` in tests: serves /health, /metrics and a streaming /generate_stream that
emits ``max_new_tokens`` tokens after a delay proportional to the prompt's words, and counts prompt words as
"queried" and words seen before at the same position as "hit". Accepts and ignores the launcher's other
flags."""

from __future__ import annotations

import argparse
import asyncio
import json

from aiohttp import web


def app() -> web.Application:
    seen: set[tuple[str, ...]] = set()
    counters = {"queried": 0, "hit": 0}

    async def generate_stream(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        words = tuple(body["inputs"].split())
        hit = max((n for n in range(len(words)) if words[:n] in seen), default=0)
        seen.update(words[:n] for n in range(1, len(words) + 1))
        counters["queried"] += len(words)
        counters["hit"] += hit
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await asyncio.sleep(1e-4 * (len(words) - hit))
        n = body["parameters"]["max_new_tokens"]
        for i in range(n):
            event = {"token": {"id": i, "text": " w"}, "generated_text": "w" * n if i == n - 1 else None}
            await resp.write(f"data:{json.dumps(event)}\n\n".encode())
        return resp

    async def health(request: web.Request) -> web.Response:
        return web.Response()

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text=f"prism_prefix_cache_queried_tokens {counters['queried']}\n"
                                 f"prism_prefix_cache_hit_tokens {counters['hit']}\n")

    a = web.Application()
    a.router.add_post("/generate_stream", generate_stream)
    a.router.add_get("/health", health)
    a.router.add_get("/metrics", metrics)
    return a


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    args, _ = p.parse_known_args()
    web.run_app(app(), host="127.0.0.1", port=args.port, print=None)


if __name__ == "__main__":
    main()
