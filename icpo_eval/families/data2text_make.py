"""Making the ``data2text`` family's tasks: synthetic ToTTo-like tables with highlighted cells.

Why generated tables rather than only ToTTo: the generator knows exactly which cells each
reference sentence states, which shards the task cannot be solved without, and it ships no
Wikipedia text. Each instance is one small table of one of ten *domains* (an athlete's
competition record, an election result, a filmography, the tallest buildings of a city, a
football club's seasons, a discography, awards, a season's episodes, the stations of a railway
line, the highest mountains of a region), with invented names and numbers so that no two
instances describe the same facts.

One row of the table is chosen and some of its cells are highlighted; the one to three
reference sentences each state exactly those cells, in different words, with the page's subject
(from the page title) as their subject where the table does not name it: the athlete's name,
the election, the city. The shards:

1. the intent ("I need a one-sentence description of part of a table"), no data;
2. the table, as HTML without the highlights;
3. and later, in a shuffled order: which cells are highlighted (named by row and column, not by
   value, so the table is still needed); the page and section the table comes from; and up to
   two optional shards: a style wish that every reference already meets, and example
   descriptions of other tables (LiC's ``fewshot_descriptions``).

``required_shards`` are the intent, the table, the highlighted cells and, when a reference
names something only the page title gives, the context. Everything is drawn from one
``random.Random(seed)``, so the same seed always gives the same instances.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from random import Random
from typing import Any, TypeVar

from icpo_eval.errors import IcpoError
from icpo_eval.families import in_rounds
from icpo_eval.records import Instruction, Shard

__all__ = ["DOMAINS", "generate", "make_instance"]

_T = TypeVar("_T")


@dataclass
class _Table:
    """What a domain builder makes: the table, which cells are highlighted, the references."""

    domain: str
    page_title: str
    section_title: str
    header: list[str]
    rows: list[list[str]]
    #: Index in ``rows`` of the highlighted row, and the highlighted columns of it.
    row: int
    cols: list[int]
    #: Column whose value names the row in the "which cells" shard.
    key_col: int
    references: list[str]
    #: Whether the references name something only the page title gives.
    needs_context: bool = True


# --------------------------------------------------------------------------------------------
# Word pools
# --------------------------------------------------------------------------------------------

_FIRST = (
    "Anna", "Boris", "Carla", "Dmitri", "Elena", "Felix", "Greta", "Hamid", "Ines", "Jonas",
    "Katya", "Lars", "Marta", "Nikolai", "Olga", "Pedro", "Rosa", "Stefan", "Tanya", "Umar",
    "Vera", "Wendell", "Ximena", "Yannick", "Zofia", "Adrian", "Bianca", "Cyrus", "Delia",
    "Emil", "Farah", "Gideon", "Hanna", "Ivo", "Julia", "Kenji", "Leona", "Milos", "Nadia",
    "Oskar", "Paloma", "Quentin", "Renata", "Silas", "Thea", "Ulrich", "Valeria", "Wilhelm",
)  # fmt: skip
_LAST = (
    "Abernathy", "Baranova", "Castellano", "Dreyer", "Eklund", "Fontaine", "Gallagher",
    "Haverkamp", "Ibarra", "Jovanovic", "Kowalczyk", "Lindqvist", "Marchetti", "Nakamura",
    "Okonkwo", "Petrakis", "Quintero", "Rasmussen", "Szabo", "Thorsen", "Ulloa", "Varga",
    "Whitcombe", "Yilmaz", "Zielinski", "Achterberg", "Brannigan", "Cardenas", "Delacroix",
    "Esposito", "Fairweather", "Gustafsson", "Holloway", "Iversen", "Jablonski", "Kavanagh",
    "Lombardi", "Moreau", "Novak", "Oyelaran", "Pellegrini", "Radcliffe", "Sorensen",
    "Tambini", "Vasquez", "Wojcik", "Yamada", "Zamora",
)  # fmt: skip
_TOWN_HEAD = (
    "Ash", "Bel", "Cor", "Dun", "Eld", "Fair", "Glen", "Hal", "Ivy", "Kings", "Lin", "Mar",
    "North", "Oak", "Pen", "Quar", "Red", "Stan", "Thorn", "Wex", "Brack", "Col", "Dover",
    "Elm", "Frost", "Gold", "Holm", "Lang", "Mill", "Raven",
)  # fmt: skip
_TOWN_TAIL = (
    "ford", "ton", "field", "brook", "wick", "dale", "mouth", "by", "ham", "stead", "bridge",
    "ley", "more", "port", "haven",
)  # fmt: skip
_CITIES = (
    "Berlin, Germany", "Osaka, Japan", "Lyon, France", "Valencia, Spain", "Turin, Italy",
    "Gothenburg, Sweden", "Krakow, Poland", "Porto, Portugal", "Ghent, Belgium",
    "Tampere, Finland", "Brno, Czech Republic", "Daegu, South Korea", "Perth, Australia",
    "Calgary, Canada", "Monterrey, Mexico", "Nairobi, Kenya", "Doha, Qatar", "Bergen, Norway",
    "Glasgow, United Kingdom", "Eugene, United States", "Sapporo, Japan", "Zagreb, Croatia",
)  # fmt: skip
_ADJ = (
    "Silent", "Crimson", "Last", "Hidden", "Broken", "Golden", "Quiet", "Distant", "Burning",
    "Frozen", "Wild", "Lonely", "Midnight", "Northern", "Secret", "Hollow", "Electric",
    "Velvet", "Restless", "Paper",
)  # fmt: skip
_NOUN = (
    "Harbor", "Garden", "Signal", "River", "Winter", "Mirror", "Orchard", "Bridge", "Lantern",
    "Voyage", "Kingdom", "Letter", "Station", "Promise", "Shadow", "Compass", "Meadow",
    "Tide", "Engine", "Horizon",
)  # fmt: skip
_ORDINAL_WORDS = (
    "first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth",
    "tenth", "eleventh", "twelfth", "thirteenth", "fourteenth", "fifteenth", "sixteenth",
    "seventeenth", "eighteenth", "nineteenth", "twentieth",
)  # fmt: skip
_MONTHS = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September",
    "October", "November", "December",
)  # fmt: skip


def _person(rng: Random) -> str:
    return f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"


def _town(rng: Random) -> str:
    return rng.choice(_TOWN_HEAD) + rng.choice(_TOWN_TAIL)


def _title(rng: Random) -> str:
    """An invented work title ("The Hidden Orchard", "Letters from Ashford")."""
    kind = rng.randrange(5)
    if kind == 0:
        return f"The {rng.choice(_ADJ)} {rng.choice(_NOUN)}"
    if kind == 1:
        return f"{rng.choice(_NOUN)} of {_town(rng)}"
    if kind == 2:
        return f"{rng.choice(_ADJ)} {rng.choice(_NOUN)}s"
    if kind == 3:
        noun = rng.choice(_NOUN)
        article = "An" if noun[0] in "AEIOU" else "A"
        return f"{article} {noun} in {_town(rng)}"
    return f"Return to {_town(rng)}"


def _ordinal(n: int) -> str:
    """1 -> "1st", 12 -> "12th", 23 -> "23rd"."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _ordinal_word(n: int) -> str:
    return _ORDINAL_WORDS[n - 1] if 1 <= n <= len(_ORDINAL_WORDS) else _ordinal(n)


def _ranked(rank: int, adjective: str) -> str:
    """1 -> "tallest", 3 -> "third tallest"."""
    return adjective if rank == 1 else f"{_ordinal_word(rank)} {adjective}"


def _pick(rng: Random, templates: Sequence[_T]) -> list[_T]:
    """One to three of ``templates``, distinct, in a random order."""
    return rng.sample(list(templates), rng.randint(1, min(3, len(templates))))


_Sentence = Callable[[], str]


def _refs(rng: Random, templates: Sequence[_Sentence]) -> list[str]:
    return [t() for t in _pick(rng, templates)]


# --------------------------------------------------------------------------------------------
# Domains: each builds one table, picks the highlighted cells and writes the references
# --------------------------------------------------------------------------------------------

_EVENTS = (
    ("800 metres", "time"), ("1500 metres", "time"), ("5000 metres", "time"),
    ("400 metres hurdles", "time"), ("100 metres", "time"), ("long jump", "mark"),
    ("high jump", "mark"), ("javelin throw", "mark"), ("triple jump", "mark"),
)  # fmt: skip
_COMPETITIONS = (
    "World Championships", "European Championships", "Commonwealth Games", "Olympic Games",
    "World Indoor Championships", "Continental Cup", "Universiade", "Diamond League Final",
)  # fmt: skip


def _mark(rng: Random, event: str) -> str:
    if event == "800 metres":
        return f"1:{rng.randint(43, 59)}.{rng.randint(0, 99):02d}"
    if event == "1500 metres":
        return f"{rng.choice((3, 4))}:{rng.randint(30, 59)}.{rng.randint(0, 99):02d}"
    if event == "5000 metres":
        return f"{rng.randint(13, 15)}:{rng.randint(0, 59):02d}.{rng.randint(0, 99):02d}"
    if event == "400 metres hurdles":
        return f"{rng.randint(47, 58)}.{rng.randint(0, 99):02d}"
    if event == "100 metres":
        return f"{rng.randint(9, 11)}.{rng.randint(0, 99):02d}"
    if event == "high jump":
        return f"{rng.randint(180, 240) / 100:.2f} m"
    if event == "javelin throw":
        return f"{rng.randint(5200, 8900) / 100:.2f} m"
    if event == "triple jump":
        return f"{rng.randint(1350, 1790) / 100:.2f} m"
    return f"{rng.randint(620, 860) / 100:.2f} m"


def _athlete(rng: Random) -> _Table:
    name = _person(rng)
    event, kind = rng.choice(_EVENTS)
    years = sorted(rng.sample(range(2004, 2024), rng.randint(4, 6)))
    rows = []
    for year in years:
        place = rng.choice((1, 1, 2, 3, 4, 5, 6, 8, 11))
        rows.append(
            [str(year), rng.choice(_COMPETITIONS), rng.choice(_CITIES), _ordinal(place), event,
             _mark(rng, event)]
        )  # fmt: skip
    r = rng.randrange(len(rows))
    year, comp, venue, place, _, mark = rows[r]
    with_venue = rng.random() < 0.5
    at = f" in {venue}" if with_venue else ""
    place_word = _ordinal_word(int(place[:-2]))
    refs = _refs(
        rng,
        [
            lambda: (
                f"{name} finished {place_word} in the {event} at the {year} {comp}{at} "
                f"with a {kind} of {mark}."
            ),
            lambda: f"At the {year} {comp}{at}, {name} placed {place} in the {event} ({mark}).",
            lambda: (
                f"{name} took {place_word} place in the {event} at the {year} {comp}{at}, "
                f"recording {mark}."
            ),
        ],
    )
    return _Table(
        domain="athlete",
        page_title=name,
        section_title=rng.choice(("Competition record", "International competitions")),
        header=["Year", "Competition", "Venue", "Position", "Event", "Notes"],
        rows=rows,
        row=r,
        cols=[0, 1, 3, 4, 5] + ([2] if with_venue else []),
        key_col=0,
        references=refs,
    )


_PARTIES = (
    "Green Party", "Labour Party", "Liberal Democrats", "Conservative Party", "Centre Party",
    "Reform Party", "Civic Alliance", "Progressive Party", "Farmers' Union", "Workers' Party",
    "National Party", "Pirate Party", "Unity Party", "Social Democrats",
)  # fmt: skip


def _election(rng: Random) -> _Table:
    year = rng.choice(range(1994, 2024, 2))
    place = _town(rng)
    office = rng.choice(("mayoral election", "by-election", "council election"))
    election = f"{year} {place} {office}"
    k = rng.randint(3, 6)
    parties = rng.sample(_PARTIES, k)
    votes = sorted((rng.randint(800, 40000) for _ in range(k)), reverse=True)
    total = sum(votes)
    rows = [
        [party, _person(rng), f"{v:,}", f"{100 * v / total:.1f}"]
        for party, v in zip(parties, votes)
    ]
    r = rng.choice((0, 0, 1, rng.randrange(k)))
    party, cand, vote, pct = rows[r]
    with_party = rng.random() < 0.7
    of_party = f" of the {party}" if with_party else ""
    paren_party = f" ({party})" if with_party else ""
    if r == 0:
        first = lambda: f"{cand}{of_party} won the {election} with {vote} votes ({pct}%)."  # noqa: E731
    else:
        first = lambda: (  # noqa: E731
            f"{cand}{of_party} finished {_ordinal_word(r + 1)} in the {election} "
            f"with {vote} votes ({pct}%)."
        )
    refs = _refs(
        rng,
        [
            first,
            lambda: (
                f"In the {election}, {cand}{paren_party} received {vote} votes, "
                f"{pct}% of the total."
            ),
            lambda: (
                f"{cand} took {pct}% of the vote ({vote} votes) in the {election}"
                + (f", standing for the {party}." if with_party else ".")
            ),
        ],
    )
    return _Table(
        domain="election",
        page_title=election,
        section_title=rng.choice(("Results", "Result", "Election results")),
        header=["Party", "Candidate", "Votes", "%"],
        rows=rows,
        row=r,
        cols=([0] if with_party else []) + [1, 2, 3],
        key_col=1,
        references=refs,
    )


_FILM_NOTES = ("", "", "Uncredited", "Voice role", "Cameo", "Also producer", "Television film")


def _film(rng: Random) -> _Table:
    name = _person(rng)
    years = sorted(rng.sample(range(1985, 2024), rng.randint(4, 7)))
    rows = [
        [str(y), _title(rng), rng.choice((rng.choice(_FIRST), f"Detective {rng.choice(_LAST)}",
         f"Dr. {rng.choice(_LAST)}", f"{rng.choice(_FIRST)} {rng.choice(_LAST)}")),
         _person(rng), rng.choice(_FILM_NOTES)]
        for y in years
    ]  # fmt: skip
    r = rng.randrange(len(rows))
    year, title, role, director, _ = rows[r]
    with_director = rng.random() < 0.5
    by = f", directed by {director}" if with_director else ""
    refs = _refs(
        rng,
        [
            lambda: f"In {year}, {name} played {role} in {title}{by}.",
            lambda: f"{name} appeared as {role} in the {year} film {title}{by}.",
            lambda: f"{name} was cast as {role} in {title} ({year}){by}.",
        ],
    )
    return _Table(
        domain="film",
        page_title=name,
        section_title=rng.choice(("Filmography", "Film", "Selected filmography")),
        header=["Year", "Title", "Role", "Director", "Notes"],
        rows=rows,
        row=r,
        cols=[0, 1, 2] + ([3] if with_director else []),
        key_col=1,
        references=refs,
    )


def _building(rng: Random) -> _Table:
    city = _town(rng)
    n = rng.randint(5, 7)
    heights = sorted(rng.sample(range(90, 420), n), reverse=True)
    names: list[str] = []
    while len(names) < n:
        kind = rng.randrange(4)
        if kind == 0:
            candidate = f"{rng.choice(_LAST)} Tower"
        elif kind == 1:
            candidate = f"{rng.choice(_NOUN)} Centre"
        elif kind == 2:
            candidate = f"One {rng.choice(_NOUN)} Place"
        else:
            candidate = f"{rng.choice(_LAST)} Building"
        if candidate not in names:
            names.append(candidate)
    rows = [
        [str(i + 1), names[i], str(h), str(h // 4 + rng.randint(-6, 6)),
         str(rng.randint(1965, 2023))]
        for i, h in enumerate(heights)
    ]  # fmt: skip
    r = rng.randrange(n)
    rank, building, height, floors, year = rows[r]
    tallest = _ranked(int(rank), "tallest")
    with_year = rng.random() < 0.5
    refs = _refs(
        rng,
        [
            lambda: (
                f"{building}"
                + (f", completed in {year}," if with_year else "")
                + f" is the {tallest} building in {city}, at {height} metres and {floors} floors."
            ),
            lambda: (
                f"With {floors} floors and a height of {height} m, {building} ranks "
                f"{_ordinal(int(rank))} among the tallest buildings in {city}"
                + (f" and was finished in {year}." if with_year else ".")
            ),
            lambda: (
                f"{city}'s {tallest} building is {building}, which stands {height} m tall "
                f"with {floors} floors" + (f" and was completed in {year}." if with_year else ".")
            ),
        ],
    )
    return _Table(
        domain="building",
        page_title=f"List of tallest buildings in {city}",
        section_title=rng.choice(("Tallest buildings", "Completed buildings")),
        header=["Rank", "Name", "Height (m)", "Floors", "Year"],
        rows=rows,
        row=r,
        cols=[0, 1, 2, 3] + ([4] if with_year else []),
        key_col=1,
        references=refs,
    )


_DIVISIONS = (
    "Premier Division", "Division One", "Division Two", "Northern League", "Southern League",
    "Regional League", "National League North", "First Division",
)  # fmt: skip


def _football(rng: Random) -> _Table:
    club = f"{_town(rng)} {rng.choice(('United', 'City', 'Rovers', 'Athletic', 'Town'))}"
    start = rng.randint(1995, 2015)
    played = rng.choice((30, 34, 38, 42, 46))
    rows = []
    for season in range(start, start + rng.randint(4, 6)):
        wins = rng.randint(5, played - 8)
        draws = rng.randint(2, min(15, played - wins))
        losses = played - wins - draws
        rows.append(
            [f"{season}–{(season + 1) % 100:02d}", rng.choice(_DIVISIONS), str(played), str(wins),
             str(draws), str(losses), str(3 * wins + draws), _ordinal(rng.randint(1, 20))]
        )  # fmt: skip
    r = rng.randrange(len(rows))
    season, division, played_s, wins_s, _, _, points, pos = rows[r]
    with_wins = rng.random() < 0.5
    refs = _refs(
        rng,
        [
            lambda: (
                f"In the {season} season, {club} finished {pos} in the {division} with "
                f"{points} points"
                + (f", winning {wins_s} of their {played_s} matches." if with_wins else ".")
            ),
            lambda: (
                f"{club} earned {points} points in {season}"
                + (f" from {wins_s} wins in {played_s} games" if with_wins else "")
                + f" and placed {pos} in the {division}."
            ),
            lambda: (
                f"{club} ended the {season} {division} season in {pos} place on {points} "
                "points" + (f", with {wins_s} wins from {played_s} games." if with_wins else ".")
            ),
        ],
    )
    return _Table(
        domain="football",
        page_title=f"{club} F.C.",
        section_title=rng.choice(("Seasons", "League history", "Recent seasons")),
        header=["Season", "Division", "P", "W", "D", "L", "Pts", "Pos"],
        rows=rows,
        row=r,
        cols=[0, 1, 6, 7] + ([2, 3] if with_wins else []),
        key_col=0,
        references=refs,
    )


_CHARTS = (
    ("UK", "UK Albums Chart"), ("US", "Billboard 200"), ("AUS", "ARIA Albums Chart"),
    ("CAN", "Canadian Albums Chart"), ("GER", "German Albums Chart"),
)  # fmt: skip
_LABELS = (
    "Sub Pop", "Domino", "Rough Trade", "Warp", "Matador", "Island", "Parlophone", "Merge",
    "Sonic Harbor Records", "Northern Lights", "Bella Union", "Mute",
)  # fmt: skip


def _album(rng: Random) -> _Table:
    artist = rng.choice(
        (f"The {rng.choice(_ADJ)} {rng.choice(_NOUN)}s", _person(rng), f"{_town(rng)} Collective")
    )
    chart, chart_name = rng.choice(_CHARTS)
    years = sorted(rng.sample(range(1978, 2024), rng.randint(4, 6)))
    rows = [
        [_title(rng), str(y), rng.choice(_LABELS), str(rng.randint(1, 90)),
         rng.choice(("", "Gold", "Platinum", "Silver"))]
        for y in years
    ]  # fmt: skip
    r = rng.randrange(len(rows))
    title, year, label, peak, _ = rows[r]
    refs = _refs(
        rng,
        [
            lambda: (
                f"{artist} released {title} on {label} in {year}, and it peaked at number "
                f"{peak} on the {chart_name}."
            ),
            lambda: (
                f"{title}, a {year} album by {artist} on {label}, reached number {peak} on "
                f"the {chart_name}."
            ),
            lambda: (
                f"{artist}'s {year} album {title}, issued by {label}, charted at number "
                f"{peak} on the {chart_name}."
            ),
        ],
    )
    return _Table(
        domain="album",
        page_title=f"{artist} discography",
        section_title=rng.choice(("Studio albums", "Albums")),
        header=["Title", "Year", "Label", f"Peak ({chart})", "Certifications"],
        rows=rows,
        row=r,
        cols=[0, 1, 2, 3],
        key_col=0,
        references=refs,
    )


_AWARD_BODIES = (
    "Saturn", "Critics' Circle", "Satellite", "Independent Spirit", "Drama Desk", "Olivier",
    "Golden Lens", "Silver Frame", "Empire", "Gotham",
)  # fmt: skip
_CATEGORIES = (
    "Best Actress", "Best Actor", "Best Supporting Actress", "Best Supporting Actor",
    "Best Performance in a Drama", "Breakthrough Performance", "Best Ensemble Cast",
    "Best Lead Performance",
)  # fmt: skip


def _awards(rng: Random) -> _Table:
    name = _person(rng)
    body = rng.choice(_AWARD_BODIES)
    years = sorted(rng.sample(range(1990, 2024), rng.randint(4, 6)))
    rows = [
        [str(y), rng.choice(_CATEGORIES), _title(rng), rng.choice(("Won", "Nominated"))]
        for y in years
    ]
    r = rng.randrange(len(rows))
    year, category, work, result = rows[r]
    if result == "Won":
        templates: list[_Sentence] = [
            lambda: f"{name} won the {body} Award for {category} for {work} in {year}.",
            lambda: f"In {year}, {name} received the {body} Award for {category} for {work}.",
            lambda: f"For {work}, {name} won {category} at the {year} {body} Awards.",
        ]
    else:
        templates = [
            lambda: (
                f"{name} was nominated for the {body} Award for {category} for {work} in {year}."
            ),
            lambda: (
                f"In {year}, {name} earned a {body} Award nomination for {category} for {work}."
            ),
            lambda: f"For {work}, {name} was nominated for {category} at the {year} {body} Awards.",
        ]
    return _Table(
        domain="awards",
        page_title=f"List of awards and nominations received by {name}",
        section_title=f"{body} Awards",
        header=["Year", "Category", "Nominated work", "Result"],
        rows=rows,
        row=r,
        cols=[0, 1, 2, 3],
        key_col=2,
        references=_refs(rng, templates),
    )


def _episodes(rng: Random) -> _Table:
    show = _title(rng)
    season = rng.randint(1, 6)
    year = rng.randint(1998, 2023)
    month, day = rng.randint(0, 8), rng.randint(1, 20)
    rows = []
    for i in range(rng.randint(5, 7)):
        day_i = day + 7 * i
        month_i, day_i = month + (day_i - 1) // 28, (day_i - 1) % 28 + 1
        rows.append(
            [str(i + 1), f"{rng.choice(_ADJ)} {rng.choice(_NOUN)}", _person(rng),
             _person(rng), f"{_MONTHS[month_i]} {day_i}, {year}",
             f"{rng.randint(150, 1290) / 100:.2f}"]
        )  # fmt: skip
    r = rng.randrange(len(rows))
    number, title, director, writer, date, viewers = rows[r]
    by_writer = rng.random() < 0.4
    made = f"written by {writer}" if by_writer else f"directed by {director}"
    with_viewers = rng.random() < 0.6
    audience = f", drawing {viewers} million viewers" if with_viewers else ""
    refs = _refs(
        rng,
        [
            lambda: (
                f'Episode {number} of {show}, "{title}", was {made} and first aired on '
                f"{date}{audience}."
            ),
            lambda: (
                f'"{title}", the {_ordinal_word(int(number))} episode of the '
                f"{_ordinal_word(season)} season of {show}, aired on {date}{audience} and was "
                f"{made}."
            ),
            lambda: (
                f'{made[0].upper()}{made[1:]}, episode {number} of {show}, "{title}", '
                f"premiered on {date}"
                + (f" to {viewers} million viewers." if with_viewers else ".")
            ),
        ],
    )
    return _Table(
        domain="episodes",
        page_title=f"{show} (season {season})",
        section_title="Episodes",
        header=[
            "No.",
            "Title",
            "Directed by",
            "Written by",
            "Original air date",
            "Viewers (millions)",
        ],  # fmt: skip
        rows=rows,
        row=r,
        cols=[0, 1, 3 if by_writer else 2, 4] + ([5] if with_viewers else []),
        key_col=1,
        references=refs,
    )


def _railway(rng: Random) -> _Table:
    n = rng.randint(5, 7)
    stations: list[str] = []
    while len(stations) < n:
        town = _town(rng)
        if town not in stations:
            stations.append(town)
    line = f"{stations[0]}–{stations[-1]} line"
    opened = rng.randint(1840, 1910)
    distance = 0.0
    rows = []
    for i, town in enumerate(stations):
        if i:
            distance += rng.randint(18, 140) / 10
        rows.append(
            [town, f"{distance:.1f}", str(opened + rng.randint(0, 30)),
             rng.choice(("Bus", "Tram", "Bus, tram", "None", "Ferry"))]
        )  # fmt: skip
    r = rng.randrange(1, len(rows))
    station, dist, year, _ = rows[r]
    origin = stations[0]
    refs = _refs(
        rng,
        [
            lambda: f"{station} station, {dist} km from {origin} on the {line}, opened in {year}.",
            lambda: (
                f"Opened in {year}, {station} station lies {dist} km along the {line} from "
                f"{origin}."
            ),
            lambda: f"The {line} reached {station}, {dist} km from {origin}, in {year}.",
        ],
    )
    return _Table(
        domain="railway",
        page_title=line,
        section_title=rng.choice(("Stations", "Route", "Stations and distances")),
        header=["Station", "Distance (km)", "Opened", "Connections"],
        rows=rows,
        row=r,
        cols=[0, 1, 2],
        key_col=0,
        references=refs,
    )


def _mountains(rng: Random) -> _Table:
    region = rng.choice(
        (f"the {_town(rng)} Range", f"the {rng.choice(_ADJ)} Mountains", f"{_town(rng)} County")
    )
    n = rng.randint(5, 7)
    elevations = sorted(rng.sample(range(1200, 4800), n), reverse=True)
    names: list[str] = []
    while len(names) < n:
        candidate = rng.choice(
            (f"Mount {rng.choice(_LAST)}", f"{rng.choice(_NOUN)} Peak", f"{_town(rng)} Horn")
        )
        if candidate not in names:
            names.append(candidate)
    rows = [
        [str(i + 1), names[i], f"{e:,}", f"{rng.randint(200, e // 2):,}",
         str(rng.randint(1786, 1975))]
        for i, e in enumerate(elevations)
    ]  # fmt: skip
    r = rng.randrange(n)
    rank, mountain, elevation, _, ascent = rows[r]
    highest = _ranked(int(rank), "highest")
    with_ascent = rng.random() < 0.5
    refs = _refs(
        rng,
        [
            lambda: (
                f"{mountain}, at {elevation} metres, is the {highest} mountain in {region}"
                + (f" and was first climbed in {ascent}." if with_ascent else ".")
            ),
            lambda: (
                f"The {highest} peak in {region} is {mountain} ({elevation} m)"
                + (f", first ascended in {ascent}." if with_ascent else ".")
            ),
            lambda: (
                f"{mountain} rises to {elevation} m, ranking {_ordinal(int(rank))} among the "
                f"peaks of {region}"
                + (f"; its first ascent was in {ascent}." if with_ascent else ".")
            ),
        ],
    )
    return _Table(
        domain="mountains",
        page_title=f"List of mountains in {region.removeprefix('the ')}",
        section_title=rng.choice(("Highest peaks", "Mountains by elevation")),
        header=["Rank", "Mountain", "Elevation (m)", "Prominence (m)", "First ascent"],
        rows=rows,
        row=r,
        cols=[0, 1, 2] + ([4] if with_ascent else []),
        key_col=1,
        references=refs,
    )


#: The domains, by name, in the order instances cycle through them.
DOMAINS: dict[str, Callable[[Random], _Table]] = {
    "athlete": _athlete,
    "election": _election,
    "film": _film,
    "building": _building,
    "football": _football,
    "album": _album,
    "awards": _awards,
    "episodes": _episodes,
    "railway": _railway,
    "mountains": _mountains,
}


# --------------------------------------------------------------------------------------------
# Tables as records and shards
# --------------------------------------------------------------------------------------------


def _raw_table(t: _Table) -> list[list[dict[str, Any]]]:
    """ToTTo's cell layout: the header row, then the data rows; cells carry ``highlighted``."""
    header = [{"value": h, "is_header": True, "highlighted": False} for h in t.header]
    body = [
        [
            {"value": v, "is_header": False, "highlighted": i == t.row and j in t.cols}
            for j, v in enumerate(row)
        ]
        for i, row in enumerate(t.rows)
    ]
    return [header, *body]


def _html(raw: list[list[dict[str, Any]]], highlights: bool) -> str:
    """Compact HTML of the table; with ``highlights``, highlighted cells carry
    ``class="highlighted"``."""
    lines = ["<table>"]
    for row in raw:
        cells = []
        for cell in row:
            tag = "th" if cell["is_header"] else "td"
            mark = ' class="highlighted"' if highlights and cell["highlighted"] else ""
            cells.append(f"<{tag}{mark}>{html.escape(cell['value'], quote=False)}</{tag}>")
        lines.append("<tr>" + "".join(cells) + "</tr>")
    lines.append("</table>")
    return "\n".join(lines)


def _join(words: list[str]) -> str:
    """ "A", "A and B", "A, B and C"."""
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


_INTENTS = (
    "I need a one-sentence description of part of a table.",
    "Can you write me a one-sentence description of part of a table?",
    "I'd like a single sentence describing a few cells of a table.",
    "Could you describe part of a table for me in one sentence?",
)
_TABLE_LEADS = ("Here is the table:", "This is the table:", "The table is below:")
_STYLES = (
    "Write it as one plain sentence in the third person, the way an encyclopedia would.",
    "Don't mention anything that isn't in the highlighted cells or the page title.",
    "Just the sentence, please: no list, no heading, no quotation marks around it.",
    "Keep it natural and factual; one sentence is enough.",
)


def make_instance(rng: Random, domain: str, task_id: str) -> Instruction:
    """One instance of ``domain``: its table, highlighted cells, references and shards."""
    t = DOMAINS[domain](rng)
    raw = _raw_table(t)
    key = t.rows[t.row][t.key_col]
    cells = _join([t.header[c] for c in sorted(t.cols)])
    highlight = (
        f"Only some cells are highlighted, and the sentence should cover just those: in the row "
        f'where {t.header[t.key_col]} is "{key}", the {cells} cells.'
    )
    context = (
        f'The table comes from the Wikipedia page "{t.page_title}", in the section '
        f'"{t.section_title}".'
    )
    others = [d for d in DOMAINS if d != domain]
    fewshot = [DOMAINS[d](rng).references[0] for d in rng.sample(others, 2)]
    later: list[tuple[str, str]] = [("highlight", highlight), ("context", context)]
    style: list[str] = []
    extras = rng.choice((0, 1, 1, 2))
    if extras >= 1:
        style = [rng.choice(_STYLES)]
        later.append(("style", style[0]))
    if extras == 2:
        examples = "\n".join(f"- {s}" for s in fewshot)
        later.append(
            ("fewshot", f"Here are descriptions of other tables, to show the style:\n{examples}")
        )
    rng.shuffle(later)
    parts = [
        ("intent", rng.choice(_INTENTS)),
        ("table", f"{rng.choice(_TABLE_LEADS)}\n{_html(raw, highlights=False)}"),
        *later,
    ]
    needed = {"intent", "table", "highlight"} | ({"context"} if t.needs_context else set())
    shards = [Shard(i + 1, text) for i, (_, text) in enumerate(parts)]
    required = [i + 1 for i, (kind, _) in enumerate(parts) if kind in needed]
    return Instruction(
        task_id=task_id,
        task="data2text",
        shards=shards,
        required_shards=required,
        fields={
            "table_html": _html(raw, highlights=False),
            "table_highlighted_html": _html(raw, highlights=True),
            "raw_table": raw,
            "references": t.references,
            "fewshot_descriptions": "\n".join(fewshot),
            "metadata": {"page_title": t.page_title, "section_title": t.section_title},
            "style": style,
            "domain": domain,
        },
    )


def generate(n: int, seed: int, **options: Any) -> list[Instruction]:
    """``n`` instances from ``random.Random(seed)``, cycling through :data:`DOMAINS` in an order
    shuffled anew every cycle, so that every domain is used about equally often and two
    neighbours are rarely of one domain. ``options`` may name ``domains`` (a list) to use only
    those."""
    if n < 0:
        raise IcpoError("n must be >= 0")
    names = list(options.pop("domains", None) or DOMAINS)
    if options:
        raise IcpoError(f"data2text: unknown generation option(s) {', '.join(sorted(options))}")
    unknown = [d for d in names if d not in DOMAINS]
    if unknown:
        raise IcpoError(f"data2text: unknown domain(s) {', '.join(unknown)}")
    rng = Random(seed)
    return [
        make_instance(rng, name, f"data2text-gen-{seed}-{i:04d}")
        for i, name in enumerate(in_rounds(rng, names, n))
    ]
