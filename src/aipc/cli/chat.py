"""The interactive chat of `aipc run MODEL`: multi-turn history and Ollama's slash commands.

Ctrl-C stops the answer being written and returns to the prompt; Ctrl-D (or /bye, /exit) leaves.
"""

from __future__ import annotations

import contextlib
import shlex
import sys

from aipc.cli.run import print_stream, stats_line, what_ran
from aipc.engine.events import Done
from aipc.engine.model import Model
from aipc.errors import AipcError

HELP = """Available Commands:
  /set            Set session variables (/? set)
  /show           Show model information (/? show)
  /load <model>   Load another model (the conversation starts afresh)
  /save <model>   Save the model, system message, parameters and conversation as a new model
  /clear          Clear session context
  /bye, /exit     Exit (Ctrl-D does too)
  /?, /help       Help for a command
  /? shortcuts    Help for keyboard shortcuts

Use \"\"\" to begin a multi-line message. Ctrl-C stops the current answer."""

HELP_SET = """Available Commands:
  /set parameter ...     Set a parameter (/set parameter alone lists them)
  /set system <string>   Set system message (\"\"\" for several lines)
  /set wordwrap          Enable wordwrap
  /set nowordwrap        Disable wordwrap
  /set verbose           Show stats after each answer
  /set quiet             Disable stats"""

HELP_SHOW = """Available Commands:
  /show info         Show details for this model
  /show license      Show model license
  /show modelfile    Show the Modelfile of this model
  /show parameters   Show parameters for this model
  /show system       Show system message
  /show template     Show prompt template"""

HELP_PARAMETERS = """Available Parameters:
  /set parameter seed <int>               Random number seed
  /set parameter num_predict <int>        Max number of tokens to predict
  /set parameter top_k <int>              Pick from top k num of tokens
  /set parameter top_p <float>            Pick token based on sum of probabilities
  /set parameter min_p <float>            Pick tokens at least this share as likely as the best
  /set parameter num_ctx <int>            Set the context size (at most the model's)
  /set parameter temperature <float>      Set creativity level
  /set parameter repeat_penalty <float>   How strongly to penalize repetitions
  /set parameter stop <string> <string> ...   Set the stop parameters"""

HELP_SHORTCUTS = """Available keyboard shortcuts:
  Ctrl + a            Move to the beginning of the line (Home)
  Ctrl + e            Move to the end of the line (End)
  Ctrl + k            Delete the sentence after the cursor
  Ctrl + u            Delete the sentence before the cursor
  Ctrl + w            Delete the word before the cursor
  Ctrl + l            Clear the screen
  Ctrl + c            Stop the model from responding
  Ctrl + d            Exit aipc (/bye)"""


class ChatSession:
    def __init__(
        self,
        model: Model,
        options: dict,
        *,
        system: str | None = None,
        verbose: bool = False,
        wordwrap: bool = True,
        name: str | None = None,
        backend: str = "auto",
        device: str = "auto",
        speculate: str = "auto",
    ) -> None:
        self.model = model
        self.name = name
        self.backend = backend
        self.device = device
        self.speculate = speculate
        self.options = dict(options)
        self.system = system
        self.verbose = verbose
        self.wordwrap = wordwrap
        self.history: list[dict[str, str]] = []
        self.tty = sys.stdin.isatty()
        if self.tty:
            with contextlib.suppress(ImportError):
                import readline  # noqa: F401  (line editing and history for input())
        self._preload()

    # --- input ---------------------------------------------------------------------------------------
    def _read(self, prompt: str) -> str:
        return input(prompt if self.tty else "")

    def read_message(self) -> str | None:
        """The next user message; None at end of input. Lines between triple quotes form one message."""
        line = self._read(">>> ")
        if not line.lstrip().startswith('"""'):
            return line
        return self._multiline(line.lstrip()[3:])

    def _multiline(self, first: str) -> str:
        parts = [first]
        while True:
            if parts[-1].rstrip().endswith('"""') and (len(parts) > 1 or parts[0].strip() != ""):
                parts[-1] = parts[-1].rstrip()[:-3]
                return "\n".join(parts).strip("\n")
            parts.append(self._read("... "))

    # --- the loop ------------------------------------------------------------------------------------
    def label(self) -> str:
        """What is chatting: the name typed and the variant that runs (`phi3 (phi3:mini@openvino-int4)`)."""
        ran = what_ran(self.model.info.ref or self.model.info.name)
        return ran if not self.name or self.name == ran.split(" ")[0] else f"{self.name} ({ran})"

    def loop(self) -> int:
        if self.tty:
            info = self.model.info
            print(f"Chatting with {self.label()} on {info.backend}/{info.device}. /? for help, Ctrl-D to leave.")
        while True:
            try:
                message = self.read_message()
            except EOFError:
                if self.tty:
                    print()
                return 0
            except KeyboardInterrupt:
                print("\nUse Ctrl + d or /bye to exit.")
                continue
            if not message.strip():
                continue
            if message.strip().startswith("/"):
                if self.command(message.strip()):
                    return 0
                continue
            self.answer(message)

    def command(self, line: str) -> bool:
        """Run a slash command; True means leave. A command that fails says why; the chat goes on."""
        name, _, rest = line.partition(" ")
        rest = rest.strip()
        if name in ("/bye", "/exit"):
            return True
        try:
            self._command(name, rest)
        except AipcError as exc:  # e.g. /show info for a model removed from the store since it was loaded
            print(f"error: {exc}")
        return False

    def _command(self, name: str, rest: str) -> None:
        if name == "/clear":
            self.history.clear()
            print("Cleared session context")
        elif name == "/set":
            self._set(rest)
        elif name == "/system":  # aipc's older spelling of /set system; alone, it shows the system message
            self._set(f"system {rest}") if rest else self._show("system")
        elif name == "/show":
            self._show(rest)
        elif name == "/load":
            self._load(rest)
        elif name == "/save":
            self._save(rest)
        elif name in ("/help", "/?"):
            topic = rest.lstrip("/")
            text = {"set": HELP_SET, "show": HELP_SHOW, "shortcut": HELP_SHORTCUTS, "shortcuts": HELP_SHORTCUTS}
            print(text.get(topic, HELP))
        else:
            print(f"Unknown command '{name}'. Type /? for help")

    # --- /set ----------------------------------------------------------------------------------------
    def _set(self, rest: str) -> None:
        what, _, value = rest.partition(" ")
        value = value.strip()
        if what == "parameter":
            self._set_parameter(value)
        elif what == "system":
            if not value:
                print(HELP_SET)
                return
            if value.startswith('"""'):
                value = self._multiline(value[3:])
            self.system = value
            print("Set system message.")
        elif what in ("wordwrap", "nowordwrap"):
            self.wordwrap = what == "wordwrap"
            print(f"Set '{what}' mode.")
        elif what in ("verbose", "quiet"):
            self.verbose = what == "verbose"
            print(f"Set '{what}' mode.")
        elif not what:
            print(HELP_SET)
        else:
            print(f"Unknown command '/set {what}'. Type /? for help")

    def _set_parameter(self, text: str) -> None:
        from aipc.store.modelfile import PARAMETERS, Modelfile, apply_parameter

        try:
            words = shlex.split(text)
        except ValueError:
            words = text.split()
        if len(words) < 2:
            print(HELP_PARAMETERS)
            return
        name = words[0].lower()
        mf = Modelfile()
        try:
            for value in words[1:] if name == "stop" else [" ".join(words[1:])]:
                apply_parameter(mf, f'{name} "{value}"' if name == "stop" else f"{name} {value}", "/set parameter")
        except AipcError as exc:
            print(f"Couldn't set parameter: {str(exc).removeprefix('/set parameter: ')}")
            return
        if PARAMETERS[name][0] == "context_length":
            most = self.model.info.context_length
            if most and mf.context_length and mf.context_length > most:
                print(f"Couldn't set parameter: num_ctx {mf.context_length} is over this model's context of {most}")
                return
            self.model.context_length = mf.context_length
        else:
            self.options.update(mf.parameters)
        print(f"Set parameter '{name}' to '{', '.join(words[1:])}'")

    # --- /show ---------------------------------------------------------------------------------------
    def _show(self, what: str) -> None:
        from aipc.cli import show

        if what == "template":
            print(self.model.chat_template or "No prompt template was specified for this model.")
        elif what == "system":
            print(self.system or self.model.system or "No system message was specified for this model.")
        elif what == "parameters":
            print("Model defined parameters:")
            print(show.parameter_lines(self._described().parameters, "  ") or "  No parameters were specified.")
            user = dict(self.options)
            if self.model.context_length:
                user["context_length"] = self.model.context_length
            if user:
                print("\nUser defined parameters:")
                print(show.parameter_lines(user, "  "))
        elif what in ("info", "license", "modelfile"):
            info = self._described()
            if what == "info":
                i = self.model.info
                print(f"running {what_ran(i.ref or i.name)} on {i.backend}/{i.device}")
            print(show.part(info, what))
        else:
            print(HELP_SHOW if not what else f"Unknown command '/show {what}'. Type /? for help")

    def _described(self):
        from aipc.cli import show

        return show.describe(self.name or self.model.info.ref or self.model.info.name)

    # --- /load, /save --------------------------------------------------------------------------------
    def _load(self, name: str) -> None:
        if not name or " " in name:
            print("Usage:\n  /load <modelname>")
            return
        from aipc.cli.run import load

        print(f"Loading model '{name}'")
        try:
            model = load(name, self.backend, self.device, self.speculate)
        except AipcError as exc:
            print(f"Couldn't load model '{name}': {exc}")
            return
        self.model.close()
        self.model, self.name = model, name
        self.history.clear()
        self._preload()

    def _save(self, name: str) -> None:
        if not name or " " in name:
            print("Usage:\n  /save <modelname>")
            return
        from pathlib import Path

        from aipc.store.create import create
        from aipc.store.modelfile import Modelfile, base_of

        try:
            base = base_of(self.name or self.model.info.name, Path.cwd(), "/save")
            mf = Modelfile(
                base=base,
                system=self.system,
                parameters=dict(self.options),
                context_length=self.model.context_length,
                messages=list(self.history),
            )
            create(name, mf)
        except AipcError as exc:
            print(f"error: {exc}")
            return
        print(f"Created new model '{name}'")

    def _preload(self) -> None:
        """A created model's MESSAGE turns start the conversation, shown as Ollama shows them."""
        from aipc.store.resolve import _created

        created = _created(self.name.partition("@")[0]) if self.name else None
        messages = (created.manifest.get("messages") or []) if created else []
        for m in messages:
            if isinstance(m, dict) and m.get("role") in ("user", "assistant") and isinstance(m.get("content"), str):
                self.history.append({"role": m["role"], "content": m["content"]})
                if self.tty:
                    print(f">>> {m['content']}" if m["role"] == "user" else f"{m['content']}\n")

    # --- answering -----------------------------------------------------------------------------------
    def messages(self) -> list[dict[str, str]]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.history

    def answer(self, message: str) -> None:
        self.history.append({"role": "user", "content": message})
        try:
            events = self.model.stream_chat(self.messages(), **self.options)
        except AipcError as exc:
            self.history.pop()
            print(f"error: {exc}")
            return
        collected: list[str] = []
        try:
            done = print_stream(_collect(events, collected), sys.stdout, wordwrap=self.wordwrap)
        except KeyboardInterrupt:
            events.close()
            self.history.pop()  # the interrupted exchange is not kept
            print("(answer stopped)", file=sys.stderr)
            return
        except AipcError as exc:
            self.history.pop()
            print(f"error: {exc}")
            return
        self.history.append({"role": "assistant", "content": "".join(collected)})
        if self.verbose and isinstance(done, Done):
            print(stats_line(done), file=sys.stderr)


def _collect(events, sink: list[str]):
    for event in events:
        text = getattr(event, "text", None)
        if text is not None:
            sink.append(text)
        yield event
