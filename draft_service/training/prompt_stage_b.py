"""Stage B of the distillation prompt factory: prompts built on passages the target wrote.

Rewrite, summarize, rag (context + question), translate (sentences taken from a passage), JSON
extraction and multi-turn follow-ups. ``index_passage`` strips a chat model's chatter around a
passage and indexes what questions can refer to (sentences, names and noun phrases, numbers).
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass

from draft_service.training import prompt_words as W
from draft_service.training.prompt_stage_a import json_keys, translate_prompt
from draft_service.training.prompt_templates import Prompt, conversation, fill, single_turn


# --- indexing the passages the target wrote ------------------------------------------------------
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


def index_passage(text: str) -> _Source:
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


# --- builders ------------------------------------------------------------------------------------
def _rewrite(rng: random.Random, sources: list[_Source]) -> Prompt:
    src, roll = rng.choice(sources), rng.random()
    if roll < 0.25 and src.sentences:
        return single_turn("rewrite", fill(rng, rng.choice(W.SENTENCE_REWRITE_TEMPLATES),
                                      sentence=rng.choice(src.sentences)))
    if roll < 0.45:
        one = _inject_errors(rng, rng.choice(src.sentences)) if src.sentences else ""
        templates = [t for t in W.GRAMMAR_TEMPLATES if one or "{broken_sentence}" not in t]
        return single_turn("rewrite", fill(rng, rng.choice(templates), broken_sentence=one,
                                      broken=_inject_errors(rng, src.text)))
    return single_turn("rewrite", fill(rng, rng.choice(W.REWRITE_TEMPLATES), passage=src.text))


def _summarize(rng: random.Random, sources: list[_Source]) -> Prompt:
    src = rng.choice(sources)
    if len(sources) > 1 and rng.random() < 0.15:
        other = rng.choice([s for s in sources if s is not src])
        return single_turn("summarize", fill(rng, rng.choice(W.PAIR_SUMMARY_TEMPLATES),
                                        passage=src.text, passage2=other.text))
    templates = W.SUMMARY_TEMPLATES + (W.EMAIL_SUMMARY_TEMPLATES * 2 if src.is_message else ())
    return single_turn("summarize", fill(rng, rng.choice(templates), passage=src.text))


def _rag_question(rng: random.Random, src: _Source) -> str:
    if src.numbers and rng.random() < 0.2:
        return fill(rng, rng.choice(W.RAG_NUMBER_QUESTIONS), num=rng.choice(src.numbers))
    kws = list(src.keywords)
    usable = [q for q in W.RAG_QUESTIONS
              if "{kw" not in q or (kws and ("{kw2}" not in q or len(kws) > 1))]
    kw, kw2 = rng.sample(kws, 2) if len(kws) > 1 else (kws + ["", ""])[:2]
    return fill(rng, rng.choice(usable), kw=kw, kw2=kw2, other=rng.choice(W.RAG_UNRELATED))


def _rag(rng: random.Random, sources: list[_Source]) -> Prompt:
    src = rng.choice(sources)
    context = src.text
    if len(sources) > 1 and rng.random() < 0.2:  # two documents; the question is about one
        docs = [src, rng.choice([s for s in sources if s is not src])]
        rng.shuffle(docs)
        context = "\n\n".join(f"[{i}] {d.text}" for i, d in enumerate(docs, 1))
    return single_turn("rag", fill(rng, rng.choice(W.RAG_TEMPLATES), context=context,
                              question=_rag_question(rng, src)))


def _derived_translate(rng: random.Random, sources: list[_Source]) -> Prompt:
    src = rng.choice(sources)
    if not src.sentences:  # nothing translatable in this passage: a generated sentence instead
        return translate_prompt(rng)
    if len(src.sentences) > 1 and rng.random() < 0.2:
        start = rng.randrange(len(src.sentences) - 1)
        return single_turn("translate", fill(rng, rng.choice(W.DERIVED_TRANSLATE_TEMPLATES),
                                        excerpt=" ".join(src.sentences[start:start + 2])))
    return single_turn("translate", fill(rng, rng.choice(W.TRANSLATE_TEMPLATES),
                                    sentence=rng.choice(src.sentences)))


def _extract(rng: random.Random, sources: list[_Source]) -> Prompt:
    keys = json_keys(rng, rng.sample(W.EXTRACT_KEYS, rng.randint(2, 4)))
    return single_turn("json", fill(rng, rng.choice(W.EXTRACT_TEMPLATES), keys=keys,
                               passage=rng.choice(sources).text))


def _follow_up(rng: random.Random, sources: list[_Source]) -> Prompt:
    src = rng.choice(sources)
    if rng.random() < 0.4:
        return single_turn("multi", fill(rng, rng.choice(W.DERIVED_MULTI_TEMPLATES), passage=src.text))
    # The assistant turn is either a scripted reply or the target's own passage.
    # An email's first sentence is a greeting, not a summary: no "{lead}" reply for messages.
    scripts = [c for c in W.PASSAGE_CONVERSATIONS
               if "{lead}" not in c[1] or (src.sentences and not src.is_message)]
    first, reply = rng.choice(scripts)
    lead = src.sentences[0] if src.sentences else ""
    return conversation("multi", fill(rng, first, passage=src.text),
                         fill(rng, reply, passage=src.text, lead=lead),
                         fill(rng, rng.choice(W.FOLLOWUPS)))


STAGE_B_BUILDERS = {"rewrite": _rewrite, "summarize": _summarize, "rag": _rag,
            "translate": _derived_translate, "json": _extract, "multi": _follow_up}
