"""`get_weather`: current weather for a city, from OpenWeather geocoding + current weather."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, TypeAdapter

from service.tools.fields import CityName
from service.tools.tool import JSONObject, Tool, ToolConfig, ToolContext, ToolError
from service.tools.upstream import fetch_json, parse_upstream

SERVICE = "OpenWeather"


def _blank_to_none(value: object) -> object:
    # Models often send "" for an optional argument they mean to leave out.
    if isinstance(value, str) and not value.strip():
        return None
    return value


CountryCode = Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")]


class WeatherArgs(BaseModel):
    """Arguments of `get_weather`."""

    model_config = ConfigDict(extra="forbid")

    city: CityName
    country_code: Annotated[
        CountryCode | None,
        BeforeValidator(_blank_to_none),
        Field(description="ISO 3166-1 alpha-2 country code in capitals, e.g. 'PH'; optional."),
    ] = None


class _Place(BaseModel):
    name: str
    lat: float
    lon: float
    country: str = ""


class _Main(BaseModel):
    temp: float
    feels_like: float
    humidity: int | float


class _Condition(BaseModel):
    description: str


class _Wind(BaseModel):
    speed: float | None = None


class _CurrentWeather(BaseModel):
    main: _Main
    weather: list[_Condition] = []
    wind: _Wind = _Wind()


_PLACES = TypeAdapter(list[_Place])
_CURRENT = TypeAdapter(_CurrentWeather)


async def get_weather(args: WeatherArgs, ctx: ToolContext) -> JSONObject:
    """Current weather (metric) for a city, located with OpenWeather's geocoding API."""
    key = ctx.config.openweather_api_key
    if key is None:  # not offered when unset; kept for direct callers
        raise ToolError("weather is not configured")
    base = ctx.config.openweather_base_url.rstrip("/")
    query = args.city if args.country_code is None else f"{args.city},{args.country_code}"

    places = parse_upstream(
        _PLACES,
        await fetch_json(
            ctx, SERVICE, f"{base}/geo/1.0/direct", params={"q": query, "limit": 1, "appid": key}
        ),
        SERVICE,
    )
    if not places:
        raise ToolError(f"city not found: {args.city}")
    place = places[0]

    current = parse_upstream(
        _CURRENT,
        await fetch_json(
            ctx,
            SERVICE,
            f"{base}/data/2.5/weather",
            params={"lat": place.lat, "lon": place.lon, "units": "metric", "appid": key},
        ),
        SERVICE,
    )
    return {
        "temperature": current.main.temp,
        "feels_like": current.main.feels_like,
        "humidity": current.main.humidity,
        "description": current.weather[0].description if current.weather else None,
        "wind_speed": current.wind.speed,
        "location": {"name": place.name, "country": place.country},
    }


def _is_configured(config: ToolConfig) -> bool:
    return config.openweather_api_key is not None


WEATHER_TOOL: Tool[WeatherArgs] = Tool(
    name="get_weather",
    description=(
        "Get the current weather for a city: temperature and feels-like in °C, humidity in %, "
        "a short description and wind speed in m/s. Give country_code when the city name is "
        "ambiguous."
    ),
    args_model=WeatherArgs,
    func=get_weather,
    is_configured=_is_configured,
)
