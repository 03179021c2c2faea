"""A fake LLM provider that speaks the OpenAI and Anthropic HTTP wire formats.

`meterline mock-provider` serves it for demos, load tests and CI: the official SDKs work
against it unmodified, token counts are deterministic (`tokens.count_tokens`), usage details
and faults are chosen per request with `x-mock-*` headers, and `/_mock/requests` shows what a
gateway forwarded. Entry points: `app.create_mock_app` and `app.run_mock_provider`.
"""
