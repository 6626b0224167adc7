from pathlib import Path

import tasks

REPO = Path(__file__).resolve().parent.parent


def test_tasks_package_is_this_repository():
    assert Path(tasks.__file__).resolve().parent == REPO / "tasks"


def test_tasks_never_imports_airflow():
    offenders = [
        str(path.relative_to(REPO))
        for path in (REPO / "tasks").rglob("*.py")
        if any(line.lstrip().startswith(("import airflow", "from airflow")) for line in path.read_text().splitlines())
    ]
    assert offenders == []


def test_only_the_tracking_package_imports_mlflow():
    importers = sorted(
        path.relative_to(REPO / "tasks").parts[0]
        for path in (REPO / "tasks").rglob("*.py")
        if any(line.lstrip().startswith(("import mlflow", "from mlflow")) for line in path.read_text().splitlines())
    )
    assert set(importers) == {"tracking"}


def _import_graph() -> dict[str, set[str]]:
    """Each module of tasks/ to the modules of tasks/ it imports (at the top or inside a function)."""
    import ast

    modules = {}
    for path in (REPO / "tasks").rglob("*.py"):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tasks"):
                for alias in node.names:
                    target = f"{node.module}.{alias.name}"
                    graph[name].add(target if target in modules else node.module)
    graph.pop("tasks", None)
    return {name: {t for t in targets if t in graph} for name, targets in graph.items()}


def test_the_modules_of_tasks_import_each_other_without_cycles():
    graph, done, path = _import_graph(), set(), []

    def visit(name: str) -> None:
        assert name not in path, " -> ".join([*path[path.index(name):], name])
        if name in done:
            return
        path.append(name)
        for target in sorted(graph[name]):
            visit(target)
        path.pop()
        done.add(name)

    for name in sorted(graph):
        visit(name)


def test_no_step_imports_the_benchmarks():
    graph = _import_graph()
    importers = sorted(name for name, targets in graph.items()
                       if not name.startswith("tasks.bench") and any(t.startswith("tasks.bench") for t in targets))
    assert importers == ["tasks.cli"]
