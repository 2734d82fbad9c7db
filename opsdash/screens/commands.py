"""The command palette: every key-bound action of the app and of the screen it was opened on.

Commands are read from the ``BINDINGS`` of the app and the current screen, so an
action bound to a key is always in the palette too, under the same name as in
the footer.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial

from textual.binding import Binding
from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.dom import DOMNode

# Navigation keys are hidden from the footer; the palette spells them out.
SCREEN_NAMES = {
    "switch_mode('jobs')": "Show jobs",
    "switch_mode('companies')": "Show companies & storage",
    "switch_mode('preview')": "Show technician preview",
    "switch_mode('log')": "Show engine log and alerts sent",
    "switch_mode('history')": "Show sync run history",
}


@dataclass(frozen=True)
class PaletteCommand:
    name: str
    help: str
    action: str
    namespace: DOMNode


def _bindings(node: DOMNode) -> Iterator[Binding]:
    for binding in node.BINDINGS:
        if isinstance(binding, Binding):
            yield binding
        else:
            yield Binding(*binding)


class OpsdashCommands(Provider):
    def commands(self) -> list[PaletteCommand]:
        screen = self.screen
        found: list[PaletteCommand] = []
        seen: set[str] = set()
        screen_title = type(screen).__name__.removesuffix("Screen")
        for node, scope in ((screen, screen_title), (self.app, "opsdash")):
            for binding in _bindings(node):
                if binding.action in seen or binding.action.startswith("app.pop"):
                    continue
                seen.add(binding.action)
                name = SCREEN_NAMES.get(binding.action, binding.description or binding.action)
                key = binding.key_display or binding.key.split(",")[0]
                found.append(
                    PaletteCommand(
                        name=f"{scope}: {name}",
                        help=binding.tooltip or f"key {key}",
                        action=binding.action,
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
