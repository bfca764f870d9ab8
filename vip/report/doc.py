"""A small document model (headings, text, tables, figures, notes) rendered twice: to one self-contained
HTML page (figures inlined as base64 data URIs) and to Markdown (figures as files beside it)."""
from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path

NOT_YET = "not yet run"


@dataclass
class Strong:
    text: str


@dataclass
class Code:
    text: str


Inline = str | Strong | Code


@dataclass
class Heading:
    level: int
    text: str
    anchor: str = ""


@dataclass
class Para:
    parts: list[Inline]
    muted: bool = False


@dataclass
class Missing:
    """A part of the run that has not been produced yet."""
    what: str
    why: str = ""
    state: str = NOT_YET


@dataclass
class Table:
    header: list[str]
    rows: list[list[Inline]]
    row_class: list[str] = field(default_factory=list)  # per row: "" or a CSS class (chosen, top, missing)
    note: str = ""


@dataclass
class Figure:
    path: Path  # a PNG under report_files/
    caption: str


@dataclass
class CodeBlock:
    summary: str
    text: str
    lang: str = ""


Block = Heading | Para | Missing | Table | Figure | CodeBlock

_NUMERIC = re.compile(r"^[+\-−]?[\d,]*\.?\d+(e[+\-]?\d+)?%?$")


def _plain(x: Inline) -> str:
    return x.text if isinstance(x, (Strong, Code)) else str(x)


# ------------------------------------------------------------------ HTML

CSS = """
body { font: 14px/1.45 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #222; margin: 0;
       background: #f4f5f7; }
main { max-width: 1180px; margin: 0 auto; padding: 20px 28px 60px; background: #fff; }
h1 { font-size: 24px; margin: 8px 0 4px; }
h2 { font-size: 19px; margin: 34px 0 8px; padding-top: 10px; border-top: 2px solid #d0d4da; }
h3 { font-size: 15px; margin: 22px 0 6px; color: #333; }
p { margin: 6px 0; }
p.muted { color: #666; font-size: 13px; }
code { font: 12px/1.3 Menlo, Consolas, monospace; background: #f1f2f4; padding: 1px 4px; border-radius: 3px; }
table { border-collapse: collapse; margin: 6px 0 4px; font-size: 13px; }
th, td { padding: 3px 10px; border-bottom: 1px solid #e3e5e8; text-align: left; white-space: nowrap; }
th { background: #eef0f3; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.chosen td { background: #e7f2e8; }
tr.top td { background: #edf2f8; }
tr.missing td { color: #888; font-style: italic; }
.tablenote { color: #666; font-size: 12px; margin: 0 0 10px; }
figure { margin: 10px 0 14px; }
figure img { max-width: 100%; height: auto; border: 1px solid #e3e5e8; }
figcaption { color: #555; font-size: 12px; margin-top: 3px; }
.notyet { color: #8a6d3b; background: #fcf8e3; border: 1px solid #f0e1b0; padding: 6px 10px;
           border-radius: 4px; display: inline-block; margin: 4px 0; }
details { margin: 8px 0; }
summary { cursor: pointer; color: #335; }
pre { font: 12px/1.35 Menlo, Consolas, monospace; background: #f6f7f9; padding: 8px 12px; overflow-x: auto;
      border: 1px solid #e3e5e8; max-height: 480px; }
nav { font-size: 13px; margin: 6px 0 0; }
nav a { margin-right: 12px; color: #335; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; margin: 8px 0; font-size: 13px; }
dl.meta dt { color: #666; } dl.meta dd { margin: 0; }
"""


def _h_inline(x: Inline) -> str:
    if isinstance(x, Strong):
        return f"<strong>{html.escape(x.text)}</strong>"
    if isinstance(x, Code):
        return f"<code>{html.escape(x.text)}</code>"
    return html.escape(str(x))


def _h_block(b: Block) -> str:
    if isinstance(b, Heading):
        anchor = f' id="{html.escape(b.anchor)}"' if b.anchor else ""
        return f"<h{b.level}{anchor}>{html.escape(b.text)}</h{b.level}>"
    if isinstance(b, Para):
        cls = ' class="muted"' if b.muted else ""
        return f"<p{cls}>" + "".join(_h_inline(p) for p in b.parts) + "</p>"
    if isinstance(b, Missing):
        why = f" — {html.escape(b.why)}" if b.why else ""
        return f'<p><span class="notyet">{html.escape(b.what)}: {html.escape(b.state)}{why}</span></p>'
    if isinstance(b, Table):
        head = "".join(f"<th>{html.escape(h)}</th>" for h in b.header)
        body = []
        for i, row in enumerate(b.rows):
            cls = b.row_class[i] if i < len(b.row_class) and b.row_class[i] else ""
            cells = "".join(f'<td class="num">{_h_inline(c)}</td>' if _NUMERIC.match(_plain(c)) else
                            f"<td>{_h_inline(c)}</td>" for c in row)
            body.append(f'<tr class="{cls}">{cells}</tr>' if cls else f"<tr>{cells}</tr>")
        note = f'<p class="tablenote">{html.escape(b.note)}</p>' if b.note else ""
        return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{note}"
    if isinstance(b, Figure):
        data = base64.b64encode(Path(b.path).read_bytes()).decode("ascii")
        return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(b.caption)}">'
                f"<figcaption>{html.escape(b.caption)}</figcaption></figure>")
    if isinstance(b, CodeBlock):
        return (f"<details><summary>{html.escape(b.summary)}</summary><pre>{html.escape(b.text)}</pre></details>")
    raise TypeError(f"unknown block {type(b).__name__}")


def to_html(title: str, meta: list[tuple[str, Inline]], nav: list[tuple[str, str]], blocks: list[Block]) -> str:
    dl = "".join(f"<dt>{html.escape(k)}</dt><dd>{_h_inline(v)}</dd>" for k, v in meta)
    links = "".join(f'<a href="#{html.escape(a)}">{html.escape(t)}</a>' for a, t in nav)
    body = "\n".join(_h_block(b) for b in blocks)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{html.escape(title)}</title>\n<style>{CSS}</style></head>\n<body><main>\n"
            f"<h1>{html.escape(title)}</h1>\n<dl class=\"meta\">{dl}</dl>\n<nav>{links}</nav>\n{body}\n"
            f"</main></body></html>\n")


# ------------------------------------------------------------------ Markdown

def _m_escape(s: str) -> str:
    return s.replace("|", "\\|").replace("*", "\\*").replace("_", "\\_")


def _m_inline(x: Inline) -> str:
    if isinstance(x, Strong):
        return f"**{_m_escape(x.text)}**"
    if isinstance(x, Code):
        return f"`{x.text}`"
    return _m_escape(str(x))


def _m_block(b: Block, base: Path) -> str:
    if isinstance(b, Heading):
        return "#" * b.level + " " + b.text
    if isinstance(b, Para):
        text = "".join(_m_inline(p) for p in b.parts)
        return f"*{text}*" if b.muted else text
    if isinstance(b, Missing):
        return f"> **{_m_escape(b.what)}: {b.state}**" + (f" — {_m_escape(b.why)}" if b.why else "")
    if isinstance(b, Table):
        numeric = [bool(b.rows) and all(_NUMERIC.match(_plain(r[j])) or _plain(r[j]) in ("", "–", NOT_YET)
                                        for r in b.rows) for j in range(len(b.header))]
        lines = ["| " + " | ".join(_m_escape(h) for h in b.header) + " |",
                 "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
        lines += ["| " + " | ".join(_m_inline(c) for c in row) + " |" for row in b.rows]
        if b.note:
            lines += ["", f"*{_m_escape(b.note)}*"]
        return "\n".join(lines)
    if isinstance(b, Figure):
        rel = Path(b.path).relative_to(base).as_posix()
        return f"![{b.caption}]({rel})\n\n*{_m_escape(b.caption)}*"
    if isinstance(b, CodeBlock):
        fence = f"```{b.lang}\n{b.text.rstrip()}\n```"
        return f"<details><summary>{html.escape(b.summary, quote=False)}</summary>\n\n{fence}\n\n</details>"
    raise TypeError(f"unknown block {type(b).__name__}")


def to_markdown(title: str, meta: list[tuple[str, Inline]], blocks: list[Block], base: Path) -> str:
    """base: the folder of the Markdown file (figure links are relative to it)."""
    out = [f"# {title}", "", *(f"- {k}: {_m_inline(v)}" for k, v in meta), ""]
    for b in blocks:
        out += [_m_block(b, base), ""]
    return "\n".join(out)
