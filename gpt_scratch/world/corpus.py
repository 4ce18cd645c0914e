"""The embedded world and its pretraining corpus: simple English about a small, made-up world.

    world = build_world(seed=0)
    world.people["Anna"]            # {'town': 'Elmwick', 'pet': 'goat', 'colour': 'red', 'food': 'pear'}
    text = generate_corpus(world, n_bytes=3_000_000, seed=0)   # about 1 s

The world is a few lists of short English words (animals, colours, foods, objects), some
made-up towns and 32 people, each with a town, a pet, a favourite colour and a favourite
food. The seed decides who has what, and which words, facts and number pairs are *held out*:
the instruction tasks (tasks.py) never use them in training, and the test split asks about
them, so it measures generalisation rather than recall.

The corpus is made of paragraphs of five kinds: stories about the people, lists of facts,
questions and answers about the world, number play ("3 plus 4 is 7.") and word play ("The word
horse is spelled h o r s e."). It teaches exactly the words and facts the tasks ask about, so
pretraining helps the later stages. Held-out words and facts DO appear in the corpus (that is
where the model can learn them); held-out number pairs do not, so an unseen sum like 27 plus 35
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
    "pet": ["{name} has a pet {value}.", "The pet of {name} is a {value}.", "{name} looks after a {value}."],
    "colour": ["{name}'s favourite colour is {value}.", "{name} likes the colour {value} best.",
               "The favourite colour of {name} is {value}."],
    "food": ["{name}'s favourite food is {value}.", "{name} likes to eat {value} best.",
             "The favourite food of {name} is {value}."],
}
QUESTIONS = {  # (question asking for the value, yes/no question about a candidate value)
    "town": ("Where does {name} live?", "Does {name} live in {value}?"),
    "pet": ("What pet does {name} have?", "Does {name} have a pet {value}?"),
    "colour": ("What is {name}'s favourite colour?", "Is {name}'s favourite colour {value}?"),
    "food": ("What is {name}'s favourite food?", "Is {name}'s favourite food {value}?"),
}
HELD_WORDS_PER_LENGTH = {3: 8, 4: 16, 7: 6}  # word-length band (3, 4-6, 7+) -> words held out
HELD_FACT_FRACTION = 0.25
HELD_PAIR_FRACTION = 0.1
HELD_SMALL_PAIRS = 5  # of the 45 pairs of different one-digit numbers
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
    return rng.choice(FACT_PHRASES[attribute]).format(name=name, value=world.people[name][attribute])


def facts_paragraph(world: World, rng: random.Random) -> str:
    """Facts about Anna. Anna lives in Elmwick. The pet of Anna is a goat. ..."""
    name = rng.choice(PEOPLE)
    attributes = rng.sample(ATTRIBUTES, len(ATTRIBUTES))
    return " ".join([f"Facts about {name}."] + [fact_sentence(world, rng, name, a) for a in attributes])


def questions_paragraph(world: World, rng: random.Random) -> str:
    """Where does Anna live? Anna lives in Elmwick. Does Ben have a pet cat? The answer is no.

    Half the answers repeat the name ("Anna lives in ..."), half do not ("The answer is Elmwick."):
    those teach the model to find a fact from a question asked a few words back, which is what
    an instruction-tuned model must do when the answer comes after the template's lines.
    """
    sentences = []
    for _ in range(rng.randint(2, 4)):
        name, attribute = rng.choice(PEOPLE), rng.choice(ATTRIBUTES)
        value = world.people[name][attribute]
        ask_value, ask_yes_no = QUESTIONS[attribute]
        short = rng.random() < 0.5
        if rng.random() < 0.5:
            answer = f"The answer is {value}." if short else fact_sentence(world, rng, name, attribute)
            sentences += [ask_value.format(name=name), answer]
        else:
            candidate = rng.choice(world.values[attribute])
            yes_no = "yes" if candidate == value else "no"
            answer = (f"The answer is {yes_no}." if short else
                      yes_no.capitalize() + ", " + FACT_PHRASES[attribute][0].format(name=name, value=value))
            sentences += [ask_yes_no.format(name=name, value=candidate), answer]
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
        f"{name} wore a {me['colour']} {rng.choice(['hat', 'coat', 'jacket', 'sock', 'shoe'])}.",
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
        f"{name} lives in {me['town']} with a {me['pet']}.",
        f"One morning the {me['pet']} of {name} ran away.",
        f"{name} looked for the {me['pet']} near the {place} and found {a_or_an(thing)}.",
        f"Then {name} saw the {me['pet']} under a tree. It was eating some {me['food']}.",
        f"{me['food'].capitalize()} is the favourite food of {name}, so {name} laughed.",
        f"They walked home past a {me['colour']} door, because {me['colour']} is the colour {name} likes best.",
    ]
    return " ".join(sentences)


def category_paragraph(world: World, rng: random.Random) -> str:
    """A fox is an animal. Red is a colour. ..."""
    kinds = {"animal": "an animal", "colour": "a colour", "food": "a food", "object": "an object"}
    words = rng.sample(world.words, 5)
    return " ".join(f"{word.capitalize()} is {kinds[world.category_of(word)]}." for word in words)


def random_number(rng: random.Random) -> int:
    """Mostly one and two digits (what the tasks ask about), sometimes three."""
    digits = rng.choices([1, 2, 3], weights=[6, 4, 1])[0]
    return rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10 ** digits - 1)


def number_sentence(world: World, rng: random.Random) -> str:
    """One fact about numbers whose pairs are not held out: '3 plus 4 is 7.'"""
    while True:
        a, b, c = random_number(rng), random_number(rng), rng.randint(0, 9)
        if not world.has_held_pair([a, b, c]):
            break
    a, b = max(a, b), min(a, b)
    kind = rng.randrange(6)
    if kind == 0:
        first, second = (a, b) if rng.random() < 0.5 else (b, a)
        return f"{first} plus {second} is {a + b}."
    if kind == 1:
        return f"{a} minus {b} is {a - b}."
    if kind == 2:
        return f"{a} is larger than {b}." if a != b else f"{a} is equal to {b}."
    if kind == 3:
        return f"{a} plus {c} minus {b} is {a + c - b}."  # a >= b, so never below zero
    if kind == 4:
        return "Counting up: " + ", ".join(str(n) for n in range(b, b + rng.randint(3, 6))) + "."
    numbers = [a, b, c]
    rng.shuffle(numbers)
    return f"Sorted, {', '.join(map(str, numbers))} becomes {', '.join(str(n) for n in sorted(numbers))}."


def number_paragraph(world: World, rng: random.Random) -> str:
    return " ".join(number_sentence(world, rng) for _ in range(rng.randint(4, 8)))


def word_paragraph(world: World, rng: random.Random) -> str:
    """The word horse is spelled h o r s e. The word horse has 5 letters. Backwards, h o r s e is e s r o h. ..."""
    sentences = []
    for word in rng.sample(world.words, 2):
        letters = " ".join(word)
        sentences += [f"The word {word} is spelled {letters}.", f"The word {word} has {len(word)} letters.",
                      f"{word.capitalize()} starts with {word[0]} and ends with {word[-1]}.",
                      f"Backwards, {letters} is {' '.join(word[::-1])}.",
                      f"In capital letters, {letters} is {letters.upper()}."]
    letter = rng.choice("abcdefghijklmnopqrstuvwxyz")
    sentences.append(f"The capital letter of {letter} is {letter.upper()}.")
    return " ".join(sentences)


def alphabet_paragraph(world: World, rng: random.Random) -> str:
    lower = "a b c d e f g h i j k l m n o p q r s t u v w x y z"
    return f"The letters of the alphabet are {lower}. In capital letters they are {lower.upper()}."


PARAGRAPHS = [  # (how to write one, how often)
    (story_paragraph, 15), (lost_pet_paragraph, 10), (facts_paragraph, 12), (questions_paragraph, 12), (category_paragraph, 6),
    (number_paragraph, 22), (word_paragraph, 22), (alphabet_paragraph, 1),
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
