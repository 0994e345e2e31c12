"""The person at the browser, scripted, for latchkey's FastMCP interop test.

Started as $BROWSER with one argument, the authorization URL:
    <venv>/bin/python browser.py URL
It follows redirects (keeping cookies, and submitting a consent form by its
approve button if the authorization server shows one) until the next hop is the
client's loopback callback (the authorization request's redirect_uri, or else a
loopback URL whose path ends in /callback). It requests that callback once and
exits 0; on any other outcome it exits 1 with the reason on stderr.
Standard library only.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request
from html.parser import HTMLParser
from http.cookiejar import CookieJar
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

MAX_HOPS = 20
MAX_FORMS = 3
TIMEOUT = 30
APPROVE_WORDS = ("approve", "allow", "accept", "authorize", "authorise", "consent", "yes", "continue", "grant")
DENY_WORDS = ("deny", "cancel", "reject", "decline", "no")


def fail(reason: str) -> None:
    print(f"browser.py: {reason}", file=sys.stderr)
    sys.exit(1)


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # let the 3xx surface as a response; we follow it ourselves


class FormParser(HTMLParser):
    """Collects each <form>'s action, method, fields and submit buttons."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict] = []
        self._button: dict | None = None

    def handle_starttag(self, tag, attrs):
        a = {k: (v or "") for k, v in attrs}
        if tag == "form":
            self.forms.append(
                {"action": a.get("action", ""), "method": a.get("method", "get").lower(), "fields": [], "submits": []}
            )
            return
        if not self.forms:
            return
        form = self.forms[-1]
        kind = a.get("type", "submit" if tag == "button" else "text").lower()
        if tag == "input":
            if kind in ("submit", "image"):
                form["submits"].append({"name": a.get("name", ""), "value": a.get("value", ""), "text": ""})
            elif kind in ("checkbox", "radio"):
                if "checked" in a and a.get("name"):
                    form["fields"].append((a["name"], a.get("value", "on")))
            elif a.get("name"):
                form["fields"].append((a["name"], a.get("value", "")))
        elif tag == "button" and kind == "submit":
            self._button = {"name": a.get("name", ""), "value": a.get("value", ""), "text": ""}
            form["submits"].append(self._button)
        elif tag in ("textarea", "select") and a.get("name"):
            form["fields"].append((a["name"], a.get("value", "")))

    def handle_endtag(self, tag):
        if tag == "button":
            self._button = None

    def handle_data(self, data):
        if self._button is not None:
            self._button["text"] += data.strip()


def pick_submit(submits: list[dict]) -> dict | None:
    def words(s):
        return f"{s['name']} {s['value']} {s['text']}".lower()

    for s in submits:
        if any(w in words(s) for w in APPROVE_WORDS):
            return s
    for s in submits:
        if not any(w in words(s).split() for w in DENY_WORDS):
            return s
    return None


def main() -> None:
    if len(sys.argv) != 2:
        fail("usage: browser.py AUTHORIZATION_URL")
    url = sys.argv[1]
    redirect_uri = parse_qs(urlsplit(url).query).get("redirect_uri", [None])[0]

    def is_callback(u: str) -> bool:
        p = urlsplit(u)
        if redirect_uri:
            r = urlsplit(redirect_uri)
            return (p.scheme, p.netloc, p.path) == (r.scheme, r.netloc, r.path)
        return p.hostname in ("127.0.0.1", "localhost", "::1") and p.path.endswith("/callback")

    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()), NoRedirect())
    method, data, forms = "GET", None, 0
    for _ in range(MAX_HOPS):
        if is_callback(url):
            try:
                with opener.open(url, timeout=TIMEOUT) as resp:
                    status = resp.status
            except urllib.error.HTTPError as e:
                status = e.code
            except OSError as e:
                fail(f"callback request failed: {e}")
            query = parse_qs(urlsplit(url).query)
            if "error" in query:
                print(f"browser.py: delivered an error callback: {query['error'][0]}", file=sys.stderr)
            print(f"browser.py: callback answered {status}", file=sys.stderr)
            sys.exit(0)

        req = urllib.request.Request(url, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/x-www-form-urlencoded")
        try:
            resp = opener.open(req, timeout=TIMEOUT)
        except urllib.error.HTTPError as e:
            resp = e
        except OSError as e:
            fail(f"{method} {urlsplit(url)._replace(query='').geturl()} failed: {e}")
        with resp:
            status, location = resp.status, resp.headers.get("Location")
            body = resp.read(1 << 20).decode("utf-8", "replace")

        if 300 <= status < 400 and location:
            url, method, data = urljoin(url, location), "GET", None
            continue

        parser = FormParser()
        parser.feed(body)
        form = parser.forms[0] if status == 200 and parser.forms else None
        if form is None or forms >= MAX_FORMS:
            fail(f"stopped at HTTP {status} without reaching the callback: {body[:300]!r}")
        forms += 1
        fields = list(form["fields"])
        submit = pick_submit(form["submits"])
        if submit and submit["name"]:
            fields.append((submit["name"], submit["value"]))
        target = urljoin(url, form["action"] or url)
        if form["method"] == "post":
            url, method, data = target, "POST", urlencode(fields).encode()
        else:
            url, method, data = f"{target.split('?')[0]}?{urlencode(fields)}", "GET", None

    fail(f"more than {MAX_HOPS} hops without reaching the callback")


if __name__ == "__main__":
    main()
