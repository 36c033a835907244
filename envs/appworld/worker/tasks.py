"""The project's AppWorld-engine tasks (runs INSIDE the AppWorld virtualenv at build time).

Each generator turns the world manifest into task instances: an instruction, the solution code an
agent could send in one action, a plausible WRONG solution (used by the tests: it must fail with
``wrong_fails`` named), the expected answer, and the evaluation (AppWorld's ``evaluate(test, ...)``
format, checking the end state and the answer). Task ids are ``<generator>_<n>``.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from textwrap import dedent

from world import WORLD_DATETIME

LOGIN = dedent("""\
    profile = apis.supervisor.show_profile()
    passwords = {a["account_name"]: a["password"] for a in apis.supervisor.show_account_passwords()}
    """)


def login(app: str) -> str:
    user = 'profile["phone_number"]' if app == "phone" else 'profile["email"]'
    return (f'{app}_token = apis.{app}.login(username={user}, '
            f'password=passwords["{app}"])["access_token"]\n')


def paged(var: str, call: str) -> str:
    """Code collecting every page of a paginated API call into ``var``."""
    return dedent(f"""\
        {var} = []
        page = 0
        while True:
            batch = {call}
            if not batch:
                break
            {var} += batch
            page += 1
        """)


ANSWER_HELPER = dedent("""\
    import json

    def _answer(models):
        tasks = models.end.supervisor.Task.all()
        if not tasks or tasks[0].answer is None:
            return None
        return json.loads(tasks[0].answer)
    """)


@dataclass
class Instance:
    """One task: what the builder writes to disk."""

    instruction: str
    solution: str
    wrong: str
    wrong_fails: str  # the requirement text of the test the wrong solution must fail
    answer: object
    public: dict
    supervisor: int  # person index


class Generator:
    """A family of tasks sharing one evaluation; subclasses fill ``instances``."""

    name: str = ""
    apps: tuple[str, ...] = ()
    difficulty: int = 1
    evaluation: str = ""

    def instances(self, world: dict, models, rng: random.Random, n: int) -> list[Instance]:
        raise NotImplementedError


# --------------------------------------------------------------------------------- generators
class NoteCreate(Generator):
    name, apps, difficulty = "notecreate", ("simple_note",), 1
    evaluation = ANSWER_HELPER + dedent("""\
        def evaluate(test, public_data, private_data, main_user, models, ground_truth_answer):
            added, updated, removed = models.changed_records("simple_note.Note")
            with test("exactly one note is created and no note is updated or deleted"):
                test.case(len(added), "==", 1)
                test.case(len(updated) + len(removed), "==", 0)
            note = added[0] if added else None
            with test("the new note belongs to the supervisor"):
                test.case(note is not None and note.user_id, "==", public_data.user_id)
            with test("the new note has the requested title"):
                test.case(note is not None and note.title.strip(), "==", public_data.title)
            with test("the new note has the requested content"):
                test.case(note is not None and note.content.strip(), "==", public_data.content)
            with test("no answer is given"):
                test.answer(_answer(models), ground_truth_answer)
        """)

    def instances(self, world, models, rng, n):
        items = [("Packing list", "passport, charger, rain jacket"),
                 ("Call mom", "Sunday at 6pm about the trip"),
                 ("Gym plan", "Mon legs, Wed back, Fri chest"),
                 ("Gift ideas", "record player, cookbook, plant"),
                 ("Meeting notes", "decided to move launch to June"),
                 ("Reading list", "Piranesi, Middlemarch, Dune")]
        out = []
        for i, (title, content) in enumerate(rng.sample(items, n)):
            p = rng.randrange(len(world["people"]))
            sol = LOGIN + login("simple_note") + (
                f'apis.simple_note.create_note(access_token=simple_note_token, title={title!r}, content={content!r})\n'
                'apis.supervisor.complete_task()\n')
            wrong = sol.replace(f"title={title!r}", f"title={title.lower() + ' draft'!r}")
            out.append(Instance(f'Create a note in Simple Note titled "{title}" with the content "{content}".',
                                sol, wrong, "the new note has the requested title", None,
                                {"user_id": p + 1, "title": title, "content": content}, p))
        return out


class NoteCount(Generator):
    name, apps, difficulty = "notecount", ("simple_note",), 1
    evaluation = ANSWER_HELPER + dedent("""\
        def evaluate(test, public_data, private_data, main_user, models, ground_truth_answer):
            with test("the answer is the number of notes with the tag"):
                test.answer(_answer(models), ground_truth_answer)
            with test("no note is changed"):
                test.case(models.changed_model_names(include=["simple_note.Note"]), "==", set())
        """)

    def instances(self, world, models, rng, n):
        out = []
        for p in rng.sample(range(len(world["people"])), n):
            notes = models.simple_note.Note.find_all(user_id=p + 1)
            tag = rng.choice(sorted({t for note in notes for t in note.tags}))
            count = sum(tag in note.tags for note in notes)
            sol = LOGIN + login("simple_note") + paged(
                "notes", "apis.simple_note.search_notes(access_token=simple_note_token, page_index=page, page_limit=20)"
            ) + f'apis.supervisor.complete_task(answer=sum({tag!r} in n["tags"] for n in notes))\n'
            wrong = sol.replace("answer=sum(", "answer=1 + sum(")  # an off-by-one count
            out.append(Instance(f'How many of my notes in Simple Note are tagged "{tag}"?', sol, wrong,
                                "the answer is the number of notes with the tag", count,
                                {"user_id": p + 1, "tag": tag}, p))
        return out


class TodoComplete(Generator):
    name, apps, difficulty = "todocomplete", ("todoist",), 2
    evaluation = ANSWER_HELPER + dedent("""\
        def evaluate(test, public_data, private_data, main_user, models, ground_truth_answer):
            tasks = models.end.todoist.Task.find_all(project_id=public_data.project_id)
            with test("every task of the project is completed"):
                test.case(all(t.is_completed for t in tasks), "==", True)
            added, updated, removed = models.changed_records("todoist.Task")
            with test("only tasks of the project are changed and none is added or deleted"):
                test.case(len(added) + len(removed), "==", 0)
                test.case({t.project_id for t in updated} <= {public_data.project_id}, "==", True)
            with test("no answer is given"):
                test.answer(_answer(models), ground_truth_answer)
        """)

    def instances(self, world, models, rng, n):
        out = []
        candidates = [pr for pr in models.todoist.Project.all() if not pr.is_inbox and
                      sum(not t.is_completed for t in models.todoist.Task.find_all(project_id=pr.id)) >= 2]
        for pr in rng.sample(candidates, n):
            p = pr.user_id - 1
            sol = LOGIN + login("todoist") + dedent(f"""\
                projects = apis.todoist.show_projects(access_token=todoist_token, page_limit=50)
                project = [pr for pr in projects if pr["name"] == {pr.name!r}][0]
                listing = apis.todoist.show_tasks(access_token=todoist_token, project_id=project["project_id"])
                tasks = listing["no_section_tasks"] + [t for s in listing["sections"] for t in s["tasks"]]
                for task in tasks:
                    if not task["is_completed"]:
                        apis.todoist.update_task(access_token=todoist_token, task_id=task["task_id"], is_completed=True)
                apis.supervisor.complete_task()
                """)
            wrong = sol.replace("for task in tasks:", "for task in tasks[-1:]:")
            wrong = wrong.replace("if not task[\"is_completed\"]:", "if True:")
            # complete only the last task: the others stay open
            out.append(Instance(f'Mark every unfinished task in my Todoist project "{pr.name}" as completed.',
                                sol, wrong, "every task of the project is completed", None,
                                {"user_id": p + 1, "project_id": pr.id}, p))
        return out


class VenmoPay(Generator):
    name, apps, difficulty = "venmopay", ("venmo",), 2
    evaluation = ANSWER_HELPER + dedent("""\
        def evaluate(test, public_data, private_data, main_user, models, ground_truth_answer):
            added, updated, removed = models.changed_records("venmo.Transaction")
            with test("exactly one transaction is made"):
                test.case(len(added), "==", 1)
            t = added[0] if added else None
            with test("the payment goes from the supervisor to the friend"):
                test.case(t is not None and (t.sender_id, t.receiver_id), "==",
                          (public_data.user_id, public_data.friend_id))
            with test("the amount is right"):
                test.case(t is not None and round(t.amount, 2), "==", public_data.amount)
            with test("the note is right"):
                test.case(t is not None and (t.description or "").strip(), "==", public_data.note)
            with test("no answer is given"):
                test.answer(_answer(models), ground_truth_answer)
        """)

    def instances(self, world, models, rng, n):
        out = []
        notes = ["dinner at Luigi's", "concert tickets", "half of the cab", "movie night", "farmers market"]
        for k, p in enumerate(rng.sample(range(len(world["people"])), n)):
            f = rng.choice(world["friends"][str(p)])
            friend = world["people"][f]
            amount = float(rng.randint(8, 60))
            note = notes[k % len(notes)]
            sol = LOGIN + login("venmo") + dedent(f"""\
                apis.venmo.create_transaction(access_token=venmo_token, receiver_email={friend["email"]!r}, amount={amount!r}, description={note!r})
                apis.supervisor.complete_task()
                """)
            wrong = sol.replace(f"amount={amount!r}", f"amount={amount + 5!r}")
            instruction = (f'Send ${amount:g} to my friend {friend["first_name"]} {friend["last_name"]} '
                           f'(email {friend["email"]}) on Venmo with the note "{note}".')
            out.append(Instance(instruction, sol, wrong, "the amount is right", None,
                                {"user_id": p + 1, "friend_id": f + 1, "amount": amount, "note": note}, p))
        return out


class PhoneText(Generator):
    name, apps, difficulty = "phonetext", ("phone",), 1
    evaluation = ANSWER_HELPER + dedent("""\
        def evaluate(test, public_data, private_data, main_user, models, ground_truth_answer):
            added, _, _ = models.changed_records("phone.GlobalTextMessage")
            with test("exactly one text message is sent"):
                test.case(len(added), "==", 1)
            m = added[0] if added else None
            with test("the message goes to the right contact"):
                test.case(m is not None and (m.sender_id, m.receiver_id), "==",
                          (public_data.user_id, public_data.friend_id))
            with test("the message text is right"):
                test.case(m is not None and m.message.strip(), "==", public_data.message)
            with test("no answer is given"):
                test.answer(_answer(models), ground_truth_answer)
        """)

    def instances(self, world, models, rng, n):
        out = []
        texts = ["I'll bring the snacks", "Landing at 7, see you soon", "Don't forget the keys",
                 "Meeting moved to 3pm", "Happy anniversary!"]
        for k, p in enumerate(rng.sample(range(len(world["people"])), n)):
            f = rng.choice(world["friends"][str(p)])
            friend = world["people"][f]
            msg = texts[k % len(texts)]
            sol = LOGIN + login("phone") + paged(
                "contacts", f'apis.phone.search_contacts(access_token=phone_token, query={friend["first_name"]!r}, page_index=page, page_limit=20)'
            ) + dedent(f"""\
                contact = [c for c in contacts if c["first_name"] == {friend["first_name"]!r} and c["last_name"] == {friend["last_name"]!r}][0]
                apis.phone.send_text_message(access_token=phone_token, phone_number=contact["phone_number"], message={msg!r})
                apis.supervisor.complete_task()
                """)
            wrong = sol.replace(f"message={msg!r}", f"message={msg.upper() + '!!'!r}")
            out.append(Instance(f'Text my contact {friend["first_name"]} {friend["last_name"]} on my phone: "{msg}".',
                                sol, wrong, "the message text is right", None,
                                {"user_id": p + 1, "friend_id": f + 1, "message": msg}, p))
        return out


class SpotifyArtistPlaylist(Generator):
    name, apps, difficulty = "spotifyartist", ("spotify",), 2
    evaluation = ANSWER_HELPER + dedent("""\
        def evaluate(test, public_data, private_data, main_user, models, ground_truth_answer):
            added, _, _ = models.changed_records("spotify.Playlist")
            with test("exactly one playlist is created with the requested title"):
                test.case(len(added), "==", 1)
                test.case(added[0].title.strip(), "==", public_data.title)
            songs = set()
            if added:
                songs = {ps.song_id for ps in models.end.spotify.PlaylistSong.find_all(playlist_id=added[0].id)}
            with test("the playlist holds exactly the library songs by the artist"):
                test.case(songs, "==", set(private_data.song_ids))
            with test("no answer is given"):
                test.answer(_answer(models), ground_truth_answer)
        """)

    def instances(self, world, models, rng, n):
        out = []
        for p in rng.sample(range(len(world["people"])), len(world["people"])):
            if len(out) == n:
                break
            lib = models.spotify.UserLibrarySong.find_all(user_id=p + 1)
            by_artist: dict[int, list[int]] = {}
            for entry in lib:
                song = models.spotify.Song.by_id(entry.song_id)
                by_artist.setdefault(song.artist_ids[0], []).append(song.id)
            choices = sorted(a for a, ids in by_artist.items() if len(ids) >= 2)
            if not choices:
                continue
            artist_id = rng.choice(choices)
            artist = world["artists"][artist_id - 1]
            title = f"Best of {artist}"
            sol = LOGIN + login("spotify") + paged(
                "library", "apis.spotify.show_song_library(access_token=spotify_token, page_index=page, page_limit=20)"
            ) + dedent(f"""\
                playlist_id = apis.spotify.create_playlist(access_token=spotify_token, title={title!r})["playlist_id"]
                for song in library:
                    if any(a["name"] == {artist!r} for a in song["artists"]):
                        apis.spotify.add_song_to_playlist(access_token=spotify_token, playlist_id=playlist_id, song_id=song["song_id"])
                apis.supervisor.complete_task()
                """)
            wrong = sol.replace(f'if any(a["name"] == {artist!r} for a in song["artists"]):', "if True:")
            out.append(Instance(f'Create a Spotify playlist titled "{title}" containing every song in my song '
                                f'library by {artist}.', sol, wrong,
                                "the playlist holds exactly the library songs by the artist", None,
                                {"user_id": p + 1, "title": title}, p))
            out[-1].public["_private"] = {"song_ids": sorted(by_artist[artist_id])}
        return out


class SplitwiseTotal(Generator):
    name, apps, difficulty = "splitwisetotal", ("splitwise",), 2
    evaluation = ANSWER_HELPER + dedent("""\
        def evaluate(test, public_data, private_data, main_user, models, ground_truth_answer):
            with test("the answer is the total of the group's expenses"):
                test.answer(_answer(models), ground_truth_answer)
            with test("nothing in Splitwise is changed"):
                test.case(models.changed_model_names(include=["splitwise.Expense", "splitwise.Payment",
                                                              "splitwise.Group"]), "==", set())
        """)

    def instances(self, world, models, rng, n):
        out = []
        groups = world["splitwise_groups"]
        for g in rng.sample(range(len(groups)), n):
            p = rng.choice(groups[g]["members"])
            total = round(sum(e.amount for e in models.splitwise.Expense.find_all(group_id=g + 1)), 2)
            name = groups[g]["name"]
            sol = LOGIN + login("splitwise") + dedent(f"""\
                groups = apis.splitwise.show_groups(access_token=splitwise_token, page_limit=50)
                group = [g for g in groups if g["name"] == {name!r}][0]
                """) + paged(
                "expenses", 'apis.splitwise.show_group_expenses(access_token=splitwise_token, group_id=group["group_id"], page_index=page, page_limit=20)'
            ) + "apis.supervisor.complete_task(answer=round(sum(e['paid_amount'] for e in expenses), 2))\n"
            wrong = sol.replace("page_limit=20)", "page_limit=20)[:1]")
            out.append(Instance(f'What is the total amount of all expenses recorded in my Splitwise group "{name}"?',
                                sol, wrong, "the answer is the total of the group's expenses",
                                int(total) if float(total).is_integer() else total,
                                {"user_id": p + 1, "group_id": g + 1}, p))
        return out


class NoteToFile(Generator):
    name, apps, difficulty = "notetofile", ("simple_note", "file_system"), 3
    evaluation = ANSWER_HELPER + dedent("""\
        def evaluate(test, public_data, private_data, main_user, models, ground_truth_answer):
            added, _, _ = models.changed_records("file_system.File")
            with test("exactly one file is created"):
                test.case(len(added), "==", 1)
            f = added[0] if added else None
            with test("the file is at the requested path"):
                test.case(f is not None and f.path, "==", public_data.path)
            with test("the file holds the note's content"):
                test.case(f is not None and f.content.strip(), "==", private_data.content)
            with test("no note is changed"):
                test.case(models.changed_model_names(include=["simple_note.Note"]), "==", set())
            with test("no answer is given"):
                test.answer(_answer(models), ground_truth_answer)
        """)

    def instances(self, world, models, rng, n):
        out = []
        for p in rng.sample(range(len(world["people"])), n):
            person = world["people"][p]
            note = rng.choice(models.simple_note.Note.find_all(user_id=p + 1))
            slug = note.title.lower().replace(" ", "_")
            path = f"/home/{person['first_name'].lower()}/documents/{slug}.txt"
            sol = LOGIN + login("simple_note") + login("file_system") + paged(
                "notes", f"apis.simple_note.search_notes(access_token=simple_note_token, query={note.title!r}, page_index=page, page_limit=20)"
            ) + dedent(f"""\
                note_id = [n for n in notes if n["title"] == {note.title!r}][0]["note_id"]
                content = apis.simple_note.show_note(access_token=simple_note_token, note_id=note_id)["content"]
                apis.file_system.create_file(access_token=file_system_token, file_path="~/documents/{slug}.txt", content=content)
                apis.supervisor.complete_task()
                """)
            wrong = sol.replace(f'file_path="~/documents/{slug}.txt"', f'file_path="~/{slug}.txt"')
            out.append(Instance(f'Save the content of my Simple Note titled "{note.title}" into a new file '
                                f'~/documents/{slug}.txt in my file system.', sol, wrong,
                                "the file is at the requested path", None,
                                {"user_id": p + 1, "path": path, "_private": {"content": note.content}}, p))
        return out


class GroupRequest(Generator):
    name, apps, difficulty = "grouprequest", ("splitwise", "venmo"), 3
    evaluation = ANSWER_HELPER + dedent("""\
        def evaluate(test, public_data, private_data, main_user, models, ground_truth_answer):
            added, _, _ = models.changed_records("venmo.PaymentRequest")
            with test("requests go from the supervisor to exactly the other group members"):
                test.case(sorted(r.receiver_id for r in added), "==", sorted(private_data.member_ids))
                test.case({r.sender_id for r in added} <= {public_data.user_id}, "==", True)
            with test("every request is for the requested amount"):
                test.case({round(r.amount, 2) for r in added}, "==", {public_data.amount})
            with test("no money is sent"):
                test.case(models.changed_model_names(include=["venmo.Transaction"]), "==", set())
            with test("no answer is given"):
                test.answer(_answer(models), ground_truth_answer)
        """)

    def instances(self, world, models, rng, n):
        out = []
        groups = world["splitwise_groups"]
        for k, g in enumerate(rng.sample(range(len(groups)), n)):
            members = groups[g]["members"]
            p = members[k % len(members)]
            others = [m for m in members if m != p]
            amount = float(rng.randint(10, 40))
            name = groups[g]["name"]
            sol = LOGIN + login("splitwise") + login("venmo") + dedent(f"""\
                groups = apis.splitwise.show_groups(access_token=splitwise_token, page_limit=50)
                group = [g for g in groups if g["name"] == {name!r}][0]
                for member in group["members"]:
                    if member["email"] != profile["email"]:
                        apis.venmo.create_payment_request(access_token=venmo_token, user_email=member["email"], amount={amount!r}, description={name + ' share'!r})
                apis.supervisor.complete_task()
                """)
            wrong = sol.replace('for member in group["members"]:', 'for member in group["members"][:2]:')
            out.append(Instance(f'Request ${amount:g} on Venmo from every other member of my Splitwise group '
                                f'"{name}", with the description "{name} share".', sol, wrong,
                                "requests go from the supervisor to exactly the other group members", None,
                                {"user_id": p + 1, "amount": amount,
                                 "_private": {"member_ids": [m + 1 for m in others]}}, p))
        return out


GENERATORS = [NoteCreate(), NoteCount(), TodoComplete(), VenmoPay(), PhoneText(),
              SpotifyArtistPlaylist(), SplitwiseTotal(), NoteToFile(), GroupRequest()]
INSTANCES_PER_GENERATOR = 5
SPLITS = {1: "train", 2: "train", 3: "train", 4: "dev", 5: "test"}  # by instance number


# --------------------------------------------------------------------------------- writing
def _supervisor_rows(models, person: dict, instruction: str) -> None:
    sup = models.supervisor
    sup.Supervisor.create(first_name=person["first_name"], last_name=person["last_name"],
                          email=person["email"], phone_number=person["phone_number"],
                          birthday=person["birthday"], sex=person["sex"]).save()
    sup.Task.create(supervisor_id=1, instruction=instruction).save()
    sup.AccountPassword.save_all([sup.AccountPassword.create(supervisor_id=1, account_name=app, password=pw)
                                  for app, pw in person["passwords"].items()])
    sup.PaymentCard.create(supervisor_id=1, owner_name=f'{person["first_name"]} {person["last_name"]}',
                           card_name="Visa", card_number=person["card_number"], expiry_year=2027,
                           expiry_month=8, cvv_number=100 + person["index"]).save()


def build_tasks(data: Path, world: dict) -> dict[str, list[str]]:
    """Write every task under data/tasks and return {split: [task ids]}."""
    from appworld.apps import get_all_apps
    from appworld.apps.admin.models import MainUserMunch
    from appworld.apps.api_lib import set_local_date_and_time
    from appworld.apps.model_lib import CachedDBHandler
    from appworld.collections.models import ModelCollection
    from appworld.common.constants import DB_VERSION
    from appworld.task import Task

    rng = random.Random(world["seed"] + 1)
    base = str(data / "base_dbs")
    apps = list(get_all_apps())
    freezer = set_local_date_and_time(WORLD_DATETIME)
    splits: dict[str, list[str]] = {"train": [], "dev": [], "test": []}
    try:
        reader = ModelCollection.load(from_db_home_path=base, to_db_home_path=":memory:reader", load_apps=apps)
        plans = [(gen, inst) for gen in GENERATORS
                 for inst in gen.instances(world, reader, rng, INSTANCES_PER_GENERATOR)]
        counters: dict[str, int] = {}
        for gen, inst in plans:
            counters[gen.name] = counters.get(gen.name, 0) + 1
            task_id = f"{gen.name}_{counters[gen.name]}"
            person = world["people"][inst.supervisor]
            models = ModelCollection.load(from_db_home_path=base, to_db_home_path=f":memory:task_input-{task_id}",
                                          load_apps=apps)
            _supervisor_rows(models, person, inst.instruction)
            supervisor = MainUserMunch(first_name=person["first_name"], last_name=person["last_name"],
                                       email=person["email"], phone_number=person["phone_number"])
            task = Task(id=task_id, instruction=inst.instruction, supervisor=supervisor,
                        datetime=WORLD_DATETIME, allowed_apps=list(get_all_apps(skip_admin=True)),
                        db_version=DB_VERSION, model_collection=models)
            task.save(delete_if_exists=True, save_ground_truth=False, model_collection_format="changes")
            CachedDBHandler.reset(f"task_input-{task_id}")
            public = {k: v for k, v in inst.public.items() if not k.startswith("_")}
            private = inst.public.get("_private", {})
            gt = data / "tasks" / task_id / "ground_truth"
            gt.mkdir(parents=True, exist_ok=True)
            files = {
                "metadata.json": {"mode": "minimal", "difficulty": gen.difficulty, "num_apps": len(gen.apps),
                                  "num_apis": inst.solution.count("apis."),
                                  "num_solution_code_lines": len(inst.solution.splitlines()),
                                  "generator": gen.name, "apps": list(gen.apps)},
                "public_data.json": public, "private_data.json": private, "answer.json": inst.answer,
                "test_data.json": None, "required_apps.json": list(gen.apps),
                "wrong.json": {"code": inst.wrong, "fails": inst.wrong_fails},
            }
            for name, value in files.items():
                (gt / name).write_text(json.dumps(value, indent=2) + "\n")
            (gt / "evaluation.py").write_text(gen.evaluation)
            (gt / "solution.py").write_text(inst.solution)
            splits[SPLITS[counters[gen.name]]].append(task_id)
    finally:
        freezer.stop()
    return splits
