"""The package's modules form layers: every import points to a lower layer, and none forms a circle."""

import ast
from pathlib import Path

import pytest

import gpt_params

PACKAGE = Path(gpt_params.__file__).parent
# bottom to top; a module may import only modules of lower layers (the tasks/ subpackage may import
# its own modules too, without a circle)
LAYERS = [
    {"errors"},
    {"config", "devices", "layout", "recipes"},
    {"tasks", "normalize", "networks"},
    {"zoo", "tokenizers", "diffusion", "align"},
    {"zoo_reader", "model"},
    {"pairs", "critic"},
    {"harvest", "export"},
    {"optimizer"},
    {"evaluate", "plots"},
    {"scripting", "cli"},
]


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Package modules ``path`` imports anywhere (functions included), except under ``TYPE_CHECKING``."""
    tree = ast.parse(path.read_text())
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from gpt_params.tasks import data` imports the submodule tasks.data
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
            names = [n for n in names if n.removeprefix("gpt_params.") in known] or [node.module]
            names = names[:-1] if len(names) > 1 else names
        else:
            continue
        for n in names:
            if n.startswith("gpt_params."):
                out.add(n.removeprefix("gpt_params."))
    return {m for m in out if m in known}


def layer_of(module: str) -> int:
    top = module.split(".")[0]
    for i, layer in enumerate(LAYERS):
        if top in layer:
            return i
    raise AssertionError(f"gpt_params.{module} is in no layer of {__name__}.LAYERS: place it")


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods) - {""}
    return {m: imports_of(p, known) for m, p in mods.items() if m}


def test_every_module_has_a_layer_and_imports_point_down():
    wrong = []
    for mod, deps in graph().items():
        for dep in deps:
            same_package = mod.split(".")[0] == dep.split(".")[0] == "tasks"
            if not same_package and layer_of(dep) >= layer_of(mod):
                wrong.append(f"{mod} (layer {layer_of(mod)}) imports {dep} (layer {layer_of(dep)})")
    assert not wrong, "\n".join(wrong)


def test_the_import_graph_has_no_circle():
    g = graph()
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for d in sorted(g.get(m, ())):
            if state.get(d) == 1:
                raise AssertionError("import circle: " + " -> ".join(path[path.index(d) :] + [d]))
            if d not in state:
                visit(d)
        path.pop()
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m)


@pytest.mark.parametrize(
    "source, circle",
    [
        ({"a": "from gpt_params.b import x", "b": "def f():\n    from gpt_params.a import y"}, True),
        ({"a": "from gpt_params.b import x", "b": "import numpy"}, False),
    ],
)
def test_the_circle_check_sees_function_level_imports(tmp_path, source, circle):
    known = set(source)
    for name, text in source.items():
        (tmp_path / f"{name}.py").write_text(text)
    g = {name: imports_of(tmp_path / f"{name}.py", known) for name in source}
    assert ("a" in g["b"] and "b" in g["a"]) == circle


def test_no_module_outside_tasks_branches_on_a_task_name_or_kind():
    roots = [PACKAGE, PACKAGE.parent / "eval", PACKAGE.parent / "benchmarks", PACKAGE.parent / "train"]
    offenders = []
    for root in roots:
        for p in root.rglob("*.py"):
            if "tasks" in p.relative_to(root).parts:
                continue
            for node in ast.walk(ast.parse(p.read_text())):
                if isinstance(node, ast.Compare):
                    text = ast.unparse(node)
                    if ".kind" in text or "task.name ==" in text or "hasattr(task" in text:
                        offenders.append(f"{p.name}: {text}")
                if isinstance(node, ast.Call) and ast.unparse(node.func) == "hasattr":
                    if "task" in ast.unparse(node.args[0]):
                        offenders.append(f"{p.name}: {ast.unparse(node)}")
    assert not offenders, offenders
