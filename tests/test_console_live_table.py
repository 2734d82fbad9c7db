"""The live table updates by difference and keeps the operator's cursor on its row."""

from __future__ import annotations

import pytest
from textual.app import App, ComposeResult

from opsdash.screens.widgets.live_table import Column, LiveTable

pytestmark = pytest.mark.anyio

COLUMNS = (Column("name", "name", 10), Column("state", "state"))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class TableApp(App[None]):
    def compose(self) -> ComposeResult:
        yield LiveTable(COLUMNS)


def rows(*pairs: tuple[str, str]) -> list[tuple[str, tuple[str, str]]]:
    return [(key, (key.upper(), state)) for key, state in pairs]


async def test_new_rows_arrive_on_top_without_moving_the_highlighted_row(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = TableApp()
    async with app.run_test(size=(40, 12)) as pilot:
        table = app.query_one(LiveTable)
        table.show(rows(("c", "running"), ("b", "done"), ("a", "done")))
        await pilot.pause()
        table.move_cursor(row=1)
        await pilot.pause()
        assert table.highlighted_key == "b"

        cleared: list[bool] = []
        monkeypatch.setattr(table, "clear", lambda *a, **k: cleared.append(True))
        updated: list[tuple[str, str]] = []
        real_update = LiveTable.update_cell

        def spy(self: LiveTable, row: str, column: str, value: object, **kwargs: object) -> None:
            updated.append((row, column))
            real_update(self, row, column, value, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(LiveTable, "update_cell", spy)
        table.show(rows(("d", "queued"), ("c", "done"), ("b", "done"), ("a", "done")))
        await pilot.pause()
        assert [table.get_row_at(i)[0].plain for i in range(4)] == ["D", "C", "B", "A"]
        assert table.highlighted_key == "b"
        assert updated == [("c", "state")]
        assert cleared == []

        table.show(rows(("d", "done"), ("b", "done")))  # "c" and "a" pruned
        await pilot.pause()
        assert table.row_count == 2
        assert table.highlighted_key == "b"


async def test_a_cursor_on_the_first_row_follows_the_newest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = TableApp()
    async with app.run_test(size=(40, 12)) as pilot:
        table = app.query_one(LiveTable)
        table.show(rows(("b", "done"), ("a", "done")))
        await pilot.pause()
        assert table.highlighted_key == "b"
        table.show(rows(("c", "new"), ("b", "done"), ("a", "done")))
        await pilot.pause()
        assert table.highlighted_key == "c"


async def test_mostly_changed_rows_are_rebuilt_in_order() -> None:
    app = TableApp()
    async with app.run_test(size=(40, 12)) as pilot:
        table = app.query_one(LiveTable)
        table.show(rows(("a", "1"), ("b", "1"), ("c", "1")))
        await pilot.pause()
        table.show(rows(("x", "2"), ("y", "2"), ("c", "2")))
        await pilot.pause()
        assert [table.get_row_at(i)[0].plain for i in range(3)] == ["X", "Y", "C"]
        assert table.get_row_at(2)[1] == "2"
