"""phishing: each indicator, their sum and threshold, and ham-like mail left alone."""
from __future__ import annotations

from email.message import EmailMessage

import pytest

from classifier.classifications import get
from classifier.features import extract
from classifier.reputation.phishing import (
    DEFAULT_THRESHOLD, DEFAULT_WEIGHTS, lookalike, phishing, skeleton)

BRANDS = {"PayPal": ["paypal.com", "paypal.me"], "Microsoft": ["microsoft.com", "live.com"],
          "Example Bank": ["examplebank.com"]}
RCPT = ["example.com"]


def message(*, html: str = "", text: str = "Hello", from_: str = "News <news@sender.test>",
            to: str = "bob@example.com") -> object:
    msg = EmailMessage()
    msg["From"] = from_
    msg["To"] = to
    msg["Subject"] = "Your account"
    msg.set_content(text)
    if html:
        msg.add_alternative(f"<html><body>{html}</body></html>", subtype="html")
    return extract(bytes(msg))


def check(feats, **kw):
    kw.setdefault("brands", BRANDS)
    kw.setdefault("recipient_domains", RCPT)
    return phishing(feats, **kw)


PASSWORD_FORM = ('<form action="https://collect.test/post"><input name="user">'
                 '<input type="password" name="pw"></form>')
# The same form with no target of its own (it posts back to the page it is on).
PASSWORD_FORM_NO_ACTION = '<form><input name="user"><input type="password" name="pw"></form>'



# -- link text shows one domain, the link goes to another --------------------------------

@pytest.mark.parametrize("text", ["www.shop.test.com", "https://shop.co.uk/login", "shop.co.uk",
                                  "Visit https://shop.co.uk/ now"])
def test_link_text_domain_differs_from_target(text):
    signal = check(message(html=f'<a href="http://elsewhere.test/x">{text}</a>'))
    assert (signal.classification, signal.strength, signal.decides) == ("phishing", 1.0, False)
    assert signal.evidence[0].startswith("link text ") and signal.evidence[0].endswith(
        "-> target elsewhere.test")


def test_link_text_of_a_brand_domain_weighs_more():
    signal = check(message(html='<a href="http://paypa1-secure.test/login">www.paypal.com</a>'))
    assert signal.evidence[0] == "link text www.paypal.com -> target paypa1-secure.test"
    assert signal.strength == DEFAULT_WEIGHTS["brand_link_mismatch"] + DEFAULT_WEIGHTS["lookalike_url"]


@pytest.mark.parametrize("text, href", [
    ("www.paypal.com", "https://secure.paypal.com/signin"),        # same registered domain
    ("paypal.com", "https://www.paypal.me/x"),                      # the same brand's
    ("Click here", "http://elsewhere.test/"),                       # text shows no domain
    ("report.pdf", "http://files.test/report.pdf"),                 # a file name
    ("readme.zip", "http://files.test/r.zip"),                      # a TLD that is a file type
    ("info@shop.co.uk", "http://shop-mail.test/"),                  # an address
    ("www.intranet", "http://intranet.local.test/"),                # no real public suffix
    ("www.shop.co.uk", "mailto:orders@shop.co.uk"),                 # not a web link
])
def test_links_that_are_not_mismatches(text, href):
    assert check(message(html=f'<a href="{href}">{text}</a>')) is None


def test_click_trackers_are_judged_by_the_url_they_carry():
    tracked = "https://nam02.safelinks.protection.outlook.com/?url=https%3A%2F%2F{}%2Fa&data=1"
    same = check(message(html=f'<a href="{tracked.format("www.shop.co.uk")}">www.shop.co.uk</a>'))
    assert same is None
    other = check(message(html=f'<a href="{tracked.format("evil.test")}">www.shop.co.uk</a>'))
    assert other.evidence == ("link text www.shop.co.uk -> target evil.test",)
    # an opaque tracker carries no URL: not judged
    opaque = '<a href="https://us5.list-manage.com/track/click?u=abc&id=def">www.shop.co.uk</a>'
    assert check(message(html=opaque)) is None
    # an ordinary site carrying a URL is judged by its own host
    carried = '<a href="http://evil.test/r?u=https://www.shop.co.uk/">www.shop.co.uk</a>'
    assert check(message(html=carried)).evidence == ("link text www.shop.co.uk -> target evil.test",)


def test_an_ip_address_target_is_a_mismatch():
    signal = check(message(html='<a href="http://198.51.100.7/bank/">www.examplebank.com</a>'))
    assert signal.evidence == ("link text www.examplebank.com -> target 198.51.100.7",)
    assert signal.strength == DEFAULT_WEIGHTS["brand_link_mismatch"]


# -- credential forms ------------------------------------------------------------------------

def test_password_input_in_the_message():
    signal = check(message(html=PASSWORD_FORM_NO_ACTION))
    assert (signal.strength, signal.decides) == (DEFAULT_WEIGHTS["credential_form"], False)
    assert signal.evidence == ("password input in the message (1)",)


def test_password_form_posting_off_the_sender_domain():
    # the parser keeps each form's target (MessageFeatures.form_actions)
    feats = message(html=PASSWORD_FORM, from_="Bank <alerts@examplebank.com>")
    assert feats.form_actions == ["https://collect.test/post"]
    signal = check(feats)
    assert signal.evidence == ("password form posting to collect.test, not to the sender's examplebank.com",)
    assert signal.strength == DEFAULT_WEIGHTS["offsite_credential_form"]
    same_site = message(html=PASSWORD_FORM.replace("https://collect.test/post", "https://login.examplebank.com/"),
                        from_="Bank <alerts@examplebank.com>")
    assert check(same_site).evidence == ("password input in the message (1)",)


# -- lookalike domains ---------------------------------------------------------------------

@pytest.mark.parametrize("host, how", [
    ("xn--pypal-4ve.com", "homoglyph, reads p\u0430ypal"),    # Cyrillic a
    ("www.paypa1.com", "confusable"),                       # digit one for l
    ("rnicrosoft.com", "confusable"),                       # rn for m
    ("micr0soft.co.uk", "confusable"),                      # zero for o
    ("paypall.test", "one letter off"),
    ("micorsoft.test", "one letter off"),                   # swapped letters
    ("paypal-secure.test", "brand name in the domain"),
    ("login.paypal.com.verify.test", "brand domain as subdomain"),
])
def test_lookalike_hosts(host, how):
    brand, domain, found = lookalike(host, BRANDS)
    assert found == how and brand in ("PayPal", "Microsoft")


@pytest.mark.parametrize("host", ["paypal.com", "www.paypal.com", "paypal.me", "paypal.de",
                                  "login.live.com", "example.org", "pay.test", "microsoftstore.test",
                                  "ul.test"])
def test_not_lookalikes(host):
    assert lookalike(host, BRANDS) is None


def test_skeleton():
    assert skeleton("p\u0430yp\u0430l") == skeleton("PAYPAL") == skeleton("paypa1") == skeleton("paypai")
    assert skeleton("rnicrosoft") == skeleton("microsoft")
    assert skeleton("\uff50\uff41\uff59\uff50\uff41\uff4c") == skeleton("paypal")     # fullwidth
    assert skeleton("caf\u00e9") == "cafe"
    assert skeleton("paypal") != skeleton("paypol")


def test_lookalike_link_and_from():
    feats = message(html='<a href="https://www.paypa1.com/signin">Sign in</a>',
                    from_="Service <service@paypal-support.test>")
    signal = check(feats)
    assert signal.evidence == (
        "link host www.paypa1.com looks like paypal.com (confusable)",
        "From domain paypal-support.test looks like paypal.com (brand name in the domain)")
    assert signal.strength == 4.0 and signal.decides


def test_no_brand_checks_without_brands():
    feats = message(html='<a href="https://www.paypa1.com/signin">Sign in</a>',
                    from_="PayPal <service@paypal-support.test>")
    assert check(feats, brands=None) is None


def test_brand_in_the_display_name():
    signal = check(message(from_="PayPal Service <noreply@mailer.test>"))
    assert signal.evidence == ("From display name 'PayPal Service' names brand PayPal; "
                               "the address is at mailer.test",)
    assert check(message(from_="PayPal <service@paypal.com>")) is None


# -- display-name spoofing of the recipient's own domain -------------------------------------

def test_display_name_address_at_the_recipient_domain():
    signal = check(message(from_='"ceo@example.com" <boss.office@mail.test>'))
    assert signal.evidence == ("From display name 'ceo@example.com' is an address at recipient "
                               "domain example.com; the address is at mail.test",)
    assert signal.strength == DEFAULT_WEIGHTS["display_address_spoof"] and not signal.decides


def test_display_name_naming_the_recipient_domain():
    signal = check(message(from_="Example.com IT Helpdesk <it@helpdesk.test>"))
    assert signal.evidence == ("From display name 'Example.com IT Helpdesk' names recipient domain "
                               "example.com; the address is at helpdesk.test",)
    assert signal.strength == DEFAULT_WEIGHTS["display_name_spoof"]


@pytest.mark.parametrize("from_", [
    "Example.com IT <it@example.com>",             # the domain's own address
    "ceo@example.com <ceo@mail.example.com>",      # a subdomain of it
    "news@example.community <x@other.test>",       # another domain that starts alike
    "Alice <alice@other.test>",
])
def test_not_display_name_spoofs(from_):
    assert check(message(from_=from_)) is None


# -- together -----------------------------------------------------------------------------

def test_lookalike_brand_link_and_password_form_decide():
    feats = message(html='<p>Confirm your account at <a href="http://paypa1-secure.test/login">'
                         'https://www.paypal.com/signin</a></p>' + PASSWORD_FORM,
                    from_="Service <service@mailer.test>")
    signal = check(feats)
    assert signal.decides and signal.strength >= DEFAULT_THRESHOLD
    assert get(signal.classification).reply() == "550 5.7.1 Phishing attempt detected"
    assert signal.evidence == (
        "link text www.paypal.com -> target paypa1-secure.test",
        "password form posting to collect.test, not to the sender's mailer.test",
        "link host paypa1-secure.test looks like paypal.com (brand name in the domain)")


def test_each_kind_counts_once():
    html = "".join(f'<a href="http://t{i}.test/">www.shop{i}.co.uk</a>' for i in range(5))
    signal = check(message(html=html))
    assert signal.strength == 1.0 and len(signal.evidence) == 5


def test_threshold_and_weights_are_parameters():
    feats = message(html=PASSWORD_FORM_NO_ACTION)
    assert check(feats, threshold=1.0).decides
    assert check(feats, weights={**DEFAULT_WEIGHTS, "credential_form": 0.5}).strength == 0.5


# -- ham-like mail ---------------------------------------------------------------------------

def test_newsletter_with_ordinary_links_is_not_flagged():
    html = """
      <p>Hi Bob, here is our <a href="https://www.shop.co.uk/news/october">October news</a>.</p>
      <p>Visit <a href="https://shop.co.uk/">www.shop.co.uk</a> or our blog
         <a href="https://blog.shop.co.uk/">blog.shop.co.uk</a>.</p>
      <p><a href="https://click.shop.co.uk/t/123">https://www.shop.co.uk/sale</a></p>
      <p><a href="https://us5.list-manage.com/track/click?u=1&id=2">www.shop.co.uk/unsubscribe</a></p>
      <p><a href="https://www.paypal.com/">Pay with PayPal</a>
         <a href="mailto:help@shop.co.uk">help@shop.co.uk</a></p>
      <img src="https://cdn.shopimages.test/logo.png">"""
    feats = message(html=html, text="October news: https://www.shop.co.uk/news/october",
                    from_="Shop News <news@shop.co.uk>")
    assert check(feats) is None


def test_colleague_mail_is_not_flagged():
    feats = message(text="Minutes at http://wiki.example.com/minutes and https://docs.test/x",
                    from_="Alice Smith <alice@example.com>")
    assert check(feats) is None
