"""`fastdecode chat` driven through a pseudo-terminal: two turns, Ctrl-C during
an answer, /reset, Ctrl-D."""
import os
import re
import select
import signal
import sys
import time

import pytest

pty = pytest.importorskip("pty", reason="pseudo-terminals are POSIX-only")

# the answer follows "assistant:" as the model wrote it (its own leading space), so a rendered
# answer tokenizes as it was made and the next turn reuses it from the cache
TEMPLATE = ("{% for m in messages %}{{ m.role }}:{{ '' if m.role == 'assistant' else ' ' }}{{ m.content }}\n\n"
            "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}")


class Terminal:
    """A child process on a pseudo-terminal: send keys, wait for text."""

    def __init__(self, argv, env):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: the pty is its controlling terminal, so Ctrl-C is SIGINT
            signal.signal(signal.SIGINT, signal.SIG_DFL)  # as a shell starts it, whatever ran pytest (a
            os.execve(sys.executable, [sys.executable, *argv], env)  # background job ignores SIGINT)
        self.seen = ""

    def expect(self, pattern, timeout=120.0) -> str:
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.seen):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {pattern!r} in the terminal after {timeout} s:\n{self.seen[-2000:]}")
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                try:
                    data = os.read(self.fd, 4096)
                except OSError:  # the child has exited
                    data = b""
                if not data:
                    raise AssertionError(f"the program ended before {pattern!r}:\n{self.seen[-2000:]}")
                self.seen += data.decode("utf-8", "replace")
        return self.seen

    def send(self, text: str):
        os.write(self.fd, text.encode())

    def wait(self, timeout=60.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
            try:
                select.select([self.fd], [], [], 0.1)
                self.seen += os.read(self.fd, 4096).decode("utf-8", "replace")
            except OSError:
                time.sleep(0.05)
        os.kill(self.pid, 9)
        raise AssertionError(f"the program did not exit:\n{self.seen[-2000:]}")


@pytest.fixture
def terminal(tmp_path):
    template = tmp_path / "template.jinja"
    template.write_text(TEMPLATE)
    env = dict(os.environ, TERM="dumb")
    started = []

    def start(*flags):
        t = Terminal(["-m", "fastdecode", "chat", "--template", str(template), "--greedy", *flags], env)
        started.append(t)
        t.expect(r"> $")
        return t
    yield start
    for t in started:
        try:
            os.kill(t.pid, 9)
            os.waitpid(t.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(t.fd)


def turns(seen: str) -> list:
    """The answers' status lines so far."""
    return re.findall(r"\((\d+) tokens, .*? (\d+) of (\d+) prompt tokens from the cache; (\w+)\)", seen)


def test_two_turns_reset_and_ctrl_d(terminal):
    t = terminal("-n", "12", "--backend", "c" if os.environ.get("FASTDECODE_BACKEND") != "numpy" else "numpy")
    t.send("What does the module do?\r")
    t.expect(r"from the cache; \w+\)\s*\r?\n> $")
    t.send("And the class?\r")
    t.expect(r"(from the cache; \w+\)[\s\S]*){2}> $")
    first, second = turns(t.seen)
    assert first[1] == "0" and int(second[1]) > int(first[2])  # turn 2 reused turn 1: prompt and answer
    t.send("/reset\r")
    t.expect(r"cleared[\s\S]*> $")
    t.send("What does the module do?\r")
    t.expect(r"(from the cache; \w+\)[\s\S]*){3}> $")
    third = turns(t.seen)[2]
    assert third[1] == "0" and third[2] == first[2]  # a fresh conversation: the first turn's prompt again
    answers = re.findall(r"\?\r?\n([\s\S]*?)\r?\n\(\d+ tokens", t.seen)
    assert len(answers) == 3
    assert answers[0] == answers[-1] and answers[0].strip()  # greedy: the same answer to the same first turn
    t.send("\x04")  # Ctrl-D
    assert t.wait() == 0


def test_ctrl_c_stops_the_answer_not_the_program(terminal):
    t = terminal("-n", "900", "--backend", "numpy")  # long and slow: still writing when Ctrl-C comes
    t.send("Tell me everything.\r")
    t.expect(r"Tell me everything\.\r?\n.{8,}")
    t.send("\x03")
    t.expect(r"\[stopped\]\r?\n> $")
    t.send("\x03")  # at the prompt: a fresh line, the program goes on
    t.expect(r"> \^?C?\r?\n> $|>\s*\r?\n> $")
    t.send("Short, please.\r")  # the stopped answer stays in the conversation; the chat goes on
    t.expect(r"Short, please\.\r?\n.{4,}")
    t.send("\x03")
    t.expect(r"\[stopped\][\s\S]*\[stopped\]\r?\n> $")
    t.send("\x04")
    assert t.wait() == 0
