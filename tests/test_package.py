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


def test_only_the_tracking_module_imports_mlflow():
    importers = sorted(
        path.name
        for path in (REPO / "tasks").rglob("*.py")
        if any(line.lstrip().startswith(("import mlflow", "from mlflow")) for line in path.read_text().splitlines())
    )
    assert importers == ["tracking.py"]
