"""Prompt templates for the distillation prompt factory: the ``Prompt`` type and slot filling.

A template holds ``{slot}`` fields (``prompt_words`` has the templates and word lists): ``fill``
draws each slot from ``SLOTS`` (a word list, or a function of the rng for generated values),
draws coupled slots together (``COUPLED``), keeps a repeated slot's value, gives ``{slot2}`` a
different one, and ``{slot:s}`` puts a verb phrase in the third person.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Callable

from draft_service.training import prompt_words as W


@dataclass(frozen=True)
class Prompt:
    category: str                  # one of CATEGORIES
    messages: tuple[dict, ...]     # user/assistant alternating, ending with a user turn

    @property
    def text(self) -> str:
        """The final user request."""
        return self.messages[-1]["content"]

    def key(self) -> tuple[tuple[str, str], ...]:
        """Content identity used for de-duplication (dicts are not hashable)."""
        return tuple((m["role"], m["content"]) for m in self.messages)

    def __hash__(self) -> int:  # the generated hash would fail on the message dicts
        return hash((self.category, self.key()))



# --- template filling --------------------------------------------------------------------------
_SLOT = re.compile(r"\{([a-z_]+?)(\d*)(?::([a-z]+))?\}")


def _english_sentence(rng: random.Random) -> str:
    return fill(rng, rng.choice(W.SENTENCES))


def _pair(rng: random.Random) -> dict[str, str]:
    a, b = rng.choice(W.DIFF_PAIRS)
    return {"pair_a": a, "pair_b": b}


def _percent(rng: random.Random) -> dict[str, str]:
    pct, amount = rng.choice((5, 10, 20, 25, 30, 40, 50, 75)), rng.randrange(40, 1000, 20)
    return {"pct": str(pct), "amount": str(amount), "pct_value": f"{pct * amount / 100:g}"}


# Slot name -> list of values, or a function of the rng (generated values).
SLOTS: dict[str, tuple[str, ...] | Callable[[random.Random], str]] = {
    "topic": W.TOPICS, "activity": W.ACTIVITIES, "howto": W.HOWTO, "decision": W.DECISIONS,
    "trip": W.TRIPS, "business_spec": W.BUSINESS_SPECS, "business_focus": W.BUSINESS_FOCUS,
    "poem": W.POEM_FORMS, "poem_topic": W.POEM_TOPICS, "n": W.SMALL_N, "skill": W.SKILLS,
    "feeling": W.FEELINGS, "situation": W.SITUATIONS, "occasion": W.OCCASIONS, "city": W.CITIES,
    "recipient": W.RECIPIENTS, "reason": W.REASONS, "name": W.NAMES, "surname": W.SURNAMES,
    "audience": W.AUDIENCES, "event": W.EVENTS, "place": W.PLACES, "product": W.PRODUCTS,
    "news": W.NEWS_EVENTS, "job": W.JOBS, "words": W.PASSAGE_WORDS, "policy": W.POLICIES,
    "lang": W.LANGUAGES, "task": W.CODE_TASKS, "fname": W.FUNCTION_NAMES, "concept": W.CONCEPTS,
    "day": W.DAYS, "clock": W.CLOCK, "relative": W.RELATIVES, "building": W.BUILDINGS,
    "thing": W.THINGS, "num": ("two", "three", "four", "five", "six"), "tone": W.TONES,
    "price": ("12", "25", "40", "75", "120", "350"), "phenomenon": W.PHENOMENA, "person": W.PEOPLE,
    "history": W.HISTORY_EVENTS, "book": W.BOOKS, "country": W.COUNTRIES, "reader": W.READERS,
    "limit": ("20", "30", "40", "50"), "sentence": _english_sentence,
}
# Slots that must be drawn together (a pair of things to compare, a percentage and its value).
COUPLED: dict[str, Callable[[random.Random], dict[str, str]]] = {
    "pair_a": _pair, "pair_b": _pair, "pct": _percent, "amount": _percent, "pct_value": _percent}


def _third_person(phrase: str) -> str:
    """'reverse a string' -> 'reverses a string' (the template says 'a function that ...')."""
    verb, space, rest = phrase.partition(" ")
    if verb.endswith(("s", "sh", "ch", "x", "z", "o")):
        verb += "es"
    elif verb.endswith("y") and verb[-2:-1] not in ("a", "e", "i", "o", "u"):
        verb = verb[:-1] + "ies"
    else:
        verb += "s"
    return verb + space + rest


def fill(rng: random.Random, template: str, **given: str) -> str:
    """Fill ``{slot}`` fields; a repeated slot gets the same value, ``{slot2}`` a different one.

    Values are inserted in a single pass, so braces inside them (code, JSON) are left alone.
    """
    values: dict[str, str] = dict(given)

    def value(match: re.Match) -> str:
        base, index, transform = match.group(1), match.group(2), match.group(3)
        key = base + index
        if key not in values:
            if base in COUPLED:
                values.update({k: v for k, v in COUPLED[base](rng).items() if k not in values})
            else:
                source = SLOTS[base]
                taken = {v for k, v in values.items() if k.rstrip("0123456789") == base}
                for _ in range(20):  # a distinct value for {name2} next to {name}
                    pick = source(rng) if callable(source) else rng.choice(source)
                    if pick not in taken:
                        break
                values[key] = pick
        return _third_person(values[key]) if transform == "s" else values[key]

    return _SLOT.sub(value, template)


def single_turn(category: str, text: str) -> Prompt:
    return Prompt(category, ({"role": "user", "content": text},))


def conversation(category: str, first: str, reply: str, follow_up: str) -> Prompt:
    return Prompt(category, ({"role": "user", "content": first},
                             {"role": "assistant", "content": reply},
                             {"role": "user", "content": follow_up}))


def weighted(rng: random.Random, options: list[tuple[float, Callable[[random.Random], str]]]):
    return rng.choices([f for _, f in options], weights=[w for w, _ in options])[0](rng)

