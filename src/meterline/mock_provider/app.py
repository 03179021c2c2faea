"""The mock provider's aiohttp application and its blocking runner.

Routes: OpenAI under `/v1` (chat/completions, completions, embeddings, responses, models,
files and batches), Anthropic `/v1/messages` and `/v1/messages/count_tokens`, Gemini
`/v1beta/models/{model}:<method>` and `/v1/models/{model}:<method>` (generateContent,
streamGenerateContent, embedContent, batchEmbedContents, countTokens), Azure OpenAI
`/openai/deployments/{deployment}/...` and `/openai/v1/...` (chat/completions, completions,
embeddings), `GET /health`, and the debug log
`GET /_mock/requests` (the last 100 API requests, oldest first: method, path, query, headers
with lower-case names, parsed JSON body or null) with `DELETE /_mock/requests` to clear it.
Health and debug requests are not logged.
"""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web

from meterline.mock_provider import anthropic_routes, azure_routes, gemini_routes, openai_responses, openai_routes
from meterline.mock_provider.delivery import json_response
from meterline.mock_provider.openai_batches import FilesAndBatches
from meterline.mock_provider.pipeline import MockState, make_handler
from meterline.mock_provider.settings import MockSettings

MAX_REQUEST_BYTES = 64 * 1024 * 1024


def create_mock_app(settings: MockSettings) -> web.Application:
    state = MockState(settings)
    openai, anthropic = openai_routes.OPENAI, anthropic_routes.ANTHROPIC
    app = web.Application(client_max_size=MAX_REQUEST_BYTES)
    app.router.add_post("/v1/chat/completions", make_handler(state, openai, openai_routes.chat_completions))
    app.router.add_post("/v1/completions", make_handler(state, openai, openai_routes.completions))
    app.router.add_post("/v1/embeddings", make_handler(state, openai, openai_routes.embeddings))
    app.router.add_post("/v1/responses", make_handler(state, openai, openai_responses.responses))
    app.router.add_get("/v1/models", make_handler(state, openai, openai_routes.models, takes_body=False))
    app.router.add_post("/v1/messages", make_handler(state, anthropic, anthropic_routes.messages))
    app.router.add_post("/v1/messages/count_tokens", make_handler(state, anthropic, anthropic_routes.count_tokens))
    files_and_batches = FilesAndBatches(state)
    app.router.add_routes(files_and_batches.routes())

    async def stop_batches(_: web.Application) -> None:
        await files_and_batches.close()

    app.on_cleanup.append(stop_batches)
    gemini_methods = {
        "generateContent": gemini_routes.generate_content,
        "streamGenerateContent": gemini_routes.stream_generate_content,
        "embedContent": gemini_routes.embed_content,
        "batchEmbedContents": gemini_routes.batch_embed_contents,
        "countTokens": gemini_routes.count_tokens,
    }
    for version in ("v1beta", "v1"):
        for method, route in gemini_methods.items():
            path = f"/{version}/models/{{model:[^/:]+}}:{method}"
            app.router.add_post(path, make_handler(state, gemini_routes.GEMINI, route))
    azure_operations = {
        "/chat/completions": azure_routes.chat,
        "/completions": azure_routes.completions,
        "/embeddings": azure_routes.embeddings,
    }
    for suffix, route in azure_operations.items():
        deployment = make_handler(state, azure_routes.AZURE_DEPLOYMENTS, route)
        app.router.add_post("/openai/deployments/{model}" + suffix, deployment)
        app.router.add_post("/openai/v1" + suffix, make_handler(state, azure_routes.AZURE_V1, route))

    async def health(request: web.Request) -> web.Response:
        return json_response({"status": "ok"})

    async def list_requests(request: web.Request) -> web.Response:
        return json_response(state.received_requests())

    async def clear_requests(request: web.Request) -> web.Response:
        cleared = len(state.requests)
        state.requests.clear()
        return json_response({"cleared": cleared})

    app.router.add_get("/health", health)
    app.router.add_get("/_mock/requests", list_requests)
    app.router.add_delete("/_mock/requests", clear_requests)
    return app


def run_mock_provider(host: str, port: int, settings: MockSettings) -> None:
    """Serve the mock until interrupted, on uvloop when it is installed."""
    try:
        import uvloop
    except ImportError:
        run = asyncio.run
    else:
        run = uvloop.run
    with contextlib.suppress(KeyboardInterrupt):
        run(_serve(host, port, settings))


async def _serve(host: str, port: int, settings: MockSettings) -> None:
    runner = web.AppRunner(create_mock_app(settings), access_log=None, handler_cancellation=True)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, backlog=1024)
        await site.start()
        bound_port = runner.addresses[0][1] if port == 0 else port
        print(f"mock provider listening on http://{host}:{bound_port}", flush=True)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
