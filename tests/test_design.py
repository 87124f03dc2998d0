"""The package's design, held by tests: who may import whom, where configuration enters, how long
a function may grow, and that the loop's gradient accumulation is what it claims to be."""
import ast
from pathlib import Path

import pytest
import torch

HELPERS = Path(__file__).resolve().parent.parent / "helpers"
# Where configuration enters: the notebooks' start_notebook (config) and the command lines.
EDGES = {"config", "cli", "course", "student", "__main__"}
# Modules that teach one idea on their own: they import no other helper.
STANDALONE = {"attention", "metrics"}
# data sits below everything that trains or loads models.
FORBIDDEN = {"data": {"models", "training", "loop", "pretraining", "cli"}}
# Functions allowed over MAX_LINES, and why.
MAX_LINES = 60
LONG_FUNCTIONS: set = set()  # (module, function) pairs allowed over MAX_LINES; none today


def helper_imports(tree: ast.Module) -> set[str]:
    """Names of the helpers modules a module imports (absolute or relative)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                found.add(node.module.split(".")[0])
            elif node.level == 1:
                found.update(alias.name for alias in node.names)
            elif node.module == "helpers":
                found.update(alias.name for alias in node.names)
            elif node.module and node.module.startswith("helpers."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("helpers."))
    return found


def reads_configuration(tree: ast.Module) -> list[str]:
    """Where a module configures itself: calls of get_profile, reads of COURSE_PROFILE or of any
    environment variable. Setting a library's variable (os.environ.setdefault) is not a read."""
    settings = {id(node.func.value) for node in ast.walk(tree) if isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute) and node.func.attr == "setdefault"}
    where = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            if name == "get_profile":
                where.append(f"line {node.lineno}: get_profile()")
        if isinstance(node, ast.Constant) and node.value == "COURSE_PROFILE":
            where.append(f"line {node.lineno}: reads COURSE_PROFILE")
        environ = ((isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv"))
                   or (isinstance(node, ast.ImportFrom) and node.module == "os"
                       and {a.name for a in node.names} & {"environ", "getenv"}))
        if environ and id(node) not in settings:
            where.append(f"line {node.lineno}: reads the environment")
    return where


def violations(sources: dict[str, str]) -> list[str]:
    """Every break of the import contract in {module name: source}."""
    found = []
    for name, source in sources.items():
        tree = ast.parse(source)
        imports = helper_imports(tree) - {name}
        if name in STANDALONE and imports:
            found.append(f"{name} imports {sorted(imports)}; it must import no other helper")
        if imports & FORBIDDEN.get(name, set()):
            found.append(f"{name} imports {sorted(imports & FORBIDDEN[name])}")
        if name not in EDGES:
            found += [f"{name}, {where}" for where in reads_configuration(tree)]
    return found


def sources() -> dict[str, str]:
    return {p.stem: p.read_text(encoding="utf-8") for p in HELPERS.glob("*.py")}


def test_the_import_contract_holds():
    assert violations(sources()) == []


@pytest.mark.parametrize("module, planted, expected", [
    ("metrics", "from .data import LABELS\n", "metrics imports ['data']"),
    ("attention", "from helpers import plots\n", "attention imports ['plots']"),
    ("data", "from helpers.models import load_encoder\n", "data imports ['models']"),
    ("training", "def f():\n    return get_profile()\n", "training, line"),
    ("models", "import os\nNAME = os.environ.get('COURSE_PROFILE')\n", "reads COURSE_PROFILE"),
    ("runtime", "import os\nBUILD = os.environ['COURSE_BUILD_DIR']\n", "runtime, line"),
    ("models", "def hub():\n    return os.getenv('COURSE_PREFER_HUB')\n", "reads the environment"),
    ("bench", "from os import environ\n", "bench, line"),
])
def test_the_contract_test_catches_a_planted_violation(module, planted, expected):
    changed = sources()
    changed[module] = changed[module] + "\n" + planted
    found = violations(changed)
    assert any(expected in line for line in found), found


def test_no_function_is_longer_than_a_screen():
    long = []
    for name, source in sources().items():
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_LINES and (name, node.name) not in LONG_FUNCTIONS:
                    long.append(f"{name}.{node.name}: {lines} lines")
    assert long == []


# --- gradient accumulation -----------------------------------------------------------------------

class Linear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(6, 1)

    def forward(self, x, y):
        loss = torch.nn.functional.mse_loss(self.linear(x).squeeze(-1), y)
        return type("Output", (), {"loss": loss})()


def _data(n=96):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 6, generator=g)
    y = x @ torch.arange(6.0) + 0.1 * torch.randn(n, generator=g)
    return [{"x": x[i], "y": y[i]} for i in range(n)]


def _stack(items):
    return {k: torch.stack([item[k] for item in items]) for k in items[0]}


@pytest.mark.usefixtures("one_thread")
def test_accumulating_k_micro_batches_equals_one_batch_k_times_larger():
    from helpers.config import get_profile, with_overrides
    from helpers.loop import random_batches, train_loop

    profile = with_overrides(get_profile("smoke"), warmup_ratio=0.0, learning_rate=0.05, bf16=False)
    data, k, big = _data(), 4, 32

    def micro_batches(epoch):  # each batch of 32 cut into 4 consecutive micro-batches of 8
        return [b[i:i + big // k] for b in random_batches(len(data), big, seed=0, epoch=epoch)
                for i in range(0, big, big // k)]

    whole = train_loop(Linear(), data, _stack, profile=profile, epochs=3, batch_size=big,
                       batches=lambda epoch: random_batches(len(data), big, seed=0, epoch=epoch),
                       progress=False)
    accumulated = train_loop(Linear(), data, _stack, profile=profile, epochs=3, batch_size=big // k,
                             grad_accum_steps=k, batches=micro_batches, progress=False)
    assert whole.steps == accumulated.steps == 3 * len(data) // big
    for a, b in zip(whole.model.parameters(), accumulated.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # and it is not the same as taking only one micro-batch per step
    single = train_loop(Linear(), data, _stack, profile=profile, epochs=3, batch_size=big // k,
                        batches=lambda e: micro_batches(e)[::k], progress=False)
    assert not torch.allclose(whole.model.linear.weight, single.model.linear.weight, atol=1e-4)
