"""The distillation prompt factory: deterministic, broad, well-formed, and free of dev prompts."""
from __future__ import annotations

import json
import random
import re
from collections import Counter
from pathlib import Path

import pytest

from draft_service.training.prompts import (
    CATEGORIES, STAGE_A_MIX, STAGE_B_MIX, TARGET_MIX, Prompt, derived_prompts, passage_prompts,
    seed_prompts, split_count)

DEV_PROMPTS = Path(__file__).resolve().parents[2] / "shared" / "prompts" / "dev.jsonl"
# What a leftover template field looks like: {topic}, {name2}, {task:s}.
TEMPLATE_FIELD = re.compile(r"\{[a-z_]+\d*(?::[a-z]+)?\}")

# Stand-ins for passages the target writes in stage A (one with the chatter a chat model adds).
PASSAGES = [
    "Sure! Here is a short paragraph about community gardens:\n\n"
    "Community gardens turn empty city lots into shared green spaces. Neighbours rent small beds "
    "for a few euros a year and grow vegetables, herbs and flowers. Beyond the harvest, the "
    "gardens bring people of different ages together, and many run workshops on composting and "
    "saving seeds. In Rotterdam, one garden now supplies a local food bank every Saturday.",
    "Hi everyone, a quick note about the move to the third floor. The removal company arrives on "
    "Thursday at 8:00, so please pack your desks by Wednesday evening and label every box with "
    "your name. The network will be down from noon until 15:00 on Thursday. Coffee and pastries "
    "will be waiting upstairs on Friday morning. Thanks for your patience, Marta",
    "Our bike rental shop lets customers return bikes at any of our 12 stations across the city. "
    "Rentals are charged per started half hour, and a day pass costs 18 euros. If a bike is "
    "damaged during a rental, the customer pays a fixed fee of 40 euros unless the damage was "
    "caused by another vehicle. Helmets are free and must be returned with the bike.",
    "The monarch butterfly is famous for its long migration. Every autumn, millions of monarchs "
    "fly from Canada and the northern United States to forests in central Mexico, a journey of up "
    "to 4,000 kilometres. No single butterfly makes the round trip: it takes several generations "
    "to return north in spring. Scientists believe the insects navigate using the Sun.",
    "The new espresso machine from Brennwerk heats up in under a minute and has a steam wand for "
    "milk drinks. Its water tank holds 1.8 litres and can be removed for easy filling. The machine "
    "is made of brushed steel, weighs 6 kilograms, and comes with a two-year warranty. Customers "
    "praise its quiet pump, although some find the drip tray too small.",
    "Lena Fischer has worked as a librarian in Tallinn for fifteen years. She started a reading "
    "club for teenagers in 2016, which now meets every Tuesday and has more than forty members. "
    "In her free time she restores old books and writes a blog about bookbinding. Last year she "
    "received a city award for her work with young readers.",
]
_PLACES = ("river", "market", "garden", "station", "library", "harbour", "bakery", "museum",
           "school", "orchard", "bridge", "studio")


def synthetic_passages(n: int) -> list[str]:
    """Many distinct passages, so a large derived run has room to be unique."""
    rng = random.Random(99)
    out = []
    for i in range(n):
        place, other = rng.sample(_PLACES, 2)
        day = rng.choice(("Monday", "Friday", "Sunday"))
        out.append(
            f"The {place} in district {i} opened in {1950 + i % 70} and now welcomes about "
            f"{rng.randint(50, 900)} visitors a day. Its staff organise a {other} tour every "
            f"{day}, which many families enjoy. Local volunteers, led by Inge Park, keep the "
            f"grounds clean and plant new trees each spring. The council plans to extend the "
            f"opening hours next year because demand keeps growing.")
    return out


def _all_text(prompt: Prompt) -> str:
    return "\n".join(m["content"] for m in prompt.messages)


def _words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z0-9']+", text.lower())


@pytest.fixture(scope="module")
def seed_run() -> list[Prompt]:
    return seed_prompts(3, 2000)


@pytest.fixture(scope="module")
def derived_run() -> list[Prompt]:
    return derived_prompts(3, PASSAGES + synthetic_passages(60), 2000)


def test_same_seed_same_prompts():
    assert seed_prompts(11, 400) == seed_prompts(11, 400)
    assert passage_prompts(11, 200) == passage_prompts(11, 200)
    assert derived_prompts(11, PASSAGES, 200) == derived_prompts(11, PASSAGES, 200)


def test_different_seeds_differ():
    for make in (lambda s: seed_prompts(s, 300), lambda s: passage_prompts(s, 300),
                 lambda s: derived_prompts(s, PASSAGES, 300)):
        a, b = make(1), make(2)
        assert a != b
        shared = {p.key() for p in a} & {p.key() for p in b}
        assert len(shared) < len(a) // 2


@pytest.mark.parametrize("count", [0, 1, 7, 250, 2000])
def test_counts_honoured(count):
    assert len(seed_prompts(5, count)) == count
    assert len(passage_prompts(5, count)) == count
    assert len(derived_prompts(5, PASSAGES + synthetic_passages(60), count)) == count


def test_large_runs_are_exact_and_unique():
    for prompts in (seed_prompts(0, 20000), passage_prompts(0, 20000)):
        assert len(prompts) == 20000
        assert len({p.key() for p in prompts}) == 20000


def test_category_proportions(seed_run, derived_run):
    for prompts, mix in ((seed_run, STAGE_A_MIX), (derived_run, STAGE_B_MIX)):
        counts, total = Counter(p.category for p in prompts), sum(mix.values())
        assert set(counts) == set(mix)
        for category, weight in mix.items():
            assert abs(counts[category] / len(prompts) - weight / total) < 0.01, category


def test_stages_together_follow_target_mix():
    assert sum(TARGET_MIX.values()) == pytest.approx(1.0)
    assert set(TARGET_MIX) == set(CATEGORIES)
    a, b = split_count(3000)
    run = seed_prompts(4, a) + derived_prompts(4, synthetic_passages(80), b)
    combined = Counter(p.category for p in run)
    for category, share in TARGET_MIX.items():
        assert abs(combined[category] / 3000 - share) < 0.01, category


def test_no_duplicates(seed_run, derived_run):
    for prompts in (seed_run, derived_run, passage_prompts(3, 2000)):
        assert len({p.key() for p in prompts}) == len(prompts)
        assert len({_all_text(p) for p in prompts}) == len(prompts)


def test_no_unfilled_template_fields(seed_run, derived_run):
    for prompt in seed_run + derived_run + passage_prompts(3, 2000):
        text = _all_text(prompt)
        assert not TEMPLATE_FIELD.search(text), text
        if prompt.category not in ("code", "json"):  # only code and JSON may contain braces
            assert "{" not in text and "}" not in text, text
            assert "  " not in text and " ." not in text and " ," not in text, text  # empty slots


def test_messages_well_formed(seed_run, derived_run):
    for prompt in seed_run + derived_run:
        assert prompt.category in CATEGORIES
        roles = [m["role"] for m in prompt.messages]
        assert len(roles) % 2 == 1
        assert roles == ["user", "assistant"] * (len(roles) // 2) + ["user"]
        assert all(set(m) == {"role", "content"} for m in prompt.messages)
        assert all(isinstance(m["content"], str) and m["content"].strip() for m in prompt.messages)
        assert prompt.text == prompt.messages[-1]["content"]
    assert len(set(seed_run)) == len(seed_run)  # hashable by content
    assert any(len(p.messages) == 3 for p in seed_run if p.category == "multi")
    assert any(len(p.messages) == 3 for p in derived_run if p.category == "multi")


def test_seed_prompts_cover_their_kinds(seed_run):
    texts = [p.text for p in seed_run]
    for marker in ("SQL", "bash", "JavaScript", "Python", "class", "Translate", "JSON", "%"):
        assert any(marker in t for t in texts), marker
    assert any(t.startswith("Write a short paragraph") or "email" in t for t in texts)
    code = [t for p, t in zip(seed_run, texts) if p.category == "code"]
    # Generated snippets (bugs, loops, functions), not only requests in words.
    assert sum("\n    " in t for t in code) > len(code) // 10


def test_passage_prompts_ask_for_passages():
    prompts = passage_prompts(8, 500)
    assert {p.category for p in prompts} == {"chat"}
    assert all(p.text.startswith(("Write", "Describe")) for p in prompts)


def test_derived_prompts_quote_the_passages(derived_run):
    passages = PASSAGES + synthetic_passages(60)
    runs = {tuple(_words(p)[i:i + 5]) for p in passages for i in range(len(_words(p)) - 4)}
    for prompt in derived_run:
        words = _words(_all_text(prompt))
        assert any(tuple(words[i:i + 5]) in runs for i in range(len(words) - 4)), prompt.text


def test_derived_prompts_drop_chat_preamble():
    prompts = derived_prompts(2, PASSAGES[:1], 60)
    assert all("Here is a short paragraph" not in _all_text(p) for p in prompts)
    assert any("Rotterdam" in _all_text(p) for p in prompts)


def test_fragments_are_not_used_as_passages():
    prompts = derived_prompts(0, ["Sorry, I can't help with that.", PASSAGES[2]], 100)
    assert len(prompts) == 100
    assert not any("help with that" in _all_text(p) for p in prompts)
    assert len(derived_prompts(0, ["Just one short line of text here."], 20)) == 20


def test_split_count():
    assert split_count(1000) == (690, 310)
    assert sum(split_count(12345)) == 12345


def test_derived_prompts_need_a_passage():
    with pytest.raises(ValueError):
        derived_prompts(0, ["", "   "], 10)


def test_dev_prompts_are_not_reproduced():
    if not DEV_PROMPTS.exists():
        pytest.skip(f"{DEV_PROMPTS} not present")
    lines = DEV_PROMPTS.read_text().splitlines()
    dev = {json.loads(line)["prompt"].strip() for line in lines if line.strip()}
    produced = seed_prompts(0, 20000) + seed_prompts(1, 5000) + passage_prompts(0, 5000) \
        + derived_prompts(0, PASSAGES + synthetic_passages(60), 3000)
    contents = {m["content"].strip() for p in produced for m in p.messages}
    assert not dev & contents
