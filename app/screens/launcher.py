"""The launcher: a modal form for a run (backend, URL, model, scenario and the run flags).

Bad values are shown on their field (it turns red) with one line saying what is wrong; the
form never closes on a value that ``llmtop record`` would refuse, because it builds the same
plan (recorder/flags.py ``plan_from_flags``) before it answers; a refused flag names its
field (``FlagError.flag``), which turns red.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Grid, Horizontal, Vertical
from textual.screen import ModalScreen
from textual.validation import Function, Integer, Number, Validator
from textual.widgets import Button, Input, Label, Select, Static
from textual.worker import Worker, WorkerState

from llmtop.core.errors import LlmtopError
from llmtop.recorder.flags import BACKENDS, FlagError, RunFlags, plan_from_flags, plan_warnings
from llmtop.scenarios.loader import builtin_names, load_scenario

FILE = "__file__"
"""The scenario choice meaning: the TOML file named in the next field."""

InputKind = Literal["integer", "number"]
# field id -> (flag, label, input type, validators)
NUMBER_FIELDS: dict[str, tuple[str, str, InputKind, list[Validator]]] = {
    "requests": ("requests", "requests", "integer", [Integer(minimum=1)]),
    "concurrency": ("concurrency", "concurrency", "integer", [Integer(minimum=1, maximum=4096)]),
    "rate": ("rate", "rate req/s", "number", [Number(minimum=0.001)]),
    "duration": ("duration", "duration s", "number", [Number(minimum=0.001)]),
    "max-tokens": ("max_tokens", "max tokens", "integer", [Integer(minimum=1)]),
    "temperature": ("temperature", "temperature", "number", [Number(minimum=0, maximum=2)]),
}


URL_DEFAULT = {
    "auto": "OLLAMA_HOST",
    "ollama": "OLLAMA_HOST",
    "openai": "OPENAI_BASE_URL",
    "engine": "start one",
}
"""The URL field's placeholder: where the backend looks when it is left empty (short: the field
is narrow)."""
ENGINE_MODELS = "(engine: smollm2)"
"""What the engine offers, shown instead of asking a server that is not started yet."""


def _url_ok(value: str) -> bool:
    return value == "" or value.startswith(("http://", "https://"))


class LauncherScreen(ModalScreen[RunFlags | None]):
    """Start a run; answers the settings, or ``None`` when cancelled."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel"),
        Binding("ctrl+s", "start", "Start", show=True),
    ]

    def __init__(self, settings: RunFlags, *, running: bool = False) -> None:
        super().__init__()
        self.settings = settings
        self.running = running
        self._error_field: str | None = None
        """The field the error message is about; fixing it clears the message."""

    # --- layout ------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        s = self.settings
        scenario = s.scenario or "basic"
        builtins = builtin_names()
        choice = scenario if scenario in builtins else FILE
        with Vertical(id="launcher", classes="panel"):
            with Grid(id="launch-server", classes="form"):
                yield Label("backend")
                yield Select([(b, b) for b in BACKENDS], value=s.backend, allow_blank=False,
                             id="backend", compact=True)  # fmt: skip
                yield Label("URL")
                yield Input(s.url or "", placeholder=URL_DEFAULT.get(s.backend, ""),
                            id="url", compact=True,
                            validators=[Function(_url_ok, "starts with http:// or https://")])  # fmt: skip
                yield Label("model")
                yield Input(s.model or "", placeholder="its only model", id="model",
                            compact=True)  # fmt: skip
                yield Label("server has")
                yield Select([], prompt="(asking…)", id="models", compact=True)
                yield Label("scenario")
                yield Select([*((n, n) for n in builtins), ("a TOML file…", FILE)], value=choice,
                             allow_blank=False, id="scenario", compact=True)  # fmt: skip
                yield Label("file")
                yield Input(scenario if choice == FILE else "", placeholder="path/to/scenario.toml",
                            id="scenario-file", compact=True, disabled=choice != FILE)  # fmt: skip
            yield Static("", id="scenario-about")
            with Grid(id="launch-flags", classes="form"):
                for field_id, (flag, label, kind, validators) in NUMBER_FIELDS.items():
                    value = getattr(s, flag)
                    yield Label(label)
                    yield Input("" if value is None else f"{value:g}", placeholder="default",
                                type=kind, id=field_id, compact=True, validators=validators,
                                valid_empty=True)  # fmt: skip
            with Horizontal(id="launch-name"):
                yield Label("name")
                yield Input(s.name, placeholder="a label for this run", id="name",
                            compact=True)  # fmt: skip
            yield Static("", id="launch-warning")
            yield Static("", id="launch-error")
            with Horizontal(id="launch-buttons"):
                if self.running:
                    yield Button("Stop the current run", id="stop", variant="warning", compact=True)
                yield Button("Cancel", id="cancel", compact=True)
                yield Button("Start ▶", id="start", variant="primary", compact=True)

    def on_mount(self) -> None:
        self._warn()
        self.query_one("#launcher").border_title = "launch a run"
        self.query_one("#launcher").border_subtitle = "ctrl+s start · esc cancel"
        self._describe()
        self.fetch_models()

    # --- the scenario ------------------------------------------------------------------------

    @on(Select.Changed, "#scenario")
    def _scenario_changed(self, event: Select.Changed) -> None:
        file_input = self.query_one("#scenario-file", Input)
        file_input.disabled = event.value != FILE
        if event.value == FILE:
            file_input.focus()
        self._describe()
        self._warn()

    @on(Input.Changed, "#scenario-file")
    def _file_changed(self) -> None:
        self._describe()

    def _scenario_ref(self) -> str:
        choice = self.query_one("#scenario", Select).value
        if choice == FILE:
            return self.query_one("#scenario-file", Input).value.strip()
        return str(choice)

    def _describe(self) -> None:
        about = self.query_one("#scenario-about", Static)
        ref = self._scenario_ref()
        if not ref:
            about.update("[dim]name a scenario file[/]")
            return
        try:
            sc = load_scenario(ref)
        except LlmtopError as e:
            about.update(f"[dim]{e}[/]" if ref.endswith(".toml") else "")
            return
        steps = ", ".join(st.name for st in sc.steps)
        about.update(f"{sc.description or sc.name} [dim]· steps: {steps}[/]")

    # --- the server's models -----------------------------------------------------------------

    @on(Select.Changed, "#backend")
    @on(Input.Submitted, "#url")
    def _server_changed(self) -> None:
        backend = str(self.query_one("#backend", Select).value)
        self.query_one("#url", Input).placeholder = URL_DEFAULT.get(backend, "")
        self.fetch_models()

    @work(exclusive=True, group="models", exit_on_error=False)
    async def fetch_models(self) -> tuple[list[str], str]:
        """The server's models and what the list says when it has none."""
        from llmtop.collectors.backends import detect_api, make_backend, ollama_answers
        from llmtop.recorder.watcher import watch_target

        backend = str(self.query_one("#backend", Select).value)
        url = self.query_one("#url", Input).value.strip() or None
        if backend == "engine" and url is None:
            return [], ENGINE_MODELS
        if backend == "auto":
            if url is None:  # Ollama if it answers, else the engine (what a run would do)
                url, _ = watch_target("ollama", None)
                if await ollama_answers(url) is not None:
                    return [], ENGINE_MODELS
                backend = "ollama"
            else:
                backend = await detect_api(url)
        async with make_backend(backend, url) as b:
            return await b.list_models(), "(no models listed)"

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.group != "models":
            return
        select = self.query_one("#models", Select)
        if event.state is WorkerState.SUCCESS:
            models, when_none = event.worker.result or ([], "(no models listed)")
            select.set_options((m, m) for m in models)
            select.prompt = "pick one" if models else when_none
            model_input = self.query_one("#model", Input)
            if not model_input.value and len(models) == 1:
                model_input.value = models[0]
        elif event.state is WorkerState.ERROR:
            select.set_options([])
            select.prompt = "(not reachable)"

    @on(Select.Changed, "#models")
    def _model_picked(self, event: Select.Changed) -> None:
        if event.value is not Select.BLANK and event.value is not Select.NULL:
            self.query_one("#model", Input).value = str(event.value)

    # --- as the user types --------------------------------------------------------------------

    @on(Input.Changed)
    def _edited(self, event: Input.Changed) -> None:
        """A field marked wrong that now holds a good value loses the mark and its message; the
        warnings follow the values."""
        widget = event.input
        if widget.id is not None and widget.id == self._error_field:
            result = widget.validate(event.value.strip())
            if result is None or result.is_valid:
                widget.remove_class("-invalid")
                self._error("")
        self._warn()

    def _warn(self) -> None:
        """Warnings of the plan the form makes now (it may still start), e.g. fewer requests
        than workers."""
        warning = self.query_one("#launch-warning", Static)
        try:
            plan = plan_from_flags(self._settings())
        except (FlagError, ValueError):
            plan = None
        text = "" if plan is None else "\n".join(f"note: {w}" for w in plan_warnings(plan))
        warning.update(text)
        warning.display = bool(text)

    def _settings(self) -> RunFlags:
        """The form's values as flags, unchecked (``collect`` checks them)."""
        flags: dict[str, Any] = {
            "backend": str(self.query_one("#backend", Select).value),
            "url": self.query_one("#url", Input).value.strip() or None,
            "model": self.query_one("#model", Input).value.strip() or None,
            "scenario": self._scenario_ref() or None,
            "name": self.query_one("#name", Input).value.strip() or None,
        }
        for field_id, (flag, _, kind, _) in NUMBER_FIELDS.items():
            text = self.query_one(f"#{field_id}", Input).value.strip()
            try:
                flags[flag] = (int(text) if kind == "integer" else float(text)) if text else None
            except ValueError:
                flags[flag] = None
        return self.settings.replace(**flags)

    # --- answers -----------------------------------------------------------------------------

    def _error(self, message: str, field_id: str | None = None) -> None:
        self._error_field = field_id
        self.query_one("#launch-error", Static).update(f"[b]{message}[/]" if message else "")
        if field_id is not None:
            widget = self.query_one(f"#{field_id}")
            widget.add_class("-invalid")
            widget.focus()

    def collect(self) -> RunFlags | None:
        """The settings in the form, or ``None`` after showing what is wrong."""
        for widget in self.query(".-invalid"):
            widget.remove_class("-invalid")
        flags: dict[str, Any] = {
            "backend": str(self.query_one("#backend", Select).value),
            "url": self.query_one("#url", Input).value.strip() or None,
            "model": self.query_one("#model", Input).value.strip() or None,
            "scenario": self._scenario_ref() or None,
            "name": self.query_one("#name", Input).value.strip() or None,
        }
        url_check = self.query_one("#url", Input).validate(flags["url"] or "")
        if url_check is not None and not url_check.is_valid:
            self._error("URL: must start with http:// or https://", "url")
            return None
        if flags["scenario"] is None:
            self._error("scenario: name a TOML file", "scenario-file")
            return None
        for field_id, (flag, label, kind, _) in NUMBER_FIELDS.items():
            widget = self.query_one(f"#{field_id}", Input)
            text = widget.value.strip()
            result = widget.validate(text)
            if result is not None and not result.is_valid:
                self._error(f"{label}: {'; '.join(result.failure_descriptions)}", field_id)
                return None
            flags[flag] = (int(text) if kind == "integer" else float(text)) if text else None
        settings = self.settings.replace(**flags)  # a field left empty drops its flag
        try:
            plan_from_flags(settings)
        except FlagError as e:
            self._error(str(e), self._field_of(e.flag))
            return None
        self._error("")
        return settings

    def _field_of(self, flag: str | None) -> str | None:
        """The form field that holds ``flag``, or ``None`` when the form has none for it."""
        if flag == "scenario":
            return (
                "scenario-file" if self.query_one("#scenario", Select).value == FILE else "scenario"
            )
        for field_id, (name, *_) in NUMBER_FIELDS.items():
            if name == flag:
                return field_id
        return flag if flag in ("backend", "url", "model", "name") else None

    @on(Button.Pressed, "#start")
    def action_start(self) -> None:
        settings = self.collect()
        if settings is not None:
            self.dismiss(settings)

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)

    @on(Button.Pressed, "#stop")
    async def _stop(self) -> None:
        await self.app.run_action("app.stop_run")
        self.dismiss(None)
