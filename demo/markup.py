"""User text is text: escaping for everything a view renders as Markdown or HTML.

Every string a visitor controls (a query, a person id, a caption typed in, a file or folder
name, an error message that quotes any of these) goes through :func:`text` before it is put
into a ``gr.Markdown`` or ``gr.HTML`` value. ``gr.Gallery`` captions, ``gr.Textbox`` and
``gr.JSON`` values are rendered as text by Gradio and need no escaping.
"""

from __future__ import annotations

import html
import re

# CommonMark lets a backslash escape any ASCII punctuation; these start inline markup (emphasis,
# code, links, images, strike-through, tables, maths, e-mail autolinks). ``<``, ``>``, ``&`` become
# entities; ``://`` and ``www.`` are broken up so that no bare URL becomes a link.
_MD_SPECIAL = re.compile(r"([\\`*_\[\]()!|~$@{}])")


def text(value: object) -> str:
    """``value`` as literal text inside Markdown or HTML: no element, link or emphasis can come from it.

    HTML special characters become entities (``<`` -> ``&lt;``), Markdown punctuation is
    backslash-escaped, and line breaks become spaces (a value never starts a new block).
    """
    s = "" if value is None else str(value)
    s = " ".join(s.splitlines())
    s = _MD_SPECIAL.sub(r"\\\1", s)
    s = s.replace("://", ":\\/\\/").replace("www.", "www\\.").replace("WWW.", "WWW\\.")
    return html.escape(s, quote=True)


def html_text(value: object) -> str:
    """``value`` escaped for an HTML context only (``gr.HTML``; no Markdown processing)."""
    return html.escape("" if value is None else str(value), quote=True)


def code(value: object) -> str:
    """``value`` as inline code in Markdown (escaped; backticks cannot close the span)."""
    s = "" if value is None else " ".join(str(value).splitlines())
    return "<code>" + html.escape(s, quote=True) + "</code>"
