"""``fastdecode chat``: an interactive chat in the terminal.

Each answer streams as it is made; the session keeps the KV cache between
turns, so a turn prefills only its new tokens. Ctrl-C stops the answer
being written (the part shown stays in the conversation) and returns to the
prompt; at the prompt it clears the line. Ctrl-D (end of input) quits.
Commands: ``/reset`` forgets the conversation (the system message stays),
``/help``, ``/exit``. Line editing and history come from ``readline`` where
Python has it (``--history FILE`` keeps the history between runs).
"""
from __future__ import annotations

import os
import sys

HELP = "/reset: start over (the system message stays) | /exit or Ctrl-D: quit | Ctrl-C: stop the answer"


def _readline(history: str | None):
    """Turn on line editing; returns a function that saves the history."""
    try:
        import readline
    except ImportError:  # e.g. Windows without pyreadline: plain input() still works
        return lambda: None
    if history:
        try:
            readline.read_history_file(history)
        except (FileNotFoundError, OSError):
            pass
        return lambda: readline.write_history_file(history)
    return lambda: None


def run(args, settings: dict) -> int:
    import fastdecode
    from .chat import template_of
    from .cli import _load

    model = _load(args.model, args.weights)
    template = None
    if args.template is not None:
        with open(args.template, encoding="utf-8") as f:
            template = f.read()
    template_of(model, template)  # no template: a clear error now, not at the first message
    session = model.session(template=template, overflow="drop_oldest")
    system = [{"role": "system", "content": args.system}] if args.system else []
    session.messages = list(system)
    save_history = _readline(args.history)
    out, err = sys.stdout, sys.stderr
    print(f"fastdecode chat: {os.path.basename(os.path.normpath(model.path or args.model))}, backend "
          f"{fastdecode.get_backend()}. {HELP}", file=err)
    try:
        while True:
            try:
                line = input("> ")
            except EOFError:  # Ctrl-D
                out.write("\n")
                return 0
            except KeyboardInterrupt:  # Ctrl-C at the prompt: a fresh line
                out.write("\n")
                continue
            command = line.strip()
            if not command:
                continue
            if command in ("/exit", "/quit"):
                return 0
            if command == "/help":
                print(HELP, file=err)
                continue
            if command == "/reset":
                session.reset()
                session.messages = list(system)
                print("(the conversation is cleared)", file=err)
                continue
            try:
                _answer(session, line, settings, out, err)
            except ValueError as exc:  # e.g. a message longer than the context: say so, keep the chat
                print(f"fastdecode: error: {exc}", file=err)
    finally:
        save_history()


def _answer(session, line: str, settings: dict, out, err):
    stream = session.stream_chat(line, **settings)
    result = None
    try:
        while True:
            try:
                token = next(stream)
            except StopIteration as done:
                result = done.value
                break
            out.write(token.text)
            out.flush()
    except KeyboardInterrupt:  # Ctrl-C: stop this answer, keep the program
        stream.close()
        out.write(" [stopped]")
    out.write("\n")
    out.flush()
    if result is not None:
        t = result.timing
        print(f"({t.generated_tokens} tokens, {t.generated_tokens_per_s:.1f} tokens/s; "
              f"{t.cached_tokens} of {t.prompt_tokens} prompt tokens from the cache; {result.finish_reason})",
              file=err)
