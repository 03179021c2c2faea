"""Azure OpenAI as an upstream (`kind: azure_openai`): OpenAI's wire format at Azure's URLs, with its `api-key`.

`base_url` is the resource's endpoint (`https://<resource>.openai.azure.com`). A model's
`upstream_model` is the deployment name. With `api_version` set, calls go to
`/openai/deployments/<deployment>/chat/completions?api-version=<api_version>` (and `/completions`,
`/embeddings`; the Responses API is not per deployment: `/openai/responses?api-version=...`, the
deployment in the body); without it, to Azure's v1 API, `/openai/v1/chat/completions` and so on,
the deployment in the body's `model`. Azure answers with the model the deployment runs
(`gpt-4o-2024-08-06`), which prices the call; the provider's `deployments` map (deployment ->
model) prices what is known before an answer (budget estimates) or without one.
Clients reach this provider through any OpenAI-format URL of the gateway, Azure's included
(`meterline.providers.openai`).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from meterline.providers.openai import OpenAIProvider

_DEPLOYMENT_OPERATIONS = frozenset({"chat", "completion", "embeddings"})


class AzureOpenAIProvider(OpenAIProvider):
    kind = "azure_openai"
    pricing_id_default = "azure"
    settings = frozenset({"api_version", "stream_usage"})

    def url(self, operation: str, body: dict[str, Any], upstream_model: str, streaming: bool) -> str:
        version = self.config.api_version
        if version is None:
            return f"{self.config.base_url}/openai/v1{self.path(operation)}"
        query = f"?api-version={quote(version, safe='')}"
        if operation not in _DEPLOYMENT_OPERATIONS:
            return f"{self.config.base_url}/openai{self.path(operation)}{query}"
        deployment = quote(upstream_model, safe="")
        return f"{self.config.base_url}/openai/deployments/{deployment}{self.path(operation)}{query}"

    def auth_headers(self) -> dict[str, str]:
        return {"api-key": self.config.api_key} if self.config.api_key else {}
