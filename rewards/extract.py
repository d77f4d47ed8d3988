"""Pulling final answers out of free text (shared by task loaders and the math grader)."""

from __future__ import annotations

import re

_GSM8K_ANSWER = re.compile(r"####\s*(.+?)\s*$", re.MULTILINE)
_THE_ANSWER_IS = re.compile(r"answer\s+is\s*:?\s*\$?(.+?)\$?\s*(?:\.\s*)?$", re.IGNORECASE | re.MULTILINE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?%?|-?\.\d+%?")


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces balanced."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    brace = text.find("{", start)
    if brace < 0:
        return None
    depth = 0
    for i in range(brace, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[brace + 1 : i].strip()
    return None


def gsm8k_answer(text: str) -> str | None:
    """The text after the last ``####`` marker, commas removed from numbers."""
    matches = _GSM8K_ANSWER.findall(text)
    return matches[-1].replace(",", "").strip() if matches else None


def the_answer_is(text: str) -> str | None:
    """The text after the last "the answer is"."""
    matches = _THE_ANSWER_IS.findall(text)
    return matches[-1].strip() if matches else None


def numbers(text: str) -> list[str]:
    """Every number in the text, commas removed (a trailing % is kept)."""
    return [m.replace(",", "") for m in _NUMBER.findall(text)]


def last_number(text: str) -> str | None:
    """The last number in the text, commas removed."""
    found = numbers(text)
    return found[-1] if found else None


def final_answer(text: str) -> str | None:
    """Boxed answer, else ``#### x``, else "The answer is x", else the last number."""
    for extract in (last_boxed, gsm8k_answer, the_answer_is, last_number):
        found = extract(text)
        if found:
            return found
    return None


_CODE_BLOCK = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE)


def extract_program(response: str) -> str:
    """The program in a model response: the longest fenced code block, else the whole text."""
    blocks = [b for b in _CODE_BLOCK.findall(response) if b.strip()]
    return max(blocks, key=len) if blocks else response
