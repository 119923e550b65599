"""`get_active_clients_per_service`: KMC's active clients, per service and in total."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, StrictInt, TypeAdapter

from service.tools.kmc_api import SERVICE, kmc_get, kmc_is_configured
from service.tools.tool import JSONObject, NoArgs, Tool, ToolContext
from service.tools.upstream import parse_upstream


class _ServiceCount(BaseModel):
    model_config = ConfigDict(extra="allow")

    service: str
    client_count: StrictInt


_BREAKDOWN = TypeAdapter(list[_ServiceCount])


async def get_active_clients_per_service(args: NoArgs, ctx: ToolContext) -> JSONObject:
    """Active client counts per KMC service, as the KMC API reports them, plus their sum."""
    data: Any = await kmc_get(ctx, "/clients/active-per-service")
    # Validated for the sum; the array itself goes to the model as received.
    rows = parse_upstream(_BREAKDOWN, data, SERVICE)
    return {
        "total_active_clients": sum(row.client_count for row in rows),
        "service_breakdown": data,
    }


ACTIVE_CLIENTS_TOOL: Tool[NoArgs] = Tool(
    name="get_active_clients_per_service",
    description=(
        "Get the number of active KMC clients for each service (dedicated office, coworking, "
        "virtual office, ...) and the total across services."
    ),
    args_model=NoArgs,
    func=get_active_clients_per_service,
    is_configured=kmc_is_configured,
)
