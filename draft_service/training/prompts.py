"""Prompt factory for self-distilling a feature drafter (EAGLE head) for a target chat model.

``specgrove distill`` trains the head to predict the *target's own* continuations, so what matters
is that the prompts make the target produce the kinds of answers it will give in service. No data
is downloaded (no hub, no datasets: the machines may be offline and we want no licensing
questions); every prompt is built here from word lists and templates (``prompt_words``) with a
seeded ``random.Random``.

Two stages:

* **Stage A** (:func:`seed_prompts`, :func:`passage_prompts`): standalone requests that need no
  source text: chat, code, qa, math, json, multi-part requests, translations of generated
  sentences, and "write a short paragraph / email / notice / product description / news item"
  requests. The answers to :func:`passage_prompts` (60-150 words each) become the source texts
  of stage B.
* **Stage B** (:func:`derived_prompts`): rewrite, summarize, rag (context + question), translate
  (sentences taken from a passage), JSON extraction and multi-turn follow-ups, all built on
  passages the target itself wrote, so the drafter also sees how the target copies and
  transforms text from its context.

The result is judged on a held-out set of prompts of the same kinds (chat, code, rewrite,
summarize, qa, math, translate, rag, json, multi), not on these prompts, so the factory aims for
breadth: hundreds of topics, many phrasings per category, random numbers, names, languages,
tones, lengths and formats, rather than many copies of a few requests.

Category mix over the whole run (``TARGET_MIX``): chat 20%, code 20%, rewrite 8%, summarize 8%,
qa 10%, math 10%, translate 6%, rag 8%, json 6%, multi 4%. Stage B supplies rewrite, summarize and
rag entirely, and half of translate and a third of json and multi (``STAGE_B_MIX``); stage A
supplies the rest (``STAGE_A_MIX``, 69% of the total). ``split_count(total)`` gives the two
counts; within one call each category gets its exact share (largest remainder), so a seed run of
N prompts plus a derived run of M = N * 31/69 prompts reproduces ``TARGET_MIX``.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Callable

from draft_service.training import prompt_generators as G
from draft_service.training import prompt_words as W

CATEGORIES = ("chat", "code", "rewrite", "summarize", "qa", "math", "translate", "rag", "json",
              "multi")
TARGET_MIX = {"chat": 0.20, "code": 0.20, "rewrite": 0.08, "summarize": 0.08, "qa": 0.10,
              "math": 0.10, "translate": 0.06, "rag": 0.08, "json": 0.06, "multi": 0.04}
STAGE_B_MIX = {"rewrite": 0.08, "summarize": 0.08, "rag": 0.08, "translate": 0.03, "json": 0.02,
               "multi": 0.02}
STAGE_A_MIX = {c: round(w - STAGE_B_MIX.get(c, 0.0), 4) for c, w in TARGET_MIX.items()
               if w > STAGE_B_MIX.get(c, 0.0)}
STAGE_A_SHARE = round(sum(STAGE_A_MIX.values()), 4)  # 0.69
PASSAGE_SHARE_OF_CHAT = 0.4  # stage-A chat requests that ask for a passage (paragraph, email, ...)
_PATIENCE = 400  # consecutive duplicates before a category counts as exhausted


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


def split_count(total: int) -> tuple[int, int]:
    """(stage A count, stage B count) whose union follows TARGET_MIX."""
    a = round(total * STAGE_A_SHARE)
    return a, total - a


# --- template filling --------------------------------------------------------------------------
_SLOT = re.compile(r"\{([a-z_]+?)(\d*)(?::([a-z]+))?\}")


def _english_sentence(rng: random.Random) -> str:
    return _fill(rng, rng.choice(W.SENTENCES))


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


def _fill(rng: random.Random, template: str, **given: str) -> str:
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


def _user(category: str, text: str) -> Prompt:
    return Prompt(category, ({"role": "user", "content": text},))


def _conversation(category: str, first: str, reply: str, follow_up: str) -> Prompt:
    return Prompt(category, ({"role": "user", "content": first},
                             {"role": "assistant", "content": reply},
                             {"role": "user", "content": follow_up}))


def _weighted(rng: random.Random, options: list[tuple[float, Callable[[random.Random], str]]]):
    return rng.choices([f for _, f in options], weights=[w for w, _ in options])[0](rng)


# --- stage A builders ----------------------------------------------------------------------------
def _passage_request(rng: random.Random) -> str:
    return _fill(rng, rng.choice(W.PASSAGE_TEMPLATES))


def _chat(rng: random.Random) -> Prompt:
    # Part of the chat share asks for passages: realistic chat requests whose answers can also
    # serve as stage-B source texts.
    if rng.random() < PASSAGE_SHARE_OF_CHAT:
        return _user("chat", _passage_request(rng))
    return _user("chat", _fill(rng, rng.choice(W.CHAT_TEMPLATES)))


def _python_task(rng: random.Random) -> str:
    text = _fill(rng, rng.choice(W.PY_TEMPLATES), task=rng.choice(W.CODE_TASKS + W.PY_ONLY_TASKS))
    return text if "test" in text else text + rng.choice(W.CODE_SHAPES)


def _other_language(rng: random.Random) -> str:
    return _fill(rng, rng.choice(W.OTHER_LANG_TEMPLATES), lang=rng.choice(W.OTHER_LANGS))


def _class_task(rng: random.Random) -> str:
    cls, behaviour = rng.choice(W.CLASSES)
    return _fill(rng, rng.choice(W.CLASS_TEMPLATES), cls=cls, behaviour=behaviour)


def _sql_task(rng: random.Random) -> str:
    table, cols, num, group, text, date = rng.choice(W.SQL_TABLES)
    tasks = W.SQL_TASKS + (W.SQL_DATE_TASKS if date else ())
    task = _fill(rng, rng.choice(tasks), num=num, group=group, text=text, date=date or "",
                 k=rng.choice(("3", "5", "10")), days=rng.choice(("7", "30", "90")))
    return _fill(rng, rng.choice(W.SQL_TEMPLATES), task=task, table=table, cols=cols)


def _bash_task(rng: random.Random) -> str:
    task = _fill(rng, rng.choice(W.BASH_TASKS), ext=rng.choice(W.BASH_EXTS),
                 dir=rng.choice(W.BASH_DIRS), size=rng.choice(("10", "50", "100")),
                 days=rng.choice(("3", "7", "30")), k=rng.choice(("20", "50")),
                 port=rng.choice(("3000", "5432", "8000", "8080")))
    return _fill(rng, rng.choice(W.BASH_TEMPLATES), task=task)


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
    return _user("code", _weighted(rng, [(0.38, _python_task), (0.12, _other_language),
                                         (0.08, _class_task), (0.10, _sql_task),
                                         (0.08, _bash_task), (0.24, _snippet_task)]))


def _qa(rng: random.Random) -> Prompt:
    roll = rng.random()
    if roll < 0.12:
        return _user("qa", rng.choice(W.FACT_QUESTIONS))
    if roll < 0.25:
        return _user("qa", _fill(rng, rng.choice(W.QA_FACT_TEMPLATES)))
    return _user("qa", _fill(rng, rng.choice(W.QA_TEMPLATES)) + rng.choice(W.QA_SHAPES))


def _math(rng: random.Random) -> Prompt:
    problem = rng.choice(G.MATH)(rng)
    return _user("math", (problem + " " + rng.choice(W.MATH_SUFFIXES)).strip())


def _translate(rng: random.Random) -> Prompt:
    return _user("translate", _fill(rng, rng.choice(W.TRANSLATE_TEMPLATES)))


def _plural(noun: str) -> str:
    if noun == "person":
        return "people"
    return noun[:-1] + "ies" if noun.endswith("y") and noun[-2] not in "aeiou" else noun + "s"


def _keys(rng: random.Random, keys: list[str]) -> str:
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
        return _user("json", rng.choice(W.BROKEN_JSON_INTROS) + "\n\n" + _broken_json(rng))
    entity = rng.choice(list(W.JSON_ENTITIES))
    fields = W.JSON_ENTITIES[entity]
    chosen = set(rng.sample(fields, rng.randint(3, min(5, len(fields)))))
    collection = rng.choice(list(W.JSON_COLLECTIONS))
    ckeys = rng.sample(W.JSON_COLLECTIONS[collection], rng.randint(2, 3))
    return _user("json", _fill(
        rng, rng.choice(W.JSON_TEMPLATES), entity=entity, entity_plural=_plural(entity),
        keys=_keys(rng, [k for k in fields if k in chosen]), collection=collection,
        ckeys=_keys(rng, ckeys), details=_json_details(rng)))


def _multi(rng: random.Random) -> Prompt:
    if rng.random() < 0.5:
        return _user("multi", _fill(rng, rng.choice(W.MULTI_TEMPLATES)))
    # One fill over all three turns, so a slot means the same thing throughout the conversation.
    filled = _fill(rng, "\x00".join(rng.choice(W.CONVERSATIONS)))
    return _conversation("multi", *filled.split("\x00"))


_STAGE_A = {"chat": _chat, "code": _code, "qa": _qa, "math": _math, "translate": _translate,
            "json": _json, "multi": _multi}


# --- stage B: indexing the passages the target wrote ----------------------------------------------
_CHATTER = re.compile(r"^(sure|certainly|of course|absolutely|here is|here's)\b[^\n]*:\s*\n+",
                      re.I)
_SIGN_OFF = re.compile(r"\n+(let me know|i hope this|feel free)[^\n]*$", re.I)
_DETERMINERS = frozenset("the a an this these those every each".split())
_FUNCTION_WORDS = _DETERMINERS | frozenset(
    "in on at for with from by after before during last its it he she they we our their if when "
    "while no beyond".split())
# "the harvest" counts as a noun phrase only where it visibly ends: punctuation or one of these.
_PHRASE_END = frozenset("the and or of in on at to for with from by about is are was were has "
                        "have had can will would that which who".split())


@dataclass(frozen=True)
class _Source:
    text: str
    sentences: tuple[str, ...]   # 6-30 words: translatable and rewritable on their own
    keywords: tuple[str, ...]    # names and noun phrases a question can ask about
    numbers: tuple[str, ...]
    is_message: bool             # an email or note: also gets action-item style summaries


def _key_phrases(sentence: str) -> list[str]:
    """Names (capitalised runs, not just a capitalised first word) and short noun phrases."""
    tokens = re.findall(r"[A-Za-z][A-Za-z'-]*|[^\sA-Za-z]", sentence)
    phrases, run = [], []
    for i, tok in enumerate(tokens + ["."]):
        if tok[0].isupper() and (run or tok.lower() not in _FUNCTION_WORDS):
            run.append(tok)
            continue
        if run and (len(run) > 1 or i > 1):
            phrases.append(" ".join(run))
        run = []
        noun = tokens[i + 1] if i + 1 < len(tokens) else ""
        if tok.lower() in _DETERMINERS and noun.islower() and len(noun) >= 4:
            after = tokens[i + 2] if i + 2 < len(tokens) else "."
            if not after[0].isalpha() or after.lower() in _PHRASE_END:
                phrases.append(f"{tok.lower()} {noun}")
    return phrases


def _source(text: str) -> _Source:
    """Strip the target's chatter around a passage and index what questions can refer to."""
    text = _SIGN_OFF.sub("", _CHATTER.sub("", text.strip())).strip()
    flat = " ".join(text.split())
    sentences = tuple(s for s in re.split(r"(?<=[.!?])\s+", flat) if 6 <= len(s.split()) <= 30)
    keywords = tuple(dict.fromkeys(k for s in sentences for k in _key_phrases(s)))
    numbers = tuple(dict.fromkeys(re.findall(r"\b\d+(?:[.,:]\d+)?\b", flat)))
    is_message = bool(re.match(r"(subject:|dear|hi|hello|hey|to:)\b", text, re.I))
    return _Source(text, sentences, keywords, numbers, is_message)


def _inject_errors(rng: random.Random, text: str) -> str:
    """A few typical grammar and spelling mistakes, each at one random place."""
    options = [(p, r) for p, r in W.GRAMMAR_ERRORS if re.search(p, text)]
    for pattern, replacement in rng.sample(options, min(len(options), rng.randint(2, 4))):
        match = rng.choice(list(re.finditer(pattern, text)))
        wrong = replacement if replacement is not None else match.group(0).lower()
        text = text[:match.start()] + wrong + text[match.end():]
    return text


# --- stage B builders -----------------------------------------------------------------------------
def _rewrite(rng: random.Random, sources: list[_Source]) -> Prompt:
    src, roll = rng.choice(sources), rng.random()
    if roll < 0.25 and src.sentences:
        return _user("rewrite", _fill(rng, rng.choice(W.SENTENCE_REWRITE_TEMPLATES),
                                      sentence=rng.choice(src.sentences)))
    if roll < 0.45:
        one = _inject_errors(rng, rng.choice(src.sentences)) if src.sentences else ""
        templates = [t for t in W.GRAMMAR_TEMPLATES if one or "{broken_sentence}" not in t]
        return _user("rewrite", _fill(rng, rng.choice(templates), broken_sentence=one,
                                      broken=_inject_errors(rng, src.text)))
    return _user("rewrite", _fill(rng, rng.choice(W.REWRITE_TEMPLATES), passage=src.text))


def _summarize(rng: random.Random, sources: list[_Source]) -> Prompt:
    src = rng.choice(sources)
    if len(sources) > 1 and rng.random() < 0.15:
        other = rng.choice([s for s in sources if s is not src])
        return _user("summarize", _fill(rng, rng.choice(W.PAIR_SUMMARY_TEMPLATES),
                                        passage=src.text, passage2=other.text))
    templates = W.SUMMARY_TEMPLATES + (W.EMAIL_SUMMARY_TEMPLATES * 2 if src.is_message else ())
    return _user("summarize", _fill(rng, rng.choice(templates), passage=src.text))


def _rag_question(rng: random.Random, src: _Source) -> str:
    if src.numbers and rng.random() < 0.2:
        return _fill(rng, rng.choice(W.RAG_NUMBER_QUESTIONS), num=rng.choice(src.numbers))
    kws = list(src.keywords)
    usable = [q for q in W.RAG_QUESTIONS
              if "{kw" not in q or (kws and ("{kw2}" not in q or len(kws) > 1))]
    kw, kw2 = rng.sample(kws, 2) if len(kws) > 1 else (kws + ["", ""])[:2]
    return _fill(rng, rng.choice(usable), kw=kw, kw2=kw2, other=rng.choice(W.RAG_UNRELATED))


def _rag(rng: random.Random, sources: list[_Source]) -> Prompt:
    src = rng.choice(sources)
    context = src.text
    if len(sources) > 1 and rng.random() < 0.2:  # two documents; the question is about one
        docs = [src, rng.choice([s for s in sources if s is not src])]
        rng.shuffle(docs)
        context = "\n\n".join(f"[{i}] {d.text}" for i, d in enumerate(docs, 1))
    return _user("rag", _fill(rng, rng.choice(W.RAG_TEMPLATES), context=context,
                              question=_rag_question(rng, src)))


def _derived_translate(rng: random.Random, sources: list[_Source]) -> Prompt:
    src = rng.choice(sources)
    if not src.sentences:  # nothing translatable in this passage: a generated sentence instead
        return _translate(rng)
    if len(src.sentences) > 1 and rng.random() < 0.2:
        start = rng.randrange(len(src.sentences) - 1)
        return _user("translate", _fill(rng, rng.choice(W.DERIVED_TRANSLATE_TEMPLATES),
                                        excerpt=" ".join(src.sentences[start:start + 2])))
    return _user("translate", _fill(rng, rng.choice(W.TRANSLATE_TEMPLATES),
                                    sentence=rng.choice(src.sentences)))


def _extract(rng: random.Random, sources: list[_Source]) -> Prompt:
    keys = _keys(rng, rng.sample(W.EXTRACT_KEYS, rng.randint(2, 4)))
    return _user("json", _fill(rng, rng.choice(W.EXTRACT_TEMPLATES), keys=keys,
                               passage=rng.choice(sources).text))


def _follow_up(rng: random.Random, sources: list[_Source]) -> Prompt:
    src = rng.choice(sources)
    if rng.random() < 0.4:
        return _user("multi", _fill(rng, rng.choice(W.DERIVED_MULTI_TEMPLATES), passage=src.text))
    # The assistant turn is either a scripted reply or the target's own passage.
    # An email's first sentence is a greeting, not a summary: no "{lead}" reply for messages.
    scripts = [c for c in W.PASSAGE_CONVERSATIONS
               if "{lead}" not in c[1] or (src.sentences and not src.is_message)]
    first, reply = rng.choice(scripts)
    lead = src.sentences[0] if src.sentences else ""
    return _conversation("multi", _fill(rng, first, passage=src.text),
                         _fill(rng, reply, passage=src.text, lead=lead),
                         _fill(rng, rng.choice(W.FOLLOWUPS)))


_STAGE_B = {"rewrite": _rewrite, "summarize": _summarize, "rag": _rag,
            "translate": _derived_translate, "json": _extract, "multi": _follow_up}


# --- assembly -------------------------------------------------------------------------------------
def _quotas(mix: dict[str, float], count: int) -> dict[str, int]:
    """Exact per-category counts for ``count`` prompts (largest remainder)."""
    total = sum(mix.values())
    raw = {c: count * w / total for c, w in mix.items()}
    quotas = {c: int(r) for c, r in raw.items()}
    by_remainder = sorted(raw, key=lambda c: raw[c] - quotas[c], reverse=True)
    for c in by_remainder[:count - sum(quotas.values())]:
        quotas[c] += 1
    return quotas


def _draw(build: Callable[[random.Random], Prompt], rng: random.Random, want: int,
          seen: set, out: list[Prompt]) -> int:
    """Append up to ``want`` new prompts; stop early once ``build`` keeps repeating itself."""
    made = misses = 0
    while made < want and misses < _PATIENCE:
        prompt = build(rng)
        if prompt.key() in seen:
            misses += 1
            continue
        seen.add(prompt.key())
        out.append(prompt)
        made, misses = made + 1, 0
    return made


def _assemble(rng: random.Random, mix: dict[str, float],
              builders: dict[str, Callable[[random.Random], Prompt]], count: int) -> list[Prompt]:
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    seen: set = set()
    out: list[Prompt] = []
    short = sum(q - _draw(builders[c], rng, q, seen, out) for c, q in _quotas(mix, count).items())
    # A category whose template space ran out hands its share to the others, in turn.
    open_categories = list(mix)
    while short and open_categories:
        for category in list(open_categories):
            if short and _draw(builders[category], rng, 1, seen, out):
                short -= 1
            else:
                open_categories.remove(category)
    rng.shuffle(out)
    return out


def seed_prompts(seed: int, count: int) -> list[Prompt]:
    """Stage A: standalone prompts over all categories that need no source text
    (chat, code, qa, math, json, multi, translations of generated sentences, and "write a short
    paragraph / email / notice / product description / news item about X" requests that double
    as passage generators), mixed as STAGE_A_MIX."""
    return _assemble(random.Random(f"seed:{seed}"), STAGE_A_MIX, _STAGE_A, count)


def passage_prompts(seed: int, count: int) -> list[Prompt]:
    """Requests whose answers are short passages (60-150 words) on varied topics: these answers
    become the source texts of stage B."""
    def build(rng: random.Random) -> Prompt:
        return _user("chat", _passage_request(rng))
    return _assemble(random.Random(f"passages:{seed}"), {"chat": 1.0}, {"chat": build}, count)


def derived_prompts(seed: int, passages: list[str], count: int) -> list[Prompt]:
    """Stage B: rewrite, summarize, rag (context + question about it), translate (a sentence
    taken from a passage, or generated), json extraction from a passage, and multi-turn
    follow-ups, built on the given passages (text the target wrote in stage A), mixed as
    STAGE_B_MIX. With very few passages the template space is small: a category that runs out
    hands its share to the others, and the list may come out shorter than ``count``."""
    indexed = [_source(p) for p in passages]
    # Fragments (a refusal, a one-liner) make poor source texts; use them only if nothing else.
    sources = [s for s in indexed if len(s.text.split()) >= 15] or [s for s in indexed if s.text]
    if not sources:
        raise ValueError("derived_prompts needs at least one non-empty passage")
    builders = {c: (lambda rng, f=f: f(rng, sources)) for c, f in _STAGE_B.items()}
    return _assemble(random.Random(f"derived:{seed}"), STAGE_B_MIX, builders, count)
