"""Stage A of the distillation prompt factory: standalone requests that need no source text.

Chat (including requests for short passages, whose answers become stage B's sources), code, qa,
math, translations of generated sentences, JSON tasks and multi-turn requests.
"""
from __future__ import annotations

import random

from draft_service.training import prompt_generators as G
from draft_service.training import prompt_words as W
from draft_service.training.prompt_templates import Prompt, conversation, fill, single_turn, weighted

PASSAGE_SHARE_OF_CHAT = 0.4  # stage-A chat requests that ask for a passage (paragraph, email, ...)


# --- builders ------------------------------------------------------------------------------------
def passage_request(rng: random.Random) -> str:
    return fill(rng, rng.choice(W.PASSAGE_TEMPLATES))


def _chat(rng: random.Random) -> Prompt:
    # Part of the chat share asks for passages: realistic chat requests whose answers can also
    # serve as stage-B source texts.
    if rng.random() < PASSAGE_SHARE_OF_CHAT:
        return single_turn("chat", passage_request(rng))
    return single_turn("chat", fill(rng, rng.choice(W.CHAT_TEMPLATES)))


def _python_task(rng: random.Random) -> str:
    text = fill(rng, rng.choice(W.PY_TEMPLATES), task=rng.choice(W.CODE_TASKS + W.PY_ONLY_TASKS))
    return text if "test" in text else text + rng.choice(W.CODE_SHAPES)


def _other_language(rng: random.Random) -> str:
    return fill(rng, rng.choice(W.OTHER_LANG_TEMPLATES), lang=rng.choice(W.OTHER_LANGS))


def _class_task(rng: random.Random) -> str:
    cls, behaviour = rng.choice(W.CLASSES)
    return fill(rng, rng.choice(W.CLASS_TEMPLATES), cls=cls, behaviour=behaviour)


def _sql_task(rng: random.Random) -> str:
    table, cols, num, group, text, date = rng.choice(W.SQL_TABLES)
    tasks = W.SQL_TASKS + (W.SQL_DATE_TASKS if date else ())
    task = fill(rng, rng.choice(tasks), num=num, group=group, text=text, date=date or "",
                 k=rng.choice(("3", "5", "10")), days=rng.choice(("7", "30", "90")))
    return fill(rng, rng.choice(W.SQL_TEMPLATES), task=task, table=table, cols=cols)


def _bash_task(rng: random.Random) -> str:
    task = fill(rng, rng.choice(W.BASH_TASKS), ext=rng.choice(W.BASH_EXTS),
                 dir=rng.choice(W.BASH_DIRS), size=rng.choice(("10", "50", "100")),
                 days=rng.choice(("3", "7", "30")), k=rng.choice(("20", "50")),
                 port=rng.choice(("3000", "5432", "8000", "8080")))
    return fill(rng, rng.choice(W.BASH_TEMPLATES), task=task)


def _snippet_task(rng: random.Random) -> str:
    kind = rng.choice(("bug", "bug", "refactor", "explain", "test"))
    if kind == "bug":
        intro, snippet = rng.choice(W.BUG_INTROS), rng.choice(G.BUGS)(rng)
    elif kind == "refactor":
        intro, snippet = rng.choice(W.REFACTOR_INTROS), rng.choice(G.REFACTORS)(rng)
    elif kind == "explain":
        intro, snippet = rng.choice(W.EXPLAIN_INTROS), rng.choice(G.CLEAN)(rng)
    else:
        intro, snippet = rng.choice(W.TEST_INTROS), rng.choice(G.FUNCTIONS)(rng)
    return intro + "\n\n" + snippet


def _code(rng: random.Random) -> Prompt:
    return single_turn("code", weighted(rng, [(0.38, _python_task), (0.12, _other_language),
                                         (0.08, _class_task), (0.10, _sql_task),
                                         (0.08, _bash_task), (0.24, _snippet_task)]))


def _qa(rng: random.Random) -> Prompt:
    roll = rng.random()
    if roll < 0.12:
        return single_turn("qa", rng.choice(W.FACT_QUESTIONS))
    if roll < 0.25:
        return single_turn("qa", fill(rng, rng.choice(W.QA_FACT_TEMPLATES)))
    return single_turn("qa", fill(rng, rng.choice(W.QA_TEMPLATES)) + rng.choice(W.QA_SHAPES))


def _math(rng: random.Random) -> Prompt:
    problem = rng.choice(G.MATH)(rng)
    return single_turn("math", (problem + " " + rng.choice(W.MATH_SUFFIXES)).strip())


def translate_prompt(rng: random.Random) -> Prompt:
    return single_turn("translate", fill(rng, rng.choice(W.TRANSLATE_TEMPLATES)))


def _plural(noun: str) -> str:
    if noun == "person":
        return "people"
    return noun[:-1] + "ies" if noun.endswith("y") and noun[-2] not in "aeiou" else noun + "s"


def json_keys(rng: random.Random, keys: list[str]) -> str:
    quote = rng.choice(("{0}", "'{0}'", '"{0}"'))  # people write key lists all three ways
    return G.join_words([quote.format(k) for k in keys])


def _json_details(rng: random.Random) -> str:
    name = f"{rng.choice(W.NAMES)} {rng.choice(W.SURNAMES)}"
    if rng.random() < 0.5:
        hobbies = G.join_words(rng.sample(W.TOPIC_GROUPS["hobbies"], 2))
        return (f"{name} is {rng.randint(19, 78)} years old, lives in {rng.choice(W.CITIES)} and "
                f"works as a {rng.choice(W.JOBS)}. Hobbies: {hobbies}.")
    return (f"Product: {rng.choice(W.PRODUCTS)}\n"
            f"Price: {rng.randint(5, 400)} {rng.choice(W.CURRENCIES)}\n"
            f"In stock: {rng.randint(0, 120)} units\nSupplier: {name}, {rng.choice(W.CITIES)}")


def _broken_json(rng: random.Random) -> str:
    """A small JSON object with one typical mistake (trailing comma, single quotes, bare key)."""
    fields = [("name", f'"{rng.choice(W.NAMES)}"'), ("age", str(rng.randint(18, 80))),
              ("city", f'"{rng.choice(W.CITIES)}"'), ("active", rng.choice(("true", "false")))]
    body = ", ".join(f'"{k}": {v}' for k, v in rng.sample(fields, 3))
    mistake = rng.choice(("trailing", "quotes", "bare"))
    if mistake == "trailing":
        return "{" + body + ",}"
    if mistake == "quotes":
        return "{" + body.replace('"', "'") + "}"
    return "{" + body.replace('"', "", 2) + "}"


def _json(rng: random.Random) -> Prompt:
    if rng.random() < 0.1:
        return single_turn("json", rng.choice(W.BROKEN_JSON_INTROS) + "\n\n" + _broken_json(rng))
    entity = rng.choice(list(W.JSON_ENTITIES))
    fields = W.JSON_ENTITIES[entity]
    chosen = set(rng.sample(fields, rng.randint(3, min(5, len(fields)))))
    collection = rng.choice(list(W.JSON_COLLECTIONS))
    ckeys = rng.sample(W.JSON_COLLECTIONS[collection], rng.randint(2, 3))
    return single_turn("json", fill(
        rng, rng.choice(W.JSON_TEMPLATES), entity=entity, entity_plural=_plural(entity),
        keys=json_keys(rng, [k for k in fields if k in chosen]), collection=collection,
        ckeys=json_keys(rng, ckeys), details=_json_details(rng)))


def _multi(rng: random.Random) -> Prompt:
    if rng.random() < 0.5:
        return single_turn("multi", fill(rng, rng.choice(W.MULTI_TEMPLATES)))
    # One fill over all three turns, so a slot means the same thing throughout the conversation.
    filled = fill(rng, "\x00".join(rng.choice(W.CONVERSATIONS)))
    return conversation("multi", *filled.split("\x00"))


STAGE_A_BUILDERS = {"chat": _chat, "code": _code, "qa": _qa, "math": _math, "translate": translate_prompt,
            "json": _json, "multi": _multi}
