"""keepalived.conf's syntax: words, quoted strings, { } blocks, comments, ``include``.

Theory of operation
-------------------
keepalived reads its file line by line (lib/parser.c): a line is split into words at blanks,
``"..."`` keeps blanks inside one word, ``#`` or ``!`` begins a comment, ``{`` opens the block
of the keyword on its line (or of the line before, when it stands alone) and ``}`` closes it.
``include GLOB`` at any level reads the matching files in place (a relative pattern is taken
from the including file's directory, as keepalived does).  ``@ID`` before a line keeps it only
for config id ID (keepalived's -i, by default the short host name; ``@^ID``: all but ID), and
``$NAME=value`` defines what ``$NAME``/``${NAME}`` stand for in later lines.  We build a tree of ``Node``s --
keyword, arguments, children, file and line -- and leave meaning to ``config.py``.
"""
from __future__ import annotations

import dataclasses
import glob
import os
import re
import socket
from typing import Optional

MAX_INCLUDE_DEPTH = 8


class ConfError(Exception):
    def __init__(self, where: str, message: str):
        super().__init__(f"{where}: {message}")
        self.where = where
        self.message = message


@dataclasses.dataclass
class Node:
    keyword: str
    args: list[str]
    where: str  # "file:line"
    children: Optional[list["Node"]] = None  # None: not a block

    def __repr__(self) -> str:
        return f"Node({self.keyword!r}, {self.args!r}, {self.where})"


def split_words(line: str) -> list[str]:
    """A line's words; comments dropped, quotes removed, braces as words of their own."""
    words: list[str] = []
    current = ""
    in_word = False
    index = 0
    while index < len(line):
        char = line[index]
        if char == '"':
            end = line.find('"', index + 1)
            if end < 0:
                end = len(line)
            current += line[index + 1:end]
            in_word = True
            index = end + 1
            continue
        if char in "#!" and not in_word:
            break
        if char in " \t\r\n":
            if in_word:
                words.append(current)
                current, in_word = "", False
        elif char in "{}":
            if in_word:
                words.append(current)
                current, in_word = "", False
            words.append(char)
        else:
            current += char
            in_word = True
        index += 1
    if in_word:
        words.append(current)
    return words


def config_id() -> str:
    """keepalived's default config id (`-i`): the host name up to its first dot."""
    return socket.gethostname().split(".")[0]


_VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")


def _conditional(line: str, ident: str) -> Optional[str]:
    """keepalived's '@ID line' (only for config id ID) and '@^ID line' (for any other): the
    line to read, or None."""
    stripped = line.lstrip()
    if not stripped.startswith("@"):
        return line
    head, _, rest = stripped[1:].partition(" ")
    if "\t" in head:
        head, _, more = head.partition("\t")
        rest = more + " " + rest
    negate = head.startswith("^")
    wanted = head[1:] if negate else head
    return rest if (wanted == ident) != negate else None


def _lines(path: str, depth: int, variables: Optional[dict] = None):
    """(where, words) for every non-empty line of the file, includes expanded, conditional
    lines and $VARIABLES resolved."""
    variables = {} if variables is None else variables
    if depth > MAX_INCLUDE_DEPTH:
        raise ConfError(path, "include nested too deep")
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            text = handle.read()
    except OSError as exc:
        raise ConfError(path, f"cannot read: {exc.strerror}") from exc
    ident = config_id()
    for number, raw in enumerate(text.splitlines(), 1):
        where = f"{path}:{number}"
        line = _conditional(raw, ident)
        if line is None:
            continue
        definition = re.match(r"\s*\$(\w+)\s*=(.*)$", line)
        if definition:  # $NAME=value defines a variable for the lines after it
            variables[definition.group(1)] = definition.group(2).strip()
            continue
        if "$" in line:
            def substitute(match):
                name = match.group(1) or match.group(2)
                if name not in variables:
                    raise ConfError(where, f"${name} is not defined")
                return variables[name]
            line = _VARIABLE.sub(substitute, line)
        words = split_words(line)
        if not words:
            continue
        if words[0] == "include":
            if len(words) < 2:
                raise ConfError(where, "include needs a file name")
            pattern = words[1]
            if not os.path.isabs(pattern):
                pattern = os.path.join(os.path.dirname(os.path.abspath(path)), pattern)
            matches = sorted(glob.glob(pattern))
            if not matches:
                raise ConfError(where, f"include {words[1]}: no such file")
            for match in matches:
                yield from _lines(match, depth + 1, variables)
            continue
        yield where, words


def parse_file(path: str) -> list[Node]:
    """The file's top-level nodes; ConfError names file and line of a syntax error."""
    root: list[Node] = []
    stack: list[tuple[list[Node], str]] = [(root, "")]
    last_where = path
    for where, words in _lines(path, 0):
        last_where = where
        while words:
            children = stack[-1][0]
            word = words[0]
            if word == "}":
                if len(stack) == 1:
                    raise ConfError(where, "'}' without an open block")
                stack.pop()
                words = words[1:]
                continue
            if word == "{":
                # a brace alone on its line opens the block of the previous keyword
                if not children or children[-1].children is not None:
                    raise ConfError(where, "'{' without a keyword")
                children[-1].children = []
                stack.append((children[-1].children, where))
                words = words[1:]
                continue
            cut = len(words)
            for index, other in enumerate(words[1:], 1):
                if other in ("{", "}"):
                    cut = index
                    break
            node = Node(word, words[1:cut], where)
            children.append(node)
            words = words[cut:]
            if words and words[0] == "{":
                node.children = []
                stack.append((node.children, where))
                words = words[1:]
    if len(stack) > 1:
        raise ConfError(stack[-1][1], f"block not closed at the end ({last_where})")
    return root
