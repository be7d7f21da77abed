import sys
import textwrap

import pytest

from vlrl.registry import register, registered, resolve


def test_register_and_resolve_by_name():
    @register("reward", name="test_exact_match")
    def exact(pred: str, answer: str) -> float:
        return float(pred == answer)

    assert resolve("reward", "test_exact_match") is exact
    assert "test_exact_match" in registered("reward")


def test_duplicate_name_is_rejected():
    @register("task", name="test_dup")
    def first():
        pass

    with pytest.raises(ValueError, match="already registered"):

        @register("task", name="test_dup")
        def second():
            pass


def test_users_own_file_resolves_like_a_builtin(tmp_path):
    f = tmp_path / "my_tools.py"
    f.write_text(textwrap.dedent('''
        from vlrl.registry import register

        @register("tool")
        def invert_colors(x):
            return -x
    '''))
    tool = resolve("tool", f"{f}:invert_colors")
    assert tool(2) == -2
    # importing the file registered it under its own name too
    assert resolve("tool", "invert_colors") is tool


def test_module_path(tmp_path, monkeypatch):
    (tmp_path / "user_pkg_mod.py").write_text("def make_env():\n    return 'env'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert resolve("env", "user_pkg_mod:make_env")() == "env"


def test_entry_point(tmp_path, monkeypatch):
    (tmp_path / "ep_user_tasks.py").write_text("def charts():\n    return 'charts'\n")
    dist = tmp_path / "ep_user_tasks-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-user-tasks\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[vlrl.tasks]\nep_user_charts = ep_user_tasks:charts\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert resolve("task", "ep_user_charts")() == "charts"


def test_unknown_reference_says_what_was_tried():
    with pytest.raises(LookupError, match="unknown tool 'nope'.*vlrl.tools.*module:attribute"):
        resolve("tool", "nope")
    with pytest.raises(LookupError, match="cannot import module 'no_such_module_xyz'"):
        resolve("tool", "no_such_module_xyz:thing")
    with pytest.raises(LookupError, match="has no attribute 'missing'"):
        resolve("tool", "json:missing")


def test_vlrl_core_does_not_import_plugins():
    import subprocess

    code = "import vlrl.cli, vlrl.engines, vlrl.registry, sys; print([m for m in sys.modules if m.split('.')[0] in ('tools','envs','tasks')])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
