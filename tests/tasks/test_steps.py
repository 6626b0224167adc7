"""The step table (tasks/steps.py) is the one list of steps: the DAG, ``tfpipe run`` and the docs follow it."""

from pathlib import Path

from tasks.steps import STEP_TABLE, STEPS

DOCS = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"


def _documented_rows() -> list[list[str]]:
    text = DOCS.read_text()
    table = text[text.index("| step | takes the records of |"):].split("\n\n")[0].splitlines()[2:]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in table]


def test_the_docs_step_table_is_the_step_table():
    expected = [[f"`{s.name}`", ", ".join(f"`{i}`" for i in s.inputs), str(s.timeout),
                 "default" if s.retries is None else str(s.retries), s.does] for s in STEP_TABLE]
    assert _documented_rows() == expected


def test_each_step_takes_only_earlier_steps_and_one_gates():
    for index, step in enumerate(STEP_TABLE):
        assert set(step.inputs) <= set(STEPS[:index]), step.name
    assert [s.name for s in STEP_TABLE if s.gates] == ["evaluate_model"]
