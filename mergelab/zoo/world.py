"""The synthetic world the zoo's models learn: entities with attributes and friendships, drawn from a seed.

Every task and the pretraining corpus are generated from one `World`, so experts, held-out tasks and the
corpus talk about the same facts. Words are plain lowercase tokens so a word-level tokenizer covers them.
"""

from __future__ import annotations

import random
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
SIZE_RANK = {"small": 0, "medium": 1, "large": 2}


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


def make_world(seed: int = 0, n_entities: int = 40) -> World:
    """A seeded world of `n_entities` named entities, each with every attribute and one friend."""
    rng = random.Random(seed)
    names: list[str] = []
    while len(names) < n_entities:
        name = "".join(rng.choice(SYLLABLES) for _ in range(2))
        if name not in names:
            names.append(name)
    entities = []
    for index, name in enumerate(names):
        attributes = {attribute: rng.choice(values) for attribute, values in ATTRIBUTES.items()}
        friend = names[(index + 1 + rng.randrange(n_entities - 1)) % n_entities]
        entities.append(Entity(name, attributes, friend))
    return World(tuple(entities))


def fact_sentences(entity: Entity) -> list[str]:
    """Plain statements of an entity's facts, the way the pretraining corpus phrases them."""
    attributes = entity.attributes
    return [
        f"{entity.name} is {attributes['color']} .",
        f"{entity.name} lives in the {attributes['place']} .",
        f"{entity.name} likes {attributes['food']} .",
        f"{entity.name} is {attributes['size']} .",
        f"{entity.name} is {attributes['shape']} .",
        f"{entity.name} has a {attributes['animal']} .",
        f"the number of {entity.name} is {attributes['number']} .",
        f"{entity.name} is a friend of {entity.friend} .",
    ]


def corpus(world: World, n_lines: int, seed: int) -> list[str]:
    """Pretraining text: facts in random order plus word games, never in the instruction formats."""
    rng = random.Random(seed)
    words = [*world.names, *ATTRIBUTES["color"], *ATTRIBUTES["animal"], *ATTRIBUTES["food"]]
    lines = []
    for _ in range(n_lines):
        kind = rng.random()
        if kind < 0.75:
            entity = rng.choice(world.entities)
            facts = fact_sentences(entity)
            rng.shuffle(facts)
            lines.append(" ".join(facts[: rng.randint(2, 5)]))
        elif kind < 0.9:
            sequence = rng.sample(words, 3)
            lines.append(f"{' '.join(sequence)} backwards is {' '.join(reversed(sequence))} .")
        else:
            left, right = rng.randrange(10), rng.randrange(10)
            lines.append(f"{left} and {right} make {(left + right) % 10} .")
    return lines
