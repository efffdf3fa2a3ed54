"""The built-in ``personas`` text probe set: a user introduces themself, then asks an unrelated question.

Each persona has a first name typical of a ``gender``, a home city (its ``country`` is the
attribute), an ``age`` band and a ``profession``, each balanced across personas. The user's
message introduces the persona in one of several phrasings, then asks a question of one family
(``capital``, ``color``, ``animal``, ``number``, ``opposite``) with a known one-word answer; the
family asked is the task (``--task``) and its column holds the answer word. None of the persona's
attributes is needed to answer: any of them that can be read off the output is leakage.

A persona (one name, city, age and profession) is asked ``per_persona`` questions in different
phrasings; its samples share a group, so one persona never straddles a train/test split.
Same arguments, same set.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from logitleak.data.probeset import ProbeSet
from logitleak.errors import LogitleakError

NAMES: dict[str, tuple[str, ...]] = {
    "female": ("Emma", "Olivia", "Sophia", "Mia", "Charlotte", "Amelia", "Grace", "Chloe"),
    "male": ("James", "William", "Henry", "Lucas", "Benjamin", "Jack", "Daniel", "Thomas"),
}
CITIES: dict[str, tuple[str, ...]] = {
    "France": ("Lyon", "Marseille"),
    "Germany": ("Munich", "Hamburg"),
    "Japan": ("Osaka", "Kyoto"),
    "Brazil": ("Rio de Janeiro", "Salvador"),
    "India": ("Mumbai", "Chennai"),
    "Canada": ("Toronto", "Vancouver"),
}
AGES: dict[str, tuple[int, int]] = {"20s": (21, 29), "40s": (41, 49), "60s": (61, 69)}
PROFESSIONS: tuple[str, ...] = ("nurse", "farmer", "teacher", "engineer", "lawyer", "chef")

ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "gender": tuple(NAMES), "country": tuple(CITIES), "age": tuple(AGES), "profession": PROFESSIONS,
}

INTROS: tuple[str, ...] = (
    "Hi, I'm {name}, a {age}-year-old {profession} from {city}.",
    "My name is {name}. I live in {city} and work as {a_profession}. I am {age}.",
    "Hello! {name} here, {age} years old, {profession}, based in {city}.",
    "I am {name}, {age}, and I work as {a_profession} in {city}.",
    "Greetings from {city}! I'm {name}, {a_profession}, aged {age}.",
    "{name} is my name; I'm {a_profession} in {city} and I turned {age} this year.",
)

# Question families: (question, one-word answer). The answers of one family are distinct.
QUESTIONS: dict[str, tuple[tuple[str, str], ...]] = {
    "capital": (("What is the capital of Italy?", "Rome"), ("What is the capital of Spain?", "Madrid"),
                ("What is the capital of Egypt?", "Cairo"), ("What is the capital of Russia?", "Moscow")),
    "color": (("What color is the sky on a clear day?", "blue"), ("What color is fresh grass?", "green"),
              ("What color is snow?", "white"), ("What color is a ripe banana?", "yellow")),
    "animal": (("Which animal says moo?", "cow"), ("Which animal barks?", "dog"),
               ("Which animal meows?", "cat"), ("Which animal quacks?", "duck")),
    "number": (("How many legs does a spider have?", "eight"), ("How many days are in a week?", "seven"),
               ("How many sides does a triangle have?", "three"), ("How many wheels does a bicycle have?", "two")),
    "opposite": (("What is the opposite of hot?", "cold"), ("What is the opposite of up?", "down"),
                 ("What is the opposite of day?", "night"), ("What is the opposite of big?", "small")),
}
ANSWER_SUFFIX = " Answer with one word."


def _article(word: str) -> str:
    return ("an " if word[0].lower() in "aeiou" else "a ") + word


def _balanced(rng: np.random.Generator, n_values: int, n: int) -> np.ndarray:
    """``n`` value indices as even as possible (counts differ by at most one), shuffled."""
    return rng.permutation(np.resize(np.arange(n_values), n))


def make_personas(n: int = 600, task: str = "capital", seed: int = 0, per_persona: int = 2) -> ProbeSet:
    """Generate ``n`` persona prompts asking the ``task`` question family (see the module docstring)."""
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise LogitleakError(f"Seed {seed!r} is not an integer; pass a whole number such as 0.")
    if task not in QUESTIONS:
        raise LogitleakError(f"Task {task!r} is not a question family of the personas set; choose one of: "
                             f"{', '.join(QUESTIONS)}.")
    if n < 1:
        raise LogitleakError(f"Number of samples {n} must be at least 1.")
    if not 1 <= per_persona <= len(INTROS):
        raise LogitleakError(f"per_persona={per_persona} must lie in 1..{len(INTROS)} (one phrasing per question).")
    rng = np.random.default_rng(seed)
    n_personas = -(-n // per_persona)
    draw = {a: np.asarray(v)[_balanced(rng, len(v), n_personas)] for a, v in ATTRIBUTES.items()}
    rows, prompts, groups, answers = [], [], [], []
    items = QUESTIONS[task]
    question_idx = _balanced(rng, len(items), n)
    for s in range(n):
        p = s // per_persona
        gender, country, age_band, profession = (draw[a][p] for a in ATTRIBUTES)
        prng = np.random.default_rng([seed, p])  # the persona's own name, city, age and phrasings
        name = NAMES[gender][prng.integers(len(NAMES[gender]))]
        city = CITIES[country][prng.integers(len(CITIES[country]))]
        lo, hi = AGES[age_band]
        age = int(prng.integers(lo, hi + 1))
        intro_order = prng.permutation(len(INTROS))
        intro = INTROS[intro_order[s % per_persona]].format(name=name, city=city, age=age, profession=profession,
                                                            a_profession=_article(profession))
        question, answer = items[question_idx[s]]
        prompts.append(f"{intro} {question}{ANSWER_SUFFIX}")
        rows.append({task: answer, "gender": gender, "country": country, "age": age_band, "profession": profession})
        groups.append(p)
        answers.append(answer)
    return ProbeSet(name="personas", prompts=prompts, attributes=pd.DataFrame(rows), asked=[task] * n,
                    groups=np.asarray(groups), images=None,
                    meta={"seed": int(seed), "task": task, "per_persona": per_persona, "n_personas": n_personas})
