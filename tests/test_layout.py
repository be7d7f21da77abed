"""The package's shape: the import layering holds (and breaks on a planted violation), the installed
distribution claims no top-level name but ``vlrl``, and a user's own ``tools`` / ``envs`` / ``tasks``
packages work beside it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = str(Path(sys.executable).with_name("lint-imports"))
SKIP = shutil.ignore_patterns(".git", ".venv", "runs", "build", "*.egg-info", "__pycache__", ".pytest_cache")


def lint_imports(cwd: Path, extra_path: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(extra_path)} if extra_path else None
    return subprocess.run([LINT_IMPORTS, "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_the_layering_contract_holds():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout
    assert "Contracts: 2 kept, 0 broken." in result.stdout


@pytest.mark.parametrize("module, planted, reported", [
    ("rollout/manager.py", "import vlrl.builtin.tasks.charts", "vlrl.rollout.manager -> vlrl.builtin.tasks.charts"),
    ("config.py", "import vlrl.engines.base", "vlrl.config -> vlrl.engines.base"),
    ("trainer/policy.py", "import vlrl.engines.base", "vlrl.trainer.policy -> vlrl.engines.base"),
    ("builtin/tools/draw.py", "import vlrl.recipes.train", "vlrl.builtin.tools.draw -> vlrl.recipes.train"),
])
def test_a_planted_violation_breaks_the_contract(tmp_path, module, planted, reported):
    shutil.copytree(ROOT / "vlrl", tmp_path / "vlrl", ignore=SKIP)  # the plug-in links copied as folders
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    target = tmp_path / "vlrl" / module
    target.write_text(target.read_text() + f"\n{planted}\n")
    result = lint_imports(tmp_path, extra_path=tmp_path)
    assert result.returncode == 1, result.stdout
    assert reported in result.stdout


def test_the_wheel_installs_vlrl_alone_with_its_plugins(tmp_path):
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=SKIP, symlinks=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path / "dist"), str(source)], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("vlrl-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        top_level = zf.read(next(n for n in names if n.endswith(".dist-info/top_level.txt"))).decode().split()
        entry_points = zf.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert top_level == ["vlrl"]
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"vlrl"}
    for plugin in ("vlrl/builtin/tools/focus.py", "vlrl/builtin/envs/visual_tool.py",
                   "vlrl/builtin/envs/templates/system.jinja", "vlrl/builtin/tasks/charts.py",
                   "vlrl/model/chat_template.jinja"):
        assert plugin in names
    targets = [line.split("=", 1)[1].strip() for line in entry_points.splitlines() if " = " in line]
    assert targets and all(t.startswith("vlrl.") for t in targets), targets


def test_a_user_project_with_its_own_tools_envs_and_tasks_packages_works_beside_vlrl(tmp_path):
    for name in ("tools", "envs", "tasks"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f"OWNER = 'user {name}'\n")
    (tmp_path / "tools" / "mine.py").write_text(textwrap.dedent('''
        from PIL import Image

        from vlrl.tool import tool


        @tool
        def blank(image: Image.Image) -> Image.Image:
            """A white copy of the image."""
            return Image.new("RGB", image.size, "white")
    '''))
    script = textwrap.dedent("""
        import envs, tasks, tools
        from vlrl.registry import resolve
        from vlrl.tool import load_tools

        assert (tools.OWNER, envs.OWNER, tasks.OWNER) == ("user tools", "user envs", "user tasks")
        specs = load_tools(["chart_table_focus", "drawing", "tools.mine"])
        assert "blank" in specs and "focus_on_rows_with_draw" in specs
        for kind, name in (("env", "visual_tool"), ("task", "synthetic_charts"), ("reward", "chartqa_relaxed"),
                           ("agent", "teacher")):
            resolve(kind, name)
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
    listed = subprocess.run([sys.executable, "-m", "vlrl.cli", "tools", "list", "chart_table_focus", "tools.mine"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0, listed.stderr
    assert "blank(" in listed.stdout and "focus_on_x_values_with_draw(" in listed.stdout


def test_no_function_of_the_framework_or_its_plugins_is_over_60_lines():
    import ast

    longest = []
    for folder in ("vlrl", "tools", "envs", "tasks"):
        for path in (ROOT / folder).rglob("*.py"):
            if "builtin" in path.parts:  # links to tools/, envs/, tasks/: read there
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = node.end_lineno - node.lineno + 1
                    if lines > 60:
                        longest.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert not longest, longest
