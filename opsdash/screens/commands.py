"""The command palette: every action of the screen it was opened on and of the app.

The commands come from the registry (``screens/actions.py``, and the screen list of
``screens/catalog.py`` for the "Show …" commands), under the same names as in the footer.
A read-only operator is offered only what changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial

from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.dom import DOMNode

from opsdash.screens import catalog
from opsdash.screens.actions import ConsoleAction, actions_for, allowed


@dataclass(frozen=True)
class PaletteCommand:
    name: str
    help: str
    action: str
    namespace: DOMNode


def _key_name(action: ConsoleAction) -> str:
    return action.key_display or action.key.split(",")[0]


class OpsdashCommands(Provider):
    def _sources(self) -> Iterator[tuple[DOMNode, str, tuple[ConsoleAction, ...]]]:
        screen = self.screen
        target = getattr(screen, "ACTION_TARGET", "")
        screen_title = type(screen).__name__.removesuffix("Screen")
        if target:
            yield screen, screen_title, actions_for(target)
        yield self.app, "opsdash", catalog.app_actions()

    def commands(self) -> list[PaletteCommand]:
        operator = getattr(self.app, "operator", None)
        read_only = bool(operator and operator.read_only)
        found: list[PaletteCommand] = []
        seen: set[str] = set()
        for node, scope, actions in self._sources():
            for action in allowed(actions, read_only=read_only):
                if action.action in seen or action.action.startswith("app.pop"):
                    continue
                seen.add(action.action)
                found.append(
                    PaletteCommand(
                        name=f"{scope}: {action.description}",
                        help=f"key {_key_name(action)}",
                        action=action.action,
                        namespace=node,
                    )
                )
        return found

    def _run(self, command: PaletteCommand) -> None:
        self.app.call_later(self.app.run_action, command.action, command.namespace)

    async def discover(self) -> Hits:
        for command in self.commands():
            yield DiscoveryHit(command.name, partial(self._run, command), help=command.help)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for command in self.commands():
            score = matcher.match(command.name)
            if score > 0:
                yield Hit(
                    score,
                    matcher.highlight(command.name),
                    partial(self._run, command),
                    help=command.help,
                )
