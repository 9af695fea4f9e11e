"""The ``actions`` family: function calling, with the call's arguments revealed as shards.

The assistant sees a small API catalogue (JSON schemas in the system prompt) and must answer
with the call(s) the user wants. Shard 1 says what the user wants done; every later shard gives
one argument value ("It's for Lisbon.", "Make it a 5-day forecast."). A shard is *required*
when its value differs from what the call would get without it (an argument with no default,
or a value other than the default); a shard that repeats a default ("Celsius is fine.") is
optional.

References use the format of Lost-in-Conversation's actions records, which is BFCL's
"possible answer": a list of calls ``{func_name: {arg: [allowed values]}}``, where ``""`` among
the allowed values means the argument may be left out. So one evaluator grades both our
generated instances and LiC's, and LiC records load unchanged (``function``,
``reference_answer``).

Parsing never evaluates model text: Python-style calls (``get_weather(city="Paris")``, a list
``[f(a=1), g(b=2)]``) go through :func:`ast.parse` and :func:`ast.literal_eval` on each
argument; JSON calls (``{"name": ..., "arguments": {...}}``, OpenAI's ``{"function": ...}``,
lists of them, ``<tool_call>`` tags) through :mod:`json`. Calls are read from code fences first,
then from the text, where only names of the instance's functions count (prose such as "see the
note (below)" is not a call).

Grading rules (decided here; BFCL's are the starting point):

* the predicted calls must match the expected ones one to one, in any order: same function
  name, no unexpected argument, every argument without ``""`` present;
* strings compare case-insensitively, ignoring spaces and ``,./-_*^`` (BFCL's
  standardisation), so "New York" == "new york";
* numbers compare by value (3 == 3.0), and a numeric string counts as its number ("3" == 3):
  models that write JSON often quote numbers, and the value is unambiguous; booleans accept
  ``true``/``false`` strings but never 0/1;
* lists compare element by element in order; dicts key by key.

The score is 1 or 0; the detail says how many expected calls were matched.
"""

from __future__ import annotations

import ast
import json
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from icpo_eval.errors import IcpoError
from icpo_eval.families import Family, register
from icpo_eval.records import Instruction, Shard

__all__ = [
    "CATALOGUE",
    "ActionsFamily",
    "Call",
    "match_calls",
    "parse_calls",
    "value_matches",
]

# --------------------------------------------------------------------------------------------
# The API catalogue (BFCL's function format)
# --------------------------------------------------------------------------------------------


def _fn(
    name: str, description: str, props: dict[str, dict[str, Any]], required: Sequence[str]
) -> dict[str, Any]:
    return {
        "name": name,
        "description": description,
        "parameters": {"type": "dict", "properties": props, "required": list(required)},
    }


_DATE = "Date in ISO format YYYY-MM-DD."
_TIME = "Time in 24-hour format HH:MM."

#: The functions every generated instance may call, shown in the system prompt.
CATALOGUE: list[dict[str, Any]] = [
    _fn(
        "get_weather",
        "Get the weather forecast for a city.",
        {
            "city": {"type": "string", "description": "City name, e.g. 'Paris'."},
            "days": {
                "type": "integer",
                "description": "Number of forecast days, 1 to 7.",
                "default": 1,
            },
            "unit": {
                "type": "string",
                "enum": ["celsius", "fahrenheit"],
                "description": "Temperature unit.",
                "default": "celsius",
            },
        },
        ["city"],
    ),
    _fn(
        "convert_currency",
        "Convert an amount of money from one currency to another at today's rate.",
        {
            "amount": {"type": "float", "description": "Amount to convert."},
            "from_currency": {"type": "string", "description": "ISO 4217 code, e.g. 'USD'."},
            "to_currency": {"type": "string", "description": "ISO 4217 code, e.g. 'EUR'."},
        },
        ["amount", "from_currency", "to_currency"],
    ),
    _fn(
        "convert_units",
        "Convert a measurement between units.",
        {
            "value": {"type": "float", "description": "The value to convert."},
            "from_unit": {
                "type": "string",
                "enum": ["kilometers", "miles", "kilograms", "pounds", "liters", "gallons"],
                "description": "Unit of the value.",
            },
            "to_unit": {
                "type": "string",
                "enum": ["kilometers", "miles", "kilograms", "pounds", "liters", "gallons"],
                "description": "Unit to convert to.",
            },
        },
        ["value", "from_unit", "to_unit"],
    ),
    _fn(
        "create_event",
        "Add an event to the user's calendar.",
        {
            "title": {"type": "string", "description": "Title of the event."},
            "date": {"type": "string", "description": _DATE},
            "start_time": {"type": "string", "description": _TIME},
            "duration_minutes": {
                "type": "integer",
                "description": "Length of the event in minutes.",
                "default": 60,
            },
        },
        ["title", "date", "start_time"],
    ),
    _fn(
        "send_email",
        "Send a short email.",
        {
            "to": {"type": "string", "description": "Recipient's email address."},
            "subject": {"type": "string", "description": "Subject line."},
            "body": {"type": "string", "description": "Text of the email."},
        },
        ["to", "subject", "body"],
    ),
    _fn(
        "set_reminder",
        "Set a reminder that notifies the user at a given date and time.",
        {
            "message": {"type": "string", "description": "What to remind the user of."},
            "date": {"type": "string", "description": _DATE},
            "time": {"type": "string", "description": _TIME},
        },
        ["message", "date", "time"],
    ),
    _fn(
        "book_restaurant",
        "Reserve a table at a restaurant.",
        {
            "restaurant": {"type": "string", "description": "Name of the restaurant."},
            "date": {"type": "string", "description": _DATE},
            "time": {"type": "string", "description": _TIME},
            "party_size": {"type": "integer", "description": "Number of guests."},
        },
        ["restaurant", "date", "time", "party_size"],
    ),
    _fn(
        "search_flights",
        "Search for flights between two airports on a date.",
        {
            "origin": {"type": "string", "description": "IATA code of the departure airport."},
            "destination": {"type": "string", "description": "IATA code of the arrival airport."},
            "date": {"type": "string", "description": _DATE},
            "passengers": {"type": "integer", "description": "Number of travellers.", "default": 1},
            "cabin": {
                "type": "string",
                "enum": ["economy", "premium_economy", "business", "first"],
                "description": "Cabin class.",
                "default": "economy",
            },
        },
        ["origin", "destination", "date"],
    ),
    _fn(
        "get_stock_price",
        "Get the latest price of a stock.",
        {"symbol": {"type": "string", "description": "Ticker symbol, e.g. 'AAPL'."}},
        ["symbol"],
    ),
    _fn(
        "set_thermostat",
        "Set the target temperature of a room's thermostat.",
        {
            "room": {"type": "string", "description": "Room name, e.g. 'living room'."},
            "temperature": {"type": "float", "description": "Target temperature."},
            "unit": {
                "type": "string",
                "enum": ["celsius", "fahrenheit"],
                "description": "Temperature unit.",
                "default": "celsius",
            },
        },
        ["room", "temperature"],
    ),
    _fn(
        "play_music",
        "Play music on the user's speaker.",
        {
            "query": {"type": "string", "description": "Song, artist, album or genre."},
            "shuffle": {"type": "boolean", "description": "Shuffle the queue.", "default": False},
            "volume": {"type": "integer", "description": "Volume from 0 to 100.", "default": 50},
        },
        ["query"],
    ),
    _fn(
        "add_todo",
        "Add an item to the user's to-do list.",
        {
            "task": {"type": "string", "description": "What has to be done."},
            "due_date": {"type": "string", "description": _DATE},
            "priority": {
                "type": "string",
                "enum": ["low", "medium", "high"],
                "description": "Priority of the item.",
                "default": "medium",
            },
        },
        ["task", "due_date"],
    ),
]
_BY_NAME = {f["name"]: f for f in CATALOGUE}

# --------------------------------------------------------------------------------------------
# Parsing calls
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One function call: a name and its keyword arguments."""

    name: str
    arguments: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "arguments": self.arguments}


_FENCE_RE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)
_TOOL_TAG_RE = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.S)
_NAME_RE = re.compile(r"(?<![\w.])([A-Za-z_][\w.]*)\s*\(")


def _ast_value(node: ast.expr) -> Any:
    """A literal argument's value; a bare name reads as its text (BFCL does the same: models
    write ``unit=celsius``); anything else as its source text, which then fails to match."""
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        pass
    if isinstance(node, ast.Name):
        return node.id
    return ast.unparse(node)


def _call_name(func: ast.expr) -> str | None:
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if not isinstance(func, ast.Name):
        return None
    parts.append(func.id)
    return ".".join(reversed(parts))


def _from_ast_call(node: ast.Call, schemas: dict[str, dict[str, Any]]) -> Call | None:
    name = _call_name(node.func)
    if name is None:
        return None
    args: dict[str, Any] = {}
    if node.args:
        # Positional arguments take the schema's parameter order; without a schema they
        # cannot be named, and the call will not match.
        order = list(schemas.get(name, {}).get("parameters", {}).get("properties", {}))
        for i, a in enumerate(node.args):
            key = order[i] if i < len(order) else f"_arg{i}"
            args[key] = _ast_value(a)
    for kw in node.keywords:
        if kw.arg is None:  # **kwargs
            value = _ast_value(kw.value)
            if isinstance(value, dict):
                args.update({str(k): v for k, v in value.items()})
            continue
        args[kw.arg] = _ast_value(kw.value)
    return Call(name, args)


def _python_calls(text: str, schemas: dict[str, dict[str, Any]]) -> list[Call] | None:
    """Calls when the whole text is a call or a list/tuple of calls; None otherwise."""
    src = text.strip().rstrip(";").strip()
    if not src or len(src) > 20_000:
        return None
    try:
        tree = ast.parse(src, mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        try:  # several calls on separate lines
            module = ast.parse(src, mode="exec")
        except (SyntaxError, ValueError, MemoryError, RecursionError):
            return None
        nodes = []
        for stmt in module.body:
            if not (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call)):
                return None
            nodes.append(stmt.value)
        calls = [_from_ast_call(n, schemas) for n in nodes]
        return [c for c in calls if c] or None
    body = tree.body
    elts = body.elts if isinstance(body, (ast.List, ast.Tuple)) else [body]
    if not elts or not all(isinstance(e, ast.Call) for e in elts):
        return None
    calls = [_from_ast_call(e, schemas) for e in elts]  # type: ignore[arg-type]
    return [c for c in calls if c] or None


def _json_call(obj: Any, known: set[str]) -> list[Call] | None:
    """Calls in one decoded JSON value, or None if it does not hold calls."""
    if isinstance(obj, list):
        out: list[Call] = []
        for item in obj:
            got = _json_call(item, known)
            if got is None:
                return None
            out.extend(got)
        return out or None
    if not isinstance(obj, dict):
        return None
    if "tool_calls" in obj and isinstance(obj["tool_calls"], list):
        return _json_call(obj["tool_calls"], known)
    if isinstance(obj.get("function"), dict):
        return _json_call(obj["function"], known)
    name = obj.get("name")
    if isinstance(name, str) and name:
        args = next((obj[k] for k in ("arguments", "parameters", "args", "params") if k in obj), {})
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                return None
        if not isinstance(args, dict):
            return None
        return [Call(name, dict(args))]
    # BFCL's own answer format: {"func_name": {"arg": value}}.
    if len(obj) == 1:
        ((key, value),) = obj.items()
        if key in known and isinstance(value, dict):
            return [Call(key, dict(value))]
    return None


def _json_calls(text: str, known: set[str]) -> list[Call] | None:
    """Calls in the JSON values found in ``text``: the whole text, else the values that start
    at a ``{`` or ``[`` (the last ones that hold calls win, as a reply's final answer does)."""
    stripped = text.strip()
    try:
        got = _json_call(json.loads(stripped), known)
        if got:
            return got
    except (json.JSONDecodeError, RecursionError):
        pass
    decoder = json.JSONDecoder()
    found: list[list[Call]] = []
    i = 0
    while i < len(text):
        if text[i] in "{[":
            try:
                obj, end = decoder.raw_decode(text, i)
            except (json.JSONDecodeError, RecursionError):
                i += 1
                continue
            got = _json_call(obj, known)
            if got:
                found.append(got)
                i = end
                continue
        i += 1
    if not found:
        return None
    return [c for group in found for c in group]


def _calls_in_prose(text: str, schemas: dict[str, dict[str, Any]]) -> list[Call] | None:
    """Python-style calls of known functions written inside running text."""
    calls: list[Call] = []
    pos = 0
    while True:
        m = _NAME_RE.search(text, pos)
        if m is None:
            break
        pos = m.end()
        if m.group(1) not in schemas:
            continue
        start = m.start(1)
        # The shortest balanced span that parses as one call.
        for close in (k for k, ch in enumerate(text[m.end() :], m.end()) if ch == ")"):
            if close - start > 5_000:
                break
            try:
                node = ast.parse(text[start : close + 1], mode="eval").body
            except (SyntaxError, ValueError, MemoryError, RecursionError):
                continue
            if isinstance(node, ast.Call):
                call = _from_ast_call(node, schemas)
                if call is not None:
                    calls.append(call)
                pos = close + 1
            break
    return calls or None


def parse_calls(text: str, functions: Sequence[dict[str, Any]] | None = None) -> list[Call] | None:
    """The calls a reply commits to, or None when it holds none.

    Order of preference: the last code fence (or ``<tool_call>`` block) that holds calls, JSON
    or Python; then the whole reply as JSON or as Python; then calls of known functions
    written inside running text. ``functions`` are the instance's schemas (they name the
    known functions and order positional arguments).
    """
    if not text or not text.strip():
        return None
    funcs = functions or CATALOGUE
    schemas = {f["name"]: f for f in funcs if isinstance(f, dict) and "name" in f}
    known = set(schemas)
    blocks = [m.group(2) for m in _FENCE_RE.finditer(text)]
    blocks += [m.group(1) for m in _TOOL_TAG_RE.finditer(text)]
    for block in reversed(blocks):
        got = _python_calls(block, schemas) or _json_calls(block, known)
        if got:
            return got
    got = _python_calls(text, schemas)
    if got:
        return got
    outside = _TOOL_TAG_RE.sub(" ", _FENCE_RE.sub(" ", text))
    return _json_calls(outside, known) or _calls_in_prose(outside, schemas)


# --------------------------------------------------------------------------------------------
# Matching
# --------------------------------------------------------------------------------------------

_STD_RE = re.compile(r"[ ,./\-_*^]")


def _std(s: str) -> str:
    return _STD_RE.sub("", s).lower().replace("'", '"')


def _as_number(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v.strip().replace(",", ""))
        except ValueError:
            return None
    return None


def value_matches(value: Any, allowed: Any) -> bool:
    """Does a predicted argument value equal one allowed value? (rules: module docstring)"""
    if isinstance(allowed, bool):
        if isinstance(value, bool):
            return value is allowed
        return isinstance(value, str) and value.strip().lower() == str(allowed).lower()
    if isinstance(allowed, (int, float)):
        got = _as_number(value)
        return got is not None and abs(got - float(allowed)) <= 1e-9 * max(1.0, abs(got))
    if isinstance(allowed, str):
        if isinstance(value, str):
            return _std(value) == _std(allowed)
        return False
    if isinstance(allowed, (list, tuple)):
        if not isinstance(value, (list, tuple)) or len(value) != len(allowed):
            return False
        return all(value_matches(v, a) for v, a in zip(value, allowed))
    if isinstance(allowed, dict):
        if not isinstance(value, dict) or set(value) - set(allowed):
            return False
        for key, options in allowed.items():
            opts = options if isinstance(options, list) else [options]
            if key not in value:
                if "" not in opts:
                    return False
                continue
            if not any(value_matches(value[key], o) for o in opts if o != ""):
                return False
        return True
    return value == allowed


def _call_matches(call: Call, expected: dict[str, Any]) -> bool:
    """``expected`` is one BFCL possible answer: ``{func_name: {arg: [allowed values]}}``."""
    if len(expected) != 1:
        return False
    ((name, params),) = expected.items()
    if call.name != name or not isinstance(params, dict):
        return False
    if set(call.arguments) - set(params):
        return False
    for arg, options in params.items():
        opts = options if isinstance(options, list) else [options]
        if arg not in call.arguments:
            if "" not in opts:
                return False
            continue
        if not any(value_matches(call.arguments[arg], o) for o in opts if o != ""):
            return False
    return True


def match_calls(predicted: Sequence[Call], expected: Sequence[dict[str, Any]]) -> int:
    """Size of the largest one-to-one matching of predicted calls to expected ones."""
    edges = [[j for j, c in enumerate(predicted) if _call_matches(c, e)] for e in expected]
    owner: dict[int, int] = {}

    def augment(i: int, seen: set[int]) -> bool:
        for j in edges[i]:
            if j in seen:
                continue
            seen.add(j)
            if j not in owner or augment(owner[j], seen):
                owner[j] = i
                return True
        return False

    return sum(augment(i, set()) for i in range(len(expected)))


# --------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------

_CITIES = (
    "Lisbon", "Oslo", "Nairobi", "Toronto", "Kyoto", "Buenos Aires", "Melbourne", "Prague",
    "Seoul", "Dublin", "Marrakesh", "Vancouver", "Istanbul", "Reykjavik", "Singapore",
)  # fmt: skip
_CURRENCIES = (
    ("US dollars", "USD"), ("euros", "EUR"), ("British pounds", "GBP"), ("Japanese yen", "JPY"),
    ("Swiss francs", "CHF"), ("Canadian dollars", "CAD"), ("Australian dollars", "AUD"),
    ("Mexican pesos", "MXN"),
)  # fmt: skip
_UNIT_PAIRS = (("kilometers", "miles"), ("kilograms", "pounds"), ("liters", "gallons"))
_AIRPORTS = (
    ("Boston", "BOS"), ("Chicago O'Hare", "ORD"), ("London Heathrow", "LHR"),
    ("Paris Charles de Gaulle", "CDG"), ("Frankfurt", "FRA"), ("Tokyo Haneda", "HND"),
    ("San Francisco", "SFO"), ("Madrid", "MAD"), ("Amsterdam", "AMS"), ("Dubai", "DXB"),
)  # fmt: skip
_EVENTS = (
    "Team sync", "Dentist appointment", "Quarterly review", "Yoga class", "Lunch with Priya",
    "Project kickoff", "Parent-teacher meeting", "Book club",
)  # fmt: skip
_PEOPLE = ("alex", "maria", "kenji", "fatima", "lukas", "chloe", "dev", "sara")
_DOMAINS = ("example.com", "acme.org", "mailbox.net")
_SUBJECTS = (
    ("Budget update", "The new budget is attached."),
    ("Running late", "I will be 15 minutes late."),
    ("Dinner on Friday", "Are you free for dinner on Friday?"),
    ("Slides for tomorrow", "Please send me the slides for tomorrow."),
    ("Thank you", "Thanks again for your help last week."),
)  # fmt: skip
_RESTAURANTS = (
    "La Piazza", "The Green Fork", "Sakura Sushi", "El Toro", "Blue Lagoon Bistro", "Masala House",
)  # fmt: skip
_STOCKS = (
    ("Apple", "AAPL"), ("Microsoft", "MSFT"), ("Nvidia", "NVDA"), ("Amazon", "AMZN"),
    ("Alphabet", "GOOGL"), ("Tesla", "TSLA"), ("Netflix", "NFLX"),
)  # fmt: skip
_ROOMS = ("living room", "bedroom", "kitchen", "office", "nursery")
_MUSIC = ("jazz", "Beethoven", "Taylor Swift", "lo-fi beats", "the Beatles", "Fleetwood Mac")
_TODOS = ("renew my passport", "pay the electricity bill", "book a vet appointment",
          "return the library books", "call the plumber")  # fmt: skip
_REMINDERS = ("take the medicine", "water the plants", "call mom", "pick up the dry cleaning",
              "submit the expense report")  # fmt: skip
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December")  # fmt: skip


def _date(rng: random.Random) -> tuple[str, str]:
    """(spoken, ISO) date in 2025."""
    month = rng.randint(1, 12)
    day = rng.randint(1, 28)
    return f"{_MONTHS[month - 1]} {day}, 2025", f"2025-{month:02d}-{day:02d}"


def _time(rng: random.Random) -> tuple[str, str]:
    """(spoken, HH:MM) time."""
    hour = rng.randint(8, 20)
    minute = rng.choice((0, 15, 30, 45))
    h12 = hour - 12 if hour > 12 else hour
    spoken = f"{h12}:{minute:02d} {'pm' if hour >= 12 else 'am'}"
    if minute == 0:
        spoken = f"{h12} {'pm' if hour >= 12 else 'am'}"
    return spoken, f"{hour:02d}:{minute:02d}"


@dataclass
class _Arg:
    """One argument of a generated call: its shard (None: not revealed) and allowed values."""

    name: str
    allowed: list[Any]
    shard: str | None
    #: False when the revealed value equals what omitting the argument gives (a default).
    required: bool = True


@dataclass
class _Plan:
    intent: str  # "check the weather" — joined into shard 1
    args: list[_Arg]


def _default_arg(
    rng: random.Random, name: str, default: Any, other: Any, say_other: str, say_default: str
) -> _Arg | None:
    """An argument with a default: often not mentioned, sometimes set to another value
    (required), sometimes the default restated (an optional shard)."""
    roll = rng.random()
    if roll < 0.45:
        return _Arg(name, ["", default], None, required=False)
    if roll < 0.85:
        return _Arg(name, [other], say_other)
    return _Arg(name, ["", default], say_default, required=False)


def _weather(rng: random.Random) -> _Plan:
    city = rng.choice(_CITIES)
    days = rng.randint(2, 7)
    args = [_Arg("city", [city], f"The forecast is for {city}.")]
    for a in (
        _default_arg(rng, "days", 1, days, f"I want a {days}-day forecast.", "Just today is fine."),
        _default_arg(
            rng,
            "unit",
            "celsius",
            "fahrenheit",
            "Give me the temperatures in Fahrenheit.",
            "Celsius is fine for the temperatures.",
        ),
    ):
        if a:
            args.append(a)
    return _Plan(rng.choice(("check the weather forecast", "get a weather forecast")), args)


def _currency(rng: random.Random) -> _Plan:
    (src_name, src), (dst_name, dst) = rng.sample(_CURRENCIES, 2)
    amount = rng.choice((50, 120, 250, 999.99, 1500, 75.5, 3200))
    return _Plan(
        rng.choice(("convert some money into another currency", "do a currency conversion")),
        [
            _Arg("amount", [amount], f"The amount to convert is {amount:g}."),
            _Arg("from_currency", [src], f"The money is in {src_name} ({src})."),
            _Arg("to_currency", [dst], f"Convert it to {dst_name} ({dst})."),
        ],
    )


def _units(rng: random.Random) -> _Plan:
    a, b = rng.choice(_UNIT_PAIRS)
    if rng.random() < 0.5:
        a, b = b, a
    value = rng.choice((3, 12.5, 42, 100, 7.2, 26.2))
    return _Plan(
        "convert a measurement",
        [
            _Arg("value", [value], f"The measurement to convert is {value:g}."),
            _Arg("from_unit", [a], f"The measurement is in {a}."),
            _Arg("to_unit", [b], f"Convert the measurement to {b}."),
        ],
    )


def _event(rng: random.Random) -> _Plan:
    title = rng.choice(_EVENTS)
    spoken_d, iso_d = _date(rng)
    spoken_t, iso_t = _time(rng)
    minutes = rng.choice((30, 45, 90, 120))
    args = [
        _Arg("title", [title], f'The calendar event should be called "{title}".'),
        _Arg("date", [iso_d], f"The event is on {spoken_d}."),
        _Arg("start_time", [iso_t], f"It starts at {spoken_t}."),
    ]
    dur = _default_arg(
        rng,
        "duration_minutes",
        60,
        minutes,
        f"The event lasts {minutes} minutes.",
        "It lasts an hour.",
    )
    if dur:
        args.append(dur)
    return _Plan(rng.choice(("put an event in my calendar", "add something to my calendar")), args)


def _email(rng: random.Random) -> _Plan:
    person = rng.choice(_PEOPLE)
    address = f"{person}@{rng.choice(_DOMAINS)}"
    subject, body = rng.choice(_SUBJECTS)
    return _Plan(
        rng.choice(("send an email", "email someone")),
        [
            _Arg("to", [address], f"The email goes to {address}."),
            _Arg("subject", [subject], f'The subject line is "{subject}".'),
            _Arg("body", [body], f'The email should say exactly: "{body}"'),
        ],
    )


def _reminder(rng: random.Random) -> _Plan:
    what = rng.choice(_REMINDERS)
    spoken_d, iso_d = _date(rng)
    spoken_t, iso_t = _time(rng)
    return _Plan(
        rng.choice(("set a reminder", "get reminded of something")),
        [
            _Arg("message", [what], f'The reminder should say "{what}".'),
            _Arg("date", [iso_d], f"The reminder is for {spoken_d}."),
            _Arg("time", [iso_t], f"Remind me at {spoken_t}."),
        ],
    )


def _restaurant(rng: random.Random) -> _Plan:
    name = rng.choice(_RESTAURANTS)
    spoken_d, iso_d = _date(rng)
    spoken_t, iso_t = _time(rng)
    size = rng.randint(2, 8)
    return _Plan(
        rng.choice(("book a table at a restaurant", "reserve a table for dinner")),
        [
            _Arg("restaurant", [name], f"The restaurant is {name}."),
            _Arg("date", [iso_d], f"The table is for {spoken_d}."),
            _Arg("time", [iso_t], f"We'd like to arrive at {spoken_t}."),
            _Arg("party_size", [size], f"There will be {size} of us."),
        ],
    )


def _flights(rng: random.Random) -> _Plan:
    (o_name, o), (d_name, d) = rng.sample(_AIRPORTS, 2)
    spoken_d, iso_d = _date(rng)
    n = rng.randint(2, 5)
    cabin = rng.choice(("business", "premium_economy", "first"))
    args = [
        _Arg("origin", [o], f"The flight leaves from {o_name} ({o})."),
        _Arg("destination", [d], f"I'm flying to {d_name} ({d})."),
        _Arg("date", [iso_d], f"I want to fly on {spoken_d}."),
    ]
    for a in (
        _default_arg(
            rng, "passengers", 1, n, f"Search for {n} passengers.", "It's just me travelling."
        ),
        _default_arg(
            rng,
            "cabin",
            "economy",
            cabin,
            f"Look in {cabin.replace('_', ' ')} class.",
            "Economy class is fine.",
        ),
    ):
        if a:
            args.append(a)
    return _Plan(rng.choice(("find a flight", "search for flights")), args)


def _stock(rng: random.Random) -> _Plan:
    company, symbol = rng.choice(_STOCKS)
    return _Plan(
        rng.choice(("look up a stock price", "check the price of a stock")),
        [_Arg("symbol", [symbol], f"The stock is {company} ({symbol}).")],
    )


def _thermostat(rng: random.Random) -> _Plan:
    room = rng.choice(_ROOMS)
    unit = "fahrenheit" if rng.random() < 0.3 else "celsius"
    temp = rng.choice((68, 70, 72)) if unit == "fahrenheit" else rng.choice((19, 20.5, 21, 22))
    args = [
        _Arg("room", [room], f"It's the thermostat in the {room}."),
        _Arg("temperature", [temp], f"Set the thermostat to {temp:g} degrees."),
    ]
    if unit == "fahrenheit":
        args.append(_Arg("unit", ["fahrenheit"], "The thermostat temperature is in Fahrenheit."))
    else:
        args.append(_Arg("unit", ["", "celsius"], None, required=False))
    return _Plan(rng.choice(("change the heating", "adjust a thermostat")), args)


def _music(rng: random.Random) -> _Plan:
    query = rng.choice(_MUSIC)
    volume = rng.choice((20, 30, 70, 80))
    args = [_Arg("query", [query], f"I want to hear {query}.")]
    for a in (
        _default_arg(rng, "shuffle", False, True, "Shuffle the songs.", "No need to shuffle."),
        _default_arg(rng, "volume", 50, volume, f"Set the volume to {volume}.", "Normal volume."),
    ):
        if a:
            args.append(a)
    return _Plan(rng.choice(("play some music", "put on some music")), args)


def _todo(rng: random.Random) -> _Plan:
    task = rng.choice(_TODOS)
    spoken_d, iso_d = _date(rng)
    prio = rng.choice(("low", "high"))
    args = [
        _Arg("task", [task], f'The to-do item is "{task}".'),
        _Arg("due_date", [iso_d], f"It's due on {spoken_d}."),
    ]
    p = _default_arg(
        rng, "priority", "medium", prio, f"Mark it as {prio} priority.", "Medium priority."
    )
    if p:
        args.append(p)
    return _Plan(rng.choice(("add something to my to-do list", "note down a task")), args)


_PLANNERS: dict[str, Callable[[random.Random], _Plan]] = {
    "get_weather": _weather,
    "convert_currency": _currency,
    "convert_units": _units,
    "create_event": _event,
    "send_email": _email,
    "set_reminder": _reminder,
    "book_restaurant": _restaurant,
    "search_flights": _flights,
    "get_stock_price": _stock,
    "set_thermostat": _thermostat,
    "play_music": _music,
    "add_todo": _todo,
}
assert set(_PLANNERS) == set(_BY_NAME)

_NUMBER_WORDS = {2: "two", 3: "three"}


def _python_call(name: str, args: list[_Arg]) -> str:
    """The canonical reference call, e.g. ``get_weather(city='Lisbon', days=3)``."""
    shown = [a for a in args if a.shard is not None and a.allowed[0] != ""]
    return f"{name}({', '.join(f'{a.name}={a.allowed[0]!r}' for a in shown)})"


def make_instance(rng: random.Random, functions: Sequence[str], task_id: str) -> Instruction:
    """One instance asking for the given calls, in that order."""
    plans = [(name, _PLANNERS[name](rng)) for name in functions]
    if len(plans) == 1:
        intent = f"I'd like you to {plans[0][1].intent}."
    else:
        wants = [p.intent for _, p in plans]
        intent = (
            f"I need {_NUMBER_WORDS[len(plans)]} things done: "
            + ", ".join(wants[:-1])
            + f", and {wants[-1]}."
        )
    shards = [Shard(1, intent)]
    required = [1]
    reference = []
    answers = []
    for name, plan in plans:
        for arg in plan.args:
            if arg.shard is not None:
                shards.append(Shard(len(shards) + 1, arg.shard))
                if arg.required:
                    required.append(len(shards))
        reference.append({name: {a.name: a.allowed for a in plan.args}})
        answers.append(_python_call(name, plan.args))
    return Instruction(
        task_id=task_id,
        task="actions",
        shards=shards,
        required_shards=required,
        fields={
            "question": " ".join(s.shard for s in shards),
            "reference_answer": reference,
            "answer": answers[0] if len(answers) == 1 else f"[{', '.join(answers)}]",
        },
    )


# --------------------------------------------------------------------------------------------
# The family
# --------------------------------------------------------------------------------------------


def _decoded(value: Any) -> Any:
    """LiC data stored through Hugging Face datasets keeps nested fields as JSON strings."""
    if isinstance(value, str) and value.strip()[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def instance_functions(inst: Instruction) -> list[dict[str, Any]]:
    """The functions an instance may call: its own ``function`` list (LiC), else the catalogue."""
    funcs = _decoded(inst.fields.get("function"))
    if funcs is None:
        return CATALOGUE
    if isinstance(funcs, dict):
        funcs = [funcs]
    if not isinstance(funcs, list) or not all(isinstance(f, dict) and "name" in f for f in funcs):
        raise IcpoError(f"{inst.task_id}: 'function' must be a list of function schemas")
    return funcs


def reference_calls(inst: Instruction) -> list[dict[str, Any]]:
    """The expected calls in BFCL's possible-answer format."""
    ref = _decoded(inst.fields.get("reference_answer"))
    if isinstance(ref, dict):
        ref = [ref]
    if (
        not isinstance(ref, list)
        or not ref
        or not all(isinstance(r, dict) and len(r) == 1 for r in ref)
    ):
        raise IcpoError(
            f"{inst.task_id}: 'reference_answer' must be a list of {{function: {{arg: [values]}}}}"
        )
    return ref


@register
class ActionsFamily(Family):
    """Function calling; graded by comparing parsed calls with the allowed answers."""

    name = "actions"
    system_prompt_template = "system_actions.j2"
    answer_by_extraction = True

    #: Share of instances asking for 1, 2 and 3 calls.
    CALL_MIX = (0.55, 0.35, 0.10)

    def generate(self, n: int, seed: int) -> list[Instruction]:
        """``n`` instances from ``random.Random(seed)``: one to three calls each, every
        function of the catalogue used about equally often as the first call."""
        if n < 0:
            raise IcpoError("n must be >= 0")
        rng = random.Random(seed)
        names = list(_PLANNERS)
        out = []
        for i in range(n):
            if i % len(names) == 0:
                rng.shuffle(names)
            k = rng.choices((1, 2, 3), weights=self.CALL_MIX)[0]
            first = names[i % len(names)]
            others = rng.sample([x for x in names if x != first], k - 1)
            out.append(make_instance(rng, [first, *others], f"actions-gen-{seed}-{i:04d}"))
        return out

    def prompt_variables(self, inst: Instruction) -> dict[str, Any]:
        """The function schemas, one compact JSON object per line."""
        funcs = instance_functions(inst)
        return {"functions": "\n".join(json.dumps(f, ensure_ascii=False) for f in funcs)}

    def full_prompt(self, inst: Instruction) -> str:
        """LiC's ``fully_specified_question`` (a BFCL chat: the first user message), our
        ``question``, else the shards joined."""
        fsq = _decoded(inst.fields.get("fully_specified_question"))
        while isinstance(fsq, list) and fsq:
            fsq = fsq[0]
        if isinstance(fsq, dict) and isinstance(fsq.get("content"), str):
            return fsq["content"]
        if isinstance(fsq, str) and fsq.strip():
            return fsq
        question = inst.fields.get("question")
        if isinstance(question, str) and question.strip():
            return question
        return super().full_prompt(inst)

    def extract(self, inst: Instruction, response: str) -> str | None:
        """The calls as canonical JSON (``[{"name", "arguments"}]``), or None."""
        calls = parse_calls(response, instance_functions(inst))
        if not calls:
            return None
        return json.dumps([c.to_dict() for c in calls], ensure_ascii=False)

    def evaluate(self, inst: Instruction, answer: str | None) -> float:
        return self.grade(inst, answer)[0]

    def grade(self, inst: Instruction, answer: str | None) -> tuple[float, dict[str, Any] | None]:
        """1.0 when every expected call is matched and no call is extra; the detail gives
        ``matched`` of ``expected`` and the number ``predicted``."""
        expected = reference_calls(inst)
        if answer is None:
            return 0.0, None
        calls = parse_calls(answer, instance_functions(inst)) or []
        matched = match_calls(calls, expected)
        ok = matched == len(expected) == len(calls)
        detail = {"matched": matched, "expected": len(expected), "predicted": len(calls)}
        return (1.0 if ok else 0.0), detail
