"""The interactive chat of `aipc run MODEL`: multi-turn history and a few slash commands.

Ctrl-C stops the answer being written and returns to the prompt; Ctrl-D (or /bye) leaves.
"""

from __future__ import annotations

import contextlib
import sys

from aipc.cli.run import print_stream, stats_line
from aipc.engine.events import Done
from aipc.engine.model import Model

HELP = """Commands:
  /system TEXT   set the system prompt (and start a new conversation); /system alone shows it
  /clear         forget the conversation
  /bye           leave (Ctrl-D does too)
  /help, /?      this help
  \"\"\"            start or end a multi-line message
Ctrl-C stops the current answer."""


class ChatSession:
    def __init__(self, model: Model, options: dict, *, system: str | None = None, verbose: bool = False) -> None:
        self.model = model
        self.options = options
        self.system = system
        self.verbose = verbose
        self.history: list[dict[str, str]] = []
        self.tty = sys.stdin.isatty()
        if self.tty:
            with contextlib.suppress(ImportError):
                import readline  # noqa: F401  (line editing and history for input())

    def _read(self, prompt: str) -> str:
        return input(prompt if self.tty else "")

    def read_message(self) -> str | None:
        """The next user message; None at end of input. Lines between triple quotes form one message."""
        line = self._read(">>> ")
        if not line.lstrip().startswith('"""'):
            return line
        parts = [line.lstrip()[3:]]
        while True:
            if parts[-1].rstrip().endswith('"""') and (len(parts) > 1 or parts[0].strip() != ""):
                parts[-1] = parts[-1].rstrip()[:-3]
                return "\n".join(parts).strip("\n")
            parts.append(self._read("... "))

    def loop(self) -> int:
        if self.tty:
            print(
                f"Chatting with {self.model.info.name} on {self.model.info.backend}/{self.model.info.device}. "
                "/help for commands, Ctrl-D to leave."
            )
        while True:
            try:
                message = self.read_message()
            except EOFError:
                if self.tty:
                    print()
                return 0
            except KeyboardInterrupt:
                print("\nUse Ctrl-D or /bye to leave.")
                continue
            if not message.strip():
                continue
            if message.strip().startswith("/") and self.command(message.strip()):
                return 0
            if not message.strip().startswith("/"):
                self.answer(message)

    def command(self, line: str) -> bool:
        """Run a slash command; True means leave."""
        name, _, rest = line.partition(" ")
        if name == "/bye":
            return True
        if name == "/clear":
            self.history.clear()
            print("Conversation cleared.")
        elif name == "/system":
            if rest.strip():
                self.system = rest.strip()
                self.history.clear()
                print("System prompt set; conversation restarted.")
            else:
                print(self.system or "(no system prompt)")
        elif name in ("/help", "/?"):
            print(HELP)
        else:
            print(f"Unknown command {name}: try /help.")
        return False

    def messages(self) -> list[dict[str, str]]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.history

    def answer(self, message: str) -> None:
        self.history.append({"role": "user", "content": message})
        events = self.model.stream_chat(self.messages(), **self.options)
        collected: list[str] = []
        try:
            done = print_stream(_collect(events, collected), sys.stdout)
        except KeyboardInterrupt:
            events.close()
            self.history.pop()  # the interrupted exchange is not kept
            print("(answer stopped)", file=sys.stderr)
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
