"""Making the ``actions`` family's tasks: requests for one to three calls of the catalogue.

Shard 1 says what the user wants done; every later shard gives one argument value ("It's for
Lisbon.", "Make it a 5-day forecast."). A shard is *required* when its value differs from what
the call would get without it (an argument with no default, or a value other than the default);
a shard that repeats a default ("Celsius is fine.") is optional. The reference is written in
BFCL's possible-answer format, as Lost-in-Conversation's records are (see
:mod:`icpo_eval.families.actions`).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from icpo_eval.errors import IcpoError
from icpo_eval.families.actions_catalogue import CATALOGUE
from icpo_eval.records import Instruction, Shard

__all__ = ["CALL_MIX", "generate", "make_instance"]

#: Share of instances asking for 1, 2 and 3 calls.
CALL_MIX = (0.55, 0.35, 0.10)

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
assert set(_PLANNERS) == {f["name"] for f in CATALOGUE}

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


def generate(n: int, seed: int) -> list[Instruction]:
    """``n`` instances from ``random.Random(seed)``: one to three calls each (:data:`CALL_MIX`),
    every function of the catalogue used about equally often as the first call."""
    if n < 0:
        raise IcpoError("n must be >= 0")
    rng = random.Random(seed)
    names = list(_PLANNERS)
    out = []
    for i in range(n):
        if i % len(names) == 0:
            rng.shuffle(names)
        k = rng.choices((1, 2, 3), weights=CALL_MIX)[0]
        first = names[i % len(names)]
        others = rng.sample([x for x in names if x != first], k - 1)
        out.append(make_instance(rng, [first, *others], f"actions-gen-{seed}-{i:04d}"))
    return out
