"""Modal screens: a choice (confirm, quit, restart) and the help screen (posting style)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from rich.table import Table
from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Static


@dataclass(frozen=True)
class Choice:
    value: str
    label: str
    key: str  # one key picks it, as well as clicking or enter on its button
    variant: str = "default"


class ChoiceScreen(ModalScreen[str | None]):
    """Ask one question; dismiss with the chosen value, or None on escape."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, title: str, message: str, choices: list[Choice]) -> None:
        super().__init__(classes="choice")
        self.title_text, self.message, self.choices = title, message, choices

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(self.title_text, id="dialog-title")
            yield Static(self.message, id="dialog-message", markup=False)
            with Horizontal(id="dialog-buttons"):
                for c in self.choices:
                    key = "esc" if c.key == "escape" else c.key
                    label = Text.assemble(c.label, (f" ({key})", "dim"))  # Text: no markup in labels
                    yield Button(label, id=f"choice-{c.value}", variant=c.variant)  # type: ignore[arg-type]

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss((event.button.id or "").removeprefix("choice-"))

    def on_key(self, event: events.Key) -> None:
        for c in self.choices:
            if event.key == c.key:
                event.stop()
                self.dismiss(c.value)
                return


def confirm(title: str, message: str, yes: str) -> ChoiceScreen:
    return ChoiceScreen(title, message, [Choice("yes", yes, "y", "warning"), Choice("no", "Cancel", "n")])


class HelpScreen(ModalScreen[None]):
    """Every key of the monitor, built from the same binding table the footer shows."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,question_mark,q", "dismiss(None)", "Close")]

    def __init__(self, bindings: list[Binding], key_display: dict[str, str]) -> None:
        super().__init__(classes="help")
        self.bindings, self.key_display = bindings, key_display

    def compose(self) -> ComposeResult:
        table = Table(box=None, show_header=False, padding=(0, 2))
        table.add_column(style="bold cyan", no_wrap=True)
        table.add_column()
        for binding in self.bindings:
            table.add_row(self.key_display[binding.key], binding.tooltip or binding.description)
        with Vertical(id="dialog"):
            yield Label("adt monitor: keys", id="dialog-title")
            yield Static(table)
            yield Label("Press escape or ? to close.", classes="dim")
