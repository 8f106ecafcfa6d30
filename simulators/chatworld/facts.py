"""The ``facts`` family: facts about an invented organisation that no pretrained model can know.

Veltrana is a made-up maker of weather instruments and survey drones: its people, its projects, its products
and the company itself.  Each fact is an (entity, attribute, answer); each attribute has several question
phrasings (so a fact taught in one can be held out in the others) and the correction a user gives when the
assistant got it wrong: the reply they wanted (what ``POST /v1/feedback``'s ``correction`` is: the learner shows
it as the assistant's answer, and SFT takes it as the target).  Answers are short invented names, cities, years
and one number, so that whole-word containment (``text.contains``) of the answer in a reply is a meaningful check.  Everything here is a constant:
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
    unseen: tuple[str, ...]  # phrasings the loop never varies into: what a benchmark asks after a cycle


ATTRIBUTES: dict[str, Attribute] = {a.name: a for a in (
    # people
    Attribute("role", ("What is {ent}'s role at Veltrana?", "What does {ent} do at Veltrana?",
                       "What is {ent}'s job title?", "Which position does {ent} hold at Veltrana?"),
              "{ent} is Veltrana's {ans}.",
              ("What job does {ent} have at Veltrana?",)),
    Attribute("office", ("Which office does {ent} work in?", "In which city is {ent} based?",
                         "Where does {ent} work?", "Where is {ent} based?"),
              "{ent} works in our {ans} office.",
              ("Which city does {ent} work from?",)),
    Attribute("joined", ("When did {ent} join Veltrana?", "In what year did {ent} join Veltrana?",
                         "What year did {ent} start at Veltrana?"),
              "{ent} joined Veltrana in {ans}.",
              ("Since what year has {ent} been with Veltrana?",)),
    # projects
    Attribute("lead", ("Who leads {ent}?", "Who is in charge of {ent}?", "Who is the lead of {ent}?",
                       "Who heads {ent}?"),
              "{ent} is led by {ans}.",
              ("Who manages {ent}?",)),
    Attribute("started", ("When did {ent} start?", "In what year was {ent} launched?", "What year did {ent} begin?"),
              "{ent} started in {ans}.",
              ("When did work on {ent} begin?",)),
    Attribute("site", ("Where is {ent} run from?", "Which office runs {ent}?", "In which city is {ent} run?"),
              "{ent} is run from our {ans} office.",
              ("Which city is {ent} based in?",)),
    # products
    Attribute("designer", ("Who designed the {ent}?", "Who is the designer of the {ent}?",
                           "Which engineer designed the {ent}?"),
              "The {ent} was designed by {ans}.",
              ("Who created the {ent}?",)),
    Attribute("made_in", ("Where is the {ent} made?", "In which city is the {ent} manufactured?",
                          "Where do you build the {ent}?"),
              "The {ent} is made in {ans}.",
              ("Where is the {ent} produced?",)),
    # the company
    Attribute("founded", ("When was {ent} founded?", "In what year was {ent} founded?",
                          "What year did {ent} open its doors?"),
              "{ent} was founded in {ans}.",
              ("In which year was {ent} established?",)),
    Attribute("headquarters", ("Where is {ent} headquartered?", "Where are {ent}'s headquarters?",
                               "In which city is {ent}'s head office?"),
              "{ent}'s headquarters are in {ans}.",
              ("Where is {ent}'s main office?",)),
    Attribute("founder", ("Who founded {ent}?", "Who is the founder of {ent}?", "Who started {ent}?"),
              "{ent} was founded by {ans}.",
              ("Who established {ent}?",)),
    Attribute("ceo", ("Who is the CEO of {ent}?", "Who runs {ent}?", "Who is {ent}'s chief executive?"),
              "{ent}'s CEO is {ans}.",
              ("Who is at the head of {ent}?",)),
    Attribute("employees", ("How many employees does {ent} have?", "How many people work at {ent}?",
                            "What is {ent}'s headcount?"),
              "{ent} has {ans} employees.",
              ("How large is {ent}'s staff?",)),
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
    def unseen(self) -> tuple[str, ...]:
        """Phrasings no variation of the loop ever asks (``ChatVariations.vary`` draws from ``questions`` only):
        after a cycle that taught the fact, these are asked in words neither the user nor the loop used."""
        return tuple(q.format(ent=self.entity) for q in ATTRIBUTES[self.attribute].unseen)

    @property
    def correction(self) -> str:
        """What a user gives as the correction when the assistant got it wrong: the reply they wanted."""
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
        for i, q in enumerate((*fact.questions, *fact.unseen)):
            key = normalised(q)
            if key in table:
                raise AssertionError(f"the question {q!r} asks two facts")
            table[key] = (fact, i)
    return table


_QUESTIONS = _question_table()


def fact_question(text: str) -> tuple[Fact, int] | None:
    """The fact a question asks and which of its phrasings it is (``questions`` first, then ``unseen``: an index
    of ``len(fact.questions)`` or more is an unseen phrasing); ``None`` for any other text."""
    return _QUESTIONS.get(normalised(text))
