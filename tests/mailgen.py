"""Synthetic mail for tests: deterministic spam-like and ham-like messages.

Tests must not depend on ../shared (a user's checkout has no corpus), so they build
their own. The two vocabularies overlap on purpose (common words, the same mailer for
some), so the classifiers have something to learn rather than a single giveaway token.
"""
from __future__ import annotations

import random
from email.message import EmailMessage
from email.utils import format_datetime

import datetime

COMMON = ("the and for you with this that have from your will are not but can all our more"
          " about time just here what when there".split())
SPAM_WORDS = ("free offer winner click now limited money cash guaranteed credit pills viagra"
              " casino bonus unsubscribe million investment cheap order discount deal urgent"
              " loans mortgage income earn prize selected congratulations").split()
HAM_WORDS = ("meeting patch review release build tests branch thanks regards attached"
             " schedule agenda notes kernel compile bug report fixed merge config python"
             " lunch tomorrow project deadline draft").split()
SPAM_HOSTS = ["cheap-pills.example", "win-big.example", "casino-offer.example", "loans4u.example"]
HAM_HOSTS = ["lists.example.org", "git.example.org", "wiki.example.org", "docs.example.org"]


def make_message(kind: str, rng: random.Random, i: int = 0) -> bytes:
    """One RFC 822 message of ``kind`` 'spam' or 'ham', reproducible from ``rng``."""
    spam = kind == "spam"
    vocab = SPAM_WORDS if spam else HAM_WORDS
    words = [rng.choice(vocab if rng.random() < 0.45 else COMMON) for _ in range(rng.randint(40, 120))]
    m = EmailMessage()
    m["From"] = (f'"Special Offers" <promo{rng.randint(1, 999)}@{rng.choice(SPAM_HOSTS)}>' if spam
                 else f'"Dev {rng.randint(1, 40)}" <dev{rng.randint(1, 40)}@example.org>')
    m["To"] = "user@example.com"
    m["Subject"] = " ".join(rng.choice(vocab) for _ in range(rng.randint(2, 6))).title()
    m["Date"] = format_datetime(datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
                                + datetime.timedelta(minutes=17 * i))
    m["Message-ID"] = f"<{kind}{i}.{rng.randint(0, 10**9)}@{'mx.' + rng.choice(SPAM_HOSTS) if spam else 'example.org'}>"
    if not spam:
        m["List-Id"] = "<dev.lists.example.org>"
        m["In-Reply-To"] = f"<thread{rng.randint(1, 50)}@example.org>"
    m["X-Mailer"] = rng.choice(["BulkMailer 5.1", "MassSend"] if spam else ["Mutt/2.2", "Thunderbird 115"])
    host = rng.choice(SPAM_HOSTS if spam else HAM_HOSTS)
    body = " ".join(words) + f"\n\nhttp://{host}/{rng.choice(vocab)}\n"
    if spam and rng.random() < 0.5:
        m.set_content(body)
        m.add_alternative(f"<html><body><font color=red>{' '.join(words[:30])}</font>"
                          f"<a href='http://{host}/go'>click here</a></body></html>", subtype="html")
    else:
        m.set_content(body)
    return bytes(m)


def corpus(n_spam: int = 60, n_ham: int = 90, seed: int = 0) -> tuple[list[bytes], list[int]]:
    """Messages and labels (1 spam, 0 ham), interleaved in a seeded order."""
    rng = random.Random(seed)
    items = [("spam", i) for i in range(n_spam)] + [("ham", i) for i in range(n_ham)]
    rng.shuffle(items)
    msgs = [make_message(k, rng, i) for k, i in items]
    return msgs, [1 if k == "spam" else 0 for k, _ in items]


def write_corpus(root, n_spam: int = 60, n_ham: int = 90, seed: int = 0):
    """A spam/ + ham/ + TREC index corpus under ``root``; returns the root."""
    msgs, labels = corpus(n_spam, n_ham, seed)
    (root / "spam").mkdir(parents=True, exist_ok=True)
    (root / "ham").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (raw, y) in enumerate(zip(msgs, labels)):
        rel = f"{'spam' if y else 'ham'}/{i:05d}.eml"
        (root / rel).write_bytes(raw)
        lines.append(f"{'spam' if y else 'ham'} {rel}")
    (root / "index").write_text("\n".join(lines) + "\n")
    return root


def simple_message(body: str = "hello", *, frm: str = "a@sender.test", to: str = "b@rcpt.test",
                   subject: str = "hi", headers: dict[str, str] | None = None,
                   html: str | None = None) -> bytes:
    """One plain message (text, and an HTML alternative when ``html`` is given)."""
    m = EmailMessage()
    m["From"] = frm
    m["To"] = to
    m["Subject"] = subject
    for k, v in (headers or {}).items():
        m[k] = v
    m.set_content(body)
    if html is not None:
        m.add_alternative(html, subtype="html")
    return m.as_bytes()
