"""The KMC API as both KMC tools use it: base URL from config, key in the `x-api-key` header."""

from __future__ import annotations

from typing import Any

from service.tools.tool import ToolConfig, ToolContext, ToolError
from service.tools.upstream import QueryValue, fetch_json

SERVICE = "KMC API"


def kmc_is_configured(config: ToolConfig) -> bool:
    """Both the KMC API URL and key are set."""
    return config.kmc_api_url is not None and config.kmc_api_key is not None


async def kmc_get(ctx: ToolContext, path: str, params: dict[str, QueryValue] | None = None) -> Any:
    """GET `<KMC_API_URL><path>` and return its JSON body."""
    url, key = ctx.config.kmc_api_url, ctx.config.kmc_api_key
    if url is None or key is None:  # such tools are not offered; kept for direct callers
        raise ToolError("the KMC API is not configured")
    return await fetch_json(
        ctx, SERVICE, f"{url.rstrip('/')}{path}", params=params, headers={"x-api-key": key}
    )
