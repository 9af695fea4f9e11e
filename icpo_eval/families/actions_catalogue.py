"""The API catalogue of the ``actions`` family: the functions a generated instance may call.

Written in BFCL's function format (the format of Lost-in-Conversation's ``function`` field, whose
records bring their own list instead); the system prompt shows one JSON object per function.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["CATALOGUE"]


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
