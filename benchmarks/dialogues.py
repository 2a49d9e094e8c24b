"""Generated multi-session conversations between two people, with questions and their evidence.

Made in code from a seed (deterministic; no data set is shipped or downloaded). Each
conversation has two speakers and many dated sessions; in each session they greet, chat,
and tell each other what happened in their lives, the way real chat logs do:

  - a fact is told in one turn and its detail in a later one, after the other speaker asks
    ("Aww, what kind?" / "She's a beagle mix"): the detail's turn does not name its topic;
  - times are relative to the session's date ("yesterday", "last Saturday", "this morning");
  - facts build on each other across sessions (a sister named in one session gets a job in a
    later one; a move to a new city follows an earlier home);
  - both speakers have the same kinds of life events (pets, hobbies, trips, jobs), at other
    times and with other details, and small talk touches the same topics: every question
    has look-alike distractors.

Questions come in kinds, each with the turns that hold its evidence and accepted answers:

  single-hop   one turn answers it, asked in words close to the turn's
  paraphrase   one turn answers it, asked in other words
  detail       the answer is in a reply that does not name the topic: needs that turn and
               the turn before it that does
  multi-hop    needs two turns from different sessions
  temporal     "when did ...": needs the turn and its session's date
  time-scoped  names a month ("in June 2023") among several like events at other times
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta

PEOPLE = (
    "Caroline Melanie Jon Gina Priya Omar Nate Joanna Audrey Andrew Deborah Evan Maria Tim Sam Calvin "
    "Dave Jolene Lena Marco Rosa Hugo Nadia Felix"
).split()
FRIENDS = "Ana Ben Clara Dev Elif Farid Greta Hiro Ines Jonas Kemal Lucia Mateo Noor Oskar Pia Rafael Sina".split()
CITIES = "Austin Denver Portland Boston Chicago Seattle Atlanta Phoenix Raleigh Tucson Madison Omaha".split()
PETS = [  # kind, breeds
    ("dog", ["beagle mix", "golden retriever", "border collie", "dachshund", "corgi", "husky"]),
    ("cat", ["tabby", "Maine Coon", "Siamese", "black shorthair", "Ragdoll"]),
    ("rabbit", ["Holland Lop", "Netherland Dwarf", "lionhead"]),
]
PET_NAMES = "Biscuit Pepper Mochi Luna Ziggy Olive Waffles Juniper Pickles Nugget Clover Tofu".split()
PET_HABITS = [
    "chewing every shoe in the house", "sleeping on the radiator", "stealing socks from the laundry",
    "chasing the vacuum cleaner", "waking us up at six sharp", "hiding under the couch",
]
HOBBIES = [  # what, a detail about it, the detail's key word, a paraphrase of what it is
    ("pottery", "we are throwing bowls on the wheel next week", "bowls", "clay craft"),
    ("rock climbing", "I finally made it up the orange route at the gym", "orange", "wall sport"),
    ("ukulele", "I can play three chords without looking now", "chords", "string instrument"),
    ("watercolor painting", "my teacher liked my painting of the harbor", "harbor", "art form"),
    ("salsa dancing", "my partner stepped on my feet only twice this time", "feet", "kind of dance"),
    ("Italian cooking", "we made fresh ravioli from scratch on Tuesday", "ravioli", "cuisine"),
    ("photography", "I bought a secondhand lens for night shots", "lens", "camera skill"),
    ("beekeeping", "the first hive survived the cold snap", "hive", "outdoor pastime"),
    ("chess", "I beat my coach in a blitz game for the first time", "blitz", "board game"),
    ("woodworking", "I built a little bookshelf for the hallway", "bookshelf", "woodcraft"),
]
TRIPS = [  # place, highlight, its key word
    ("Lisbon", "the tiled houses in Alfama", "Alfama"), ("Kyoto", "the bamboo forest at dawn", "bamboo"),
    ("Iceland", "swimming in a hot spring under the snow", "hot spring"),
    ("Yellowstone", "watching Old Faithful erupt", "Old Faithful"),
    ("Mexico City", "the murals at the National Palace", "murals"),
    ("the Scottish Highlands", "a misty hike up Ben Nevis", "Ben Nevis"),
    ("Cape Town", "the penguins at Boulders Beach", "penguins"), ("Vancouver", "kayaking past the seals", "kayaking"),
    ("Prague", "the astronomical clock striking noon", "astronomical clock"),
    ("New Orleans", "live jazz on Frenchmen Street", "jazz"),
]
JOBS = [  # title, workplace
    ("paramedic", "the county ambulance service"), ("data analyst", "a logistics startup"),
    ("pastry chef", "a French bakery downtown"), ("physical therapist", "the sports clinic"),
    ("high school teacher", "Lincoln High"), ("architect", "a small design studio"),
    ("nurse", "the children's hospital"), ("park ranger", "the state park"),
]
PROMOTIONS = ["team lead", "senior engineer", "head of marketing", "project manager", "shift supervisor", "store manager"]
RACES = [("half marathon", "1:58"), ("10K charity run", "52 minutes"), ("sprint triathlon", "1:31"), ("trail race", "2:40")]
BOOKS = [
    ("The Night Circus", "Erin Morgenstern"), ("Project Hail Mary", "Andy Weir"), ("Circe", "Madeline Miller"),
    ("The Overstory", "Richard Powers"), ("Educated", "Tara Westover"), ("Klara and the Sun", "Kazuo Ishiguro"),
]
RELATIONS = [("sister", "she", "her"), ("brother", "he", "him"), ("cousin", "she", "her"), ("best friend", "he", "him")]

GREETINGS = [
    "Hey {o}! Long time no talk. How have you been?", "Hi {o}, good to hear from you! What's new?",
    "{o}! I was just thinking about you. How's everything?", "Hey hey! How was your week, {o}?",
]
GREET_BACK = [
    "Hi {o}! Pretty good, a busy few days but good.", "Hey! Doing well, thanks. Work has been a lot lately though.",
    "Oh hi {o}! All good here, just tired.", "Hey {o}! Honestly, it's been quite a week.",
]
SMALL_TALK = [
    "The weather has been so strange lately, sunny one minute and pouring the next.",
    "Work is crazy right now, we have a deadline every other day.", "I've been trying to sleep more, it's not going great.",
    "Did you watch anything good recently? I need a new show.", "I made soup three times this week, I think I'm obsessed.",
    "My neighbor started renovating, so there's drilling every morning.", "I keep meaning to call my parents more often.",
    "The traffic on the way home was unbelievable today.", "I'm trying to drink less coffee but it's not working.",
    "We finally cleaned out the garage, it took the whole weekend.", "I love how long the evenings are getting.",
    "Honestly I just want a quiet weekend with a good book.", "Dogs are the best, I always stop to pet every dog I see.",
    "I should really travel more, I haven't been anywhere in ages.", "My friends keep telling me to pick up a new hobby.",
    "Cooking at home has saved me so much money this year.", "I've been listening to a lot of old jazz records.",
    "Our team at work got a new manager, still getting used to it.", "I went for a long walk by the river to clear my head.",
    "The cat next door keeps sitting on our windowsill.", "I need to get back into running, I've been so lazy.",
]
ACTIVITIES = [  # everyday small talk, composed so that lines rarely repeat
    "tried that new ramen place downtown", "repainted the kitchen", "watched a documentary about octopuses",
    "went to the farmers market", "binge-watched a baking show", "fixed the leaky faucet", "walked around the botanical garden",
    "had friends over for board games", "baked banana bread", "cleaned out the closet", "went to a street festival",
    "started a jigsaw puzzle with a thousand pieces", "got stuck in traffic for an hour", "rearranged the living room",
    "tried a yoga video", "went to the dentist", "helped a neighbor carry a sofa upstairs", "went thrift shopping",
    "finally did my taxes", "made a huge pot of chili", "went to a trivia night at the pub", "sorted out old photos",
]
OPENERS = ["I", "We", "My roommate and I", "My partner and I", "A couple of friends and I"]
WHENS = ["on Sunday", "the other day", "last night", "this week", "after work on Thursday"]
COMMENTS = [
    "and it was nicer than I expected.", "and honestly it was not my best idea.", "and I'd do it again.",
    "and it took forever.", "and it was so relaxing.", "and we laughed the whole time.", "and now I'm exhausted.",
]
LEADS = ["", "", "Oh, by the way! ", "So, news from my side: ", "Speaking of which, ", "Anyway, ", "Okay, I have to tell you. "]
REACTIONS = [
    "Wow, that's amazing!", "No way! That's so exciting.", "Oh I love that for you.", "That's wonderful news!",
    "Haha, that sounds like a lot of fun.", "That's so cool, good for you!", "Oh nice, I'm really happy for you.",
    "Aww, that's lovely.", "Seriously? That's awesome!", "That sounds incredible.",
]
FOLLOW = ["Tell me more!", "How did it go?", "What was that like?", "How do you feel about it?"]
AGREE = [
    "Totally agree.", "Haha, same here.", "I know what you mean.", "Right? It's been like that for me too.",
    "Ugh, I feel that.", "That makes sense.", "Yeah, for sure.",
]
TOPICAL = {  # on-topic talk that holds no asked fact: what makes a topic's turns look alike
    "pet": [
        "Pets really change your whole routine, don't they? Everything revolves around walks and feeding times now.",
        "My aunt had a dog like that when I was a kid, we used to take her to the lake every summer.",
        "Did you have to buy a lot of stuff for her? Beds, toys, the whole thing? I hear it adds up fast.",
        "The shelter people were so kind, they even gave us a little bag of treats and her favorite blanket.",
        "I always wanted a pet but my building doesn't allow them, so I just borrow my neighbor's sometimes.",
        "We take her to the park every evening now, she's made friends with half the neighborhood.",
        "The vet said she's healthy, just needs her shots next month. Vets are so expensive though!",
    ],
    "hobby": [
        "I love that you're trying new things. I keep saying I will and then I just watch TV after work.",
        "The community center has so many classes, I saw a flyer for evening courses last time I was there.",
        "It's nice to have something that gets you off your phone for a couple of hours a week.",
        "My class is mostly retirees, they are so much better than me and they love giving advice.",
        "I took a class like that in college and quit after two weeks, so I'm impressed you're sticking with it.",
        "The hardest part is practicing between lessons, life just gets in the way.",
    ],
    "trip": [
        "I'm so jealous. I haven't had a real vacation in two years, just the odd weekend away.",
        "The flights were delayed both ways but honestly it was worth every minute of waiting.",
        "Did you try the local food? That's always my favorite part of traveling somewhere new.",
        "We stayed in a tiny apartment with a view, and we walked everywhere, like twenty thousand steps a day.",
        "I've had that place on my list forever, you have to send me your photos and tips.",
        "Coming back to work after a trip like that is the worst, my inbox was a disaster.",
    ],
    "family": [
        "It's nice to have family close by, I only see mine twice a year since they live so far away.",
        "Growing up we fought all the time, but now we actually get along really well.",
        "My parents keep asking when everyone will be home for the holidays again.",
        "Having someone stay over for a while is fun, but the apartment gets small really fast.",
    ],
    "work": [
        "Work has been a rollercoaster this year, so many changes in the team.",
        "My manager keeps promising changes and nothing happens, so I'm a little jealous honestly.",
        "Being recognized at work feels so good, especially after all those late nights.",
        "I've been thinking about asking for a raise, maybe this is the push I needed.",
    ],
    "home": [
        "Moving is so stressful, I swore after the last time I would never do it again.",
        "Finding a good apartment these days is impossible, everything is either tiny or expensive.",
        "Packing up all your stuff really shows you how much junk you own.",
        "A new place is a fresh start though, new coffee shops, new walks, new neighbors.",
    ],
    "sport": [
        "I tried running once and my knees hated me for a week, so respect.",
        "The training must have been brutal, all those early mornings in the cold.",
        "My friend does those races every year and always says the crowd makes it worth it.",
    ],
    "books": [
        "I've been in such a reading slump lately, nothing grabs me.",
        "I mostly listen to audiobooks on my commute now, it's the only time I have.",
        "My book club picked something so boring this month, I couldn't finish it.",
    ],
}
CALLBACKS = {  # later sessions come back to earlier news, without repeating the asked facts
    "pet": ["How is the little one settling in?", "She's doing great, she sleeps at the foot of the bed now and snores like a tiny bear."],
    "hobby": ["Are you still going to those classes?", "Every week! I'm not good yet, but I look forward to it more than anything else."],
    "trip": ["Have you printed any of your vacation photos?", "A few, they're on the fridge. I keep looking at them and planning the next trip."],
    "family": ["How's your family doing these days?", "Good! Everyone is busy but we have dinner together on Sundays when we can."],
}
CLOSINGS = [
    "Anyway, I have to run, talk soon!", "I should get going, but this was fun. Bye!",
    "Okay, dinner is ready here. Catch up soon?", "Let's talk again next week!",
]
CLOSE_BACK = ["Bye! Take care.", "Talk soon, {o}!", "Sounds good, have a great evening!", "Definitely, see you!"]


@dataclass
class Turn:
    speaker: str
    text: str
    time: float  # when it was said (seconds since the epoch)
    session: int

    @property
    def line(self) -> str:
        return f"{self.speaker}: {self.text}"


@dataclass
class Question:
    kind: str
    text: str
    answers: list[str]  # a reply is correct if it contains one of these (case-insensitive)
    evidence: list[int]  # indices of the turns that hold the evidence


@dataclass
class Conversation:
    speakers: tuple[str, str]
    turns: list[Turn]
    questions: list[Question]
    session_dates: list[float] = field(default_factory=list)


def _date(t: datetime) -> list[str]:
    """Ways a reply may say a date."""
    month = t.strftime("%B")
    return [f"{t.day} {month} {t.year}", f"{month} {t.day}, {t.year}", f"{month} {t.day}", f"{t.day} {month}"]


_WHEN = [  # phrase, days before the session
    ("yesterday", 1), ("this morning", 0), ("two days ago", 2), ("on Saturday", None), ("last weekend", None),
]


def _relative(rng: random.Random, session: datetime) -> tuple[str, datetime, bool]:
    """A relative time phrase and the day it means; exact: a single day a reply can name."""
    phrase, back = rng.choice(_WHEN)
    if back is None:  # the Saturday before the session
        back = (session.weekday() - 5) % 7 or 7
        return phrase, session - timedelta(days=back), phrase == "on Saturday"
    return phrase, session - timedelta(days=back), True


class _Builder:
    def __init__(self, rng: random.Random, speakers: tuple[str, str], start: datetime) -> None:
        self.rng = rng
        self.speakers = speakers
        self.turns: list[Turn] = []
        self.questions: list[Question] = []
        self.session = -1
        self.session_start = start
        self.dates: list[float] = []
        self.pending: list[str] = []  # topics talked about, for callbacks

    def other(self, speaker: str) -> str:
        return self.speakers[1] if speaker == self.speakers[0] else self.speakers[0]

    def new_session(self, when: datetime) -> None:
        self.session += 1
        self.session_start = when
        self.dates.append(when.timestamp())

    def say(self, speaker: str, text: str) -> int:
        t = self.session_start + timedelta(minutes=len([x for x in self.turns if x.session == self.session]))
        self.turns.append(Turn(speaker, text, t.timestamp(), self.session))
        return len(self.turns) - 1

    def ask(self, kind: str, text: str, answers: list[str], evidence: list[int]) -> None:
        self.questions.append(Question(kind, text, answers, evidence))

    def small_talk(self) -> str:
        if self.rng.random() < 0.3:
            return self.rng.choice(SMALL_TALK)
        r = self.rng
        return f"{r.choice(OPENERS)} {r.choice(ACTIVITIES)} {r.choice(WHENS)}, {r.choice(COMMENTS)}"

    def chat(self, n: int) -> None:
        """Small talk: statements and agreement, touching everyday topics."""
        speaker = self.rng.choice(self.speakers)
        for _ in range(n):
            self.say(speaker, self.small_talk())
            speaker = self.other(speaker)
            self.say(speaker, self.rng.choice(AGREE) + " " + self.small_talk())
            speaker = self.other(speaker)

    def reveal(self, speaker: str, text: str) -> int:
        """News, often led into and sometimes followed by something else, as people talk."""
        aside = " " + self.small_talk() if self.rng.random() < 0.3 else ""
        return self.say(speaker, self.rng.choice(LEADS) + text + aside)

    def lookalike(self, topic: str, speaker: str) -> None:
        """The other speaker's like story, with other details: a distractor for the questions."""
        r = self.rng
        kind, breeds = r.choice(PETS)
        hobby, place, job, race, book = r.choice(HOBBIES), r.choice(TRIPS), r.choice(JOBS), r.choice(RACES), r.choice(BOOKS)
        lines = {
            "pet": f"My cousin has a {kind} named {r.choice(PET_NAMES)}, a {r.choice(breeds)} who keeps {r.choice(PET_HABITS)}.",
            "hobby": f"I took a {hobby[0]} class years ago, {hobby[1]}, but I gave it up.",
            "trip": f"I went to {place[0]} with {r.choice(FRIENDS)} a few years back, we loved {place[1]}.",
            "work": f"My friend {r.choice(FRIENDS)} just became a {job[0]} at {job[1]}.",
            "home": f"My friend {r.choice(FRIENDS)} moved to {r.choice(CITIES)} last year and loves it.",
            "sport": f"My brother did a {race[0]} last spring and finished in {race[1]}.",
            "books": f"I just finished {book[0]} by {book[1]}, it was fine.",
            "family": f"My {r.choice(RELATIONS)[0]} {r.choice(FRIENDS)} visits every summer.",
        }
        self.say(speaker, lines[topic])

    def react(self, speaker: str, follow: str | None = None) -> int:
        return self.say(self.other(speaker), self.rng.choice(REACTIONS) + " " + (follow or self.rng.choice(FOLLOW)))

    def talk(self, topic: str, speaker: str, n: int | None = None) -> None:
        """A few turns on the topic from both speakers, holding no asked fact."""
        lines = self.rng.sample(TOPICAL[topic], min(len(TOPICAL[topic]), n or self.rng.randrange(2, 5)))
        for i, line in enumerate(lines):
            speaker = self.other(speaker)
            if i == 1 and self.rng.random() < 0.6:
                self.lookalike(topic, speaker)
            self.say(speaker, line)
        self.pending.append(topic)

    def callback(self) -> None:
        """Come back to a topic of an earlier session."""
        topics = [t for t in self.pending if t in CALLBACKS]
        if topics and self.rng.random() < 0.7:
            ask, answer = CALLBACKS[self.rng.choice(topics)]
            speaker = self.rng.choice(self.speakers)
            self.say(speaker, ask)
            self.say(self.other(speaker), answer)


def generate(seed: int, sessions: int = 20, pair: int = 0) -> Conversation:
    """One conversation between two people over `sessions` dated sessions."""
    rng = random.Random(seed * 1000 + pair)
    a, b = rng.sample(PEOPLE, 2)
    start = datetime(2023, 1, 1, 0, 0) + timedelta(days=rng.randrange(120), hours=rng.randrange(9, 20), minutes=rng.randrange(60))
    g = _Builder(rng, (a, b), start)
    plans = {s: _plan(rng, s, g.other(s)) for s in (a, b)}
    events = [(s, e) for s in (a, b) for e in plans[s]]
    rng.shuffle(events)
    # spread the events over the sessions: 2-3 per session, setups before their follow-ups
    events.sort(key=lambda item: item[1].order)
    per_session: list[list[tuple[str, _Event]]] = [[] for _ in range(sessions)]
    for i, item in enumerate(events):
        per_session[min(sessions - 1, i * sessions // max(1, len(events)))].append(item)
    when = start
    for s in range(sessions):
        g.new_session(when)
        first = rng.choice((a, b))
        g.say(first, rng.choice(GREETINGS).format(o=g.other(first)))
        g.say(g.other(first), rng.choice(GREET_BACK).format(o=first))
        g.callback()
        for speaker, event in per_session[s]:
            g.chat(rng.randrange(1, 3))
            event.tell(g, speaker, when)
            g.talk(event.topic, speaker)
        g.chat(rng.randrange(1, 4))
        closer = rng.choice((a, b))
        g.say(closer, rng.choice(CLOSINGS))
        g.say(g.other(closer), rng.choice(CLOSE_BACK).format(o=closer))
        when += timedelta(days=rng.randrange(4, 16), hours=rng.randrange(-3, 4), minutes=rng.randrange(60))
    return Conversation((a, b), g.turns, g.questions, g.dates)


# -- life events: each tells itself into the conversation and asks its questions ------------


@dataclass
class _Event:
    order: float  # where in the conversation it goes (0..1); follow-ups after their setups
    topic = "family"  # what the talk around it is about

    def tell(self, g: _Builder, s: str, day: datetime) -> None:
        raise NotImplementedError


def _plan(rng: random.Random, s: str, other: str) -> list[_Event]:
    """The life events of one speaker, placed along the conversation."""
    pet_kind, breeds = rng.choice(PETS)
    hobbies = rng.sample(HOBBIES, 3)
    trips = rng.sample(TRIPS, 2)
    relation = rng.choice(RELATIONS)
    job = rng.choice(JOBS)
    cities = rng.sample(CITIES, 2)
    race = rng.choice(RACES)
    book = rng.choice(BOOKS)
    sibling = rng.choice([f for f in FRIENDS])
    companion = rng.choice([f for f in FRIENDS if f != sibling])
    return [
        _Home(rng.uniform(0.0, 0.2), cities[0]),
        _Sibling(rng.uniform(0.05, 0.35), relation, sibling, cities[0]),
        _Pet(rng.uniform(0.1, 0.9), pet_kind, rng.choice(breeds), rng.choice(PET_NAMES), rng.choice(PET_HABITS)),
        *[_Hobby(rng.uniform(0.1, 0.95), *h) for h in hobbies],
        *[_Trip(rng.uniform(0.1, 0.95), place, highlight, key, companion) for place, highlight, key in trips],
        _SiblingJob(rng.uniform(0.45, 0.8), relation, sibling, *job),
        _Move(rng.uniform(0.6, 0.95), cities[0], cities[1]),
        _Promotion(rng.uniform(0.2, 0.9), rng.choice(PROMOTIONS)),
        _Race(rng.uniform(0.2, 0.9), *race),
        _Book(rng.uniform(0.1, 0.9), *book),
    ]


@dataclass
class _Home(_Event):
    topic = "home"
    city: str

    def tell(self, g: _Builder, s: str, day: datetime) -> None:
        g.say(g.other(s), "How do you like your neighborhood these days?")
        g.say(s, f"I love it. Living in {self.city} is great, even if the rent keeps going up.")
        g.say(g.other(s), "Ha, rent is rough everywhere.")


@dataclass
class _Sibling(_Event):
    topic = "family"
    relation: tuple[str, str, str]
    name: str
    city: str

    def tell(self, g: _Builder, s: str, day: datetime) -> None:
        rel, he, _ = self.relation
        turn = g.reveal(s, f"My {rel} {self.name} is coming to stay with me for a while, {he} just finished school.")
        g.react(s, f"How long is {he} staying?")
        g.say(s, f"A couple of months, until {he} finds work. It'll be like old times.")
        g.ask("single-hop", f"What is the name of {s}'s {rel}?", [self.name], [turn])


@dataclass
class _SiblingJob(_Event):
    topic = "work"
    relation: tuple[str, str, str]
    name: str
    title: str
    place: str

    def tell(self, g: _Builder, s: str, day: datetime) -> None:
        rel, he, _ = self.relation
        turn = g.reveal(s, f"Big news from {self.name}: {he} got a job as a {self.title} at {self.place}!")
        g.react(s)
        g.say(s, f"{he.capitalize()} starts next month. We celebrated with pizza.")
        setup = next(i for i, q in enumerate(g.questions) if q.answers == [self.name] and f"{s}'s {rel}" in q.text)
        g.ask("multi-hop", f"What job did {s}'s {rel} get?", [self.title], [g.questions[setup].evidence[0], turn])


@dataclass
class _Pet(_Event):
    topic = "pet"
    kind: str
    breed: str
    name: str
    habit: str

    def tell(self, g: _Builder, s: str, day: datetime) -> None:
        phrase, date, exact = _relative(g.rng, day)
        turn = g.reveal(s, f"Guess what, we adopted a {self.kind} from the shelter {phrase}! We named her {self.name}.")
        g.say(g.other(s), g.rng.choice(REACTIONS) + " What kind is she?")
        detail = g.say(s, f"She's a {self.breed}, and she's already {self.habit}.")
        g.ask("single-hop", f"What did {s} name the {self.kind} adopted from the shelter?", [self.name], [turn])
        g.ask("paraphrase", f"What is the name of {s}'s new pet?", [self.name], [turn])
        g.ask("detail", f"What breed is {s}'s {self.kind} {self.name}?", [self.breed], [turn, detail])
        if exact:
            g.ask("temporal", f"When did {s} adopt {self.name}?", _date(date), [turn])


@dataclass
class _Hobby(_Event):
    topic = "hobby"
    what: str
    detail: str
    key: str
    genre: str

    def tell(self, g: _Builder, s: str, day: datetime) -> None:
        turn = g.reveal(s, f"I signed up for a {self.what} class at the community center, the first lesson was last week.")
        g.react(s, "Is it hard?")
        detail = g.say(s, f"A little, but I'm getting the hang of it. {self.detail[0].upper() + self.detail[1:]}.")
        month = day.strftime("%B %Y")
        g.ask("time-scoped", f"What class did {s} sign up for in {month}?", [self.what], [turn])
        g.ask("paraphrase", f"Which {self.genre} has {s} been learning?", [self.what], [turn])
        g.ask("detail", f"What progress did {s} report after starting {self.what}?", [self.key], [turn, detail])


@dataclass
class _Trip(_Event):
    topic = "trip"
    place: str
    highlight: str
    key: str
    companion: str

    def tell(self, g: _Builder, s: str, day: datetime) -> None:
        phrase, date, exact = _relative(g.rng, day)
        turn = g.reveal(s, f"{self.companion} and I got back from {self.place} {phrase}, what a trip.")
        g.react(s, "What was the best part?")
        detail = g.say(s, f"Definitely {self.highlight}. I took about a thousand photos.")
        g.ask("single-hop", f"Where did {s} travel with {self.companion}?", [self.place], [turn])
        g.ask("detail", f"What was the highlight of {s}'s trip to {self.place}?", [self.key], [turn, detail])
        if exact:
            g.ask("temporal", f"When did {s} get back from {self.place}?", _date(date), [turn])


@dataclass
class _Move(_Event):
    topic = "home"
    before: str
    after: str

    def tell(self, g: _Builder, s: str, day: datetime) -> None:
        turn = g.reveal(s, f"We signed the lease today, we're moving to {self.after} at the end of the month!")
        g.react(s, "Are you excited?")
        g.say(s, "Excited and terrified. Packing is going to be a nightmare.")
        home = next(i for i, t in enumerate(g.turns) if t.speaker == s and f"Living in {self.before}" in t.text)
        g.ask("multi-hop", f"Which city did {s} live in before moving to {self.after}?", [self.before], [home, turn])


@dataclass
class _Promotion(_Event):
    topic = "work"
    title: str

    def tell(self, g: _Builder, s: str, day: datetime) -> None:
        phrase, date, exact = _relative(g.rng, day)
        turn = g.reveal(s, f"My boss called me in {phrase} and I got promoted to {self.title}!")
        g.react(s, "You totally deserve it.")
        g.say(s, "Thanks! More meetings, but I get to pick my own projects now.")
        g.ask("paraphrase", f"What is {s}'s new title at work?", [self.title], [turn])
        if exact:
            g.ask("temporal", f"When did {s} get promoted?", _date(date), [turn])


@dataclass
class _Race(_Event):
    topic = "sport"
    race: str
    result: str

    def tell(self, g: _Builder, s: str, day: datetime) -> None:
        turn = g.reveal(s, f"I ran my first {self.race} over the weekend!")
        g.say(g.other(s), g.rng.choice(REACTIONS) + " What was your time?")
        detail = g.say(s, f"{self.result}! Way better than I expected, my legs are still sore.")
        g.ask("detail", f"How long did it take {s} to finish the {self.race}?", [self.result], [turn, detail])


@dataclass
class _Book(_Event):
    topic = "books"
    title: str
    author: str

    def tell(self, g: _Builder, s: str, day: datetime) -> None:
        turn = g.reveal(s, f"I'm reading {self.title} by {self.author} right now, I can't put it down.")
        g.say(g.other(s), "Ooh, is it good? I need something to read.")
        g.say(s, "So good. I'll lend it to you when I'm done.")
        g.ask("paraphrase", f"Which novel did {s} find hard to stop reading?", [self.title], [turn])


def conversations(seed: int, count: int, sessions: int) -> list[Conversation]:
    return [generate(seed, sessions, pair) for pair in range(count)]
