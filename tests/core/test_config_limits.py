"""Config and pool hardening: depth, size and alias limits on TOML / JSON / YAML configs and overrides
(one-line errors in well under a second, never a RecursionError or an endless expansion), a module
given with --import runs once, and an env-pool reply the rollout process cannot decode truncates only
its own episode, with the cause."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from agentgym.config import ConfigError, MAX_CONFIG_DEPTH, load_config

REPO = Path(__file__).resolve().parents[2]


def _cli(*args, env=None, timeout=60):
    import os
    return subprocess.run([sys.executable, "-m", "agentgym.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def _billion_laughs(path: Path, aliases_per_level: int = 9, levels: int = 10) -> Path:
    lines = ["rollout:", "  vllm:", "    kwargs:", '      a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        lines.append(f"      a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * aliases_per_level) + "]")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_yaml_alias_bomb_under_the_vllm_kwargs_is_refused_at_once(tmp_path):
    started = time.perf_counter()
    with pytest.raises(ConfigError, match=r"more than 200,000 values .*YAML alias.*refused"):
        load_config(["--config", str(_billion_laughs(tmp_path / "bomb.yaml"))])
    # Many aliases (cheap to write, each doubling the expansion) are refused by count, before expanding.
    lines = ["rollout:", "  vllm:", "    kwargs:", '      a0: &a0 ["x"]']
    lines += [f"      a{i}: &a{i} [*a{i - 1}, *a{i - 1}]" for i in range(1, 80)]
    (tmp_path / "many.yaml").write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match=r"more than 100 YAML aliases"):
        load_config(["--config", str(tmp_path / "many.yaml")])
    assert time.perf_counter() - started < 5


@pytest.mark.parametrize("suffix,text", [
    (".toml", "x = " + "[" * 50_000 + "]" * 50_000 + "\n"),
    (".json", '{"env": {"kwargs": {"a": ' + "[" * 50_000 + "]" * 50_000 + "}}}"),
    (".yaml", "env:\n  kwargs:\n    a: " + "[" * 50_000 + "]" * 50_000 + "\n"),
    (".json", '{"env": {"kwargs": {"a": ' + "[" * (MAX_CONFIG_DEPTH + 5) + "]" * (MAX_CONFIG_DEPTH + 5) + "}}}"),
])
def test_deeply_nested_config_files_are_one_line_errors(tmp_path, suffix, text):
    path = tmp_path / f"deep{suffix}"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"nested (too deeply|deeper than 32)") as info:
        load_config(["--config", str(path)])
    assert "\n" not in str(info.value)


def test_cli_refuses_bombs_and_deep_overrides_in_one_line_with_exit_2(tmp_path):
    bomb = _billion_laughs(tmp_path / "bomb.yaml")
    r = _cli("train", "--config", str(bomb))
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "refused" in r.stderr
    r = _cli("train", "--rollout.vllm.kwargs", "[" * 30_000 + "]" * 30_000)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "nested too deeply" in r.stderr


def test_oversized_and_malformed_config_files_are_clear_errors(tmp_path):
    big = tmp_path / "big.json"
    big.write_text('{"env": {"task_ids": ["' + "x" * (5 << 20) + '"]}}')
    with pytest.raises(ConfigError, match="larger than 4,194,304 bytes"):
        load_config(["--config", str(big)])
    bad = tmp_path / "bad.yaml"
    bad.write_text("env: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(["--config", str(bad)])
    tagged = tmp_path / "tagged.yaml"  # the safe loader builds no Python objects
    tagged.write_text("env: !!python/object/apply:os.system ['touch /tmp/agentgym-pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(["--config", str(tagged)])
    ok = tmp_path / "ok.yaml"
    ok.write_text("rollout:\n  vllm: {kwargs: &k {max_model_len: 8192}}\ntrain:\n  updates: 3\n")
    cfg = load_config(["--config", str(ok), "--rollout.backend", "vllm"])
    assert cfg.rollout.settings.kwargs == {"max_model_len": 8192} and cfg.train.updates == 3


def test_a_plugin_file_given_with_import_runs_once(tmp_path):
    marker = tmp_path / "ran.txt"
    plugin = tmp_path / "once_plugin.py"
    plugin.write_text(f"with open({str(marker)!r}, 'a') as f:\n    f.write('ran\\n')\n")
    r = _cli("train", "--import", str(plugin), "--train.updates", "1", "--help")
    assert r.returncode == 0, r.stderr[-2000:]
    assert marker.read_text() == "ran\n"


POISON_PLUGIN = '''
import os
import gymnasium as gym
from agentgym.envs.echo.env import EchoEnv


def _only_in(pid):
    if os.getpid() != pid:
        raise TypeError("this object cannot be rebuilt outside the env worker")
    return "fine"


class Poison:
    def __reduce__(self):
        return (_only_in, (os.getpid(),))


class PoisonEnv(EchoEnv):
    """Echo whose step info for 'river' holds a value the rollout process cannot unpickle."""

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        if self._word == "river":
            info = {**info, "blob": Poison()}
        return obs, reward, terminated, truncated, info


if "pooltest/Poison-v0" not in gym.registry:
    gym.register(id="pooltest/Poison-v0", entry_point=PoisonEnv, disable_env_checker=True)
'''


def test_an_undecodable_pool_reply_truncates_only_its_episode_with_the_cause(tmp_path):
    from agentgym.agents.scripted import ScriptedPolicy
    from agentgym.plugins import import_plugins
    from agentgym.rollout import rollout
    plugin = tmp_path / "pool_poison_envs.py"
    plugin.write_text(POISON_PLUGIN)
    import_plugins(str(plugin))
    words = ["apple", "river", "stone", "ember"]
    say = lambda conv: conv[1 if conv[0]["role"] == "system" else 0]["content"].split()[-1]  # noqa: E731
    trajs = rollout(ScriptedPolicy(say), "pooltest/Poison-v0",
                    [{"word": w} for w in words], progress=False, workers=1)
    by_task = {t.task_id: t for t in trajs}
    assert len(trajs) == 4
    river = next(t for k, t in by_task.items() if "river" in k)
    assert river.truncated and not river.success
    assert "could not be decoded in the rollout process" in river.error and "TypeError" in river.error
    others = [t for k, t in by_task.items() if "river" not in k]
    assert all(t.success and t.error is None for t in others), [(t.task_id, t.error) for t in others]
