"""A DataTable that is updated by difference, keeping the cursor on its row.

Rows are keyed (a job id, a company id); on each refresh only the cells whose
value changed are updated, stale rows are removed and new ones added, and the
rows are put in the order given. ``clear()`` is used only when most rows changed.
The highlighted row stays highlighted even when rows arrive above it, except on
the first row: a cursor left there follows the newest row, like ``tail -f``.

Every column's width is decided in :meth:`LiveTable.show`, from the label and
the rows being shown. Left to ``DataTable``, a column without a fixed width is
measured later, when the app is next idle, so a frame drawn in between shows it
at its label's width (posting's ``widgets/datatable.py`` remeasures eagerly for
the same reason).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rich.text import Text
from textual.render import measure
from textual.widgets import DataTable
from textual.widgets._data_table import default_cell_formatter
from textual.widgets.data_table import CellDoesNotExist, ColumnKey, RowDoesNotExist

Cells = tuple[Any, ...]


class _Lead(Text):
    """The first cell of a row: ordinary text that also knows its row's key.

    ``DataTable.sort`` hands the key function cell values only; the key carried
    here is what lets the table be put in an arbitrary order in place.
    """

    row_key: str = ""

    @classmethod
    def of(cls, value: Any, row_key: str) -> _Lead:
        source = value if isinstance(value, Text) else Text(str(value))
        lead = cls(source.plain, style=source.style, no_wrap=True, end="")
        lead.spans = list(source.spans)
        lead.row_key = row_key
        return lead

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, _Lead) and other.row_key == self.row_key and Text.__eq__(self, other)
        )


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    width: int | None = None
    """Cells; None fits the column to its label and the rows shown."""


class LiveTable(DataTable[Any]):
    """Rows keyed by a string; call :meth:`show` with the rows in the order wanted."""

    REBUILD_FRACTION = 0.5

    def __init__(self, columns: Sequence[Column], **kwargs: Any) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self._columns = list(columns)
        self._shown: dict[str, Cells] = {}
        self._order: list[str] = []

    def on_mount(self) -> None:
        for column in self._columns:
            self.add_column(column.label, key=column.key, width=column.width)

    @property
    def highlighted_key(self) -> str | None:
        if not self.row_count:
            return None
        try:
            row_key, _ = self.coordinate_to_cell_key(self.cursor_coordinate)
        except CellDoesNotExist:
            return None
        return row_key.value

    def show(self, rows: Sequence[tuple[str, Cells]]) -> None:
        """Make the table show ``rows`` (key, cells), in this order."""
        wanted = {key: (_Lead.of(cells[0], key), *cells[1:]) for key, cells in rows}
        order = list(wanted)
        cursor_key = None if self.cursor_row == 0 else self.highlighted_key
        with self.app.batch_update():
            if self._mostly_changed(wanted):
                self._rebuild(wanted)
            else:
                self._patch(wanted)
            if order != self._order:
                position = {key: index for index, key in enumerate(order)}
                self.sort(self._columns[0].key, key=lambda lead: position[lead.row_key])
            self._order = order
            self._shown = wanted
            self._fit_columns(wanted)
            self._restore_cursor(cursor_key)

    @property
    def settled(self) -> bool:
        """True once the table has taken in every change (nothing waits for an idle moment)."""
        return not self._require_update_dimensions and not self._updated_cells

    def _fit_columns(self, wanted: dict[str, Cells]) -> None:
        """Give each column without a fixed width the width of its widest cell or label, now."""
        console = self.app.console
        for index, spec in enumerate(self._columns):
            if spec.width is not None:
                continue
            column = self.columns[ColumnKey(spec.key)]
            cells = [default_cell_formatter(row[index], wrap=False) for row in wanted.values()]
            # The same measure DataTable applies when it sizes a column itself.
            width = max(measure(console, renderable, 1) for renderable in [column.label, *cells])
            if column.auto_width or column.width != width:
                column.auto_width = False
                column.width = column.content_width = width
                self._require_update_dimensions = True
                self.refresh()

    def _mostly_changed(self, wanted: dict[str, Cells]) -> bool:
        if not self._shown:
            return True
        kept = sum(1 for key, cells in wanted.items() if self._shown.get(key) == cells)
        return kept < len(wanted) * (1 - self.REBUILD_FRACTION)

    def _rebuild(self, wanted: dict[str, Cells]) -> None:
        self.clear()
        for key, cells in wanted.items():
            self.add_row(*cells, key=key)

    def _patch(self, wanted: dict[str, Cells]) -> None:
        for key in [key for key in self._shown if key not in wanted]:
            self.remove_row(key)
        for key, cells in wanted.items():
            shown = self._shown.get(key)
            if shown is None:
                self.add_row(*cells, key=key)
                continue
            for column, old, new in zip(self._columns, shown, cells, strict=True):
                if old != new:
                    self.update_cell(key, column.key, new)

    def _restore_cursor(self, cursor_key: str | None) -> None:
        if cursor_key is None or cursor_key not in self._shown:
            if self.row_count and self.cursor_row != 0:
                self.move_cursor(row=0, animate=False)
            return
        try:
            index = self.get_row_index(cursor_key)
        except RowDoesNotExist:
            return
        if index != self.cursor_row:
            self.move_cursor(row=index, animate=False)
