"""Soak: many episodes per env id, in-process, with env workers and served, and what the process holds.

    nice -n 19 .venv/bin/python benchmarks/soak.py [--episodes 2000] [--chunk 100] [--envs echo alfworld ...]
                                                   [--modes inproc workers served churn] [--json out.json]
    .venv/bin/python benchmarks/soak.py --smoke          # seconds: Echo in every mode, small chunks

Every (env, mode) runs in a fresh child process of its own (``--one ENV MODE``), so one row's envs,
caches and children never count in another's. A scripted policy mixes, per env, reference-like
actions, wrong answers, invalid text (empty, unicode, 2 kB of noise) and, where the env runs code or
calls, runtime errors and blocked code. Episodes go in chunks of ``--chunk``, each chunk one
``RolloutRunner.run()`` (as a trainer's update is):

- ``inproc``: ``env.workers = 0`` (envs in the soaking process, kept between runs);
- ``workers``: ``env.workers = 2`` (``agentgym.envpool``, the shared pool kept between runs);
- ``served``: an ``agentgym serve`` child process on 127.0.0.1 and ``agentgym/Remote-v0`` envs kept
  between chunks, as a trainer's rollout runs keep theirs (a session lasts the whole soak);
- ``churn``: served too, but every chunk's ``Remote-v0`` envs are closed at its end
  (``keep_envs=False``), so sessions open and close all along (the server reuses their envs).

After every chunk it prints the RSS of the process and of all its children (MB), held mappings
(MB of deleted files still mapped, in the process and its children), open fds, threads and children
(process + children), and the chunk's episodes/s. The table at the end gives, per env and mode, the
slope of total RSS after the warm-up (``--warmup`` fraction of the episodes; least squares, MB per
1,000 episodes) and the first and second half slopes, so a linear leak and a levelling one differ.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
MODES = ("inproc", "workers", "served", "churn")
NOISE = "\u2603 " * 1000  # 2 kB of text no env understands


def _turn(conv: list[dict[str, Any]]) -> int:
    return sum(1 for m in conv if m["role"] == "assistant")


def _mix(conv: list[dict[str, Any]], actions: tuple[str, ...]) -> str:
    """The env's actions interleaved with invalid text, varied by episode (first message) and turn."""
    seed = sum(map(ord, str(conv[1 if len(conv) > 1 else 0]["content"])[:200])) + _turn(conv)
    invalid = ("", NOISE, "<action>\x00\x01</action>", '{"name": "act", "arguments": {"command": 7}}')
    pool = actions + invalid[:1 + seed % len(invalid)]
    return pool[seed % len(pool)]


def echo_script(conv: list[dict[str, Any]]) -> str:
    word = conv[-1]["content"].split()[-1] if conv[-1]["role"] == "user" else "apple"
    return _mix(conv, (word, word, "wrong"))


def bfcl_multi_script(conv: list[dict[str, Any]]) -> str:
    if conv[-1]["role"] != "user":  # after a tool result: end the turn in prose
        return "Done."
    return _mix(conv, ("[ls(), pwd()]", "[cd(folder='no_such_folder')]", "[mkdir(dir_name=7, extra=1)]",
                       "[__import__('os').system('ls')]", "[ls(a=1"))


def bfcl_single_script(conv: list[dict[str, Any]]) -> str:
    return _mix(conv, ("[calculate_area(base=10, height=5)]", "[no_such_function(x=1)]", "not a call",
                       "[exec('import os')]"))


def webshop_script(conv: list[dict[str, Any]]) -> str:
    return ("search[shoes]", "click[item - 1]", "click[Buy Now]", "click[no such button]", NOISE,
            "search[]", "click[< Prev]")[_turn(conv) % 7]


def alfworld_script(conv: list[dict[str, Any]]) -> str:
    return _mix(conv, ("look", "inventory", "go to countertop 1", "examine countertop 1", "go to cabinet 1",
                       "open cabinet 1", "take apple 1 from countertop 1", "xyzzy"))


def appworld_script(conv: list[dict[str, Any]]) -> str:
    code = ("print(apis.supervisor.show_profile())", "print(apis.api_docs.show_app_descriptions())",
            "print(1 / 0)", "import os\nos.system('ls /')", "print(apis.no_such_app.call())",
            "apis.supervisor.complete_task(answer='wrong')")
    return _mix(conv, tuple(f"```python\n{c}\n```" for c in code))


# name -> (env id, script, env kwargs, process env, steps per episode)
ENVS: dict[str, tuple[str, Callable, dict[str, Any], dict[str, str], int]] = {
    "echo": ("agentgym/Echo-v0", echo_script, {}, {}, 3),
    "bfcl_single": ("agentgym/BFCLSingleTurn-v0", bfcl_single_script, {}, {}, 1),
    "bfcl_multi": ("agentgym/BFCLMultiTurn-v0", bfcl_multi_script, {"split": "all"}, {}, 6),
    "webshop": ("agentgym/WebShop-v0", webshop_script, {}, {"WEBSHOP_DATA": str(SHARED / "webshop")}, 7),
    "alfworld": ("agentgym/ALFWorld-v0", alfworld_script, {}, {}, 6),
    "appworld": ("agentgym/AppWorld-v0", appworld_script, {"split": "train"}, {}, 4),
}


# ---------------------------------------------------------------------------------------- measuring
def held_mappings_mb(pid: int) -> float:
    """MB of deleted files a process still maps (what a leaked library copy looks like); 0 if unreadable."""
    total = 0
    try:
        with open(f"/proc/{pid}/maps") as maps:
            for line in maps:
                if line.rstrip().endswith("(deleted)"):
                    start, end = line.split()[0].split("-")
                    total += int(end, 16) - int(start, 16)
    except OSError:
        return 0.0
    return total / (1 << 20)


def sample() -> dict[str, float]:
    """RSS, held mappings, fds, threads of this process and all its children; the children's count."""
    import psutil
    me = psutil.Process()
    procs = [me]
    try:
        procs += me.children(recursive=True)
    except psutil.Error:
        pass
    out = {"rss_self_mb": me.memory_info().rss / (1 << 20), "rss_children_mb": 0.0, "pss_mb": 0.0, "held_mb": 0.0,
           "fds": 0, "threads": 0, "children": len(procs) - 1}
    for proc in procs:
        try:
            if proc is not me:
                out["rss_children_mb"] += proc.memory_info().rss / (1 << 20)
            # PSS shares a page among the processes mapping it: forked children (AppWorld's sandbox
            # episodes, env workers) do not count their parent's pages again, as RSS sums do.
            out["pss_mb"] += proc.memory_full_info().pss / (1 << 20)
            out["held_mb"] += held_mappings_mb(proc.pid)
            out["fds"] += proc.num_fds()
            out["threads"] += proc.num_threads()
        except psutil.Error:  # a child that exited (or runs as another user) between listing and asking
            continue
    out["rss_mb"] = out["rss_self_mb"] + out["rss_children_mb"]
    return out


def settle(timeout: float = 30.0, quiet: float = 1.0) -> None:
    """Wait until this process's tree stops changing (the same pids ``quiet`` seconds apart), at most
    ``timeout`` s: a served chunk's sessions are closed by the client at once but by the server
    moments later (an AppWorld session's apps worker and grader), and a sample taken in between
    catches zero, one or two of them still alive."""
    import psutil
    me = psutil.Process()
    deadline = time.monotonic() + timeout
    before = None
    while time.monotonic() < deadline:
        try:
            now = {p.pid for p in me.children(recursive=True)}
        except psutil.Error:
            now = None
        if now is not None and now == before:
            return
        before = now
        time.sleep(quiet)


def slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (episodes, MB), in MB per 1,000 episodes; None with fewer than 2 points."""
    fit = slope_and_interval(points)
    return None if fit is None else fit[0]


def slope_and_interval(points: list[tuple[float, float]]) -> tuple[float, float | None] | None:
    """The least-squares slope (MB per 1,000 episodes) and the half-width of its 95 % interval
    (normal approximation; None with fewer than 3 points): a slope inside its own noise is no trend."""
    if len(points) < 2:
        return None
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    var = sum((x - mx) ** 2 for x, _ in points)
    if var == 0:
        return None
    b = sum((x - mx) * (y - my) for x, y in points) / var
    if n < 3:
        return 1000 * b, None
    residual = sum((y - my - b * (x - mx)) ** 2 for x, y in points) / (n - 2)
    return 1000 * b, 1000 * 1.96 * (residual / var) ** 0.5


def theil_sen(points: list[tuple[float, float]]) -> float | None:
    """The median of the pairwise slopes (MB per 1,000 episodes): a trend that one noisy sample
    (a worker restarting, a cache emptied) cannot move the way it moves least squares."""
    pairs = [(y2 - y1) / (x2 - x1) for i, (x1, y1) in enumerate(points) for x2, y2 in points[i + 1:] if x2 != x1]
    return 1000 * statistics.median(pairs) if pairs else None


# ---------------------------------------------------------------------------------------- one row
def serve_child(env_id: str, kwargs: dict[str, Any], sessions: int) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "agentgym.cli", "serve", env_id, "--port", "0",
                             "--max-sessions", str(sessions), "--env-kwargs", json.dumps(kwargs)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        match = re.search(r"on (http://127\.0\.0\.1:\d+) ", line)
        if match:
            return proc, match.group(1)
    proc.kill()
    raise SystemExit(f"agentgym serve {env_id} did not start (exit {proc.wait()})")


def one(name: str, mode: str, episodes: int, chunk: int, concurrent: int) -> None:
    """Soak one env in one mode in this process; one JSON line per chunk on stdout, then a summary."""
    import gymnasium as gym

    import agentgym  # noqa: F401 - registers the envs
    from agentgym.agents.scripted import ScriptedPolicy
    from agentgym.rollout import RolloutRunner, close_idle_envs

    # A stopped soak (SIGTERM) still runs the finally below: the server child and the env pools go too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    env_id, script, kwargs, _, steps = ENVS[name]
    probe = gym.make(env_id, **kwargs)
    try:
        tasks = probe.unwrapped.tasks()
    finally:
        probe.close()
    gc.collect()  # the probe's reference cycles (an engine's grammar: MB) go now, not amid the samples
    if not tasks:
        raise SystemExit(f"{env_id}: no tasks (see the env's data hint)")
    server = None
    run_env, run_kwargs, workers, keep = env_id, dict(kwargs), 0, True
    if mode == "workers":
        workers = 2
    elif mode in ("served", "churn"):
        server, url = serve_child(env_id, kwargs, concurrent)
        run_env, run_kwargs = "agentgym/Remote-v0", {"url": url, "message_timeout_s": 120.0}
        keep = mode == "served"
    policy = ScriptedPolicy(script)
    done, failed = 0, 0
    try:
        index = 0
        while done < episodes:
            n = min(chunk, episodes - done)
            chunk_tasks = [tasks[(index + i) % len(tasks)] for i in range(n)]
            index += n
            started = time.perf_counter()
            runner = RolloutRunner(policy, run_env, chunk_tasks, env_kwargs=run_kwargs, max_steps=steps,
                                   max_concurrent=concurrent, progress=False, workers=workers, keep_envs=keep,
                                   seed=index)
            trajs = runner.run()
            seconds = time.perf_counter() - started
            done += n
            failed += sum(1 for t in trajs if t.error)
            causes = sorted({t.error.splitlines()[0][:160] for t in trajs if t.error})[:3]
            if server is not None:
                settle()
            # the chunk's trajectories go before the next chunk runs: a loop that holds them meanwhile
            # measures its own holding (with sessions reopened every chunk, ~2 MB per 1,000 ALFWorld
            # episodes of heap fragmentation in this process), not what the framework keeps
            del trajs, runner
            row = {"episodes": done, "eps_per_s": n / seconds, "errors": failed, "error_causes": causes, **sample()}
            print(json.dumps(row), flush=True)
    finally:
        close_idle_envs()
        from agentgym.envpool import close_shared_pools
        close_shared_pools()
        if server is not None:
            server.terminate()
            try:
                out, _ = server.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                out = ""
            # the server's own count at shutdown: "N session(s), M env(s) built, K still open"
            counts = re.search(r"(\d+) session\(s\), (\d+) env\(s\) built", out or "")
            if counts:
                print(json.dumps({"server_sessions": int(counts.group(1)), "server_envs_built": int(counts.group(2))}),
                      flush=True)


# ---------------------------------------------------------------------------------------- the table
def run_row(name: str, mode: str, args: argparse.Namespace) -> dict[str, Any]:
    env_extra = ENVS[name][3]
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", name, mode, "--episodes", str(args.episodes),
           "--chunk", str(args.chunk), "--concurrent", str(args.concurrent)]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **env_extra}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    chunks: list[dict[str, Any]] = []
    server_counts: dict[str, int] = {}
    for line in proc.stdout:
        line = line.strip()
        if not line.startswith("{"):
            continue
        row = json.loads(line)
        if "server_sessions" in row:
            server_counts = row
            continue
        chunks.append(row)
        if args.verbose:
            print(f"  {name:<12}{mode:<8} {row['episodes']:>6} ep  rss {row['rss_self_mb']:7.1f} + "
                  f"{row['rss_children_mb']:7.1f} MB  held {row['held_mb']:6.1f} MB  fds {row['fds']:>4}  "
                  f"threads {row['threads']:>3}  children {row['children']:>2}  {row['eps_per_s']:7.1f} ep/s",
                  flush=True)
            for cause in row.get("error_causes", []):
                print(f"    env error: {cause}", flush=True)
    err = proc.stderr.read()
    rc = proc.wait()
    result = {"env": name, "mode": mode, "rc": rc, "chunks": chunks, "seconds": time.perf_counter() - started,
              **server_counts}
    if rc != 0 or not chunks:
        result["error"] = (err.strip().splitlines() or [f"exit {rc}"])[-1][:200]
        return result
    warm = max(1, int(len(chunks) * args.warmup))
    after = [(c["episodes"], c["rss_mb"]) for c in chunks[warm - 1:]]
    half = len(after) // 2
    fit = slope_and_interval(after)
    result.update(slope=None if fit is None else fit[0], first=slope(after[:half + 1]), second=slope(after[half:]), warm=warm,
                  interval=None if fit is None else fit[1], theil_sen=theil_sen(after),
                  pss_slope=slope([(c["episodes"], c["pss_mb"]) for c in chunks[warm - 1:] if "pss_mb" in c]))
    return result


def fmt(value: float | None, width: int, digits: int = 2) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"


def print_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(f"\n# soak: {args.episodes} episodes per row in chunks of {args.chunk} (one RolloutRunner.run() each), "
          f"{args.concurrent} concurrent, scripted mixed policy; slope = total RSS (process + children) after "
          f"the first {args.warmup:.0%} of episodes, MB per 1,000 episodes, +- its 95 % interval (first half / second "
          "half); Theil-Sen: the median pairwise slope of the same points; PSS slope: the "
          "same of total PSS (a page shared by forked processes counted once); ep/s after the warm-up; fds, "
          "threads, children: after the first chunk > at the end; sessions/envs: a served row's server sessions and "
          "the envs its server built for them")
    print(f"{'env':<12}{'mode':<9}{'episodes':>9}{'errors':>7}{'RSS MB start':>13}{'end':>8}{'slope':>8}"
          f"{'+-':>7}{'halves':>14}{'Theil-Sen':>10}{'PSS slope':>10}{'held MB':>9}{'fds':>9}{'threads':>10}{'children':>10}{'ep/s':>8}"
          f"{'sessions/envs':>15}")
    for r in rows:
        if "error" in r:
            print(f"{r['env']:<12}{r['mode']:<9} failed: {r['error']}")
            continue
        c = r["chunks"]
        first, last = c[0], c[-1]
        rates = [x["eps_per_s"] for x in c[r["warm"]:]] or [x["eps_per_s"] for x in c]
        halves = f"{fmt(r['first'], 6, 1)}/{fmt(r['second'], 6, 1).strip():<6}"
        print(f"{r['env']:<12}{r['mode']:<9}{last['episodes']:>9}{last['errors']:>7}{first['rss_mb']:>13.1f}"
              f"{last['rss_mb']:>8.1f}{fmt(r['slope'], 8)}{fmt(r.get('interval'), 7)}{halves:>14}"
              f"{fmt(r.get('theil_sen'), 10)}{fmt(r.get('pss_slope'), 10)}{last['held_mb']:>9.1f}"
              f"{first['fds']:>4}>{last['fds']:<4}{first['threads']:>5}>{last['threads']:<4}"
              f"{first['children']:>5}>{last['children']:<4}{sum(rates) / len(rates):>8.1f}"
              f"{served_counts(r):>15}")


def served_counts(row: dict[str, Any]) -> str:
    """A served row's sessions and the envs its server built for them ("-" for the others)."""
    return f"{row['server_sessions']}/{row['server_envs_built']}" if "server_sessions" in row else "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", nargs="+", default=list(ENVS), choices=list(ENVS))
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--episodes", type=int, default=2000, help="episodes per env and mode")
    parser.add_argument("--chunk", type=int, default=100, help="episodes per RolloutRunner.run()")
    parser.add_argument("--concurrent", type=int, default=8, help="concurrent episodes (and server sessions)")
    parser.add_argument("--warmup", type=float, default=0.25, help="fraction of episodes left out of the slope")
    parser.add_argument("--smoke", action="store_true", help="seconds: Echo in every mode, 3 chunks of 10")
    parser.add_argument("--json", type=Path, help="write every row's chunks here")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every chunk as it ends")
    parser.add_argument("--one", nargs=2, metavar=("ENV", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.episodes < 1 or args.chunk < 1 or args.concurrent < 1 or not 0 <= args.warmup < 1:
        parser.error("--episodes, --chunk and --concurrent must be >= 1 and --warmup in [0, 1)")
    if args.one:
        if args.one[0] not in ENVS or args.one[1] not in MODES:
            parser.error(f"--one takes an env of {list(ENVS)} and a mode of {list(MODES)}")
        one(args.one[0], args.one[1], args.episodes, args.chunk, args.concurrent)
        return 0
    if args.smoke:
        args.envs, args.episodes, args.chunk, args.concurrent = ["echo"], 30, 10, 4
    rows = []
    for name in args.envs:
        for mode in args.modes:
            rows.append(run_row(name, mode, args))
    print_table(rows, args)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
