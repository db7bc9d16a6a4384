"""Programmatic pieces of distillation prompts: code snippets (bugs to fix, loops to refactor,
code to explain or test) and math word problems with random numbers (``prompts`` uses them).

Random names and numbers make every snippet different while the Python stays realistic.
Generated code never contains "{word}", so a leftover template field stays detectable.
"""
from __future__ import annotations

import random

from draft_service.training import prompt_words as W


def join_words(items: list[str]) -> str:
    """"a, b and c"."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _ints(rng: random.Random, k: int, lo: int = 1, hi: int = 60) -> list[int]:
    return [rng.randint(lo, hi) for _ in range(k)]


def _bug_range(r: random.Random) -> str:
    xs, n, v = _ints(r, 6), r.randint(2, 5), r.choice(W.VAR_NAMES)
    f = r.choice(("sum_first", "head_total"))
    return (f"def {f}({v}, n):\n    total = 0\n    for i in range(1, n):\n"
            f"        total += {v}[i]\n    return total\n\n"
            f"print({f}({xs}, {n}))  # should print {sum(xs[:n])}")


def _bug_max(r: random.Random) -> str:
    xs, f = _ints(r, 4, -40, -1), r.choice(("largest", "find_max", "biggest"))
    return (f"def {f}(values):\n    best = 0\n    for v in values:\n        if v > best:\n"
            f"            best = v\n    return best\n\nprint({f}({xs}))  # should print {max(xs)}")


def _bug_default(r: random.Random) -> str:
    a, b = r.sample(("red", "blue", "urgent", "draft", "home", "work", "later"), 2)
    return (f"def add_tag(tag, tags=[]):\n    tags.append(tag)\n    return tags\n\n"
            f"print(add_tag('{a}'))\nprint(add_tag('{b}'))  # should print ['{b}']")


def _bug_no_return(r: random.Random) -> str:
    xs, f = _ints(r, 3, 2, 30), r.choice(("mean", "average_of", "compute_mean"))
    return (f"def {f}(numbers):\n    total = sum(numbers)\n    result = total / len(numbers)\n\n"
            f"print({f}({xs}))")


def _bug_concat(r: random.Random) -> str:
    n, word = r.randint(2, 40), r.choice(("apples", "messages", "tickets", "points"))
    return f"count = {n}\nprint('You have ' + count + ' new {word}')"


def _bug_floordiv(r: random.Random) -> str:
    part, whole = sorted(r.sample(range(1, 20), 2))
    return (f"def percentage(part, whole):\n    return part // whole * 100\n\n"
            f"print(percentage({part}, {whole}))  # should print about {100 * part / whole:.1f}")


def _bug_remove(r: random.Random) -> str:
    xs = sorted(_ints(r, 5, 1, 30) + [2 * r.randint(1, 15)])
    return (f"def drop_even(numbers):\n    for x in numbers:\n        if x % 2 == 0:\n"
            f"            numbers.remove(x)\n    return numbers\n\n"
            f"print(drop_even({xs}))  # should print {[x for x in xs if x % 2]}")


def _bug_early_return(r: random.Random) -> str:
    xs = _ints(r, 4, -9, 20) + [-r.randint(1, 9)]
    return (f"def has_negative(values):\n    for v in values:\n        if v < 0:\n"
            f"            return True\n        else:\n            return False\n\n"
            f"print(has_negative({xs}))  # should print True")


def _bug_keyerror(r: random.Random) -> str:
    words = " ".join(r.choices(("the", "cat", "sat", "on", "mat", "red", "sun", "and"), k=7))
    return (f"def count_words(text):\n    counts = dict()\n    for word in text.split():\n"
            f"        counts[word] += 1\n    return counts\n\nprint(count_words('{words}'))")


def _bug_while(r: random.Random) -> str:
    return (f"names = {r.sample(W.NAMES, 3)}\ni = 0\nwhile i <= len(names):\n"
            f"    print(names[i])\n    i += 1")


def _bug_wrong_var(r: random.Random) -> str:
    xs, tax = [round(r.uniform(1, 30), 2) for _ in range(3)], r.choice((0.05, 0.1, 0.2))
    return (f"def total_price(prices, tax):\n    total = 0\n    for p in prices:\n"
            f"        total += prices * (1 + tax)\n    return total\n\n"
            f"print(total_price({xs}, {tax}))")


def _bug_assign(r: random.Random) -> str:
    return (f"attempts = 0\nwhile True:\n    attempts += 1\n    if attempts = {r.randint(3, 12)}:\n"
            f"        break\nprint('done after', attempts)")


BUGS = (_bug_range, _bug_max, _bug_default, _bug_no_return, _bug_concat, _bug_floordiv,
         _bug_remove, _bug_early_return, _bug_keyerror, _bug_while, _bug_wrong_var, _bug_assign)


def _ref_comprehension(r: random.Random) -> str:
    out, x, k = r.choice(("result", "squares", "picked", "out")), r.choice("xni"), r.randint(2, 7)
    cond = r.choice((f"{x} % {k} == 0", f"{x} > {r.randint(3, 30)}", f"{x} % 2 == 1"))
    expr = r.choice((f"{x} * {x}", f"{x} + {k}", f"str({x})", f"{x} * {k}"))
    return (f"{out} = []\nfor {x} in range({r.randint(10, 60)}):\n    if {cond}:\n"
            f"        {out}.append({expr})")


def _ref_sum(r: random.Random) -> str:
    v = r.choice(W.VAR_NAMES)
    return (f"{v} = {_ints(r, 5)}\ntotal = 0\nfor i in range(len({v})):\n"
            f"    total = total + {v}[i]\nprint(total)")


def _ref_join(r: random.Random) -> str:
    words = r.sample(("alpha", "beta", "gamma", "delta", "kiwi", "lemon", "river", "stone"), 4)
    sep = r.choice((", ", " ", "-"))
    return (f"words = {words}\ntext = ''\nfor w in words:\n    text = text + w + '{sep}'\n"
            f"text = text[:-{len(sep)}]\nprint(text)")


def _ref_enumerate(r: random.Random) -> str:
    v = r.choice(("names", "tasks", "cities"))
    items = r.sample({"names": W.NAMES, "cities": W.CITIES, "tasks": W.HOWTO}[v], 3)
    return f"{v} = {items}\nfor i in range(len({v})):\n    print(str(i + 1) + '. ' + {v}[i])"


def _ref_flag(r: random.Random) -> str:
    return (f"def any_over(values):\n    found = False\n    for v in values:\n"
            f"        if v > {r.randint(50, 200)}:\n            found = True\n"
            f"    if found == True:\n        return True\n    else:\n        return False")


def _ref_count(r: random.Random) -> str:
    return (f"counts = dict()\nfor ch in '{''.join(r.choices('abcde', k=9))}':\n"
            f"    if ch in counts:\n        counts[ch] = counts[ch] + 1\n    else:\n"
            f"        counts[ch] = 1\nprint(counts)")


def _ref_zip(r: random.Random) -> str:
    return (f"names = {r.sample(W.NAMES, 3)}\nscores = {_ints(r, 3, 10, 99)}\npairs = []\n"
            f"for i in range(len(names)):\n    pairs.append((names[i], scores[i]))")


REFACTORS = (_ref_comprehension, _ref_sum, _ref_join, _ref_enumerate, _ref_flag, _ref_count,
              _ref_zip)


def _clean_grade(r: random.Random) -> str:
    a, b, c = sorted(r.sample(range(50, 95), 3), reverse=True)
    return (f"def grade(score):\n    if score >= {a}:\n        return 'A'\n"
            f"    elif score >= {b}:\n        return 'B'\n    elif score >= {c}:\n"
            f"        return 'C'\n    return 'F'")


def _clean_slices(r: random.Random) -> str:
    word = r.choice(("programming", "distillation", "speculative", "notebook", "lighthouse"))
    return (f"s = '{word}'\nprint(s[::-1])\nprint(s[1:{r.randint(3, 6)}])\n"
            f"print(s.upper().count('{word[1].upper()}'))")


def _clean_fizz(r: random.Random) -> str:
    (a, wa), (b, wb) = r.sample(((2, "Ping"), (3, "Fizz"), (4, "Buzz"), (5, "Pop"), (7, "Zap")), 2)
    return (f"for i in range(1, {r.randint(12, 30)}):\n    if i % {a * b} == 0:\n"
            f"        print('{wa}{wb}')\n    elif i % {a} == 0:\n        print('{wa}')\n"
            f"    elif i % {b} == 0:\n        print('{wb}')\n    else:\n        print(i)")


def _clean_clamp(r: random.Random) -> str:
    lo, hi = sorted(r.sample(range(0, 100), 2))
    return f"def clamp(x, lo={lo}, hi={hi}):\n    return max(lo, min(x, hi))"


def _clean_palindrome(r: random.Random) -> str:
    return (f"def {r.choice(('is_palindrome', 'reads_same_backwards'))}(text):\n"
            f"    cleaned = ''.join(c.lower() for c in text if c.isalnum())\n"
            f"    return cleaned == cleaned[::-1]")


FUNCTIONS = (_clean_grade, _clean_clamp, _clean_palindrome, _ref_flag)  # testable as they are
CLEAN = FUNCTIONS + (_clean_slices, _clean_fizz) + REFACTORS


# --- math word problems with random numbers ------------------------------------------------------
# Numbers are drawn so that the problem has a clean answer where it needs one (ages, ratios, x).
def _m_percent(r: random.Random) -> str:
    pct = r.choice((5, 12, 15, 18, 20, 35, 45, 60, 80))
    return f"What is {pct}% of {r.randrange(40, 3000, 10)}?"


def _m_discount(r: random.Random) -> str:
    off = r.choice((10, 15, 20, 25, 30, 40))
    return (f"{r.choice(W.PRICED_ITEMS).capitalize()} costs {r.randrange(20, 500, 5)} "
            f"{r.choice(W.CURRENCIES)} and is on sale for {off}% off. What is the sale price?")


def _m_change(r: random.Random) -> str:
    a = r.randrange(20, 200)
    b = a + r.choice((-1, 1)) * r.randrange(3, a // 2)
    return (f"The price of {r.choice(W.PRICED_ITEMS)} went from {a} to {b} euros. "
            f"By what percentage did it change?")


def _m_speed(r: random.Random) -> str:
    t = r.choice((1.5, 2, 2.5, 3, 4, 5))
    km = int(t * r.randrange(12, 120, 4))
    return f"A {r.choice(W.VEHICLES)} covers {km} km in {t:g} hours. What is its average speed?"


def _m_time(r: random.Random) -> str:
    v = r.choice((40, 50, 60, 80, 90, 100, 120))
    return f"How long does it take to travel {v * r.choice((1.5, 2, 2.5, 3, 4)):g} km at {v} km/h?"


def _m_unit_price(r: random.Random) -> str:
    k, p, m = r.randint(2, 6), r.randint(1, 9), r.randint(7, 40)
    return (f"A market sells {r.choice(W.SHOP_ITEMS)} at {k} for {p} {r.choice(W.CURRENCIES)}. "
            f"How much do {k * m} of them cost?")


def _m_average(r: random.Random) -> str:
    scores = join_words([str(x) for x in _ints(r, r.randint(4, 6), 55, 100)])
    return f"{r.choice(W.NAMES)}'s test scores are {scores}. What is the average score?"


def _m_fractions(r: random.Random) -> str:
    a, b, c, d = r.randint(1, 5), r.randint(2, 9), r.randint(1, 5), r.randint(2, 9)
    return (f"What is {a}/{b} {r.choice(('+', '-', '×'))} {c}/{d}? "
            f"Give the answer as a simplified fraction.")


def _m_fraction_of(r: random.Random) -> str:
    b = r.choice((3, 4, 5, 6, 8))
    return (f"{r.choice(W.NAMES)} had {b * r.randint(3, 20)} {r.choice(W.SHOP_ITEMS)} and gave "
            f"away {r.randint(1, b - 1)}/{b} of them. How many are left?")


def _m_convert(r: random.Random) -> str:
    a, b = r.choice(W.UNIT_CONVERSIONS)
    return f"Convert {r.randrange(3, 250)} {a} to {b}."


def _m_workers(r: random.Random) -> str:
    n, h, m = r.randint(2, 6), r.randint(3, 12), r.randint(3, 10)
    return (f"If {n} workers can paint a fence in {h} hours, how long would {m} workers take "
            f"at the same pace?")


def _m_interest(r: random.Random) -> str:
    return (f"{r.choice(W.NAMES)} puts {r.randrange(500, 20000, 100)} {r.choice(W.CURRENCIES)} in "
            f"a savings account at {r.choice((1.5, 2, 3, 4, 5))}% "
            f"{r.choice(('simple', 'compound'))} interest per year. How much is in the account "
            f"after {r.randint(2, 10)} years?")


def _m_area(r: random.Random) -> str:
    w, h = r.randint(3, 40), r.randint(3, 40)
    return r.choice((
        f"A rectangular garden is {w} m long and {h} m wide. What is its area, and how much "
        f"fencing goes around it?",
        f"What is the area of a circle with a radius of {w} cm?",
        f"A room is {w / 2:g} m by {h / 4 + 2:g} m. How many square metres of carpet are needed?"))


def _m_ratio(r: random.Random) -> str:
    a, b = r.sample(W.NAMES, 2)
    x, y = r.randint(1, 5), r.randint(1, 5)
    return (f"{a} and {b} share {(x + y) * r.randint(10, 200)} {r.choice(W.CURRENCIES)} in the "
            f"ratio {x}:{y}. How much does each get?")


def _m_equation(r: random.Random) -> str:
    a, x, b = r.randint(2, 12), r.randint(-10, 20), r.randint(1, 40)
    return f"Solve for x: {a}x + {b} = {a * x + b}."


def _m_ages(r: random.Random) -> str:
    a, b = r.sample(W.NAMES, 2)
    young, gap = r.randint(5, 40), r.randint(2, 30)
    return (f"{a} is {gap} years older than {b}. Together their ages add up to "
            f"{2 * young + gap}. How old is each of them?")


def _m_clock(r: random.Random) -> str:
    return (f"A meeting starts at {r.choice(W.CLOCK)} and lasts {r.randrange(25, 200, 5)} "
            f"minutes. When does it end?")


def _m_change_due(r: random.Random) -> str:
    a, p, b, q = r.randint(2, 6), r.randint(2, 9), r.randint(2, 8), r.randint(1, 4)
    return (f"{r.choice(W.NAMES)} buys {a} {r.choice(W.SHOP_ITEMS)} at {p} dollars each and {b} "
            f"pens at {q} dollars each, and pays with a {r.choice((50, 100))}-dollar note. "
            f"How much change should come back?")


def _m_bill(r: random.Random) -> str:
    return (f"A dinner bill is {r.randrange(40, 400)} euros. The group adds a "
            f"{r.choice((10, 12, 15, 20))}% tip and splits the total evenly between "
            f"{r.randint(2, 8)} people. How much does each person pay?")


def _m_probability(r: random.Random) -> str:
    return (f"A bag holds {r.randint(1, 12)} red, {r.randint(1, 12)} blue and {r.randint(0, 8)} "
            f"green marbles. If you draw one at random, what is the probability that it is "
            f"{r.choice(('red', 'blue', 'not blue'))}?")


def _m_fuel(r: random.Random) -> str:
    return (f"A car uses {r.choice((4.5, 5, 6, 6.5, 7, 8))} litres of fuel per 100 km. How much "
            f"fuel does it need for {r.randrange(50, 1200, 10)} km, and what does that cost at "
            f"{r.choice((1.6, 1.75, 1.9))} euros per litre?")


def _m_recipe(r: random.Random) -> str:
    a, b = r.sample((2, 3, 4, 6, 8, 10), 2)
    return (f"A recipe for {a} people uses {r.randrange(100, 800, 25)} g of flour. How much flour "
            f"is needed for {b} people?")


def _m_savings(r: random.Random) -> str:
    per = r.randrange(5, 80, 5)
    goal = per * r.randint(6, 40) + r.randint(0, per - 1)
    return (f"{r.choice(W.NAMES)} saves {per} dollars a week. How many weeks until they have "
            f"{goal} dollars?")


def _m_arith(r: random.Random) -> str:
    a, b, c = r.randint(12, 99), r.randint(3, 40), r.randint(10, 500)
    return r.choice((f"Compute {a} × {b} - {c}.", f"What is ({a} + {b}) × {r.randint(2, 9)}?",
                     f"What is {a * b} divided by {b}?", f"What is {a} squared minus {c}?"))


MATH = (_m_percent, _m_discount, _m_change, _m_speed, _m_time, _m_unit_price, _m_average,
         _m_fractions, _m_fraction_of, _m_convert, _m_workers, _m_interest, _m_area, _m_ratio,
         _m_equation, _m_ages, _m_clock, _m_change_due, _m_bill, _m_probability, _m_fuel,
         _m_recipe, _m_savings, _m_arith)
