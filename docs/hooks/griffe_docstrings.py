"""Griffe extension: render mend's plain-text docstrings as Markdown for the reference.

mend's docstrings are written to be read in the source: command and code examples are
indented blocks, cross-references are Sphinx roles (``:class:`Edit```), and square
brackets mean optional arguments or indexing. Rendered as Markdown unchanged, a module
docstring whose examples follow its summary line loses their indentation (griffe's
``cleandoc`` strips it), and ``[--data FILE] [--set K=V]`` reads as a reference link,
which the strict build rejects. This extension rebuilds each docstring from the string
literal in the source, keeping its indentation:

* an indented block after a blank line becomes a fenced code block;
* ``:role:`target``` becomes the code span ``target``;
* ``[`` outside code is escaped, so nothing is mistaken for a link.

Static analysis only: the source is parsed, never imported.
"""

from __future__ import annotations

import ast
import re

import griffe

ROLE = re.compile(r":(?:class|meth|func|mod|attr|data|obj|exc):`~?([^`]+)`")
CODE_SPAN = re.compile(r"(``.+?``|`[^`]+`)")


def _escape_brackets(line: str) -> str:
    """``[`` escaped outside code spans."""
    parts = CODE_SPAN.split(line)
    return "".join(p if i % 2 else p.replace("[", "\\[") for i, p in enumerate(parts))


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def to_markdown(raw: str, base: int) -> str:
    """The docstring literal ``raw`` (body lines indented by ``base``) as Markdown."""
    lines = raw.expandtabs().splitlines()
    head = [lines[0].strip()] if lines and lines[0].strip() else []
    body = [line[min(base, _indent(line)):] for line in lines[1:]]
    while body and not body[-1].strip():
        body.pop()
    while body and not body[0].strip() and not head:
        body.pop(0)
    out: list[str] = list(head)
    i = 0
    while i < len(body):
        line = body[i]
        previous_blank = i == 0 and bool(head) or (i > 0 and not body[i - 1].strip()) or not out
        if line.strip() and _indent(line) >= 4 and previous_blank:
            block = []
            while i < len(body) and (not body[i].strip() or _indent(body[i]) >= 4):
                block.append(body[i])
                i += 1
            while block and not block[-1].strip():
                block.pop()
            depth = min(_indent(b) for b in block if b.strip())
            if out and out[-1].strip():
                out.append("")
            out += ["```text", *(b[depth:] for b in block), "```", ""]
            continue
        out.append(_escape_brackets(ROLE.sub(r"``\1``", line)))
        i += 1
    return "\n".join(out).strip("\n")


class PlainDocstrings(griffe.Extension):
    """Rewrite each module's, class's and function's docstring with :func:`to_markdown`."""

    def on_instance(self, *, node, obj, agent, **kwargs) -> None:
        if obj.docstring is None or not isinstance(node, ast.AST):
            return
        body = getattr(node, "body", None)
        if not body or not isinstance(body[0], ast.Expr):
            return
        literal = body[0].value
        if not isinstance(literal, ast.Constant) or not isinstance(literal.value, str):
            return
        base = body[0].col_offset if not isinstance(node, ast.Module) else 0
        obj.docstring.value = to_markdown(literal.value, base)
