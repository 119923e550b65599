"""Tools against the fake OpenWeather/KMC server, through a real httpx2 client."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import pytest
from pydantic import BaseModel

from service.tools import (
    ALL_TOOLS,
    NoArgs,
    Tool,
    ToolConfig,
    ToolContext,
    ToolRegistry,
    ToolResult,
    fit_output,
)
from tests.fakes.apis import FakeApis

OW_KEY = "sk-SECRET-ow-123"
KMC_KEY = "sk-SECRET-kmc-456"


@pytest.fixture
async def apis() -> AsyncIterator[FakeApis]:
    fake = FakeApis(openweather_key=OW_KEY, kmc_key=KMC_KEY)
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def http() -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(trust_env=False) as client:
        yield client


def config_for(apis: FakeApis, **overrides: Any) -> ToolConfig:
    settings: dict[str, Any] = {
        "openweather_api_key": OW_KEY,
        "openweather_base_url": apis.base_url,
        "kmc_api_url": apis.base_url,
        "kmc_api_key": KMC_KEY,
        "timeout": 5.0,
    }
    settings.update(overrides)
    return ToolConfig(**settings)


@pytest.fixture
def registry(apis: FakeApis, http: httpx2.AsyncClient) -> ToolRegistry:
    return ToolRegistry.from_config(config_for(apis), http)


async def call(registry: ToolRegistry, name: str, arguments: Any) -> ToolResult:
    text = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return await registry.call("call_1", name, text)


def output_of(result: ToolResult) -> Any:
    return json.loads(result.output)


def error_of(result: ToolResult) -> str:
    assert not result.ok
    body = output_of(result)
    assert set(body) == {"error"}
    assert body["error"] == result.error
    assert result.error is not None
    return result.error


# -- happy paths -------------------------------------------------------------------------------


async def test_weather_geocodes_the_city_then_returns_metric_conditions(
    registry: ToolRegistry, apis: FakeApis
) -> None:
    result = await call(registry, "get_weather", {"city": "  Makati "})

    assert result.ok, result.output
    assert (result.call_id, result.name, result.error) == ("call_1", "get_weather", None)
    assert output_of(result) == {
        "temperature": 31.2,
        "feels_like": 37.4,
        "humidity": 66,
        "description": "broken clouds",
        "wind_speed": 4.12,
        "location": {"name": "Makati", "country": "PH"},
    }
    geo, weather = apis.requests
    assert geo.path == "/geo/1.0/direct"
    assert geo.query == {"q": "Makati", "limit": "1", "appid": OW_KEY}
    assert weather.path == "/data/2.5/weather"
    assert weather.query == {
        "lat": "14.5547",
        "lon": "121.0244",
        "units": "metric",
        "appid": OW_KEY,
    }


async def test_weather_narrows_geocoding_with_the_country_code(
    registry: ToolRegistry, apis: FakeApis
) -> None:
    result = await call(registry, "get_weather", {"city": "London", "country_code": "CA"})

    assert output_of(result)["location"] == {"name": "London", "country": "CA"}
    assert apis.requests[0].query["q"] == "London,CA"


@pytest.mark.parametrize("country_code", [None, ""])
async def test_weather_without_country_code_takes_the_first_match(
    registry: ToolRegistry, apis: FakeApis, country_code: str | None
) -> None:
    result = await call(registry, "get_weather", {"city": "London", "country_code": country_code})

    assert output_of(result)["location"] == {"name": "London", "country": "GB"}
    assert apis.requests[0].query["q"] == "London"


async def test_weather_accepts_non_ascii_and_punctuated_city_names(
    registry: ToolRegistry, apis: FakeApis
) -> None:
    result = await call(registry, "get_weather", {"city": "São Paulo"})
    assert output_of(result)["location"] == {"name": "São Paulo", "country": "BR"}

    result = await call(registry, "get_weather", {"city": "St. John's, Coeur-d\u2019Alene"})
    assert error_of(result) == "city not found: St. John's, Coeur-d\u2019Alene"


async def test_weather_for_an_unknown_city_says_not_found(
    registry: ToolRegistry, apis: FakeApis
) -> None:
    result = await call(registry, "get_weather", {"city": "Atlantis"})

    assert error_of(result) == "city not found: Atlantis"
    assert [r.path for r in apis.requests] == ["/geo/1.0/direct"]


async def test_active_clients_are_summed_and_the_breakdown_passes_through(
    registry: ToolRegistry, apis: FakeApis
) -> None:
    breakdown = [
        {"service": "Dedicated Office", "client_count": 42},
        {"service": "Coworking", "client_count": 100, "region": "NCR"},
        {"service": "Virtual Office", "client_count": 0},
    ]
    apis.set_clients(breakdown)

    result = await call(registry, "get_active_clients_per_service", {})

    assert result.ok, result.output
    assert output_of(result) == {"total_active_clients": 142, "service_breakdown": breakdown}
    (request,) = apis.requests
    assert request.path == "/clients/active-per-service"
    assert request.headers["x-api-key"] == KMC_KEY
    assert request.query == {}


@pytest.mark.parametrize("arguments", ["", "  ", "{}"])
async def test_a_tool_without_parameters_accepts_empty_arguments(
    registry: ToolRegistry, arguments: str
) -> None:
    result = await call(registry, "get_active_clients_per_service", arguments)

    assert result.ok, result.output
    assert output_of(result)["total_active_clients"] == 284


async def test_available_offices_are_counted_and_extra_keys_pass_through(
    registry: ToolRegistry, apis: FakeApis
) -> None:
    office = {
        "name": "KMC Test Tower 5F",
        "city": "Makati",
        "capacity": 12,
        "monthly_rate": 1234.5,
        "floor": 5,
    }
    apis.set_offices([office, {**office, "name": "Too small", "capacity": 4}])

    result = await call(registry, "get_available_offices", {"city": "Makati", "capacity": "10"})

    assert result.ok, result.output
    assert output_of(result) == {
        "total_available_spaces": 1,
        "city": "Makati",
        "required_capacity": 10,
        "available_offices": [office],
    }
    (request,) = apis.requests
    assert request.path == "/offices/available"
    assert request.query == {"city": "Makati", "capacity": "10"}
    assert request.headers["x-api-key"] == KMC_KEY


# -- definitions -------------------------------------------------------------------------------


def test_responses_definitions_carry_the_generated_schemas(registry: ToolRegistry) -> None:
    definitions = {d["name"]: d for d in registry.responses_definitions()}

    assert list(definitions) == list(registry.names)
    assert registry.names == (
        "get_weather",
        "get_active_clients_per_service",
        "get_available_offices",
    )
    for definition in definitions.values():
        assert set(definition) == {"type", "name", "description", "parameters", "strict"}
        assert definition["type"] == "function"
        assert definition["strict"] is False
        assert definition["description"]
        assert definition["parameters"]["type"] == "object"
        assert definition["parameters"]["additionalProperties"] is False
        assert "title" not in json.dumps(definition["parameters"])

    weather = definitions["get_weather"]["parameters"]
    assert weather["required"] == ["city"]
    assert weather["properties"]["city"]["type"] == "string"
    assert weather["properties"]["city"]["maxLength"] == 100
    assert {"type": "string", "pattern": "^[A-Z]{2}$"} in weather["properties"]["country_code"][
        "anyOf"
    ]

    offices = definitions["get_available_offices"]["parameters"]
    assert offices["required"] == ["city", "capacity"]
    assert offices["properties"]["capacity"]["type"] == "integer"
    assert offices["properties"]["capacity"]["minimum"] == 1

    clients = definitions["get_active_clients_per_service"]["parameters"]
    assert clients["properties"] == {}
    assert clients["required"] == []


def test_assistants_definitions_wrap_the_same_schemas(registry: ToolRegistry) -> None:
    responses = registry.responses_definitions()
    assistants = registry.assistants_definitions()

    assert assistants == [
        {
            "type": "function",
            "function": {
                "name": d["name"],
                "description": d["description"],
                "parameters": d["parameters"],
            },
        }
        for d in responses
    ]


def test_definitions_are_copies(registry: ToolRegistry) -> None:
    registry.responses_definitions()[0]["parameters"]["properties"].clear()

    assert registry.responses_definitions()[0]["parameters"]["properties"]


# -- configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "offered"),
    [
        ({}, ()),
        ({"openweather_api_key": "k"}, ("get_weather",)),
        ({"openweather_api_key": "  "}, ()),
        ({"kmc_api_url": "http://kmc.invalid"}, ()),
        ({"kmc_api_key": "k"}, ()),
        (
            {"kmc_api_url": "http://kmc.invalid", "kmc_api_key": "k"},
            ("get_active_clients_per_service", "get_available_offices"),
        ),
        (
            {"openweather_api_key": "k", "kmc_api_url": "http://kmc.invalid", "kmc_api_key": ""},
            ("get_weather",),
        ),
    ],
)
async def test_only_configured_tools_are_offered(
    http: httpx2.AsyncClient, settings: dict[str, Any], offered: tuple[str, ...]
) -> None:
    registry = ToolRegistry.from_config(ToolConfig(**settings), http)

    assert registry.names == offered
    assert [d["name"] for d in registry.responses_definitions()] == list(offered)


async def test_an_unconfigured_tool_is_unknown_to_call(http: httpx2.AsyncClient) -> None:
    registry = ToolRegistry.from_config(ToolConfig(openweather_api_key="k"), http)

    result = await call(registry, "get_available_offices", {"city": "Makati", "capacity": 1})

    assert error_of(result).startswith("unknown tool 'get_available_offices'")


async def test_enabled_restricts_the_offered_tools(
    apis: FakeApis, http: httpx2.AsyncClient
) -> None:
    config = config_for(apis, enabled=("get_available_offices",))

    assert ToolRegistry.from_config(config, http).names == ("get_available_offices",)


async def test_enabling_an_unknown_tool_fails_at_start(
    apis: FakeApis, http: httpx2.AsyncClient
) -> None:
    with pytest.raises(ValueError, match="get_wether"):
        ToolRegistry.from_config(config_for(apis, enabled=("get_wether",)), http)


@pytest.mark.parametrize(
    "settings", [{"timeout": 0}, {"max_output_chars": 10}, {"openweather_base_url": " "}]
)
def test_nonsensical_settings_fail_at_start(settings: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ToolConfig(**settings)


# -- arguments ---------------------------------------------------------------------------------

INVALID_ARGUMENTS = [
    ("get_weather", {}, "city: Field required"),
    ("get_weather", {"city": ""}, "city:"),
    ("get_weather", {"city": "   "}, "city:"),
    ("get_weather", {"city": "x" * 101}, "city:"),
    ("get_weather", {"city": 42}, "city:"),
    ("get_weather", {"city": "Makati&appid=x"}, "city:"),
    ("get_weather", {"city": "../../admin"}, "city:"),
    ("get_weather", {"city": "Makati?x=1"}, "city:"),
    ("get_weather", {"city": "Makati#top"}, "city:"),
    ("get_weather", {"city": "100%20Makati"}, "city:"),
    ("get_weather", {"city": "C:\\Windows"}, "city:"),
    ("get_weather", {"city": "a\nb"}, "city:"),
    ("get_weather", {"city": "Makati\u0000"}, "city:"),
    ("get_weather", {"city": "Makati\tCity"}, "city:"),
    ("get_weather", {"city": "12345"}, "city:"),
    ("get_weather", '{"city": "Makati\\ud800"}', "city:"),
    ("get_weather", {"city": "Makati", "country_code": "ph"}, "country_code:"),
    ("get_weather", {"city": "Makati", "country_code": "PHL"}, "country_code:"),
    ("get_weather", {"city": "Makati", "country_code": "PH\n"}, "country_code:"),
    ("get_weather", {"city": "Makati", "country_code": "PH&x=1"}, "country_code:"),
    ("get_weather", {"city": "Makati", "units": "imperial"}, "units: Extra inputs"),
    ("get_available_offices", {"city": "Makati"}, "capacity: Field required"),
    ("get_available_offices", {"city": "Makati", "capacity": 0}, "capacity:"),
    ("get_available_offices", {"city": "Makati", "capacity": -3}, "capacity:"),
    ("get_available_offices", {"city": "Makati", "capacity": 100_001}, "capacity:"),
    ("get_available_offices", {"city": "Makati", "capacity": 2.5}, "capacity:"),
    ("get_available_offices", {"city": "Makati", "capacity": True}, "capacity:"),
    ("get_available_offices", {"city": "Makati", "capacity": "lots"}, "capacity:"),
    ("get_available_offices", {"city": "Makati/../x", "capacity": 5}, "city:"),
    ("get_active_clients_per_service", {"service": "Coworking"}, "service: Extra inputs"),
]


@pytest.mark.parametrize(("name", "arguments", "expected"), INVALID_ARGUMENTS)
async def test_invalid_arguments_are_refused_before_any_request(
    registry: ToolRegistry, apis: FakeApis, name: str, arguments: Any, expected: str
) -> None:
    result = await call(registry, name, arguments)

    error = error_of(result)
    assert error.startswith("invalid arguments: ")
    assert expected in error
    assert "pydantic" not in error
    assert "http" not in error
    assert apis.requests == []


async def test_all_invalid_fields_are_listed(registry: ToolRegistry) -> None:
    result = await call(registry, "get_available_offices", {"city": "a&b", "capacity": 0})

    error = error_of(result)
    assert "city: contains a character that is not allowed ('&')" in error
    assert "capacity: Input should be greater than or equal to 1" in error


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ("{city: Makati}", "arguments are not valid JSON"),
        ('{"city": "Makati"', "arguments are not valid JSON"),
        ('["Makati"]', "arguments must be a JSON object"),
        ('"Makati"', "arguments must be a JSON object"),
        ("null", "arguments must be a JSON object"),
        ('{"city": "' + "x" * 30_000 + '"}', "arguments are longer than"),
    ],
)
async def test_arguments_that_are_not_a_json_object_are_refused(
    registry: ToolRegistry, apis: FakeApis, arguments: str, expected: str
) -> None:
    result = await call(registry, "get_weather", arguments)

    assert error_of(result).startswith(expected)
    assert apis.requests == []


async def test_an_unknown_tool_is_reported_with_the_available_ones(
    registry: ToolRegistry, apis: FakeApis
) -> None:
    result = await call(registry, "delete_everything", {})

    assert error_of(result) == (
        "unknown tool 'delete_everything'; available tools: get_weather, "
        "get_active_clients_per_service, get_available_offices"
    )
    assert result.name == "delete_everything"
    assert apis.requests == []


# -- upstream failures -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "status", "name", "arguments", "expected"),
    [
        (
            "/offices",
            500,
            "get_available_offices",
            {"city": "Makati", "capacity": 2},
            "KMC API is unavailable (HTTP 500)",
        ),
        (
            "/clients",
            503,
            "get_active_clients_per_service",
            {},
            "KMC API is unavailable (HTTP 503)",
        ),
        (
            "/geo",
            429,
            "get_weather",
            {"city": "Makati"},
            "OpenWeather is rate limiting requests (HTTP 429), try again later",
        ),
        ("/data", 500, "get_weather", {"city": "Makati"}, "OpenWeather is unavailable (HTTP 500)"),
        (
            "/offices",
            404,
            "get_available_offices",
            {"city": "Makati", "capacity": 2},
            "KMC API answered HTTP 404",
        ),
    ],
)
async def test_upstream_http_errors_become_safe_error_texts(
    registry: ToolRegistry,
    apis: FakeApis,
    path: str,
    status: int,
    name: str,
    arguments: Any,
    expected: str,
) -> None:
    apis.fail(path, status)

    result = await call(registry, name, arguments)

    assert error_of(result) == expected


async def test_a_rejected_key_is_reported_without_the_key(
    apis: FakeApis, http: httpx2.AsyncClient
) -> None:
    registry = ToolRegistry.from_config(
        config_for(apis, openweather_api_key="sk-SECRET-wrong", kmc_api_key="sk-SECRET-wrong2"),
        http,
    )

    weather = await call(registry, "get_weather", {"city": "Makati"})
    clients = await call(registry, "get_active_clients_per_service", {})

    assert error_of(weather) == "OpenWeather rejected the API key (HTTP 401)"
    assert error_of(clients) == "KMC API rejected the API key (HTTP 401)"


@pytest.mark.parametrize(
    ("name", "arguments", "path", "body"),
    [
        ("get_active_clients_per_service", {}, "/clients", [{"service": "Coworking"}]),
        ("get_active_clients_per_service", {}, "/clients", {"clients": []}),
        ("get_active_clients_per_service", {}, "/clients", [{"service": "x", "client_count": "7"}]),
        ("get_available_offices", {"city": "Makati", "capacity": 1}, "/offices", {"offices": []}),
        ("get_available_offices", {"city": "Makati", "capacity": 1}, "/offices", ["not an office"]),
        ("get_weather", {"city": "Makati"}, "/geo", {"name": "Makati"}),
        ("get_weather", {"city": "Makati"}, "/geo", [{"name": "Makati", "lat": "north"}]),
        ("get_weather", {"city": "Makati"}, "/data", {"cod": 200, "weather": []}),
    ],
)  # fmt: skip
async def test_unexpected_upstream_json_shapes_become_errors(
    registry: ToolRegistry, apis: FakeApis, name: str, arguments: Any, path: str, body: Any
) -> None:
    apis.fail(path, 200, body)

    result = await call(registry, name, arguments)

    assert error_of(result).endswith("returned an unexpected response")


async def test_a_slow_upstream_times_out_after_the_configured_timeout(
    apis: FakeApis, http: httpx2.AsyncClient
) -> None:
    registry = ToolRegistry.from_config(config_for(apis, timeout=0.1), http)
    apis.delay("/data", 30)

    result = await call(registry, "get_weather", {"city": "Makati"})

    assert error_of(result) == "get_weather timed out after 0.1 s"
    assert result.duration_ms < 5_000


async def test_the_http_clients_own_timeout_is_reported_as_no_answer(apis: FakeApis) -> None:
    apis.delay("/clients", 30)
    async with httpx2.AsyncClient(trust_env=False, timeout=0.1) as impatient:
        registry = ToolRegistry.from_config(config_for(apis), impatient)

        result = await call(registry, "get_active_clients_per_service", {})

    assert error_of(result) == "KMC API did not answer in time"


async def test_an_unreachable_upstream_is_reported_by_exception_class(
    http: httpx2.AsyncClient,
) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    config = ToolConfig(openweather_api_key=OW_KEY, openweather_base_url=closed, timeout=5)
    registry = ToolRegistry.from_config(config, http)

    result = await call(registry, "get_weather", {"city": "Makati"})

    assert error_of(result) == "could not reach OpenWeather (ConnectError)"


async def test_cancellation_propagates(registry: ToolRegistry, apis: FakeApis) -> None:
    apis.delay("/clients", 30)
    task = asyncio.create_task(call(registry, "get_active_clients_per_service", {}))
    async with asyncio.timeout(5):
        await apis.wait_for_requests(1)

    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await task


# -- secrets -----------------------------------------------------------------------------------


async def test_keys_never_reach_the_model_or_the_logs(
    apis: FakeApis, http: httpx2.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    registry = ToolRegistry.from_config(config_for(apis, timeout=0.2), http)
    wrong_keys = ToolRegistry.from_config(
        config_for(apis, openweather_api_key="sk-SECRET-ow-999", kmc_api_key="sk-SECRET-kmc-999"),
        http,
    )
    results = [
        await call(registry, "get_weather", {"city": "Makati"}),
        await call(registry, "get_active_clients_per_service", {}),
        await call(registry, "get_available_offices", {"city": "Makati", "capacity": 1}),
        await call(wrong_keys, "get_weather", {"city": "Makati"}),
        await call(wrong_keys, "get_available_offices", {"city": "Makati", "capacity": 1}),
        await call(registry, "get_weather", {"city": "Makati&appid=x"}),
    ]
    apis.fail("/data", 500)
    results.append(await call(registry, "get_weather", {"city": "Makati"}))
    apis.reset()
    apis.delay("/geo", 30)
    results.append(await call(registry, "get_weather", {"city": "Makati"}))

    assert [r.ok for r in results] == [True, True, True] + [False] * 5
    texts = [r.output for r in results] + [r.error or "" for r in results] + [caplog.text]
    texts += [record.getMessage() for record in caplog.records]
    assert "HTTP Request: GET" in caplog.text  # httpx did log, without the query string
    for text in texts:
        for secret in ("sk-SECRET",):
            assert secret not in text
        assert "appid=" not in text


async def test_a_key_echoed_by_the_upstream_is_redacted(
    registry: ToolRegistry, apis: FakeApis
) -> None:
    apis.set_offices([{"name": f"Office of {KMC_KEY}", "city": "Makati", "capacity": 3}])

    result = await call(registry, "get_available_offices", {"city": "Makati", "capacity": 1})

    assert KMC_KEY not in result.output
    assert output_of(result)["available_offices"][0]["name"] == "Office of ***"


# -- concurrency -------------------------------------------------------------------------------


async def test_call_many_runs_calls_concurrently_and_keeps_their_order(
    registry: ToolRegistry, apis: FakeApis
) -> None:
    apis.delay("/", 0.2)

    results = await registry.call_many(
        [
            ("c1", "get_available_offices", '{"city": "Makati", "capacity": 20}'),
            ("c2", "get_active_clients_per_service", "{}"),
            ("c3", "no_such_tool", "{}"),
            ("c4", "get_available_offices", '{"city": "Taguig", "capacity": 1}'),
        ]
    )

    assert [(r.call_id, r.name, r.ok) for r in results] == [
        ("c1", "get_available_offices", True),
        ("c2", "get_active_clients_per_service", True),
        ("c3", "no_such_tool", False),
        ("c4", "get_available_offices", True),
    ]
    assert output_of(results[0])["total_available_spaces"] == 2
    assert output_of(results[3])["city"] == "Taguig"
    assert apis.max_in_flight == 3


async def test_call_many_with_no_calls_returns_nothing(registry: ToolRegistry) -> None:
    assert await registry.call_many([]) == []


# -- output size -------------------------------------------------------------------------------


async def test_a_large_result_keeps_fewer_offices_and_says_it_was_truncated(
    apis: FakeApis, http: httpx2.AsyncClient
) -> None:
    offices = [
        {"name": f"KMC Tower {i}", "city": "Makati", "capacity": 10 + i, "monthly_rate": 1000.0}
        for i in range(300)
    ]
    apis.set_offices(offices)
    registry = ToolRegistry.from_config(config_for(apis, max_output_chars=2_000), http)

    result = await call(registry, "get_available_offices", {"city": "Makati", "capacity": 1})

    assert result.ok
    assert len(result.output) <= 2_000
    body = output_of(result)
    assert body["truncated"] is True
    assert body["total_available_spaces"] == 300
    kept = body["available_offices"]
    assert 0 < len(kept) < 300
    assert kept == offices[: len(kept)]
    assert len(json.dumps({**body, "available_offices": offices[: len(kept) + 1]})) > 2_000


def test_a_result_that_fits_is_not_marked_truncated() -> None:
    assert fit_output({"items": [1, 2, 3]}, 256) == '{"items":[1,2,3]}'


def test_fit_output_gives_up_when_nothing_can_be_trimmed() -> None:
    assert fit_output({"text": "x" * 1_000, "items": [1, 2]}, 256) is None


async def _huge(args: NoArgs, ctx: ToolContext) -> dict[str, Any]:
    return {"report": "x" * 50_000}


async def _broken(args: NoArgs, ctx: ToolContext) -> dict[str, Any]:
    raise RuntimeError(f"boom with {ctx.config.kmc_api_key}")


def _always(config: ToolConfig) -> bool:
    return True


async def test_output_that_cannot_be_trimmed_becomes_an_error(
    apis: FakeApis, http: httpx2.AsyncClient
) -> None:
    huge = Tool(name="huge", description="d", args_model=NoArgs, func=_huge, is_configured=_always)
    registry = ToolRegistry.from_config(config_for(apis), http, tools=[huge])

    result = await call(registry, "huge", {})

    assert error_of(result) == "tool output too large"


async def test_a_crashing_tool_reports_only_its_exception_class(
    apis: FakeApis, http: httpx2.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    broken = Tool(
        name="broken", description="d", args_model=NoArgs, func=_broken, is_configured=_always
    )
    registry = ToolRegistry.from_config(config_for(apis), http, tools=[broken])

    result = await call(registry, "broken", {})

    assert error_of(result) == "broken failed unexpectedly (RuntimeError)"
    assert KMC_KEY not in caplog.text


def test_tool_names_must_be_unique_and_models_must_forbid_extras(
    http: httpx2.AsyncClient,
) -> None:
    context = ToolContext(http=http, config=ToolConfig())
    with pytest.raises(ValueError, match="duplicate"):
        ToolRegistry([ALL_TOOLS[0], ALL_TOOLS[0]], context)

    class Loose(BaseModel):
        city: str

    async def lookup(args: Loose, ctx: ToolContext) -> dict[str, Any]:
        return {}

    loose = Tool(
        name="loose", description="d", args_model=Loose, func=lookup, is_configured=_always
    )
    with pytest.raises(ValueError, match="extra='forbid'"):
        ToolRegistry([loose], context)
