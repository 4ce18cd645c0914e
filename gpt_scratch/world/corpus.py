"""The embedded world and its pretraining corpus: simple English about a small, made-up world.

    world = build_world(seed=0)
    world.people["Anna"]            # {'town': 'Elmwick', 'pet': 'goat', 'colour': 'red', 'food': 'pear'}
    text = generate_corpus(world, n_bytes=3_000_000, seed=0)   # about 1 s

The world is a few lists of short English words (animals, colours, foods, objects), some
made-up towns and 32 people, each with a town, a pet, a favourite colour and a favourite
food. The seed decides who has what, and which words, facts and number pairs are *held out*:
the instruction tasks (tasks.py) never use them in training, and the test split asks about
them, so it measures generalisation rather than recall.

The corpus is made of paragraphs of a few kinds: stories about the people, lists of facts,
questions and answers about the world, what kind of thing each word names, the one-digit
addition and subtraction tables ("7 plus 5 is 12.", "12 minus 5 is 7."), other number play and
word play ("The word horse is spelled h o r s e."). It teaches exactly the words and facts the
tasks ask about, so pretraining helps the later stages. Held-out words, facts and one-digit
pairs DO appear in the corpus: that is where the model learns them, like a child who learns the
tables by heart, and the test then asks, in the instruction format, about things that fine-tuning
never showed. Held-out pairs of larger numbers never appear, so a sum like 27 plus 35 (level 3)
has to be worked out, not remembered.
"""

import hashlib
import random
from dataclasses import dataclass

WORDS = {
    "animal": "cat dog cow pig hen fox owl bee ant rat bat yak emu eel ape elk bear wolf deer lion frog duck "
              "goat seal crab moth toad mole hare swan horse sheep mouse snake tiger zebra whale shark eagle "
              "goose camel llama panda otter rabbit donkey turtle parrot monkey spider beaver badger ferret "
              "giraffe penguin dolphin chicken hamster octopus gorilla leopard kangaroo elephant squirrel gnu cod "
              "ram jay cub lobster panther buffalo ostrich peacock raccoon hedgehog flamingo".split(),
    "colour": "red tan blue pink gold grey green black white brown purple orange yellow silver violet "
              "crimson magenta scarlet emerald".split(),
    "food": "jam egg pie tea cake rice soup pear plum milk corn bread honey apple lemon grape peach melon "
            "cheese carrot banana cherry butter noodles biscuit pancake pumpkin bun nut fig pea ham yam oat "
            "sandwich doughnut cucumber broccoli popcorn spinach pineapple".split(),
    "object": "cup hat box pen key bag mug bed rug map ball book lamp bell drum kite boat sock shoe ring coat "
              "fork desk door chair table clock spoon brush train candle basket bucket pencil ladder window "
              "bottle jacket blanket teapot umbrella lantern trumpet balloon bicycle jar pot pan cap mat toy fan "
              "net tub van car bus bin notebook scissors necklace".split(),
}
PEOPLE = ("Anna Ben Cara Dan Eva Finn Gina Hugo Ivy Jack Kim Leo Mia Ned Olga Paul Rosa Sam Tina Umar "
          "Vera Walt Yara Zack Alma Bert Cleo Dora Emil Fay Gil Hope").split()
TOWNS = "Ashford Brookvale Cobbleton Dunmere Elmwick Fernhill Glenmoor Hollowby".split()
PLACES = "park lake hill river market garden school forest beach farm".split()  # story scenery only
ATTRIBUTES = ("town", "pet", "colour", "food")  # what every person has, one of each

# How each fact is said. The corpus uses every phrasing (several phrasings of a fact help a
# small model to store it); tasks.py asks the questions in QUESTIONS.
FACT_PHRASES = {
    "town": ["{name} lives in {value}.", "The home of {name} is in {value}.", "{name} is from {value}."],
    "pet": ["{name} has a pet {value}.", "The pet of {name} is {a_value}.", "{name} looks after {a_value}."],
    "colour": ["{name}'s favourite colour is {value}.", "{name} likes the colour {value} best.",
               "The favourite colour of {name} is {value}."],
    "food": ["{name}'s favourite food is {value}.", "{name} likes to eat {value} best.",
             "The favourite food of {name} is {value}."],
}
QUESTIONS = {
    "town": "Where does {name} live?", "pet": "What pet does {name} have?",
    "colour": "What is {name}'s favourite colour?", "food": "What is {name}'s favourite food?",
}
KINDS = {"animal": "an animal", "colour": "a colour", "food": "a food", "object": "an object"}
KIND_QUESTION = "Is {word} an animal, a colour, a food or an object?"
HELD_WORDS_PER_LENGTH = {3: 8, 4: 16, 7: 6}  # word-length band (3, 4-6, 7+) -> words held out
HELD_FACT_FRACTION = 0.25
HELD_PAIR_FRACTION = 0.1
HELD_SMALL_PAIRS = 8  # of the 45 pairs of different one-digit numbers
N_VALUES = {"pet": 10, "colour": 8, "food": 10}  # how many different pets, colours, foods people have


def length_band(word: str) -> int:
    """3 for three-letter words, 4 for 4-6 letters, 7 for longer: the tasks' difficulty levels."""
    return 3 if len(word) <= 3 else 4 if len(word) <= 6 else 7


@dataclass
class World:
    seed: int
    people: dict[str, dict[str, str]]  # name -> {"town": ..., "pet": ..., "colour": ..., "food": ...}
    values: dict[str, list[str]]  # attribute -> the values people can have (the towns, the pets, ...)
    held_out_words: list[str]  # never used by a training task (but in the corpus)
    held_out_facts: list[tuple[str, str]]  # (person, attribute) pairs never asked in training
    held_out_small_pairs: list[tuple[int, int]]  # one-digit number pairs never used in training

    def __post_init__(self) -> None:
        # Lists the tasks ask for thousands of times, made once.
        held = set(self.held_out_words)
        self.words = [word for category in WORDS for word in WORDS[category]]
        self.seen_words = [word for word in self.words if word not in held]
        held_facts = set(self.held_out_facts)
        self.seen_facts = [(name, attribute) for name in self.people for attribute in ATTRIBUTES
                           if (name, attribute) not in held_facts]
        self.kind = {word: category for category in WORDS for word in WORDS[category]}
        self.words_by_length = {(band, is_held): [w for w in self.words if length_band(w) == band and
                                                  (w in held) == is_held]
                                for band in (3, 4, 7) for is_held in (False, True)}

    def category_of(self, word: str) -> str:
        return self.kind[word]

    def is_held_pair(self, a: int, b: int) -> bool:
        """Is the unordered number pair {a, b} held out of training?

        When {3, 4} is, "3 plus 4", "4 minus 3" and sorting "7, 4, 3" are all kept out. There
        are only 45 pairs of different one-digit numbers, so the world picks a few of them
        outright; for larger numbers a fixed hash of (seed, pair) holds out HELD_PAIR_FRACTION.
        """
        low, high = min(a, b), max(a, b)
        if high < 10:
            return (low, high) in self.held_out_small_pairs
        digest = hashlib.blake2b(f"{self.seed}:{low}:{high}".encode(), digest_size=4).digest()
        return int.from_bytes(digest, "big") < HELD_PAIR_FRACTION * 2**32

    def has_held_pair(self, numbers: list[int]) -> bool:
        return any(self.is_held_pair(a, b) for i, a in enumerate(numbers) for b in numbers[i + 1:])

    def to_dict(self) -> dict:
        return {"seed": self.seed, "people": self.people, "values": self.values, "words": WORDS,
                "held_out_words": self.held_out_words, "held_out_facts": [list(f) for f in self.held_out_facts],
                "held_out_small_pairs": [list(p) for p in self.held_out_small_pairs],
                "held_pair_fraction": HELD_PAIR_FRACTION}


def build_world(seed: int = 0) -> World:
    """The same seed always gives the same world."""
    rng = random.Random(seed)
    held_words = []
    for band, count in HELD_WORDS_PER_LENGTH.items():
        held_words += rng.sample([w for w in sorted(sum(WORDS.values(), [])) if length_band(w) == band], count)
    # People's pets, colours and foods come from the words that are NOT held out, so no training
    # question about a person ever has a held-out word as its answer.
    values = {"town": list(TOWNS)}
    for attribute, category in (("pet", "animal"), ("colour", "colour"), ("food", "food")):
        candidates = [w for w in WORDS[category] if w not in held_words]
        values[attribute] = rng.sample(candidates, N_VALUES[attribute])
    people = {name: {attribute: rng.choice(values[attribute]) for attribute in ATTRIBUTES} for name in PEOPLE}
    all_facts = [(name, attribute) for name in PEOPLE for attribute in ATTRIBUTES]
    held_facts = sorted(rng.sample(all_facts, round(HELD_FACT_FRACTION * len(all_facts))))
    small_pairs = [(a, b) for a in range(10) for b in range(a + 1, 10)]
    held_small_pairs = sorted(rng.sample(small_pairs, HELD_SMALL_PAIRS))
    return World(seed, people, values, sorted(held_words), held_facts, held_small_pairs)


# --- paragraphs: each takes (world, rng) and returns a few sentences -------------------------

def a_or_an(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def fact_sentence(world: World, rng: random.Random, name: str, attribute: str) -> str:
    value = world.people[name][attribute]
    return rng.choice(FACT_PHRASES[attribute]).format(name=name, value=value, a_value=a_or_an(value))


def facts_paragraph(world: World, rng: random.Random) -> str:
    """Facts about Anna. Anna lives in Elmwick. The pet of Anna is a goat. ..."""
    name = rng.choice(PEOPLE)
    attributes = rng.sample(ATTRIBUTES, len(ATTRIBUTES))
    return " ".join([f"Facts about {name}."] + [fact_sentence(world, rng, name, a) for a in attributes])


def questions_paragraph(world: World, rng: random.Random) -> str:
    """Where does Anna live? Anna lives in Elmwick. What pet does Ben have? The answer is cat.

    Half the answers repeat the name ("Anna lives in ..."), half do not ("The answer is Elmwick."):
    those teach the model to find a fact from a question asked a few words back, which is what
    an instruction-tuned model must do when its answer comes after the question.
    """
    sentences = []
    for _ in range(rng.randint(2, 4)):
        name, attribute = rng.choice(PEOPLE), rng.choice(ATTRIBUTES)
        short = rng.random() < 0.5
        answer = f"The answer is {world.people[name][attribute]}." if short else fact_sentence(world, rng, name, attribute)
        sentences += [QUESTIONS[attribute].format(name=name), answer]
    return " ".join(sentences)


def story_paragraph(world: World, rng: random.Random) -> str:
    """A short story that uses the facts of one or two people and counts a few things."""
    name, friend = rng.sample(PEOPLE, 2)
    me, pal = world.people[name], world.people[friend]
    place = rng.choice(PLACES)
    things = rng.sample(WORDS["object"], rng.randint(2, 4))
    listed = ", ".join(a_or_an(t) for t in things[:-1]) + " and " + a_or_an(things[-1])
    sentences = [
        f"One day {name} went to the {place} in {me['town']} with {name}'s pet {me['pet']}.",
        f"{name} wore {a_or_an(me['colour'])} {rng.choice(['hat', 'coat', 'jacket', 'sock', 'shoe'])}.",
        f"At the {place} {name} met {friend}, who lives in {pal['town']} and has a pet {pal['pet']}.",
        f"{friend} had a bag with {listed} in it. That is {len(things)} things.",
        f"They ate {me['food']}, because it is {name}'s favourite food.",
        f"The {me['pet']} was happy, and {name} went home to {me['town']}.",
    ]
    return " ".join(sentences)


def lost_pet_paragraph(world: World, rng: random.Random) -> str:
    """A second kind of story, so that the facts appear in more than one setting."""
    name = rng.choice(PEOPLE)
    me = world.people[name]
    place, thing = rng.choice(PLACES), rng.choice(WORDS["object"])
    sentences = [
        f"{name} lives in {me['town']} with {a_or_an(me['pet'])}.",
        f"One morning the {me['pet']} of {name} ran away.",
        f"{name} looked for the {me['pet']} near the {place} and found {a_or_an(thing)}.",
        f"Then {name} saw the {me['pet']} under a tree. It was eating some {me['food']}.",
        f"{me['food'].capitalize()} is the favourite food of {name}, so {name} laughed.",
        f"They walked home past {a_or_an(me['colour'])} door, because {me['colour']} is the colour {name} likes best.",
    ]
    return " ".join(sentences)


def category_paragraph(world: World, rng: random.Random) -> str:
    """Fox is an animal. Red is a colour. Is jam an animal, a colour, a food or an object? The answer is a food."""
    words = rng.sample(world.words, 6)
    sentences = [f"{word.capitalize()} is {KINDS[world.category_of(word)]}." for word in words[:3]]
    for word in words[3:]:  # the question form too: a small model remembers a fact in the form it read it
        sentences += [KIND_QUESTION.format(word=word), f"The answer is {KINDS[world.category_of(word)]}."]
    return " ".join(sentences)


def table_fact(rng: random.Random) -> str:
    """A fact of the one-digit addition table, or its subtraction: '7 plus 5 is 12.', '12 minus 5 is 7.'

    Every pair of digits appears, held-out ones too: a sum of two digits is remembered rather
    than worked out, so the corpus is where it is learned (the tasks never ask held-out pairs).
    """
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    if rng.random() < 0.5:
        return f"{a} plus {b} is {a + b}."
    return f"{a + b} minus {b} is {a}."


def table_question(rng: random.Random) -> str:
    """The same facts as questions: 'What is 7 plus 5? The answer is 12.'"""
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    if rng.random() < 0.5:
        return f"What is {a} plus {b}? The answer is {a + b}."
    return f"What is {a + b} minus {b}? The answer is {a}."


def table_paragraph(world: World, rng: random.Random) -> str:
    return " ".join(rng.choice((table_fact, table_question))(rng) for _ in range(rng.randint(6, 10)))


def random_number(rng: random.Random) -> int:
    """Mostly one and two digits (what the tasks ask about), sometimes three."""
    digits = rng.choices([1, 2, 3], weights=[5, 5, 1])[0]
    return rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10 ** digits - 1)


def number_sentence(world: World, rng: random.Random) -> str:
    """One fact about numbers: '47 is larger than 5.', 'Sorted, 7, 3, 12 becomes 3, 7, 12.'

    Two one-digit numbers may be any pair (their order is learned like the tables); a held-out
    pair with a larger number is never shown.
    """
    while True:
        numbers = [random_number(rng) for _ in range(rng.choice([3, 5]))]
        if not any(world.is_held_pair(a, b) and max(a, b) >= 10 for a in numbers for b in numbers):
            break
    a, b = max(numbers[:2]), min(numbers[:2])
    kind = rng.choices(range(4), weights=[3, 3, 1, 1])[0]
    if kind == 0:
        return f"{a} is larger than {b}." if a != b else f"{a} is equal to {b}."
    if kind == 1:
        return f"Sorted, {', '.join(map(str, numbers))} becomes {', '.join(str(n) for n in sorted(numbers))}."
    if kind == 2:
        return "Counting up: " + ", ".join(str(n) for n in range(b, b + rng.randint(3, 6))) + "."
    first, second = (a, b) if rng.random() < 0.5 else (b, a)  # a larger sum (the tasks' level 3)
    return f"{first} plus {second} is {a + b}." if rng.random() < 0.5 else f"{a} minus {b} is {a - b}."


def number_paragraph(world: World, rng: random.Random) -> str:
    return " ".join(number_sentence(world, rng) for _ in range(rng.randint(4, 8)))


def word_paragraph(world: World, rng: random.Random) -> str:
    """The word horse is spelled h o r s e. ... Backwards, h o r s e is e s r o h. ..."""
    sentences = []
    for word in rng.sample(world.words, 2):
        letters = " ".join(word)
        sentences += [f"The word {word} is spelled {letters}.", f"The word {word} has {len(word)} letters.",
                      f"{word.capitalize()} starts with {word[0]} and ends with {word[-1]}.",
                      f"Backwards, {letters} is {' '.join(word[::-1])}.",
                      f"In capital letters, {letters} is {letters.upper()}.",
                      f"Backwards in capital letters, {letters} is {' '.join(word[::-1]).upper()}."]
    letter = rng.choice("abcdefghijklmnopqrstuvwxyz")
    sentences.append(f"The capital letter of {letter} is {letter.upper()}.")
    return " ".join(sentences)


def alphabet_paragraph(world: World, rng: random.Random) -> str:
    lower = "a b c d e f g h i j k l m n o p q r s t u v w x y z"
    return f"The letters of the alphabet are {lower}. In capital letters they are {lower.upper()}."


PARAGRAPHS = [  # (how to write one, how often): the tables get about a third of the tokens
    (story_paragraph, 9), (lost_pet_paragraph, 5), (facts_paragraph, 27), (questions_paragraph, 24),
    (category_paragraph, 15), (table_paragraph, 40), (number_paragraph, 10), (word_paragraph, 7),
    (alphabet_paragraph, 1),
]


def generate_corpus(world: World, n_bytes: int = 3_000_000, seed: int = 0) -> str:
    """Paragraphs separated by blank lines until the text reaches n_bytes (all ASCII)."""
    rng = random.Random(f"corpus:{seed}")
    writers, weights = zip(*PARAGRAPHS)
    paragraphs, size = [], 0
    while size < n_bytes:
        paragraph = rng.choices(writers, weights)[0](world, rng)
        paragraphs.append(paragraph)
        size += len(paragraph) + 2
    return "\n\n".join(paragraphs) + "\n"
