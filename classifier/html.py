"""HTML to text, keeping what spam hides in markup: link targets, images, forms.

Regular expressions rather than a DOM parser. Spam HTML is broken on purpose, and
a forgiving regex pass costs a tenth of ``html.parser`` per part. The text keeps the
words a reader would see. Comments and empty inline tags are dropped with no space
(``V<!-- x -->iag<b></b>ra`` reads ``Viagra``), and block tags become line breaks.
"""
from __future__ import annotations

import html as _html
import re
from dataclasses import dataclass, field

# Every pattern here must stay linear in hostile input (tests/test_features_robustness.py
# has the inputs that made earlier versions quadratic): a tag's attributes end at the
# next '<' as well as at '>', quantifiers that could trade characters are possessive,
# and an attribute name can only start where no name character precedes it.
_COMMENT = re.compile(r"<!--.*?(?:-->|$)", re.S)
_HIDDEN_BLOCK = re.compile(r"<(script|style|head|title)\b[^<>]*+>(.*?)(?:</\1\s*>|$)", re.S | re.I)
_ANCHOR = re.compile(r"<a\b([^<>]*+)>(.*?)(?:</a\s*>|(?=<a\b)|$)", re.S | re.I)
_TAG = re.compile(r"<(/?)([a-zA-Z][a-zA-Z0-9:-]*+)([^<>]*+)>", re.S)
_ATTR = re.compile(r"""(?<![-a-zA-Z0-9_:.])([a-zA-Z_:][-a-zA-Z0-9_:.]*+)\s*+=\s*+("[^"]*+"|'[^']*+'|[^\s"'>]++)""")
_MAX_ATTRS_CHARS = 4096
_WS = re.compile(r"[ \t\r\f\v]+")
_BLOCK_TAGS = frozenset(
    "p br div td th tr li ul ol table h1 h2 h3 h4 h5 h6 blockquote pre hr form center dd dt dl"
    " section article header footer option select textarea body html".split())

# Tags worth a token of their own: they tell apart mail clients from spamware.
_INTERESTING_TAGS = frozenset(
    "font table img form input iframe script style object embed applet map area center"
    " marquee blink meta base frame frameset".split())


@dataclass(slots=True)
class Link:
    url: str
    text: str      # the visible anchor text ('' for images and forms)
    kind: str      # 'a', 'img', 'form', 'area', 'frame', 'base'


@dataclass(slots=True)
class HtmlFacts:
    text: str = ""
    links: list[Link] = field(default_factory=list)
    tags: set[str] = field(default_factory=set)
    images: int = 0
    forms: int = 0
    password_inputs: int = 0
    comments: int = 0
    hidden_chars: int = 0  # characters inside <script>/<style>


def _attrs(raw: str) -> dict[str, str]:
    out = {}
    for name, value in _ATTR.findall(raw[:_MAX_ATTRS_CHARS]):
        if value[:1] in "\"'":
            value = value[1:-1]
        out.setdefault(name.lower(), _html.unescape(value).strip())
    return out


_URL_ATTRS = {"a": "href", "area": "href", "img": "src", "form": "action", "frame": "src",
              "iframe": "src", "base": "href"}


def html_to_text(source: str, max_chars: int = 200_000) -> HtmlFacts:
    """Turn an HTML part into readable text plus the facts spam hides in markup."""
    facts = HtmlFacts()
    if len(source) > max_chars:
        source = source[:max_chars]

    def drop_comment(m: re.Match) -> str:
        facts.comments += 1
        return ""

    source = _COMMENT.sub(drop_comment, source)

    def drop_hidden(m: re.Match) -> str:
        facts.tags.add(m.group(1).lower())
        facts.hidden_chars += len(m.group(2))
        return " "

    source = _HIDDEN_BLOCK.sub(drop_hidden, source)

    for m in _ANCHOR.finditer(source):
        href = _attrs(m.group(1)).get("href")
        if href:
            text = _TAG.sub(" ", m.group(2))
            text = _WS.sub(" ", _html.unescape(text)).strip()
            facts.links.append(Link(href, text[:200], "a"))

    def on_tag(m: re.Match) -> str:
        closing, name, rest = m.group(1), m.group(2).lower(), m.group(3)
        if name in _INTERESTING_TAGS:
            facts.tags.add(name)
        if not closing:
            if name == "img":
                facts.images += 1
            elif name == "form":
                facts.forms += 1
            elif name == "input" and "password" in rest.lower():
                facts.password_inputs += 1
            attr = _URL_ATTRS.get(name)
            if attr and name != "a" and attr in rest.lower():
                url = _attrs(rest).get(attr)
                if url:
                    facts.links.append(Link(url, "", name))
            if name == "img":
                alt = _attrs(rest).get("alt")
                if alt:
                    return " " + alt + " "
        return "\n" if name in _BLOCK_TAGS else ""

    text = _TAG.sub(on_tag, source)
    facts.text = _WS.sub(" ", _html.unescape(text))
    return facts
