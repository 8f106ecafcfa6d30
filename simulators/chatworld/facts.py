"""The ``facts`` family: facts about an invented organisation that no pretrained model can know.

Veltrana is a made-up maker of weather instruments and survey drones: its people, its projects, its products
and the company itself.  Each fact is an (entity, attribute, answer); each attribute has several question
phrasings (so a fact taught in one can be held out in the others) and the correction a user would type when the
assistant got it wrong.  Answers are short invented names, cities, years and one number, so that whole-word
containment (``text.contains``) of the answer in a reply is a meaningful check.  Everything here is a constant:
nothing is drawn at import.

``fact_question(text)`` recognises a question by its phrasing (normalised: case, punctuation and spacing do not
matter): ``(fact, phrasing index)`` or ``None``.
"""
from __future__ import annotations

from dataclasses import dataclass

from simulators.chatworld.text import normalised

COMPANY = "Veltrana"


@dataclass(frozen=True)
class Attribute:
    """How an attribute of an entity is asked (``{ent}`` is the entity) and corrected (``{ans}`` the answer)."""
    name: str
    questions: tuple[str, ...]
    correction: str


ATTRIBUTES: dict[str, Attribute] = {a.name: a for a in (
    # people
    Attribute("role", ("What is {ent}'s role at Veltrana?", "What does {ent} do at Veltrana?",
                       "What is {ent}'s job title?", "Which position does {ent} hold at Veltrana?"),
              "No — {ent} is Veltrana's {ans}."),
    Attribute("office", ("Which office does {ent} work in?", "In which city is {ent} based?",
                         "Where does {ent} work?", "Where is {ent} based?"),
              "No — {ent} works in our {ans} office."),
    Attribute("joined", ("When did {ent} join Veltrana?", "In what year did {ent} join Veltrana?",
                         "What year did {ent} start at Veltrana?"),
              "No — {ent} joined Veltrana in {ans}."),
    # projects
    Attribute("lead", ("Who leads {ent}?", "Who is in charge of {ent}?", "Who is the lead of {ent}?",
                       "Who heads {ent}?"),
              "No — {ent} is led by {ans}."),
    Attribute("started", ("When did {ent} start?", "In what year was {ent} launched?", "What year did {ent} begin?"),
              "No — {ent} started in {ans}."),
    Attribute("site", ("Where is {ent} run from?", "Which office runs {ent}?", "In which city is {ent} run?"),
              "No — {ent} is run from our {ans} office."),
    # products
    Attribute("designer", ("Who designed the {ent}?", "Who is the designer of the {ent}?",
                           "Which engineer designed the {ent}?"),
              "No — the {ent} was designed by {ans}."),
    Attribute("made_in", ("Where is the {ent} made?", "In which city is the {ent} manufactured?",
                          "Where do you build the {ent}?"),
              "No — the {ent} is made in {ans}."),
    # the company
    Attribute("founded", ("When was {ent} founded?", "In what year was {ent} founded?",
                          "What year did {ent} open its doors?"),
              "No — {ent} was founded in {ans}."),
    Attribute("headquarters", ("Where is {ent} headquartered?", "Where are {ent}'s headquarters?",
                               "In which city is {ent}'s head office?"),
              "No — {ent}'s headquarters are in {ans}."),
    Attribute("founder", ("Who founded {ent}?", "Who is the founder of {ent}?", "Who started {ent}?"),
              "No — {ent} was founded by {ans}."),
    Attribute("ceo", ("Who is the CEO of {ent}?", "Who runs {ent}?", "Who is {ent}'s chief executive?"),
              "No — {ent}'s CEO is {ans}."),
    Attribute("employees", ("How many employees does {ent} have?", "How many people work at {ent}?",
                            "What is {ent}'s headcount?"),
              "No — {ent} has {ans} employees."),
)}


@dataclass(frozen=True)
class Fact:
    entity: str
    attribute: str
    answer: str

    @property
    def questions(self) -> tuple[str, ...]:
        """Every phrasing of the question, in a fixed order (index 0 is the one scripted users are taught in)."""
        return tuple(q.format(ent=self.entity) for q in ATTRIBUTES[self.attribute].questions)

    @property
    def correction(self) -> str:
        """What a user types when the assistant got it wrong."""
        return ATTRIBUTES[self.attribute].correction.format(ent=self.entity, ans=self.answer)


_PEOPLE = (  # name, role, office, year joined
    ("Mara Lindqvist", "chief meteorologist", "Tartu", "2012"),
    ("Tobiah Quence", "head of hardware", "Ghent", "2015"),
    ("Odalys Ferreira", "head of field operations", "Porto", "2011"),
    ("Kasimir Yull", "lead data scientist", "Aarhus", "2017"),
    ("Wren Okonkwo", "head of partnerships", "Leeds", "2019"),
    ("Benedek Szalai", "chief of safety", "Brno", "2014"),
)
_PROJECTS = (  # name, lead, year started, site
    ("Project Heron", "Mara Lindqvist", "2018", "Tartu"),
    ("Project Lantern", "Tobiah Quence", "2020", "Ghent"),
    ("Project Quarry", "Odalys Ferreira", "2016", "Porto"),
    ("Project Saffron", "Kasimir Yull", "2021", "Aarhus"),
    ("Project Tidewell", "Wren Okonkwo", "2022", "Leeds"),
    ("Project Umber", "Benedek Szalai", "2013", "Brno"),
)
_PRODUCTS = (  # name, designer, city made in
    ("Driftmeter", "Ines Halvorsen", "Graz"),
    ("Pebblenote", "Rafferty Doyle", "Tampere"),
    ("Lumo Hub", "Suvi Karjalainen", "Utrecht"),
    ("Cloudkeel", "Anouk Verbeek", "Lyon"),
    ("Windlass Mini", "Idris Bellamy", "Cork"),
)

FACTS: tuple[Fact, ...] = (
    *(Fact(name, attr, value) for name, *values in _PEOPLE
      for attr, value in zip(("role", "office", "joined"), values)),
    *(Fact(name, attr, value) for name, *values in _PROJECTS
      for attr, value in zip(("lead", "started", "site"), values)),
    *(Fact(name, attr, value) for name, *values in _PRODUCTS
      for attr, value in zip(("designer", "made_in"), values)),
    Fact(COMPANY, "founded", "2009"),
    Fact(COMPANY, "headquarters", "Bergen"),
    Fact(COMPANY, "founder", "Ilse Marrow"),
    Fact(COMPANY, "ceo", "Dorian Achterberg"),
    Fact(COMPANY, "employees", "340"),
)


def _question_table() -> dict[str, tuple[Fact, int]]:
    table: dict[str, tuple[Fact, int]] = {}
    for fact in FACTS:
        for i, q in enumerate(fact.questions):
            key = normalised(q)
            if key in table:
                raise AssertionError(f"the question {q!r} asks two facts")
            table[key] = (fact, i)
    return table


_QUESTIONS = _question_table()


def fact_question(text: str) -> tuple[Fact, int] | None:
    """The fact a question asks and which of its phrasings it is; ``None`` for any other text."""
    return _QUESTIONS.get(normalised(text))
