"""Modal screens: a choice (confirm, quit, restart), the help screen (posting style) with the
run's effective settings, and one process in detail."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from rich.table import Table
from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
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


# --- the monitor's three questions --------------------------------------------------------------
def stop_question(run_id: str, pids: list[int], grace: float, owned: bool) -> ChoiceScreen:
    where = "" if owned else " (started by another adt; signals go to the pids in pids.json)"
    return confirm("Stop the job?", f"Stop run {run_id}{where}? Processes {', '.join(map(str, pids))} get "
                   f"SIGTERM: the PS writes a final checkpoint; what is left after {grace:g}s is killed.", "Stop")


def restart_question(running: bool, has_checkpoint: bool) -> ChoiceScreen:
    """Answers resume, fresh or cancel; resume only where there is (or a stop writes) a checkpoint."""
    message = ("The job is running. It will be stopped gracefully (final checkpoint) and "
               "started again with the current code." if running else "Start the job again with the current code.")
    choices = [Choice("resume", "Resume from last checkpoint", "r", "primary"),
               Choice("fresh", "Fresh start", "f"), Choice("cancel", "Cancel", "escape")]
    if not (running or has_checkpoint):
        choices = choices[1:]
        message += " There is no checkpoint to resume from."
    return ChoiceScreen("Restart the job?", message, choices)


def quit_question(run_dir: object) -> ChoiceScreen:
    """Asked when the monitor quits while its job runs: answers stop, leave or cancel."""
    message = (f"The job is still running. Stop it (graceful, final checkpoint), or leave it "
               f"running in the background and re-attach later with `adt watch {run_dir}`?")
    choices = [Choice("stop", "Stop the job and quit", "s", "warning"),
               Choice("leave", "Leave it running", "l", "primary"), Choice("cancel", "Cancel", "escape")]
    return ChoiceScreen("Quit the monitor?", message, choices)


class HelpScreen(ModalScreen[None]):
    """Every key of the monitor, built from the same binding table the footer shows, and below
    them the run's effective settings (its resolved config; values not at their default in bold)."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,question_mark,q", "dismiss(None)", "Close")]

    def __init__(self, bindings: list[Binding], key_display: dict[str, str],
                 settings: dict[str, Any] | None = None, defaults: dict[str, Any] | None = None,
                 source: str = "") -> None:
        super().__init__(classes="help")
        self.bindings, self.key_display = bindings, key_display
        self.settings, self.defaults, self.source = settings or {}, defaults or {}, source

    def compose(self) -> ComposeResult:
        keys = Table(box=None, show_header=False, padding=(0, 2))
        keys.add_column(style="bold cyan", no_wrap=True)
        keys.add_column()
        for binding in self.bindings:
            keys.add_row(self.key_display[binding.key], binding.tooltip or binding.description)
        with VerticalScroll(id="dialog"):
            yield Label("adt monitor: keys", id="dialog-title")
            yield Static(keys)
            if self.settings:
                yield Label(f"settings of this run{self.source}", id="settings-title")
                yield Static(settings_table(self.settings, self.defaults), id="settings")
            yield Label("Press escape or ? to close.", classes="dim")


def settings_table(settings: dict[str, Any], defaults: dict[str, Any]) -> Table:
    """name = value in two column pairs; a value that differs from its default is bold, with
    the default beside it."""
    table = Table(box=None, show_header=False, padding=(0, 1))
    for _ in range(2):
        table.add_column(style="cyan", no_wrap=True)
        table.add_column(overflow="fold")
    cells: list[tuple[str, Text]] = []
    for name, value in settings.items():
        shown = Text(repr(value) if isinstance(value, str) else str(value))
        if name in defaults and defaults[name] != value:
            shown.stylize("bold")
            shown.append(f" (default {defaults[name]!r})", style="dim")
        cells.append((name, shown))
    half = (len(cells) + 1) // 2
    for left, right in zip(cells[:half], [*cells[half:], ("", Text())], strict=False):
        table.add_row(left[0], left[1], right[0], right[1])
    return table


class DetailScreen(ModalScreen[None]):
    """One process in detail (enter on its row): what does not fit in a table line."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,enter,q", "dismiss(None)", "Close")]

    def __init__(self, text: Text) -> None:
        super().__init__(classes="detail")
        self.text = text

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(self.text)
            yield Label("Press escape to close.", classes="dim")
