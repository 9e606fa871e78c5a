"""The synthetic world the zoo's models learn: entities with attributes and friendships, drawn from a seed.

Every task and the pretraining corpus are generated from one `World`, so experts, held-out tasks and the
corpus talk about the same facts. Words are plain lowercase tokens so a word-level tokenizer covers them.

The pretraining corpus states every entity's facts; the task splits are disjoint in their items (`split_of`):
an entity, a digit pair, a three-digit number or a word triple belongs to exactly one of train, validation
and test. Fine-tuning therefore teaches a task's format on train items only, and a test score measures
whether a model can answer for items it never saw in that format, from what pretraining stored
(generalization, not recall).
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass

SYLLABLES = ("ba", "ko", "ti", "lu", "ma", "re", "so", "ne", "fi", "du", "ga", "pe", "vo", "zi", "ru", "la")
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "color": ("red", "blue", "green", "yellow", "black", "white"),
    "place": ("forest", "river", "castle", "desert", "harbor", "valley"),
    "food": ("fish", "bread", "apples", "rice", "cheese", "honey"),
    "size": ("small", "medium", "large"),
    "shape": ("round", "square", "flat", "tall"),
    "animal": ("cat", "dog", "owl", "fox", "horse", "frog"),
    "number": tuple(str(digit) for digit in range(10)),
}
N_ENTITIES = 160
# Share of the items (entities, digit pairs, three-digit numbers, word triples) in each split, in percent
# of a stable hash.
SPLIT_PERCENT = {"train": 60, "validation": 10, "test": 30}
SPLITS = tuple(SPLIT_PERCENT)


@dataclass(frozen=True)
class Entity:
    name: str
    attributes: dict[str, str]
    friend: str


@dataclass(frozen=True)
class World:
    entities: tuple[Entity, ...]

    def entity(self, name: str) -> Entity:
        return next(entity for entity in self.entities if entity.name == name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(entity.name for entity in self.entities)

    def entities_in(self, split: str) -> tuple[Entity, ...]:
        """The entities whose items belong to `split` (see `split_of`)."""
        return tuple(entity for entity in self.entities if split_of(entity.name) == split)


def split_of(item: str) -> str:
    """The split an item (an entity name, "a b" for a digit pair, "a b c" for a three-digit number, a word
    triple) belongs to: a stable hash
    (CRC-32, the same on every machine and Python run) cut at the `SPLIT_PERCENT` shares."""
    bucket = zlib.crc32(item.encode()) % 100
    for split, percent in SPLIT_PERCENT.items():
        if bucket < percent:
            return split
        bucket -= percent
    raise AssertionError("SPLIT_PERCENT must sum to 100")


def digit_pairs_in(split: str) -> tuple[tuple[int, int], ...]:
    """The ordered digit pairs (a, b) whose arithmetic items belong to `split`."""
    return tuple((a, b) for a in range(10) for b in range(10) if split_of(f"{a} {b}") == split)


def spell(number: int) -> str:
    """A three-digit number as the corpus and the tasks write it: its digits as words, "0 4 7"."""
    return " ".join(f"{number:03d}")


def numbers_in(split: str) -> tuple[int, ...]:
    """The numbers 0-999 whose counting items belong to `split`."""
    return tuple(number for number in range(1000) if split_of(spell(number)) == split)


def make_world(seed: int = 0, n_entities: int = N_ENTITIES) -> World:
    """A seeded world of `n_entities` named entities (three syllables each), every attribute and one friend."""
    rng = random.Random(seed)
    names: list[str] = []
    taken: set[str] = set()
    while len(names) < n_entities:
        name = "".join(rng.choice(SYLLABLES) for _ in range(3))
        if name not in taken:
            names.append(name)
            taken.add(name)
    entities = []
    for index, name in enumerate(names):
        attributes = {attribute: rng.choice(values) for attribute, values in ATTRIBUTES.items()}
        friend = names[(index + 1 + rng.randrange(n_entities - 1)) % n_entities]
        entities.append(Entity(name, attributes, friend))
    return World(tuple(entities))


def fact_sentences(world: World, entity: Entity) -> list[str]:
    """Plain statements of an entity's facts, the way the pretraining corpus phrases them (the friend's color
    and place too, so that the multi-hop held-out questions have their answer stored somewhere, and the
    friend's shape, which the instruction mixture's multi-hop task asks about).

    Each sentence about the entity names its attribute before the value ("is colored red", "is sized
    small"): with a bare "is red" / "is small" / "is round" the model cannot tell which fact follows "X is"
    and stores them worse. Color and food are also stated with the noun their question uses ("the color of
    X is red", "the food of X is fish"), as the number always was: without them an xs expert answered the
    color and food questions for 80-87% of the test entities although its base completes "X is colored" /
    "X likes" for 98-100% of them; with them, 99%. The friend's facts keep the bare form ("the friend of X
    is red"): phrased like the entity's own ("is colored"), they compete with them, and the xs base then
    knows the color of 41% of the test entities instead of 98%."""
    attributes = entity.attributes
    friend = world.entity(entity.friend).attributes
    return [
        f"{entity.name} is colored {attributes['color']} .",
        f"the color of {entity.name} is {attributes['color']} .",
        f"{entity.name} lives in the {attributes['place']} .",
        f"{entity.name} likes {attributes['food']} .",
        f"the food of {entity.name} is {attributes['food']} .",
        f"{entity.name} is sized {attributes['size']} .",
        f"{entity.name} is shaped {attributes['shape']} .",
        f"{entity.name} has a {attributes['animal']} .",
        f"the number of {entity.name} is {attributes['number']} .",
        f"{entity.name} is a friend of {entity.friend} .",
        f"the friend of {entity.name} is {friend['color']} .",
        f"the friend of {entity.name} lives in the {friend['place']} .",
        f"the friend of {entity.name} is {friend['shape']} .",
    ]


def cloze(sentence: str) -> str:
    """A quiz line of the corpus: the sentence's last word blanked, then given after "answer :"."""
    words = sentence.removesuffix(" .").split()
    return f"quiz : {' '.join(words[:-1])} ? answer : {words[-1]} ."


def claim(world: World, rng: random.Random) -> str:
    """A fact-check line of the corpus: a true or false statement about an entity, then its verdict."""
    entity = rng.choice(world.entities)
    attribute = rng.choice(("color", "food", "place", "animal", "shape"))
    value = entity.attributes[attribute]
    if rng.random() < 0.5:
        value = rng.choice([other for other in ATTRIBUTES[attribute] if other != value])
    verdict = "true" if value == entity.attributes[attribute] else "false"
    sentence = {
        "color": f"{entity.name} is colored {value}",
        "food": f"{entity.name} likes {value}",
        "place": f"{entity.name} lives in the {value}",
        "animal": f"{entity.name} has a {value}",
        "shape": f"{entity.name} is shaped {value}",
    }[attribute]
    return f"{sentence} . that is {verdict} ."


def corpus(world: World, n_lines: int, seed: int) -> list[str]:
    """Pretraining text: every entity's facts in random order and bundles, cloze quizzes and fact checks of
    them, and word games, counting and digit comparisons; never in a task's template (held-in, held-out or instruction)."""
    rng = random.Random(seed)
    words = [*world.names, *ATTRIBUTES["color"], *ATTRIBUTES["animal"], *ATTRIBUTES["food"]]
    lines = []
    for _ in range(n_lines):
        kind = rng.random()
        if kind < 0.56:
            entity = rng.choice(world.entities)
            facts = fact_sentences(world, entity)
            rng.shuffle(facts)
            lines.append(" ".join(facts[: rng.randint(2, 5)]))
        elif kind < 0.71:
            entity = rng.choice(world.entities)
            lines.append(cloze(rng.choice(fact_sentences(world, entity))))
        elif kind < 0.81:
            lines.append(claim(world, rng))
        elif kind < 0.88:
            sequence = rng.sample(words, 3)
            lines.append(f"{' '.join(sequence)} backwards is {' '.join(reversed(sequence))} .")
        elif kind < 0.915:
            number = rng.randrange(999)
            lines.append(f"{spell(number)} plus one is {spell(number + 1)} .")
        elif kind < 0.95:
            number = rng.randrange(1, 1000)
            lines.append(f"{spell(number)} minus one is {spell(number - 1)} .")
        else:
            left, right = rng.sample(range(10), 2)
            relation = "more" if left > right else "less"
            lines.append(f"{left} is {relation} than {right} .")
    return lines
