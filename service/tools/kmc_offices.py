"""`get_available_offices`: KMC offices in a city with room for a given number of people."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from service.tools.fields import NOT_BOOL, CityName
from service.tools.kmc_api import SERVICE, kmc_get, kmc_is_configured
from service.tools.tool import JSONObject, Tool, ToolContext
from service.tools.upstream import parse_upstream

MAX_CAPACITY = 100_000


class OfficeSearchArgs(BaseModel):
    """Arguments of `get_available_offices`."""

    model_config = ConfigDict(extra="forbid")

    city: CityName
    capacity: Annotated[
        int,
        Field(ge=1, le=MAX_CAPACITY, description="Number of people the office must seat."),
        NOT_BOOL,
    ]


_OFFICES = TypeAdapter(list[dict[str, Any]])


async def get_available_offices(args: OfficeSearchArgs, ctx: ToolContext) -> JSONObject:
    """Available KMC offices in `city` seating at least `capacity` people."""
    data: Any = await kmc_get(
        ctx, "/offices/available", {"city": args.city, "capacity": args.capacity}
    )
    offices = parse_upstream(_OFFICES, data, SERVICE)
    return {
        "total_available_spaces": len(offices),
        "city": args.city,
        "required_capacity": args.capacity,
        "available_offices": offices,
    }


AVAILABLE_OFFICES_TOOL: Tool[OfficeSearchArgs] = Tool(
    name="get_available_offices",
    description=(
        "List the KMC offices currently available in a city that seat at least `capacity` "
        "people, with their details such as name, capacity and monthly rate."
    ),
    args_model=OfficeSearchArgs,
    func=get_available_offices,
    is_configured=kmc_is_configured,
)
