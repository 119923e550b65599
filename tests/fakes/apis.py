"""Fake OpenWeather and KMC APIs: one real aiohttp server on loopback, for tests, demo and bench.

    apis = FakeApis()                      # keys "ow-test-key" / "kmc-test-key"
    await apis.start()                     # port 0: a free port
    config = ToolConfig(openweather_api_key=apis.openweather_key,
                        openweather_base_url=apis.base_url,
                        kmc_api_url=apis.base_url, kmc_api_key=apis.kmc_key)
    ...
    apis.requests                          # every request, in arrival order
    await apis.stop()

Like the real APIs: OpenWeather wants `appid=<key>` and KMC wants `x-api-key: <key>`, else 401;
geocoding an unknown city answers `[]`. Knobs: `fail(prefix, status)`, `delay(prefix, seconds)`,
`set_offices([...])`, `set_clients([...])`, `add_city(FakeCity(...))`, `reset()`.
`max_in_flight` is the largest number of requests handled at the same time.
"""

from __future__ import annotations

import asyncio
import copy
import math
import time
import zlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

JSON = Any
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the fake received it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    """Header names lower-cased."""


@dataclass(frozen=True)
class Sky:
    """Current weather of a fake city, metric: °C, %, m/s."""

    temp: float
    feels_like: float
    humidity: int
    description: str
    wind_speed: float


@dataclass(frozen=True)
class FakeCity:
    """A place the fake geocoder knows."""

    name: str
    country: str
    lat: float
    lon: float
    state: str | None
    sky: Sky
    aliases: tuple[str, ...] = ()


# description -> (OpenWeather condition id, main, icon)
CONDITIONS = {
    "clear sky": (800, "Clear", "01d"),
    "few clouds": (801, "Clouds", "02d"),
    "scattered clouds": (802, "Clouds", "03d"),
    "broken clouds": (803, "Clouds", "04d"),
    "overcast clouds": (804, "Clouds", "04d"),
    "light rain": (500, "Rain", "10d"),
    "thunderstorm with light rain": (200, "Thunderstorm", "11d"),
    "mist": (701, "Mist", "50d"),
}

DEFAULT_CITIES: tuple[FakeCity, ...] = (
    FakeCity("Makati", "PH", 14.5547, 121.0244, "Metro Manila",
             Sky(31.2, 37.4, 66, "broken clouds", 4.12), ("Makati City",)),
    FakeCity("Manila", "PH", 14.5995, 120.9842, "Metro Manila",
             Sky(30.6, 36.1, 70, "few clouds", 3.6), ("City of Manila",)),
    FakeCity("Taguig", "PH", 14.5176, 121.0509, "Metro Manila",
             Sky(31.0, 36.8, 67, "broken clouds", 4.0), ("Bonifacio Global City", "BGC")),
    FakeCity("Quezon City", "PH", 14.6760, 121.0437, "Metro Manila",
             Sky(30.1, 35.0, 72, "light rain", 2.9)),
    FakeCity("Cebu City", "PH", 10.3157, 123.8854, "Central Visayas",
             Sky(29.4, 33.9, 74, "scattered clouds", 5.1), ("Cebu",)),
    FakeCity("London", "GB", 51.5073, -0.1276, "England", Sky(11.8, 11.1, 82, "light rain", 5.66)),
    FakeCity("London", "CA", 42.9832, -81.2434, "Ontario", Sky(7.3, 4.9, 76, "clear sky", 4.1)),
    FakeCity("Paris", "FR", 48.8589, 2.3200, "Ile-de-France",
             Sky(14.2, 13.5, 71, "overcast clouds", 3.1)),
    FakeCity("New York", "US", 40.7127, -74.0060, "New York",
             Sky(9.6, 7.2, 58, "clear sky", 6.2), ("New York City", "NYC")),
    FakeCity("Tokyo", "JP", 35.6828, 139.7595, None, Sky(17.9, 17.4, 63, "few clouds", 2.57)),
    FakeCity("Singapore", "SG", 1.2899, 103.8519, None,
             Sky(30.3, 35.6, 75, "thunderstorm with light rain", 2.1)),
    FakeCity("Sydney", "AU", -33.8698, 151.2083, "New South Wales",
             Sky(21.4, 21.2, 60, "clear sky", 7.2)),
    FakeCity("São Paulo", "BR", -23.5507, -46.6334, "São Paulo",
             Sky(23.8, 24.1, 68, "scattered clouds", 3.09), ("Sao Paulo",)),
    FakeCity("Zürich", "CH", 47.3744, 8.5410, "Zurich",
             Sky(8.9, 7.1, 80, "mist", 1.5), ("Zurich",)),
)  # fmt: skip

DEFAULT_CLIENTS: tuple[dict[str, JSON], ...] = (
    {"service": "Dedicated Office", "client_count": 42},
    {"service": "Private Office", "client_count": 35},
    {"service": "Coworking", "client_count": 118},
    {"service": "Virtual Office", "client_count": 57},
    {"service": "Meeting Rooms", "client_count": 23},
    {"service": "Enterprise Solutions", "client_count": 9},
)

DEFAULT_OFFICES: tuple[dict[str, JSON], ...] = (
    {
        "id": "MKT-RCBC-2801",
        "name": "KMC RCBC Plaza Suite 2801",
        "city": "Makati",
        "building": "RCBC Plaza Tower 2, Ayala Avenue",
        "capacity": 12,
        "monthly_rate": 5850.0,
        "currency": "USD",
        "amenities": ["meeting room", "pantry", "24/7 access"],
    },
    {
        "id": "MKT-SALCEDO-1502",
        "name": "KMC Salcedo Village 15F",
        "city": "Makati",
        "building": "Tower One, Salcedo Village",
        "capacity": 25,
        "monthly_rate": 11200.0,
        "currency": "USD",
        "amenities": ["meeting room", "phone booths"],
    },
    {
        "id": "MKT-AYALA-0710",
        "name": "KMC Ayala Triangle Studio",
        "city": "Makati",
        "building": "Ayala Triangle Gardens Tower 2",
        "capacity": 6,
        "monthly_rate": 2980.5,
        "currency": "USD",
        "amenities": ["pantry"],
    },
    {
        "id": "MKT-GT-3300",
        "name": "KMC GT Tower Floor 33",
        "city": "Makati",
        "building": "GT Tower International",
        "capacity": 60,
        "monthly_rate": 24500.0,
        "currency": "USD",
        "amenities": ["reception", "meeting rooms", "server room"],
    },
    {
        "id": "BGC-ONE-1200",
        "name": "KMC One World Place 12F",
        "city": "Taguig",
        "building": "One World Place, BGC",
        "capacity": 40,
        "monthly_rate": 16900.0,
        "currency": "USD",
        "amenities": ["reception", "meeting rooms"],
    },
    {
        "id": "BGC-UPTOWN-0605",
        "name": "KMC Uptown Bonifacio Suite 605",
        "city": "Taguig",
        "building": "Uptown Place Tower 2",
        "capacity": 8,
        "monthly_rate": 3650.0,
        "currency": "USD",
        "amenities": ["pantry", "phone booths"],
    },
    {
        "id": "ORT-TEKTITE-2210",
        "name": "KMC Tektite East 22F",
        "city": "Pasig",
        "building": "Tektite East Tower, Ortigas",
        "capacity": 20,
        "monthly_rate": 7400.0,
        "currency": "USD",
        "amenities": ["meeting room"],
    },
    {
        "id": "CEB-ITPARK-0903",
        "name": "KMC Cebu IT Park 9F",
        "city": "Cebu City",
        "building": "Skyrise 4B, Cebu IT Park",
        "capacity": 30,
        "monthly_rate": 8800.0,
        "currency": "USD",
        "amenities": ["reception", "pantry", "24/7 access"],
    },
    {
        "id": "QC-VERTIS-1100",
        "name": "KMC Vertis North 11F",
        "city": "Quezon City",
        "building": "Vertis North Corporate Center",
        "capacity": 15,
        "monthly_rate": 5100.0,
        "currency": "USD",
        "amenities": ["meeting room", "pantry"],
    },
)

OPENWEATHER_401 = {
    "cod": 401,
    "message": "Invalid API key. Please see https://openweathermap.org/faq#error401 for more info.",
}
KMC_401 = {"detail": "Invalid or missing API key"}


class FakeApis:
    """Fake OpenWeather (`/geo/1.0/direct`, `/data/2.5/weather`) and KMC API
    (`/clients/active-per-service`, `/offices/available`) on one loopback server."""

    def __init__(
        self,
        *,
        openweather_key: str = "ow-test-key",
        kmc_key: str = "kmc-test-key",
        cities: Sequence[FakeCity] = DEFAULT_CITIES,
        offices: Sequence[dict[str, JSON]] = DEFAULT_OFFICES,
        clients: Sequence[dict[str, JSON]] = DEFAULT_CLIENTS,
    ) -> None:
        self.openweather_key = openweather_key
        self.kmc_key = kmc_key
        self.requests: list[RecordedRequest] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._cities = list(cities)
        self._offices: list[dict[str, JSON]] = copy.deepcopy(list(offices))
        self._clients: list[JSON] = copy.deepcopy(list(clients))
        self._faults: dict[str, tuple[int, JSON]] = {}
        self._delays: dict[str, float] = {}
        self._stopping = asyncio.Event()
        self._arrived = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._base_url: str | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Start serving; returns `base_url`. Port 0 picks a free port."""
        if self._runner is not None:
            raise RuntimeError("FakeApis already started")
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get("/geo/1.0/direct", self._geocode)
        app.router.add_get("/data/2.5/weather", self._weather)
        app.router.add_get("/clients/active-per-service", self._active_clients)
        app.router.add_get("/offices/available", self._available_offices)
        self._stopping = asyncio.Event()
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        self._runner = runner
        bound_host, bound_port = runner.addresses[0][:2]
        self._base_url = f"http://{bound_host}:{bound_port}"
        return self._base_url

    async def stop(self) -> None:
        """Stop serving; requests held by `delay` are released first."""
        self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeApis:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:<port>`: both OPENWEATHER_BASE_URL and KMC_API_URL."""
        if self._base_url is None:
            raise RuntimeError("FakeApis not started")
        return self._base_url

    # -- knobs -----------------------------------------------------------------------------

    def fail(self, path_prefix: str, status: int, body: JSON = None) -> None:
        """Answer every request whose path starts with `path_prefix` with `status`."""
        self._faults[path_prefix] = (status, body if body is not None else {"error": "injected"})

    def delay(self, path_prefix: str, seconds: float) -> None:
        """Hold every request whose path starts with `path_prefix` for `seconds`."""
        self._delays[path_prefix] = seconds

    def set_offices(self, offices: Sequence[dict[str, JSON]]) -> None:
        """Replace the offices `/offices/available` filters by city and capacity."""
        self._offices = copy.deepcopy(list(offices))

    def set_clients(self, clients: Sequence[JSON]) -> None:
        """Replace the array `/clients/active-per-service` answers, as is."""
        self._clients = copy.deepcopy(list(clients))

    def add_city(self, city: FakeCity) -> None:
        """Teach the geocoder one more place (searched before the known ones)."""
        self._cities.insert(0, city)

    def reset(self) -> None:
        """Forget recorded requests, faults and delays (data stays)."""
        self.requests.clear()
        self._faults.clear()
        self._delays.clear()
        self.max_in_flight = self.in_flight

    async def wait_for_requests(self, count: int = 1) -> None:
        """Wait until at least `count` requests have arrived (handled or still held).

        Wrap it in `asyncio.timeout(...)`."""
        while len(self.requests) < count:
            self._arrived.clear()
            await self._arrived.wait()

    def requests_to(self, path: str) -> list[RecordedRequest]:
        """Recorded requests for exactly `path`."""
        return [r for r in self.requests if r.path == path]

    # -- plumbing --------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.requests.append(
            RecordedRequest(
                method=request.method,
                path=request.path,
                query={k: v for k, v in request.query.items()},
                headers={k.lower(): v for k, v in request.headers.items()},
            )
        )
        self._arrived.set()
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            seconds = _match(self._delays, request.path)
            if seconds:
                await self._sleep(seconds)
            fault = _match(self._faults, request.path)
            if fault is not None:
                status, body = fault
                return web.json_response(body, status=status)
            return await handler(request)
        finally:
            self.in_flight -= 1

    async def _sleep(self, seconds: float) -> None:
        try:
            async with asyncio.timeout(seconds):
                await self._stopping.wait()
        except TimeoutError:
            pass

    # -- OpenWeather -----------------------------------------------------------------------

    def _openweather_denied(self, request: web.Request) -> web.Response | None:
        if request.query.get("appid") != self.openweather_key:
            return web.json_response(OPENWEATHER_401, status=401)
        return None

    async def _geocode(self, request: web.Request) -> web.Response:
        if denied := self._openweather_denied(request):
            return denied
        query = request.query.get("q", "").strip()
        if not query:
            return web.json_response({"cod": "400", "message": "Nothing to geocode"}, status=400)
        try:
            limit = max(1, min(5, int(request.query.get("limit", "5"))))
        except ValueError:
            return web.json_response({"cod": "400", "message": "wrong limit"}, status=400)
        parts = [part.strip() for part in query.split(",")]
        wanted = parts[0].casefold()
        country = parts[-1].upper() if len(parts) > 1 and len(parts[-1]) == 2 else None
        found = [
            city
            for city in self._cities
            if wanted in {name.casefold() for name in (city.name, *city.aliases)}
            and (country is None or city.country == country)
        ]
        return web.json_response([_place(city) for city in found[:limit]])

    async def _weather(self, request: web.Request) -> web.Response:
        if denied := self._openweather_denied(request):
            return denied
        try:
            lat = float(request.query["lat"])
            lon = float(request.query["lon"])
        except (KeyError, ValueError):
            return web.json_response({"cod": "400", "message": "wrong latitude"}, status=400)
        if not (-90 <= lat <= 90 and -180 <= lon <= 180):
            return web.json_response({"cod": "400", "message": "wrong latitude"}, status=400)
        units = request.query.get("units", "standard")
        nearest = min(self._cities, key=lambda c: math.hypot(c.lat - lat, c.lon - lon))
        if math.hypot(nearest.lat - lat, nearest.lon - lon) > 1.0:
            nearest = FakeCity("", "", lat, lon, None, Sky(20.0, 20.0, 60, "clear sky", 3.0))
        return web.json_response(_current_weather(nearest, lat, lon, units))

    # -- KMC -------------------------------------------------------------------------------

    def _kmc_denied(self, request: web.Request) -> web.Response | None:
        if request.headers.get("x-api-key") != self.kmc_key:
            return web.json_response(KMC_401, status=401)
        return None

    async def _active_clients(self, request: web.Request) -> web.Response:
        if denied := self._kmc_denied(request):
            return denied
        return web.json_response(self._clients)

    async def _available_offices(self, request: web.Request) -> web.Response:
        if denied := self._kmc_denied(request):
            return denied
        city = request.query.get("city", "").strip()
        try:
            capacity = int(request.query["capacity"])
        except (KeyError, ValueError):
            capacity = 0
        if not city or capacity < 1:
            return web.json_response(
                {"detail": "query parameters 'city' and 'capacity' (integer >= 1) are required"},
                status=422,
            )
        matching = [
            office
            for office in self._offices
            if str(office.get("city", "")).casefold() == city.casefold()
            and int(office.get("capacity", 0)) >= capacity
        ]
        return web.json_response(matching)


def _match(rules: dict[str, Any], path: str) -> Any:
    for prefix, value in rules.items():
        if path.startswith(prefix):
            return value
    return None


def _place(city: FakeCity) -> dict[str, JSON]:
    place: dict[str, JSON] = {
        "name": city.name,
        "local_names": {"en": city.name},
        "lat": city.lat,
        "lon": city.lon,
        "country": city.country,
    }
    if city.state:
        place["state"] = city.state
    return place


def _current_weather(city: FakeCity, lat: float, lon: float, units: str) -> dict[str, JSON]:
    def temp(celsius: float) -> float:
        if units == "metric":
            return celsius
        if units == "imperial":
            return round(celsius * 9 / 5 + 32, 2)
        return round(celsius + 273.15, 2)  # "standard": kelvin

    sky = city.sky
    wind = sky.wind_speed if units != "imperial" else round(sky.wind_speed * 2.237, 2)
    condition_id, main, icon = CONDITIONS.get(sky.description, (802, "Clouds", "03d"))
    now = int(time.time())
    return {
        "coord": {"lon": lon, "lat": lat},
        "weather": [
            {"id": condition_id, "main": main, "description": sky.description, "icon": icon}
        ],
        "base": "stations",
        "main": {
            "temp": temp(sky.temp),
            "feels_like": temp(sky.feels_like),
            "temp_min": temp(round(sky.temp - 1.2, 2)),
            "temp_max": temp(round(sky.temp + 0.9, 2)),
            "pressure": 1010,
            "humidity": sky.humidity,
            "sea_level": 1010,
            "grnd_level": 1008,
        },
        "visibility": 10000,
        "wind": {"speed": wind, "deg": 220},
        "clouds": {"all": 75 if main == "Clouds" else 0},
        "dt": now,
        "sys": {
            "type": 2,
            "id": 2000001,
            "country": city.country,
            "sunrise": now - 21600,
            "sunset": now + 21600,
        },
        "timezone": round(lon / 15) * 3600,
        "id": zlib.crc32(f"{city.name},{city.country}".encode()) % 10_000_000,
        "name": city.name,
        "cod": 200,
    }
