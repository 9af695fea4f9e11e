"""Making the ``summary`` family's tasks: small synthetic haystacks of documents to summarise.

Lost-in-Conversation's summary task (Summary of a Haystack) asks for a bullet-point summary of
a set of documents that answers a query, each bullet citing the documents it comes from; the
reference is a list of *insights*, each with the documents that state it. Its documents are
long news articles and conversation transcripts that we do not ship, so this module makes
small haystacks of the same shape that can be graded offline:

* a **scenario** (a topic such as "the town's new recycling scheme", a domain, ``news`` or
  ``conv``) with two **aspects** (participation, costs), each a query and six insight
  templates whose slots (a district, a person, a month, a number) are filled per instance;
* 3–5 **insights** of the aspect the query asks about, each stated word for word by 1–3 of the
  4–8 documents (so a summary written from the documents can cover it, and its citations can
  be checked); 1–3 facts of the *other* aspect sit in the documents as distractors, and a
  document may hold nothing but filler;
* the documents are news items (a headline and a few sentences) or meeting and support-call
  excerpts (``Name: ...`` lines), with ids ``doc1``, ``doc2`` ... and shown as "Document 1" ...

The documents are in the assistant's system prompt (see :mod:`icpo_eval.families.summary`);
the shards reveal the request: shard 1 the intent ("summarise what these documents say about
the recycling scheme"), then, in random order, the query's focus, the citation format, the
bullet style and the length. Required: the intent, the focus (without it the summary cannot
choose its insights) and the citation format (without it the citations cannot be read); the
bullet style and the length limit are optional, because the grader does not check them beyond
its 300-word cap, which every limit stated here stays under.

Each instance carries ``reference_summary``: the ideal answer, one bullet per insight with its
citations, which the tests grade.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass

from icpo_eval.errors import IcpoError
from icpo_eval.families import in_rounds
from icpo_eval.records import Instruction, Shard

__all__ = ["SCENARIO_NAMES", "generate", "make_instance"]


@dataclass(frozen=True)
class _Aspect:
    """One side of a scenario that a query can ask about."""

    name: str  # "rider experience", said in the focus shard
    query: str  # the question the summary must answer
    insights: tuple[str, ...]  # templates, one sentence each, with {slots}


@dataclass(frozen=True)
class _Scenario:
    name: str
    topic: str
    domain: str  # "news" or "conv", as LiC's two domains
    aspects: tuple[_Aspect, _Aspect]


_SCENARIOS: tuple[_Scenario, ...] = (
    _Scenario(
        "bikes",
        "the city's bike-sharing programme",
        "news",
        (
            _Aspect(
                "rider experience",
                "What do riders say about using the bike-sharing programme?",
                (
                    "Riders in {district} complained that docking stations were empty during "
                    "the morning rush.",
                    "A survey by {org} found that {pct:40-80} of regular riders feel safer on "
                    "the new protected lanes.",
                    "Several riders reported that the app charged them twice after trips ended "
                    "near {district} station.",
                    "Commuters from {district} said the electric bikes cut their travel time by "
                    "about {n:10-25} minutes.",
                    "Parents in {district} asked for child seats after {person} started a "
                    "petition.",
                    "Riders said broken bells and worn brakes were common on bikes parked along "
                    "the {district} waterfront.",
                ),
            ),
            _Aspect(
                "funding and costs",
                "How is the bike-sharing programme funded and what does it cost?",
                (
                    "The council spent {n:2-9} million dollars on the first {n:40-90} stations.",
                    "A sponsorship deal with {org} covers about {pct:15-45} of yearly operating "
                    "costs.",
                    "Annual memberships rose to {n:60-140} dollars after the {month} budget "
                    "review.",
                    "Vandalism repairs cost the operator more than {n:100-900} thousand dollars "
                    "last year.",
                    "{person} of the transport committee proposed a fare discount for students "
                    "in {district}.",
                    "Revenue from single rides fell short of forecasts in {month} because of "
                    "heavy rain.",
                ),
            ),
        ),
    ),
    _Scenario(
        "records",
        "the hospital's switch to electronic health records",
        "conv",
        (
            _Aspect(
                "staff workload",
                "How has the switch to electronic health records affected staff workload?",
                (
                    "Night-shift nurses on ward {n:2-9} say charting now takes about {n:20-50} "
                    "extra minutes per shift.",
                    "{person} noted that doctors in the {dept} department type notes after "
                    "hours to keep up.",
                    "Pharmacy staff in the {dept} wing spend more time correcting duplicate "
                    "medication orders.",
                    "Training sessions in {month} pulled {n:10-40} nurses off the wards for two "
                    "days.",
                    "Receptionists in the {dept} clinic reported fewer phone calls because "
                    "patients book online.",
                    "Junior doctors in {dept} said login timeouts force them to retype "
                    "passwords dozens of times a day.",
                ),
            ),
            _Aspect(
                "patient safety",
                "What do staff report about patient safety since the records switch?",
                (
                    "Allergy alerts caught {n:5-30} prescribing errors in the {dept} unit during "
                    "the first month.",
                    "{person} warned that lab results sometimes appear under the wrong patient "
                    "in the {dept} ward.",
                    "Handover errors dropped after shared checklists were added to the {dept} "
                    "records.",
                    "A system outage in {month} left the {dept} team working from paper charts "
                    "for {n:3-12} hours.",
                    "Nurses in {dept} worry that alarm fatigue makes them dismiss warnings about "
                    "drug interactions.",
                    "Discharge summaries from {dept} now reach family doctors within {n:2-4} "
                    "days instead of weeks.",
                ),
            ),
        ),
    ),
    _Scenario(
        "recycling",
        "the town's new recycling scheme",
        "news",
        (
            _Aspect(
                "participation",
                "How many households take part in the recycling scheme, and why or why not?",
                (
                    "About {pct:50-85} of households in {district} now put out the green bin "
                    "every week.",
                    "Tenants of apartment blocks in {district} said there is no room for "
                    "separate bins.",
                    "Volunteers led by {person} knocked on {n:300-900} doors to explain the "
                    "sorting rules.",
                    "Contamination with food waste fell after stickers were added to the lids "
                    "in {month}.",
                    "Older residents in {district} asked for larger print on the collection "
                    "calendar.",
                    "Schools in {district} collected {n:2-8} tonnes of paper in a class "
                    "competition.",
                ),
            ),
            _Aspect(
                "costs",
                "What does the recycling scheme cost and who pays for it?",
                (
                    "The town paid {org} {n:2-6} million dollars for new sorting machinery.",
                    "Collection fees rose by {n:5-25} dollars a year for every household in "
                    "{month}.",
                    "Selling sorted aluminium brought in {n:80-400} thousand dollars of revenue.",
                    "{person} argued that landfill taxes saved the town more than the scheme cost.",
                    "Fuel for the extra trucks on the {district} route doubled the transport "
                    "budget.",
                    "A regional grant covered {pct:20-60} of the cost of the bins in {district}.",
                ),
            ),
        ),
    ),
    _Scenario(
        "cloud",
        "the engineering team's migration to the cloud",
        "conv",
        (
            _Aspect(
                "outages and reliability",
                "What reliability problems and outages came up during the cloud migration?",
                (
                    "The payments service went down for {n:2-9} hours when the database "
                    "failover misfired.",
                    "{person} traced the {weekday} outage to an expired certificate on the load "
                    "balancer.",
                    "Latency for customers in {region} doubled after traffic moved to the new "
                    "region.",
                    "Automatic scaling kept the checkout page up during the {month} sales peak.",
                    "A misconfigured backup job deleted {n:3-20} days of staging logs.",
                    "On-call engineers received {n:40-150} alerts in one night because "
                    "thresholds were copied unchanged.",
                ),
            ),
            _Aspect(
                "budget",
                "How did the cloud migration affect the team's budget?",
                (
                    "The monthly cloud bill came in {pct:20-60} above the original estimate.",
                    "{person} found idle test servers costing about {n:3-15} thousand dollars a "
                    "month.",
                    "Reserved instances bought in {month} cut compute costs for the analytics "
                    "cluster.",
                    "Data transfer fees between {region} and Europe became the largest surprise "
                    "on the invoice.",
                    "Closing the old data centre in {district} saved {n:2-4} million dollars in "
                    "rent.",
                    "The finance team asked for weekly cost reports after the {weekday} review.",
                ),
            ),
        ),
    ),
    _Scenario(
        "school",
        "the school district's four-day week trial",
        "news",
        (
            _Aspect(
                "student outcomes",
                "How did the four-day week trial affect students?",
                (
                    "Reading scores at {school} stayed flat during the first year of the trial.",
                    "Attendance rose by {pct:3-12} at secondary schools in {district}.",
                    "Teachers at {school} said students seemed less tired on Mondays after the "
                    "long weekend.",
                    "{person} reported that maths results dropped for pupils who already "
                    "struggled.",
                    "Sports teams at {school} lost practice time and cancelled {n:3-10} matches.",
                    "Fewer students in {district} were sent to detention in {month} than a year "
                    "earlier.",
                ),
            ),
            _Aspect(
                "families and childcare",
                "How did families cope with the four-day school week?",
                (
                    "Working parents in {district} paid about {n:40-120} dollars a week for "
                    "Friday childcare.",
                    "{org} opened free Friday camps for {n:100-600} children.",
                    "{person} said grandparents now look after many children on the day off.",
                    "Families in {district} with several children reported saving money on "
                    "school transport.",
                    "Single parents asked the board to keep the {school} canteen open on Fridays.",
                    "A parent survey in {month} found {pct:30-70} support for continuing the "
                    "trial.",
                ),
            ),
        ),
    ),
    _Scenario(
        "coffee",
        "the coffee chain's new loyalty app",
        "conv",
        (
            _Aspect(
                "app problems",
                "What problems do customers report with the loyalty app?",
                (
                    "Customers on older {phone} phones say the app crashes at the payment screen.",
                    "{person} called because stamps from {n:3-12} visits never appeared in the "
                    "account.",
                    "The QR code fails to scan in bright sunlight at the {district} store.",
                    "Several callers were logged out after the {month} update and could not "
                    "reset passwords.",
                    "Push notifications about {district} offers arrived hours after the offers "
                    "had expired.",
                    "Baristas in {district} report that the counter tablet freezes during the "
                    "lunch rush.",
                ),
            ),
            _Aspect(
                "rewards",
                "What do customers think of the app's rewards?",
                (
                    "Customers like that drink number {n:5-10} is free once the card is full.",
                    "{person} complained that birthday rewards expire after only {n:2-7} days.",
                    "Regulars in {district} asked for rewards on pastries as well as drinks.",
                    "The double points week in {month} brought many lapsed customers back.",
                    "Callers find the tier names confusing and do not know how to reach gold "
                    "status.",
                    "Students want a discount code that works with the campus card at the "
                    "{district} store.",
                ),
            ),
        ),
    ),
    _Scenario(
        "heat",
        "the regional heatwave",
        "news",
        (
            _Aspect(
                "health effects",
                "What were the health effects of the heatwave?",
                (
                    "Hospitals in {district} treated {n:50-300} people for heat exhaustion in "
                    "one week.",
                    "{person} of the health board urged people to check on elderly neighbours "
                    "twice a day.",
                    "Outdoor workers on building sites in {district} were told to stop work "
                    "after noon.",
                    "Cooling centres in {district} libraries stayed open until {n:9-11} at night.",
                    "Ambulance calls rose by {pct:15-45} compared with an ordinary week in "
                    "{month}.",
                    "Doctors saw more children with sunburn after school trips to {district} "
                    "beach.",
                ),
            ),
            _Aspect(
                "power grid",
                "How did the power grid cope with the heatwave?",
                (
                    "Electricity demand hit a record {n:8-15} thousand megawatts on {weekday} "
                    "evening.",
                    "Rolling blackouts cut power to {n:10-60} thousand homes in {district}.",
                    "{org} asked customers to run washing machines after ten at night.",
                    "Solar farms supplied {pct:20-45} of daytime power during the hottest days.",
                    "{person} said an old transformer near {district} failed and caused a fire.",
                    "The grid operator imported power from {region} for the first time since "
                    "{n:2005-2019}.",
                ),
            ),
        ),
    ),
    _Scenario(
        "remote",
        "the startup's remote-work policy",
        "conv",
        (
            _Aspect(
                "productivity",
                "How has the remote-work policy affected productivity?",
                (
                    "The design team shipped {n:2-6} more releases per quarter after going "
                    "fully remote.",
                    "{person} said meetings across time zones eat up most of {weekday} for the "
                    "support team.",
                    "Engineers in {region} report fewer interruptions and longer stretches of "
                    "focused work.",
                    "Sales staff in {district} miss quick chats and say deals close more slowly.",
                    "Video call fatigue got worse during the {month} planning cycle.",
                    "New hires take about {n:2-8} weeks longer to ship their first project.",
                ),
            ),
            _Aspect(
                "hiring",
                "How has the remote-work policy affected hiring?",
                (
                    "Applications per opening rose to about {n:150-600} after jobs were listed "
                    "as remote.",
                    "{person} hired {n:3-12} engineers from {region} who would not have relocated.",
                    "Salary bands now differ by region, which caused complaints in the {month} "
                    "review.",
                    "Candidates turned down offers when asked to visit the {district} office "
                    "monthly.",
                    "The recruiting team stopped paying relocation bonuses in {month}.",
                    "Interview loops moved online and now take {n:2-3} days instead of a week.",
                ),
            ),
        ),
    ),
)
#: Scenario names, in a stable order.
SCENARIO_NAMES: tuple[str, ...] = tuple(s.name for s in _SCENARIOS)

_POOLS: dict[str, tuple[str, ...]] = {
    "district": (
        "Northgate", "Eastbrook", "Millbank", "Harbourside", "Westfield", "Oakridge",
        "Southmoor", "Kingsford", "Linden Park", "Stonebridge", "Ashcombe", "Fairhaven",
    ),
    "person": (
        "Maya Chen", "Tom Okafor", "Priya Raman", "Luis Ortega", "Hannah Weiss", "Kofi Mensah",
        "Sara Lindqvist", "Daniel Park", "Amira Haddad", "Jonas Berg", "Elena Rossi",
        "Sam Whitaker",
    ),
    "org": (
        "the Greenway Trust", "the Civic Data Lab", "Northstar Bank", "Atlas Energy",
        "the Bright Futures Fund", "Harper and Cole", "the Community Foundation",
        "Lakeside Credit Union",
    ),
    "month": (
        "January", "February", "March", "April", "May", "June", "July", "August", "September",
        "October", "November", "December",
    ),
    "weekday": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday"),
    "dept": (
        "cardiology", "oncology", "paediatrics", "radiology", "orthopaedics", "emergency",
        "neurology", "maternity",
    ),
    "region": (
        "South America", "Southeast Asia", "Eastern Europe", "West Africa", "Australia",
        "Scandinavia",
    ),
    "school": (
        "Lincoln High", "Maple Grove School", "Riverside Academy", "Hillcrest Middle",
        "Oak Valley School", "Cedar Point School",
    ),
    "phone": ("Android", "iPhone", "Samsung", "Pixel", "Motorola"),
}  # fmt: skip
_SLOT_RE = re.compile(r"\{(\w+)(?::(\d+)-(\d+))?\}")

#: Sentences that carry no fact, to make the haystack: news items and conversation lines.
_NEWS_HEADLINES = (
    "Local Ledger, {weekday} edition", "City Courier: update on {topic}",
    "Morning Dispatch", "The Weekly Observer", "Community Radio news desk",
)  # fmt: skip
_NEWS_FILLER = (
    "Reporters spoke to residents and officials this week.",
    "The story has drawn a lot of attention on local forums.",
    "Officials promised another update later in the season.",
    "Opinions remain divided, and the debate is likely to continue.",
    "A public meeting on the subject is planned for next month.",
)
_CONV_HEADERS = (
    "Meeting notes, {weekday}", "Support call transcript", "Team stand-up, {weekday}",
    "Notes from the monthly review", "Excerpt from a planning call",
)  # fmt: skip
_CONV_NAMES = ("Alex", "Jordan", "Riley", "Casey", "Morgan", "Taylor", "Jamie", "Robin")
_CONV_FILLER = (
    "Thanks, let's keep going.",
    "Good point, I will add it to the notes.",
    "Can we come back to that later?",
    "I agree, that matches what I have heard.",
    "Let's make sure everyone gets the slides afterwards.",
)

_INTENTS = (
    "Can you summarise what these documents say about {topic}?",
    "I need a summary of the documents about {topic}.",
    "Please write me a summary of what the documents tell us about {topic}.",
)
_FOCUS = (
    "Focus on {aspect}. The question I want answered is: {query}",
    "I only care about {aspect}: {query}",
)
_CITATION = (
    "After each point, cite the documents that support it by number in square brackets, "
    "like [2] or [1, 3].",
    "Every point needs citations: put the numbers of its supporting documents in square "
    "brackets at the end, for example [4] or [2, 5].",
)
_STYLE = (
    "Write it as bullet points, one finding per bullet.",
    "Use a bulleted list with one short sentence per finding.",
)
_LENGTH = ("Keep the whole summary under {limit} words.", "It should be at most {limit} words.")


def _fill(template: str, rng: random.Random) -> str:
    """The template with every slot drawn: pools by name, ``{n:A-B}`` an integer in [A, B],
    ``{pct:A-B}`` a percentage."""

    def draw(m: re.Match[str]) -> str:
        kind, lo, hi = m.group(1), m.group(2), m.group(3)
        if lo is not None:
            value = rng.randint(int(lo), int(hi))
            return f"{value} percent" if kind == "pct" else str(value)
        return rng.choice(_POOLS[kind])

    text = _SLOT_RE.sub(draw, template)
    return text[0].upper() + text[1:]


def _document(rng: random.Random, domain: str, topic: str, facts: list[str]) -> str:
    """One document holding ``facts`` (sentences, kept word for word) among filler."""
    weekday = rng.choice(_POOLS["weekday"])
    if domain == "news":
        headline = rng.choice(_NEWS_HEADLINES).format(weekday=weekday, topic=topic)
        body = [rng.choice(_NEWS_FILLER), *facts, rng.choice(_NEWS_FILLER)]
        if not facts:
            body = rng.sample(_NEWS_FILLER, 3)
        return f"{headline}\n" + " ".join(body)
    header = rng.choice(_CONV_HEADERS).format(weekday=weekday)
    lines = [f"{rng.choice(_CONV_NAMES)}: Next item is {topic}."]
    for fact in facts or [rng.choice(_CONV_FILLER)]:
        lines.append(f"{rng.choice(_CONV_NAMES)}: {fact}")
        lines.append(f"{rng.choice(_CONV_NAMES)}: {rng.choice(_CONV_FILLER)}")
    return f"{header}\n" + "\n".join(lines)


def make_instance(rng: random.Random, scenario: str, task_id: str) -> Instruction:
    """One haystack of the named scenario, drawn with ``rng`` only."""
    by_name = {s.name: s for s in _SCENARIOS}
    if scenario not in by_name:
        raise IcpoError(f"unknown summary scenario {scenario!r} (known: {', '.join(by_name)})")
    sc = by_name[scenario]
    focus_i = rng.randrange(2)
    focus, other = sc.aspects[focus_i], sc.aspects[1 - focus_i]

    n_docs = rng.randint(4, 8)
    n_insights = rng.randint(3, 5)
    insights = [_fill(t, rng) for t in rng.sample(focus.insights, n_insights)]
    distractors = [_fill(t, rng) for t in rng.sample(other.insights, rng.randint(1, 3))]

    # Which documents state which insight: 1-3 each, never the same set twice, so that a
    # citation can only be right for its own insight.
    support: list[list[int]] = []
    for _ in insights:
        for _attempt in range(50):
            docs = sorted(rng.sample(range(n_docs), rng.randint(1, min(3, n_docs))))
            if docs not in support:
                break
        support.append(docs)
    facts_of: list[list[str]] = [[] for _ in range(n_docs)]
    for text, docs in zip(insights, support):
        for d in docs:
            facts_of[d].append(text)
    for text in distractors:
        facts_of[rng.randrange(n_docs)].append(text)
    for facts in facts_of:
        rng.shuffle(facts)

    documents = [
        {"document_id": f"doc{d + 1}", "document_text": _document(rng, sc.domain, sc.topic, f)}
        for d, f in enumerate(facts_of)
    ]
    insight_records = [
        {"insight_id": f"I{k + 1}", "insight": text} for k, text in enumerate(insights)
    ]
    citations = {f"I{k + 1}": [f"doc{d + 1}" for d in docs] for k, docs in enumerate(support)}
    reference = "\n".join(
        f"- {text} [{', '.join(str(d + 1) for d in docs)}]" for text, docs in zip(insights, support)
    )
    words = len(reference.split())
    limit = max(120, 50 * math.ceil((words + 40) / 50))

    intent = rng.choice(_INTENTS).format(topic=sc.topic)
    details = [
        ("focus", rng.choice(_FOCUS).format(aspect=focus.name, query=focus.query)),
        ("citation", rng.choice(_CITATION)),
        ("style", rng.choice(_STYLE)),
        ("length", rng.choice(_LENGTH).format(limit=limit)),
    ]
    rng.shuffle(details)
    shards = [Shard(1, intent)] + [Shard(i + 2, text) for i, (_, text) in enumerate(details)]
    required = [1] + [i + 2 for i, (kind, _) in enumerate(details) if kind in ("focus", "citation")]
    return Instruction(
        task_id=task_id,
        task="summary",
        shards=shards,
        required_shards=sorted(required),
        fields={
            "request": " ".join([intent, *(text for _, text in details)]),
            "query": focus.query,
            "topic": sc.topic,
            "domain": sc.domain,
            "scenario": sc.name,
            "aspect": focus.name,
            "documents": documents,
            "insights": insight_records,
            "insightid2ref_citations": citations,
            "reference_summary": reference,
        },
    )


def generate(n: int, seed: int) -> list[Instruction]:
    """``n`` haystacks from ``random.Random(seed)``; the scenarios take turns in an order
    shuffled every round, so every scenario appears about equally often and two neighbours of
    the list are never of the same scenario within a round."""
    if n < 0:
        raise IcpoError("n must be >= 0")
    rng = random.Random(seed)
    return [
        make_instance(rng, name, f"summary-gen-{seed}-{i:04d}")
        for i, name in enumerate(in_rounds(rng, list(SCENARIO_NAMES), n))
    ]
