"""The generated blocks of the docs: ``<!-- evidence:<name> -->`` … ``<!-- /evidence:<name> -->``, one home for
every evidence script that writes a table into a Markdown file."""

from __future__ import annotations

from pathlib import Path


def replace_block(text: str, block: str, table: str) -> str:
    """``text`` with the content of its ``block`` replaced by ``table``; unchanged when the block is absent."""
    begin, end = f"<!-- evidence:{block} -->", f"<!-- /evidence:{block} -->"
    if begin not in text or end not in text:
        return text
    head, rest = text.split(begin, 1)
    return head + begin + "\n" + table + "\n" + end + rest.split(end, 1)[1]


def render_block(path: Path, block: str, table: str) -> None:
    """Write ``table`` into the ``block`` of the Markdown file ``path``; an absent block is an error."""
    text = path.read_text()
    if f"<!-- evidence:{block} -->" not in text:
        raise KeyError(f"{path} has no <!-- evidence:{block} --> block")
    path.write_text(replace_block(text, block, table))
