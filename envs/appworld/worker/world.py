"""Generate the project's AppWorld base world from a seed (runs INSIDE the AppWorld virtualenv).

Everything here goes through the apps' own SQLModel classes (``Model.create`` validates every row
the way the apps' APIs do), so the databases are the apps' real schema filled with the project's
own people and data. Nothing from the official AppWorld data set is used or needed.

The people, note texts, project names, songs and so on below are written for this project.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta

WORLD_DATETIME = datetime(2023, 5, 18, 10, 30, 0)  # the "now" of the base world and every task

FIRST_NAMES = [
    "Adrian", "Beatrice", "Caleb", "Daniela", "Elliot", "Fiona", "Gabriel", "Hannah", "Isaac",
    "Jasmine", "Kevin", "Leila", "Marcus", "Nadia", "Oscar", "Priya", "Quentin", "Rosa", "Samuel",
    "Tanya", "Umar", "Valerie", "Wesley", "Ximena", "Yusuf", "Zara", "Brandon", "Chloe", "Dominic",
    "Erica", "Felix", "Gloria", "Hector", "Irene", "Joel", "Katrina",
]
LAST_NAMES = [
    "Alvarez", "Brooks", "Chen", "Dawson", "Ellis", "Fischer", "Garcia", "Hughes", "Ibrahim",
    "Jensen", "Kowalski", "Lopez", "Moreno", "Nakamura", "Okafor", "Patel", "Quinn", "Reyes",
    "Schmidt", "Thompson", "Underwood", "Vasquez", "Walker", "Xu", "Young", "Zimmerman",
]
APPS_WITH_EMAIL_USERS = ["amazon", "file_system", "spotify", "venmo", "gmail", "splitwise",
                         "simple_note", "todoist"]
NOTE_TAGS = ["work", "personal", "recipes", "travel", "ideas", "finance"]
NOTE_SEEDS = [
    ("Grocery list", "eggs, spinach, oat milk, lentils, basil", ["personal"]),
    ("Sprint retro", "what went well: deploys; to improve: code review latency", ["work"]),
    ("Banana bread", "3 bananas, 2 cups flour, 1 tsp soda, bake 60 min at 175C", ["recipes"]),
    ("Lisbon trip", "Alfama walk, tram 28, pasteis de Belem, LX Factory", ["travel"]),
    ("App idea", "a plant-watering reminder that reads soil sensors", ["ideas"]),
    ("Budget May", "rent 1450, utilities 180, groceries 420, savings 600", ["finance"]),
    ("Book club", "next: The Left Hand of Darkness, meet on the 3rd", ["personal"]),
    ("Quarterly goals", "ship billing v2, hire two engineers, cut p95 latency", ["work"]),
    ("Shakshuka", "tomatoes, peppers, cumin, paprika, 4 eggs, feta", ["recipes"]),
    ("Kyoto plan", "Fushimi Inari early, Arashiyama bamboo, Nishiki market", ["travel"]),
    ("Podcast topics", "urban gardening, remote work, local history", ["ideas"]),
    ("Tax documents", "W-2, 1099-INT, charity receipts, mortgage statement", ["finance"]),
]
PROJECT_NAMES = ["Home Renovation", "Garden", "Work Sprint", "Wedding Planning", "Fitness",
                 "Move Out", "Birthday Party", "Side Project"]
TASK_TITLES = ["Call the contractor", "Buy paint samples", "Plant tomatoes", "Fix the fence",
               "Write design doc", "Review pull requests", "Book the venue", "Order flowers",
               "Run 5k", "Stretch routine", "Pack kitchen", "Cancel internet", "Send invites",
               "Bake the cake", "Set up CI", "Draft README", "Water the lawn", "Buy mulch"]
ARTISTS = [("The Velvet Orchard", "indie"), ("Nova Kestrel", "pop"), ("Deep Harbor", "jazz"),
           ("Lumen Drive", "electronic"), ("Marigold Street", "folk"), ("Static Bloom", "rock"),
           ("Ivory Tide", "classical"), ("Copper Lanterns", "country")]
SONG_WORDS = ["Midnight", "Paper", "River", "Golden", "Echo", "Silent", "Neon", "Wild", "Glass",
              "Summer", "Hollow", "Velvet", "Satellite", "Ember", "Harbor", "Wander"]
SONG_NOUNS = ["Hearts", "Lights", "Roads", "Skies", "Dreams", "Waves", "Shadows", "Fields"]
GROUP_NAMES = ["Roommates", "Ski Trip", "Office Lunch", "Book Club", "Road Trip", "Soccer Team"]
EXPENSE_ITEMS = ["Groceries", "Dinner", "Gas", "Cabin rental", "Tickets", "Pizza", "Utilities",
                 "Coffee", "Lift passes", "Snacks"]
VENMO_NOTES = ["pizza night", "concert tickets", "rent share", "coffee", "birthday gift",
               "uber ride", "brunch", "movie night"]
TEXTS = ["Are we still on for tonight?", "Running 10 minutes late", "Happy birthday!",
         "Can you send me the photos?", "Thanks for dinner", "Call me when you can"]


@dataclass
class Person:
    """A person of the world; ``passwords`` holds one password per app account."""

    index: int
    first_name: str
    last_name: str
    email: str
    phone_number: str
    birthday: str
    sex: str
    passwords: dict[str, str] = field(default_factory=dict)
    card_number: int = 0

    @property
    def name(self) -> str:
        return f"{self.first_name} {self.last_name}"

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("index", "first_name", "last_name", "email",
                                              "phone_number", "birthday", "sex", "passwords",
                                              "card_number")}


def make_people(rng: random.Random, count: int) -> list[Person]:
    firsts = rng.sample(FIRST_NAMES, count)
    people = []
    for i, first in enumerate(firsts):
        last = rng.choice(LAST_NAMES)
        email = f"{first.lower()}.{last.lower()}@gmail.com"
        phone = f"{rng.randint(201, 989)}{rng.randint(200, 999)}{rng.randint(1000, 9999)}"
        birthday = f"{rng.randint(1960, 2002)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        sex = "female" if first in {"Beatrice", "Daniela", "Fiona", "Hannah", "Jasmine", "Leila",
                                    "Nadia", "Priya", "Rosa", "Tanya", "Valerie", "Ximena", "Zara",
                                    "Chloe", "Erica", "Gloria", "Irene", "Katrina"} else "male"
        person = Person(i, first, last, email, phone, birthday, sex)
        for app in [*APPS_WITH_EMAIL_USERS, "phone"]:
            person.passwords[app] = "".join(rng.choice("abcdefghjkmnpqrstuvwxyz23456789") for _ in range(10))
        person.card_number = rng.randint(4 * 10**15, 5 * 10**15 - 1)
        people.append(person)
    return people


def _save(model, rows: list[dict]):
    """Validate every row through the app's model and insert them in one transaction."""
    objects = [model.create(**row) for row in rows]
    model.save_all(objects)
    return objects


def _ago(days: int, hours: int = 0) -> datetime:
    return WORLD_DATETIME - timedelta(days=days, hours=hours)


def build_base_world(models, seed: int, num_people: int = 36) -> dict:
    """Fill an empty ModelCollection (every app, created tables) and return the world manifest.

    The manifest (people with passwords, ids of the generated records) is what task generators
    read to pick realistic task parameters. One ``rng`` feeds the apps in a fixed order, so a seed
    always builds the same world.
    """
    rng = random.Random(seed)
    people = make_people(rng, num_people)
    friends = _fill_admin(models.admin, people, rng)
    _fill_accounts(models, people)
    _fill_notes(models.simple_note, people, rng)
    _fill_todoist(models.todoist, people, rng)
    _fill_venmo(models.venmo, people, friends, rng)
    _fill_phone(models.phone, people, friends, rng)
    _fill_spotify(models.spotify, people, rng)
    members = _fill_splitwise(models.splitwise, num_people, rng)
    _fill_files(models.file_system, people)
    return {
        "seed": seed,
        "datetime": WORLD_DATETIME.isoformat(),
        "people": [p.as_dict() for p in people],
        "friends": {str(i): sorted(js) for i, js in friends.items()},
        "splitwise_groups": [{"name": GROUP_NAMES[g], "members": ms} for g, ms in enumerate(members)],
        "artists": [n for n, _ in ARTISTS],
    }


def _fill_admin(admin, people: list, rng: random.Random) -> dict[int, set[int]]:
    """The people, their passwords, cards and friendships; returns index -> friends' indexes."""
    _save(admin.MainUser, [dict(first_name=p.first_name, last_name=p.last_name, email=p.email,
                                phone_number=p.phone_number, birthday=p.birthday, sex=p.sex)
                           for p in people])
    _save(admin.AccountPassword, [dict(main_user_id=p.index + 1, account_name=app, password=pw)
                                  for p in people for app, pw in p.passwords.items()])
    _save(admin.PaymentCard, [dict(main_user_id=p.index + 1, owner_name=p.name, card_name="Visa",
                                   card_number=p.card_number, expiry_year=2027, expiry_month=8,
                                   cvv_number=100 + p.index, balance=2500.0) for p in people])
    friends = {p.index: set() for p in people}
    for p in people:
        for q in rng.sample(people, 6):
            if q.index != p.index:
                friends[p.index].add(q.index)
                friends[q.index].add(p.index)
    _save(admin.Friendship, [dict(main_user_id=i + 1, friend_id=j + 1)
                             for i, js in friends.items() for j in sorted(js)])
    return friends


def _fill_accounts(models, people: list) -> None:
    """One verified account per person per app (ids follow the people order)."""
    for app in APPS_WITH_EMAIL_USERS:
        user = models[app].User
        _save(user, [dict(first_name=p.first_name, last_name=p.last_name, email=p.email,
                          password=p.passwords[app], verified=True, created_at=_ago(400))
                     if "verified" in user.__fields__ else
                     dict(first_name=p.first_name, last_name=p.last_name, email=p.email,
                          password=p.passwords[app], created_at=_ago(400))
                     for p in people])
    _save(models.phone.User, [dict(first_name=p.first_name, last_name=p.last_name,
                                   phone_number=p.phone_number, password=p.passwords["phone"],
                                   created_at=_ago(400)) for p in people])


def _fill_notes(simple_note, people: list, rng: random.Random) -> None:
    notes = []
    for p in people:
        for title, content, tags in rng.sample(NOTE_SEEDS, rng.randint(3, 6)):
            notes.append(dict(user_id=p.index + 1, title=title, content=content,
                              tags=list(tags), created_at=_ago(rng.randint(2, 90)),
                              updated_at=_ago(1), pinned=rng.random() < 0.2))
    _save(simple_note.Note, notes)


def _fill_todoist(todoist, people: list, rng: random.Random) -> None:
    """An inbox and two projects per person, each with tasks."""
    projects, project_owner = [], []
    for p in people:
        names = ["Inbox", *rng.sample(PROJECT_NAMES, 2)]
        for name in names:
            projects.append(dict(user_id=p.index + 1, name=name, is_inbox=name == "Inbox",
                                 color="blue", created_at=_ago(200)))
            project_owner.append(p.index)
    _save(todoist.Project, projects)
    _save(todoist.ProjectCollaboratorLink, [dict(project_id=i + 1, user_id=owner + 1)
                                            for i, owner in enumerate(project_owner)])
    tasks = []
    for i, owner in enumerate(project_owner):
        for order, title in enumerate(rng.sample(TASK_TITLES, rng.randint(2, 5))):
            tasks.append(dict(project_id=i + 1, user_id=owner + 1, title=title,
                              priority=rng.choice(["high", "medium", "low"]), order_index=order,
                              is_completed=rng.random() < 0.25, created_at=_ago(rng.randint(3, 60)),
                              due_date=WORLD_DATETIME + timedelta(days=rng.randint(-5, 30))))
    _save(todoist.Task, tasks)


def _fill_venmo(venmo, people: list, friends: dict[int, set[int]], rng: random.Random) -> None:
    """Balances, friendships mirroring the people's friendships, payments."""
    for user in venmo.User.all():
        user.venmo_balance = round(rng.uniform(50, 900), 2)
        user.save()
    _save(venmo.Friendship, [dict(user_id=i + 1, friend_id=j + 1)
                             for i, js in friends.items() for j in sorted(js)])
    transactions = []
    for p in people:
        for j in rng.sample(sorted(friends[p.index]), min(3, len(friends[p.index]))):
            transactions.append(dict(sender_id=p.index + 1, receiver_id=j + 1,
                                     amount=float(rng.randint(5, 120)),
                                     description=rng.choice(VENMO_NOTES),
                                     created_at=_ago(rng.randint(1, 45)),
                                     updated_at=_ago(1), private=False))
    _save(venmo.Transaction, transactions)


def _fill_phone(phone, people: list, friends: dict[int, set[int]], rng: random.Random) -> None:
    """Contacts of friends, a few text messages."""
    contacts = []
    for p in people:
        for j in sorted(friends[p.index]):
            q = people[j]
            contacts.append(dict(user_id=p.index + 1, first_name=q.first_name, last_name=q.last_name,
                                 email=q.email, phone_number=q.phone_number,
                                 relationships=[rng.choice(["friend", "coworker", "sibling", "roommate"])],
                                 birthday=q.birthday, created_at=_ago(300)))
    _save(phone.Contact, contacts)
    texts = []
    for p in people:
        for j in rng.sample(sorted(friends[p.index]), 2):
            texts.append(dict(sender_id=p.index + 1, receiver_id=j + 1, message=rng.choice(TEXTS),
                              created_at=_ago(rng.randint(0, 20), rng.randint(0, 23))))
    global_texts = _save(phone.GlobalTextMessage, texts)
    _save(phone.UserTextMessage,
          [dict(global_text_message_id=m.id, user_id=uid, created_at=m.created_at)
           for m in global_texts for uid in (m.sender_id, m.receiver_id)])


def _fill_spotify(spotify, people: list, rng: random.Random) -> None:
    """Artists, albums, songs; each person's library and a playlist."""
    _save(spotify.Artist, [dict(name=n, genre=g, created_at=_ago(900)) for n, g in ARTISTS])
    albums, songs = [], []
    titles = rng.sample([f"{a} {b}" for a in SONG_WORDS for b in SONG_NOUNS], 64)
    for a, (name, genre) in enumerate(ARTISTS):
        albums.append(dict(title=f"{titles[a]} Sessions", artist_ids=[a + 1], genre=genre,
                           release_date=(WORLD_DATETIME - timedelta(days=300 + 40 * a)).isoformat()))
    _save(spotify.Album, albums)
    for s in range(56):
        a = s % len(ARTISTS)
        songs.append(dict(title=titles[8 + s], artist_ids=[a + 1], album_id=a + 1,
                          duration=rng.randint(150, 320), genre=ARTISTS[a][1],
                          release_date=(WORLD_DATETIME - timedelta(days=300 + 40 * a)).isoformat(),
                          play_count=rng.randint(1000, 90000)))
    _save(spotify.Song, songs)
    library = []
    for p in people:
        for s in rng.sample(range(56), 10):
            library.append(dict(user_id=p.index + 1, song_id=s + 1, created_at=_ago(rng.randint(1, 200))))
    _save(spotify.UserLibrarySong, library)
    playlists = _save(spotify.Playlist, [dict(title=f"{p.first_name}'s Favorites", user_id=p.index + 1,
                                              is_public=True, created_at=_ago(100)) for p in people])
    _save(spotify.PlaylistSong, [dict(playlist_id=pl.id, song_id=s + 1, added_at=_ago(50))
                                 for pl in playlists for s in rng.sample(range(56), 5)])


def _fill_splitwise(splitwise, num_people: int, rng: random.Random) -> list[list[int]]:
    """Groups of friends with shared expenses; returns each group's member indexes."""
    groups, members = [], []
    for g, name in enumerate(GROUP_NAMES):
        member_idx = rng.sample(range(num_people), 5)
        groups.append(dict(user_id=member_idx[0] + 1, name=name, description=f"{name} expenses",
                           created_at=_ago(120)))
        members.append(member_idx)
    _save(splitwise.Group, groups)
    _save(splitwise.GroupMember, [dict(group_id=g + 1, user_id=m + 1, joined_at=_ago(110))
                                  for g, ms in enumerate(members) for m in ms])
    expenses, shares = [], []
    for g, ms in enumerate(members):
        for _ in range(rng.randint(3, 5)):
            payer = rng.choice(ms)
            amount = float(rng.randint(12, 240))
            debtors = [m for m in ms if m != payer]
            expenses.append(dict(user_id=payer + 1, payer_id=payer + 1, amount=amount, group_id=g + 1,
                                 debtor_ids=[d + 1 for d in debtors],
                                 participant_ids=[m + 1 for m in ms],
                                 description=rng.choice(EXPENSE_ITEMS), created_at=_ago(rng.randint(2, 90))))
            shares.append([(d + 1, round(amount / len(ms), 2)) for d in debtors])
    saved = _save(splitwise.Expense, expenses)
    _save(splitwise.ExpenseShare, [dict(expense_id=e.id, debtor_id=d, share_amount=a)
                                   for e, sh in zip(saved, shares) for d, a in sh])
    return members


def _fill_files(fs, people: list) -> None:
    """A home directory with a documents folder and a file."""
    dirs = []
    for p in people:
        home = f"/home/{p.first_name.lower()}/"
        dirs += [dict(path=home, user_id=p.index + 1, created_at=_ago(400)),
                 dict(path=home + "documents/", user_id=p.index + 1, created_at=_ago(400)),
                 dict(path=home + "photos/", user_id=p.index + 1, created_at=_ago(400))]
    _save(fs.Directory, dirs)
    _save(fs.File, [dict(path=f"/home/{p.first_name.lower()}/documents/resume.txt", user_id=p.index + 1,
                         content=f"{p.name}\n{p.email}\nExperience: 8 years", created_at=_ago(30))
                    for p in people])
